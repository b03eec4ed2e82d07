//! The tonic edge of the xDS server: ADS and the per-type CDS/EDS/LDS/RDS services, each in
//! both protocols, state of the world (`Stream...`) and delta (`Delta...`).
//!
//! Each gRPC stream gets a task that feeds requests and its node group's new snapshots into its
//! own protocol machine ([`sotw::Stream`] or [`delta::Stream`], one task code for both through
//! [`super::stream::Machine`]), writes the responses it returns, and reports what its client holds to
//! [`Clients`]. The generated envoy-types servers are not used because their codec would
//! re-encode every resource per stream; [`XdsCodec`] copies the bytes encoded once per config
//! version instead.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Context, Poll, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use super::clients::{ClientUpdate, Clients, SentSets};
use super::codec::XdsCodec;
use super::limits::{
    ClientLimits, MAX_NAME_BYTES, MAX_NODE_FIELD_BYTES, Noise, NoiseLog, StreamSlot, StreamSlots,
};
use super::stream::Machine;
use super::{Event, Mode, Output, ResourceType, delta, sotw};
use crate::access::Access;
use crate::node::{GroupId, NodeInfo};
use crate::snapshot::{GroupSnapshot, Published};
use crate::tls::PeerInfo;

/// What every stream needs: the latest published config, where to report, who may connect,
/// and when to stop.
#[derive(Debug, Clone)]
pub struct Shared {
    pub published: watch::Receiver<Option<Arc<Published>>>,
    pub clients: Arc<Clients>,
    pub allowed: Arc<NodeAllowList>,
    /// Becomes `true` when cutover shuts down: every stream ends, telling its client to
    /// reconnect (Envoy keeps its config meanwhile).
    pub closing: watch::Receiver<bool>,
    pub limits: ClientLimits,
    /// Concurrent streams, shared with the telemetry services.
    pub slots: Arc<StreamSlots>,
    /// What clients make cutover log again and again, limited per node.
    pub noise: Arc<NoiseLog>,
    /// The file's access rules: with mutual TLS, which certificate may be which node.
    pub access: watch::Receiver<Arc<Access>>,
    /// What the streams sent, by type and version (see [`SentSets`]).
    pub sent: Arc<SentSets>,
}

/// Which node ids may get config over a plaintext connection (`--allow-node`); everyone when
/// empty. A refused node is logged once.
#[derive(Debug, Default)]
pub struct NodeAllowList {
    patterns: Vec<glob::Pattern>,
    logged: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl NodeAllowList {
    /// Patterns with `*` and `?` (shell globs), e.g. `edge-*`.
    pub fn new(patterns: &[String]) -> Result<NodeAllowList, String> {
        let patterns = patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p)
                    .map_err(|e| format!("invalid --allow-node pattern {p:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(NodeAllowList {
            patterns,
            logged: Default::default(),
        })
    }

    pub fn allows(&self, node_id: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(node_id))
    }

    /// Logs a refusal, once per node id (a refused Envoy retries forever).
    fn refused(&self, node_id: &str, peer: Option<SocketAddr>) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: past this many distinct ids, new ones are still refused, only not logged.
        if logged.len() < 10_000 && logged.insert(node_id.to_owned()) {
            tracing::warn!(
                node = node_id,
                ?peer,
                "refused an xDS stream: node id not in --allow-node"
            );
        }
    }
}

/// One of the discovery services: its gRPC name, stream methods and what it carries.
pub trait Kind: Send + Sync + 'static {
    const SERVICE: &'static str;
    /// The state-of-the-world stream.
    const STREAM_PATH: &'static str;
    /// The delta (incremental) stream.
    const DELTA_PATH: &'static str;
    const MODE: Mode;
}

macro_rules! kind {
    ($ty:ident, $service:literal, $method:literal, $delta:literal, $mode:expr) => {
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl Kind for $ty {
            const SERVICE: &'static str = $service;
            const STREAM_PATH: &'static str = concat!("/", $service, "/", $method);
            const DELTA_PATH: &'static str = concat!("/", $service, "/", $delta);
            const MODE: Mode = $mode;
        }
    };
}

