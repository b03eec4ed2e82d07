//! Reading one message of Envoy's metrics service stats sink (`StreamMetricsMessage`): the few
//! per-cluster stats cutover uses, for the clusters cutover made. Pure.
//!
//! What Envoy sends, and why cutover's bootstrap asks for it that way (see
//! `source/extensions/stat_sinks/metrics_service/` in Envoy):
//! - **Counters as deltas** (`report_counters_as_deltas: true`): each flush carries what happened
//!   since the previous flush. A window is then a plain sum, nothing is remembered per counter
//!   between messages, and a counter that restarts at 0 (a cluster removed and added again, as
//!   red-black retirements and re-deploys do, or an Envoy restart) needs no reset detection.
//!   The price: the first flush on a new stream covers an unknown time (since Envoy started, or
//!   since a flush that went nowhere), so its counters are not counted.
//! - **Histograms in `HISTOGRAM` mode**: Envoy sends each histogram's *interval* statistics (the
//!   samples of the last flush interval) as bucket counts. Buckets add up across flushes and
//!   across Envoys; the quantiles of `SUMMARY` mode cannot be merged.
//! - **No tags as labels** (`emit_tags_as_labels: false`): names stay whole,
//!   `cluster.<name>.<stat>`. Envoy's default cluster-name tag matches `[^.]+`, so a version
//!   named `v1.2` would be cut at the dot; cutover instead strips a suffix it knows from the end.
//! - Only stats that were ever written are sent (`used()`), and only the ones that pass the
//!   bootstrap's stats matcher ([`STATS_MATCHER_REGEX`]).

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::io::prometheus::client::Metric;

use crate::ids::ClusterRef;

/// Longest cluster name worth reading: two 64-character names, `/`, `~` and another name.
pub const MAX_CLUSTER_NAME: usize = 3 * 64 + 2;
/// Histogram buckets read from one metric at most; Envoy sends one per configured bound.
const MAX_BUCKETS: usize = 64;

/// Upper bounds (milliseconds) of the latency histogram cutover keeps: Envoy's default bucket
/// bounds, so that an Envoy from any bootstrap maps exactly, plus finer steps between 1 ms and
/// 20 s that cutover's bootstrap asks Envoy to use for `upstream_rq_time` (a 200 ms service
/// lands in (175, 200] instead of (100, 250]). Envoy counts a sample in the bucket of the
/// lower edge of its own two-digit bin: 200 to 209 ms count as at most 200 ms.
pub const LATENCY_BOUNDS_MS: [f64; 40] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 125.0, 150.0, 175.0,
    200.0, 225.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0,
    4000.0, 5000.0, 7500.0, 10000.0, 15000.0, 20000.0, 30000.0, 60000.0, 300000.0, 600000.0,
    1800000.0, 3600000.0,
];
/// One count per bound, and one for samples above the last bound.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The per-cluster stats cutover reads, by the name Envoy gives them after `cluster.<name>.`.
/// The bootstrap's stats matcher is built from the same list.
const USED: [(&str, Stat); 19] = [
    ("upstream_rq_1xx", Stat::Class(0)),
    ("upstream_rq_2xx", Stat::Class(1)),
    ("upstream_rq_3xx", Stat::Class(2)),
    ("upstream_rq_4xx", Stat::Class(3)),
    ("upstream_rq_5xx", Stat::Class(4)),
    ("upstream_rq_timeout", Stat::Timeout),
    ("upstream_rq_rx_reset", Stat::Reset),
    ("upstream_rq_tx_reset", Stat::Reset),
    // An HTTP/1 upstream that closes its connection mid-request is no stream reset.
    ("upstream_cx_destroy_with_active_rq", Stat::Reset),
    ("upstream_cx_connect_fail", Stat::ConnectFail),
    ("upstream_rq_total", Stat::Total),
    ("upstream_rq_pending_failure_eject", Stat::PendingFailure),
    ("upstream_rq_pending_overflow", Stat::PendingFailure),
    ("upstream_rq_active", Stat::Active),
    ("upstream_rq_pending_active", Stat::PendingActive),
    ("membership_healthy", Stat::Healthy),
    ("membership_total", Stat::Members),
    ("outlier_detection.ejections_active", Stat::Ejected),
    ("upstream_rq_time", Stat::Latency),
];

