//! What the telemetry says, as served by `GET /telemetry` and read by status, metrics, the
//! dashboard and `cutover wait`. Plain data; what `GET /telemetry` answers also deserializes, for
//! the tests and benches that read it (`testing::read_exact`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::stats::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// Every figure, per service and version, across every Envoy that reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// By service, then version.
    pub services: BTreeMap<String, BTreeMap<String, VersionTelemetry>>,
    /// Every Envoy with an open telemetry stream.
    pub nodes: Vec<NodeTelemetry>,
    /// Envoys connected over xDS that send no telemetry at all (started from a bootstrap
    /// without the stats sink and load reporting): their traffic is unknown, not zero. Filled
    /// by [`TelemetryReport::with_connected`].
    pub nodes_without_telemetry: Vec<String>,
    /// What was not kept because a cap was reached.
    pub dropped: Dropped,
    /// The interval Envoys are asked to send load reports at: 1 s, longer once more Envoys
    /// report than `--load-reports-per-second` allows.
    pub load_reporting_interval_seconds: u64,
}

impl TelemetryReport {
    /// Notes which of the `connected` xDS node ids have no telemetry stream.
    pub fn with_connected<'a>(mut self, connected: impl IntoIterator<Item = &'a str>) -> Self {
        let reporting: BTreeSet<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        let missing: BTreeSet<&str> = connected
            .into_iter()
            .filter(|id| !reporting.contains(id))
            .collect();
        self.nodes_without_telemetry = missing.into_iter().map(str::to_owned).collect();
        self
    }

    pub fn version(&self, service: &str, version: &str) -> Option<&VersionTelemetry> {
        self.services.get(service)?.get(version)
    }
}

/// One version across all Envoys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionTelemetry {
    /// Envoys whose stats sink reports this version.
    pub envoys: usize,
    /// The last 10 s.
    pub last_10s: WindowFigures,
    /// The last minute (50 to 60 s: ten-second slots).
    pub last_1m: WindowFigures,
    /// Requests sent to the version's endpoints and not answered yet, plus those waiting for
    /// a connection, now.
    pub in_flight: u64,
    /// Endpoints Envoy counts healthy, and all of them, summed over the Envoys (each Envoy
    /// checks every endpoint on its own).
    pub membership: Option<Membership>,
    /// Endpoints ejected by outlier detection now, summed over the Envoys.
    pub ejections_active: u64,
    /// From load reports, by `IP:PORT`.
    pub endpoints: BTreeMap<String, EndpointTelemetry>,
}

/// Requests a version served in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowFigures {
    /// Requests answered (any status, Envoy's own 503 and 504 included).
    pub requests: u64,
    /// Streams the version's endpoints were asked for: requests and their retries, or, behind
    /// a TCP listener, connections (those that failed to connect included).
    #[serde(default)]
    pub attempts: u64,
    #[serde(default)]
    pub attempts_per_second: f64,
    pub requests_per_second: f64,
    /// `1 - error_rate`; `None` without requests.
    pub success_rate: Option<f64>,
    /// Share of answered requests that were 5xx: from the upstream, or Envoy's own 503/504
    /// after a reset, a connect failure, a timeout or with no healthy endpoint.
    pub error_rate: Option<f64>,
    pub errors: ErrorCounts,
    /// Interpolated within histogram buckets; `None` without requests.
    pub latency_ms: Option<Quantiles>,
}

/// Failures by cause in one window. Resets and connect failures count attempts: one that a
/// retry recovered is counted here and is not in `error_rate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub http_5xx: u64,
    pub timeouts: u64,
    pub resets: u64,
    pub connect_failures: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub healthy: u64,
    pub total: u64,
}

/// One endpoint across all Envoys, from their load reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointTelemetry {
    /// Requests in progress now, summed over the Envoys.
    pub in_flight: u64,
    /// The same, per Envoy node id (only Envoys with requests in progress).
    pub in_flight_by_node: BTreeMap<String, u64>,
    pub last_10s: EndpointWindow,
    pub last_1m: EndpointWindow,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointWindow {
    /// Requests finished (succeeded or failed).
    pub requests: u64,
    pub requests_per_second: f64,
    pub error_rate: Option<f64>,
}

