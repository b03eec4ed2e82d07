//! Who a client is, and which group of Envoys it belongs to.
//!
//! Every Envoy of a group gets the same config: one snapshot per group, encoded once and shared
//! by the group's streams. A stream resolves its group from the `node` of its first request
//! ([`crate::snapshot::Published::group_of`], which asks [`NodeGroups::group_of`]) and again
//! whenever the groups change. A file without `groups:` puts every node in one group,
//! [`GroupId::all`]; a file with groups matches each node against them in file order (the first
//! match wins) and puts a node no group matches in [`GroupId::unmatched`], which gets an empty
//! config. The protocol machines only ever see their group's snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The client's identity, from the first request that carries a `node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    /// The node's metadata as text, for the file's groups to match: strings as they are,
    /// numbers and booleans as written in JSON; nested structures and lists are left out (a
    /// selector cannot name them), and so is whatever goes over [`MAX_METADATA_BYTES`].
    pub metadata: BTreeMap<String, String>,
}

/// The node metadata kept per client, keys and values together: enough for the few keys
/// groups match on, while a client sending megabytes of metadata cannot make cutover hold them
/// (entries are kept in key order until the next would go over).
pub const MAX_METADATA_BYTES: usize = 4096;

impl NodeInfo {
    /// The identity an Envoy `Node` message carries.
    pub fn from_node(node: &envoy_types::pb::envoy::config::core::v3::Node) -> NodeInfo {
        use envoy_types::pb::google::protobuf::value::Kind;
        let mut fields: Vec<(&String, &_)> = node.metadata.iter().flat_map(|m| &m.fields).collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let mut metadata = BTreeMap::new();
        let mut kept = 0;
        for (k, v) in fields {
            let text = match v.kind.as_ref() {
                Some(Kind::StringValue(s)) if k.len() + s.len() <= MAX_METADATA_BYTES => s.clone(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                Some(Kind::NumberValue(n)) => n.to_string(),
                _ => continue,
            };
            kept += k.len() + text.len();
            if kept > MAX_METADATA_BYTES {
                break;
            }
            metadata.insert(k.clone(), text);
        }
        NodeInfo {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            metadata,
        }
    }
}

/// A group of Envoys that get the same config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(Arc<str>);

impl GroupId {
    /// The group of every node while the file does not target nodes.
    pub fn all() -> GroupId {
        GroupId(Arc::from("all"))
    }

    /// Nodes no group of the file matches. Its name cannot be a group's in the file (names
    /// have no parentheses or spaces), so it never collides with one.
    pub fn unmatched() -> GroupId {
        GroupId(Arc::from("(no group)"))
    }

    /// A group the file names.
    pub fn named(name: &str) -> GroupId {
        GroupId(Arc::from(name))
    }

    pub fn is_unmatched(&self) -> bool {
        *self == GroupId::unmatched()
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

/// Which nodes a group takes: every condition given must hold; none given matches every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// A shell glob on the node id (`*`, `?`, `[...]`), e.g. `edge-*`.
    pub id: Option<glob::Pattern>,
    /// The node cluster, exactly.
    pub cluster: Option<String>,
    /// Metadata keys and their values, exactly (see [`NodeInfo::metadata`]).
    pub metadata: BTreeMap<String, String>,
}

impl Selector {
    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.id.as_ref().is_none_or(|p| p.matches(&node.id))
            && self.cluster.as_ref().is_none_or(|c| *c == node.cluster)
            && self
                .metadata
                .iter()
                .all(|(k, v)| node.metadata.get(k) == Some(v))
    }

    /// Whether every node `other` matches is matched by `self` too (so a group with `other`
    /// placed after one with `self` never gets a node). Sound, not complete: two globs are only
    /// compared when equal, or when `self`'s is `*` or `other`'s has no wildcard.
    pub fn covers(&self, other: &Selector) -> bool {
        let id = match (&self.id, &other.id) {
            (None, _) => true,
            (Some(mine), _) if mine.as_str() == "*" => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => {
                mine.as_str() == theirs.as_str()
                    || (is_literal(theirs.as_str()) && mine.matches(theirs.as_str()))
            }
        };
        let cluster = self.cluster.is_none() || self.cluster == other.cluster;
        let metadata = self
            .metadata
            .iter()
            .all(|(k, v)| other.metadata.get(k) == Some(v));
        id && cluster && metadata
    }
}

/// Written as `id=GLOB cluster=NAME key=value...`, the conditions given, for version hashes
/// and messages.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.id.iter().map(|p| format!("id={}", p.as_str())));
        parts.extend(self.cluster.iter().map(|c| format!("cluster={c}")));
        parts.extend(self.metadata.iter().map(|(k, v)| format!("{k}={v}")));
        f.write_str(&parts.join(" "))
    }
}

/// A glob with no wildcard matches only itself.
fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '['])
}

/// The file's groups in match order, or none (every node in [`GroupId::all`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeGroups {
    groups: Vec<(GroupId, Selector)>,
}

impl NodeGroups {
    /// Groups tried in this order; an empty list means the file does not target nodes.
    pub fn new(groups: Vec<(GroupId, Selector)>) -> NodeGroups {
        NodeGroups { groups }
    }

