//! `cutover serve`: the server, until Ctrl-C or SIGTERM ([`crate::app`] does the work).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;

use crate::app;
use crate::tls::TlsFiles;
use crate::xds::limits::{ClientLimits, MIB};

/// `--max-stream-age` in cluster mode (as Istio's default connection age).
const DEFAULT_STREAM_AGE: Duration = Duration::from_secs(30 * 60);

/// How long the controller gets to save the runtime state once asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct Args {
    /// The deployment file.
    file: PathBuf,
    /// Address of the xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:18000", env = "CUTOVER_ADS")]
    ads: SocketAddr,
    /// Address of the admin HTTP API (/status, /config, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:19000", env = "CUTOVER_ADMIN")]
    admin: SocketAddr,
    /// How long an endpoint or version removed from the file stays in Envoy as DRAINING
    /// (no new requests, requests in flight finish) before it is removed. 0s removes at once.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_period: Duration,
    /// Bearer token that lets callers other than loopback use the admin API's mutating
    /// endpoints (POST /reload). Loopback callers never need it.
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The runtime state file: what is draining or retiring, with its deadlines, so that a
    /// restart keeps it. Default: FILE.state.json beside the deployment file.
    #[arg(long, env = "CUTOVER_STATE")]
    state: Option<PathBuf>,
    /// Only Envoys whose node id matches one of these globs (e.g. `edge-*`) get config; the
    /// others are refused with PERMISSION_DENIED. Repeat for several. Default: everyone.
    #[arg(long = "allow-node", value_name = "GLOB")]
    allow_nodes: Vec<String>,
    /// Start even if the deployment file is missing or invalid, and wait for a valid save
    /// (/readyz answers 503 meanwhile). Without it such a start fails at once.
    #[arg(long)]
    wait_for_file: bool,
    /// Most concurrent gRPC streams (xDS and telemetry, all Envoys together); one more is
    /// refused with RESOURCE_EXHAUSTED. An Envoy opens one ADS stream, and one stats and
    /// one load reporting stream unless its bootstrap turns them off.
    #[arg(long, env = "CUTOVER_MAX_STREAMS", default_value_t = ClientLimits::default().max_streams,
          value_parser = positive)]
    max_streams: usize,
    /// Largest message a client may send, in MiB; a larger one ends its stream with
    /// RESOURCE_EXHAUSTED. Envoy's largest is a state-of-the-world EDS request naming every
    /// cluster.
    #[arg(long, env = "CUTOVER_MAX_MESSAGE_MIB", default_value_t = (ClientLimits::default().max_message_bytes / MIB) as u16,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    max_message_mib: u16,
    /// Most resource names one xDS stream may subscribe to (all types together); more ends
    /// the stream with RESOURCE_EXHAUSTED. An Envoy subscribes to one name per cluster and
    /// per listener.
    #[arg(long, env = "CUTOVER_MAX_NAMES", default_value_t = ClientLimits::default().max_names,
          value_parser = positive)]
    max_names: usize,
    /// An HTTP/2 PING is sent on a connection silent for this long; with --keepalive-timeout
    /// it bounds how long an Envoy that vanished (no FIN) stays connected.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive: Duration,
    /// A PING not answered within this closes the connection and ends its streams.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// Several replicas: a client's connection is closed (GOAWAY, then its xDS stream ends)
    /// after this long, plus up to a tenth more at random, so that it connects again, perhaps
    /// to another replica: Envoys piled on some replicas after a failover spread again. It
    /// changes nothing in Envoy (versions are content hashes). 0s: never. Default: 30m with
    /// --etcd, else never.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_stream_age: Option<Duration>,
    /// Load reports a second this cutover takes. Each carries Envoy's whole node description
    /// (about 60 KB), so beyond this many Envoys the interval they are asked to report at
    /// doubles (1 s, 2 s, 4 s, ... at most 64 s): a fleet's load reports cost at most about
    /// this many times 60 KB/s, and `cutover wait drained` waits up to one interval longer.
    #[arg(long, env = "CUTOVER_LOAD_REPORTS_PER_SECOND",
          default_value_t = crate::telemetry::lrs::LOAD_REPORTS_PER_SECOND, value_parser = positive)]
    load_reports_per_second: usize,
    /// Serve the xDS port (ADS, CSDS and the telemetry services) over TLS with this
    /// certificate chain (PEM). It and its key are read again when they change; open streams
    /// go on.
    #[arg(
        long,
        env = "CUTOVER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "CUTOVER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every client must present a certificate this CA (PEM) signed, and its
    /// node id must be one the certificate may use (the deployment file's `access:` rules;
    /// without them, one of the certificate's DNS or URI names).
    #[arg(
        long,
        env = "CUTOVER_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Cluster mode: etcd's client URLs (`http://host:2379`, comma-separated). Several
    /// replicas given the same URLs and prefix share one deployment: one leads and decides,
    /// every one serves the same record of file and state (no state file is used).
    #[arg(
        long,
        env = "CUTOVER_ETCD",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
    /// Every key of this cluster is under it in etcd. Default: /cutover/<the file's name
    /// without its extension>.
    #[arg(long, env = "CUTOVER_ETCD_PREFIX", requires = "etcd")]
    etcd_prefix: Option<String>,
    /// This replica's name, unique in the cluster (in Kubernetes, the pod's name).
    /// Default: the host name.
    #[arg(long, env = "CUTOVER_REPLICA", requires = "etcd")]
    replica: Option<String>,
    /// Where the other replicas reach this one's admin API, to hand it the operator commands
    /// they receive while it leads. Default: http://<--admin>.
    #[arg(
        long,
        env = "CUTOVER_ADVERTISE_ADMIN",
        value_name = "URL",
        requires = "etcd"
    )]
    advertise_admin: Option<String>,
    /// etcd over TLS (`https://` URLs): the CA that signed etcd's certificate (PEM).
    #[arg(long, env = "CUTOVER_ETCD_CA", value_name = "FILE", requires = "etcd")]
    etcd_ca: Option<PathBuf>,
    /// For etcd's `--client-cert-auth`: this replica's certificate (PEM), signed by a CA etcd
    /// trusts.
    #[arg(
        long,
        env = "CUTOVER_ETCD_CERT",
        value_name = "FILE",
        requires_all = ["etcd_key", "etcd_ca"]
    )]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(
        long,
        env = "CUTOVER_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    etcd_key: Option<PathBuf>,
    /// How long a replica that died or hangs keeps leading before another takes over.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "etcd")]
    lease_ttl: Duration,
    /// Log format; levels come from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the server logs (`main.rs` sets tracing up before [`run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A whole number from 1 (a limit of 0 would refuse everything).
fn positive(value: &str) -> Result<usize, String> {
    match value.trim().replace('_', "").parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value:?} is not a limit: write a whole number from 1"
        )),
    }
}