kind!(
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    "StreamAggregatedResources",
    "DeltaAggregatedResources",
    Mode::Aggregated
);
kind!(
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    "StreamClusters",
    "DeltaClusters",
    Mode::Single(ResourceType::Cluster)
);
kind!(
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    "StreamEndpoints",
    "DeltaEndpoints",
    Mode::Single(ResourceType::Endpoint)
);
kind!(
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    "StreamListeners",
    "DeltaListeners",
    Mode::Single(ResourceType::Listener)
);
kind!(
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    "StreamRoutes",
    "DeltaRoutes",
    Mode::Single(ResourceType::Route)
);

/// A discovery service as a tower service that tonic's router can serve.
#[derive(Debug)]
pub struct DiscoveryService<K> {
    shared: Shared,
    kind: PhantomData<K>,
}

impl<K> Clone for DiscoveryService<K> {
    fn clone(&self) -> Self {
        DiscoveryService {
            shared: self.shared.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Kind> DiscoveryService<K> {
    pub fn new(shared: Shared) -> Self {
        DiscoveryService {
            shared,
            kind: PhantomData,
        }
    }
}

impl<K: Kind> NamedService for DiscoveryService<K> {
    const NAME: &'static str = K::SERVICE;
}

impl<K, B> tower_service::Service<http::Request<B>> for DiscoveryService<K>
where
    K: Kind,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path != K::STREAM_PATH && path != K::DELTA_PATH {
            // Fetch (unary) variants.
            return Box::pin(async {
                Ok(Status::unimplemented("cutover serves xDS streams only").into_http())
            });
        }
        // Taken before anything of the stream is read, held until its task ends.
        let slot = match self.shared.slots.try_open() {
            Ok(slot) => slot,
            Err(refused) => return Box::pin(async move { Ok(refused.into_http()) }),
        };
        if path == K::STREAM_PATH {
            serve::<sotw::Stream, B>(K::MODE, self.shared.clone(), slot, req)
        } else {
            serve::<delta::Stream, B>(K::MODE, self.shared.clone(), slot, req)
        }
    }
}

fn serve<M, B>(
    mode: Mode,
    shared: Shared,
    slot: StreamSlot,
    req: http::Request<B>,
) -> BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>
where
    M: Machine,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let max_message = shared.limits.max_message_bytes;
    let method = StreamMethod::<M> {
        mode,
        shared,
        slot: Some(slot),
        machine: PhantomData,
    };
    Box::pin(async move {
        Ok(Grpc::new(XdsCodec::<M::Request, M::Response>::default())
            .max_decoding_message_size(max_message)
            .streaming(method, req)
            .await)
    })
}

struct StreamMethod<M> {
    mode: Mode,
    shared: Shared,
    /// Handed to the stream's task (tonic calls the method once per request).
    slot: Option<StreamSlot>,
    machine: PhantomData<fn() -> M>,
}

