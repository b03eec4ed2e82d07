//! Reading one load report of Envoy's Load Reporting Service (`LoadStatsRequest`), and the one
//! answer cutover gives. Pure.
//!
//! How Envoy reports (`source/common/upstream/load_stats_reporter.cc`):
//! - Counts are **reset on every report**: each report carries what happened since the previous
//!   one, and the cluster's `load_report_interval` says over how long. There can be only one
//!   consumer: Envoy has one `load_stats_config`, and it is cutover.
//! - Counts are **per endpoint** (`report_endpoint_granularity`) on the endpoint's own cluster:
//!   traffic through an aggregate cluster is counted on the version that served it.
//! - An endpoint with nothing to report (no request issued, finished or in progress) is left
//!   out: for a cluster that is in the report, a missing endpoint has nothing in flight.
//!   Since Envoy 1.37 a locality with requests in progress is reported even when none were
//!   issued in the period (`report_load_when_rq_active_is_non_zero`), so a long request to a
//!   draining endpoint stays visible until it ends.
//! - A cluster added since the previous report is tracked from the next one: **its first
//!   period (up to one interval) is lost**. Nothing can recover it.
//! - There is **no latency**; that comes from the stats sink's `upstream_rq_time`.
//! - The first report on a new stream comes before cutover's answer; it carries the clusters
//!   Envoy tracked on its previous stream (nothing on a fresh start), with valid intervals.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};

use super::stats::MAX_CLUSTER_NAME;
use crate::ids::{ClusterId, ClusterRef};

/// How often Envoy reports while few do: often enough that in-flight counts are live for `wait
/// drained`.
pub const LOAD_REPORTING_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval cutover asks for, however many Envoys report.
pub const LONGEST_LOAD_REPORTING_INTERVAL: Duration = Duration::from_secs(64);
/// Reports per second one cutover takes by default (`--load-reports-per-second`): each carries
/// Envoy's whole node description (about 60 KB for Envoy 1.40, which lists its 516
/// extensions), so 200 a second is about 12 MB/s.
pub const LOAD_REPORTS_PER_SECOND: usize = 200;

/// The interval every Envoy is asked to report at when `streams` report to this cutover and it
/// takes `per_second` reports a second: one second while they fit, else doubled until they do
/// (powers of two, so that the fleet growing or shrinking changes it rarely), at most
/// [`LONGEST_LOAD_REPORTING_INTERVAL`].
pub fn interval_for(streams: usize, per_second: usize) -> Duration {
    let needed = u64::try_from(streams.div_ceil(per_second.max(1))).unwrap_or(u64::MAX);
    Duration::from_secs(needed.max(1).next_power_of_two()).min(LONGEST_LOAD_REPORTING_INTERVAL)
}

/// The answer cutover sends on a load reporting stream: every cluster, every endpoint, every
/// `interval`. Sent again when the interval changes (Envoy keeps what it tracked and starts the
/// new period).
pub fn response(interval: Duration) -> LoadStatsResponse {
    LoadStatsResponse {
        clusters: Vec::new(),
        send_all_clusters: true,
        load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        report_endpoint_granularity: true,
    }
}

/// One report, reduced to cutover's version clusters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// The longest `load_report_interval` of the report: the time since Envoy's previous report
    /// (clusters tracked only since then have a shorter one).
    pub period: Option<Duration>,
    pub clusters: Vec<ClusterLoad>,
    /// The report's encoded size: what load reporting costs.
    pub wire_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLoad {
    /// Aggregate clusters have no endpoints and are not reported.
    pub cluster: ClusterId,
    pub endpoints: Vec<EndpointLoad>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointLoad {
    /// `IP:PORT` as in the deployment file (`[::1]:8080` for IPv6).
    pub address: String,
    /// Counted over the report's period.
    pub issued: u64,
    pub succeeded: u64,
    /// 5xx answers, resets, connect failures and timeouts of requests sent to this endpoint.
    pub failed: u64,
    /// At the time of the report.
    pub in_progress: u64,
}

pub fn parse(req: &LoadStatsRequest) -> LoadReport {
    let mut out = LoadReport {
        wire_bytes: prost::Message::encoded_len(req),
        ..Default::default()
    };
    for cluster in &req.cluster_stats {
        let period = cluster
            .load_report_interval
            .as_ref()
            .and_then(proto_duration);
        if let Some(p) = period {
            out.period = Some(out.period.map_or(p, |q| q.max(p)));
        }
        let name = &cluster.cluster_name;
        if name.len() > MAX_CLUSTER_NAME {
            continue;
        }
        let Some(ClusterRef::Version(id)) = ClusterRef::parse(name) else {
            continue;
        };
        // The same endpoint in two localities or priorities is one endpoint.
        let mut endpoints = std::collections::BTreeMap::<String, EndpointLoad>::new();
        for locality in &cluster.upstream_locality_stats {
            for e in &locality.upstream_endpoint_stats {
                let Some(address) = e.address.as_ref().and_then(address_text) else {
                    continue;
                };
                let x = endpoints
                    .entry(address.clone())
                    .or_insert_with(|| EndpointLoad {
                        address,
                        ..Default::default()
                    });
                x.issued = x.issued.saturating_add(e.total_issued_requests);
                x.succeeded = x.succeeded.saturating_add(e.total_successful_requests);
                x.failed = x.failed.saturating_add(e.total_error_requests);
                x.in_progress = x.in_progress.saturating_add(e.total_requests_in_progress);
            }
        }
        let load = ClusterLoad {
            cluster: id,
            endpoints: endpoints.into_values().collect(),
        };
        out.clusters.push(load);
    }
    out
}

/// A protobuf duration, if it is one (not negative, nanoseconds in range).
fn proto_duration(d: &envoy_types::pb::google::protobuf::Duration) -> Option<Duration> {
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos))
}

