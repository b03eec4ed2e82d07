//! Make-before-break: the order in which a client may be sent a config, whatever the protocol.
//!
//! On an aggregated (ADS) stream, a config version's listeners and routes are sent to a client
//! that may be routing traffic only once it has ACKed all of the version's clusters *and* their
//! endpoints; clusters that the routes the client may still be using refer to are kept until
//! routes without them are ACKed, and only then removed. A rejected cluster therefore holds back
//! the routes that would need it.
//!
//! Only what can break is gated: a client that holds no routes (none ACKed, none in flight, none
//! reported when it connected) and reported no listeners routes nothing, so it is sent listeners
//! and routes as soon as it asks. Clients that ask for listeners and routes before clusters (gRPC's
//! proxyless clients ask LDS → RDS → CDS → EDS, and learn which clusters exist only from the
//! routes) would otherwise wait forever.
//!
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
    /// The version of what it ACKed: [`crate::snapshot::set_version`] of [`Holdings::acked`].
    /// Equal to the snapshot's type version exactly when it holds the snapshot's set, which
    /// answers the checks below in one comparison instead of one per resource.
    fn acked_version(&self, ty: ResourceType) -> Option<&str>;
    /// What was sent and is not answered yet.
    fn pending(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>>;
    /// The version of [`Holdings::pending`], as [`Holdings::acked_version`].
    fn pending_version(&self, ty: ResourceType) -> Option<&str>;
    /// Whether the client said, when it connected, that it already held resources of this type
    /// (a reconnect): they are in effect although this stream has sent nothing yet.
    fn reported(&self, ty: ResourceType) -> bool;
    /// Whether it asks for its listeners by name rather than for every one: gRPC's proxyless
    /// clients do (the `xds:///` target), then ask only for what that listener leads to.
    fn names_its_listeners(&self) -> bool;
    /// [`clusters_ready`]; a machine may remember the answer for inputs that did not change.
    fn clusters_ready(&self, snap: &Snapshot) -> bool
    where
        Self: Sized,
    {
        clusters_ready(snap, self)
    }
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
    let current = Some(snap.type_version(ResourceType::Cluster));
    for (held, version) in [
        (
            client.acked(ResourceType::Cluster),
            client.acked_version(ResourceType::Cluster),
        ),
        (
            client.pending(ResourceType::Cluster),
            client.pending_version(ResourceType::Cluster),
        ),
    ] {
        let Some(held) = held else { continue };
        if version == current {
            // Exactly the snapshot's clusters: none of them is gone.
            continue;
        }
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
    if !matches!(ty, ResourceType::Cluster | ResourceType::Endpoint) {
        return;
    }
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
                // Never asked for on this stream: nothing of this type is in effect, unless the
                // client reconnected holding clusters. Then it may route with listeners and routes
                // it has not listed again yet (a reconnecting client asks for each type anew, one
                // request after the other), so what it holds stays until it has.
                return !client.reported(ResourceType::Cluster);
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

/// Whether the client may be routing traffic: it holds routes (ACKed, in flight, or reported on
/// reconnect), or reported listeners on reconnect (whose routes it then holds too, even if it
/// has not said so yet: Envoy asks for each type on its own), or holds a TCP listener, which
/// names its clusters itself. An HTTP listener without its routes routes nothing: it takes them
/// from RDS, and waits for them.
pub fn may_be_routing(client: &impl Holdings) -> bool {
    let non_empty = |held: Option<&BTreeMap<String, Resource>>| held.is_some_and(|m| !m.is_empty());
    let tcp = |held: Option<&BTreeMap<String, Resource>>| {
        held.is_some_and(|m| m.values().any(|l| l.names_clusters))
    };
    non_empty(client.acked(ResourceType::Route))
        || non_empty(client.pending(ResourceType::Route))
        || client.reported(ResourceType::Route)
        || client.reported(ResourceType::Listener)
        || tcp(client.acked(ResourceType::Listener))
        || tcp(client.pending(ResourceType::Listener))
}

/// Whether the snapshot's listeners and routes may be sent now: at once to a client that is not
/// routing anything yet (nothing can break), else once [`clusters_ready`]. A client that names
/// its listeners asks for a cluster only once a route it holds names it, so it cannot hold the
/// clusters first: it gets the routes at once and makes before it breaks itself, keeping its
/// previous routes until it has the new ones' clusters and endpoints (gRFC A74); clusters its
/// routes still use are kept for it as for any client.
pub fn routing_may_be_sent(snap: &Snapshot, client: &impl Holdings) -> bool {
    !may_be_routing(client) || client.names_its_listeners() || client.clusters_ready(snap)
}

/// Whether the client has ACKed every cluster of the snapshot and the endpoints of each, with
/// nothing of either in flight (a response in flight may still remove or redefine a cluster).
///
/// A cluster without an endpoints resource (a DNS cluster carries its endpoints) needs only its
/// CDS ACK, and a client whose clusters are all such never subscribes to endpoints at all.
pub fn clusters_ready(snap: &Snapshot, client: &impl Holdings) -> bool {
    if client.pending(ResourceType::Cluster).is_some()
        || client.pending(ResourceType::Endpoint).is_some()
    {
        return false;
    }
    let Some(cds) = client.acked(ResourceType::Cluster) else {
        // Nothing ACKed yet: ready only if the snapshot has no clusters at all.
        return snap.resources(ResourceType::Cluster).is_empty();
    };
    let same = |ty: ResourceType| client.acked_version(ty) == Some(snap.type_version(ty));
    if same(ResourceType::Cluster)
        && (snap.resources(ResourceType::Endpoint).is_empty() || same(ResourceType::Endpoint))
    {
        // Every cluster and every endpoints resource of the snapshot, as they are.
        return true;
    }
    let eds = client.acked(ResourceType::Endpoint);
    snap.resources(ResourceType::Cluster).values().all(|c| {
        cds.get(&c.name) == Some(c)
            && snap
                .get(ResourceType::Endpoint, &c.name)
                .is_none_or(|e| eds.and_then(|held| held.get(&e.name)) == Some(e))
    })
}
