//! The pure core: telemetry streams, fed parsed messages with an explicit `now`, and the
//! figures they add up to. No sockets, no clock, no locks.
//!
//! Memory is bounded: at most [`Limits::max_streams`] streams, each with at most
//! [`Limits::max_clusters_per_stream`] clusters and [`Limits::max_endpoints_per_stream`]
//! endpoints (what does not fit is counted in [`Dropped`]), each series at most 17 time slots.
//! A stream's data goes when the stream closes, so an Envoy that disconnects leaves the
//! figures at once; a stream silent for [`Limits::stale_after`] is left out until it speaks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::lrs::LoadReport;
use super::report::{
    Dropped, EndpointInFlight, EndpointTelemetry, EndpointWindow, ErrorCounts, Histogram, InFlight,
    Membership, NodeHealth, NodeTelemetry, StreamStatus, TelemetryReport, VersionTelemetry,
    WindowFigures, count, round,
};
use super::stats::{self, Counters, LATENCY_BUCKETS, Latency, StatsFlush};
use super::window::{Slot, Slots, Window};
use crate::ids::{ClusterId, ClusterRef};

/// Longest period one message may stand for; longer gaps are not a flush interval.
const MAX_PERIOD: Duration = Duration::from_secs(60);
/// The same for a load report: twice the longest interval cutover asks for.
const MAX_LOAD_PERIOD: Duration =
    Duration::from_secs(2 * super::lrs::LONGEST_LOAD_REPORTING_INTERVAL.as_secs());
/// Longest node id kept.
const MAX_NODE_ID: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_streams: usize,
    pub max_clusters_per_stream: usize,
    pub max_endpoints_per_stream: usize,
    pub stale_after: Duration,
    /// Load reports a second this cutover takes: the interval it asks for grows with the
    /// number of Envoys reporting ([`super::lrs::interval_for`]).
    pub load_reports_per_second: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Two per Envoy.
            max_streams: 4096,
            max_clusters_per_stream: 2048,
            max_endpoints_per_stream: 8192,
            // Ten flush intervals of cutover's bootstrap.
            stale_after: Duration::from_secs(10),
            load_reports_per_second: super::lrs::LOAD_REPORTS_PER_SECOND,
        }
    }
}

/// Which of Envoy's two reports a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    StatsSink,
    LoadReports,
}

/// The Envoy a stream belongs to, from its first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    pub id: String,
    pub cluster: String,
}

impl NodeKey {
    pub fn new(id: &str, cluster: &str) -> NodeKey {
        NodeKey {
            id: truncate(id, MAX_NODE_ID),
            cluster: truncate(cluster, MAX_NODE_ID),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub type StreamId = u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cutover already has {0} telemetry streams open, its limit; this stream is refused and Envoy will retry (is something opening streams in a loop?)"
)]
pub struct TooManyStreams(pub usize);

#[derive(Debug)]
pub struct Aggregator {
    limits: Limits,
    /// Slot numbers are seconds since this instant.
    epoch: Instant,
    next_id: StreamId,
    streams: BTreeMap<StreamId, Stream>,
    /// How many of them carry load reports.
    load_streams: usize,
    dropped: Dropped,
}

#[derive(Debug)]
struct Stream {
    node: NodeKey,
    opened_at: Instant,
    last_seen: Instant,
    /// Seconds of Envoy time the counted messages stand for: rates divide by this, so a window
    /// that is only partly covered (a new stream, a skipped first flush) is still right.
    periods: Slots<f64>,
    /// By slot, the earliest moment its counted messages stand for: a figure judged "since"
    /// a moment takes only slots that begin after it.
    covers_from: Slots<Earliest>,
    body: Body,
    messages: u64,
    /// Encoded bytes received, by slot.
    bytes: Slots<f64>,
}

#[derive(Debug)]
enum Body {
    Stats(StatsBody),
    Load(LoadBody),
}

#[derive(Debug, Default)]
struct StatsBody {
    last_snapshot_ms: Option<i64>,
    last_arrival: Option<Instant>,
    /// Where the current flush's period begins, in milliseconds since the epoch (if counted).
    flush_from_ms: Option<u64>,
    /// Flushes seen; batches of one flush share a number.
    flush: u64,
    /// Whether the current flush's counters are counted (its period is known).
    counting: bool,
    /// Metric families in the current flush, all batches.
    families: usize,
    clusters: BTreeMap<ClusterRef, StatsSeries>,
}

#[derive(Debug, Default)]
struct StatsSeries {
    slots: Slots<Sample>,
    gauges: stats::Gauges,
    /// The flush the gauges are from.
    gauges_flush: u64,
}

/// What one cluster counted in one slot.
#[derive(Debug, Clone, Default)]
struct Sample {
    counters: Counters,
    latency: Option<Box<Latency>>,
}

/// The earliest of several moments, in milliseconds since the aggregator's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Earliest(u64);

impl Default for Earliest {
    fn default() -> Self {
        Earliest(u64::MAX)
    }
}

impl Slot for Earliest {
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.min(other.0);
    }
}

