//! One Envoy cluster per service version, with the service's load balancing, outlier detection
//! and health checks: an EDS cluster with its load assignment sent apart (endpoints over ADS), or
//! a DNS cluster whose load assignment is inline; and the aggregate clusters that fall back from
//! one version to another.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, OutlierDetection,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, CustomClusterType, DiscoveryType, DnsLookupFamily,
        EdsClusterConfig, LbConfig, LbPolicy, LeastRequestLbConfig, RoundRobinLbConfig,
        SlowStartConfig,
    },
    load_balancing_policy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthCheck, HealthStatus, Locality, SocketAddress, TypedExtensionConfig, address,
    health_check::{GrpcHealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck},
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::cluster_provided::v3::ClusterProvided;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::r#type::v3::Percent as EnvoyPercent;
use envoy_types::pb::google::protobuf::UInt32Value;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http2ProtocolOptions, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context::ValidationContextType, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::ExplicitHttpConfig,
    http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::CodecClientType;
use envoy_types::pb::google::protobuf::Any;

use super::{ads_config_source, any, duration};
use crate::ids::{ClusterId, FallbackId};
use crate::reconcile::{EndpointPlan, Health};
use crate::spec::{self, EndpointAddress, LoadBalancing, Policy, Protocol, UpstreamTls};

/// A cluster whose endpoints come over EDS, as [`load_assignment`] builds them.
pub(super) fn eds_cluster(
    id: &ClusterId,
    policy: &Policy,
    files: &BTreeMap<String, Arc<str>>,
) -> Cluster {
    Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..cluster(id, policy, files)
    }
}

/// A cluster whose endpoints Envoy resolves with DNS, carried inline: `STRICT_DNS`, so that
/// every address a name resolves to is an endpoint of its own (balanced, health checked, ejected
/// and drained apart; a name with several replicas behind it gets them all). `LOGICAL_DNS`
/// would connect to one address of one name, which suits a large external service behind
/// rotating DNS, not a version's replicas. Envoy re-resolves every 5 s (its default).
pub(super) fn dns_cluster(
    id: &ClusterId,
    policy: &Policy,
    endpoints: &[EndpointPlan],
    files: &BTreeMap<String, Arc<str>>,
) -> Cluster {
    Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        // IPv4 first, IPv6 if a name has no IPv4 address: Envoy's default (AUTO) tries IPv6
        // first, and `localhost` or a container name then resolves to an address nothing
        // listens on.
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        load_assignment: Some(load_assignment(id, endpoints, false)),
        ..cluster(id, policy, files)
    }
}

/// How Envoy speaks to the endpoints: HTTP/2 for `http2` and `grpc` (one map entry, so its
/// encoding is deterministic), HTTP/1.1 by default.
fn protocol_options(protocol: Protocol) -> HashMap<String, Any> {
    if protocol == Protocol::Http1 {
        return HashMap::new();
    }
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(&options),
    )])
}

/// TLS to the endpoints: SNI, and the CA inline (a new CA re-creates the cluster, which Envoy
/// warms before it replaces the old one: a CA over SDS would let routes reach a cluster still
/// waiting for it).
fn upstream_tls(tls: &UpstreamTls, files: &BTreeMap<String, Arc<str>>) -> TransportSocket {
    let validation = tls.ca.as_ref().map(|ca| {
        ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(
                    files
                        .get(&ca.path)
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                )),
                ..Default::default()
            }),
            match_typed_subject_alt_names: tls
                .sni
                .iter()
                .map(|name| SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Dns as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(name.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    });
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: validation,
            ..Default::default()
        }),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

/// What every version's cluster has, whatever its discovery.
fn cluster(id: &ClusterId, policy: &Policy, files: &BTreeMap<String, Arc<str>>) -> Cluster {
    let slow_start_config = policy.slow_start.map(|window| SlowStartConfig {
        slow_start_window: Some(duration(window)),
        ..Default::default()
    });
    let (lb_policy, lb_config) = match &policy.load_balancing {
        LoadBalancing::RoundRobin => (
            LbPolicy::RoundRobin,
            slow_start_config.map(|s| {
                LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                    slow_start_config: Some(s),
                })
            }),
        ),
        LoadBalancing::LeastRequest => (
            LbPolicy::LeastRequest,
            slow_start_config.map(|s| {
                LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                })
            }),
        ),
        LoadBalancing::Random => (LbPolicy::Random, None),
        LoadBalancing::RingHash(_) => (LbPolicy::RingHash, None),
        LoadBalancing::Maglev(_) => (LbPolicy::Maglev, None),
    };
    Cluster {
        name: id.to_string(),
        connect_timeout: Some(duration(policy.connect_timeout)),
        lb_policy: lb_policy as i32,
        lb_config,
        common_lb_config: Some(CommonLbConfig {
            // Envoy's default of 50% would, once most endpoints drain or fail, spread traffic
            // over all of them again, draining ones included.
            healthy_panic_threshold: Some(EnvoyPercent {
                value: policy.panic_threshold.as_f64(),
            }),
            // Apply drain and health changes as soon as they are ACKed, not up to 1 s later.
            update_merge_window: Some(duration(std::time::Duration::ZERO)),
            ignore_new_hosts_until_first_hc: policy
                .health_check
                .as_ref()
                .is_some_and(|h| h.wait_for_first_check),
            ..Default::default()
        }),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        health_checks: policy
            .health_check
            .iter()
            .map(|h| health_check(h, policy.protocol))
            .collect(),
        typed_extension_protocol_options: protocol_options(policy.protocol),
        transport_socket: policy.tls.as_ref().map(|t| upstream_tls(t, files)),
        ..Default::default()
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn outlier_detection(o: &spec::OutlierDetection) -> OutlierDetection {
    let mut out = OutlierDetection {
        consecutive_5xx: u32v(o.consecutive_5xx),
        interval: Some(duration(o.interval)),
        base_ejection_time: Some(duration(o.base_ejection_time)),
        max_ejection_percent: u32v(o.max_ejection_percent),
        // Only what the file turns on is enforced; Envoy enforces success rate by default.
        enforcing_success_rate: u32v(0),
        ..Default::default()
    };
    if let Some(n) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = u32v(n);
        out.enforcing_consecutive_gateway_failure = u32v(100);
    }
    if let Some(s) = &o.success_rate {
        out.enforcing_success_rate = u32v(100);
        out.success_rate_minimum_hosts = u32v(s.minimum_hosts);
        out.success_rate_request_volume = u32v(s.request_volume);
        out.success_rate_stdev_factor = u32v(s.stdev_factor_milli);
    }
    if let Some(f) = &o.failure_percentage {
        out.enforcing_failure_percentage = u32v(100);
        out.failure_percentage_threshold = u32v(f.threshold);
        out.failure_percentage_minimum_hosts = u32v(f.minimum_hosts);
        out.failure_percentage_request_volume = u32v(f.request_volume);
    }
    out
}

