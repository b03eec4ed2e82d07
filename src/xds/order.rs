//! Make-before-break: the order in which a client may be sent a config, whatever the protocol.
//!
//! On an aggregated (ADS) stream, a config version's listeners and routes are sent only once the
//! client has ACKed all of its clusters *and* their endpoints; clusters that the routes the
//! client may still be using refer to are kept until routes without them are ACKed, and only
//! then removed. A rejected cluster therefore holds back the routes that would need it.
//! Per-type streams cannot see each other and get no ordering here (the best the protocol
//! allows without ADS).
//!
//! Pure: a protocol machine describes what its client holds through [`Holdings`] and asks.

use std::collections::{BTreeMap, BTreeSet};

use super::ResourceType;
use crate::snapshot::{Resource, Snapshot};

/// What the ordering policy needs to know of one client.
pub trait Holdings {
    /// Whether the client asked for this type at all.
    fn subscribed(&self, ty: ResourceType) -> bool;
    /// Whether the client asks for this resource.
    fn wants(&self, ty: ResourceType, name: &str) -> bool;
    /// What the client ACKed.
    fn acked(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>>;
    /// What was sent and is not answered yet.
    fn pending(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>>;
}

/// The snapshot's resources of `ty` that the client asks for.
pub fn wanted<'a>(
    snap: &'a Snapshot,
    ty: ResourceType,
    client: &'a impl Holdings,
) -> impl Iterator<Item = &'a Resource> + 'a {
    snap.resources(ty)
        .values()
        .filter(move |r| client.wants(ty, &r.name))
}

/// Clusters the client holds that the snapshot no longer has but routes the client may still
/// be using refer to: they stay (with their endpoints) until the snapshot's routing is ACKed
/// with nothing in flight.
pub fn kept_clusters(snap: &Snapshot, client: &impl Holdings) -> Vec<String> {
    if routing_settled(snap, client) {
        return Vec::new();
    }
    let mut names: BTreeSet<&String> = BTreeSet::new();
    for held in [
        client.acked(ResourceType::Cluster),
        client.pending(ResourceType::Cluster),
    ]
    .into_iter()
    .flatten()
    {
        names.extend(
            held.keys()
                .filter(|n| snap.get(ResourceType::Cluster, n).is_none()),
        );
    }
    names.into_iter().cloned().collect()
}

/// Adds to `desired` (the client's clusters or endpoints) the kept ones, with the content the
/// client holds.
pub fn keep(
    ty: ResourceType,
    desired: &mut BTreeMap<String, Resource>,
    kept: &[String],
    client: &impl Holdings,
) {
    debug_assert!(matches!(ty, ResourceType::Cluster | ResourceType::Endpoint));
    for name in kept {
        if let Some(r) = client.acked(ty).and_then(|held| held.get(name))
            && client.wants(ty, name)
        {
            desired.entry(name.clone()).or_insert_with(|| r.clone());
        }
    }
}

/// Whether the client's listeners and routes are exactly the snapshot's, none in flight.
pub fn routing_settled(snap: &Snapshot, client: &impl Holdings) -> bool {
    [ResourceType::Listener, ResourceType::Route]
        .into_iter()
        .all(|ty| {
            if !client.subscribed(ty) {
                // Never asked for: nothing of this type is in effect.
                return true;
            }
            if client.pending(ty).is_some() {
                return false;
            }
            let Some(acked) = client.acked(ty) else {
                return false;
            };
            let mut wanted = wanted(snap, ty, client);
            let mut count = 0;
            let same = wanted.all(|r| {
                count += 1;
                acked.get(&r.name) == Some(r)
            });
            same && count == acked.len()
        })
}

/// Whether the snapshot's listeners and routes may be sent: the client has ACKed every cluster
/// of the snapshot and the endpoints of each.
///
/// A cluster without an endpoints resource (a DNS cluster carries its endpoints) needs only its
/// CDS ACK, and a client whose clusters are all such never subscribes to endpoints at all.
pub fn clusters_ready(snap: &Snapshot, client: &impl Holdings) -> bool {
    let Some(cds) = client.acked(ResourceType::Cluster) else {
        // Nothing ACKed yet: ready only if the snapshot has no clusters at all.
        return snap.resources(ResourceType::Cluster).is_empty();
    };
    let eds = client.acked(ResourceType::Endpoint);
    snap.resources(ResourceType::Cluster).values().all(|c| {
        cds.get(&c.name) == Some(c)
            && snap
                .get(ResourceType::Endpoint, &c.name)
                .is_none_or(|e| eds.and_then(|held| held.get(&e.name)) == Some(e))
    })
}
