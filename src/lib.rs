//! cutover: an xDS control plane that turns one deployment file into ordered, zero-downtime
//! Envoy config pushes.
//!
//! Data flows one way: [`spec`] (parse and validate the file) → [`translate`] (pure: Envoy
//! resources) → [`snapshot`] (encoded once, versioned by content) → [`xds`] (per-stream protocol
//! state machine and the gRPC server). [`watch`] feeds file changes in; [`status`] and [`admin`]
//! report what every Envoy has applied; [`telemetry`] takes what every Envoy sees (its stats sink
//! and load reports).

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod cli;
pub mod drain;
pub mod metrics;
pub mod render;
pub mod retire;
pub mod snapshot;
pub mod spec;
pub mod status;
pub mod telemetry;
pub mod translate;
pub mod watch;
pub mod xds;