impl<M: Machine> StreamingService<M::Request> for StreamMethod<M> {
    type Response = M::Response;
    type ResponseStream = ReceiverStream<Result<M::Response, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<M::Request>>) -> Self::Future {
        let shared = self.shared.clone();
        let peer = PeerInfo::of(&request);
        let inbound = request.into_inner();
        // A few responses of headroom: one config change is at most one per type, plus removals.
        let (tx, rx) = mpsc::channel(8);
        let slot = self.slot.take();
        let mode = self.mode;
        tokio::spawn(async move {
            let _slot = slot;
            run_stream::<M>(mode, shared, inbound, tx, peer).await;
        });
        Box::pin(async move { Ok(tonic::Response::new(ReceiverStream::new(rx))) })
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one select loop: the client's requests, shutdown, access rules and published config, each arm short"
)]
async fn run_stream<M: Machine>(
    mode: Mode,
    shared: Shared,
    mut inbound: Streaming<M::Request>,
    tx: mpsc::Sender<Result<M::Response, Status>>,
    peer_info: PeerInfo,
) {
    let peer = peer_info.addr;
    let clients = shared.clients.clone();
    let id = clients.connect(mode, peer);
    let mut published = shared.published;
    let mut closing = shared.closing;
    let mut access = shared.access;
    let mut machine = M::new(mode).remembering(shared.sent.clone());
    // Resolved from the first request's node; until then nothing is sent anyway.
    let mut group: Option<GroupId> = None;
    // Who the client said it is on its first request: its group is matched again on every
    // change, since an edit of the file's groups can move it to another.
    let mut identity = NodeInfo::default();
    let mut current: Option<GroupSnapshot> = None;
    let mut node_told = false;
    let aged = sleep_for(shared.limits.stream_age());
    tokio::pin!(aged);
    loop {
        let out = tokio::select! {
            req = inbound.message() => match req {
                Ok(Some(req)) => {
                    let mut out = Output::default();
                    if let Err(refused) = check_names::<M>(&req) {
                        refuse(&shared.noise, &machine, peer, &refused);
                        let _ = tx.send(Err(refused)).await;
                        break;
                    }
                    if group.is_none() {
                        let node = M::request_node(&req);
                        if let Err(refused) = check_node(node) {
                            refuse(&shared.noise, &machine, peer, &refused);
                            let _ = tx.send(Err(refused)).await;
                            break;
                        }
                        // The id, the cluster and a bounded part of the metadata (for the
                        // file's groups) are kept; nothing else of the node.
                        let node = node.map(NodeInfo::from_node).unwrap_or_default();
                        if !shared.allowed.allows(&node.id) {
                            shared.allowed.refused(&node.id, peer);
                            let _ = tx.send(Err(Status::permission_denied(format!(
                                "node id {:?} may not get config from this cutover (see its --allow-node)",
                                node.id
                            )))).await;
                            break;
                        }
                        let p = published.borrow_and_update().clone();
                        let g = p.as_ref().map_or_else(GroupId::all, |p| p.group_of(&node));
                        let rules = access.borrow_and_update().clone();
                        if let Err(refused) = check_access(&rules, &peer_info, &node.id, &g) {
                            refuse_node(&shared.noise, &node.id, peer, &refused);
                            let _ = tx.send(Err(refused)).await;
                            break;
                        }
                        if let Some(s) = p.as_ref().and_then(|p| p.group(&g)) {
                            current = Some(s.clone());
                            out = machine.on_snapshot(s.snapshot.clone());
                        }
                        group = Some(g);
                        identity = node;
                    }
                    if M::request_type(&req) == ResourceType::Secret.type_url()
                        && !peer_info.may_receive_secrets()
                    {
                        // Not answered: the Envoy keeps serving its previous listener while
                        // the new one waits for its certificate, and shows as not in sync.
                        withhold_secrets(&shared.noise, &identity.id, peer);
                        out
                    } else {
                    let more = machine.on_request(&req);
                    let subscribed = machine.subscribed_names();
                    if subscribed > shared.limits.max_names {
                        let refused = Status::resource_exhausted(format!(
                            "this stream subscribes to {subscribed} resource names, over cutover's limit of {} on one stream; \
                             raise it with `cutover serve --max-names N` (CUTOVER_MAX_NAMES)",
                            shared.limits.max_names
                        ));
                        refuse(&shared.noise, &machine, peer, &refused);
                        let _ = tx.send(Err(refused)).await;
                        break;
                    }
                    out.responses.extend(more.responses);
                    out.events.extend(more.events);
                    out
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(node = %node_id(&machine), %status, "xDS stream ended");
                    // A request that could not be read ends the stream with the reason, not
                    // with OK (a client that went away does not read it).
                    let _ = tx.send(Err(inbound_error(status))).await;
                    break;
                }
            },
            // The only change is to closing; a dropped sender (the server is gone) too.
            _ = closing.changed() => {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "cutover is shutting down; connect again (to it or another replica)",
                    )))
                    .await;
                break;
            }
            // Its connection had GOAWAY: the next stream opens a new connection, perhaps to
            // another replica (balance after one came back).
            () = &mut aged => {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "this stream reached its age limit (cutover serve --max-stream-age): connect again",
                    )))
                    .await;
                break;
            }
            // New access rules: a stream its certificate no longer allows ends (revocation).
            Ok(()) = access.changed() => {
                let Some(g) = &group else { continue };
                let rules = access.borrow_and_update().clone();
                if let Err(refused) = check_access(&rules, &peer_info, &identity.id, g) {
                    refuse_node(&shared.noise, &identity.id, peer, &refused);
                    let _ = tx.send(Err(refused)).await;
                    break;
                }
                continue;
            }
            changed = published.changed() => {
                if changed.is_err() {
                    break;
                }
                if group.is_none() {
                    continue;
                }
                let Some(p) = published.borrow_and_update().clone() else { continue };
                let g = p.group_of(&identity);
                if group.as_ref() != Some(&g) {
                    // Its certificate may not allow the new group: the Envoy keeps what it has.
                    let rules = access.borrow().clone();
                    if let Err(refused) = check_access(&rules, &peer_info, &identity.id, &g) {
                        refuse_node(&shared.noise, &identity.id, peer, &refused);
                        let _ = tx.send(Err(refused)).await;
                        break;
                    }
                    tracing::info!(node = %identity.id, group = %g, "the file's groups moved this Envoy to another group");
                    group = Some(g.clone());
                }
                let next = p.group(&g).cloned();
                match next {
                    // Another group's change, or nothing new for this one: no push.
                    Some(s) if current.as_ref().is_none_or(|c| !Arc::ptr_eq(&c.snapshot, &s.snapshot)) => {
                        let out = machine.on_snapshot(s.snapshot.clone());
                        current = Some(s);
                        out
                    }
                    _ => continue,
                }
            }
        };
        for event in &out.events {
            log_event(&shared.noise, &machine, event);
        }
        // The node, once: a machine keeps the first one it is told.
        let node = machine.node().filter(|_| !node_told);
        node_told |= node.is_some();
        clients.update(
            id,
            ClientUpdate {
                node,
                group: group.as_ref(),
                config_version: machine.snapshot_version(),
                changed_at: current.as_ref().map(|c| c.changed_at),
                sync: machine.sync_state(),
                view: machine.view(),
                events: &out.events,
            },
        );
        for response in out.responses {
            let pushed = M::describe(&response);
            // One line per response (not per request): what each Envoy was sent, and when.
            tracing::info!(
                node = %node_id(&machine),
                r#type = %pushed.ty,
                version = %pushed.version,
                resources = pushed.resources,
                removed = pushed.removed,
                "push"
            );
            clients.pushed(pushed.ty);
            if tx.send(Ok(response)).await.is_err() {
                clients.disconnect(id);
                return;
            }
        }
    }
    clients.disconnect(id);
}

