//! `cutover validate`: every problem of a deployment file as `file:line:column`, or the config
//! version it would be served as.

use std::path::PathBuf;
use std::process::ExitCode;

use super::output::{read_spec, say};
use crate::app;

#[derive(clap::Args)]
pub struct Args {
    /// The deployment file.
    file: PathBuf,
}

/// Exit 0 if the file is valid, 1 if not.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match read_spec(&args.file) {
        Ok(spec) => {
            let snapshot = app::fresh_snapshot(&spec);
            let label = args.file.display();
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
    }
}
