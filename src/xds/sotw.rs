//! The state-of-the-world xDS protocol for one stream, as a pure state machine.
//!
//! [`Stream`] is fed plain `DiscoveryRequest`s and new snapshots and answers with the responses
//! to send; it does no I/O and knows no clock, so every protocol rule is tested without sockets.
//!
//! Rules it implements (xDS protocol spec, "ACK/NACK and resource type instance version"):
//! - Each response carries a fresh nonce. A request whose `response_nonce` is not the latest one
//!   sent for its type is stale and ignored entirely.
//! - A request answering the latest nonce is a NACK when it has `error_detail`, else an ACK. A
//!   NACKed version is recorded and never sent again; the next change produces a new version.
//! - Versions are content hashes of what one response holds, so a client that reconnects holding
//!   exactly the current resources (same `version_info`) is sent nothing it would apply. It is
//!   sent one message all the same, the same content again: Envoy resets its reconnect
//!   backoff only when a message arrives on the stream, so without one every restart of cutover
//!   would make the next reconnect slower (see `Stream::greet`).
//! - New subscriptions are answered even if nothing changed; names that do not exist yet are
//!   sent when they appear.
//! - After clusters change, endpoints are sent again so that re-created clusters finish warming.
//!
//!
//! On an aggregated (ADS) stream every step follows the make-before-break policy of
//! [`super::order`]. What the client holds is reported as a protocol-neutral
//! [`ClientView`] and [`SyncState`] ([`super::clients`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::ResourceType;
use super::clients::{
    ClientView, Held, Nack, ResourceMap, SentSets, SyncState, TypeStatus, TypeView,
};
use super::limits::{MAX_NACK_ERROR_BYTES, truncated};
use super::order::{self, Holdings as _};
pub use super::{Event, Mode};
use crate::node::NodeInfo;
use crate::snapshot::{Resource, Snapshot, set_version};

/// A response to send: the resources are shared, pre-encoded bytes (and a response of a whole
/// type shares its very list with every other stream's).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub ty: ResourceType,
    pub version: String,
    pub nonce: String,
    pub resources: Arc<[Resource]>,
}

/// What happened on one input: responses to send (in order) and events to record.
pub type Output = super::Output<Response>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        }
    }
}

/// What a request subscribes to (xDS spec, "How the client specifies what resources to
/// return"). For clusters and listeners, the types that have wildcard subscriptions: `"*"` among
/// the names is the explicit wildcard, with or without other names; an empty list is the legacy
/// wildcard on the first request of the type, and keeps a wildcard subscription wildcard, but
/// after a subscription to names it unsubscribes from everything. For endpoints and routes every
/// name is a name.
fn subscription(
    ty: ResourceType,
    names: &[String],
    current: Option<&Subscription>,
) -> Subscription {
    if ty.is_full_state() {
        let legacy_wildcard =
            names.is_empty() && current.is_none_or(|c| *c == Subscription::Wildcard);
        if legacy_wildcard || names.iter().any(|n| n == "*") {
            return Subscription::Wildcard;
        }
    }
    Subscription::Names(names.iter().cloned().collect())
}

#[derive(Debug, Clone, Default)]
struct TypeState {
    /// `None` until the client asks for this type: nothing is sent unasked.
    subscription: Option<Subscription>,
    /// A response sent and not answered yet (its nonce is `last_nonce`).
    sent: Option<Held>,
    acked: Option<Held>,
    /// The `version_info` of the first request on this stream: what the client held before.
    reported: Option<String>,
    last_nack: Option<Nack>,
    /// A rejected version that must not be sent again; cleared by the next ACK.
    rejected: Option<String>,
    /// The nonce of the latest response of this type: requests answering any other are stale.
    last_nonce: Option<String>,
    /// The resources of the last rejected response, for status reports.
    rejected_resources: ResourceMap,
    /// Send even if the content is unchanged (endpoints of clusters that were re-created).
    force: bool,
    /// Bumped whenever the subscription changes.
    generation: u64,
    /// What the client held was up to date for this key: while the key is the same, the
    /// (per config version, not per stream) work of recomputing it is skipped.
    settled: Option<SettledOn>,
    /// When settled: the subscription covers every resource of the type in the snapshot (a
    /// client that has not asked for some of them yet is settled on what it asked, but not in
    /// sync).
    settled_complete: bool,
    /// The snapshot type version whose content for this client is the rejected version: the
    /// client answered it with a NACK and nothing is sent until the content changes.
    blocked: Option<String>,
    /// Whether the subscription covers every resource of the type, for the snapshot's names
    /// ([`Snapshot::names_version`]) and the subscription's generation it was computed on.
    covers: Option<(String, u64, bool)>,
}

