//! The incremental ("delta") xDS protocol for one stream, as a pure state machine.
//!
//! [`Stream`] is fed `DeltaDiscoveryRequest`s and new snapshots, the same group snapshots as
//! [`super::sotw::Stream`], and answers with the responses to send: per resource, only what its
//! client does not hold at the current version, and the names of what it holds that is gone. It
//! does no I/O and knows no clock.
//!
//! Rules it implements (xDS protocol spec, "Incremental xDS"; each is a test in `delta/tests.rs`
//! named after the report that found it missing elsewhere):
//! - Versions are per resource: the content hash each [`Resource`] carries. A resource is sent
//!   when the client does not hold it at that version; one the client holds that is no longer in
//!   the config is named in `removed_resources` (a change is never treated as the full state,
//!   istio #34949, #46882). A name the client never held is never named there
//!   (go-control-plane #488, #565): one that does not exist yet is sent when it appears.
//! - On (re)connect, the client lists what it holds in `initial_resource_versions`: what it holds
//!   at the current version is not sent again, what changed is, and what no longer exists is
//!   removed (java-control-plane #463, istio #41494). The names Envoy lists again in
//!   `resource_names_subscribe` of that first request restate its interest (Envoy #16063); they
//!   are not a request to resend.
//! - After the first request, every name in `resource_names_subscribe` is answered even if the
//!   client holds it at the current version: it may have forgotten it (spec, "Subscribing to
//!   Resources"; go-control-plane #1450, #583, Envoy #22418). `*` resends everything.
//! - Wildcard: `*` among the names subscribes to every resource of the type, with or without
//!   other names, and unsubscribing `*` ends it; for clusters and listeners a first request that
//!   names nothing is the legacy wildcard (Envoy #21416), which later requests naming nothing
//!   leave as it is. Unsubscribing a name the wildcard still covers is answered with the
//!   resource (spec, "Unsubscribing from Resources"); unsubscribing anything else needs no
//!   response. A subscription to a name that does not exist (a child asked for after its parent
//!   went, Envoy #17980) is remembered and answered when it appears.
//! - One response per type is in flight at a time; the next is computed from what the client
//!   ACKed. ACK and NACK are told apart by `error_detail`; a rejected response is recorded and the
//!   same updates and removals are not sent again until what would be sent changes.
//! - A nonce pairs an ACK or NACK with the response in flight. A request carrying any other
//!   nonce is stale as an answer and does not count as one, but its subscription changes are
//!   honoured: the spec says the server "must honor changes to the subscription state even if the
//!   nonce is stale".
//! - After clusters change, the endpoints of each redefined cluster are sent again: Envoy
//!   re-creates the cluster, which warms until it gets them, and does not ask again for a name
//!   it is subscribed to.
//!
//! On an aggregated (ADS) stream every step follows the make-before-break policy of
//! [`super::order`], through the same [`order::Holdings`] as state-of-the-world. What the client
//! holds is reported as the same protocol-neutral [`ClientView`] and [`SyncState`]
//! ([`super::clients`]), with type versions computed as state-of-the-world computes them, so
//! status, CSDS and the controller's gates read both protocols alike.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::clients::{ClientView, Held, Nack, ResourceMap, SyncState, TypeStatus, TypeView};
use super::limits::{MAX_NACK_ERROR_BYTES, truncated};
use super::order;
use super::{Event, Mode, ResourceType};
use crate::node::NodeInfo;
use crate::snapshot::{Resource, ResourceData, Snapshot, set_version};

/// A delta response: the resources to add or update (shared, pre-encoded bytes) and the names of
/// those the client must drop.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub ty: ResourceType,
    /// What the client holds of `ty` once it applies this response, as a type version
    /// ([`set_version`]); sent as `system_version_info`, which is for debugging only.
    pub version: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
}

/// What happened on one input: responses to send (in order) and events to record.
pub type Output = super::Output<Response>;

/// The name that subscribes to every resource of a type.
const WILDCARD: &str = "*";

static NOTHING: BTreeMap<String, Resource> = BTreeMap::new();

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The updates and removals of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Diff {
    updates: BTreeMap<String, Resource>,
    removed: BTreeSet<String>,
}

/// A response sent and not answered yet.
#[derive(Debug, Clone)]
struct InFlight {
    nonce: String,
    diff: Diff,
    /// What the client holds once it applies the response.
    after: Held,
}

