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
//!   exactly the current resources (same `version_info`) is sent nothing.
//! - New subscriptions are answered even if nothing changed; names that do not exist yet are
//!   sent when they appear.
//! - After clusters change, endpoints are sent again so that re-created clusters finish warming.
//!
//! Make-before-break, on an aggregated (ADS) stream: a config version's listeners and routes are
//! only sent once that Envoy has ACKed all of its clusters *and* their endpoints; clusters that
//! the routes Envoy may still be using refer to are kept until routes without them are ACKed,
//! and only then removed. Per-type streams cannot see each other, so they send each type as soon
//! as it changes (the best the protocol allows without ADS).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::ResourceType;
use crate::snapshot::{Resource, Snapshot, set_version};

/// Which resource types a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ADS: every type on one stream, ordered and gated on ACKs.
    Aggregated,
    /// A per-type discovery service (CDS, EDS, LDS or RDS alone).
    Single(ResourceType),
}

/// A response to send: the resources are shared, pre-encoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub ty: ResourceType,
    pub version: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
}

/// Something the edge should log or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        ty: ResourceType,
        version: String,
    },
    Nack {
        ty: ResourceType,
        version: String,
        error: String,
    },
    /// A request for a type this stream does not serve (logged, otherwise ignored).
    UnknownType {
        type_url: String,
    },
}

/// What happened on one input: responses to send (in order) and events to record.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    pub responses: Vec<Response>,
    pub events: Vec<Event>,
}

/// A stream's resources by type, shared with the stream (see [`Stream::view`]).
#[derive(Debug, Clone, Default)]
pub struct StreamView {
    types: [TypeView; 4],
}

#[derive(Debug, Clone, Default)]
struct TypeView {
    acked: Option<ResourceMap>,
    sent: Option<ResourceMap>,
    rejected: ResourceMap,
    nack_error: Option<String>,
}

impl StreamView {
    /// Every resource of `ty` the stream has sent, with what the client did with it: ACKed
    /// (held), pending (sent, not answered) or NACKed (in the last rejected response).
    pub fn resource_states(&self, ty: ResourceType) -> Vec<ResourceState> {
        let v = &self.types[ty.index()];
        let mut out: BTreeMap<&str, ResourceState> = BTreeMap::new();
        for r in v.acked.iter().flat_map(|m| m.values()) {
            out.insert(
                &r.name,
                ResourceState {
                    resource: r.clone(),
                    client: ClientState::Acked,
                },
            );
        }
        let nack_error = v.nack_error.as_deref().unwrap_or_default();
        let later = v
            .rejected
            .values()
            .map(|r| (r, ClientState::Nacked(nack_error.to_owned())))
            .chain(
                v.sent
                    .iter()
                    .flat_map(|m| m.values())
                    .map(|r| (r, ClientState::Pending)),
            );
        for (r, client) in later {
            if out
                .get(r.name.as_str())
                .is_none_or(|held| held.resource != *r)
            {
                out.insert(
                    &r.name,
                    ResourceState {
                        resource: r.clone(),
                        client,
                    },
                );
            }
        }
        out.into_values().collect()
    }
}

/// One resource as a client holds it, for status reports (CSDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    pub resource: Resource,
    pub client: ClientState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    Acked,
    /// Sent, not yet answered.
    Pending,
    /// Rejected, with Envoy's error text.
    Nacked(String),
}

/// The client's identity, from the first request that carries a `node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

/// A rejected version and Envoy's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub error: String,
}

/// What one stream holds for one type, for status reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The version the client last ACKed (or reported holding when it connected).
    pub acked: Option<String>,
    /// A version sent and not yet answered.
    pub pending: Option<String>,
    pub last_nack: Option<Nack>,
}

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

/// Resources one response carried, shared (not copied) with status reports.
type ResourceMap = Arc<BTreeMap<String, Resource>>;

#[derive(Debug, Clone)]
struct Held {
    version: String,
    resources: ResourceMap,
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
}

