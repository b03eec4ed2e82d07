//! One fake xDS client for both protocols and both transports.
//!
//! [`FakeEnvoy`] is what a client holds and how it answers, as Envoy does it: a wildcard for
//! clusters and listeners, the endpoints of its EDS clusters and the route configurations its
//! listeners name, listeners asked for once its clusters are initialised, an ACK for every
//! response (or a NACK for a type it is told to reject). After every response it checks what
//! would break a real Envoy or trip its checks: a route to a cluster it does not hold with its
//! endpoints (make-before-break), a name twice in one response, a removal of a name it never
//! held nor asked for. It is pure: it takes [`Response`]s, however they came, and returns the
//! [`Request`]s to send, in its protocol.
//!
//! Two transports carry them: [`in_process`] feeds them to the protocol machines
//! (`xds::sotw::Stream`, `xds::delta::Stream`) directly, one message at a time, no sockets and no
//! clock; [`Client`] sends them on a gRPC stream (plaintext or TLS, ADS or one type's service)
//! to a server. A test that scripts its own requests builds them with [`sotw_request`],
//! [`delta_request`] and their ACK and NACK siblings and sends them on either.

mod grpc;
pub mod in_process;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

pub use self::grpc::{Client, Raw, channel};
use super::Protocol;
use crate::snapshot::{Resource, ResourceData, Snapshot};
use crate::xds::{ResourceType, sotw};

pub const CDS: ResourceType = ResourceType::Cluster;
pub const EDS: ResourceType = ResourceType::Endpoint;
pub const LDS: ResourceType = ResourceType::Listener;
pub const RDS: ResourceType = ResourceType::Route;

/// The type whose subscription follows what a response of `ty` brings: the endpoints of the
/// clusters, the route configurations of the listeners.
pub fn dependent(ty: ResourceType) -> Option<ResourceType> {
    match ty {
        CDS => Some(EDS),
        LDS => Some(RDS),
        _ => None,
    }
}

/// What Envoy puts in `error_detail.code` when it rejects a config (INTERNAL).
const NACK_CODE: i32 = 13;

// ---------------------------------------------------------------------------------------------
// Nodes

/// A node called `id` in cluster `tests`.
pub fn node(id: &str) -> Node {
    node_in(id, "tests", &[])
}

