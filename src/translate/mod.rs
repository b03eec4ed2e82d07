//! Pure, deterministic translation of a [`Plan`] into Envoy resources: the only code that knows
//! Envoy's message shapes.
//!
//! Given the same plan this always returns the same messages in the same order, so the encoded
//! bytes and their content-hash versions are identical on every machine and after every restart.
//! It does no I/O and decides nothing: which clusters exist, which endpoints drain and where
//! routes send requests are in the plan ([`crate::reconcile`]). See [`crate::snapshot`] for
//! encoding and versions.
//!
//! Avoid protobuf `map` fields with more than one entry here: prost encodes them from a
//! `HashMap`, whose order (and so the bytes and versions) would change from run to run.

mod cluster;
mod http;
mod proxyless;
mod routes;
mod tcp;
mod tls;

pub use cluster::{endpoint_address, socket_address};
pub use http::RouteInputs;
pub use routes::{header_condition, query_condition};
pub use tcp::names_clusters;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::{Any, Duration};

use crate::ids::{ClusterId, FallbackId};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::node::GroupId;
use crate::reconcile::{
    Discovery, EndpointPlan, GroupPlan, ListenerPlan, Plan, ServicePlan, VersionPlan,
};
use crate::spec::{ListenerKind, Policy};

/// The resource sets Envoy receives, each sorted by resource name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub secrets: Vec<Secret>,
}

/// Translates a plan into Envoy resources: every listener and service, whatever group gets
/// them. Pure and deterministic.
pub fn translate(plan: &Plan) -> Resources {
    translate_some(plan, |_| true, |_| true)
}

/// The resources of one node group: its listeners, their route configurations, and the
/// clusters of its services. Pure and deterministic.
pub fn translate_group(plan: &Plan, group: &GroupPlan) -> Resources {
    translate_some(
        plan,
        |listener| {
            group
                .listeners
                .binary_search_by(|l| l.as_str().cmp(listener))
                .is_ok()
        },
        |service| group.services.contains(service),
    )
}

/// Every group's resources (see [`Plan::groups`]).
pub fn translate_groups(plan: &Plan) -> BTreeMap<GroupId, Resources> {
    plan.groups
        .iter()
        .map(|(id, g)| (id.clone(), translate_group(plan, g)))
        .collect()
}

fn translate_some(
    plan: &Plan,
    listener: impl Fn(&str) -> bool,
    service: impl Fn(&str) -> bool,
) -> Resources {
    let mut out = Resources::default();
    for (service_name, service) in plan.services.iter().filter(|(s, _)| service(s)) {
        for (version_name, version) in &service.versions {
            let id = ClusterId::new(service_name, version_name);
            let (cluster, endpoints) =
                version_resources(&id, VersionInputs::of(service, version), &plan.pem_files);
            out.clusters.push(cluster);
            out.endpoints.extend(endpoints);
        }
        for fallback in service.fallbacks.keys() {
            out.clusters
                .push(fallback_cluster(fallback, service.proxyless));
        }
    }
    for l in plan.listeners.iter().filter(|l| listener(&l.name)) {
        listener_resources(l, plan, &mut out);
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    out.routes.sort_by(|a, b| a.name.cmp(&b.name));
    out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Everything a version's resources are made of besides its name and the plan's PEM files:
/// [`version_resources`] reads nothing else, so equal inputs give equal resources (what lets
/// [`crate::snapshot::Builder`] keep a version's encoded resources from one save to the next).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VersionInputs<'a> {
    pub policy: &'a Policy,
    pub discovery: Discovery,
    pub endpoints: &'a [EndpointPlan],
    /// gRPC's own xDS clients read the load assignment too.
    pub proxyless: bool,
}

impl<'a> VersionInputs<'a> {
    pub fn of(service: &'a ServicePlan, version: &'a VersionPlan) -> VersionInputs<'a> {
        VersionInputs {
            policy: &version.policy,
            discovery: version.discovery,
            endpoints: &version.endpoints,
            proxyless: service.proxyless,
        }
    }
}