/// The inputs that decide what a type's next response holds: while they are the same as when
/// nothing was left to send, the (per config version, not per stream) work of comparing every
/// resource is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SettledOn {
    snapshot_type_version: String,
    held_version: String,
    generation: u64,
    kept: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct TypeState {
    /// `None` until the client asks for this type: nothing is sent unasked.
    subscription: Option<Subscription>,
    /// Bumped whenever the subscription changes.
    generation: u64,
    /// What the client holds: what it ACKed on this stream, or listed in
    /// `initial_resource_versions` when it connected. `None` until either.
    held: Option<Held>,
    /// The type version of what it listed when it connected (a reconnect).
    reported: Option<String>,
    in_flight: Option<InFlight>,
    /// Names to send even if the client holds them at the current version.
    resend: BTreeSet<String>,
    /// Names the client subscribed to and has not been told about yet: one that does not exist
    /// is named in `removed_resources`, so the client need not wait for a timeout to know (it
    /// stays subscribed, and gets the resource if it appears).
    announce: BTreeSet<String>,
    /// The updates and removals of the last rejected response: not sent again. Cleared by the
    /// next ACK.
    rejected: Option<Diff>,
    /// The resources of the last rejected response, for status reports.
    rejected_resources: ResourceMap,
    last_nack: Option<Nack>,
    /// The snapshot type version whose response for this client is the rejected one.
    blocked: Option<String>,
    settled: Option<SettledOn>,
}

impl TypeState {
    fn held_resources(&self) -> &BTreeMap<String, Resource> {
        self.held.as_ref().map_or(&NOTHING, |h| &*h.resources)
    }

    /// Drops what the client no longer asks for: it forgets a resource it unsubscribes from.
    fn forget_unwanted(&mut self) {
        let Some(sub) = &self.subscription else {
            return;
        };
        if let Some(held) = &self.held
            && held.resources.keys().any(|n| !sub.wants(n))
        {
            let kept = held
                .resources
                .iter()
                .filter(|(n, _)| sub.wants(n))
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            self.held = Some(held_from(kept));
        }
    }

    fn view(&self) -> TypeView {
        TypeView {
            acked: self.held.clone(),
            pending: self.in_flight.as_ref().map(|f| f.after.clone()),
            reported: self.reported.clone(),
            rejected: self.rejected_resources.clone(),
            last_nack: self.last_nack.clone(),
        }
    }
}

fn held_from(resources: BTreeMap<String, Resource>) -> Held {
    Held {
        version: set_version(resources.values()),
        resources: Arc::new(resources),
    }
}

/// The protocol state of one delta xDS stream.
#[derive(Debug)]
pub struct Stream {
    mode: Mode,
    node: Option<NodeInfo>,
    snapshot: Option<Arc<Snapshot>>,
    types: [TypeState; ResourceType::COUNT],
    nonces: u64,
}