/// A node called `id` in `cluster`, with string `metadata` (what node groups match on).
pub fn node_in(id: &str, cluster: &str, metadata: &[(&str, &str)]) -> Node {
    let fields = metadata
        .iter()
        .map(|(k, v)| {
            let v = Value {
                kind: Some(value::Kind::StringValue((*v).to_owned())),
            };
            ((*k).to_owned(), v)
        })
        .collect();
    Node {
        id: id.to_owned(),
        cluster: cluster.to_owned(),
        metadata: (!metadata.is_empty()).then_some(Struct { fields }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A request of either protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

/// Each protocol's request is a [`Request`].
macro_rules! request_from {
    ($($request:ty => $variant:ident),*) => {$(
        impl From<$request> for Request {
            fn from(r: $request) -> Request {
                Request::$variant(r)
            }
        }
    )*};
}

request_from!(DiscoveryRequest => Sotw, DeltaDiscoveryRequest => Delta);

impl Request {
    pub fn protocol(&self) -> Protocol {
        match self {
            Request::Sotw(_) => Protocol::Sotw,
            Request::Delta(_) => Protocol::Delta,
        }
    }

    pub fn type_url(&self) -> &str {
        match self {
            Request::Sotw(r) => &r.type_url,
            Request::Delta(r) => &r.type_url,
        }
    }

    /// The state-of-the-world request; panics on a delta one.
    pub fn into_sotw(self) -> DiscoveryRequest {
        match self {
            Request::Sotw(r) => r,
            Request::Delta(r) => {
                panic!("a delta request where state of the world is spoken: {r:?}")
            }
        }
    }

    /// The delta request; panics on a state-of-the-world one.
    pub fn into_delta(self) -> DeltaDiscoveryRequest {
        match self {
            Request::Delta(r) => r,
            Request::Sotw(r) => panic!("a state-of-the-world request where delta is spoken: {r:?}"),
        }
    }

    /// The delta request, to change before it is sent; panics on a state-of-the-world one.
    pub fn delta_mut(&mut self) -> &mut DeltaDiscoveryRequest {
        match self {
            Request::Delta(r) => r,
            Request::Sotw(r) => panic!("a state-of-the-world request where delta is spoken: {r:?}"),
        }
    }

    fn node_mut(&mut self) -> &mut Option<Node> {
        match self {
            Request::Sotw(r) => &mut r.node,
            Request::Delta(r) => &mut r.node,
        }
    }
}

/// A state-of-the-world request for `names` of `ty`, answering the response of `nonce` at
/// `version` (both empty on a first request). No node: a client names itself on its stream's
/// first request (see [`FakeEnvoy`] and [`Client`]), or a test sets one.
pub fn sotw_request(
    ty: ResourceType,
    version: &str,
    nonce: &str,
    names: &[&str],
) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().to_owned(),
        version_info: version.to_owned(),
        response_nonce: nonce.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// The ACK of `r`, still asking for `names`.
pub fn sotw_ack(r: &Response, names: &[&str]) -> DiscoveryRequest {
    sotw_request(r.ty, &r.version, &r.nonce, names)
}

/// A NACK of the response of `nonce`: the client stays at `version` and says why.
pub fn sotw_nack(
    ty: ResourceType,
    version: &str,
    nonce: &str,
    names: &[&str],
    error: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(nack_status(error)),
        ..sotw_request(ty, version, nonce, names)
    }
}

/// A delta request subscribing to `subscribe` and unsubscribing from `unsubscribe` of `ty`.
pub fn delta_request(
    ty: ResourceType,
    subscribe: &[&str],
    unsubscribe: &[&str],
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// The delta ACK of the response of `nonce`.
pub fn delta_ack(ty: ResourceType, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: nonce.to_owned(),
        ..delta_request(ty, &[], &[])
    }
}

/// The delta NACK of the response of `nonce`, saying why.
pub fn delta_nack(ty: ResourceType, nonce: &str, error: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(nack_status(error)),
        ..delta_ack(ty, nonce)
    }
}

/// `req` naming `node` (as a stream's first request does).
pub fn with_node<R: Into<Request>>(req: R, node: Node) -> Request {
    let mut req = req.into();
    *req.node_mut() = Some(node);
    req
}

fn nack_status(error: &str) -> Status {
    Status {
        code: NACK_CODE,
        message: error.to_owned(),
        details: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A response of either protocol, however it came, in the delta machine's shape: what it
/// brings and what it removes by name (a state-of-the-world response removes nothing by name:
/// what it leaves out of a full-state type is gone). `version` is the version of the whole type
/// (state of the world's `version_info`, delta's `system_version_info`).
pub use crate::xds::delta::Response;

impl Response {
    /// The names of the resources, in order.
    pub fn names(&self) -> Vec<&str> {
        self.resources.iter().map(|r| r.name.as_str()).collect()
    }

    /// Each resource as its message.
    pub fn decode<M: Message + Default>(&self) -> Vec<M> {
        self.resources.iter().map(decode).collect()
    }

    /// The one cluster the first route of its first route configuration sends traffic to;
    /// panics if that route sends it elsewhere (a weighted split, a redirect).
    pub fn route_cluster(&self) -> String {
        let rc: RouteConfiguration = decode(self.resources.first().expect("a route configuration"));
        match &rc.virtual_hosts[0].routes[0].action {
            Some(route::Action::Route(a)) => match &a.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                other => panic!("unexpected cluster specifier {other:?}"),
            },
            other => panic!("unexpected action {other:?}"),
        }
    }

    /// The clusters the route configurations in it send traffic to.
    pub fn route_targets(&self) -> BTreeSet<String> {
        assert_eq!(self.ty, RDS, "route targets of a {} response", self.ty);
        self.resources.iter().flat_map(route_targets).collect()
    }
}

impl From<&sotw::Response> for Response {
    fn from(r: &sotw::Response) -> Response {
        Response {
            ty: r.ty,
            version: r.version.clone(),
            nonce: r.nonce.clone(),
            resources: r.resources.to_vec(),
            removed: Vec::new(),
        }
    }
}

impl From<&Response> for Response {
    fn from(r: &Response) -> Response {
        r.clone()
    }
}

/// As the wire brings it: each resource's name read from its message, its version the hash
/// cutover gives it.
impl From<DiscoveryResponse> for Response {
    fn from(r: DiscoveryResponse) -> Response {
        let ty = type_of(&r.type_url);
        let resources = r
            .resources
            .into_iter()
            .map(|any| {
                let name = name_of(ty, &any.value);
                Resource::new(name, Bytes::from(any.encode_to_vec()))
            })
            .collect();
        Response {
            ty,
            version: r.version_info,
            nonce: r.nonce,
            resources,
            removed: Vec::new(),
        }
    }
}

/// As the wire brings it: each resource with the name and version it came with.
impl From<DeltaDiscoveryResponse> for Response {
    fn from(r: DeltaDiscoveryResponse) -> Response {
        let resources = r
            .resources
            .into_iter()
            .map(|x| {
                Resource::from(ResourceData {
                    encoded: Bytes::from(x.resource.unwrap_or_default().encode_to_vec()),
                    name: x.name,
                    version: x.version,
                    names_clusters: false,
                })
            })
            .collect();
        Response {
            ty: type_of(&r.type_url),
            version: r.system_version_info,
            nonce: r.nonce,
            resources,
            removed: r.removed_resources,
        }
    }
}

fn type_of(url: &str) -> ResourceType {
    ResourceType::from_type_url(url)
        .unwrap_or_else(|| panic!("a response of a type cutover does not serve: {url}"))
}

/// The name of a resource of `ty` encoded in `bytes`.
fn name_of(ty: ResourceType, bytes: &[u8]) -> String {
    fn decoded<M: Message + Default>(ty: ResourceType, bytes: &[u8]) -> M {
        M::decode(bytes).unwrap_or_else(|e| panic!("a {ty} resource that does not decode: {e}"))
    }
    match ty {
        CDS => decoded::<Cluster>(ty, bytes).name,
        EDS => decoded::<ClusterLoadAssignment>(ty, bytes).cluster_name,
        LDS => decoded::<Listener>(ty, bytes).name,
        RDS => decoded::<RouteConfiguration>(ty, bytes).name,
        ResourceType::Secret => {
            decoded::<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>(
                ty, bytes,
            )
            .name
        }
    }
}

/// A resource as its message.
pub fn decode<M: Message + Default>(resource: &Resource) -> M {
    let any = Any::decode(resource.encoded.as_ref())
        .unwrap_or_else(|e| panic!("{} is not an Any: {e}", resource.name));
    M::decode(any.value.as_slice())
        .unwrap_or_else(|e| panic!("{} does not decode as {}: {e}", resource.name, any.type_url))
}

/// The clusters a route configuration sends traffic to.
pub fn route_targets(resource: &Resource) -> BTreeSet<String> {
    let rc: RouteConfiguration = decode(resource);
    let mut out = BTreeSet::new();
    for vh in rc.virtual_hosts {
        for r in vh.routes {
            if let Some(route::Action::Route(a)) = r.action {
                match a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => {
                        out.insert(c);
                    }
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.into_iter().map(|c| c.name));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// The name a cluster's endpoints come under by EDS, if they do (a DNS or aggregate cluster's
/// do not).
fn eds_name(resource: &Resource) -> Option<String> {
    let cluster: Cluster = decode(resource);
    let eds = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
    (cluster.cluster_discovery_type == eds).then(|| {
        cluster
            .eds_cluster_config
            .map(|c| c.service_name)
            .filter(|n| !n.is_empty())
            .unwrap_or(cluster.name)
    })
}

/// The route configurations a listener takes over RDS.
fn rds_names(resource: &Resource) -> Vec<String> {
    let listener: Listener = decode(resource);
    let from_api = listener
        .api_listener
        .and_then(|api| api.api_listener)
        .into_iter();
    let from_chains = listener
        .filter_chains
        .into_iter()
        .flat_map(|chain| chain.filters)
        .filter_map(|f| match f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        });
    from_api
        .chain(from_chains)
        .filter_map(|any| HttpConnectionManager::decode(any.value.as_slice()).ok())
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fake client

/// A fake Envoy: what it holds and how it answers (see the module doc). Pure; a transport
/// carries its requests and brings it the responses.
#[derive(Debug, Clone)]
pub struct FakeEnvoy {
    protocol: Protocol,
    node: Node,
    /// Whether the current stream's first request went out (it carries the node).
    named: bool,
    /// What it holds, by type and name.
    pub held: BTreeMap<ResourceType, BTreeMap<String, Resource>>,
    /// The version of each type it last accepted: what a state-of-the-world client sends back.
    pub versions: BTreeMap<ResourceType, String>,
    /// The nonce of the last response of each type: a state-of-the-world client sends it on
    /// every later request of that type, subscription changes included.
    pub nonces: BTreeMap<ResourceType, String>,
    /// Endpoints and routes subscribed to, by name (clusters and listeners are wildcards); a
    /// type is here once it was first asked for.
    subscribed: BTreeMap<ResourceType, BTreeSet<String>>,
    /// The EDS name of each cluster it holds whose endpoints come by EDS.
    eds: BTreeMap<String, String>,
    /// Everything it held or asked for: what `removed_resources` may name (a removal can cross
    /// an unsubscription on the wire).
    ever_held: BTreeSet<(ResourceType, String)>,
    asked_listeners: bool,
    /// Every response type in the order received.
    pub log: Vec<ResourceType>,
    /// Resources received, in total (the bytes a change costs).
    pub received: usize,
    /// If set, responses of this type are NACKed with "rejected by test".
    pub reject: Option<ResourceType>,
}

impl FakeEnvoy {
    /// A fake Envoy called `edge-1` speaking `protocol`.
    pub fn new(protocol: Protocol) -> FakeEnvoy {
        FakeEnvoy::named(protocol, node("edge-1"))
    }

    /// A fake Envoy that names itself `node` speaking `protocol`.
    pub fn named(protocol: Protocol, node: Node) -> FakeEnvoy {
        FakeEnvoy {
            protocol,
            node,
            named: false,
            held: BTreeMap::new(),
            versions: BTreeMap::new(),
            nonces: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            eds: BTreeMap::new(),
            ever_held: BTreeSet::new(),
            asked_listeners: false,
            log: Vec::new(),
            received: 0,
            reject: None,
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The first request of a stream: every cluster.
    pub fn start(&mut self) -> Vec<Request> {
        self.named = false;
        self.nonces.clear();
        let first = self.request(CDS, "", "", Vec::new(), Vec::new());
        vec![self.stamp(first)]
    }

    /// The first requests of a new stream (a reconnect), as Envoy sends them: every type it
    /// asked for, in the order it first did, with what it holds (state of the world: the
    /// version of each type; delta: each resource's version in `initial_resource_versions`) and,
    /// for endpoints and routes, the names it is subscribed to.
    pub fn reconnect(&mut self) -> Vec<Request> {
        self.named = false;
        // Nonces are the old stream's: the new one has not sent any.
        self.nonces.clear();
        let mut out = Vec::new();
        for ty in ResourceType::ALL {
            let asked = match ty {
                CDS => self.held.contains_key(&CDS),
                LDS => self.asked_listeners,
                _ => self.subscribed.contains_key(&ty),
            };
            if !asked {
                continue;
            }
            let names = self.subscription(ty);
            let req = match self.protocol {
                Protocol::Sotw => {
                    let version = self.versions.get(&ty).cloned().unwrap_or_default();
                    self.request(ty, &version, "", names, Vec::new())
                }
                Protocol::Delta => {
                    let mut req = delta_request(ty, &[], &[]);
                    req.resource_names_subscribe = names;
                    req.initial_resource_versions = self
                        .held
                        .get(&ty)
                        .into_iter()
                        .flat_map(BTreeMap::values)
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect();
                    Request::Delta(req)
                }
            };
            out.push(self.stamp(req));
        }
        out
    }

    /// Takes a response (checking it, see the module doc) and answers it: subscription
    /// changes it leads to first, as Envoy sends them, then its ACK (or NACK), then a first
    /// request for listeners once the clusters are initialised.
    pub fn receive(&mut self, r: impl Into<Response>) -> Vec<Request> {
        let r = r.into();
        self.log.push(r.ty);
        self.received += r.resources.len();
        self.nonces.insert(r.ty, r.nonce.clone());
        let mut seen = BTreeSet::new();
        for name in r.resources.iter().map(|r| &r.name).chain(&r.removed) {
            assert!(seen.insert(name), "{name} twice in one response: {r:?}");
        }
        for name in &r.removed {
            assert!(
                self.ever_held.contains(&(r.ty, name.clone())),
                "removed_resources names {name}, which this client never held nor asked for"
            );
        }
        if self.reject == Some(r.ty) {
            let nack: Request = match self.protocol {
                Protocol::Sotw => {
                    let held = self.versions.get(&r.ty).cloned().unwrap_or_default();
                    let names = self.subscription(r.ty);
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    sotw_nack(r.ty, &held, &r.nonce, &names, "rejected by test").into()
                }
                Protocol::Delta => delta_nack(r.ty, &r.nonce, "rejected by test").into(),
            };
            return vec![self.stamp(nack)];
        }
        self.apply(&r);
        self.assert_routes_have_clusters();
        let mut out = Vec::new();
        // Like Envoy: subscription changes for dependent types go out before the ACK.
        if let Some(req) = dependent(r.ty).and_then(|dep| self.follow(dep)) {
            out.push(req);
        }
        let ack = match self.protocol {
            Protocol::Sotw => {
                let names = self.subscription(r.ty);
                self.request(r.ty, &r.version, &r.nonce, names, Vec::new())
            }
            Protocol::Delta => delta_ack(r.ty, &r.nonce).into(),
        };
        out.push(ack);
        if !self.asked_listeners && self.initialised() {
            self.asked_listeners = true;
            out.push(self.request(LDS, "", "", Vec::new(), Vec::new()));
        }
        out.into_iter().map(|req| self.stamp(req)).collect()
    }

    /// Its node on the stream's first request, if that request names none.
    pub fn stamp(&mut self, req: impl Into<Request>) -> Request {
        let mut req = req.into();
        if !self.named {
            self.named = true;
            let node = req.node_mut();
            if node.is_none() {
                *node = Some(self.node.clone());
            }
        }
        req
    }

    fn apply(&mut self, r: &Response) {
        let set = self.held.entry(r.ty).or_default();
        match self.protocol {
            Protocol::Sotw => {
                if r.ty.is_full_state() {
                    set.clear();
                }
                for res in &r.resources {
                    set.insert(res.name.clone(), res.clone());
                }
            }
            Protocol::Delta => {
                for name in &r.removed {
                    set.remove(name);
                }
                let subscribed = self.subscribed.get(&r.ty);
                for res in &r.resources {
                    // Like Envoy, a resource it did not ask for is not kept.
                    if r.ty.is_full_state() || subscribed.is_some_and(|s| s.contains(&res.name)) {
                        set.insert(res.name.clone(), res.clone());
                    }
                }
            }
        }
        for name in set.keys() {
            self.ever_held.insert((r.ty, name.clone()));
        }
        self.versions.insert(r.ty, r.version.clone());
        if r.ty == CDS {
            self.eds = set
                .values()
                .filter_map(|c| Some((c.name.clone(), eds_name(c)?)))
                .collect();
        }
    }

    /// What `dep` (endpoints or routes) must be subscribed to after its parent type changed:
    /// the EDS names of the clusters it holds, the route configurations of its listeners.
    fn wanted(&self, dep: ResourceType) -> BTreeSet<String> {
        match dep {
            EDS => self.eds.values().cloned().collect(),
            RDS => self
                .held
                .get(&LDS)
                .into_iter()
                .flat_map(BTreeMap::values)
                .flat_map(rds_names)
                .collect(),
            _ => unreachable!("{dep} depends on no other type"),
        }
    }

    /// The request that makes `dep`'s subscription follow what its parent type holds, if one
    /// is due: in state of the world every time once there is something to ask for (the whole
    /// list is the subscription), in delta only for a change.
    fn follow(&mut self, dep: ResourceType) -> Option<Request> {
        let want = self.wanted(dep);
        let had = self.subscribed.get(&dep);
        let req = match self.protocol {
            Protocol::Sotw => {
                if want.is_empty() && had.is_none() {
                    return None;
                }
                let version = self.versions.get(&dep).cloned().unwrap_or_default();
                let nonce = self.nonces.get(&dep).cloned().unwrap_or_default();
                self.request(
                    dep,
                    &version,
                    &nonce,
                    want.iter().cloned().collect(),
                    Vec::new(),
                )
            }
            Protocol::Delta => {
                let empty = BTreeSet::new();
                let have = had.unwrap_or(&empty);
                let add: Vec<String> = want.difference(have).cloned().collect();
                let remove: Vec<String> = have.difference(&want).cloned().collect();
                if add.is_empty() && remove.is_empty() {
                    return None;
                }
                self.ever_held.extend(add.iter().map(|n| (dep, n.clone())));
                self.request(dep, "", "", add, remove)
            }
        };
        if let Some(held) = self.held.get_mut(&dep) {
            held.retain(|name, _| want.contains(name));
        }
        self.subscribed.insert(dep, want);
        Some(req)
    }

    /// A request of its protocol: state of the world takes `version`, `nonce` and `names`;
    /// delta `names` to subscribe to and `unsubscribe`.
    fn request(
        &self,
        ty: ResourceType,
        version: &str,
        nonce: &str,
        names: Vec<String>,
        unsubscribe: Vec<String>,
    ) -> Request {
        match self.protocol {
            Protocol::Sotw => Request::Sotw(DiscoveryRequest {
                resource_names: names,
                ..sotw_request(ty, version, nonce, &[])
            }),
            Protocol::Delta => Request::Delta(DeltaDiscoveryRequest {
                resource_names_subscribe: names,
                resource_names_unsubscribe: unsubscribe,
                response_nonce: nonce.to_owned(),
                ..delta_request(ty, &[], &[])
            }),
        }
    }

    /// The names it asks for of `ty`: none for clusters and listeners (the legacy wildcard).
    fn subscription(&self, ty: ResourceType) -> Vec<String> {
        self.subscribed
            .get(&ty)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every cluster it holds has what it needs: its endpoints, for an EDS cluster. (Envoy
    /// initialises LDS once its cluster manager is initialised.)
    fn initialised(&self) -> bool {
        let endpoints = self.held.get(&EDS);
        self.held.contains_key(&CDS)
            && self
                .eds
                .values()
                .all(|name| endpoints.is_some_and(|e| e.contains_key(name)))
    }

    fn assert_routes_have_clusters(&self) {
        let empty = BTreeMap::new();
        let clusters = self.held.get(&CDS).unwrap_or(&empty);
        let endpoints = self.held.get(&EDS).unwrap_or(&empty);
        for rc in self.held.get(&RDS).unwrap_or(&empty).values() {
            for target in route_targets(rc) {
                let ready = clusters.contains_key(&target)
                    && self
                        .eds
                        .get(&target)
                        .is_none_or(|eds| endpoints.contains_key(eds));
                assert!(
                    ready,
                    "route {} targets {target}, which Envoy does not hold with its endpoints ({:?}, after {:?})",
                    rc.name, self.protocol, self.log
                );
            }
        }
    }

    /// The names it holds of `ty`, sorted.
    pub fn names(&self, ty: ResourceType) -> Vec<&str> {
        self.held
            .get(&ty)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The clusters it holds, sorted.
    pub fn clusters(&self) -> Vec<String> {
        self.names(CDS).into_iter().map(str::to_owned).collect()
    }

    /// The clusters its routes send traffic to.
    pub fn route_targets(&self) -> BTreeSet<String> {
        self.held
            .get(&RDS)
            .into_iter()
            .flat_map(BTreeMap::values)
            .flat_map(route_targets)
            .collect()
    }

    /// Whether it holds exactly the snapshot's resources, at their versions.
    pub fn holds_exactly(&self, snapshot: &Snapshot) -> bool {
        ResourceType::ALL.iter().all(|&ty| {
            let held = self.held.get(&ty).cloned().unwrap_or_default();
            held == *snapshot.resources(ty)
        })
    }
}