impl Slot for Sample {
    fn merge(&mut self, other: &Self) {
        self.counters.add(&other.counters);
        if let Some(l) = &other.latency {
            self.latency.get_or_insert_with(Default::default).add(l);
        }
    }
}

impl StatsBody {
    /// This Envoy's figures per version over the slots `sum` adds up (see [`attribute`]).
    fn parts(&self, sum: impl Fn(&Slots<Sample>) -> Sample) -> Vec<(ClusterId, Part)> {
        let sums: BTreeMap<&ClusterRef, Sample> = self
            .clusters
            .iter()
            .map(|(id, series)| (id, sum(&series.slots)))
            .collect();
        attribute(&sums)
    }
}

#[derive(Debug, Default)]
struct LoadBody {
    /// By cluster, then endpoint address.
    clusters: BTreeMap<ClusterId, BTreeMap<String, EndpointSeries>>,
    endpoints: usize,
}

#[derive(Debug, Default)]
struct EndpointSeries {
    slots: Slots<EndpointCounts>,
    in_progress: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct EndpointCounts {
    succeeded: u64,
    failed: u64,
}

impl Slot for EndpointCounts {
    fn merge(&mut self, other: &Self) {
        self.succeeded = self.succeeded.saturating_add(other.succeeded);
        self.failed = self.failed.saturating_add(other.failed);
    }
}

impl Aggregator {
    pub fn new(limits: Limits, epoch: Instant) -> Aggregator {
        Aggregator {
            limits,
            epoch,
            next_id: 0,
            streams: BTreeMap::new(),
            load_streams: 0,
            dropped: Dropped::default(),
        }
    }

    /// The interval Envoys are asked to send load reports at, for the number reporting now.
    pub fn load_interval(&self) -> Duration {
        super::lrs::interval_for(self.load_streams, self.limits.load_reports_per_second)
    }

