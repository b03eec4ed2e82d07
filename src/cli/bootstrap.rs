//! `cutover bootstrap`: an Envoy bootstrap that gets all of its config from cutover, or with
//! `--grpc` the xDS bootstrap of a proxyless gRPC client.

use std::net::SocketAddr;
use std::process::ExitCode;

use serde_json::Value;

use super::output::{Format, print_value};
use crate::bootstrap::{self, Client, ClientTls};
use crate::render;
use crate::spec::EndpointAddress;

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
    /// that Envoy resolves with DNS. Several replicas: a comma-separated list (a:18000,b:18000),
    /// or a name that resolves to several; a broken stream is opened again to another.
    #[arg(long, default_value = "127.0.0.1:18000", value_delimiter = ',', num_args = 1..)]
    ads: Vec<EndpointAddress>,
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
    let (value, format) = made(args)?;
    print_value(&value, format)?;
    Ok(ExitCode::SUCCESS)
}

/// The bootstrap `args` ask for, and how it is printed (gRPC's is JSON, always).
fn made(args: Args) -> anyhow::Result<(Value, Format)> {
    let hosts: std::collections::BTreeSet<String> = args.ads.iter().map(|a| a.host()).collect();
    if !args.grpc && args.tls_ca.is_some() && args.tls_server_name.is_none() && hosts.len() > 1 {
        anyhow::bail!(
            "--ads names {} hosts ({}) and Envoy checks every replica's certificate against one \
             name: give --tls-server-name, the name each replica's certificate carries",
            hosts.len(),
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let client = Client {
        node: super::node(args.node_id, args.node_cluster, args.node_metadata),
        ads: args.ads,
        tls: args.tls_ca.map(|ca| ClientTls {
            ca,
            cert_and_key: args.tls_cert.zip(args.tls_key),
        }),
    };
    if args.grpc {
        return Ok((bootstrap::grpc::bootstrap(&client), Format::Json));
    }
    let b = bootstrap::envoy::bootstrap(&bootstrap::envoy::Options {
        client,
        admin: args.admin,
        stats_sink: !args.no_stats_sink,
        load_reporting: !args.no_load_reporting,
        all_stats: args.all_stats,
        delta: args.delta,
        tls_server_name: args.tls_server_name,
    });
    Ok((render::to_json(&b)?, args.format))
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use clap::Parser as _;

    use super::*;
    use crate::cli::output::value_text;

    #[derive(clap::Parser)]
    struct Bootstrap {
        #[command(flatten)]
        args: Args,
    }

    /// What `cutover bootstrap FLAGS` prints.
    fn printed(flags: &str) -> String {
        let argv = std::iter::once("bootstrap").chain(flags.split_whitespace());
        let args = Bootstrap::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{flags}: {e}"))
            .args;
        let (value, format) = made(args).unwrap();
        value_text(&value, format).unwrap()
    }

    /// Every combination of flags the README, the tests and the benches use, as printed: a
    /// change to what any of them prints shows in the snapshot.
    #[test]
    fn what_bootstrap_prints_for_each_combination_of_flags_in_use() {
        let combinations = [
            "--node-id edge-1",
            "--node-id edge-1 --ads 127.0.0.1:18000 --format json",
            "--node-id edge-1 --ads 127.0.0.1:41000 --admin 127.0.0.1:0 --format yaml --delta",
            "--node-id front --ads cutover:18000 --admin 0.0.0.0:9901",
            "--node-id sidecar-1 --node-cluster sidecars --node-metadata role=sidecar \
             --node-metadata zone=eu-1",
            "--node-id edge-1 --no-stats-sink --no-load-reporting",
            "--node-id edge-1 --no-stats-sink",
            "--node-id edge-1 --all-stats",
            "--node-id edge-1 --ads cutover.corp.example:18000 --tls-ca cutover-ca.pem \
             --tls-cert edge-1.pem --tls-key edge-1-key.pem",
            "--node-id edge-1 --delta --tls-ca /pki/ca.pem --tls-cert /pki/edge.pem \
             --tls-key /pki/edge-key.pem",
            "--node-id edge-1 --ads 10.0.0.7:18000 --tls-ca ca.pem --tls-server-name cutover.internal",
            "--grpc --node-id grpc-checkout-1 --ads 127.0.0.1:18000",
            "--grpc --node-id grpc-1 --node-cluster shop --node-metadata role=client",
            "--grpc --node-id grpc-1 --ads cutover.corp.example:18000 --tls-ca ca.pem",
            "--grpc --node-id grpc-1 --ads localhost:18000 --tls-ca /pki/ca.pem \
             --tls-cert /pki/client.pem --tls-key /pki/client-key.pem",
            "--node-id edge-1 --ads 10.0.0.7:18000,10.0.0.8:18000,10.0.0.9:18000",
            "--node-id edge-1 --ads a.cutover:18000,b.cutover:18000 --tls-ca ca.pem \
             --tls-server-name cutover.internal",
            "--grpc --node-id grpc-1 --ads a.cutover:18000,b.cutover:18000",
        ];
        let mut out = String::new();
        for flags in combinations {
            let flags = flags.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(out, "### cutover bootstrap {flags}\n{}", printed(&flags));
        }
        insta::assert_snapshot!(out);
    }

    /// Replicas of different names over TLS need the one name Envoy checks them all against.
    #[test]
    fn several_hosts_over_tls_need_a_server_name() {
        let argv = "bootstrap --node-id e --ads a:18000,b:18000 --tls-ca ca.pem".split(' ');
        let args = Bootstrap::try_parse_from(argv).unwrap().args;
        let err = made(args).unwrap_err().to_string();
        assert!(
            err.contains("--tls-server-name") && err.contains("a, b"),
            "{err}"
        );
    }
}