/// A socket address as `IP:PORT`; `None` for pipes and internal addresses, or a malformed IP.
fn address_text(a: &envoy_types::pb::envoy::config::core::v3::Address) -> Option<String> {
    let Some(address::Address::SocketAddress(s)) = &a.address else {
        return None;
    };
    let Some(PortSpecifier::PortValue(port)) = s.port_specifier else {
        return None;
    };
    let ip: std::net::IpAddr = s.address.parse().ok()?;
    let port = u16::try_from(port).ok()?;
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

/// Builders of the reports Envoy sends, for tests here and in the core.
#[cfg(test)]
pub mod fake {
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress, address};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterStats, UpstreamEndpointStats, UpstreamLocalityStats,
    };
    use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;

    /// (address, issued, succeeded, failed, in progress)
    pub type Endpoint<'a> = (&'a str, u64, u64, u64, u64);

    pub fn cluster(name: &str, interval_ms: i64, endpoints: &[Endpoint]) -> ClusterStats {
        ClusterStats {
            cluster_name: name.to_owned(),
            load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: interval_ms / 1000,
                nanos: i32::try_from((interval_ms % 1000) * 1_000_000).unwrap(),
            }),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                upstream_endpoint_stats: endpoints
                    .iter()
                    .map(|(addr, issued, ok, failed, active)| {
                        let sa: std::net::SocketAddr = addr.parse().unwrap();
                        UpstreamEndpointStats {
                            address: Some(Address {
                                address: Some(address::Address::SocketAddress(SocketAddress {
                                    address: sa.ip().to_string(),
                                    port_specifier: Some(PortSpecifier::PortValue(
                                        sa.port().into(),
                                    )),
                                    ..Default::default()
                                })),
                            }),
                            total_issued_requests: *issued,
                            total_successful_requests: *ok,
                            total_error_requests: *failed,
                            total_requests_in_progress: *active,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    pub fn request(clusters: Vec<ClusterStats>) -> LoadStatsRequest {
        LoadStatsRequest {
            node: Some(Node {
                id: "edge-1".into(),
                ..Default::default()
            }),
            cluster_stats: clusters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn reads_endpoints_of_version_clusters_with_the_longest_interval_as_the_period() {
        let mut two_localities = cluster("checkout/v1", 1000, &[("127.0.0.1:8081", 5, 4, 1, 2)]);
        two_localities
            .upstream_locality_stats
            .extend(cluster("x", 0, &[("127.0.0.1:8081", 1, 1, 0, 1)]).upstream_locality_stats);
        let report = parse(&request(vec![
            two_localities,
            // Tracked since a moment ago: a shorter interval.
            cluster("checkout/v2", 300, &[("[::1]:8082", 1, 1, 0, 0)]),
            // Aggregates have no endpoints; other clusters are not cutover's.
            cluster("checkout/v2~v1", 1000, &[]),
            cluster("cutover_xds", 1000, &[("127.0.0.1:18000", 1, 1, 0, 0)]),
        ]));
        assert_eq!(report.period, Some(Duration::from_secs(1)));
        assert_eq!(
            report.clusters,
            [
                ClusterLoad {
                    cluster: ClusterId::new("checkout", "v1"),
                    endpoints: vec![EndpointLoad {
                        address: "127.0.0.1:8081".into(),
                        issued: 6,
                        succeeded: 5,
                        failed: 1,
                        in_progress: 3,
                    }],
                },
                ClusterLoad {
                    cluster: ClusterId::new("checkout", "v2"),
                    endpoints: vec![EndpointLoad {
                        address: "[::1]:8082".into(),
                        issued: 1,
                        succeeded: 1,
                        failed: 0,
                        in_progress: 0,
                    }],
                },
            ]
        );
    }

    #[test]
    fn the_answer_asks_for_every_cluster_and_endpoint_every_interval() {
        let r = response(Duration::from_secs(8));
        assert!(r.send_all_clusters && r.report_endpoint_granularity);
        assert_eq!(
            r.load_reporting_interval.map(|d| (d.seconds, d.nanos)),
            Some((8, 0))
        );
    }

    #[test]
    fn the_interval_doubles_as_reporters_outgrow_the_budget_up_to_64_s() {
        let at = |streams, per_second| interval_for(streams, per_second).as_secs();
        assert_eq!(at(0, 200), 1);
        assert_eq!(at(200, 200), 1);
        assert_eq!(at(201, 200), 2);
        assert_eq!(at(1_000, 200), 8);
        assert_eq!(at(10_000, 200), 64);
        assert_eq!(at(1_000_000, 200), 64);
        assert_eq!(at(5, 0), 8, "a budget of 0 counts as 1");
    }
}
