//! A complete Envoy bootstrap that points Envoy at cutover: node identity, ADS over gRPC to
//! cutover (HTTP/2 with keepalives so a dead control plane is noticed), listeners and clusters
//! from ADS, and the admin interface on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap,
    bootstrap::{DynamicResources, StaticResources},
};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType},
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

use crate::translate::{ads_config_source, any, duration, socket_address};

/// The name of the static cluster through which Envoy reaches cutover.
pub const XDS_CLUSTER: &str = "cutover_xds";

#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub node_cluster: String,
    /// cutover's ADS address as Envoy reaches it.
    pub ads: SocketAddr,
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
    let xds_cluster = Cluster {
        name: XDS_CLUSTER.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
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
                        address: Some(socket_address(o.ads)),
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
