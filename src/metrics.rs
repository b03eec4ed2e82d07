//! Prometheus metrics (`GET /metrics`): connected Envoys, pushes and NACKs by type, reloads,
//! save-to-ACK latency, streams and the encoded snapshot size. Updated per event (a push, an
//! ACK, a reload), never per proxied request: cutover does not see requests.
//!
//! Per version, what the Envoys report (request rate, error ratio, p99 latency, requests in
//! flight, endpoints healthy and ejected) is read at scrape time ([`Metrics::encode_with`]):
//! the figures already live in the telemetry module, so nothing is copied on every flush. The
//! caller passes only the versions of the services in the current file, which bounds the
//! series to the file's size whatever Envoys send.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::snapshot::ResourceType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

impl From<ResourceType> for TypeLabel {
    fn from(ty: ResourceType) -> Self {
        TypeLabel { r#type: ty.short() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub service: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

/// One node group of the file, as exported per `group`: its connected Envoys and how many hold
/// its current config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFigures {
    pub group: String,
    pub envoys: u64,
    pub in_sync: u64,
}

/// One version's figures over the last 10 s, as exported per `service`/`version`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionFigures {
    pub service: String,
    pub version: String,
    pub requests_per_second: f64,
    /// 0 to 1; `None` without requests (no sample is exported rather than a made-up 0).
    pub error_ratio: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub in_flight: u64,
    pub healthy_endpoints: Option<u64>,
    pub endpoints: Option<u64>,
    pub ejected_endpoints: u64,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub pushes: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    pub envoys: Gauge,
    pub streams: Gauge,
    /// xDS and telemetry streams open, what `--max-streams` bounds.
    pub grpc_streams: Gauge,
    pub grpc_streams_limit: Gauge,
    pub grpc_streams_refused: Counter,
    pub snapshot_bytes: Gauge,
    /// Config versions published, and the resources encoded for them: encoding happens once
    /// per version, never per Envoy or per reconnect.
    pub snapshots: Counter,
    pub resources_encoded: Counter,
    pub save_to_ack_seconds: Histogram,
    pub rollout_steps: Counter,
    pub rollout_promotions: Counter,
    pub rollout_rollbacks: Counter,
    /// Cluster mode: 1 while this replica leads, and the etcd revision of the record served.
    pub cluster_leader: Gauge,
    pub cluster_record_revision: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(
        clippy::too_many_lines,
        reason = "one registration per metric, in the order /metrics lists them"
    )]
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cutover");
        let pushes = Family::<TypeLabel, Counter>::default();
        let nacks = Family::<TypeLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let envoys = Gauge::default();
        let streams = Gauge::default();
        let grpc_streams = Gauge::default();
        let grpc_streams_limit = Gauge::default();
        let grpc_streams_refused = Counter::default();
        let snapshot_bytes = Gauge::default();
        let snapshots = Counter::default();
        let resources_encoded = Counter::default();
        registry.register(
            "snapshots",
            "Config versions published (each encoded once, shared by every stream)",
            snapshots.clone(),
        );
        registry.register(
            "resources_encoded",
            "Envoy resources encoded for the config versions published (once per version; a resource a save left unchanged keeps its bytes)",
            resources_encoded.clone(),
        );
        // 1 ms to ~4 s: a save normally reaches every Envoy in milliseconds.
        let save_to_ack_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, by resource type",
            pushes.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses Envoy rejected, by resource type",
            nacks.clone(),
        );
        registry.register(
            "reloads",
            "Deployment file loads, by result (ok or error)",
            reloads.clone(),
        );
        registry.register(
            "connected_envoys",
            "Distinct Envoy nodes with an open xDS stream",
            envoys.clone(),
        );
        registry.register("xds_streams", "Open xDS streams", streams.clone());
        registry.register(
            "grpc_streams",
            "Open xDS and telemetry streams, what --max-streams bounds",
            grpc_streams.clone(),
        );
        registry.register(
            "grpc_streams_limit",
            "The limit on concurrent xDS and telemetry streams (--max-streams)",
            grpc_streams_limit.clone(),
        );
        registry.register(
            "grpc_streams_refused",
            "Streams refused because --max-streams were open",
            grpc_streams_refused.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Encoded size of the config being served",
            snapshot_bytes.clone(),
        );
        registry.register(
            "save_to_ack_seconds",
            "Time from a change of the deployment file to an Envoy having ACKed all of it",
            save_to_ack_seconds.clone(),
        );
        let rollout_steps = Counter::default();
        let rollout_promotions = Counter::default();
        let rollout_rollbacks = Counter::default();
        registry.register(
            "rollout_steps",
            "Rollout steps taken (a canary's weight raised)",
            rollout_steps.clone(),
        );
        registry.register(
            "rollout_promotions",
            "Rollouts promoted (a canary at 100%, a switch that passed its window)",
            rollout_promotions.clone(),
        );
        registry.register(
            "rollout_rollbacks",
            "Rollouts rolled back (a failed analysis or an operator's abort)",
            rollout_rollbacks.clone(),
        );
        let cluster_leader = Gauge::default();
        let cluster_record_revision = Gauge::default();
        registry.register(
            "cluster_leader",
            "Cluster mode: 1 while this replica leads (decides and writes the record), else 0",
            cluster_leader.clone(),
        );
        registry.register(
            "cluster_record_revision",
            "Cluster mode: the etcd revision of the record this replica serves",
            cluster_record_revision.clone(),
        );
        Metrics {
            registry,
            cluster_leader,
            cluster_record_revision,
            rollout_steps,
            rollout_promotions,
            rollout_rollbacks,
            pushes,
            nacks,
            reloads,
            envoys,
            streams,
            grpc_streams,
            grpc_streams_limit,
            grpc_streams_refused,
            snapshot_bytes,
            snapshots,
            resources_encoded,
            save_to_ack_seconds,
        }
    }

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        self.encode_with(&[], &[])
    }

    /// [`Metrics::encode`] with the per-version figures `versions`, as gauges labelled
    /// `service` and `version`, and the file's node groups, labelled `group`.
    pub fn encode_with(&self, versions: &[VersionFigures], groups: &[GroupFigures]) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &version_registry(versions));
        if !groups.is_empty() {
            let _ = encode_registry(&mut out, &group_registry(groups));
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// A registry made for one scrape, per node group of the current file (bounded by the file).
fn group_registry(groups: &[GroupFigures]) -> Registry {
    let mut registry = Registry::with_prefix("cutover_group");
    let envoys = Family::<GroupLabel, Gauge>::default();
    let in_sync = Family::<GroupLabel, Gauge>::default();
    for g in groups {
        let label = GroupLabel {
            group: g.group.clone(),
        };
        envoys
            .get_or_create(&label)
            .set(i64::try_from(g.envoys).unwrap_or(i64::MAX));
        in_sync
            .get_or_create(&label)
            .set(i64::try_from(g.in_sync).unwrap_or(i64::MAX));
    }
    registry.register("envoys", "Envoys connected in the node group", envoys);
    registry.register(
        "envoys_in_sync",
        "Envoys of the node group that hold its current config version",
        in_sync,
    );
    registry
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A registry made for one scrape: a version that left the file leaves the output with it.
fn version_registry(versions: &[VersionFigures]) -> Registry {
    let mut registry = Registry::with_prefix("cutover_version");
    let rate = Family::<VersionLabels, FloatGauge>::default();
    let errors = Family::<VersionLabels, FloatGauge>::default();
    let p99 = Family::<VersionLabels, FloatGauge>::default();
    let in_flight = Family::<VersionLabels, Gauge>::default();
    let healthy = Family::<VersionLabels, Gauge>::default();
    let endpoints = Family::<VersionLabels, Gauge>::default();
    let ejected = Family::<VersionLabels, Gauge>::default();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for v in versions {
        let labels = VersionLabels {
            service: v.service.clone(),
            version: v.version.clone(),
        };
        rate.get_or_create(&labels).set(v.requests_per_second);
        if let Some(r) = v.error_ratio {
            errors.get_or_create(&labels).set(r);
        }
        if let Some(s) = v.p99_seconds {
            p99.get_or_create(&labels).set(s);
        }
        in_flight.get_or_create(&labels).set(gauge(v.in_flight));
        if let Some(n) = v.healthy_endpoints {
            healthy.get_or_create(&labels).set(gauge(n));
        }
        if let Some(n) = v.endpoints {
            endpoints.get_or_create(&labels).set(gauge(n));
        }
        ejected
            .get_or_create(&labels)
            .set(gauge(v.ejected_endpoints));
    }
    registry.register(
        "requests_per_second",
        "Requests the version answered per second over the last 10 s, across the Envoys that report",
        rate,
    );
    registry.register(
        "error_ratio",
        "Share (0 to 1) of the version's answered requests over the last 10 s that were 5xx, Envoy's own 503/504 included; absent without requests",
        errors,
    );
    registry.register_with_unit(
        "latency_p99",
        "99th percentile of the version's request latency over the last 10 s, interpolated within Envoy's histogram buckets; absent without requests",
        prometheus_client::registry::Unit::Seconds,
        p99,
    );
    registry.register(
        "requests_in_flight",
        "Requests sent to the version's endpoints and not answered yet",
        in_flight,
    );
    registry.register(
        "healthy_endpoints",
        "The version's endpoints Envoy counts healthy, summed over the Envoys",
        healthy,
    );
    registry.register(
        "endpoints",
        "The version's endpoints, summed over the Envoys",
        endpoints,
    );
    registry.register(
        "ejected_endpoints",
        "The version's endpoints ejected by outlier detection now, summed over the Envoys",
        ejected,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(version: &str) -> VersionFigures {
        VersionFigures {
            service: "checkout".into(),
            version: version.into(),
            requests_per_second: 12.5,
            error_ratio: Some(0.02),
            p99_seconds: Some(0.041),
            in_flight: 3,
            healthy_endpoints: Some(1),
            endpoints: Some(2),
            ejected_endpoints: 1,
        }
    }

    #[test]
    fn per_version_gauges_are_labelled_and_the_exposition_ends_once() {
        let m = Metrics::new();
        let quiet = VersionFigures {
            requests_per_second: 0.0,
            error_ratio: None,
            p99_seconds: None,
            healthy_endpoints: None,
            endpoints: None,
            ejected_endpoints: 0,
            in_flight: 0,
            ..figures("v2")
        };
        let groups = [GroupFigures {
            group: "edge".into(),
            envoys: 3,
            in_sync: 2,
        }];
        let text = m.encode_with(&[figures("v1"), quiet], &groups);
        for line in [
            r#"cutover_version_requests_per_second{service="checkout",version="v1"} 12.5"#,
            r#"cutover_version_error_ratio{service="checkout",version="v1"} 0.02"#,
            r#"cutover_version_latency_p99_seconds{service="checkout",version="v1"} 0.041"#,
            r#"cutover_version_requests_in_flight{service="checkout",version="v1"} 3"#,
            r#"cutover_version_healthy_endpoints{service="checkout",version="v1"} 1"#,
            r#"cutover_version_endpoints{service="checkout",version="v1"} 2"#,
            r#"cutover_version_ejected_endpoints{service="checkout",version="v1"} 1"#,
            r#"cutover_version_requests_per_second{service="checkout",version="v2"} 0.0"#,
            "# TYPE cutover_version_latency_p99_seconds gauge",
            "# UNIT cutover_version_latency_p99_seconds seconds",
            r#"cutover_group_envoys{group="edge"} 3"#,
            r#"cutover_group_envoys_in_sync{group="edge"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Without requests there is no error ratio or latency to report, not a zero.
        assert!(!text.contains(r#"error_ratio{service="checkout",version="v2"}"#));
        assert!(!text.contains(r#"latency_p99_seconds{service="checkout",version="v2"}"#));
        assert!(text.contains("cutover_connected_envoys"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
        // A version that is gone from the list is gone from the output.
        let later = m.encode_with(&[figures("v1")], &[]);
        assert!(!later.contains(r#"version="v2""#), "{later}");
        assert!(
            !later.contains("cutover_group_"),
            "no groups, no group series: {later}"
        );
    }
}
