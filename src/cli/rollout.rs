//! `cutover promote|abort|pause|resume SERVICE`: one operator command to a running cutover's
//! rollout of a service (`POST /rollouts/{service}/{command}`).

use std::net::SocketAddr;
use std::process::ExitCode;

use super::output::{complain, say};
use super::status::{DEFAULT_ADMIN, control};
use crate::api::RolloutCommand;

/// Where a rollout command goes.
#[derive(clap::Args)]
pub struct Args {
    /// The service whose rollout it is.
    service: String,
    /// cutover's admin address (`cutover serve --admin`).
    #[arg(long, default_value = DEFAULT_ADMIN, env = "CUTOVER_ADMIN")]
    admin: SocketAddr,
    /// The admin token (`cutover serve --admin-token`), needed unless the admin address is on
    /// loopback.
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// Sends `command`; prints what cutover did. Exit 0 if done, 1 if refused or unreachable.
pub fn run(args: Args, command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let runtime = super::current_thread_runtime()?;
    match runtime.block_on(control(
        args.admin,
        &args.service,
        command,
        args.admin_token.as_deref(),
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