/// The stats matcher `cutover bootstrap` gives Envoy: every stat whose name has no `/` (Envoy's
/// own, listeners, HTTP, `cutover_xds`), and of the clusters cutover makes (whose names have
/// one) only the stats cutover reads, not the router's `external.`/`internal.`/`canary.` copies
/// of them. Envoy then neither keeps nor ships the ~100 others per cluster.
pub static STATS_MATCHER_REGEX: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let suffixes: Vec<String> = USED
        .iter()
        .map(|(name, _)| name.replace('.', r"\."))
        .collect();
    // The version part: without a dot anything; with dots, its last segment is not one of
    // the router's infixes (see `has_envoy_infix`).
    let version = format!(r"(?:[^./]+|[^/]*\.{})", segment_except(&ENVOY_INFIXES));
    [
        "^[^/]*$".to_owned(),
        format!(r"^cluster\.[^/]+/{version}\.({})$", suffixes.join("|")),
    ]
});

/// Words the router puts between a cluster's name and a stat's.
const ENVOY_INFIXES: [&str; 3] = ["external", "internal", "canary"];

/// A regex (RE2 and Rust's `regex` alike, no look-around) for one dot-free, slash-free,
/// non-empty name segment that is none of `words` (lowercase ASCII letters): a trie of the
/// words, where each step may leave the trie with any other character.
fn segment_except(words: &[&str]) -> String {
    fn node(prefix: &str, words: &[&str]) -> String {
        let mut next: Vec<char> = words
            .iter()
            .filter_map(|w| w.strip_prefix(prefix)?.chars().next())
            .collect();
        next.sort_unstable();
        next.dedup();
        let others: String = next.iter().collect();
        let mut alternatives = vec![format!("[^./{others}][^./]*")];
        for c in &next {
            alternatives.push(format!("{c}{}", node(&format!("{prefix}{c}"), words)));
        }
        let group = format!("(?:{})", alternatives.join("|"));
        // A prefix that is not itself a word may end here.
        if !prefix.is_empty() && !words.contains(&prefix) {
            format!("{group}?")
        } else {
            group
        }
    }
    debug_assert!(
        words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
    );
    node("", words)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stat {
    /// Router: responses by class (`1xx` … `5xx`), on the cluster the route named.
    Class(usize),
    /// Router: the route's timeout fired (a 504), on the route's cluster.
    Timeout,
    /// Connection pool: the upstream stream was reset (either side), or its connection closed
    /// under it, on the cluster of the endpoint.
    Reset,
    /// Connection pool: a connection could not be made, on the cluster of the endpoint.
    ConnectFail,
    /// Connection pool: requests given a stream, on the cluster of the endpoint.
    Total,
    /// Connection pool: requests that never got a stream (connection failed, or over the
    /// circuit breaker), on the cluster of the endpoint.
    PendingFailure,
    Active,
    PendingActive,
    Healthy,
    Members,
    Ejected,
    Latency,
}

/// Counted events of one cluster in one flush (or, summed, in a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Responses by class, `1xx` to `5xx`.
    pub classes: [u64; 5],
    pub timeouts: u64,
    pub resets: u64,
    pub connect_failures: u64,
    /// Requests this cluster's endpoints got a stream for, and those that never got one.
    pub attempts: u64,
}

impl Counters {
    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }

    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a = a.saturating_add(b);
        }
        self.timeouts = self.timeouts.saturating_add(other.timeouts);
        self.resets = self.resets.saturating_add(other.resets);
        self.connect_failures = self.connect_failures.saturating_add(other.connect_failures);
        self.attempts = self.attempts.saturating_add(other.attempts);
    }

    /// Responses of every class.
    pub fn completed(&self) -> u64 {
        self.classes.iter().fold(0, |a, b| a.saturating_add(*b))
    }
}

/// Current values of one cluster, as of its last flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Requests sent and not yet answered, plus those waiting for a connection.
    pub in_flight: u64,
    pub healthy: Option<u64>,
    pub members: Option<u64>,
    pub ejected: u64,
}

/// Latency samples (milliseconds) counted in [`LATENCY_BOUNDS_MS`] buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency(pub [u64; LATENCY_BUCKETS]);

