//! A complete Envoy bootstrap that points Envoy at cutover: node identity, ADS over gRPC to
//! cutover (state of the world, or delta with `--delta`; HTTP/2 with keepalives so a dead
//! control plane is noticed), listeners and clusters
//! from ADS, the admin interface on loopback, and, unless turned off, Envoy's own reports of
//! what it sees to cutover over the same connection: the stats sink (every second, filtered to
//! the stats cutover reads) and the Load Reporting Service (see [`crate::telemetry`]).
//! cutover's address may be a name (a compose service, a Kubernetes Service): Envoy then
//! resolves it, and again every 5 s, so a cutover that comes back on another IP address is
//! found.

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
    ApiConfigSource, ApiVersion, DataSource, GrpcService, Http2ProtocolOptions, KeepaliveSettings,
    Node, TransportSocket, api_config_source::ApiType, data_source, grpc_service::EnvoyGrpc,
    grpc_service::TargetSpecifier, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config},
};

use envoy_types::pb::envoy::config::bootstrap::v3::ClusterManager;
use envoy_types::pb::envoy::config::metrics::v3::{
    HistogramBucketSettings, HistogramEmitMode, MetricsServiceConfig, StatsConfig, StatsMatcher,
    StatsSink, stats_matcher, stats_sink,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value};

use super::{Client, ClientTls};
use crate::spec::EndpointAddress;
use crate::telemetry::stats::{LATENCY_BOUNDS_MS, STATS_MATCHER_REGEX};
use crate::translate::{ads_config_source, any, duration, endpoint_address, socket_address};

/// How often Envoy flushes its stats to cutover: figures a second old at most, for a few
/// hundred bytes per second per Envoy (docs/benchmarks.md, "Telemetry").
pub const STATS_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Metric families per stats sink message: a large config's flush is split rather than
/// growing past gRPC's 4 MiB message limit.
const SINK_BATCH_SIZE: u32 = 1000;

/// The name of the static cluster through which Envoy reaches cutover.
pub const XDS_CLUSTER: &str = "cutover_xds";

/// What only an Envoy has: its admin interface, what it reports to cutover, the protocol.
#[derive(Debug, Clone)]
pub struct Options {
    /// Who the Envoy is and how it reaches cutover.
    pub client: Client,
    /// Where Envoy's own admin interface listens.
    pub admin: SocketAddr,
    /// Ship stats to cutover's metrics service.
    pub stats_sink: bool,
    /// Report load per endpoint to cutover's Load Reporting Service.
    pub load_reporting: bool,
    /// Keep every stat of cutover's clusters instead of only those cutover reads (more for
    /// Envoy's own `/stats` and scrapers, more for the stats sink to ship).
    pub all_stats: bool,
    /// ADS over the incremental (delta) protocol, `DELTA_GRPC`: a change sends only the
    /// resources that changed.
    pub delta: bool,
    /// With TLS, the name cutover's certificate must carry, sent as SNI. `None`: the host of
    /// the ADS address (a DNS name, or an IP address checked as an IP SAN).
    pub tls_server_name: Option<String>,
}

