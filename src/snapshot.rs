//! One config version: an immutable set of Envoy resources, each encoded exactly once, and what
//! is published to the xDS streams: one [`Snapshot`] per node group ([`Published`]).
//!
//! Every stream that sends a resource shares its encoded bytes ([`Bytes`] is reference counted),
//! so the cost of a push is per config version, not per Envoy. Versions are content hashes: the
//! same resources give the same version strings on any machine and after any restart.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::node::{GroupId, NodeGroups, NodeInfo};
use crate::translate::Resources;

mod builder;
pub use builder::{Builder, Built};

/// One encoded resource, shared: a clone (into another snapshot, a group's part, a stream's
/// view of what its client holds) is a reference count, not a copy of its name and version.
#[derive(Debug, Clone, Eq)]
pub struct Resource(Arc<ResourceData>);

/// What a [`Resource`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceData {
    pub name: String,
    /// Content hash of the encoded bytes.
    pub version: String,
    /// The resource as an encoded `google.protobuf.Any`, ready to be copied into a response.
    pub encoded: Bytes,
    /// A listener that names its clusters itself (a TCP proxy) instead of taking routes over
    /// RDS: known once per version here, asked of every stream by the make-before-break rules.
    pub names_clusters: bool,
}

impl std::ops::Deref for Resource {
    type Target = ResourceData;

    fn deref(&self) -> &ResourceData {
        &self.0
    }
}

impl From<ResourceData> for Resource {
    fn from(data: ResourceData) -> Resource {
        Resource(Arc::new(data))
    }
}

impl Resource {
    /// `encoded` (a `google.protobuf.Any`) under `name`, versioned by a hash of its bytes.
    pub fn new(name: impl Into<String>, encoded: Bytes) -> Resource {
        Resource::encoded(name.into(), encoded, false)
    }

    fn encoded(name: String, encoded: Bytes, names_clusters: bool) -> Resource {
        Resource::from(ResourceData {
            name,
            version: hash_hex(&[&encoded]),
            encoded,
            names_clusters,
        })
    }
}

/// A resource of type `ty` whose message encodes to `value`, as an `Any`.
fn encode(ty: ResourceType, name: &str, value: Vec<u8>, names_clusters: bool) -> Resource {
    let any = Any {
        type_url: ty.type_url().to_owned(),
        value,
    };
    Resource::encoded(
        name.to_owned(),
        Bytes::from(any.encode_to_vec()),
        names_clusters,
    )
}

/// Resources are equal when their names and content hashes are: comparing hashes instead of
/// the encoded bytes keeps the per-stream "does the client hold this?" checks cheap.
impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.name == other.name && self.version == other.version)
    }
}

/// A complete, immutable config version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Content hash over every resource of every type.
    pub version: String,
    /// Shared: a stream whose client gets a whole type holds this very map, not a copy.
    sets: ByType<Arc<BTreeMap<String, Resource>>>,
    /// The same resources in name order, as a response to a client that gets a whole type
    /// carries them: built once, shared by every such response.
    lists: ByType<Arc<[Resource]>>,
    /// [`set_version`] of each whole type, computed once.
    type_versions: ByType<String>,
    /// A hash of each type's names alone: equal while no resource of the type comes or goes.
    name_versions: ByType<String>,
}

impl Snapshot {
    pub fn new(resources: &Resources) -> Snapshot {
        let mut sets: ByType<BTreeMap<String, Resource>> = ByType::default();
        let mut add = |ty: ResourceType, name: &str, value: Vec<u8>, names_clusters: bool| {
            sets[ty].insert(name.to_owned(), encode(ty, name, value, names_clusters));
        };
        for c in &resources.clusters {
            add(ResourceType::Cluster, &c.name, c.encode_to_vec(), false);
        }
        for e in &resources.endpoints {
            add(
                ResourceType::Endpoint,
                &e.cluster_name,
                e.encode_to_vec(),
                false,
            );
        }
        for l in &resources.listeners {
            let names_clusters = crate::translate::names_clusters(l);
            add(
                ResourceType::Listener,
                &l.name,
                l.encode_to_vec(),
                names_clusters,
            );
        }
        for r in &resources.routes {
            add(ResourceType::Route, &r.name, r.encode_to_vec(), false);
        }
        for s in &resources.secrets {
            add(ResourceType::Secret, &s.name, s.encode_to_vec(), false);
        }
        Snapshot::of_sets(sets)
    }

