//! The demo: the upstream application it deploys ([`upstream`], `cutover demo-upstream`) and
//! its no-Docker twin ([`twin`], `cutover demo`). The Docker Compose demo (`docker-compose.yml`)
//! runs the same upstreams in containers.
//!
//! A module of the binary, not of the library: nothing but these two commands uses it, and
//! the library's users (tests, benches, embedders) have no use for a demo.

pub mod certs;
pub mod twin;
pub mod upstream;

use std::process::ExitCode;

use anyhow::Context as _;
use cutover::cli::{self, output::say};

/// `cutover demo-upstream`: serves until Ctrl-C or SIGTERM; prints the address it listens on.
pub fn run_upstream(opts: &upstream::Options) -> anyhow::Result<ExitCode> {
    let runtime = cli::current_thread_runtime()?;
    runtime.block_on(async {
        let upstream = upstream::Upstream::start(opts).await?;
        say(format_args!("listening on {}\n", upstream.addr))?;
        upstream.run_until(cli::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `cutover demo-certs DIR`: prints what it did.
pub fn run_certs(opts: &certs::Options) -> anyhow::Result<ExitCode> {
    say(format_args!("{}\n", certs::ensure(&opts.dir)?))?;
    Ok(ExitCode::SUCCESS)
}

/// `cutover demo`: runs until Ctrl-C, SIGTERM or `--duration`.
pub fn run(opts: twin::Options) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(twin::run(opts, cli::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use serde_json::Value;

    use crate::{Cli, Command};

    /// `cutover demo` starts the same upstreams as docker-compose.yml, each with its colour and
    /// share of failed requests (`tests/cli_demo_files.rs` checks the rest of the compose file).
    /// The compose commands are read as the image's `cutover` reads them.
    #[test]
    fn the_twin_starts_the_compose_demos_upstreams() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let compose: Value = serde_saphyr::from_str(&text).expect("docker-compose.yml is YAML");
        for (name, colour, fail) in super::twin::UPSTREAMS {
            let command = compose["services"][name]["command"]
                .as_array()
                .unwrap_or_else(|| panic!("no compose service {name} with a command"));
            let argv = command.iter().map(|a| match a {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let cli = Cli::try_parse_from(std::iter::once("cutover".to_owned()).chain(argv))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let Command::DemoUpstream(opts) = cli.command else {
                panic!("{name} does not run `cutover demo-upstream`");
            };
            assert_eq!(opts.colour.as_deref(), Some(colour), "{name}");
            assert_eq!(opts.fail_percent, fail, "{name}");
        }
    }
}