/// One Envoy's telemetry streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTelemetry {
    pub id: String,
    pub cluster: String,
    pub stats_sink: Option<StreamStatus>,
    pub load_reporting: Option<StreamStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Open streams of this kind (more than one: several Envoys share the node id).
    pub streams: usize,
    pub connected_seconds: f64,
    pub last_message_seconds_ago: f64,
    /// Nothing heard for too long: its figures are left out until it speaks again.
    pub stale: bool,
    /// Messages received, and encoded bytes per second over the last 10 s: what it costs.
    pub messages: u64,
    pub bytes_per_second: f64,
    /// Stats sink: metric families in Envoy's latest flush (every stat it sent, read or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_families_per_flush: Option<usize>,
}

/// Counts of what was refused or not kept because of a cap (never reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Telemetry streams refused: too many open.
    pub streams: u64,
    /// Cluster figures not kept: too many clusters on one stream.
    pub clusters: u64,
    /// Endpoint figures not kept: too many endpoints on one stream.
    pub endpoints: u64,
}

/// Requests in flight per Envoy and endpoint: what `cutover wait drained` waits on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InFlight {
    /// Every node with a telemetry stream, by id.
    pub nodes: BTreeMap<String, NodeInFlight>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeInFlight {
    /// Whether a fresh load reporting stream speaks for this node; without one, its requests
    /// in flight are unknown, not zero.
    pub load_reporting: bool,
    /// When its latest load report arrived: what it says is as of then.
    #[serde(skip)]
    pub reported_at: Option<std::time::Instant>,
    /// Endpoints with requests in progress (none listed: nothing in flight).
    pub endpoints: Vec<EndpointInFlight>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInFlight {
    pub service: String,
    pub version: String,
    pub address: String,
    pub requests: u64,
}

impl InFlight {
    /// Requests in flight to `service` (and `version`, and endpoint `address`, when given),
    /// per node id; nodes without load reports are absent.
    pub fn to(
        &self,
        service: &str,
        version: Option<&str>,
        address: Option<&str>,
    ) -> BTreeMap<String, u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.load_reporting)
            .map(|(id, n)| {
                let sum = n
                    .endpoints
                    .iter()
                    .filter(|e| {
                        e.service == service
                            && version.is_none_or(|v| e.version == v)
                            && address.is_none_or(|a| e.address == a)
                    })
                    .map(|e| e.requests)
                    .sum();
                (id.clone(), sum)
            })
            .collect()
    }
}

/// What one Envoy's stats sink last said of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    pub node: String,
    /// When the flush these figures come from arrived.
    pub reported_at: std::time::Instant,
    /// Endpoints this Envoy counts healthy (health checks passed, not ejected, not draining).
    pub healthy: u64,
    pub total: u64,
    /// Requests sent to the version's endpoints and not answered yet, plus those waiting for a
    /// connection: all of them, where load reports list only some (an endpoint can be missing
    /// from a report while requests to it are in progress).
    pub in_flight: u64,
}

/// Latency counts (possibly fractional: an aggregate cluster's share) in
/// [`LATENCY_BOUNDS_MS`] buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram(pub [f64; LATENCY_BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram([0.0; LATENCY_BUCKETS])
    }
}

impl Histogram {
    pub fn add_scaled(&mut self, counts: &[u64; LATENCY_BUCKETS], share: f64) {
        for (a, b) in self.0.iter_mut().zip(counts) {
            *a += *b as f64 * share;
        }
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The `q` quantile, linear within its bucket (0 below the first bound); samples above the
    /// last bound read as the last bound. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: f64 = self.0.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * total;
        let mut below = 0.0;
        for (i, n) in self.0.iter().enumerate() {
            if *n > 0.0 && below + n >= target {
                let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                    return LATENCY_BOUNDS_MS.last().copied();
                };
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                return Some(lower + (upper - lower) * ((target - below) / n));
            }
            below += n;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }

    pub fn quantiles(&self) -> Option<Quantiles> {
        Some(Quantiles {
            p50: round(self.quantile(0.5)?, 1),
            p90: round(self.quantile(0.9)?, 1),
            p99: round(self.quantile(0.99)?, 1),
        })
    }
}

/// A figure summed from shares of counts, as a whole count: rounded; never negative or NaN
/// here, and `as` would map those to 0 and cap huge values at `u64::MAX`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "saturating on purpose, see above"
)]
pub fn count(x: f64) -> u64 {
    x.round() as u64
}

/// `x` with `digits` decimals: the JSON stays readable.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