fn health_check(h: &spec::HealthCheck, protocol: Protocol) -> HealthCheck {
    let health_checker = match &h.path {
        Some(path) => HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: path.clone(),
            // As the service speaks.
            codec_client_type: match protocol {
                Protocol::Http1 => CodecClientType::Http1,
                Protocol::Http2 | Protocol::Grpc => CodecClientType::Http2,
            } as i32,
            ..Default::default()
        }),
        None if h.grpc => HealthChecker::GrpcHealthCheck(GrpcHealthCheck::default()),
        None => HealthChecker::TcpHealthCheck(TcpHealthCheck::default()),
    };
    HealthCheck {
        timeout: Some(duration(h.timeout)),
        interval: Some(duration(h.interval)),
        unhealthy_threshold: u32v(h.unhealthy_threshold),
        healthy_threshold: u32v(h.healthy_threshold),
        // Check idle clusters (a warm blue-green colour) as often as busy ones.
        no_traffic_interval: Some(duration(h.interval)),
        health_checker: Some(health_checker),
        ..Default::default()
    }
}

/// A cluster that sends to `primary` while it has healthy endpoints and to `fallback` when it
/// has none (Envoy's aggregate cluster picks the first with healthy hosts; so does gRPC's,
/// gRFC A37).
///
/// gRPC clients refuse an aggregate cluster whose `lb_policy` is `CLUSTER_PROVIDED`, the only
/// one Envoy takes for it; for a service they use, the policy is given as a list instead
/// (`load_balancing_policy`), of which each takes the first it implements: Envoy the
/// cluster-provided policy, gRPC round robin (gRFC A52), which for an aggregate cluster it
/// leaves to the underlying clusters.
pub(super) fn fallback(id: &FallbackId, proxyless: bool) -> Cluster {
    let config = envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig {
        clusters: vec![id.primary().to_string(), id.secondary().to_string()],
    };
    Cluster {
        name: id.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
            name: "envoy.clusters.aggregate".to_owned(),
            typed_config: Some(super::any(&config)),
        })),
        connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
        lb_policy: if proxyless {
            LbPolicy::RoundRobin
        } else {
            LbPolicy::ClusterProvided
        } as i32,
        load_balancing_policy: proxyless.then(|| LoadBalancingPolicy {
            policies: vec![
                lb_policy(
                    "envoy.load_balancing_policies.cluster_provided",
                    &ClusterProvided {},
                ),
                lb_policy(
                    "envoy.load_balancing_policies.round_robin",
                    &RoundRobin::default(),
                ),
            ],
        }),
        ..Default::default()
    }
}

fn lb_policy<M: prost::Name>(name: &str, config: &M) -> load_balancing_policy::Policy {
    load_balancing_policy::Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(super::any(config)),
        }),
    }
}

/// With `proxyless`, the endpoints are in a locality (an empty one) with a weight: gRPC clients
/// refuse endpoints without a locality and ignore a locality without a weight; Envoy ignores
/// the weight unless asked for locality-weighted balancing.
pub(super) fn load_assignment(
    id: &ClusterId,
    endpoints: &[EndpointPlan],
    proxyless: bool,
) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(endpoint_address(&e.address)),
                ..Default::default()
            })),
            // A DNS cluster applies it to every address the name resolves to.
            health_status: match e.health {
                Health::Active => HealthStatus::Unknown,
                Health::Draining | Health::Removed { .. } => HealthStatus::Draining,
            } as i32,
            load_balancing_weight: e.weight.and_then(u32v),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: id.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            locality: proxyless.then(Locality::default),
            load_balancing_weight: if proxyless { u32v(1) } else { None },
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An endpoint's address as Envoy takes it: an IP, or a name its DNS cluster resolves.
pub fn endpoint_address(addr: &EndpointAddress) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.host(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

pub fn socket_address(addr: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}
