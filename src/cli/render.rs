//! `cutover render`: the exact Envoy resources a deployment file becomes, as a freshly started
//! cutover serves them or, with `--state`, as one with that runtime state serves them at `--at`;
//! with `--node`, only what that Envoy's group gets.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;

use super::output::{Format, print_value, read_spec};
use crate::reconcile::Timestamp;
use crate::snapshot::Snapshot;
use crate::store::StateFile;
use crate::{app, render, translate};

#[derive(clap::Args)]
pub struct Args {
    /// The deployment file.
    file: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    format: Format,
    /// A runtime state file (`cutover serve --state`, by default FILE.state.json).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The time to render for, RFC 3339 (e.g. 2026-11-22T10:00:00Z). Default: now.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    at: Option<SystemTime>,
    /// Only what an Envoy with this node id gets (its group's listeners and services).
    /// Without it, every resource of every group.
    #[arg(long = "node", value_name = "ID")]
    node_id: Option<String>,
    /// The node cluster of that Envoy (defaults to the node id, as in `cutover bootstrap`).
    #[arg(long, value_name = "CLUSTER", requires = "node_id")]
    node_cluster: Option<String>,
    /// A node metadata entry of that Envoy; repeat for several.
    #[arg(long = "node-metadata", value_name = "KEY=VALUE", requires = "node_id", value_parser = super::key_value)]
    node_metadata: Vec<(String, String)>,
}

/// Exit 0 with the resources on stdout, 1 if the file is unreadable or invalid.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let node = args
        .node_id
        .map(|id| super::node(id, args.node_cluster, args.node_metadata));
    let runtime = match &args.state {
        None => Default::default(),
        Some(path) => StateFile::new(path.clone())
            .read()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .with_context(|| format!("{}: no such state file", path.display()))?,
    };
    let now = args.at.map_or_else(Timestamp::now, Into::into);
    let spec = match read_spec(&args.file) {
        Ok(spec) => spec,
        Err(failure) => {
            failure.report()?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let plan = app::plan_at(&spec, runtime, now);
    let resources = match &node {
        None => translate::translate(&plan),
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
    print_value(
        &render::snapshot_json(&Snapshot::new(&resources))?,
        args.format,
    )?;
    Ok(ExitCode::SUCCESS)
}
