//! The `cutover` command line: the commands and their help, logging setup and dispatch to each
//! command's `run` in [`cutover::cli`]; everything else is in the library, except the demo
//! ([`demo`]), which is part of the binary only.

use std::io::{self, IsTerminal as _, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cutover::api::RolloutCommand;
use cutover::cli::{self, serve::LogFormat};
// Also `crate::spec` for the demo's modules, written when they were part of the library.
use cutover::spec;

mod demo;

/// jemalloc, returning freed memory to the system within about a second (a background thread
/// purges): with glibc's allocator, a 100,000-endpoint file replaced by a small one left cutover
/// at ~125 MiB resident; with this, it goes back to ~29 MiB (docs/benchmarks.md, "File scale").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc itself at start (the documented way to configure it
/// without an environment variable).
#[allow(
    unsafe_code,
    reason = "exporting a symbol is unsafe in general; this one is the static NUL-terminated \
              string jemalloc reads once, as its documentation says"
)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "cutover", version, about = "Zero-downtime deployments on Envoy from one YAML file", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Every command; its help is the doc comment here, its arguments are in its module.
#[derive(Subcommand)]
enum Command {
    /// Serve a deployment file to Envoy over xDS and apply every save of it.
    ///
    /// Envoys connect to the ADS address (see `cutover bootstrap`). The file is watched; a valid
    /// save is pushed within milliseconds, an invalid one is reported (log and admin /status)
    /// and the last good config keeps being served.
    Serve(Box<cli::serve::Args>),
    /// Check a deployment file; list every problem as file:line:column. Exit 0 if valid, 1 if not.
    Validate(cli::validate::Args),
    /// Print the exact Envoy resources the file becomes (clusters, endpoints, listeners, routes).
    ///
    /// Without --state, what a freshly started cutover serves; with it, what a cutover with that
    /// runtime state serves (endpoints and versions still draining, red-black versions still
    /// retiring), as of --at.
    Render(cli::render::Args),
    /// Print an Envoy bootstrap that gets all of its config from cutover over ADS (or, with
    /// --grpc, the xDS bootstrap of gRPC's own xDS clients).
    ///
    /// Example: cutover bootstrap --node-id edge-1 > envoy.yaml && envoy -c envoy.yaml
    ///
    /// Example: cutover bootstrap --grpc --node-id grpc-1 > xds.json &&
    /// GRPC_XDS_BOOTSTRAP=xds.json my-grpc-client   # which dials xds:///checkout
    Bootstrap(cli::bootstrap::Args),
    /// Show what a running cutover serves: config version, last reload, services and every
    /// connected Envoy with the versions it ACKed, has pending and rejected.
    ///
    /// Reads GET /status from cutover's admin API. Exit 1 if it cannot be reached.
    Status(cli::status::Args),
    /// Show what Envoy would see change between two deployment files: clusters, endpoints,
    /// listeners and routes added (+), removed (-) or changed (~).
    ///
    /// Both files are compiled as a freshly started cutover would serve them: a running one also
    /// keeps removed endpoints DRAINING for --drain-period and a red-black service's previous
    /// version for its grace period; the diff shows where they end up. Exit 0 if Envoy would
    /// see no difference, 1 if it would, 2 if a file cannot be read or is invalid.
    Diff(cli::diff::Args),
    /// Wait until endpoints are drained (no request in flight from any Envoy) or healthy, for a
    /// rolling deploy: drain → wait drained → stop and replace → wait healthy.
    ///
    /// Exit 0 once it is so, 1 on --timeout (printing what is still awaited, where), 2 if the
    /// service or target is unknown or cutover cannot be reached.
    Wait(cli::wait::Args),
    /// Promote a service's rollout now: a canary gets every request, a switch is accepted.
    Promote(cli::rollout::Args),
    /// Roll a service's rollout back now: the canary gets no request, a switch goes back.
    Abort(cli::rollout::Args),
    /// Pause a service's rollout: no step advances and no check runs until `resume`.
    Pause(cli::rollout::Args),
    /// Resume a paused rollout (its step's time starts again), or start a rolled-back one again
    /// from its first step.
    Resume(cli::rollout::Args),
    /// Run the demo's upstream application: answers every request with its version and colour,
    /// /health with 200, and can be told to fail or slow down (POST /fail?percent=N, POST
    /// /slow?ms=N). Prints the address it listens on.
    DemoUpstream(demo::upstream::Options),
    /// Make the demo's certificates in DIR, unless they are all there: a CA, cutover's xDS
    /// server certificate, the front Envoy's client certificate and an HTTPS certificate for
    /// localhost (the compose demo runs it first).
    DemoCerts(demo::certs::Options),
    /// The Docker Compose demo without Docker: Envoy, cutover and the demo upstreams as local
    /// processes on loopback, with live bars of the requests each version answers.
    ///
    /// Edit the deployment file it prints (a copy of examples/demo.yaml for loopback) in another
    /// window and watch the bars move. Ctrl-C stops every process it started.
    Demo(demo::twin::Options),
    /// Print the JSON Schema of the deployment file, for editor completion and help.
    ///
    /// The repository keeps it as deploy.schema.json; regenerate it with
    /// `cargo run -- schema > deploy.schema.json`.
    Schema,
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
        Command::Serve(args) => {
            init_tracing(args.log_format);
            cli::serve::run(*args)
        }
        Command::Validate(args) => cli::validate::run(args),
        Command::Render(args) => cli::render::run(args),
        Command::Bootstrap(args) => cli::bootstrap::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Diff(args) => cli::diff::run(args),
        Command::Wait(args) => cli::wait::run(args),
        Command::Promote(args) => cli::rollout::run(args, RolloutCommand::Promote),
        Command::Abort(args) => cli::rollout::run(args, RolloutCommand::Abort),
        Command::Pause(args) => cli::rollout::run(args, RolloutCommand::Pause),
        Command::Resume(args) => cli::rollout::run(args, RolloutCommand::Resume),
        Command::DemoUpstream(opts) => {
            init_tracing(LogFormat::Text);
            demo::run_upstream(&opts)
        }
        Command::DemoCerts(opts) => demo::run_certs(&opts),
        Command::Demo(opts) => demo::run(opts),
        Command::Schema => cli::schema::run(),
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