impl Stream {
    pub fn new(mode: Mode) -> Stream {
        Stream {
            mode,
            node: None,
            snapshot: None,
            types: Default::default(),
            nonces: 0,
        }
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
    /// stream carries, at its version, and nothing else: nothing in flight, nothing kept for old
    /// routes. A type the client has not asked for (or asked for only some names of) is not in
    /// sync unless the snapshot has nothing of it, except for a client that names its listeners
    /// (as for state of the world): what it asked for is all it uses, so it is in sync once it
    /// holds that. O(1): type versions are computed once.
    pub fn in_sync(&self) -> bool {
        let Some(snap) = &self.snapshot else {
            return false;
        };
        let asks_what_it_uses = order::Holdings::names_its_listeners(self);
        self.mode.types().iter().all(|&ty| {
            let st = &self.types[ty.index()];
            if st.subscription.is_none() {
                return snap.resources(ty).is_empty();
            }
            let holds_what_it_asked = || {
                st.settled.as_ref().is_some_and(|k| {
                    k.kept.is_empty()
                        && k.generation == st.generation
                        && k.snapshot_type_version == snap.type_version(ty)
                        && st
                            .held
                            .as_ref()
                            .map(|h| h.version.as_str())
                            .unwrap_or_default()
                            == k.held_version
                })
            };
            st.in_flight.is_none()
                && st.resend.is_empty()
                && st.announce.is_empty()
                && (st.held.as_ref().map_or_else(
                    || snap.resources(ty).is_empty(),
                    |h| h.version == snap.type_version(ty),
                ) || (asks_what_it_uses && holds_what_it_asked()))
        })
    }

    /// How far the client is with the current snapshot: in sync, waiting for something, or done
    /// answering it with a rejection (nothing in flight, some type held back by what it
    /// rejected).
    pub fn sync_state(&self) -> SyncState {
        if self.in_sync() {
            return SyncState::InSync;
        }
        let Some(snap) = &self.snapshot else {
            return SyncState::Pending;
        };
        let types = self.mode.types();
        let nothing_in_flight = types
            .iter()
            .all(|ty| self.types[ty.index()].in_flight.is_none());
        let rejected = types
            .iter()
            .any(|&ty| self.types[ty.index()].blocked.as_deref() == Some(snap.type_version(ty)));
        if nothing_in_flight && rejected {
            SyncState::Rejected
        } else {
            SyncState::Pending
        }
    }

    /// A new config version to converge to.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output {
        for ty in ResourceType::ALL {
            resolve_reported(&mut self.types[ty.index()], ty, &snapshot);
        }
        self.snapshot = Some(snapshot);
        let mut out = Output::default();
        self.step(&mut out);
        out
    }

    /// Resource names subscribed to, all types together (a wildcard counts none).
    pub fn subscribed_names(&self) -> usize {
        self.types
            .iter()
            .map(|t| t.subscription.as_ref().map_or(0, |s| s.names.len()))
            .sum()
    }