/// A version's cluster and, when Envoy learns its endpoints over EDS, its load assignment (a
/// DNS cluster carries its endpoints inline).
pub fn version_resources(
    id: &ClusterId,
    version: VersionInputs<'_>,
    pem_files: &BTreeMap<String, Arc<str>>,
) -> (Cluster, Option<ClusterLoadAssignment>) {
    match version.discovery {
        Discovery::Eds => (
            cluster::eds_cluster(id, version.policy, pem_files),
            Some(cluster::load_assignment(
                id,
                version.endpoints,
                version.proxyless,
            )),
        ),
        // Validation keeps names out of services proxyless clients use.
        Discovery::Dns => (
            cluster::dns_cluster(id, version.policy, version.endpoints, pem_files),
            None,
        ),
    }
}

/// The aggregate cluster of `fallback`.
pub fn fallback_cluster(fallback: &FallbackId, proxyless: bool) -> Cluster {
    cluster::fallback(fallback, proxyless)
}

/// A listener's resources: itself, and what it sends (its routes, its certificates).
pub fn listener_resources(l: &ListenerPlan, plan: &Plan, out: &mut Resources) {
    listener_and_certificates(l, plan, out);
    out.routes.extend(route_configuration(l, plan));
}

/// A listener and the certificates it serves: its resources but its routes.
pub fn listener_and_certificates(l: &ListenerPlan, plan: &Plan, out: &mut Resources) {
    // Each kind of listener in its own module: what it sends, and (in its resources' content)
    // what it depends on.
    match l.kind {
        ListenerKind::Envoy(address) => http::resources(l, address, plan, out),
        ListenerKind::Proxyless => proxyless::resources(l, out),
        ListenerKind::Tcp(address) => tcp::resources(l, address, plan, out),
    }
}

/// The route configuration a listener sends over RDS (a TCP listener names its clusters
/// itself and sends none).
pub fn route_configuration(l: &ListenerPlan, plan: &Plan) -> Option<RouteConfiguration> {
    Some(http::route_configuration(l, plan, default_domains(l)?))
}

/// [`route_configuration`]'s name and encoding, with the Envoy routes under each listener route
/// as `encoded_routes` gives them: for the listener route at `position` of list `list` (see
/// [`listed_routes`]), what [`encoded_listener_routes`] gives for its inputs.
pub fn route_configuration_encoded(
    l: &ListenerPlan,
    plan: &Plan,
    encoded_routes: impl FnMut(usize, usize, RouteInputs<'_>) -> bytes::Bytes,
) -> Option<(String, Vec<u8>)> {
    let encoded = http::route_configuration_encoded(l, plan, default_domains(l)?, encoded_routes);
    Some((http::route_config_name(&l.name), encoded))
}

/// The listener routes of `l`'s list `list`: 0 its own routes, k + 1 its k-th host's.
pub fn listed_routes(l: &ListenerPlan, list: usize) -> Option<&[crate::spec::Route]> {
    http::listed_routes(l, list)
}

/// The Envoy routes under one listener route, encoded as a virtual host holds them.
pub fn encoded_listener_routes(inputs: RouteInputs<'_>) -> bytes::Bytes {
    http::encode_listener_routes(&http::listener_routes(inputs))
}

/// The domains of the virtual host of a listener's own routes, if it has routes.
fn default_domains(l: &ListenerPlan) -> Option<Vec<String>> {
    match l.kind {
        ListenerKind::Envoy(_) => Some(vec!["*".to_owned()]),
        // gRPC matches the domains against the target's authority: the listener's name.
        ListenerKind::Proxyless => Some(vec![l.name.clone()]),
        ListenerKind::Tcp(_) => None,
    }
}

/// Resources that refer to other resources get them over the same ADS stream.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn any<M: prost::Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// A protobuf `Duration`; one longer than `i64::MAX` seconds (no file can say one) saturates.
pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9, so it always fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(i32::MAX),
    }
}

#[cfg(test)]
mod tests;