/// The inputs that decide a type's desired resources.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SettledOn {
    snapshot_type_version: String,
    generation: u64,
    kept: Vec<String>,
}

impl TypeState {
    /// Whether the client already holds `desired` (asked only with nothing in flight). For EDS
    /// and RDS, where a response need not repeat every name, a client that merely dropped names
    /// holds a superset that is narrowed here without a response.
    fn holds(&mut self, ty: ResourceType, desired: &ResourceMap, version: &str) -> bool {
        if let Some(held) = &mut self.acked {
            // Versions are content hashes: the same version is the same content.
            if held.version == version || *held.resources == **desired {
                return true;
            }
            let subset = !ty.is_full_state()
                && desired
                    .iter()
                    .all(|(name, r)| held.resources.get(name) == Some(r));
            if subset {
                Arc::make_mut(&mut held.resources).retain(|name, _| desired.contains_key(name));
                // The version stays the hash of what is held (`order` compares it).
                held.version = set_version(held.resources.values());
            }
            return subset;
        }
        if self.reported.as_deref() == Some(version) {
            // Reconnected holding exactly this.
            self.acked = Some(Held {
                version: version.to_owned(),
                resources: desired.clone(),
            });
            return true;
        }
        false
    }

    fn acked_resources(&self) -> Option<&BTreeMap<String, Resource>> {
        self.acked.as_ref().map(|a| &*a.resources)
    }

    fn view(&self) -> TypeView {
        TypeView {
            acked: self.acked.clone(),
            pending: self.sent.clone(),
            reported: self.reported.clone(),
            rejected: self.rejected_resources.clone(),
            last_nack: self.last_nack.clone(),
        }
    }
}

/// The protocol state of one xDS stream.
#[derive(Debug)]
pub struct Stream {
    mode: Mode,
    node: Option<NodeInfo>,
    snapshot: Option<Arc<Snapshot>>,
    types: [TypeState; ResourceType::COUNT],
    nonces: u64,
    /// Inputs of the last cluster-readiness check, and its answer.
    ready_memo: RefCell<Option<([String; 5], bool)>>,
    /// What this cutover sent to any client, to know what a reconnecting client holds.
    sent: Option<Arc<SentSets>>,
}

impl Stream {
    pub fn new(mode: Mode) -> Stream {
        Stream {
            mode,
            node: None,
            snapshot: None,
            types: Default::default(),
            nonces: 0,
            ready_memo: RefCell::new(None),
            sent: None,
        }
    }