    /// A request from the client.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Output {
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
        if !req.response_nonce.is_empty() {
            self.answer(ty, req, &mut out.events);
        }
        self.subscribe(ty, req);
        self.step(&mut out);
        if self.nonces == 0 && self.in_sync() {
            self.greet(ty, &mut out);
        }
        out
    }

    /// An ACK or NACK of the response in flight; anything else is stale as an answer.
    fn answer(&mut self, ty: ResourceType, req: &DeltaDiscoveryRequest, events: &mut Vec<Event>) {
        let st = &mut self.types[ty.index()];
        let Some(sent) = st.in_flight.take_if(|f| f.nonce == req.response_nonce) else {
            return;
        };
        st.settled = None;
        if let Some(status) = &req.error_detail {
            let nack = Nack {
                version: sent.after.version.clone(),
                error: truncated(&status.message, MAX_NACK_ERROR_BYTES),
            };
            events.push(Event::Nack {
                ty,
                version: nack.version.clone(),
                error: nack.error.clone(),
            });
            st.rejected_resources = Arc::new(sent.diff.updates.clone());
            st.rejected = Some(sent.diff);
            st.last_nack = Some(nack);
            return;
        }
        events.push(Event::Ack {
            ty,
            version: sent.after.version.clone(),
        });
        st.rejected = None;
        st.held = Some(sent.after);
        // It may have unsubscribed from some of it meanwhile.
        st.forget_unwanted();
    }

    /// Envoy re-creates a cluster whose definition changed, and the new one warms until it gets
    /// its endpoints; Envoy does not ask again for a name it is subscribed to, so they are sent
    /// again, right behind the clusters: Envoy ACKs the clusters only once they have warmed,
    /// so waiting for that ACK would leave them warming until Envoy's initial fetch timeout
    /// (15 s). (New cluster names need nothing: Envoy subscribes to them.)
    fn resend_endpoints_of_redefined_clusters(&mut self, updates: &BTreeMap<String, Resource>) {
        let held = self.types[ResourceType::Cluster.index()].held_resources();
        let redefined: Vec<String> = updates
            .iter()
            .filter(|(name, r)| held.get(*name).is_some_and(|old| old != *r))
            .map(|(name, _)| name.clone())
            .collect();
        let eds = &mut self.types[ResourceType::Endpoint.index()];
        if let Some(sub) = &eds.subscription {
            let wanted = redefined.into_iter().filter(|n| sub.wants(n));
            eds.resend.extend(wanted);
        }
    }

    /// Applies the request's subscription changes, and on the first request of the type what
    /// the client says it holds.
    fn subscribe(&mut self, ty: ResourceType, req: &DeltaDiscoveryRequest) {
        let snapshot = self.snapshot.clone();
        let st = &mut self.types[ty.index()];
        let first = st.subscription.is_none();
        let mut sub = st.subscription.clone().unwrap_or_default();
        if first
            && ty.is_full_state()
            && req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty()
        {
            // The legacy wildcard.
            sub.wildcard = true;
        }
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                sub.wildcard = true;
                if !first {
                    let held = st.held_resources().keys().cloned().collect::<Vec<_>>();
                    st.resend.extend(held);
                }
            } else {
                sub.names.insert(name.clone());
                st.announce.insert(name.clone());
                if !first {
                    st.resend.insert(name.clone());
                }
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
                if sub.wildcard {
                    // Still covered by the wildcard: the client cannot tell whether to keep it
                    // until it is told.
                    st.resend.insert(name.clone());
                }
            }
        }
        if first && !req.initial_resource_versions.is_empty() {
            let held: BTreeMap<String, Resource> = req
                .initial_resource_versions
                .iter()
                .filter(|(name, _)| sub.wants(name))
                .map(|(name, version)| {
                    let known = snapshot
                        .as_ref()
                        .and_then(|s| s.get(ty, name))
                        .filter(|r| r.version == *version);
                    let r = known.cloned().unwrap_or_else(|| {
                        Resource::from(ResourceData {
                            name: name.clone(),
                            version: version.clone(),
                            // Content this config does not have: sent as nothing, only compared.
                            encoded: Bytes::new(),
                            names_clusters: false,
                        })
                    });
                    (name.clone(), r)
                })
                .collect();
            let held = held_from(held);
            st.reported = Some(held.version.clone());
            st.held = Some(held);
        }
        if st.subscription.as_ref() != Some(&sub) {
            st.subscription = Some(sub);
            st.generation += 1;
            st.forget_unwanted();
        }
    }

    /// The first message on a stream whose client reconnected holding exactly what it should
    /// (it is in sync before anything was sent): a response that changes nothing, because Envoy
    /// resets its reconnect backoff only when a message arrives. Endpoints or routes on ADS, as
    /// state-of-the-world does.
    fn greet(&mut self, ty: ResourceType, out: &mut Output) {
        let ty = match self.mode {
            Mode::Single(only) => only,
            Mode::Aggregated if !ty.is_full_state() => ty,
            Mode::Aggregated => [ResourceType::Route, ResourceType::Endpoint]
                .into_iter()
                .find(|t| self.types[t.index()].held.is_some())
                .unwrap_or(ty),
        };
        let st = &self.types[ty.index()];
        let Some(held) = st.held.clone().filter(|_| st.reported.is_some()) else {
            return;
        };
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        out.responses.push(Response {
            ty,
            version: held.version.clone(),
            nonce: nonce.clone(),
            resources: Vec::new(),
            removed: Vec::new(),
        });
        self.types[ty.index()].in_flight = Some(InFlight {
            nonce,
            diff: Diff {
                updates: BTreeMap::new(),
                removed: BTreeSet::new(),
            },
            after: held,
        });
    }

    /// Sends, in make-before-break order, every type for which the client lacks something or
    /// holds something gone, unless a response of that type is in flight.
    fn step(&mut self, out: &mut Output) {
        let Some(snap) = self.snapshot.clone() else {
            return;
        };
        for &ty in self.mode.types() {
            let st = &self.types[ty.index()];
            if st.subscription.is_none() || st.in_flight.is_some() {
                continue;
            }
            let kept = match (self.mode, ty) {
                (Mode::Aggregated, ResourceType::Cluster | ResourceType::Endpoint) => {
                    order::kept_clusters(&snap, self)
                }
                _ => Vec::new(),
            };
            let key = SettledOn {
                snapshot_type_version: snap.type_version(ty).to_owned(),
                held_version: st
                    .held
                    .as_ref()
                    .map(|h| h.version.clone())
                    .unwrap_or_default(),
                generation: st.generation,
                kept,
            };
            if st.resend.is_empty() && st.announce.is_empty() && st.settled.as_ref() == Some(&key) {
                continue;
            }
            let Some(desired) = self.desired(ty, &snap, &key.kept) else {
                continue;
            };
            let st = &mut self.types[ty.index()];
            let held = st.held_resources();
            let updates: BTreeMap<String, Resource> = desired
                .iter()
                .filter(|(name, r)| held.get(*name) != Some(*r) || st.resend.contains(*name))
                .map(|(name, r)| (name.clone(), r.clone()))
                .collect();
            let removed: BTreeSet<String> = held
                .keys()
                .filter(|name| !desired.contains_key(*name))
                .chain(
                    st.announce
                        .iter()
                        .filter(|name| !desired.contains_key(*name) && !held.contains_key(*name))
                        // Unsubscribed since: nothing to tell.
                        .filter(|name| st.subscription.as_ref().is_some_and(|s| s.wants(name))),
                )
                .cloned()
                .collect();
            if updates.is_empty() && removed.is_empty() {
                st.resend.clear();
                st.announce.clear();
                st.blocked = None;
                st.settled = Some(key);
                continue;
            }
            let diff = Diff { updates, removed };
            if st.rejected.as_ref() == Some(&diff) {
                // Rejected before; wait for the next change.
                st.blocked = Some(key.snapshot_type_version);
                continue;
            }
            st.blocked = None;
            st.settled = None;
            st.resend.clear();
            st.announce.clear();
            if ty == ResourceType::Cluster {
                self.resend_endpoints_of_redefined_clusters(&diff.updates);
            }
            // Applying the response gives the client exactly what it should hold.
            let after = held_from(desired);
            self.nonces += 1;
            let nonce = self.nonces.to_string();
            out.responses.push(Response {
                ty,
                version: after.version.clone(),
                nonce: nonce.clone(),
                resources: diff.updates.values().cloned().collect(),
                removed: diff.removed.iter().cloned().collect(),
            });
            self.types[ty.index()].in_flight = Some(InFlight { nonce, diff, after });
        }
    }

    /// The resources this client should hold for `ty` now, or `None` when the type must wait
    /// (listeners and routes whose clusters are not ready yet, for a client that may be routing).
    fn desired(
        &self,
        ty: ResourceType,
        snap: &Snapshot,
        kept: &[String],
    ) -> Option<BTreeMap<String, Resource>> {
        let mut desired: BTreeMap<String, Resource> = order::wanted(snap, ty, self)
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        if self.mode != Mode::Aggregated {
            return Some(desired);
        }
        match ty {
            ResourceType::Cluster | ResourceType::Endpoint => {
                order::keep(ty, &mut desired, kept, self);
                Some(desired)
            }
            ResourceType::Listener | ResourceType::Route => {
                order::routing_may_be_sent(snap, self).then_some(desired)
            }
            ResourceType::Secret => Some(desired),
        }
    }
}

