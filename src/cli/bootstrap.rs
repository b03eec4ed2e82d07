//! `cutover bootstrap`: an Envoy bootstrap that gets all of its config from cutover, or with
//! `--grpc` the xDS bootstrap of a proxyless gRPC client.

use std::net::SocketAddr;
use std::process::ExitCode;

use super::output::{Format, print_value};
use crate::node::NodeInfo;
use crate::spec::EndpointAddress;
use crate::{bootstrap, grpc_bootstrap, render};

#[derive(clap::Args)]
pub struct Args {
    /// The Envoy node id, shown in cutover's /status.
    #[arg(long)]
    node_id: String,
    /// The Envoy node cluster (defaults to the node id).
    #[arg(long)]
    node_cluster: Option<String>,
    /// A node metadata entry (a string value), for the deployment file's `groups` to match;
    /// repeat for several.
    #[arg(long = "node-metadata", value_name = "KEY=VALUE", value_parser = super::key_value)]
    node_metadata: Vec<(String, String)>,
    /// cutover's ADS address, as Envoy reaches it: IP:PORT, or HOST:PORT (e.g. cutover:18000)
    /// that Envoy resolves with DNS.
    #[arg(long, default_value = "127.0.0.1:18000")]
    ads: EndpointAddress,
    /// Address for Envoy's own admin interface (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Do not send Envoy's stats to cutover (request rates, errors, latency, ejections per
    /// version). Envoy's stats are then not filtered either.
    #[arg(long)]
    no_stats_sink: bool,
    /// Do not report load per endpoint to cutover (requests in flight and rate per
    /// endpoint, what `cutover wait drained` needs).
    #[arg(long)]
    no_load_reporting: bool,
    /// Keep every Envoy stat of cutover's clusters. By default Envoy keeps, and sends to
    /// cutover, only the stats cutover reads of clusters named `<service>/<version>`; every
    /// other stat is untouched.
    #[arg(long)]
    all_stats: bool,
    /// Ask for config over delta (incremental) xDS, `api_type: DELTA_GRPC`: each change
    /// sends only the resources that changed and the names of those removed, instead of
    /// every cluster and listener again.
    #[arg(long)]
    delta: bool,
    /// Reach cutover over TLS (`cutover serve --tls-cert`), trusting this CA (PEM; a path
    /// as Envoy sees it).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<String>,
    /// Envoy's client certificate (PEM), for mutual TLS (`cutover serve --tls-client-ca`).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<String>,
    /// The name cutover's certificate must carry, also sent as SNI. Default: the host of
    /// --ads (an IP address is checked as an IP address name).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Print the JSON bootstrap of a proxyless gRPC client (grpcio, grpc-js-xds, grpc-go,
    /// grpc-java; the file GRPC_XDS_BOOTSTRAP names), for clients that dial
    /// `xds:///<listener>` of a `proxyless: true` listener. gRPC has no admin, stats sink
    /// or load reporting to cutover: only --node-id, --node-cluster, --node-metadata, --ads
    /// and --tls-ca/--tls-cert/--tls-key (gRPC's `tls` channel credentials; cutover's
    /// certificate is checked against the host of --ads) apply.
    #[arg(long, conflicts_with_all = ["no_stats_sink", "no_load_reporting", "all_stats", "delta", "format", "tls_server_name"])]
    grpc: bool,
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    format: Format,
}

/// Prints the bootstrap; exit 0.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let NodeInfo {
        id,
        cluster,
        metadata,
    } = super::node(args.node_id, args.node_cluster, args.node_metadata);
    if args.grpc {
        let b = grpc_bootstrap::grpc_bootstrap(&grpc_bootstrap::GrpcBootstrapOptions {
            node_id: id,
            node_cluster: cluster,
            node_metadata: metadata,
            ads: args.ads,
            tls: args.tls_ca.map(|ca| grpc_bootstrap::GrpcTls {
                ca,
                cert_and_key: args.tls_cert.zip(args.tls_key),
            }),
        });
        print_value(&b, Format::Json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let b = bootstrap::bootstrap(&bootstrap::BootstrapOptions {
        node_id: id,
        node_cluster: cluster,
        node_metadata: metadata,
        ads: args.ads,
        admin: args.admin,
        stats_sink: !args.no_stats_sink,
        load_reporting: !args.no_load_reporting,
        all_stats: args.all_stats,
        delta: args.delta,
        tls: args.tls_ca.map(|ca| bootstrap::ClientTls {
            ca,
            cert_and_key: args.tls_cert.zip(args.tls_key),
            server_name: args.tls_server_name,
        }),
    });
    print_value(&render::to_json(&b)?, args.format)?;
    Ok(ExitCode::SUCCESS)
}
