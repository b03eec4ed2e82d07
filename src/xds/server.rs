//! The tonic edge of the xDS server: ADS and the per-type CDS/EDS/LDS/RDS services.
//!
//! Each gRPC stream gets a task that feeds requests and its node group's new snapshots into its
//! own [`sotw::Stream`], writes the responses it returns, and reports what its client holds to
//! [`Clients`]. The generated envoy-types servers are not
//! used because their codec would re-encode every resource per stream; [`XdsCodec`] copies the
//! bytes encoded once per config version instead. Delta xDS is answered with `UNIMPLEMENTED`, so
//! Envoy must use `api_type: GRPC` (what `cutover bootstrap` writes).

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Context, Poll, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use super::ResourceType;
use super::clients::{ClientUpdate, Clients};
use super::codec::XdsCodec;
use super::sotw::{self, Event, Mode, Response, Stream};
use crate::node::GroupId;
use crate::snapshot::{GroupSnapshot, Published};

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

/// One of the discovery services: its gRPC name, stream method and what it carries.
pub trait Kind: Send + Sync + 'static {
    const SERVICE: &'static str;
    const STREAM_PATH: &'static str;
    const MODE: Mode;
}

macro_rules! kind {
    ($ty:ident, $service:literal, $method:literal, $mode:expr) => {
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl Kind for $ty {
            const SERVICE: &'static str = $service;
            const STREAM_PATH: &'static str = concat!("/", $service, "/", $method);
            const MODE: Mode = $mode;
        }
    };
}

kind!(
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    "StreamAggregatedResources",
    Mode::Aggregated
);
kind!(
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    "StreamClusters",
    Mode::Single(ResourceType::Cluster)
);
kind!(
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    "StreamEndpoints",
    Mode::Single(ResourceType::Endpoint)
);
kind!(
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    "StreamListeners",
    Mode::Single(ResourceType::Listener)
);
kind!(
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    "StreamRoutes",
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
        if req.uri().path() != K::STREAM_PATH {
            // Delta and Fetch variants.
            return Box::pin(async {
                Ok(
                    Status::unimplemented("cutover serves state-of-the-world xDS streams only")
                        .into_http(),
                )
            });
        }
        let method = StreamMethod::<K> {
            shared: self.shared.clone(),
            kind: PhantomData,
        };
        Box::pin(async move { Ok(Grpc::new(XdsCodec).streaming(method, req).await) })
    }
}

struct StreamMethod<K> {
    shared: Shared,
    kind: PhantomData<K>,
}

impl<K: Kind> StreamingService<DiscoveryRequest> for StreamMethod<K> {
    type Response = Response;
    type ResponseStream = ReceiverStream<Result<Response, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let shared = self.shared.clone();
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        // A few responses of headroom: one config change is at most one per type, plus removals.
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run_stream(K::MODE, shared, inbound, tx, peer));
        Box::pin(async move { Ok(tonic::Response::new(ReceiverStream::new(rx))) })
    }
}

async fn run_stream(
    mode: Mode,
    shared: Shared,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<Response, Status>>,
    peer: Option<SocketAddr>,
) {
    let clients = shared.clients.clone();
    let id = clients.connect(mode, peer);
    let mut published = shared.published;
    let mut closing = shared.closing;
    let mut machine = Stream::new(mode);
    // Resolved from the first request's node; until then nothing is sent anyway.
    let mut group: Option<GroupId> = None;
    let mut current: Option<GroupSnapshot> = None;
    loop {
        let out = tokio::select! {
            req = inbound.message() => match req {
                Ok(Some(req)) => {
                    let mut out = sotw::Output::default();
                    if group.is_none() {
                        let node = req.node.as_ref().map(|n| crate::node::NodeInfo {
                            id: n.id.clone(),
                            cluster: n.cluster.clone(),
                        }).unwrap_or_default();
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
                        if let Some(s) = p.as_ref().and_then(|p| p.group(&g)) {
                            current = Some(s.clone());
                            out = machine.on_snapshot(s.snapshot.clone());
                        }
                        group = Some(g);
                    }
                    let more = machine.on_request(&req);
                    out.responses.extend(more.responses);
                    out.events.extend(more.events);
                    out
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
            changed = published.changed() => {
                if changed.is_err() {
                    break;
                }
                let Some(g) = &group else { continue };
                let next = published.borrow_and_update().as_ref().and_then(|p| p.group(g).cloned());
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
            log_event(&machine, event);
        }
        clients.update(
            id,
            ClientUpdate {
                node: machine.node(),
                group: group.as_ref(),
                config_version: machine.snapshot_version(),
                changed_at: current.as_ref().map(|c| c.changed_at),
                sync: machine.sync_state(),
                view: machine.view(),
                events: &out.events,
            },
        );
        for response in out.responses {
            // One line per response (not per request): what each Envoy was sent, and when.
            tracing::info!(
                node = %node_id(&machine),
                r#type = %response.ty,
                version = %response.version,
                resources = response.resources.len(),
                "push"
            );
            clients.pushed(response.ty);
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
            "request refused: {}; split the subscription into smaller requests",
            status.message()
        )),
        _ => status,
    }
}

fn node_id(machine: &Stream) -> &str {
    machine.node().map(|n| n.id.as_str()).unwrap_or("?")
}

fn log_event(machine: &Stream, event: &Event) {
    let node = node_id(machine);
    match event {
        Event::Ack { ty, version } => {
            tracing::debug!(node, r#type = %ty, version, "ACK");
        }
        Event::Nack { ty, version, error } => {
            tracing::warn!(node, r#type = %ty, version, error, "Envoy rejected a config (NACK); it will not be sent again");
        }
        Event::UnknownType { type_url } => {
            tracing::warn!(
                node,
                type_url,
                "request for a resource type cutover does not serve"
            );
        }
    }
}