    /// The groups and their selectors in match order, one per line: part of the published
    /// version, so that an edit that only moves nodes between groups is published.
    pub fn fingerprint(&self) -> String {
        self.groups
            .iter()
            .map(|(g, s)| format!("{g}: {s}\n"))
            .collect()
    }

    /// Whether the file targets nodes at all.
    pub fn is_targeted(&self) -> bool {
        !self.groups.is_empty()
    }

    /// The first group whose selector matches `node`; [`GroupId::unmatched`] when none does, and
    /// [`GroupId::all`] when the file has no groups.
    pub fn group_of(&self, node: &NodeInfo) -> GroupId {
        if self.groups.is_empty() {
            return GroupId::all();
        }
        self.groups
            .iter()
            .find(|(_, s)| s.matches(node))
            .map_or_else(GroupId::unmatched, |(g, _)| g.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cluster: &str, metadata: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn selector(id: Option<&str>, cluster: Option<&str>, metadata: &[(&str, &str)]) -> Selector {
        Selector {
            id: id.map(|p| glob::Pattern::new(p).unwrap()),
            cluster: cluster.map(str::to_owned),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let s = selector(Some("side-*"), Some("checkout"), &[("role", "sidecar")]);
        assert!(s.matches(&node(
            "side-1",
            "checkout",
            &[("role", "sidecar"), ("x", "y")]
        )));
        assert!(!s.matches(&node("edge-1", "checkout", &[("role", "sidecar")])));
        assert!(!s.matches(&node("side-1", "payments", &[("role", "sidecar")])));
        assert!(!s.matches(&node("side-1", "checkout", &[("role", "edge")])));
        assert!(!s.matches(&node("side-1", "checkout", &[])));
        assert!(Selector::default().matches(&node("", "", &[])));
    }

    #[test]
    fn first_matching_group_wins_and_the_rest_are_unmatched() {
        let groups = NodeGroups::new(vec![
            (GroupId::named("edge"), selector(Some("edge-*"), None, &[])),
            (
                GroupId::named("checkout"),
                selector(None, Some("checkout"), &[]),
            ),
        ]);
        assert_eq!(
            groups.group_of(&node("edge-1", "checkout", &[])),
            GroupId::named("edge")
        );
        assert_eq!(
            groups.group_of(&node("side-1", "checkout", &[])),
            GroupId::named("checkout")
        );
        assert_eq!(
            groups.group_of(&node("side-1", "payments", &[])),
            GroupId::unmatched()
        );
        assert_eq!(
            NodeGroups::default().group_of(&node("x", "y", &[])),
            GroupId::all()
        );
    }

    #[test]
    fn metadata_is_kept_as_text_and_bounded() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
        let value = |kind| Value { kind: Some(kind) };
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "role".to_owned(),
            value(Kind::StringValue("sidecar".into())),
        );
        fields.insert("replicas".to_owned(), value(Kind::NumberValue(3.0)));
        fields.insert("canary".to_owned(), value(Kind::BoolValue(true)));
        fields.insert(
            "list".to_owned(),
            value(Kind::ListValue(ListValue::default())),
        );
        fields.insert(
            "z-huge".to_owned(),
            value(Kind::StringValue("x".repeat(1 << 20))),
        );
        let node = Node {
            id: "side-1".into(),
            metadata: Some(Struct {
                fields: fields.clone().into_iter().collect(),
            }),
            ..Default::default()
        };
        let info = NodeInfo::from_node(&node);
        let kept: Vec<(&str, &str)> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kept,
            [("canary", "true"), ("replicas", "3"), ("role", "sidecar")]
        );
        // Many entries: kept in key order up to the bound.
        let many: std::collections::HashMap<String, Value> = (0..1000)
            .map(|i| (format!("k{i:04}"), value(Kind::StringValue("v".repeat(20)))))
            .collect();
        let node = Node {
            metadata: Some(Struct {
                fields: many.into_iter().collect(),
            }),
            ..Default::default()
        };
        let info = NodeInfo::from_node(&node);
        let bytes: usize = info.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes <= MAX_METADATA_BYTES && bytes > MAX_METADATA_BYTES - 25);
        assert_eq!(
            info.metadata.keys().next().map(String::as_str),
            Some("k0000")
        );
    }

    #[test]
    fn covers_is_sound_for_globs_clusters_and_metadata() {
        let any = Selector::default();
        let star = selector(Some("*"), None, &[]);
        let edge = selector(Some("edge-*"), None, &[]);
        let edge1 = selector(Some("edge-1"), Some("c"), &[]);
        let meta = selector(None, None, &[("role", "edge")]);
        assert!(any.covers(&edge) && star.covers(&edge) && edge.covers(&edge1));
        assert!(!edge1.covers(&edge) && !edge.covers(&any));
        assert!(!edge.covers(&selector(Some("e*"), None, &[])));
        assert!(meta.covers(&selector(Some("x"), None, &[("role", "edge"), ("z", "1")])));
        assert!(!meta.covers(&selector(Some("x"), None, &[("role", "sidecar")])));
        assert!(!selector(None, Some("a"), &[]).covers(&selector(None, Some("b"), &[])));
    }
}