    /// The part of this snapshot named in `resources` (one node group's): the same encoded
    /// bytes, shared, not encoded again. Names this snapshot lacks are left out.
    pub fn select(&self, resources: &Resources) -> Snapshot {
        let named = |ty: ResourceType, name: &String| (ty, name.clone());
        let names: Vec<(ResourceType, String)> = (resources.clusters.iter())
            .map(|c| named(ResourceType::Cluster, &c.name))
            .chain(
                (resources.endpoints.iter())
                    .map(|e| named(ResourceType::Endpoint, &e.cluster_name)),
            )
            .chain((resources.listeners.iter()).map(|l| named(ResourceType::Listener, &l.name)))
            .chain((resources.routes.iter()).map(|r| named(ResourceType::Route, &r.name)))
            .chain((resources.secrets.iter()).map(|x| named(ResourceType::Secret, &x.name)))
            .collect();
        self.select_names(&names)
    }

    /// The part of this snapshot with these names, as [`Snapshot::select`].
    fn select_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a (ResourceType, String)>,
    ) -> Snapshot {
        let mut sets: ByType<BTreeMap<String, Resource>> = ByType::default();
        for (ty, name) in names {
            if let Some(r) = self.get(*ty, name) {
                sets[*ty].insert(r.name.clone(), r.clone());
            }
        }
        Snapshot::of_sets(sets)
    }

    fn of_sets(sets: ByType<BTreeMap<String, Resource>>) -> Snapshot {
        let type_versions = ByType::from_fn(|ty| set_version(sets[ty].values()));
        let mut all = String::new();
        for ty in ResourceType::ALL {
            // No secrets, no line: the versions of configs without TLS stay what they were
            // before cutover served secrets (an upgrade pushes nothing).
            if ty == ResourceType::Secret && sets[ty].is_empty() {
                continue;
            }
            let _ = writeln!(all, "{}={}", ty.short(), type_versions[ty]);
        }
        let lists = ByType::from_fn(|ty| sets[ty].values().cloned().collect());
        let name_versions = ByType::from_fn(|ty| {
            let mut hasher = Sha256::new();
            for name in sets[ty].keys() {
                hasher.update(name.as_bytes());
                hasher.update([b'\n']);
            }
            hex16(&hasher.finalize())
        });
        Snapshot {
            version: hash_hex(&[all.as_bytes()]),
            sets: sets.map(Arc::new),
            lists,
            type_versions,
            name_versions,
        }
    }

    pub fn resources(&self, ty: ResourceType) -> &BTreeMap<String, Resource> {
        &self.sets[ty]
    }

    /// Every resource of `ty`, shared (see [`Snapshot::type_version`] for its version).
    pub fn shared(&self, ty: ResourceType) -> &Arc<BTreeMap<String, Resource>> {
        &self.sets[ty]
    }

    /// Every resource of `ty` in name order, shared: what a response of the whole type carries.
    pub fn list(&self, ty: ResourceType) -> &Arc<[Resource]> {
        &self.lists[ty]
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Resource> {
        self.sets[ty].get(name)
    }

    /// Bytes of every encoded resource.
    pub fn encoded_len(&self) -> usize {
        self.sets
            .values()
            .flat_map(|set| set.values())
            .map(|r| r.encoded.len())
            .sum()
    }

    /// A hash of the names of `ty`'s resources: what a subscription to names is checked
    /// against (the names did not change, so neither did whether it covers them all).
    pub fn names_version(&self, ty: ResourceType) -> &str {
        &self.name_versions[ty]
    }

    /// The version of a whole type, as in [`set_version`].
    pub fn type_version(&self, ty: ResourceType) -> &str {
        &self.type_versions[ty]
    }
}

/// What the xDS streams converge to: a snapshot per node group.
#[derive(Debug, Clone)]
pub struct Published {
    /// The config version as a whole: with one group, that group's snapshot version.
    pub version: String,
    groups: BTreeMap<GroupId, GroupSnapshot>,
    /// How a node finds its group among `groups`.
    node_groups: NodeGroups,
}

/// One group's snapshot, and when the change that produced it was seen (for save-to-ACK).
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    pub snapshot: Arc<Snapshot>,
    pub changed_at: Instant,
}

impl Published {
    /// Publishes `groups`, caused by a change seen at `changed_at`. A group whose snapshot is
    /// the same as in `previous` keeps it (the same `Arc`) and its change time, so its streams
    /// see no change.
    pub fn new(
        groups: BTreeMap<GroupId, Snapshot>,
        node_groups: NodeGroups,
        changed_at: Instant,
        previous: Option<&Published>,
    ) -> Published {
        let groups: BTreeMap<GroupId, GroupSnapshot> = groups
            .into_iter()
            .map(|(group, snapshot)| {
                let kept = previous
                    .and_then(|p| p.groups.get(&group))
                    .filter(|g| g.snapshot.version == snapshot.version)
                    .cloned();
                let g = kept.unwrap_or_else(|| GroupSnapshot {
                    snapshot: Arc::new(snapshot),
                    changed_at,
                });
                (group, g)
            })
            .collect();
        let version = match groups.values().collect::<Vec<_>>()[..] {
            [only] if !node_groups.is_targeted() => only.snapshot.version.clone(),
            _ => {
                // Which nodes go where is part of the version: moving a node to another group
                // changes no group's snapshot, yet that node's config.
                let mut all = node_groups.fingerprint();
                for (group, g) in &groups {
                    let _ = writeln!(all, "{group}={}", g.snapshot.version);
                }
                hash_hex(&[all.as_bytes()])
            }
        };
        Published {
            version,
            groups,
            node_groups,
        }
    }