    /// Records every set it sends in `sent`, and reads there what a reconnecting client holds.
    #[must_use]
    pub fn remembering(mut self, sent: Arc<SentSets>) -> Stream {
        self.sent = Some(sent);
        self
    }

    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// The config version this stream is converging to.
    pub fn snapshot_version(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|s| s.version.as_str())
    }

    pub fn status(&self, ty: ResourceType) -> TypeStatus {
        let mut view = ClientView::default();
        view.types[ty.index()] = self.types[ty.index()].view();
        view.status(ty)
    }

    /// What the client holds, pending and rejected, per type: cheap (shared maps), for
    /// [`super::clients`].
    pub fn view(&self) -> ClientView {
        ClientView {
            types: ResourceType::ALL.map(|ty| self.types[ty.index()].view()),
        }
    }

    /// True when this client holds every resource of the current snapshot of every type this
    /// stream carries, nothing pending and no cluster kept for old routes. A type the client
    /// has not asked for (or asked for only some names of) is not in sync unless the snapshot
    /// has nothing of it, except for a client that names its listeners (see
    /// `Stream::names_its_listeners`). O(1): it reads what the last step settled on.
    pub fn in_sync(&self) -> bool {
        let Some(snap) = &self.snapshot else {
            return false;
        };
        let asks_what_it_uses = self.names_its_listeners();
        self.mode.types().iter().all(|&ty| {
            let st = &self.types[ty.index()];
            if st.subscription.is_none() {
                return snap.resources(ty).is_empty();
            }
            st.sent.is_none()
                && (st.settled_complete || asks_what_it_uses)
                && st.settled.as_ref().is_some_and(|k| {
                    k.kept.is_empty()
                        && k.generation == st.generation
                        && k.snapshot_type_version == snap.type_version(ty)
                })
        })
    }

    /// Whether the client asks for listeners by name on this stream: gRPC's proxyless clients
    /// do (the `xds:///` target), and then ask only for the routes, clusters and endpoints
    /// that listener leads to; a blue-green service's idle colour, say, they never ask for.
    /// What they asked for is then all they hold. Envoy asks for every listener (wildcard).
    fn names_its_listeners(&self) -> bool {
        matches!(
            self.types[ResourceType::Listener.index()].subscription,
            Some(Subscription::Names(_))
        )
    }

    /// How far the client is with the current snapshot: in sync, waiting for something, or
    /// done answering it with a rejection (nothing pending, some type held back by the version
    /// it rejected).
    pub fn sync_state(&self) -> SyncState {
        if self.in_sync() {
            return SyncState::InSync;
        }
        let Some(snap) = &self.snapshot else {
            return SyncState::Pending;
        };
        let types = self.mode.types();
        let nothing_pending = types.iter().all(|ty| self.types[ty.index()].sent.is_none());
        let rejected = types
            .iter()
            .any(|&ty| self.types[ty.index()].blocked.as_deref() == Some(snap.type_version(ty)));
        if nothing_pending && rejected {
            SyncState::Rejected
        } else {
            SyncState::Pending
        }
    }

    /// A new config version to converge to.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output {
        self.snapshot = Some(snapshot);
        let mut out = Output::default();
        self.step(&mut out);
        out
    }

    /// Resource names subscribed to, all types together (a wildcard counts none).
    pub fn subscribed_names(&self) -> usize {
        self.types
            .iter()
            .map(|t| match &t.subscription {
                Some(Subscription::Names(names)) => names.len(),
                _ => 0,
            })
            .sum()
    }

    /// A request from the client.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Output {
        let mut out = Output::default();
        if self.node.is_none()
            && let Some(node) = &req.node
        {
            self.node = Some(NodeInfo::from_node(node));
        }
        let ty = match (ResourceType::from_type_url(&req.type_url), self.mode) {
            (Some(ty), Mode::Aggregated) => ty,
            (Some(ty), Mode::Single(only)) if ty == only => ty,
            // Per-type services may leave type_url empty: it is implied by the service.
            (None, Mode::Single(only)) if req.type_url.is_empty() => only,
            _ => {
                out.events.push(Event::UnknownType {
                    type_url: req.type_url.clone(),
                });
                return out;
            }
        };
        let st = &mut self.types[ty.index()];
        if req.response_nonce.is_empty() {
            // The first request for this type on this stream: the client may hold a version
            // from an earlier stream (a reconnect).
            if st.subscription.is_none() && !req.version_info.is_empty() {
                st.reported = Some(req.version_info.clone());
                // Clusters this cutover sent (to this client on an earlier stream, or to
                // another): the client holds exactly them (a cluster response is the whole
                // set), as if it had ACKed them here, so those its routes may still use are
                // kept until routes without them are ACKed (make-before-break across a
                // reconnect). Endpoints and routes are not: a client drops the endpoints of a
                // cluster it removes whatever version it last ACKed, and what a response leaves
                // out of those types is kept anyway.
                let current = self.snapshot.as_ref().map(|s| s.type_version(ty));
                let earlier = self
                    .sent
                    .as_ref()
                    .filter(|_| ty == ResourceType::Cluster)
                    .filter(|_| current != Some(req.version_info.as_str()))
                    .and_then(|sent| sent.get(ty, &req.version_info));
                if let Some(resources) = earlier {
                    st.acked = Some(Held {
                        version: req.version_info.clone(),
                        resources,
                    });
                }
            }
        } else if st.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            // Stale: it answers a response that a newer one has replaced.
            return out;
        } else if let Some(sent) = st.sent.take() {
            match &req.error_detail {
                Some(status) => {
                    let nack = Nack {
                        version: sent.version.clone(),
                        error: truncated(&status.message, MAX_NACK_ERROR_BYTES),
                    };
                    out.events.push(Event::Nack {
                        ty,
                        version: nack.version.clone(),
                        error: nack.error.clone(),
                    });
                    st.rejected = Some(nack.version.clone());
                    st.rejected_resources = sent.resources;
                    st.last_nack = Some(nack);
                    st.settled = None;
                }
                None => {
                    out.events.push(Event::Ack {
                        ty,
                        version: sent.version.clone(),
                    });
                    st.rejected = None;
                    st.acked = Some(sent);
                    st.settled = None;
                }
            }
        }
        // Else: the latest response was answered already; the client only changes what it
        // subscribes to (Envoy keeps sending the last nonce it received).
        let st = &mut self.types[ty.index()];
        let subscription = subscription(ty, &req.resource_names, st.subscription.as_ref());
        if st.subscription.as_ref() != Some(&subscription) {
            st.subscription = Some(subscription);
            st.generation += 1;
        }
        self.step(&mut out);
        if self.nonces == 0 && self.in_sync() {
            let greet = match self.mode {
                Mode::Single(only) => only,
                // Endpoints or routes: a few resources again, not the whole set of a type.
                Mode::Aggregated if !ty.is_full_state() => ty,
                Mode::Aggregated => [ResourceType::Route, ResourceType::Endpoint]
                    .into_iter()
                    .find(|t| self.types[t.index()].acked.is_some())
                    .unwrap_or(ty),
            };
            self.greet(greet, &mut out);
        }
        out
    }

    /// The first message on a stream whose client reconnected holding exactly what it should
    /// (it is in sync before anything was sent): what it holds of `ty` again, the same content
    /// under the same version, which Envoy compares and leaves as it is. Never an empty
    /// response under that version: the spec allows nothing or the same content, and a client
    /// that trusts the version would believe it holds nothing. On an ADS stream only routes or
    /// endpoints greet (a few resources; clusters and listeners would be the whole set).
    fn greet(&mut self, ty: ResourceType, out: &mut Output) {
        let st = &self.types[ty.index()];
        let held = match (&st.sent, &st.reported, &st.acked) {
            (None, Some(_), Some(held)) => held.clone(),
            _ => return,
        };
        let resources = match (ty.is_full_state(), self.mode) {
            (false, _) | (true, Mode::Single(_)) => held.resources.values().cloned().collect(),
            (true, Mode::Aggregated) => return,
        };
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let st = &mut self.types[ty.index()];
        st.last_nonce = Some(nonce.clone());
        out.responses.push(Response {
            ty,
            version: held.version.clone(),
            nonce,
            resources,
        });
        // The client holds the same after it as before.
        st.sent = Some(held);
    }

    /// Sends, in make-before-break order, every type whose desired content differs from what the
    /// client holds.
    fn step(&mut self, out: &mut Output) {
        // A reconnecting client found to hold a later type (routes) as they are may let an
        // earlier one (clusters kept for its old routes) change: once more, then.
        if self.step_once(out) {
            self.step_once(out);
        }
    }

    /// One pass over the types; true when it found that the client holds a type it reported
    /// on reconnecting.
    fn step_once(&mut self, out: &mut Output) -> bool {
        let Some(snap) = self.snapshot.clone() else {
            return false;
        };
        let mut adopted = false;
        for &ty in self.mode.types() {
            // One response of a type in flight at a time: what changes meanwhile goes out as
            // one response, the latest, once the client answered (a burst of saves costs a
            // slow client one response, not one per save).
            if self.types[ty.index()].sent.is_some() {
                continue;
            }
            let kept = match (self.mode, ty) {
                (Mode::Aggregated, ResourceType::Cluster | ResourceType::Endpoint) => {
                    self.kept_clusters(&snap)
                }
                _ => Vec::new(),
            };
            let st = &self.types[ty.index()];
            let key = SettledOn {
                snapshot_type_version: snap.type_version(ty).to_owned(),
                generation: st.generation,
                kept,
            };
            if !st.force && st.settled.as_ref() == Some(&key) {
                continue;
            }
            let wants_all = self.wants_all(ty, &snap);
            let Some((desired, version)) = self.desired(ty, &snap, &key.kept, wants_all) else {
                continue;
            };
            let st = &mut self.types[ty.index()];
            let acked_before = st.acked.is_some();
            if !st.force && st.holds(ty, &desired, &version) {
                adopted |= !acked_before && st.acked.is_some();
                st.blocked = None;
                st.settled_complete = wants_all;
                st.settled = Some(key);
                continue;
            }
            st.settled = None;
            if st.rejected.as_deref() == Some(version.as_str()) {
                // Rejected before; wait for the next change.
                st.blocked = Some(key.snapshot_type_version);
                continue;
            }
            st.force = false;
            st.blocked = None;
            self.nonces += 1;
            let nonce = self.nonces.to_string();
            self.types[ty.index()].last_nonce = Some(nonce.clone());
            out.responses.push(Response {
                ty,
                version: version.clone(),
                nonce: nonce.clone(),
                resources: if Arc::ptr_eq(&desired, snap.shared(ty)) {
                    snap.list(ty).clone()
                } else {
                    desired.values().cloned().collect()
                },
            });
            let resources = desired;
            if let Some(sent) = self.sent.as_ref().filter(|_| ty == ResourceType::Cluster) {
                sent.record(ty, &version, &resources);
            }
            let held = Held { version, resources };
            if ty == ResourceType::Cluster {
                self.refresh_endpoints_of_changed_clusters(&held);
            }
            self.types[ty.index()].sent = Some(held);
        }
        adopted
    }

    /// Envoy re-creates a cluster whose definition changed, and the new one warms until it gets
    /// its endpoints; Envoy does not ask again for names it already has, so they are sent again,
    /// right behind the clusters (`now`, being sent): Envoy ACKs the clusters only once they
    /// have warmed, so waiting for that ACK would leave them warming until Envoy's initial
    /// fetch timeout (15 s). (New cluster names need nothing: Envoy subscribes to them.)
    fn refresh_endpoints_of_changed_clusters(&mut self, now: &Held) {
        let before = self.types[ResourceType::Cluster.index()].acked_resources();
        let changed = before.is_some_and(|before| {
            now.resources
                .iter()
                .any(|(name, r)| before.get(name).is_some_and(|old| old != r))
        });
        let eds = &mut self.types[ResourceType::Endpoint.index()];
        if changed && eds.subscription.is_some() {
            eds.force = true;
        }
    }

    /// The resources this client should hold for `ty` now and their version, or `None` when
    /// the type must wait (routes whose clusters are not ready yet). A client that gets every
    /// resource of the type (the usual case) shares the snapshot's set and its version, both
    /// computed once per config version: nothing is copied or hashed per stream.
    fn desired(
        &self,
        ty: ResourceType,
        snap: &Snapshot,
        kept: &[String],
        wants_all: bool,
    ) -> Option<(ResourceMap, String)> {
        if !self.subscribed(ty) {
            return None;
        }
        let routing = matches!(ty, ResourceType::Listener | ResourceType::Route);
        if self.mode == Mode::Aggregated && routing && !order::routing_may_be_sent(snap, self) {
            return None;
        }
        let whole = snap.shared(ty);
        if wants_all && kept.is_empty() {
            return Some((whole.clone(), snap.type_version(ty).to_owned()));
        }
        let mut desired: BTreeMap<String, Resource> = order::wanted(snap, ty, self)
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        if self.mode == Mode::Aggregated && !routing {
            order::keep(ty, &mut desired, kept, self);
        }
        let version = set_version(desired.values());
        Some((Arc::new(desired), version))
    }

    /// Whether the client asks for every resource of `ty` in `snap`: remembered while the
    /// snapshot's names and the subscription stay the same (a change of content only, the usual
    /// edit, costs no walk over the names).
    fn wants_all(&mut self, ty: ResourceType, snap: &Snapshot) -> bool {
        let st = &mut self.types[ty.index()];
        let names_version = snap.names_version(ty);
        if let Some((v, generation, covers)) = &st.covers
            && v == names_version
            && *generation == st.generation
        {
            return *covers;
        }
        let covers = match &st.subscription {
            Some(Subscription::Wildcard) => true,
            Some(Subscription::Names(names)) => {
                snap.resources(ty).keys().all(|n| names.contains(n))
            }
            None => false,
        };
        st.covers = Some((names_version.to_owned(), st.generation, covers));
        covers
    }

    fn kept_clusters(&self, snap: &Snapshot) -> Vec<String> {
        order::kept_clusters(snap, self)
    }

    /// [`order::clusters_ready`], remembered for the inputs it was last computed on: it walks
    /// every cluster, and the inputs rarely change between two steps of one stream.
    fn clusters_ready_cached(&self, snap: &Snapshot) -> bool {
        let key = self.ready_key(snap);
        if let Some((k, ready)) = self.ready_memo.borrow().as_ref()
            && *k == key
        {
            return *ready;
        }
        let ready = order::clusters_ready(snap, self);
        *self.ready_memo.borrow_mut() = Some((key, ready));
        ready
    }

    fn ready_key(&self, snap: &Snapshot) -> [String; 5] {
        let version =
            |held: &Option<Held>| held.as_ref().map(|h| h.version.clone()).unwrap_or_default();
        let [cds, eds] =
            [ResourceType::Cluster, ResourceType::Endpoint].map(|ty| &self.types[ty.index()]);
        [
            snap.version.clone(),
            version(&cds.acked),
            version(&eds.acked),
            // Empty when nothing is in flight, else a version (never empty).
            version(&cds.sent),
            version(&eds.sent),
        ]
    }
}

impl order::Holdings for Stream {
    fn subscribed(&self, ty: ResourceType) -> bool {
        self.types[ty.index()].subscription.is_some()
    }

    fn wants(&self, ty: ResourceType, name: &str) -> bool {
        self.types[ty.index()]
            .subscription
            .as_ref()
            .is_some_and(|s| s.wants(name))
    }

    fn acked(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>> {
        self.types[ty.index()].acked_resources()
    }

    fn acked_version(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty.index()]
            .acked
            .as_ref()
            .map(|h| h.version.as_str())
    }

    fn pending(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>> {
        self.types[ty.index()].sent.as_ref().map(|h| &*h.resources)
    }

    fn pending_version(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty.index()]
            .sent
            .as_ref()
            .map(|h| h.version.as_str())
    }

    fn reported(&self, ty: ResourceType) -> bool {
        self.types[ty.index()].reported.is_some()
    }

    fn names_its_listeners(&self) -> bool {
        Stream::names_its_listeners(self)
    }

    fn clusters_ready(&self, snap: &Snapshot) -> bool {
        self.clusters_ready_cached(snap)
    }
}

#[cfg(test)]
mod tests;
