//! Typed identities of what cutover deploys, and the one place their Envoy names are written
//! and read back.
//!
//! A [`ClusterId`] is one version of a service (the Envoy cluster `<service>/<version>`); a
//! [`FallbackId`] is the aggregate cluster `<service>/<version>~<fallback>` that sends to
//! `version` while it has a healthy endpoint and to `fallback` otherwise. Modules pass these
//! values between them; only [`std::fmt::Display`] here renders them as Envoy names, and
//! [`ClusterRef::parse`] reads Envoy's names (stats, CSDS) back. Service and version names
//! are validated to letters, digits, `-`, `_` and `.`, so `/` and `~` cannot be ambiguous.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One version of one service: one Envoy cluster with its own endpoints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId {
    pub service: String,
    pub version: String,
}

impl ClusterId {
    pub fn new(service: impl Into<String>, version: impl Into<String>) -> ClusterId {
        ClusterId {
            service: service.into(),
            version: version.into(),
        }
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.version)
    }
}

/// The aggregate cluster that is `version` of `service` while it has a healthy endpoint and
/// `fallback` (of the same service) when it has none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FallbackId {
    pub service: String,
    pub version: String,
    pub fallback: String,
}

impl FallbackId {
    /// The cluster tried first.
    pub fn primary(&self) -> ClusterId {
        ClusterId::new(&self.service, &self.version)
    }

    /// The cluster used while the primary has no healthy endpoint.
    pub fn secondary(&self) -> ClusterId {
        ClusterId::new(&self.service, &self.fallback)
    }
}

impl fmt::Display for FallbackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}~{}", self.service, self.version, self.fallback)
    }
}

/// A cluster a route can send requests to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterRef {
    Version(ClusterId),
    Fallback(FallbackId),
}

impl ClusterRef {
    /// Reads an Envoy cluster name written by [`fmt::Display`]; `None` for any other name (a
    /// static cluster of the bootstrap, say).
    pub fn parse(name: &str) -> Option<ClusterRef> {
        let (service, rest) = name.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        match rest.split_once('~') {
            None if valid(service) && valid(rest) => {
                Some(ClusterRef::Version(ClusterId::new(service, rest)))
            }
            Some((version, fallback)) if valid(service) && valid(version) && valid(fallback) => {
                Some(ClusterRef::Fallback(FallbackId {
                    service: service.to_owned(),
                    version: version.to_owned(),
                    fallback: fallback.to_owned(),
                }))
            }
            _ => None,
        }
    }

    pub fn service(&self) -> &str {
        match self {
            ClusterRef::Version(c) => &c.service,
            ClusterRef::Fallback(f) => &f.service,
        }
    }
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterRef::Version(c) => c.fmt(f),
            ClusterRef::Fallback(x) => x.fmt(f),
        }
    }
}

impl From<ClusterId> for ClusterRef {
    fn from(c: ClusterId) -> Self {
        ClusterRef::Version(c)
    }
}

impl From<FallbackId> for ClusterRef {
    fn from(f: FallbackId) -> Self {
        ClusterRef::Fallback(f)
    }
}

/// In files (the runtime state) an id is written as its Envoy name, so that it can be a JSON
/// object key and reads like what Envoy shows.
macro_rules! as_name {
    ($ty:ident, $variant:ident) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let name = String::deserialize(d)?;
                match ClusterRef::parse(&name) {
                    Some(ClusterRef::$variant(id)) => Ok(id),
                    _ => Err(serde::de::Error::custom(format!(
                        "{name:?} is not a {} name",
                        stringify!($ty)
                    ))),
                }
            }
        }
    };
}

as_name!(ClusterId, Version);
as_name!(FallbackId, Fallback);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let v = ClusterRef::Version(ClusterId::new("checkout", "v1.2"));
        let f = ClusterRef::Fallback(FallbackId {
            service: "checkout".into(),
            version: "canary".into(),
            fallback: "stable".into(),
        });
        assert_eq!(v.to_string(), "checkout/v1.2");
        assert_eq!(f.to_string(), "checkout/canary~stable");
        assert_eq!(ClusterRef::parse("checkout/v1.2"), Some(v));
        assert_eq!(ClusterRef::parse("checkout/canary~stable"), Some(f));
        for other in ["cutover_xds", "a/", "/b", "a/b/c", "a/b~", "a b/c", ""] {
            assert_eq!(ClusterRef::parse(other), None, "{other:?}");
        }
    }
}