impl Default for Latency {
    fn default() -> Self {
        Latency([0; LATENCY_BUCKETS])
    }
}

impl Latency {
    pub fn add(&mut self, other: &Latency) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    /// From Prometheus buckets (`cumulative_count` of samples at or below `upper_bound`), each
    /// put into the first of cutover's buckets whose bound is not below its own; samples above
    /// the last bucket Envoy sent go above cutover's last bound.
    fn from_prometheus(h: &envoy_types::pb::io::prometheus::client::Histogram) -> Latency {
        let mut out = Latency::default();
        let mut below = 0u64;
        for bucket in h.bucket.iter().take(MAX_BUCKETS) {
            let cumulative = bucket.cumulative_count.unwrap_or(0);
            let n = cumulative.saturating_sub(below);
            below = below.max(cumulative);
            let bound = bucket.upper_bound.unwrap_or(f64::INFINITY);
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|b| *b >= bound)
                .unwrap_or(LATENCY_BUCKETS - 1);
            out.0[i] = out.0[i].saturating_add(n);
        }
        let over = h.sample_count.unwrap_or(0).saturating_sub(below);
        out.0[LATENCY_BUCKETS - 1] = out.0[LATENCY_BUCKETS - 1].saturating_add(over);
        out
    }
}

/// What one message says about one of cutover's clusters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub counters: Counters,
    /// Each `None` when the message did not carry that gauge.
    pub in_flight: Option<u64>,
    pub healthy: Option<u64>,
    pub members: Option<u64>,
    pub ejected: Option<u64>,
    pub latency: Option<Latency>,
}

/// One message of the stats sink, reduced to what cutover uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsFlush {
    /// When Envoy took the snapshot (milliseconds since the Unix epoch); every metric of one
    /// flush carries the same, also when Envoy splits a flush into batches (`batch_size`).
    pub snapshot_ms: Option<i64>,
    /// By cluster; only the clusters cutover makes.
    pub clusters: BTreeMap<ClusterRef, ClusterStats>,
    /// Metric families in the message, read or not, and its encoded size: what the sink costs.
    pub families: usize,
    pub wire_bytes: usize,
}

/// Reads one message. Unknown names, other clusters' stats and malformed values are skipped;
/// nothing here can fail.
pub fn parse(msg: &StreamMetricsMessage) -> StatsFlush {
    let mut out = StatsFlush {
        families: msg.envoy_metrics.len(),
        wire_bytes: prost::Message::encoded_len(msg),
        ..Default::default()
    };
    // By name while reading: each name is read back into an id once, not once per stat.
    let mut by_name: BTreeMap<&str, ClusterStats> = BTreeMap::new();
    for family in &msg.envoy_metrics {
        let Some((cluster, stat)) = family.name.as_deref().and_then(cluster_stat) else {
            continue;
        };
        for metric in &family.metric {
            if out.snapshot_ms.is_none() {
                out.snapshot_ms = metric.timestamp_ms;
            }
            record(by_name.entry(cluster).or_default(), stat, metric);
        }
    }
    out.clusters = by_name
        .into_iter()
        .filter_map(|(name, stats)| Some((ClusterRef::parse(name)?, stats)))
        .collect();
    out
}

/// `cluster.<name>.<stat>` → the name and the stat, for the stats cutover uses of the clusters
/// it makes. A name may contain dots; the stat is recognised from the end.
fn cluster_stat(name: &str) -> Option<(&str, Stat)> {
    let rest = name.strip_prefix("cluster.")?;
    USED.iter().find_map(|(suffix, stat)| {
        let cluster = rest.strip_suffix(suffix)?.strip_suffix('.')?;
        (cluster.len() <= MAX_CLUSTER_NAME
            && !has_envoy_infix(cluster)
            && ClusterRef::parse(cluster).is_some())
        .then_some((cluster, *stat))
    })
}

/// Whether `cluster.<name>.` is really `cluster.<cluster>.<infix>.`: the router also counts
/// responses and latency as `external.`, `internal.`, `canary.` and `zone.<from>.<to>.` stats,
/// which a name with dots cannot be told from. cutover reads the plain ones; a version whose
/// name ends in `.external`, `.internal` or `.canary` is not read.
fn has_envoy_infix(cluster: &str) -> bool {
    ENVOY_INFIXES.iter().any(|infix| {
        cluster
            .strip_suffix(infix)
            .is_some_and(|rest| rest.ends_with('.'))
    }) || cluster.contains(".zone.")
}

