//! A complete Envoy bootstrap that points Envoy at cutover: node identity, ADS over gRPC to
//! cutover (HTTP/2 with keepalives so a dead control plane is noticed), listeners and clusters
//! from ADS, and the admin interface on loopback. cutover's address may be a name (a compose
//! service, a Kubernetes Service): Envoy then resolves it, and again every 5 s, so a cutover
//! that comes back on another IP address is found.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap,
    bootstrap::{DynamicResources, StaticResources},
};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily},
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, GrpcService, Http2ProtocolOptions, KeepaliveSettings, Node,
    api_config_source::ApiType, grpc_service::EnvoyGrpc, grpc_service::TargetSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config},
};

use crate::spec::EndpointAddress;
use crate::translate::{ads_config_source, any, duration, endpoint_address, socket_address};

/// The name of the static cluster through which Envoy reaches cutover.
pub const XDS_CLUSTER: &str = "cutover_xds";

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub node_cluster: String,
    /// cutover's ADS address as Envoy reaches it: an IP address, or a name Envoy resolves.
    pub ads: EndpointAddress,
    /// Where Envoy's own admin interface listens.
    pub admin: SocketAddr,
}

pub fn bootstrap(o: &BootstrapOptions) -> Bootstrap {
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions {
                        // Notice a control plane that vanished without closing the connection.
                        connection_keepalive: Some(KeepaliveSettings {
                            interval: Some(duration(Duration::from_secs(30))),
                            timeout: Some(duration(Duration::from_secs(5))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
            },
        )),
        ..Default::default()
    };
    // A name is resolved as a version's names are (STRICT_DNS, IPv4 first; see
    // `translate::cluster::dns_cluster`): with several addresses, Envoy may reconnect to any.
    let (discovery, dns_lookup_family) = if o.ads.is_name() {
        (DiscoveryType::StrictDns, DnsLookupFamily::V4Preferred)
    } else {
        (DiscoveryType::Static, DnsLookupFamily::Auto)
    };
    let xds_cluster = Cluster {
        name: XDS_CLUSTER.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: dns_lookup_family as i32,
        connect_timeout: Some(duration(Duration::from_secs(1))),
        // One entry only: map fields with more would encode in HashMap order.
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&http2),
        )]
        .into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: XDS_CLUSTER.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(endpoint_address(&o.ads)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    Bootstrap {
        node: Some(Node {
            id: o.node_id.clone(),
            cluster: o.node_cluster.clone(),
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: XDS_CLUSTER.to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                set_node_on_first_message_only: true,
                ..Default::default()
            }),
            cds_config: Some(ads_config_source()),
            lds_config: Some(ads_config_source()),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            clusters: vec![xds_cluster],
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket_address(o.admin)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xds_cluster(ads: &str) -> Cluster {
        let b = bootstrap(&BootstrapOptions {
            node_id: "edge-1".into(),
            node_cluster: "edge".into(),
            ads: ads.parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
        });
        let mut clusters = b.static_resources.unwrap().clusters;
        assert_eq!(clusters.len(), 1);
        clusters.remove(0)
    }

    fn ads_address(c: &Cluster) -> (String, u32) {
        let lb = &c.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
        let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
            panic!("no endpoint: {lb:?}")
        };
        let Some(address::Address::SocketAddress(sa)) =
            e.address.as_ref().and_then(|a| a.address.clone())
        else {
            panic!("no socket address: {e:?}")
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
            panic!("no port: {sa:?}")
        };
        (sa.address, port)
    }

    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};

    #[test]
    fn an_ip_address_is_a_static_cluster() {
        let c = xds_cluster("127.0.0.1:18000");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        assert_eq!(c.dns_lookup_family, DnsLookupFamily::Auto as i32);
        assert_eq!(ads_address(&c), ("127.0.0.1".into(), 18000));
    }

    #[test]
    fn a_name_is_resolved_by_envoy() {
        let c = xds_cluster("Cutover.demo:18000");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        assert_eq!(c.dns_lookup_family, DnsLookupFamily::V4Preferred as i32);
        assert_eq!(ads_address(&c), ("cutover.demo".into(), 18000));
    }
}