/// What the client is told when its request could not be read. Over the message size limit
/// (tonic's `OUT_OF_RANGE`, "decoded message length too large") is `RESOURCE_EXHAUSTED`, as
/// gRPC itself reports a message larger than the receiver accepts.
fn inbound_error(status: Status) -> Status {
    match status.code() {
        tonic::Code::OutOfRange => Status::resource_exhausted(format!(
            "request refused: {}; raise the limit with `cutover serve --max-message-mib N` \
             (CUTOVER_MAX_MESSAGE_MIB) if the client is an Envoy with that much to ask for",
            status.message()
        )),
        _ => status,
    }
}

fn node_id(machine: &impl Machine) -> &str {
    machine.node().map(|n| n.id.as_str()).unwrap_or("?")
}

/// Refuses a request naming a resource longer than any cutover serves: a subscription then
/// holds at most `--max-names` short names.
fn check_names<M: Machine>(req: &M::Request) -> Result<(), Status> {
    match M::request_names(req).find(|n| n.len() > MAX_NAME_BYTES) {
        None => Ok(()),
        Some(long) => Err(Status::invalid_argument(format!(
            "a resource name of {} bytes (starting {:?}): cutover's resource names are at most {MAX_NAME_BYTES} bytes",
            long.len(),
            long.chars().take(32).collect::<String>()
        ))),
    }
}