/// A resource the client listed on reconnect at a version this stream had no content for gets
/// the content once a snapshot has it at that version (for CSDS; equality is by version).
fn resolve_reported(st: &mut TypeState, ty: ResourceType, snap: &Snapshot) {
    let Some(held) = &st.held else {
        return;
    };
    let unresolved = |(name, r): (&String, &Resource)| {
        r.encoded.is_empty() && snap.get(ty, name).is_some_and(|s| s == r)
    };
    if !held.resources.iter().any(unresolved) {
        return;
    }
    let resources = held
        .resources
        .iter()
        .map(|(name, r)| {
            let r = snap.get(ty, name).filter(|s| *s == r).unwrap_or(r);
            (name.clone(), r.clone())
        })
        .collect();
    st.held = Some(Held {
        version: held.version.clone(),
        resources: Arc::new(resources),
    });
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
        self.types[ty.index()].held.as_ref().map(|h| &*h.resources)
    }

    fn acked_version(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty.index()]
            .held
            .as_ref()
            .map(|h| h.version.as_str())
    }

    fn pending(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>> {
        self.types[ty.index()]
            .in_flight
            .as_ref()
            .map(|f| &*f.after.resources)
    }

    fn pending_version(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty.index()]
            .in_flight
            .as_ref()
            .map(|f| f.after.version.as_str())
    }

    fn reported(&self, ty: ResourceType) -> bool {
        self.types[ty.index()].reported.is_some()
    }

    fn names_its_listeners(&self) -> bool {
        self.types[ResourceType::Listener.index()]
            .subscription
            .as_ref()
            .is_some_and(|s| !s.wildcard)
    }
}

#[cfg(test)]
mod tests;