/// The inputs that decide a type's desired resources.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SettledOn {
    snapshot_type_version: String,
    generation: u64,
    kept: Vec<String>,
}

impl TypeState {
    /// What the client holds or is about to hold, if this stream sent it.
    fn latest_mut(&mut self) -> Option<&mut Held> {
        match (&mut self.sent, &mut self.acked) {
            (Some(sent), _) => Some(sent),
            (None, acked) => acked.as_mut(),
        }
    }

    /// Whether the client already holds (or is being sent) `desired`. For EDS and RDS, where a
    /// response need not repeat every name, a client that merely dropped names holds a superset
    /// that is narrowed here without a response.
    fn holds(
        &mut self,
        ty: ResourceType,
        desired: &BTreeMap<String, Resource>,
        version: &str,
    ) -> bool {
        if let Some(held) = self.latest_mut() {
            if *held.resources == *desired {
                return true;
            }
            let subset = !ty.is_full_state()
                && desired
                    .iter()
                    .all(|(name, r)| held.resources.get(name) == Some(r));
            if subset {
                Arc::make_mut(&mut held.resources).retain(|name, _| desired.contains_key(name));
            }
            return subset;
        }
        if self.reported.as_deref() == Some(version) {
            // Reconnected holding exactly this.
            self.acked = Some(Held {
                version: version.to_owned(),
                resources: Arc::new(desired.clone()),
            });
            return true;
        }
        false
    }

    fn acked_resources(&self) -> Option<&BTreeMap<String, Resource>> {
        self.acked.as_ref().map(|a| &*a.resources)
    }
}