/// This machine's name (`/etc/hostname`, `$HOSTNAME`), or `cutover-<pid>`.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("cutover-{}", std::process::id()))
}

/// Serves until Ctrl-C or SIGTERM, then saves the runtime state.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cluster = (!args.etcd.is_empty()).then(|| crate::replica::ClusterOptions {
        prefix: args.etcd_prefix.clone().unwrap_or_else(|| {
            let stem = args.file.file_stem().unwrap_or_default().to_string_lossy();
            format!("/cutover/{stem}")
        }),
        endpoints: args.etcd.clone(),
        name: args.replica.clone().unwrap_or_else(host_name),
        admin_url: args.advertise_admin.clone().unwrap_or_default(),
        lease_ttl: args.lease_ttl,
        tls: args.etcd_ca.clone().map(|ca| crate::replica::EtcdTls {
            ca,
            identity: args.etcd_cert.clone().zip(args.etcd_key.clone()),
        }),
    });
    let options = app::ServeOptions {
        file: args.file,
        ads: args.ads,
        admin: args.admin,
        drain_period: args.drain_period,
        admin_token: args.admin_token,
        state_file: args.state,
        allow_nodes: args.allow_nodes,
        wait_for_file: args.wait_for_file,
        load_reports_per_second: args.load_reports_per_second,
        clients: ClientLimits {
            max_streams: args.max_streams,
            max_message_bytes: usize::from(args.max_message_mib) * MIB,
            max_names: args.max_names,
            keepalive_interval: args.keepalive,
            keepalive_timeout: args.keepalive_timeout,
            max_stream_age: args
                .max_stream_age
                .or((!args.etcd.is_empty()).then_some(DEFAULT_STREAM_AGE))
                .filter(|a| !a.is_zero()),
        },
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }),
        cluster,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = app::start(options).await?;
        server
            .run_until(
                async {
                    super::shutdown_signal().await;
                    tracing::info!("shutting down");
                },
                SHUTDOWN_GRACE,
            )
            .await
    })?;
    Ok(ExitCode::SUCCESS)
}
