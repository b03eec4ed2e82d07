//! The `cutover` command line: argument parsing and logging setup; everything else is in the
//! library.

use std::fmt;
use std::io::{self, IsTerminal as _, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use cutover::api::{RolloutCommand, WaitFor};
use cutover::spec::{self, SpecError};
use cutover::xds::limits::{ClientLimits, MIB};
use cutover::{app, bootstrap, cli, grpc_bootstrap, render};

/// jemalloc, returning freed memory to the system within about a second (a background thread
/// purges): with glibc's allocator, a 100,000-endpoint file replaced by a small one left cutover
/// at ~125 MiB resident; with this, it goes back to ~29 MiB (docs/benchmarks.md, "File scale").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc itself at start (the documented way to configure it
/// without an environment variable).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "cutover", version, about = "Zero-downtime deployments on Envoy from one YAML file", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a deployment file to Envoy over xDS and apply every save of it.
    ///
    /// Envoys connect to the ADS address (see `cutover bootstrap`). The file is watched; a valid
    /// save is pushed within milliseconds, an invalid one is reported (log and admin /status)
    /// and the last good config keeps being served.
    Serve {
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
        drain_period: std::time::Duration,
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
        keepalive: std::time::Duration,
        /// A PING not answered within this closes the connection and ends its streams.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        keepalive_timeout: std::time::Duration,
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
        /// Log format; levels come from RUST_LOG (default: info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a deployment file; list every problem as file:line:column. Exit 0 if valid, 1 if not.
    Validate {
        /// The deployment file.
        file: PathBuf,
    },
    /// Print the exact Envoy resources the file becomes (clusters, endpoints, listeners, routes).
    ///
    /// Without --state, what a freshly started cutover serves; with it, what a cutover with that
    /// runtime state serves (endpoints and versions still draining, red-black versions still
    /// retiring), as of --at.
    Render {
        /// The deployment file.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        /// A runtime state file (`cutover serve --state`, by default FILE.state.json).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The time to render for, RFC 3339 (e.g. 2026-11-22T10:00:00Z). Default: now.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        at: Option<std::time::SystemTime>,
        /// Only what an Envoy with this node id gets (its group's listeners and services).
        /// Without it, every resource of every group.
        #[arg(long = "node", value_name = "ID")]
        node_id: Option<String>,
        /// The node cluster of that Envoy (defaults to the node id, as in `cutover bootstrap`).
        #[arg(long, value_name = "CLUSTER", requires = "node_id")]
        node_cluster: Option<String>,
        /// A node metadata entry of that Envoy; repeat for several.
        #[arg(long = "node-metadata", value_name = "KEY=VALUE", requires = "node_id", value_parser = key_value)]
        node_metadata: Vec<(String, String)>,
    },
    /// Print an Envoy bootstrap that gets all of its config from cutover over ADS (or, with
    /// --grpc, the xDS bootstrap of gRPC's own xDS clients).
    ///
    /// Example: cutover bootstrap --node-id edge-1 > envoy.yaml && envoy -c envoy.yaml
    ///
    /// Example: cutover bootstrap --grpc --node-id grpc-1 > xds.json &&
    /// GRPC_XDS_BOOTSTRAP=xds.json my-grpc-client   # which dials xds:///checkout
    Bootstrap {
        /// The Envoy node id, shown in cutover's /status.
        #[arg(long)]
        node_id: String,
        /// The Envoy node cluster (defaults to the node id).
        #[arg(long)]
        node_cluster: Option<String>,
        /// A node metadata entry (a string value), for the deployment file's `groups` to match;
        /// repeat for several.
        #[arg(long = "node-metadata", value_name = "KEY=VALUE", value_parser = key_value)]
        node_metadata: Vec<(String, String)>,
        /// cutover's ADS address, as Envoy reaches it: IP:PORT, or HOST:PORT (e.g. cutover:18000)
        /// that Envoy resolves with DNS.
        #[arg(long, default_value = "127.0.0.1:18000")]
        ads: cutover::spec::EndpointAddress,
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
    },
    /// Show what a running cutover serves: config version, last reload, services and every
    /// connected Envoy with the versions it ACKed, has pending and rejected.
    ///
    /// Reads GET /status from cutover's admin API. Exit 1 if it cannot be reached.
    Status {
        /// cutover's admin address (`cutover serve --admin`).
        #[arg(long, default_value = cli::status::DEFAULT_ADMIN, env = "CUTOVER_ADMIN")]
        admin: SocketAddr,
        /// Print the JSON as served instead of tables.
        #[arg(long)]
        json: bool,
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Show what Envoy would see change between two deployment files: clusters, endpoints,
    /// listeners and routes added (+), removed (-) or changed (~).
    ///
    /// Both files are compiled as a freshly started cutover would serve them: a running one also
    /// keeps removed endpoints DRAINING for --drain-period and a red-black service's previous
    /// version for its grace period; the diff shows where they end up. Exit 0 if Envoy would
    /// see no difference, 1 if it would, 2 if a file cannot be read or is invalid.
    Diff {
        /// The deployment file as it is (e.g. the one being served).
        old: PathBuf,
        /// The deployment file as it would be.
        new: PathBuf,
    },
    /// Wait until endpoints are drained (no request in flight from any Envoy) or healthy, for a
    /// rolling deploy: drain → wait drained → stop and replace → wait healthy.
    ///
    /// Exit 0 once it is so, 1 on --timeout (printing what is still awaited, where), 2 if the
    /// service or target is unknown or cutover cannot be reached.
    Wait {
        /// `drained`: the endpoints are draining, every Envoy ACKed that, and none reports a
        /// request in flight to them. `healthy`: they get requests again and every Envoy counts
        /// the version's serving endpoints healthy.
        #[arg(value_enum)]
        what: WaitFor,
        /// The service.
        service: String,
        /// A version, or one endpoint as the file writes it (IP:PORT); the whole service
        /// without it.
        target: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// cutover's admin address (`cutover serve --admin`).
        #[arg(long, default_value = cli::status::DEFAULT_ADMIN, env = "CUTOVER_ADMIN")]
        admin: SocketAddr,
    },
    /// Promote a service's rollout now: a canary gets every request, a switch is accepted.
    Promote(Control),
    /// Roll a service's rollout back now: the canary gets no request, a switch goes back.
    Abort(Control),
    /// Pause a service's rollout: no step advances and no check runs until `resume`.
    Pause(Control),
    /// Resume a paused rollout (its step's time starts again), or start a rolled-back one again
    /// from its first step.
    Resume(Control),
    /// Run the demo's upstream application: answers every request with its version and colour,
    /// /health with 200, and can be told to fail or slow down (POST /fail?percent=N, POST
    /// /slow?ms=N). Prints the address it listens on.
    DemoUpstream(cutover::demo::upstream::Options),
    /// The Docker Compose demo without Docker: Envoy, cutover and the demo upstreams as local
    /// processes on loopback, with live bars of the requests each version answers.
    ///
    /// Edit the deployment file it prints (a copy of examples/demo.yaml for loopback) in another
    /// window and watch the bars move. Ctrl-C stops every process it started.
    Demo(cutover::demo::twin::Options),
    /// Print the JSON Schema of the deployment file, for editor completion and help.
    ///
    /// The repository keeps it as deploy.schema.json; regenerate it with
    /// `cargo run -- schema > deploy.schema.json`.
    Schema,
}

/// Where a rollout command goes.
#[derive(clap::Args)]
struct Control {
    /// The service whose rollout it is.
    service: String,
    /// cutover's admin address (`cutover serve --admin`).
    #[arg(long, default_value = cli::status::DEFAULT_ADMIN, env = "CUTOVER_ADMIN")]
    admin: SocketAddr,
    /// The admin token (`cutover serve --admin-token`), needed unless the admin address is on
    /// loopback.
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
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

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Nowhere is left to report a failure to write to stderr.
            let _ = writeln!(io::stderr(), "error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every command reads files against the same limits, so that `validate` accepts exactly
    // what `serve` does.
    let limits = spec::Limits::from_env(|var| std::env::var(var).ok())?;
    // The first and only install in this process: it cannot have been done already.
    let _ = limits.install();
    match cli.command {
        Command::Serve {
            file,
            ads,
            admin,
            drain_period,
            admin_token,
            state,
            allow_nodes,
            wait_for_file,
            max_streams,
            max_message_mib,
            max_names,
            keepalive,
            keepalive_timeout,
            tls_cert,
            tls_key,
            tls_client_ca,
            log_format,
        } => {
            init_tracing(log_format);
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let server = app::start(app::ServeOptions {
                    file,
                    ads,
                    admin,
                    drain_period,
                    admin_token,
                    state_file: state,
                    allow_nodes,
                    wait_for_file,
                    clients: ClientLimits {
                        max_streams,
                        max_message_bytes: usize::from(max_message_mib) * MIB,
                        max_names,
                        keepalive_interval: keepalive,
                        keepalive_timeout,
                    },
                    tls: tls_cert
                        .zip(tls_key)
                        .map(|(cert, key)| cutover::tls::TlsFiles {
                            cert,
                            key,
                            client_ca: tls_client_ca,
                        }),
                })
                .await?;
                server
                    .run_until(
                        async {
                            shutdown_signal().await;
                            tracing::info!("shutting down");
                        },
                        std::time::Duration::from_secs(5),
                    )
                    .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file } => match compile_file(&file, app::compile) {
            Ok(snapshot) => {
                let label = file.display();
                say(format_args!(
                    "{label}: valid (config version {})\n",
                    snapshot.version
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(failure) => {
                failure.report()?;
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Render {
            file,
            format,
            state,
            at,
            node_id,
            node_cluster,
            node_metadata,
        } => {
            let node = node_id.map(|id| cutover::node::NodeInfo {
                cluster: node_cluster.unwrap_or_else(|| id.clone()),
                id,
                metadata: node_metadata.into_iter().collect(),
            });
            let runtime = match &state {
                None => Default::default(),
                Some(path) => cutover::store::StateFile::new(path.clone())
                    .read()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                    .with_context(|| format!("{}: no such state file", path.display()))?,
            };
            let now = at.map_or_else(cutover::reconcile::Timestamp::now, Into::into);
            let compile = |label: &str, text: &str| {
                app::compile_plan_with(label, text, runtime, now).map(|plan| {
                    let resources = match &node {
                        None => cutover::translate::translate(&plan),
                        Some(node) => {
                            let (group, resources) = app::resources_for_node(&plan, node);
                            // On stderr: stdout stays exactly the resources.
                            if group.is_unmatched() {
                                eprintln!(
                                    "warning: no group of the file matches node {:?}: it gets an empty config",
                                    node.id
                                );
                            } else {
                                eprintln!("node {:?} is in group {group}", node.id);
                            }
                            resources
                        }
                    };
                    cutover::snapshot::Snapshot::new(&resources)
                })
            };
            match compile_file(&file, compile) {
                Ok(snapshot) => {
                    print_value(&render::snapshot_json(&snapshot)?, format)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    failure.report()?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Bootstrap {
            node_id,
            node_cluster,
            node_metadata,
            ads,
            admin,
            no_stats_sink,
            no_load_reporting,
            all_stats,
            delta,
            tls_ca,
            tls_cert,
            tls_key,
            tls_server_name,
            grpc,
            format,
        } => {
            if grpc {
                let b = grpc_bootstrap::grpc_bootstrap(&grpc_bootstrap::GrpcBootstrapOptions {
                    node_cluster: node_cluster.unwrap_or_else(|| node_id.clone()),
                    node_id,
                    node_metadata: node_metadata.into_iter().collect(),
                    ads,
                    tls: tls_ca.map(|ca| grpc_bootstrap::GrpcTls {
                        ca,
                        cert_and_key: tls_cert.zip(tls_key),
                    }),
                });
                print_value(&b, Format::Json)?;
                return Ok(ExitCode::SUCCESS);
            }
            let b = bootstrap::bootstrap(&bootstrap::BootstrapOptions {
                node_cluster: node_cluster.unwrap_or_else(|| node_id.clone()),
                node_id,
                node_metadata: node_metadata.into_iter().collect(),
                ads,
                admin,
                stats_sink: !no_stats_sink,
                load_reporting: !no_load_reporting,
                all_stats,
                delta,
                tls: tls_ca.map(|ca| bootstrap::ClientTls {
                    ca,
                    cert_and_key: tls_cert.zip(tls_key),
                    server_name: tls_server_name,
                }),
            });
            print_value(&render::to_json(&b)?, format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { admin, json, watch } => status(admin, json, watch),
        Command::Diff { old, new } => diff(&old, &new),
        Command::Wait {
            what,
            service,
            target,
            timeout,
            admin,
        } => wait(what, &service, target.as_deref(), timeout, admin),
        Command::Promote(c) => control(c, RolloutCommand::Promote),
        Command::Abort(c) => control(c, RolloutCommand::Abort),
        Command::Pause(c) => control(c, RolloutCommand::Pause),
        Command::Resume(c) => control(c, RolloutCommand::Resume),
        Command::DemoUpstream(opts) => {
            init_tracing(LogFormat::Text);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let upstream = cutover::demo::upstream::Upstream::start(&opts).await?;
                say(format_args!("listening on {}\n", upstream.addr))?;
                upstream.run_until(shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(opts) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(cutover::demo::twin::run(opts, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            say(format_args!("{}", cli::schema::deployment_schema_text()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Why a deployment file did not compile.
enum Failure {
    Unreadable(String, io::Error),
    Invalid(SpecError),
}

impl Failure {
    /// Prints it to stderr: every problem, then how many.
    fn report(&self) -> anyhow::Result<()> {
        match self {
            Failure::Unreadable(label, err) => {
                complain(format_args!("error: cannot read {label}: {err}\n"))?;
            }
            Failure::Invalid(err) => {
                let n = err.problems.len();
                let s = if n == 1 { "" } else { "s" };
                complain(format_args!("{err}\n{}: {n} problem{s}\n", err.file))?;
            }
        }
        Ok(())
    }
}

/// Reads a deployment file and compiles it with `compile` (into the snapshot or the resources a
/// freshly started `serve` would have).
fn compile_file<T>(
    file: &Path,
    compile: impl FnOnce(&str, &str) -> Result<T, SpecError>,
) -> Result<T, Failure> {
    let label = file.display().to_string();
    let bytes = read_file(file).map_err(|err| Failure::Unreadable(label.clone(), err))?;
    // Size, UTF-8 (with the position of the first bad byte), YAML and every check.
    spec::parse_bytes(&label, &bytes).map_err(Failure::Invalid)?;
    // Valid UTF-8 now, so this borrows. `app::compile` parses the text again: it takes text,
    // not a `Spec`, and a second parse costs milliseconds.
    let text = String::from_utf8_lossy(&bytes);
    compile(&label, &text).map_err(Failure::Invalid)
}

/// Reads at most one byte more than the file size limit, so that a huge file (or a device
/// such as /dev/zero) is refused by [`spec::parse_bytes`] without being read whole. Unlike the
/// server, a one-shot command reads pipes too (`cutover validate <(generate)`).
fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    cutover::watch::read_bounded(std::fs::File::open(path)?)
}

fn status(admin: SocketAddr, json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let color = cli::color_for_stdout();
    let show = |fetched: &Result<(String, cutover::api::StatusReport), cli::status::FetchError>| {
        match fetched {
            Ok((body, _)) if json => say(format_args!("{}\n", body.trim_end())),
            Ok((_, report)) => say(format_args!(
                "{}",
                cli::status::render_status(report, color)
            )),
            Err(err) => complain(format_args!("error: {err}\n")),
        }
    };
    if !watch {
        let fetched = runtime.block_on(cli::status::fetch(admin));
        show(&fetched)?;
        return Ok(if fetched.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let terminal = io::stdout().is_terminal();
    runtime.block_on(async {
        loop {
            let fetched = cli::status::fetch(admin).await;
            // Clear the screen and go home, as watch(1) does; an error stays on screen until
            // the next refresh, so cutover coming back is picked up. Into a pipe or a file,
            // refreshes follow each other.
            let clear = if terminal { "\x1b[2J\x1b[H" } else { "" };
            let header = say(format_args!(
                "{clear}every 1s: cutover status --admin {admin}    {}\n\n",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            ))?;
            // The reader is gone (`cutover status --watch | head`): nobody is watching.
            if header == Written::Closed || show(&fetched)? == Written::Closed {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

/// `cutover wait drained|healthy`: asks every 250 ms; prints what it waits for whenever that
/// changes.
fn wait(
    what: WaitFor,
    service: &str,
    target: Option<&str>,
    timeout: std::time::Duration,
    admin: SocketAddr,
) -> anyhow::Result<ExitCode> {
    let subject = match target {
        Some(t) => format!("{service} {t}"),
        None => service.to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let deadline = std::time::Instant::now() + timeout;
    let mut shown: Vec<String> = Vec::new();
    loop {
        match runtime.block_on(cli::status::wait_once(admin, what, service, target)) {
            Ok(Ok(answer)) if answer.done => {
                say(format_args!("{subject}: {what}\n"))?;
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Ok(answer)) => {
                if answer.waiting_for != shown {
                    for w in &answer.waiting_for {
                        complain(format_args!("waiting for: {w}\n"))?;
                    }
                    shown = answer.waiting_for;
                }
            }
            Ok(Err(refused)) => {
                complain(format_args!("error: {refused}\n"))?;
                return Ok(ExitCode::from(2));
            }
            Err(err) => {
                complain(format_args!("error: {err}\n"))?;
                return Ok(ExitCode::from(2));
            }
        }
        if std::time::Instant::now() >= deadline {
            complain(format_args!(
                "error: {subject} not {what} after {}; still waiting for:\n",
                humantime::format_duration(timeout)
            ))?;
            for w in &shown {
                complain(format_args!("  {w}\n"))?;
            }
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `cutover promote|abort|pause|resume SERVICE`: exit 0 if done, 1 if refused or unreachable.
fn control(c: Control, command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(cli::status::control(
        c.admin,
        &c.service,
        command,
        c.admin_token.as_deref(),
    )) {
        Ok(Ok(done)) => {
            say(format_args!("{done}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(refused)) => {
            complain(format_args!("error: {refused}\n"))?;
            Ok(ExitCode::FAILURE)
        }
        Err(err) => {
            complain(format_args!("error: {err}\n"))?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `cutover diff`: exit 0 same, 1 different, 2 trouble (like diff(1)).
fn diff(old: &Path, new: &Path) -> anyhow::Result<ExitCode> {
    const TROUBLE: u8 = 2;
    let mut compiled = Vec::new();
    let mut failed = false;
    for file in [old, new] {
        match compile_file(file, app::compile_plan) {
            Ok(plan) => compiled.push((file.display().to_string(), plan)),
            Err(failure) => {
                failure.report()?;
                failed = true;
            }
        }
    }
    let [(old_label, old), (new_label, new)] = match <[_; 2]>::try_from(compiled) {
        Ok(both) if !failed => both,
        _ => return Ok(ExitCode::from(TROUBLE)),
    };
    let (old_resources, new_resources) = (
        cutover::translate::translate(&old),
        cutover::translate::translate(&new),
    );
    let side = |label, resources| cli::diff::Side { label, resources };
    match cli::diff::diff(
        side(&old_label, &old_resources),
        side(&new_label, &new_resources),
    ) {
        Ok(d) => {
            let d = d.with_groups(&old, &new);
            say(format_args!("{}", d.render(cli::color_for_stdout())))?;
            Ok(if d.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(err) => {
            complain(format_args!("error: {err}\n"))?;
            Ok(ExitCode::from(TROUBLE))
        }
    }
}

fn print_value(value: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => say(format_args!("{}\n", serde_json::to_string_pretty(value)?))?,
        Format::Yaml => say(format_args!("{}", render::yaml(value)?))?,
    };
    Ok(())
}

/// Whether output reached its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// The pipe was closed (`cutover render FILE | head -1`): the reader has seen enough. The
    /// command goes on quietly and exits as it would have; later output goes nowhere.
    Closed,
}

/// Prints to stdout.
fn say(args: fmt::Arguments) -> anyhow::Result<Written> {
    written(write_all(io::stdout().lock(), args), "stdout")
}

/// Prints to stderr.
fn complain(args: fmt::Arguments) -> anyhow::Result<Written> {
    written(write_all(io::stderr().lock(), args), "stderr")
}

fn write_all(mut to: impl Write, args: fmt::Arguments) -> io::Result<()> {
    to.write_fmt(args)?;
    to.flush()
}

fn written(result: io::Result<()>, to: &str) -> anyhow::Result<Written> {
    match result {
        Ok(()) => Ok(Written::Yes),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(Written::Closed),
        Err(err) => Err(err).with_context(|| format!("cannot write to {to}")),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `KEY=VALUE` of `--node-metadata`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}
