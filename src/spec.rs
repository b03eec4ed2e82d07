//! The deployment file: what serde reads ([`raw`]) and what is known to be consistent ([`Spec`]).
//!
//! [`parse`] is the only way to get a [`Spec`]: it reads YAML, then validates the whole file and
//! returns *every* problem at once, each with its `file:line:column`. Nothing downstream re-checks
//! what is validated here. This module does no I/O: callers hand it the file's text and name.

mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

pub use validate::parse;

/// A validated deployment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Listeners in file order (their order does not matter to Envoy; names are unique).
    pub listeners: Vec<Listener>,
    /// Services by name, sorted so that everything derived from them is deterministic.
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Routes in match order: the first route whose match fits a request wins.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub matcher: PathMatch,
    pub service: String,
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Versions by name; each becomes one Envoy cluster named `service/version`.
    pub versions: BTreeMap<String, Version>,
    pub strategy: Strategy,
}

/// Which versions of a service get traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// One version gets all traffic; the others stay configured and warm (a cluster swap).
    Active { version: String },
}

impl Strategy {
    /// The versions that receive traffic, in a stable order.
    pub fn serving_versions(&self) -> Vec<&str> {
        match self {
            Strategy::Active { version } => vec![version.as_str()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
}

impl Spec {
    /// The Envoy cluster name of one version of a service: stable and readable.
    pub fn cluster_name(service: &str, version: &str) -> String {
        format!("{service}/{version}")
    }
}

/// One problem in a deployment file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Everything wrong with a deployment file; displays one `file:line:column: message` per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