    /// The group `node` belongs to (see [`crate::node`]).
    pub fn group_of(&self, node: &NodeInfo) -> GroupId {
        self.node_groups.group_of(node)
    }

    pub fn group(&self, group: &GroupId) -> Option<&GroupSnapshot> {
        self.groups.get(group)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&GroupId, &GroupSnapshot)> {
        self.groups.iter()
    }

    /// Bytes of every encoded resource of every group (a resource shared by groups counts
    /// once per group).
    pub fn encoded_len(&self) -> usize {
        self.groups.values().map(|g| g.snapshot.encoded_len()).sum()
    }
}

/// The version of a set of resources as sent in one response: a hash of their names and
/// versions, so it changes exactly when what the client holds would change.
pub fn set_version<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> String {
    let mut hasher = Sha256::new();
    for r in resources {
        hasher.update(r.name.as_bytes());
        hasher.update([0]);
        hasher.update(r.version.as_bytes());
        hasher.update([b'\n']);
    }
    hex16(&hasher.finalize())
}

fn hash_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p);
    }
    hex16(&hasher.finalize())
}

/// 64 bits of the digest in hex: short enough to read in logs, long enough not to collide.
fn hex16(digest: &[u8]) -> String {
    let mut s = String::with_capacity(16);
    for b in &digest[..8] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The resource types cutover serves, in make-before-break order: clusters and their endpoints
/// exist before listeners and routes refer to them. Removals are sent last (see [`crate::xds::sotw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// TLS certificates and CAs (SDS), which listeners name. Envoy asks for them once it holds
    /// a listener that names them, and the listener warms (the previous one serving) until they
    /// arrive, so they need no place before listeners.
    Secret,
}

impl ResourceType {
    pub const COUNT: usize = 5;

    /// Every type, in the order updates are sent.
    pub const ALL: [ResourceType; ResourceType::COUNT] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// CDS and LDS responses carry the full set: a resource left out is removed. EDS, RDS and
    /// SDS carry only the names the client asked for.
    pub const fn is_full_state(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Short name used in logs, status and metrics.
    pub const fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Secret => "sds",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One `T` per resource type, indexed by the type: `by_type[ResourceType::Route]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByType<T>([T; ResourceType::COUNT]);

impl<T> ByType<T> {
    /// `f` of every type.
    pub fn from_fn(f: impl FnMut(ResourceType) -> T) -> ByType<T> {
        ByType(ResourceType::ALL.map(f))
    }

    /// Every type's `T`, in [`ResourceType::ALL`]'s order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// `f` of every type's `T`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> ByType<U> {
        ByType(self.0.map(f))
    }
}

impl<T> std::ops::Index<ResourceType> for ByType<T> {
    type Output = T;

    fn index(&self, ty: ResourceType) -> &T {
        &self.0[ty.index()]
    }
}

impl<T> std::ops::IndexMut<ResourceType> for ByType<T> {
    fn index_mut(&mut self, ty: ResourceType) -> &mut T {
        &mut self.0[ty.index()]
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{translate, translate_group};

    /// A group's part of the whole snapshot is what encoding the group alone gives (the same
    /// versions), with the bytes shared rather than encoded again.
    #[test]
    fn a_groups_selection_equals_its_own_encoding_and_shares_the_bytes() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-groups.yaml"),
        )
        .unwrap();
        let plan = crate::app::compile_plan("node-groups.yaml", &text).unwrap();
        let everything = Snapshot::new(&translate(&plan));
        let mut versions = std::collections::BTreeSet::new();
        for (group, g) in &plan.groups {
            let resources = translate_group(&plan, g);
            let selected = everything.select(&resources);
            assert_eq!(selected, Snapshot::new(&resources), "{group}");
            versions.insert(selected.version.clone());
            for ty in ResourceType::ALL {
                for (name, r) in selected.resources(ty) {
                    let whole = everything.get(ty, name).unwrap();
                    assert_eq!(r.encoded.as_ptr(), whole.encoded.as_ptr(), "{name}");
                }
            }
        }
        // edge, sidecars and the empty config of nodes no group matches: three versions.
        assert_eq!(versions.len(), 3);
    }
}
