//! Who a client is, and which group of Envoys it belongs to.
//!
//! Every Envoy of a group gets the same config: one snapshot per group, encoded once and shared
//! by the group's streams. A stream resolves its group from the `node` of its first request
//! ([`crate::snapshot::Published::group_of`]). Today every node is in one group,
//! [`GroupId::all`]; node targeting (the file saying which Envoys get which listeners and
//! services) adds groups there without touching the protocol machines, which only ever see their
//! group's snapshot.

use std::fmt;
use std::sync::Arc;

/// The client's identity, from the first request that carries a `node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

/// A group of Envoys that get the same config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(Arc<str>);

impl GroupId {
    /// The group of every node while the file does not target nodes.
    pub fn all() -> GroupId {
        GroupId(Arc::from("all"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
