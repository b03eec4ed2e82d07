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

use crate::ids::ClusterId;
use std::collections::BTreeMap;

use crate::node::GroupId;
use crate::reconcile::{Discovery, GroupPlan, Plan};
use crate::spec::ListenerKind;

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
            match version.discovery {
                Discovery::Eds => {
                    out.clusters
                        .push(cluster::eds_cluster(&id, &version.policy, &plan.pem_files));
                    out.endpoints.push(cluster::load_assignment(
                        &id,
                        &version.endpoints,
                        service.proxyless,
                    ));
                }
                // No EDS resource: the endpoints are in the cluster.
                // Validation keeps names out of services proxyless clients use.
                Discovery::Dns => out.clusters.push(cluster::dns_cluster(
                    &id,
                    &version.policy,
                    &version.endpoints,
                    &plan.pem_files,
                )),
            }
        }
        for fallback in service.fallbacks.keys() {
            out.clusters
                .push(cluster::fallback(fallback, service.proxyless));
        }
    }
    // Each kind of listener in its own module: what it sends, and (in its resources' content)
    // what it depends on.
    for l in plan.listeners.iter().filter(|l| listener(&l.name)) {
        match l.kind {
            ListenerKind::Envoy(address) => http::resources(l, address, plan, &mut out),
            ListenerKind::Proxyless => proxyless::resources(l, plan, &mut out),
            ListenerKind::Tcp(address) => tcp::resources(l, address, plan, &mut out),
        }
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    out.routes.sort_by(|a, b| a.name.cmp(&b.name));
    out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    out
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