/// The protocol state of one xDS stream.
#[derive(Debug)]
pub struct Stream {
    mode: Mode,
    node: Option<NodeInfo>,
    snapshot: Option<Arc<Snapshot>>,
    types: [TypeState; 4],
    nonces: u64,
    /// Inputs of the last cluster-readiness check, and its answer.
    ready_memo: RefCell<Option<([String; 3], bool)>>,
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
        let st = &self.types[ty.index()];
        TypeStatus {
            acked: st
                .acked
                .as_ref()
                .map(|a| a.version.clone())
                .or_else(|| st.reported.clone()),
            pending: st.sent.as_ref().map(|s| s.version.clone()),
            last_nack: st.last_nack.clone(),
        }
    }

    /// What the client holds, pending and rejected, per type: cheap (shared maps), for the
    /// status registry; [`StreamView::resource_states`] lists it resource by resource.
    pub fn view(&self) -> StreamView {
        StreamView {
            types: ResourceType::ALL.map(|ty| {
                let st = &self.types[ty.index()];
                TypeView {
                    acked: st.acked.as_ref().map(|h| h.resources.clone()),
                    sent: st.sent.as_ref().map(|s| s.resources.clone()),
                    rejected: st.rejected_resources.clone(),
                    nack_error: st.last_nack.as_ref().map(|n| n.error.clone()),
                }
            }),
        }
    }

    /// True when this client has ACKed every type it subscribed to at the current snapshot's
    /// content, with nothing pending and no cluster kept for old routes. O(1): it reads what the
    /// last step settled on.
    pub fn in_sync(&self) -> bool {
        let Some(snap) = &self.snapshot else {
            return false;
        };
        self.serves().iter().all(|&ty| {
            let st = &self.types[ty.index()];
            st.subscription.is_none()
                || (st.sent.is_none()
                    && st.settled.as_ref().is_some_and(|k| {
                        k.kept.is_empty()
                            && k.generation == st.generation
                            && k.snapshot_type_version == snap.type_version(ty)
                    }))
        })
    }

    /// A new config version to converge to.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output {
        self.snapshot = Some(snapshot);
        let mut out = Output::default();
        self.step(&mut out);
        out
    }

    /// A request from the client.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Output {
        let mut out = Output::default();
        if self.node.is_none()
            && let Some(node) = &req.node
        {
            self.node = Some(NodeInfo {
                id: node.id.clone(),
                cluster: node.cluster.clone(),
            });
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
            }
        } else if st.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            // Stale: it answers a response that a newer one has replaced.
            return out;
        } else if let Some(sent) = st.sent.take() {
            match &req.error_detail {
                Some(status) => {
                    let nack = Nack {
                        version: sent.version.clone(),
                        error: status.message.clone(),
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
                    if ty == ResourceType::Cluster {
                        self.refresh_endpoints_of_changed_clusters(&sent);
                    }
                    let st = &mut self.types[ty.index()];
                    st.acked = Some(sent);
                    st.settled = None;
                }
            }
        }
        // Else: the latest response was answered already; the client only changes what it
        // subscribes to (Envoy keeps sending the last nonce it received).
        let subscription = if ty.is_full_state() && req.resource_names.is_empty() {
            Subscription::Wildcard
        } else {
            Subscription::Names(req.resource_names.iter().cloned().collect())
        };
        let st = &mut self.types[ty.index()];
        if st.subscription.as_ref() != Some(&subscription) {
            st.subscription = Some(subscription);
            st.generation += 1;
        }
        self.step(&mut out);
        out
    }

    fn serves(&self) -> &'static [ResourceType] {
        match self.mode {
            Mode::Aggregated => &ResourceType::ALL,
            Mode::Single(ResourceType::Cluster) => &[ResourceType::Cluster],
            Mode::Single(ResourceType::Endpoint) => &[ResourceType::Endpoint],
            Mode::Single(ResourceType::Listener) => &[ResourceType::Listener],
            Mode::Single(ResourceType::Route) => &[ResourceType::Route],
        }
    }

    /// Sends, in make-before-break order, every type whose desired content differs from what the
    /// client holds.
    fn step(&mut self, out: &mut Output) {
        let Some(snap) = self.snapshot.clone() else {
            return;
        };
        for &ty in self.serves() {
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
            if !st.force && st.sent.is_none() && st.settled.as_ref() == Some(&key) {
                continue;
            }
            let Some(desired) = self.desired(ty, &snap, &key.kept) else {
                continue;
            };
            let version = set_version(desired.values());
            let st = &mut self.types[ty.index()];
            if !st.force && st.holds(ty, &desired, &version) {
                if st.sent.is_none() {
                    st.settled = Some(key);
                }
                continue;
            }
            st.settled = None;
            if st.rejected.as_deref() == Some(version.as_str()) {
                // Rejected before; wait for the next change.
                continue;
            }
            st.force = false;
            self.nonces += 1;
            let nonce = self.nonces.to_string();
            self.types[ty.index()].last_nonce = Some(nonce.clone());
            out.responses.push(Response {
                ty,
                version: version.clone(),
                nonce: nonce.clone(),
                resources: desired.values().cloned().collect(),
            });
            self.types[ty.index()].sent = Some(Held {
                version,
                resources: Arc::new(desired),
            });
        }
    }

    /// Envoy re-creates a cluster whose definition changed, and the new one warms until it gets
    /// its endpoints; Envoy does not ask again for names it already has, so send them again.
    /// (New cluster names need nothing: Envoy subscribes to them.)
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

    /// The resources this client should hold for `ty` now, or `None` when the type must wait
    /// (routes whose clusters are not ready yet).
    fn desired(
        &self,
        ty: ResourceType,
        snap: &Snapshot,
        kept: &[String],
    ) -> Option<BTreeMap<String, Resource>> {
        let st = &self.types[ty.index()];
        let sub = st.subscription.as_ref()?;
        let mut desired: BTreeMap<String, Resource> = wanted(snap, ty, sub)
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        if self.mode != Mode::Aggregated {
            return Some(desired);
        }
        match ty {
            ResourceType::Cluster | ResourceType::Endpoint => {
                // Keep what routes in effect may still use, with the content the client holds.
                for name in kept {
                    if let Some(r) = st.acked_resources().and_then(|held| held.get(name))
                        && sub.wants(name)
                    {
                        desired.entry(name.clone()).or_insert_with(|| r.clone());
                    }
                }
                Some(desired)
            }
            ResourceType::Listener | ResourceType::Route => {
                self.clusters_ready_cached(snap).then_some(desired)
            }
        }
    }

    /// Clusters the client holds that the snapshot no longer has but routes the client may still
    /// be using refer to. Empty once the snapshot's routing is ACKed with nothing in flight.
    fn kept_clusters(&self, snap: &Snapshot) -> Vec<String> {
        if self.routing_settled(snap) {
            return Vec::new();
        }
        let cds = &self.types[ResourceType::Cluster.index()];
        let mut names: BTreeSet<&String> = BTreeSet::new();
        for held in [cds.acked.as_ref(), cds.sent.as_ref()]
            .into_iter()
            .flatten()
        {
            names.extend(
                held.resources
                    .keys()
                    .filter(|n| snap.get(ResourceType::Cluster, n).is_none()),
            );
        }
        names.into_iter().cloned().collect()
    }

    /// Whether the client's listeners and routes are exactly the snapshot's, with none in flight.
    fn routing_settled(&self, snap: &Snapshot) -> bool {
        [ResourceType::Listener, ResourceType::Route]
            .into_iter()
            .all(|ty| {
                let st = &self.types[ty.index()];
                let Some(sub) = &st.subscription else {
                    // Never asked for: nothing of this type is in effect.
                    return true;
                };
                st.sent.is_none()
                    && st
                        .acked
                        .as_ref()
                        .is_some_and(|held| held.version == set_version(wanted(snap, ty, sub)))
            })
    }

    /// [`Stream::clusters_ready`], remembered for the inputs it was last computed on: it walks
    /// every cluster, and the inputs rarely change between two steps of one stream.
    fn clusters_ready_cached(&self, snap: &Snapshot) -> bool {
        let key = self.ready_key(snap);
        if let Some((k, ready)) = self.ready_memo.borrow().as_ref()
            && *k == key
        {
            return *ready;
        }
        let ready = self.clusters_ready(snap);
        *self.ready_memo.borrow_mut() = Some((key, ready));
        ready
    }

    fn ready_key(&self, snap: &Snapshot) -> [String; 3] {
        let acked = |ty: ResourceType| {
            self.types[ty.index()]
                .acked
                .as_ref()
                .map(|h| h.version.clone())
                .unwrap_or_default()
        };
        [
            snap.version.clone(),
            acked(ResourceType::Cluster),
            acked(ResourceType::Endpoint),
        ]
    }

    /// Whether the client has ACKed every cluster of the snapshot and the endpoints of each.
    fn clusters_ready(&self, snap: &Snapshot) -> bool {
        let acked = |ty: ResourceType| self.types[ty.index()].acked_resources();
        let (Some(cds), Some(eds)) = (acked(ResourceType::Cluster), acked(ResourceType::Endpoint))
        else {
            // Nothing ACKed yet: ready only if the snapshot has no clusters at all.
            return snap.resources(ResourceType::Cluster).is_empty();
        };
        snap.resources(ResourceType::Cluster).values().all(|c| {
            cds.get(&c.name) == Some(c)
                && snap
                    .get(ResourceType::Endpoint, &c.name)
                    .is_none_or(|e| eds.get(&e.name) == Some(e))
        })
    }
}

/// The snapshot's resources of `ty` that `sub` asks for.
fn wanted<'a>(
    snap: &'a Snapshot,
    ty: ResourceType,
    sub: &'a Subscription,
) -> impl Iterator<Item = &'a Resource> + 'a {
    snap.resources(ty)
        .values()
        .filter(move |r| sub.wants(&r.name))
}

#[cfg(test)]
mod tests;