fn record(entry: &mut ClusterStats, stat: Stat, metric: &Metric) {
    let counter = || metric.counter.as_ref().and_then(|c| c.value).map(whole);
    let gauge = || metric.gauge.as_ref().and_then(|g| g.value).map(whole);
    let c = &mut entry.counters;
    match stat {
        Stat::Class(i) => c.classes[i] = c.classes[i].saturating_add(counter().unwrap_or(0)),
        Stat::Timeout => c.timeouts = c.timeouts.saturating_add(counter().unwrap_or(0)),
        Stat::Reset => c.resets = c.resets.saturating_add(counter().unwrap_or(0)),
        Stat::ConnectFail => {
            c.connect_failures = c.connect_failures.saturating_add(counter().unwrap_or(0));
        }
        Stat::Total | Stat::PendingFailure => {
            c.attempts = c.attempts.saturating_add(counter().unwrap_or(0));
        }
        Stat::Active | Stat::PendingActive => {
            if let Some(v) = gauge() {
                entry.in_flight = Some(entry.in_flight.unwrap_or(0).saturating_add(v));
            }
        }
        Stat::Healthy => entry.healthy = gauge().or(entry.healthy),
        Stat::Members => entry.members = gauge().or(entry.members),
        Stat::Ejected => entry.ejected = gauge().or(entry.ejected),
        // A SUMMARY family of the same name (Envoy's default mode sends both) has no buckets.
        Stat::Latency => {
            if let Some(h) = &metric.histogram {
                entry
                    .latency
                    .get_or_insert_with(Latency::default)
                    .add(&Latency::from_prometheus(h));
            }
        }
    }
}

/// A Prometheus value as a count: negative, NaN and fractions are what no Envoy sends; they
/// become 0 or are truncated, and huge values saturate.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "`as` saturates and maps NaN to 0: exactly the rule above"
)]
fn whole(v: f64) -> u64 {
    v as u64
}

/// The period between two snapshots, if it is plausible as one flush interval.
pub fn flush_period(previous_ms: i64, current_ms: i64) -> Option<Duration> {
    let delta = current_ms.checked_sub(previous_ms)?;
    (1..=60_000)
        .contains(&delta)
        .then(|| Duration::from_millis(delta.unsigned_abs()))
}

/// Builders of the messages Envoy's sink sends, for tests here and in the core.
#[cfg(test)]
pub mod fake {
    use envoy_types::pb::io::prometheus::client::{
        Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType, Summary,
    };

