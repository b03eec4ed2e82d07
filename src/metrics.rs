//! Prometheus metrics (`GET /metrics`): connected Envoys, pushes and NACKs by type, reloads,
//! save-to-ACK latency, streams and the encoded snapshot size. Updated per event (a push, an
//! ACK, a reload), never per proxied request: cutover does not see requests.

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

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub pushes: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    pub envoys: Gauge,
    pub streams: Gauge,
    pub snapshot_bytes: Gauge,
    pub save_to_ack_seconds: Histogram,
    pub rollout_steps: Counter,
    pub rollout_promotions: Counter,
    pub rollout_rollbacks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cutover");
        let pushes = Family::<TypeLabel, Counter>::default();
        let nacks = Family::<TypeLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let envoys = Gauge::default();
        let streams = Gauge::default();
        let snapshot_bytes = Gauge::default();
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
        Metrics {
            registry,
            rollout_steps,
            rollout_promotions,
            rollout_rollbacks,
            pushes,
            nacks,
            reloads,
            envoys,
            streams,
            snapshot_bytes,
            save_to_ack_seconds,
        }
    }

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
