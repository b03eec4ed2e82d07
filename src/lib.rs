//! cutover: an xDS control plane that turns one deployment file into ordered, zero-downtime
//! Envoy config pushes.
//!
//! Data flows one way: [`spec`] (parse and validate the file) and the runtime state
//! ([`reconcile::state`]) → [`reconcile::plan`] (pure: what is served) → [`translate`] (pure:
//! Envoy resources) → [`snapshot`] (encoded once, versioned by content, one per node group) →
//! [`xds`] (per-stream protocol machines, the client view and the gRPC server). The
//! [`controller`] runs that loop and its I/O ([`watch`], [`store`]); [`status`] and [`admin`]
//! report what every Envoy has applied, in the types of [`api`] that `cutover status` reads;
//! [`telemetry`] takes what every Envoy sees (its stats sink and load reports); [`dashboard`]
//! shows both, live, at the admin address. See docs/architecture.md.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod api;
pub mod app;
#[cfg(test)]
mod architecture;
pub mod bootstrap;
pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod controller;
pub mod dashboard;
pub mod http_client;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod reconcile;
pub mod render;
pub mod replica;
pub mod snapshot;
pub mod spec;
pub mod status;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod translate;
pub mod wait;
pub mod watch;
pub mod xds;
