//! The stream core: what both protocol machines keep of one stream, and do, alike.
//!
//! A state-of-the-world ([`super::sotw`]) and a delta ([`super::delta`]) stream differ in what
//! they send (a type's whole set under one version, or updates and removals per resource) and in
//! how they read a request. Everything else is here, once:
//! - per type, [`TypeState`]: the subscription, what the client holds (ACKed, or found held
//!   when it reconnected), what is in flight, what it rejected and Envoy's reason;
//! - per stream, [`Core`]: the node, the snapshot the stream converges to, the request
//!   prologue, nonces, which type greets a client that reconnected in sync, and the
//!   make-before-break questions of [`super::order`], answered from that state through
//!   [`order::Holdings`] (so both protocols are asked the same questions of the same state);
//! - the reports for [`super::clients`] ([`ClientView`], [`SyncState`]) and the interface the
//!   server's stream task drives, [`Machine`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;

use super::clients::{
    ClientView, Held, Nack, ResourceMap, SentSets, SyncState, TypeStatus, TypeView,
};
use super::codec::EncodeResponse;
use super::limits::{MAX_NACK_ERROR_BYTES, truncated};
use super::order::{self, Holdings};
use super::{Event, Mode, Output, ResourceType};
use crate::node::NodeInfo;
use crate::snapshot::{ByType, Resource, Snapshot};

/// What a client subscribes to of one type. How a request changes it is the protocol's: a
/// state-of-the-world request restates it, a delta request adds and removes names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every resource of the type (`*`, or the legacy wildcard of a first request naming
    /// nothing).
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// What a stream knows of one type, whatever its protocol.
#[derive(Debug, Clone, Default)]
pub struct TypeState {
    /// `None` until the client asks for this type: nothing is sent unasked.
    pub subscription: Option<Subscription>,
    /// Bumped whenever the subscription changes.
    pub generation: u64,
    /// What the client holds: what it ACKed on this stream, or was found to hold when it
    /// reconnected.
    pub acked: Option<Held>,
    /// What it holds once it applies the response in flight (one per type at a time).
    pub pending: Option<Held>,
    /// The version it said it held when it connected (a reconnect).
    pub reported: Option<String>,
    pub last_nack: Option<Nack>,
    /// The resources of the last rejected response, for status reports.
    pub rejected_resources: ResourceMap,
    /// The snapshot type version whose response for this client is the one it rejected:
    /// nothing is sent until what would be sent changes.
    pub blocked: Option<String>,
}

impl TypeState {
    /// Takes `sub` as the subscription; true when it changed (the generation with it).
    pub fn subscribe(&mut self, sub: Subscription) -> bool {
        if self.subscription.as_ref() == Some(&sub) {
            return false;
        }
        self.subscription = Some(sub);
        self.generation += 1;
        true
    }

    pub fn acked_resources(&self) -> Option<&BTreeMap<String, Resource>> {
        self.acked.as_ref().map(|a| &*a.resources)
    }

    /// The client ACKed the response in flight, which brought it to `held`.
    pub fn accept(&mut self, ty: ResourceType, held: Held, events: &mut Vec<Event>) {
        events.push(Event::Ack {
            ty,
            version: held.version.clone(),
        });
        self.acked = Some(held);
    }

    /// The client NACKed the response in flight (which would have brought it to `version`,
    /// sending `resources`) with Envoy's `error`.
    pub fn reject(
        &mut self,
        ty: ResourceType,
        version: String,
        resources: ResourceMap,
        error: &str,
        events: &mut Vec<Event>,
    ) {
        let nack = Nack {
            version,
            error: truncated(error, MAX_NACK_ERROR_BYTES),
        };
        events.push(Event::Nack {
            ty,
            version: nack.version.clone(),
            error: nack.error.clone(),
        });
        self.rejected_resources = resources;
        self.last_nack = Some(nack);
    }

    fn view(&self) -> TypeView {
        TypeView {
            acked: self.acked.clone(),
            pending: self.pending.clone(),
            reported: self.reported.clone(),
            rejected: self.rejected_resources.clone(),
            last_nack: self.last_nack.clone(),
        }
    }
}

/// The inputs that decide a type's next response, as a protocol remembers them once nothing
/// was left to send: while they stay the same, the (per config version, not per stream) work
/// of deciding again is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledOn {
    snapshot_type_version: String,
    generation: u64,
    kept: Vec<String>,
}

