//! The `cutover` commands, one module each: its clap arguments (`Args`) and its `run`, which
//! prints and returns the exit code. `main.rs` parses the command line and calls them; the demo's
//! two commands live with the demo, in the binary.
//!
//! What a command shows is made by a pure function that returns text or values, so that its
//! output is snapshot-tested without a terminal or a server: [`status::render_status`],
//! [`diff::diff`], [`schema::deployment_schema_text`]. [`output`] is what every command prints
//! through; [`status::fetch`] makes the one HTTP request of `status`.
//!
//! This is the binary's edge: errors here are `anyhow` and become `error: ...` on stderr.

pub mod bootstrap;
pub mod diff;
pub mod output;
pub mod render;
pub mod rollout;
pub mod schema;
pub mod serve;
pub mod status;
mod style;
pub mod validate;
pub mod wait;

pub use style::color_for_stdout;

use anyhow::Context as _;

use crate::node::NodeInfo;

/// A runtime on this thread, for a command that makes a few requests.
pub fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
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

/// The node `--node-id`, `--node-cluster` and `--node-metadata` describe: its cluster is its
/// id unless given, as Envoy's bootstrap from `cutover bootstrap` says.
fn node(id: String, cluster: Option<String>, metadata: Vec<(String, String)>) -> NodeInfo {
    NodeInfo {
        cluster: cluster.unwrap_or_else(|| id.clone()),
        id,
        metadata: metadata.into_iter().collect(),
    }
}