    fn family(name: &str, kind: MetricType, metric: Metric) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            r#type: Some(kind as i32),
            metric: vec![metric],
            ..Default::default()
        }
    }

    pub fn counter(name: &str, value: f64, ts: i64) -> MetricFamily {
        family(
            name,
            MetricType::Counter,
            Metric {
                counter: Some(Counter {
                    value: Some(value),
                    ..Default::default()
                }),
                timestamp_ms: Some(ts),
                ..Default::default()
            },
        )
    }

    pub fn gauge(name: &str, value: f64, ts: i64) -> MetricFamily {
        family(
            name,
            MetricType::Gauge,
            Metric {
                gauge: Some(Gauge { value: Some(value) }),
                timestamp_ms: Some(ts),
                ..Default::default()
            },
        )
    }

    /// A histogram with samples at the given values (milliseconds), in Envoy's default buckets.
    pub fn histogram(name: &str, samples: &[f64], ts: i64) -> MetricFamily {
        const ENVOY_DEFAULT: [f64; 19] = [
            0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
        ];
        let bucket = ENVOY_DEFAULT
            .iter()
            .map(|b| Bucket {
                upper_bound: Some(*b),
                cumulative_count: Some(samples.iter().filter(|s| *s <= b).count() as u64),
                ..Default::default()
            })
            .collect();
        family(
            name,
            MetricType::Histogram,
            Metric {
                histogram: Some(Histogram {
                    sample_count: Some(samples.len() as u64),
                    sample_sum: Some(samples.iter().sum()),
                    bucket,
                    ..Default::default()
                }),
                timestamp_ms: Some(ts),
                ..Default::default()
            },
        )
    }

    /// What Envoy's default `SUMMARY_AND_HISTOGRAM` mode adds next to each histogram.
    pub fn summary(name: &str, ts: i64) -> MetricFamily {
        family(
            name,
            MetricType::Summary,
            Metric {
                summary: Some(Summary {
                    sample_count: Some(3),
                    ..Default::default()
                }),
                timestamp_ms: Some(ts),
                ..Default::default()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
    use envoy_types::pb::io::prometheus::client::MetricFamily;

    fn message(families: Vec<MetricFamily>) -> StreamMetricsMessage {
        StreamMetricsMessage {
            identifier: Some(Identifier {
                node: Some(Node {
                    id: "edge-1".into(),
                    ..Default::default()
                }),
            }),
            envoy_metrics: families,
        }
    }

    #[test]
    fn reads_the_stats_cutover_uses_of_the_clusters_it_makes() {
        let ts = 1_700_000_000_000;
        let flush = parse(&message(vec![
            counter("cluster.checkout/v1.2.upstream_rq_2xx", 9.0, ts),
            counter("cluster.checkout/v1.2.upstream_rq_5xx", 1.0, ts),
            counter("cluster.checkout/v1.2.upstream_rq_rx_reset", 2.0, ts),
            counter("cluster.checkout/v1.2.upstream_rq_tx_reset", 1.0, ts),
            counter(
                "cluster.checkout/v1.2.upstream_cx_destroy_with_active_rq",
                1.0,
                ts,
            ),
            counter("cluster.checkout/v1.2.upstream_rq_total", 10.0, ts),
            counter(
                "cluster.checkout/v1.2.upstream_rq_pending_failure_eject",
                1.0,
                ts,
            ),
            gauge("cluster.checkout/v1.2.upstream_rq_active", 3.0, ts),
            gauge("cluster.checkout/v1.2.upstream_rq_pending_active", 1.0, ts),
            gauge("cluster.checkout/v1.2.membership_healthy", 1.0, ts),
            gauge("cluster.checkout/v1.2.membership_total", 2.0, ts),
            gauge(
                "cluster.checkout/v1.2.outlier_detection.ejections_active",
                1.0,
                ts,
            ),
            counter("cluster.checkout/v2~v1.2.upstream_rq_timeout", 4.0, ts),
            histogram(
                "cluster.checkout/v2~v1.2.upstream_rq_time",
                &[3.0, 7.0, 200.0],
                ts,
            ),
            summary("cluster.checkout/v2~v1.2.upstream_rq_time", ts),
            // Not read: Envoy's infixes, other clusters, other stats, unknown names.
            counter("cluster.checkout/v1.2.external.upstream_rq_5xx", 1.0, ts),
            counter("cluster.checkout/v1.2.zone.a.b.upstream_rq_5xx", 1.0, ts),
            counter("cluster.cutover_xds.upstream_rq_5xx", 1.0, ts),
            counter("cluster.checkout/v1.2.upstream_cx_total", 1.0, ts),
            counter("http.public.downstream_rq_5xx", 1.0, ts),
            counter("cluster.a/b/c.upstream_rq_5xx", 1.0, ts),
        ]));
        assert_eq!(flush.snapshot_ms, Some(ts));
        let id = |name| ClusterRef::parse(name).unwrap();
        assert_eq!(
            flush.clusters.keys().cloned().collect::<Vec<_>>(),
            [id("checkout/v1.2"), id("checkout/v2~v1.2")]
        );
        let v1 = &flush.clusters[&id("checkout/v1.2")];
        assert_eq!(
            v1.counters,
            Counters {
                classes: [0, 9, 0, 0, 1],
                timeouts: 0,
                resets: 4,
                connect_failures: 0,
                attempts: 11,
            }
        );
        assert_eq!(
            (v1.in_flight, v1.healthy, v1.members, v1.ejected),
            (Some(4), Some(1), Some(2), Some(1))
        );
        let agg = &flush.clusters[&id("checkout/v2~v1.2")];
        assert_eq!(agg.counters.timeouts, 4);
        let latency = agg.latency.as_ref().expect("the histogram is read");
        assert_eq!(
            latency.count(),
            3,
            "the summary of the same name adds nothing"
        );
        let bucket = |ms: f64| LATENCY_BOUNDS_MS.iter().position(|b| *b == ms).unwrap();
        // Envoy's default buckets map onto cutover's exactly: (1, 5], (5, 10], (100, 250].
        assert_eq!(latency.0[bucket(5.0)], 1);
        assert_eq!(latency.0[bucket(10.0)], 1);
        assert_eq!(latency.0[bucket(250.0)], 1);
    }

    #[test]
    fn malformed_values_neither_fail_nor_go_negative() {
        let flush = parse(&message(vec![
            counter("cluster.s/v.upstream_rq_2xx", f64::NAN, 1),
            counter("cluster.s/v.upstream_rq_5xx", -5.0, 1),
            counter("cluster.s/v.upstream_rq_4xx", 1e300, 1),
            MetricFamily {
                name: Some("cluster.s/v.upstream_rq_1xx".into()),
                ..Default::default()
            },
        ]));
        let c = flush.clusters[&ClusterRef::parse("s/v").unwrap()].counters;
        assert_eq!(c.classes, [0, 0, 0, u64::MAX, 0]);
        assert_eq!(c.completed(), u64::MAX, "saturates");
    }

    #[test]
    fn histogram_buckets_that_go_down_or_off_the_grid_do_not_underflow() {
        use envoy_types::pb::io::prometheus::client::{Bucket, Histogram};
        let h = Histogram {
            sample_count: Some(10),
            bucket: vec![
                Bucket {
                    upper_bound: Some(3.0),
                    cumulative_count: Some(4),
                    ..Default::default()
                },
                Bucket {
                    upper_bound: Some(7.0),
                    cumulative_count: Some(2),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let l = Latency::from_prometheus(&h);
        // 3 ms goes to (2, 5]; the decreasing count adds nothing; 6 samples are above 7 ms.
        assert_eq!(l.0[3], 4);
        assert_eq!(l.0[LATENCY_BUCKETS - 1], 6);
        assert_eq!(l.count(), 10);
    }

    #[test]
    fn the_stats_matcher_keeps_what_cutover_reads_and_everything_outside_its_clusters() {
        let re: Vec<regex::Regex> = STATS_MATCHER_REGEX
            .iter()
            .map(|r| regex::Regex::new(r).unwrap())
            .collect();
        let kept = |name: &str| re.iter().any(|r| r.is_match(name));
        for name in [
            "cluster.checkout/v1.2.upstream_rq_5xx",
            "cluster.checkout/v2~v1.upstream_rq_time",
            "cluster.checkout/v1.outlier_detection.ejections_active",
            "cluster.checkout/v1.upstream_rq_pending_active",
            "cluster.cutover_xds.upstream_cx_total",
            "cluster_manager.cluster_added",
            "control_plane.connected_state",
            "http.public.downstream_rq_2xx",
        ] {
            assert!(kept(name), "{name}");
            if name.contains('/') {
                assert!(
                    cluster_stat(name).is_some(),
                    "{name} is kept and read: the two lists agree"
                );
            }
        }
        for name in [
            "cluster.checkout/v1.upstream_cx_total",
            "cluster.checkout/v1.upstream_rq_200",
            "cluster.checkout/v1.lb_healthy_panic",
            "cluster.checkout/v1.circuit_breakers.default.rq_open",
            "cluster.checkout/v1.external.upstream_rq_time",
            "cluster.checkout/v2~v1.internal.upstream_rq_5xx",
            "cluster.checkout/v1.2.canary.upstream_rq_2xx",
        ] {
            assert!(!kept(name), "{name}");
            assert!(cluster_stat(name).is_none(), "{name}");
        }
        // Names that merely look like the infixes are cutover's.
        for name in [
            "cluster.checkout/external.upstream_rq_5xx",
            "cluster.checkout/v1.externals.upstream_rq_5xx",
            "cluster.checkout/v1.extern.upstream_rq_5xx",
            "cluster.checkout/v1.canaryx.upstream_rq_time",
            "cluster.checkout/v1.e.upstream_rq_time",
            "cluster.checkout/v1.2x.upstream_rq_time",
        ] {
            assert!(kept(name), "{name}");
            assert!(cluster_stat(name).is_some(), "{name}");
        }
    }
}