impl SettledOn {
    /// The inputs of `ty` now, `kept` being [`Core::kept`].
    pub(super) fn new(
        st: &TypeState,
        ty: ResourceType,
        snap: &Snapshot,
        kept: Vec<String>,
    ) -> SettledOn {
        SettledOn {
            snapshot_type_version: snap.type_version(ty).to_owned(),
            generation: st.generation,
            kept,
        }
    }

    /// Whether these are the inputs of `ty` now: compared in place, since most types of most
    /// steps are settled and making the key would copy a version each time.
    pub(super) fn is_now(
        &self,
        st: &TypeState,
        ty: ResourceType,
        snap: &Snapshot,
        kept: &[String],
    ) -> bool {
        self.generation == st.generation
            && self.snapshot_type_version == snap.type_version(ty)
            && self.kept == kept
    }

    /// Clusters kept for the client's routes (see [`order::kept_clusters`]).
    pub(super) fn kept(&self) -> &[String] {
        &self.kept
    }

    /// The snapshot's type version it was decided on.
    pub(super) fn into_type_version(self) -> String {
        self.snapshot_type_version
    }

    /// Whether it was decided on the current snapshot and subscription, keeping no cluster:
    /// then the client holds what it asked for, as it should.
    pub(super) fn is_final(&self, st: &TypeState, ty: ResourceType, snap: &Snapshot) -> bool {
        self.kept.is_empty()
            && self.generation == st.generation
            && self.snapshot_type_version == snap.type_version(ty)
    }
}

/// The protocol-neutral state of one stream, and what both protocols do with it.
#[derive(Debug)]
pub struct Core {
    pub(super) mode: Mode,
    node: Option<NodeInfo>,
    pub(super) snapshot: Option<Arc<Snapshot>>,
    pub(super) types: ByType<TypeState>,
    nonces: u64,
    /// The inputs of the last [`order::clusters_ready`] (snapshot version, then the ACKed and
    /// pending versions of clusters and endpoints), and its answer: it walks every cluster,
    /// and its inputs rarely change between two steps of one stream.
    ready: RefCell<Option<([Option<String>; 5], bool)>>,
}