#[allow(
    clippy::too_many_lines,
    reason = "one Envoy bootstrap, written top to bottom as Envoy reads it"
)]
pub fn bootstrap(o: &Options) -> Bootstrap {
    let client = &o.client;
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
    // `translate::cluster::dns_cluster`). Several replicas, named or resolved from one name,
    // are endpoints of the one cluster: a stream that breaks is opened again to another, and
    // since versions are content hashes, the other serves the same versions.
    let (discovery, dns_lookup_family) = if client.ads.iter().any(EndpointAddress::is_name) {
        (DiscoveryType::StrictDns, DnsLookupFamily::V4Preferred)
    } else {
        (DiscoveryType::Static, DnsLookupFamily::Auto)
    };
    let xds_cluster = Cluster {
        name: XDS_CLUSTER.to_owned(),
        transport_socket: client
            .tls
            .as_ref()
            .map(|tls| transport_socket(tls, o.tls_server_name.as_deref(), &client.ads[0])),
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
                lb_endpoints: client
                    .ads
                    .iter()
                    .map(|ads| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                            address: Some(endpoint_address(ads)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let to_cutover = || GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: XDS_CLUSTER.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let (stats_sinks, stats_config, stats_flush_interval) = if o.stats_sink {
        let sink = MetricsServiceConfig {
            grpc_service: Some(to_cutover()),
            transport_api_version: ApiVersion::V3 as i32,
            // Why these three: see `telemetry::stats`.
            report_counters_as_deltas: Some(BoolValue { value: true }),
            emit_tags_as_labels: false,
            histogram_emit_mode: HistogramEmitMode::Histogram as i32,
            batch_size: SINK_BATCH_SIZE,
        };
        let stats_matcher = (!o.all_stats).then(|| StatsMatcher {
            stats_matcher: Some(stats_matcher::StatsMatcher::InclusionList(
                ListStringMatcher {
                    patterns: STATS_MATCHER_REGEX.iter().map(|r| regex(r)).collect(),
                },
            )),
        });
        let config = StatsConfig {
            stats_matcher,
            histogram_bucket_settings: vec![HistogramBucketSettings {
                r#match: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Suffix(".upstream_rq_time".to_owned())),
                    ..Default::default()
                }),
                buckets: LATENCY_BOUNDS_MS.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        (
            vec![StatsSink {
                name: "envoy.stat_sinks.metrics_service".to_owned(),
                config_type: Some(stats_sink::ConfigType::TypedConfig(any(&sink))),
            }],
            Some(config),
            Some(duration(STATS_FLUSH_INTERVAL)),
        )
    } else {
        (Vec::new(), None, None)
    };
    let cluster_manager = o.load_reporting.then(|| ClusterManager {
        load_stats_config: Some(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![to_cutover()],
            ..Default::default()
        }),
        ..Default::default()
    });
    Bootstrap {
        node: Some(Node {
            id: client.node.id.clone(),
            cluster: client.node.cluster.clone(),
            metadata: (!client.node.metadata.is_empty()).then(|| Struct {
                fields: client
                    .node
                    .metadata
                    .iter()
                    .map(|(k, v)| {
                        let value = Value {
                            kind: Some(value::Kind::StringValue(v.clone())),
                        };
                        (k.clone(), value)
                    })
                    .collect(),
            }),
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: if o.delta {
                    ApiType::DeltaGrpc
                } else {
                    ApiType::Grpc
                } as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![to_cutover()],
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
        cluster_manager,
        stats_sinks,
        stats_config,
        stats_flush_interval,
        ..Default::default()
    }
}

/// Envoy's TLS to cutover: cutover's certificate checked against the CA and the expected name,
/// Envoy's own certificate presented for mutual TLS, HTTP/2 by ALPN.
fn transport_socket(
    tls: &ClientTls,
    server_name: Option<&str>,
    ads: &EndpointAddress,
) -> TransportSocket {
    let file = |path: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    };
    let (name, san_type) = match (server_name, ads) {
        (Some(name), _) => (name.to_owned(), SanType::Dns),
        (None, EndpointAddress::Ip(addr)) => (addr.ip().to_string(), SanType::IpAddress),
        (None, EndpointAddress::Name(hp)) => (hp.host().to_owned(), SanType::Dns),
    };
    let exact = |value: String| StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value)),
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".to_owned()],
            tls_certificates: tls
                .cert_and_key
                .iter()
                .map(|(cert, key)| TlsCertificate {
                    certificate_chain: Some(file(cert)),
                    private_key: Some(file(key)),
                    ..Default::default()
                })
                .collect(),
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(&tls.ca)),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: san_type as i32,
                        matcher: Some(exact(name.clone())),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        // SNI carries names only, never an IP address (RFC 6066).
        sni: if san_type == SanType::Dns {
            name
        } else {
            String::new()
        },
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

fn regex(r: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
            regex: r.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeInfo;

    fn options(ads: &str) -> Options {
        Options {
            client: Client {
                node: NodeInfo {
                    id: "edge-1".into(),
                    cluster: "edge".into(),
                    metadata: Default::default(),
                },
                ads: ads.split(',').map(|a| a.parse().unwrap()).collect(),
                tls: None,
            },
            admin: "127.0.0.1:9901".parse().unwrap(),
            stats_sink: true,
            load_reporting: true,
            all_stats: false,
            delta: false,
            tls_server_name: None,
        }
    }

    /// [`options`] with TLS.
    fn with_tls(ads: &str, tls: ClientTls) -> Options {
        let mut o = options(ads);
        o.client.tls = Some(tls);
        o
    }

    fn xds_cluster(ads: &str) -> Cluster {
        let b = bootstrap(&options(ads));
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

    #[test]
    fn node_metadata_is_written_for_groups_to_match() {
        let plain = bootstrap(&options("127.0.0.1:18000")).node.unwrap();
        assert_eq!(plain.metadata, None);
        let mut o = options("127.0.0.1:18000");
        o.client.node.metadata = [("role".to_owned(), "sidecar".to_owned())].into();
        let node = bootstrap(&o).node.unwrap();
        let info = NodeInfo::from_node(&node);
        assert_eq!(info.metadata["role"], "sidecar");
    }

    #[test]
    fn delta_asks_for_incremental_ads() {
        let api_type = |delta: bool| {
            let b = bootstrap(&Options {
                delta,
                ..options("127.0.0.1:18000")
            });
            b.dynamic_resources.unwrap().ads_config.unwrap().api_type
        };
        assert_eq!(api_type(false), ApiType::Grpc as i32);
        assert_eq!(api_type(true), ApiType::DeltaGrpc as i32);
    }

    fn tls_context(b: &Bootstrap) -> UpstreamTlsContext {
        let c = &b.static_resources.as_ref().unwrap().clusters[0];
        let Some(transport_socket::ConfigType::TypedConfig(any)) = c
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            panic!("no TLS transport socket: {c:?}")
        };
        prost::Message::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn tls_checks_cutovers_name_and_presents_envoys_certificate() {
        assert_eq!(xds_cluster("127.0.0.1:18000").transport_socket, None);
        let tls = ClientTls {
            ca: "/etc/cutover/ca.pem".into(),
            cert_and_key: Some(("/etc/envoy/cert.pem".into(), "/etc/envoy/key.pem".into())),
        };
        let by_name = tls_context(&bootstrap(&with_tls("cutover.demo:18000", tls.clone())));
        assert_eq!(by_name.sni, "cutover.demo");
        let common = by_name.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["h2"]);
        assert_eq!(common.tls_certificates.len(), 1);
        let Some(ValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!("no validation context")
        };
        assert_eq!(
            v.match_typed_subject_alt_names[0].san_type,
            SanType::Dns as i32
        );
        // An IP address is checked as an IP SAN and is never sent as SNI.
        let by_ip = tls_context(&bootstrap(&with_tls(
            "127.0.0.1:18000",
            ClientTls {
                cert_and_key: None,
                ..tls
            },
        )));
        assert_eq!(by_ip.sni, "");
        let common = by_ip.common_tls_context.unwrap();
        assert!(common.tls_certificates.is_empty());
        let Some(ValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!("no validation context")
        };
        let san = &v.match_typed_subject_alt_names[0];
        assert_eq!(san.san_type, SanType::IpAddress as i32);
        assert_eq!(
            san.matcher.as_ref().unwrap().match_pattern,
            Some(MatchPattern::Exact("127.0.0.1".into()))
        );
    }
}