/// Refuses a node id or cluster longer than any Envoy's: they are kept and shown for as long
/// as the stream is open.
fn check_node(node: Option<&Node>) -> Result<(), Status> {
    let Some(node) = node else { return Ok(()) };
    for (field, value) in [("id", &node.id), ("cluster", &node.cluster)] {
        if value.len() > MAX_NODE_FIELD_BYTES {
            return Err(Status::invalid_argument(format!(
                "node {field} of {} bytes: cutover accepts node ids and clusters of at most {MAX_NODE_FIELD_BYTES} bytes",
                value.len()
            )));
        }
    }
    Ok(())
}

/// With mutual TLS, whether the client's certificate may be `node` in group `group`.
fn check_access(
    access: &Access,
    peer: &PeerInfo,
    node: &str,
    group: &GroupId,
) -> Result<(), Status> {
    let Some(who) = &peer.identity else {
        return Ok(());
    };
    access
        .check(who, node, Some(group.as_str()))
        .map_err(|refusal| Status::permission_denied(refusal.to_string()))
}

/// Logs (rate limited) that a client asked for certificates over a connection that would
/// expose their keys.
fn withhold_secrets(noise: &NoiseLog, node: &str, peer: Option<SocketAddr>) {
    if let Some(suppressed) = noise.check(Noise::Secrets, node, std::time::Instant::now()) {
        tracing::error!(
            node,
            ?peer,
            suppressed,
            "not sending TLS certificates and keys (SDS) over a plaintext xDS connection from \
             another machine, where anyone on the way could read the keys: serve xDS over TLS \
             (`cutover serve --tls-cert FILE --tls-key FILE`, and `cutover bootstrap --tls-ca \
             FILE` for the Envoy), or connect over loopback; the listener waits for its \
             certificate meanwhile"
        );
    }
}

/// Logs a stream refused before its machine knows the node.
fn refuse_node(noise: &NoiseLog, node: &str, peer: Option<SocketAddr>, refused: &Status) {
    if let Some(suppressed) = noise.check(Noise::Refused, node, std::time::Instant::now()) {
        tracing::warn!(
            node,
            ?peer,
            code = ?refused.code(),
            reason = refused.message(),
            refused_before_unlogged = suppressed,
            "refused an xDS stream"
        );
    }
}

/// Logs a refused stream, at most once a minute per node (a refused client retries).
fn refuse(noise: &NoiseLog, machine: &impl Machine, peer: Option<SocketAddr>, refused: &Status) {
    let node = node_id(machine);
    if let Some(suppressed) = noise.check(Noise::Refused, node, std::time::Instant::now()) {
        tracing::warn!(
            node,
            ?peer,
            code = ?refused.code(),
            reason = refused.message(),
            refused_before_unlogged = suppressed,
            "refused an xDS stream"
        );
    }
}

/// Logs what a protocol machine saw. What a client can repeat at will (NACKs, requests for types
/// cutover does not serve) is logged at most once a minute per node, with how many were left
/// out; status and metrics still count every one.
fn log_event(noise: &NoiseLog, machine: &impl Machine, event: &Event) {
    let node = node_id(machine);
    let now = std::time::Instant::now();
    match event {
        Event::Ack { ty, version } => {
            tracing::debug!(node, r#type = %ty, version, "ACK");
        }
        Event::Nack { ty, version, error } => {
            if let Some(suppressed) = noise.check(Noise::Nack, node, now) {
                tracing::warn!(
                    node,
                    r#type = %ty,
                    version,
                    error,
                    nacks_before_unlogged = suppressed,
                    "Envoy rejected a config (NACK); it will not be sent again"
                );
            }
        }
        Event::UnknownType { type_url } => {
            if let Some(suppressed) = noise.check(Noise::UnknownType, node, now) {
                tracing::warn!(
                    node,
                    type_url = %super::limits::truncated(type_url, 256),
                    requests_before_unlogged = suppressed,
                    "request for a resource type cutover does not serve (ignored)"
                );
            }
        }
    }
}

/// Sleeps for `duration`; forever without one.
async fn sleep_for(duration: Option<std::time::Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