impl Core {
    pub(super) fn new(mode: Mode) -> Core {
        Core {
            mode,
            node: None,
            snapshot: None,
            types: ByType::default(),
            nonces: 0,
            ready: RefCell::new(None),
        }
    }

    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// The config version this stream is converging to.
    pub fn snapshot_version(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|s| s.version.as_str())
    }

    /// The prologue of every request, in either protocol: keeps the node the first request
    /// names, and tells which type the request is about (`None`, with an event, for a type
    /// this stream does not serve).
    pub(super) fn request_type(
        &mut self,
        node: Option<&Node>,
        type_url: &str,
        events: &mut Vec<Event>,
    ) -> Option<ResourceType> {
        if self.node.is_none()
            && let Some(node) = node
        {
            self.node = Some(NodeInfo::from_node(node));
        }
        match (ResourceType::from_type_url(type_url), self.mode) {
            (Some(ty), Mode::Aggregated) => Some(ty),
            (Some(ty), Mode::Single(only)) if ty == only => Some(ty),
            // Per-type services may leave type_url empty: it is implied by the service.
            (None, Mode::Single(only)) if type_url.is_empty() => Some(only),
            _ => {
                events.push(Event::UnknownType {
                    type_url: type_url.to_owned(),
                });
                None
            }
        }
    }

    /// The nonce of the next response.
    pub(super) fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    /// Whether the stream sent nothing yet.
    pub(super) fn sent_nothing(&self) -> bool {
        self.nonces == 0
    }

    /// Which type greets a client that reconnected holding exactly what it should, after a
    /// request for `asked`: a per-type stream's own, else endpoints or routes (a few
    /// resources; clusters and listeners would be the whole set of a type).
    pub(super) fn greeting_type(&self, asked: ResourceType) -> ResourceType {
        match self.mode {
            Mode::Single(only) => only,
            Mode::Aggregated if !asked.is_full_state() => asked,
            Mode::Aggregated => [ResourceType::Route, ResourceType::Endpoint]
                .into_iter()
                .find(|&t| self.types[t].acked.is_some())
                .unwrap_or(asked),
        }
    }

    /// Clusters kept for routes the client may still use (see [`order::kept_clusters`]), for
    /// the types that keep them on an aggregated stream; none otherwise.
    pub(super) fn kept(&self, ty: ResourceType, snap: &Snapshot) -> Vec<String> {
        match (self.mode, ty) {
            (Mode::Aggregated, ResourceType::Cluster | ResourceType::Endpoint) => {
                order::kept_clusters(snap, self)
            }
            _ => Vec::new(),
        }
    }

    /// Whether `ty` must wait: listeners and routes on an aggregated stream while
    /// [`order::routing_may_be_sent`] says no.
    pub(super) fn held_back(&self, ty: ResourceType, snap: &Snapshot) -> bool {
        self.mode == Mode::Aggregated
            && matches!(ty, ResourceType::Listener | ResourceType::Route)
            && !order::routing_may_be_sent(snap, self)
    }

    /// Adds to `desired` the clusters (or their endpoints) kept for the client's routes, on an
    /// aggregated stream.
    pub(super) fn keep(
        &self,
        ty: ResourceType,
        desired: &mut BTreeMap<String, Resource>,
        kept: &[String],
    ) {
        if self.mode == Mode::Aggregated {
            order::keep(ty, desired, kept, self);
        }
    }

    /// The snapshot's resources of `ty` the client asks for.
    pub(super) fn wanted(&self, ty: ResourceType, snap: &Snapshot) -> BTreeMap<String, Resource> {
        order::wanted(snap, ty, self)
            .map(|r| (r.name.clone(), r.clone()))
            .collect()
    }

    /// Whether every type the stream carries is in sync with the current snapshot: a type the
    /// client has not asked for is when the snapshot has nothing of it, any other when the
    /// protocol's `holds` says so.
    pub(super) fn in_sync_where(
        &self,
        holds: impl Fn(ResourceType, &TypeState, &Snapshot) -> bool,
    ) -> bool {
        let Some(snap) = &self.snapshot else {
            return false;
        };
        self.mode.types().iter().all(|&ty| {
            let st = &self.types[ty];
            match st.subscription {
                None => snap.resources(ty).is_empty(),
                Some(_) => holds(ty, st, snap),
            }
        })
    }

    /// How far the client is with the current snapshot, given whether it is in sync: else
    /// waiting for something, or done answering it with a rejection (nothing in flight, some
    /// type held back by what it rejected).
    pub fn sync_state(&self, in_sync: bool) -> SyncState {
        if in_sync {
            return SyncState::InSync;
        }
        let Some(snap) = &self.snapshot else {
            return SyncState::Pending;
        };
        let types = self.mode.types();
        let nothing_pending = types.iter().all(|&ty| self.types[ty].pending.is_none());
        let rejected = types
            .iter()
            .any(|&ty| self.types[ty].blocked.as_deref() == Some(snap.type_version(ty)));
        if nothing_pending && rejected {
            SyncState::Rejected
        } else {
            SyncState::Pending
        }
    }

    /// What the client holds, pending and rejected, per type: cheap (shared maps), for
    /// [`super::clients`].
    pub fn view(&self) -> ClientView {
        ClientView {
            types: ByType::from_fn(|ty| self.types[ty].view()),
        }
    }

    pub fn status(&self, ty: ResourceType) -> TypeStatus {
        let mut view = ClientView::default();
        view.types[ty] = self.types[ty].view();
        view.status(ty)
    }

    /// Resource names subscribed to, all types together (a wildcard counts none).
    pub fn subscribed_names(&self) -> usize {
        self.types
            .values()
            .map(|t| t.subscription.as_ref().map_or(0, |s| s.names.len()))
            .sum()
    }

    /// The inputs [`order::clusters_ready`] reads besides the snapshot's content.
    fn ready_inputs<'a>(&'a self, snap: &'a Snapshot) -> [Option<&'a str>; 5] {
        let version = |held: &'a Option<Held>| held.as_ref().map(|h| h.version.as_str());
        let [cds, eds] = [ResourceType::Cluster, ResourceType::Endpoint].map(|ty| &self.types[ty]);
        [
            Some(snap.version.as_str()),
            version(&cds.acked),
            version(&eds.acked),
            version(&cds.pending),
            version(&eds.pending),
        ]
    }
}

