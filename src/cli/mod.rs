//! The operator commands that are not the server: `cutover status` (a running cutover's
//! `/status`, as tables), `cutover diff` (what Envoy would see change between two deployment
//! files) and `cutover schema` (the deployment file's JSON Schema, for editors).
//!
//! Each renders with a pure function that returns text, so that its output is snapshot-tested
//! without a terminal or a server; `main.rs` does the printing, [`status::fetch`] the one HTTP
//! request.

pub mod diff;
pub mod schema;
pub mod status;
mod style;

pub use style::color_for_stdout;
