//! `cutover wait drained|healthy`: asks a running cutover's `GET /wait/...` every 250 ms until
//! the endpoints are drained or healthy, printing what it waits for whenever that changes.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::output::{complain, say};
use super::status::{DEFAULT_ADMIN, wait_once};
use crate::api::WaitFor;

/// How often cutover is asked again.
const POLL: Duration = Duration::from_millis(250);

#[derive(clap::Args)]
pub struct Args {
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
    timeout: Duration,
    /// cutover's admin address (`cutover serve --admin`).
    #[arg(long, default_value = DEFAULT_ADMIN, env = "CUTOVER_ADMIN")]
    admin: SocketAddr,
}

/// Exit 0 once it is so, 1 on `--timeout` (printing what is still awaited), 2 if the service or
/// target is unknown or cutover cannot be reached.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        what,
        service,
        target,
        timeout,
        admin,
    } = args;
    let subject = match &target {
        Some(t) => format!("{service} {t}"),
        None => service.clone(),
    };
    let runtime = super::current_thread_runtime()?;
    let deadline = Instant::now() + timeout;
    let mut shown: Vec<String> = Vec::new();
    loop {
        match runtime.block_on(wait_once(admin, what, &service, target.as_deref())) {
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
        if Instant::now() >= deadline {
            complain(format_args!(
                "error: {subject} not {what} after {}; still waiting for:\n",
                humantime::format_duration(timeout)
            ))?;
            for w in &shown {
                complain(format_args!("  {w}\n"))?;
            }
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(POLL);
    }
}