impl Holdings for Core {
    fn subscribed(&self, ty: ResourceType) -> bool {
        self.types[ty].subscription.is_some()
    }

    fn wants(&self, ty: ResourceType, name: &str) -> bool {
        self.types[ty]
            .subscription
            .as_ref()
            .is_some_and(|s| s.wants(name))
    }

    fn acked(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>> {
        self.types[ty].acked_resources()
    }

    fn acked_version(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty].acked.as_ref().map(|h| h.version.as_str())
    }

    fn pending(&self, ty: ResourceType) -> Option<&BTreeMap<String, Resource>> {
        self.types[ty].pending.as_ref().map(|h| &*h.resources)
    }

    fn pending_version(&self, ty: ResourceType) -> Option<&str> {
        self.types[ty].pending.as_ref().map(|h| h.version.as_str())
    }

    fn reported(&self, ty: ResourceType) -> bool {
        self.types[ty].reported.is_some()
    }

    /// Whether it asks for listeners by name: gRPC's proxyless clients do (the `xds:///`
    /// target), and then ask only for the routes, clusters and endpoints that listener leads
    /// to; a blue-green service's idle colour, say, they never ask for. What they asked for is
    /// then all they hold. Envoy asks for every listener (wildcard).
    fn names_its_listeners(&self) -> bool {
        self.types[ResourceType::Listener]
            .subscription
            .as_ref()
            .is_some_and(|s| !s.wildcard)
    }

    /// [`order::clusters_ready`], remembered for the inputs it was last computed on.
    fn clusters_ready(&self, snap: &Snapshot) -> bool {
        let inputs = self.ready_inputs(snap);
        if let Some((last, ready)) = self.ready.borrow().as_ref()
            && last.iter().map(Option::as_deref).eq(inputs)
        {
            return *ready;
        }
        let ready = order::clusters_ready(snap, self);
        *self.ready.borrow_mut() = Some((inputs.map(|i| i.map(str::to_owned)), ready));
        ready
    }
}

/// A protocol machine as the server's stream task drives it: the same task serves both
/// protocols. What both do alike they take from their [`Core`].
pub trait Machine: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: EncodeResponse + Send + 'static;

    fn new(mode: Mode) -> Self;
    /// Shares what it sends with the other streams, to know what a reconnecting client holds
    /// (state of the world; a delta client names what it holds itself).
    #[must_use]
    fn remembering(self, _sent: Arc<SentSets>) -> Self
    where
        Self: Sized,
    {
        self
    }
    /// The node a request names (Envoy names it on the first request only).
    fn request_node(req: &Self::Request) -> Option<&Node>;
    /// The type a request is about.
    fn request_type(req: &Self::Request) -> &str;
    /// The names a request subscribes to (or says it holds).
    fn request_names(req: &Self::Request) -> impl Iterator<Item = &str>;
    fn on_request(&mut self, req: &Self::Request) -> Output<Self::Response>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output<Self::Response>;
    /// True when the client holds every resource of the current snapshot of every type the
    /// stream carries, nothing in flight and nothing kept for old routes (the protocol's own
    /// rule of what "holds" means).
    fn in_sync(&self) -> bool;
    /// What a response is, for the log and the metrics.
    fn describe(response: &Self::Response) -> Pushed<'_>;
    /// The protocol-neutral state.
    fn core(&self) -> &Core;

    fn node(&self) -> Option<&NodeInfo> {
        self.core().node()
    }
    fn snapshot_version(&self) -> Option<&str> {
        self.core().snapshot_version()
    }
    /// Names subscribed to, all types together.
    fn subscribed_names(&self) -> usize {
        self.core().subscribed_names()
    }
    fn sync_state(&self) -> SyncState {
        self.core().sync_state(self.in_sync())
    }
    fn view(&self) -> ClientView {
        self.core().view()
    }
    fn status(&self, ty: ResourceType) -> TypeStatus {
        self.core().status(ty)
    }
}

/// A response as logged: its type, the version it brings the client to, resources sent and
/// names removed.
#[derive(Debug)]
pub struct Pushed<'a> {
    pub ty: ResourceType,
    pub version: &'a str,
    pub resources: usize,
    pub removed: usize,
}