    fn sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A new stream from `node`, or an error when [`Limits::max_streams`] are open.
    pub fn open(
        &mut self,
        source: Source,
        node: NodeKey,
        now: Instant,
    ) -> Result<StreamId, TooManyStreams> {
        if self.streams.len() >= self.limits.max_streams {
            self.dropped.streams += 1;
            return Err(TooManyStreams(self.streams.len()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let body = match source {
            Source::StatsSink => Body::Stats(StatsBody::default()),
            Source::LoadReports => {
                self.load_streams += 1;
                Body::Load(LoadBody::default())
            }
        };
        self.streams.insert(
            id,
            Stream {
                node,
                opened_at: now,
                last_seen: now,
                periods: Slots::default(),
                covers_from: Slots::default(),
                body,
                messages: 0,
                bytes: Slots::default(),
            },
        );
        Ok(id)
    }

    /// Forgets the stream and everything it reported.
    pub fn close(&mut self, id: StreamId) {
        if let Some(Stream {
            body: Body::Load(_),
            ..
        }) = self.streams.remove(&id)
        {
            self.load_streams -= 1;
        }
    }

    /// One stats sink message on stream `id`.
    pub fn stats(&mut self, id: StreamId, flush: &StatsFlush, now: Instant) {
        let sec = self.sec(now);
        let now_ms = self.ms(now);
        let limits = self.limits;
        let Aggregator {
            streams, dropped, ..
        } = self;
        let Some(stream) = streams.get_mut(&id) else {
            return;
        };
        stream.last_seen = now;
        stream.messages += 1;
        stream.bytes.add(sec, &(flush.wire_bytes as f64));
        let Body::Stats(b) = &mut stream.body else {
            return;
        };
        let same_flush = flush.snapshot_ms.is_some() && flush.snapshot_ms == b.last_snapshot_ms;
        if !same_flush {
            // The first flush on a stream has no known period (its deltas may go back to
            // Envoy's start): it sets gauges only.
            let period = match (b.last_snapshot_ms, flush.snapshot_ms) {
                (Some(previous), Some(current)) => stats::flush_period(previous, current),
                (_, None) => b
                    .last_arrival
                    .map(|t| now.saturating_duration_since(t))
                    .filter(|d| !d.is_zero() && *d <= MAX_PERIOD),
                (None, Some(_)) => None,
            };
            b.flush += 1;
            b.counting = period.is_some();
            b.families = 0;
            if let Some(p) = period {
                stream.periods.add(sec, &p.as_secs_f64());
            }
            b.flush_from_ms = period
                .map(|p| now_ms.saturating_sub(u64::try_from(p.as_millis()).unwrap_or(u64::MAX)));
            b.last_snapshot_ms = flush.snapshot_ms;
            b.last_arrival = Some(now);
        }
        b.families = b.families.saturating_add(flush.families);
        if let Some(from) = b.flush_from_ms {
            stream.covers_from.add(sec, &Earliest(from));
        }
        for (name, c) in &flush.clusters {
            let known = b.clusters.len();
            let series = match b.clusters.get_mut(name) {
                Some(s) => s,
                None if known < limits.max_clusters_per_stream => {
                    b.clusters.entry(name.clone()).or_default()
                }
                None => {
                    dropped.clusters += 1;
                    continue;
                }
            };
            if series.gauges_flush != b.flush {
                series.gauges = stats::Gauges::default();
                series.gauges_flush = b.flush;
            }
            // A later batch of the same flush may carry the rest of a cluster's gauges.
            let g = &mut series.gauges;
            g.in_flight = g.in_flight.saturating_add(c.in_flight.unwrap_or(0));
            g.healthy = c.healthy.or(g.healthy);
            g.members = c.members.or(g.members);
            g.ejected = c.ejected.unwrap_or(g.ejected);
            let sample = Sample {
                counters: c.counters,
                latency: c
                    .latency
                    .as_ref()
                    .filter(|l| l.count() > 0)
                    .map(|l| Box::new(l.clone())),
            };
            if b.counting && (!sample.counters.is_zero() || sample.latency.is_some()) {
                series.slots.add(sec, &sample);
            }
        }
        // A cluster Envoy no longer reports (removed) goes once nothing of it is in a window.
        let flush_no = b.flush;
        b.clusters.retain(|_, s| {
            s.slots.prune(sec);
            s.gauges_flush + 1 >= flush_no || !s.slots.is_empty_at(sec)
        });
    }

    /// One load report on stream `id`.
    pub fn load(&mut self, id: StreamId, report: &LoadReport, now: Instant) {
        let sec = self.sec(now);
        let now_ms = self.ms(now);
        let limits = self.limits;
        let Aggregator {
            streams, dropped, ..
        } = self;
        let Some(stream) = streams.get_mut(&id) else {
            return;
        };
        stream.last_seen = now;
        stream.messages += 1;
        stream.bytes.add(sec, &(report.wire_bytes as f64));
        let Body::Load(b) = &mut stream.body else {
            return;
        };
        if let Some(p) = report
            .period
            .filter(|p| !p.is_zero() && *p <= MAX_LOAD_PERIOD)
        {
            stream.periods.add(sec, &p.as_secs_f64());
            let from = now_ms.saturating_sub(u64::try_from(p.as_millis()).unwrap_or(u64::MAX));
            stream.covers_from.add(sec, &Earliest(from));
        }
        // Every cluster Envoy has is in every report; an endpoint with nothing in progress may
        // be left out. Either way, what is not in the report has nothing in flight.
        for series in b.clusters.values_mut().flat_map(|c| c.values_mut()) {
            series.in_progress = 0;
        }
        for cluster in &report.clusters {
            if !b.clusters.contains_key(&cluster.cluster)
                && b.clusters.len() >= limits.max_clusters_per_stream
            {
                dropped.clusters += 1;
                continue;
            }
            let endpoints = b.clusters.entry(cluster.cluster.clone()).or_default();
            for e in &cluster.endpoints {
                let series = match endpoints.get_mut(&e.address) {
                    Some(s) => s,
                    None if b.endpoints < limits.max_endpoints_per_stream => {
                        b.endpoints += 1;
                        endpoints.entry(e.address.clone()).or_default()
                    }
                    None => {
                        dropped.endpoints += 1;
                        continue;
                    }
                };
                series.in_progress = e.in_progress;
                let counts = EndpointCounts {
                    succeeded: e.succeeded,
                    failed: e.failed,
                };
                if counts != EndpointCounts::default() {
                    series.slots.add(sec, &counts);
                }
            }
        }
        let mut kept = 0;
        for endpoints in b.clusters.values_mut() {
            endpoints.retain(|_, s| {
                s.slots.prune(sec);
                s.in_progress > 0 || !s.slots.is_empty_at(sec)
            });
            kept += endpoints.len();
        }
        b.clusters.retain(|_, e| !e.is_empty());
        b.endpoints = kept;
    }

    /// Whether a stream still speaks for its Envoy: it reported within `stale_after`, or
    /// within three of the intervals load reports are asked for now.
    fn fresh(&self, s: &Stream, now: Instant) -> bool {
        let after = match s.body {
            Body::Load(_) => self.limits.stale_after.max(3 * self.load_interval()),
            Body::Stats(_) => self.limits.stale_after,
        };
        now.saturating_duration_since(s.last_seen) < after
    }

    /// Every figure at `now`.
    pub fn report(&self, now: Instant) -> TelemetryReport {
        let sec = self.sec(now);
        let mut acc: BTreeMap<ClusterId, VersionAcc> = BTreeMap::new();
        for s in self.streams.values().filter(|s| self.fresh(s, now)) {
            match &s.body {
                Body::Stats(b) => {
                    for window in Window::ALL {
                        let period = s.periods.sum(window, sec);
                        for (id, part) in b.parts(|slots| slots.sum(window, sec)) {
                            acc.entry(id).or_default().window(window).add(&part, period);
                        }
                    }
                    for (id, series) in &b.clusters {
                        let ClusterRef::Version(id) = id else {
                            continue;
                        };
                        if series.gauges_flush + 1 < b.flush {
                            continue;
                        }
                        let v = acc.entry(id.clone()).or_default();
                        let g = &series.gauges;
                        v.envoys.insert(s.node.id.clone());
                        v.in_flight += g.in_flight;
                        v.ejected += g.ejected;
                        if let (Some(healthy), Some(total)) = (g.healthy, g.members) {
                            let m = v.membership.get_or_insert_with(Membership::default);
                            m.healthy += healthy;
                            m.total += total;
                        }
                    }
                }
                Body::Load(b) => {
                    for (id, endpoints) in &b.clusters {
                        let v = acc.entry(id.clone()).or_default();
                        for (address, series) in endpoints {
                            let e = v.endpoints.entry(address.clone()).or_default();
                            e.in_flight += series.in_progress;
                            if series.in_progress > 0 {
                                *e.in_flight_by_node.entry(s.node.id.clone()).or_default() +=
                                    series.in_progress;
                            }
                            for window in Window::ALL {
                                let period = s.periods.sum(window, sec);
                                let c = series.slots.sum(window, sec);
                                let w = &mut e.windows[window as usize];
                                w.succeeded += c.succeeded;
                                w.failed += c.failed;
                                if period > 0.0 {
                                    w.per_second += (c.succeeded + c.failed) as f64 / period;
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut report = TelemetryReport {
            nodes: self.nodes(now),
            dropped: self.dropped,
            load_reporting_interval_seconds: self.load_interval().as_secs(),
            ..Default::default()
        };
        for (ClusterId { service, version }, v) in acc {
            report
                .services
                .entry(service)
                .or_default()
                .insert(version, v.finish());
        }
        report
    }

    /// One version's figures over the last `last` before `now` (the short window at most),
    /// counting only what Envoys reported of that time: a stats flush whose period began
    /// earlier is left out (its counters may hold requests from before), so the figures lag by
    /// up to one flush interval. With the latency histogram the figures' p99 comes from.
    pub fn recent_figures(
        &self,
        id: &ClusterId,
        last: Duration,
        now: Instant,
    ) -> (WindowFigures, Histogram) {
        let sec = self.sec(now);
        let from = self
            .ms(now)
            .saturating_sub(u64::try_from(last.as_millis()).unwrap_or(u64::MAX));
        let mut acc = WindowAcc::default();
        for s in self.streams.values().filter(|s| self.fresh(s, now)) {
            let Body::Stats(b) = &s.body else { continue };
            let after = |i| s.covers_from.short_slot(i).is_some_and(|e| e.0 >= from);
            let period = s.periods.sum_short_where(sec, after);
            for (version, part) in b.parts(|slots| slots.sum_short_where(sec, after)) {
                if version == *id {
                    acc.add(&part, period);
                }
            }
        }
        let latency = acc.sum.latency.clone();
        (acc.finish(), latency)
    }

    /// The calls of one version that its endpoints finished over the last `last` before `now`
    /// (the short window at most), succeeded and failed, from the load reports and as
    /// [`Aggregator::recent_figures`] counts: only reports whose period began after it. For
    /// gRPC, Envoy counts a call as failed on its `grpc-status` (one that maps to a 5xx:
    /// `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DEADLINE_EXCEEDED`…), which its HTTP status (200)
    /// does not show.
    pub fn recent_calls(&self, id: &ClusterId, last: Duration, now: Instant) -> (u64, u64) {
        let sec = self.sec(now);
        let from = self
            .ms(now)
            .saturating_sub(u64::try_from(last.as_millis()).unwrap_or(u64::MAX));
        let mut sum = EndpointCounts::default();
        for s in self.streams.values().filter(|s| self.fresh(s, now)) {
            let Body::Load(b) = &s.body else { continue };
            let after = |i| s.covers_from.short_slot(i).is_some_and(|e| e.0 >= from);
            for series in b.clusters.get(id).into_iter().flat_map(BTreeMap::values) {
                sum.merge(&series.slots.sum_short_where(sec, after));
            }
        }
        (sum.succeeded, sum.failed)
    }

    fn nodes(&self, now: Instant) -> Vec<NodeTelemetry> {
        let mut by_id: BTreeMap<&str, NodeTelemetry> = BTreeMap::new();
        for s in self.streams.values() {
            let node = by_id.entry(&s.node.id).or_insert_with(|| NodeTelemetry {
                id: s.node.id.clone(),
                cluster: s.node.cluster.clone(),
                stats_sink: None,
                load_reporting: None,
            });
            let (slot, families) = match &s.body {
                Body::Stats(b) => (&mut node.stats_sink, Some(b.families)),
                Body::Load(_) => (&mut node.load_reporting, None),
            };
            let connected = now.saturating_duration_since(s.opened_at).as_secs_f64();
            let ago = now.saturating_duration_since(s.last_seen).as_secs_f64();
            let stale = !self.fresh(s, now);
            // Over the short window, or since connected if that is shorter.
            let bytes_per_second =
                s.bytes.sum(Window::Short, self.sec(now)) / connected.clamp(1.0, 10.0);
            match slot {
                None => {
                    *slot = Some(StreamStatus {
                        streams: 1,
                        connected_seconds: round(connected, 1),
                        last_message_seconds_ago: round(ago, 1),
                        stale,
                        messages: s.messages,
                        bytes_per_second: round(bytes_per_second, 1),
                        metric_families_per_flush: families,
                    })
                }
                Some(st) => {
                    st.streams += 1;
                    st.connected_seconds = st.connected_seconds.max(round(connected, 1));
                    st.last_message_seconds_ago = st.last_message_seconds_ago.min(round(ago, 1));
                    st.stale &= stale;
                    st.messages += s.messages;
                    st.bytes_per_second = round(st.bytes_per_second + bytes_per_second, 1);
                    st.metric_families_per_flush = st
                        .metric_families_per_flush
                        .zip(families)
                        .map(|(a, b)| a.max(b));
                }
            }
        }
        by_id.into_values().collect()
    }

    /// Requests in flight per node and endpoint, from load reports.
    /// Per Envoy with a fresh stats sink: what its latest flush said of `id`'s endpoints
    /// (`cutover wait healthy`). Envoys whose latest flush does not mention `id` are absent.
    pub fn health(&self, id: &ClusterId, now: Instant) -> Vec<NodeHealth> {
        let key = ClusterRef::Version(id.clone());
        let mut out = Vec::new();
        for s in self.streams.values().filter(|s| self.fresh(s, now)) {
            let Body::Stats(b) = &s.body else { continue };
            let (Some(series), Some(at)) = (b.clusters.get(&key), b.last_arrival) else {
                continue;
            };
            if series.gauges_flush != b.flush {
                continue;
            }
            let g = &series.gauges;
            out.push(NodeHealth {
                node: s.node.id.clone(),
                reported_at: at,
                healthy: g.healthy.unwrap_or(0),
                total: g.members.unwrap_or(0),
                in_flight: g.in_flight,
            });
        }
        out
    }

    pub fn in_flight(&self, now: Instant) -> InFlight {
        let mut out = InFlight::default();
        for s in self.streams.values() {
            let node = out.nodes.entry(s.node.id.clone()).or_default();
            let Body::Load(b) = &s.body else { continue };
            if !self.fresh(s, now) {
                continue;
            }
            node.load_reporting = true;
            node.reported_at = node.reported_at.max(Some(s.last_seen));
            for (id, endpoints) in &b.clusters {
                for (address, series) in endpoints.iter().filter(|(_, e)| e.in_progress > 0) {
                    node.endpoints.push(EndpointInFlight {
                        service: id.service.clone(),
                        version: id.version.clone(),
                        address: address.clone(),
                        requests: series.in_progress,
                    });
                }
            }
        }
        out
    }
}

/// Figures of one window of one Envoy's cluster, possibly a share of an aggregate's.
#[derive(Debug, Clone, Default, PartialEq)]
struct Part {
    completed: f64,
    http_5xx: f64,
    timeouts: f64,
    resets: f64,
    connect_failures: f64,
    /// Streams the endpoints were asked for: requests and their retries, or TCP connections.
    attempts: f64,
    latency: Histogram,
}

impl Part {
    /// `share` of the router's figures of `s` (those the route's cluster gets).
    fn routed(s: &Sample, share: f64) -> Part {
        let mut latency = Histogram::default();
        if let Some(l) = &s.latency {
            latency.add_scaled(&l.0, share);
        }
        Part {
            completed: s.counters.completed() as f64 * share,
            http_5xx: s.counters.classes[4] as f64 * share,
            timeouts: s.counters.timeouts as f64 * share,
            resets: 0.0,
            connect_failures: 0.0,
            attempts: 0.0,
            latency,
        }
    }
}

/// Splits one Envoy's per-cluster sums over a window into figures per version: each figure
/// goes to the version whose endpoint served the request.
///
/// Measured with Envoy 1.40: the router counts responses (`upstream_rq_<class>`), timeouts and
/// latency (`upstream_rq_time`) on the cluster the route names, so for traffic through the
/// aggregate `<service>/<primary>~<fallback>` on the aggregate; the connection pool counts
/// streams (`upstream_rq_total`), resets, connect failures and gauges on the cluster of the
/// endpoint, a version. The aggregate does not switch all at once: with part of the primary's
/// endpoints healthy, Envoy sends it a share (priority load, overprovisioning factor 1.4) and
/// the rest to the fallback. So an aggregate's router figures are split in the proportion in
/// which its versions took its requests: the primary took its connection-pool streams minus the
/// requests routed to it directly; the fallback took the rest.
fn attribute(sums: &BTreeMap<&ClusterRef, Sample>) -> Vec<(ClusterId, Part)> {
    let mut out = Vec::new();
    // Requests routed through aggregates, by primary.
    let mut through: BTreeMap<ClusterId, f64> = BTreeMap::new();
    for (id, s) in sums {
        match id {
            ClusterRef::Version(id) => {
                let mut part = Part::routed(s, 1.0);
                part.resets = s.counters.resets as f64;
                part.connect_failures = s.counters.connect_failures as f64;
                part.attempts = s.counters.attempts as f64;
                out.push((id.clone(), part));
            }
            ClusterRef::Fallback(f) => {
                *through.entry(f.primary()).or_default() += s.counters.completed() as f64;
            }
        }
    }
    for (id, s) in sums {
        let ClusterRef::Fallback(f) = id else {
            continue;
        };
        let primary = f.primary();
        let total = through.get(&primary).copied().unwrap_or(0.0);
        let share = match sums.get(&ClusterRef::Version(primary.clone())) {
            Some(p) if total > 0.0 => {
                let direct = p.counters.completed() as f64;
                ((p.counters.attempts as f64 - direct) / total).clamp(0.0, 1.0)
            }
            // Without figures of the primary, assume it served: it does while it is healthy.
            _ => 1.0,
        };
        out.push((primary, Part::routed(s, share)));
        if share < 1.0 {
            out.push((f.secondary(), Part::routed(s, 1.0 - share)));
        }
    }
    out
}

#[derive(Debug, Default)]
struct VersionAcc {
    envoys: BTreeSet<String>,
    windows: [WindowAcc; 2],
    in_flight: u64,
    ejected: u64,
    membership: Option<Membership>,
    endpoints: BTreeMap<String, EndpointAcc>,
}

impl VersionAcc {
    fn window(&mut self, w: Window) -> &mut WindowAcc {
        &mut self.windows[w as usize]
    }

    fn finish(self) -> VersionTelemetry {
        let [short, long] = self.windows;
        VersionTelemetry {
            envoys: self.envoys.len(),
            last_10s: short.finish(),
            last_1m: long.finish(),
            in_flight: self.in_flight,
            membership: self.membership,
            ejections_active: self.ejected,
            endpoints: self
                .endpoints
                .into_iter()
                .map(|(address, e)| (address, e.finish()))
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct WindowAcc {
    sum: Part,
    per_second: f64,
    attempts_per_second: f64,
}

impl WindowAcc {
    /// Adds one Envoy's part, which stands for `period` seconds of that Envoy.
    fn add(&mut self, part: &Part, period: f64) {
        let s = &mut self.sum;
        s.completed += part.completed;
        s.http_5xx += part.http_5xx;
        s.timeouts += part.timeouts;
        s.resets += part.resets;
        s.connect_failures += part.connect_failures;
        s.attempts += part.attempts;
        s.latency.add(&part.latency);
        if period > 0.0 {
            self.per_second += part.completed / period;
            self.attempts_per_second += part.attempts / period;
        }
    }

    fn finish(self) -> WindowFigures {
        let s = self.sum;
        let error_rate = (s.completed > 0.0).then(|| (s.http_5xx / s.completed).clamp(0.0, 1.0));
        WindowFigures {
            requests: count(s.completed),
            attempts: count(s.attempts),
            attempts_per_second: round(self.attempts_per_second, 2),
            requests_per_second: round(self.per_second, 2),
            success_rate: error_rate.map(|e| round(1.0 - e, 4)),
            error_rate: error_rate.map(|e| round(e, 4)),
            errors: ErrorCounts {
                http_5xx: count(s.http_5xx),
                timeouts: count(s.timeouts),
                resets: count(s.resets),
                connect_failures: count(s.connect_failures),
            },
            latency_ms: s.latency.quantiles(),
        }
    }
}

#[derive(Debug, Default)]
struct EndpointAcc {
    in_flight: u64,
    in_flight_by_node: BTreeMap<String, u64>,
    windows: [EndpointWindowAcc; 2],
}

#[derive(Debug, Default)]
struct EndpointWindowAcc {
    succeeded: u64,
    failed: u64,
    per_second: f64,
}

impl EndpointAcc {
    fn finish(self) -> EndpointTelemetry {
        let [short, long] = self.windows.map(|w| {
            let requests = w.succeeded + w.failed;
            EndpointWindow {
                requests,
                requests_per_second: round(w.per_second, 2),
                error_rate: (requests > 0).then(|| round(w.failed as f64 / requests as f64, 4)),
            }
        });
        EndpointTelemetry {
            in_flight: self.in_flight,
            in_flight_by_node: self.in_flight_by_node,
            last_10s: short,
            last_1m: long,
        }
    }
}

// Both kinds of histogram have one count per bucket.
const _: () = assert!(LATENCY_BUCKETS == stats::LATENCY_BOUNDS_MS.len() + 1);

#[cfg(test)]
mod tests;
