//! The core fed synthetic messages at chosen instants: windows, first flushes, batches,
//! aggregate clusters, caps, staleness and forgetting.

use super::*;
use crate::telemetry::lrs::{ClusterLoad, EndpointLoad};
use crate::telemetry::stats::{ClusterStats, LATENCY_BOUNDS_MS};

struct Clock {
    epoch: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(secs)
    }

    fn aggregator(&self, limits: Limits) -> Aggregator {
        Aggregator::new(limits, self.epoch)
    }
}

fn node(id: &str) -> NodeKey {
    NodeKey::new(id, "edge")
}

/// A cluster whose endpoints answered `ok` 2xx and `failed` 5xx, all routed to it directly.
fn served(ok: u64, failed: u64) -> ClusterStats {
    ClusterStats {
        counters: Counters {
            classes: [0, ok, 0, 0, failed],
            attempts: ok + failed,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Router figures only: what an aggregate cluster gets.
fn routed(ok: u64, failed: u64, latency_ms: f64) -> ClusterStats {
    let mut latency = Latency::default();
    let i = LATENCY_BOUNDS_MS
        .iter()
        .position(|b| *b >= latency_ms)
        .unwrap();
    latency.0[i] = ok + failed;
    ClusterStats {
        counters: Counters {
            classes: [0, ok, 0, 0, failed],
            ..Default::default()
        },
        latency: Some(latency),
        ..Default::default()
    }
}

/// Connection-pool figures only: streams the endpoints of a version got.
fn streams(n: u64) -> ClusterStats {
    ClusterStats {
        counters: Counters {
            attempts: n,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn flush(second: u64, clusters: &[(&str, ClusterStats)]) -> StatsFlush {
    StatsFlush {
        snapshot_ms: Some(1_700_000_000_000 + 1000 * i64::try_from(second).unwrap()),
        clusters: clusters
            .iter()
            .map(|(n, c)| (ClusterRef::parse(n).expect("a cluster name"), c.clone()))
            .collect(),
        families: 10 * clusters.len(),
        wire_bytes: 100,
    }
}

/// A stats stream of `id` that flushes `clusters` every second from second 0 to `last`.
fn steady(
    agg: &mut Aggregator,
    clock: &Clock,
    id: &str,
    last: u64,
    clusters: &[(&str, ClusterStats)],
) -> StreamId {
    let s = agg
        .open(Source::StatsSink, node(id), clock.at(0.0))
        .unwrap();
    for i in 0..=last {
        agg.stats(s, &flush(i, clusters), clock.at(i as f64 + 0.5));
    }
    s
}

#[test]
fn rates_over_ten_seconds_and_a_minute_and_the_first_flush_is_not_counted() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    steady(
        &mut agg,
        &clock,
        "edge-1",
        30,
        &[("checkout/v1", served(9, 1))],
    );
    let r = agg.report(clock.at(30.6));
    let v1 = r.version("checkout", "v1").unwrap();
    assert_eq!(v1.envoys, 1);
    // Flushes at 21.5 ..= 30.5.
    assert_eq!(v1.last_10s.requests, 100);
    assert_eq!(v1.last_10s.requests_per_second, 10.0);
    assert_eq!(v1.last_10s.error_rate, Some(0.1));
    assert_eq!(v1.last_10s.success_rate, Some(0.9));
    assert_eq!(v1.last_10s.errors.http_5xx, 10);
    // Seconds 0 ..= 30: 31 flushes, the first of which covers an unknown time.
    assert_eq!(v1.last_1m.requests, 300);
    assert_eq!(v1.last_1m.requests_per_second, 10.0);
    assert_eq!(v1.last_1m.latency_ms, None, "no histogram, no latency");
}

#[test]
fn a_new_stream_shows_its_rate_after_one_flush_interval() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let s = steady(
        &mut agg,
        &clock,
        "edge-1",
        0,
        &[("checkout/v1", served(500, 0))],
    );
    let r = agg.report(clock.at(0.6));
    let v1 = r.version("checkout", "v1").unwrap();
    assert_eq!(v1.envoys, 1, "it reports");
    assert_eq!(
        v1.last_10s.requests, 0,
        "since Envoy started, over an unknown time"
    );
    assert_eq!(v1.last_10s.error_rate, None);
    agg.stats(
        s,
        &flush(1, &[("checkout/v1", served(20, 0))]),
        clock.at(1.5),
    );
    let v1 = agg.report(clock.at(1.6)).services["checkout"]["v1"].clone();
    assert_eq!(v1.last_10s.requests_per_second, 20.0, "one second covered");
}

#[test]
fn batches_of_one_flush_count_its_period_once() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let s = agg
        .open(Source::StatsSink, node("edge-1"), clock.at(0.0))
        .unwrap();
    agg.stats(s, &flush(0, &[]), clock.at(0.1));
    for batch in [("checkout/v1", served(6, 0)), ("checkout/v2", served(4, 0))] {
        agg.stats(s, &flush(1, &[batch]), clock.at(1.1));
    }
    let r = agg.report(clock.at(1.2));
    assert_eq!(
        r.version("checkout", "v1")
            .unwrap()
            .last_10s
            .requests_per_second,
        6.0
    );
    assert_eq!(
        r.version("checkout", "v2")
            .unwrap()
            .last_10s
            .requests_per_second,
        4.0
    );
}

#[test]
fn an_aggregate_cluster_counts_for_the_version_that_served() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    // The canary takes everything through its aggregate: 100 requests, 10% 5xx, 200 ms; the
    // stable version gets 400 routed to it directly.
    steady(
        &mut agg,
        &clock,
        "edge-1",
        1,
        &[
            ("checkout/v2~v1", routed(90, 10, 200.0)),
            ("checkout/v2", streams(100)),
            ("checkout/v1", served(400, 0)),
        ],
    );
    let r = agg.report(clock.at(1.6));
    let (v1, v2) = (
        r.version("checkout", "v1").unwrap(),
        r.version("checkout", "v2").unwrap(),
    );
    assert_eq!(v2.last_10s.requests, 100);
    assert_eq!(v2.last_10s.error_rate, Some(0.1));
    let p99 = v2.last_10s.latency_ms.unwrap().p99;
    assert!((175.0..=200.0).contains(&p99), "{p99}");
    assert_eq!(v1.last_10s.requests, 400);
    assert_eq!(v1.last_10s.error_rate, Some(0.0));
    assert_eq!(v1.last_10s.latency_ms, None);
    assert!(
        !r.services["checkout"].contains_key("v2~v1"),
        "an aggregate is not a version"
    );
}

#[test]
fn an_aggregate_that_spills_is_split_in_the_proportion_each_version_served() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    // Half the canary's endpoints are ejected: Envoy sends 70% of the aggregate's requests to
    // it and 30% to stable, which also gets 400 directly.
    steady(
        &mut agg,
        &clock,
        "edge-1",
        1,
        &[
            ("checkout/v2~v1", routed(100, 0, 20.0)),
            ("checkout/v2", streams(70)),
            ("checkout/v1", {
                let mut s = served(400, 0);
                s.counters.attempts += 30;
                s
            }),
        ],
    );
    let r = agg.report(clock.at(1.6));
    assert_eq!(r.version("checkout", "v2").unwrap().last_10s.requests, 70);
    assert_eq!(r.version("checkout", "v1").unwrap().last_10s.requests, 430);
    assert!(
        r.version("checkout", "v1")
            .unwrap()
            .last_10s
            .latency_ms
            .is_some(),
        "stable gets its share of the aggregate's latency"
    );
}

#[test]
fn resets_and_connect_failures_count_on_the_version_of_the_endpoint() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let mut v2 = streams(10);
    v2.counters.resets = 2;
    v2.counters.connect_failures = 1;
    steady(
        &mut agg,
        &clock,
        "edge-1",
        1,
        &[("checkout/v2~v1", routed(8, 2, 5.0)), ("checkout/v2", v2)],
    );
    let e = &agg.report(clock.at(1.6)).services["checkout"]["v2"]
        .last_10s
        .errors;
    assert_eq!(
        (e.http_5xx, e.resets, e.connect_failures, e.timeouts),
        (2, 2, 1, 0)
    );
}

#[test]
fn gauges_add_up_across_envoys_and_an_envoy_that_leaves_takes_its_figures_along() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let gauges = ClusterStats {
        in_flight: Some(3),
        healthy: Some(1),
        members: Some(2),
        ejected: Some(1),
        ..served(10, 0)
    };
    let a = steady(
        &mut agg,
        &clock,
        "edge-1",
        5,
        &[("checkout/v1", gauges.clone())],
    );
    steady(&mut agg, &clock, "edge-2", 5, &[("checkout/v1", gauges)]);
    let v1 = agg.report(clock.at(5.6)).services["checkout"]["v1"].clone();
    assert_eq!(v1.envoys, 2);
    assert_eq!(v1.last_10s.requests_per_second, 20.0);
    assert_eq!(v1.in_flight, 6);
    assert_eq!(v1.ejections_active, 2);
    assert_eq!(
        v1.membership,
        Some(Membership {
            healthy: 2,
            total: 4
        })
    );

    agg.close(a);
    let r = agg.report(clock.at(5.7));
    let v1 = &r.services["checkout"]["v1"];
    assert_eq!(v1.envoys, 1);
    assert_eq!(v1.last_10s.requests_per_second, 10.0);
    assert_eq!(v1.in_flight, 3);
    assert_eq!(
        r.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["edge-2"]
    );
}

#[test]
fn a_silent_stream_is_left_out_until_it_speaks() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let s = steady(
        &mut agg,
        &clock,
        "edge-1",
        3,
        &[("checkout/v1", served(10, 0))],
    );
    let quiet = agg.report(clock.at(3.5 + 10.0));
    assert!(quiet.services.is_empty(), "{quiet:?}");
    assert!(quiet.nodes[0].stats_sink.as_ref().unwrap().stale);
    agg.stats(
        s,
        &flush(14, &[("checkout/v1", served(10, 0))]),
        clock.at(14.5),
    );
    let back = agg.report(clock.at(14.6));
    assert!(!back.nodes[0].stats_sink.as_ref().unwrap().stale);
    assert_eq!(back.services["checkout"]["v1"].envoys, 1);
    // Counted over the 11 s it covers: Envoy's deltas since its previous flush.
    assert_eq!(back.services["checkout"]["v1"].last_10s.requests, 10);
    assert_eq!(
        back.services["checkout"]["v1"].last_10s.requests_per_second,
        0.91
    );
}

#[test]
fn a_cluster_envoy_removed_goes_once_nothing_of_it_is_in_a_window() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let s = steady(
        &mut agg,
        &clock,
        "edge-1",
        2,
        &[
            ("checkout/v1", served(5, 0)),
            (
                "checkout/v2",
                ClusterStats {
                    in_flight: Some(4),
                    ..served(5, 0)
                },
            ),
        ],
    );
    for i in 3..70 {
        agg.stats(
            s,
            &flush(i, &[("checkout/v1", served(5, 0))]),
            clock.at(i as f64 + 0.5),
        );
        if i == 4 {
            let v2 = agg.report(clock.at(4.6)).services["checkout"]["v2"].clone();
            assert_eq!(v2.in_flight, 0, "no gauges from a cluster gone two flushes");
            assert_eq!(v2.envoys, 0);
            assert_eq!(
                v2.last_10s.requests, 10,
                "its requests are still in the window"
            );
        }
    }
    let r = agg.report(clock.at(69.6));
    assert!(!r.services["checkout"].contains_key("v2"));
    let Body::Stats(b) = &agg.streams[&s].body else {
        panic!("a stats stream")
    };
    assert_eq!(b.clusters.len(), 1, "forgotten inside too");
}

#[test]
fn caps_count_what_they_drop() {
    let clock = Clock::new();
    let limits = Limits {
        max_streams: 2,
        max_clusters_per_stream: 2,
        max_endpoints_per_stream: 1,
        ..Limits::default()
    };
    let mut agg = clock.aggregator(limits);
    steady(
        &mut agg,
        &clock,
        "edge-1",
        1,
        &[
            ("s/a", served(1, 0)),
            ("s/b", served(1, 0)),
            ("s/c", served(1, 0)),
        ],
    );
    let lrs = agg
        .open(Source::LoadReports, node("edge-1"), clock.at(0.0))
        .unwrap();
    agg.load(
        lrs,
        &LoadReport {
            period: Some(Duration::from_secs(1)),
            clusters: vec![cluster_load(
                "s/a",
                &[("127.0.0.1:1", 1, 0, 1), ("127.0.0.1:2", 1, 0, 1)],
            )],
            wire_bytes: 0,
        },
        clock.at(1.0),
    );
    assert_eq!(
        agg.open(Source::StatsSink, node("edge-2"), clock.at(1.0)),
        Err(TooManyStreams(2))
    );
    let r = agg.report(clock.at(1.6));
    assert_eq!(
        r.dropped,
        Dropped {
            streams: 1,
            clusters: 2,
            endpoints: 1
        },
        "s/c in each of two flushes, one endpoint"
    );
    assert_eq!(r.services["s"].keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(r.services["s"]["a"].endpoints.len(), 1);
}

/// (address, succeeded, failed, in progress)
fn cluster_load(name: &str, endpoints: &[(&str, u64, u64, u64)]) -> ClusterLoad {
    let Some(ClusterRef::Version(cluster)) = ClusterRef::parse(name) else {
        panic!("{name} is no version cluster");
    };
    ClusterLoad {
        cluster,
        endpoints: endpoints
            .iter()
            .map(|(address, succeeded, failed, in_progress)| EndpointLoad {
                address: (*address).to_owned(),
                issued: succeeded + failed,
                succeeded: *succeeded,
                failed: *failed,
                in_progress: *in_progress,
            })
            .collect(),
    }
}

fn report(clusters: Vec<ClusterLoad>) -> LoadReport {
    LoadReport {
        period: Some(Duration::from_secs(1)),
        clusters,
        wire_bytes: 50,
    }
}

#[test]
fn load_reports_give_each_endpoint_its_rate_and_requests_in_flight_per_node() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let e1 = agg
        .open(Source::LoadReports, node("edge-1"), clock.at(0.0))
        .unwrap();
    let e2 = agg
        .open(Source::LoadReports, node("edge-2"), clock.at(0.0))
        .unwrap();
    agg.open(Source::StatsSink, node("edge-3"), clock.at(0.0))
        .unwrap();
    for i in 1..=5 {
        let now = clock.at(f64::from(i));
        agg.load(
            e1,
            &report(vec![cluster_load(
                "checkout/v1",
                &[("127.0.0.1:8081", 8, 2, 2), ("127.0.0.1:8082", 10, 0, 0)],
            )]),
            now,
        );
        agg.load(
            e2,
            &report(vec![cluster_load(
                "checkout/v1",
                &[("127.0.0.1:8081", 10, 0, 1)],
            )]),
            now,
        );
    }
    let r = agg.report(clock.at(5.1));
    let e = &r.services["checkout"]["v1"].endpoints["127.0.0.1:8081"];
    assert_eq!(e.in_flight, 3);
    assert_eq!(
        e.in_flight_by_node,
        BTreeMap::from([("edge-1".to_owned(), 2), ("edge-2".to_owned(), 1)])
    );
    assert_eq!(e.last_10s.requests, 100);
    assert_eq!(e.last_10s.requests_per_second, 20.0);
    assert_eq!(e.last_10s.error_rate, Some(0.1));

    let in_flight = agg.in_flight(clock.at(5.1));
    assert_eq!(
        in_flight.to("checkout", Some("v1"), Some("127.0.0.1:8081")),
        BTreeMap::from([("edge-1".to_owned(), 2), ("edge-2".to_owned(), 1)])
    );
    assert!(!in_flight.nodes["edge-3"].load_reporting, "{in_flight:?}");
    assert!(!in_flight.to("checkout", None, None).contains_key("edge-3"));

    // Envoy leaves out an endpoint with nothing to report: nothing in flight there.
    agg.load(
        e1,
        &report(vec![cluster_load(
            "checkout/v1",
            &[("127.0.0.1:8082", 1, 0, 0)],
        )]),
        clock.at(6.0),
    );
    // A report without the cluster (Envoy removed it): nothing in flight there either.
    agg.load(e2, &report(vec![]), clock.at(6.0));
    assert_eq!(
        agg.in_flight(clock.at(6.1)).to("checkout", None, None),
        BTreeMap::from([("edge-1".to_owned(), 0), ("edge-2".to_owned(), 0)])
    );
    assert_eq!(
        agg.report(clock.at(6.1)).services["checkout"]["v1"].endpoints["127.0.0.1:8081"].in_flight,
        0
    );
}

#[test]
fn connected_envoys_without_telemetry_are_named() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    agg.open(Source::LoadReports, node("edge-1"), clock.at(0.0))
        .unwrap();
    let r = agg
        .report(clock.at(0.1))
        .with_connected(["edge-1", "old-envoy", "old-envoy"]);
    assert_eq!(r.nodes_without_telemetry, ["old-envoy"]);
    assert!(r.nodes[0].stats_sink.is_none() && r.nodes[0].load_reporting.is_some());
}

#[test]
fn histogram_quantiles_interpolate_within_buckets() {
    let mut h = Histogram::default();
    let i = |ms: f64| LATENCY_BOUNDS_MS.iter().position(|b| *b == ms).unwrap();
    h.0[i(10.0)] = 90.0; // (5, 10]
    h.0[i(250.0)] = 10.0; // (225, 250]
    let q = h.quantiles().unwrap();
    assert_eq!(q.p50, 7.8, "5 + 5 * 50/90, one decimal");
    assert_eq!(q.p90, 10.0);
    assert_eq!(q.p99, 247.5);
    assert_eq!(Histogram::default().quantiles(), None);
}

#[test]
fn each_stream_shows_what_it_costs() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let s = steady(
        &mut agg,
        &clock,
        "edge-1",
        9,
        &[("checkout/v1", served(1, 0))],
    );
    // A flush in two batches: its families add up.
    agg.stats(
        s,
        &flush(10, &[("checkout/v1", served(1, 0))]),
        clock.at(10.5),
    );
    agg.stats(
        s,
        &flush(10, &[("checkout/v2", served(1, 0))]),
        clock.at(10.5),
    );
    let l = agg
        .open(Source::LoadReports, node("edge-1"), clock.at(0.0))
        .unwrap();
    agg.load(l, &report(vec![]), clock.at(1.0));
    let r = agg.report(clock.at(10.5));
    let sink = r.nodes[0].stats_sink.as_ref().unwrap();
    assert_eq!(sink.messages, 12);
    assert_eq!(sink.metric_families_per_flush, Some(20));
    // Seconds 1 ..= 10 of the short window: 11 messages of 100 bytes, over 10 s.
    assert_eq!(sink.bytes_per_second, 110.0);
    let lrs = r.nodes[0].load_reporting.as_ref().unwrap();
    assert_eq!((lrs.messages, lrs.metric_families_per_flush), (1, None));
}

#[test]
fn recent_figures_leave_out_every_flush_that_began_earlier() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let s = agg
        .open(Source::StatsSink, node("edge-1"), clock.at(0.0))
        .unwrap();
    // Failing until second 5, then healthy: flushes at 0.5, 1.5, ..., 9.5, each for the second
    // before it.
    for i in 0..10 {
        let c = if i <= 5 { served(0, 10) } else { served(10, 0) };
        agg.stats(
            s,
            &flush(i, &[("checkout/v1", c)]),
            clock.at(i as f64 + 0.5),
        );
    }
    let id = ClusterId::new("checkout", "v1");
    let now = clock.at(9.6);
    let last = |secs: u64| agg.recent_figures(&id, Duration::from_millis(secs), now).0;
    let all = agg.report(now);
    let all = &all.version("checkout", "v1").unwrap().last_10s;
    assert_eq!((all.requests, all.errors.http_5xx), (90, 50), "{all:?}");
    assert_eq!(last(10_000), *all, "the whole short window");
    assert_eq!(last(60_000), *all, "never more than the short window");

    // The service was fixed at 5.7 (3.9 s ago): the flush at 6.5 covers 5.5..6.5, which
    // began before; 7.5, 8.5 and 9.5 come after.
    let fresh = last(3_900);
    assert_eq!(
        (fresh.requests, fresh.errors.http_5xx),
        (30, 0),
        "{fresh:?}"
    );
    assert_eq!(fresh.error_rate, Some(0.0));
    assert_eq!(fresh.requests_per_second, 10.0);

    // A flush period that begins exactly then counts.
    assert_eq!(last(3_100).requests, 30);
    // Nothing yet after the latest flush began.
    let none = last(600);
    assert_eq!((none.requests, none.error_rate), (0, None), "{none:?}");
    // Another version has nothing.
    let other = ClusterId::new("checkout", "v2");
    assert_eq!(
        agg.recent_figures(&other, Duration::from_secs(10), now)
            .0
            .requests,
        0
    );
}

/// A gRPC canary is judged on the calls its endpoints finished, from the load reports (where
/// Envoy counts a call failed on its `grpc-status`), and only on reports of the time asked for.
#[test]
fn recent_calls_sum_a_versions_endpoints_over_the_reports_of_the_window() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits::default());
    let e1 = agg
        .open(Source::LoadReports, node("edge-1"), clock.at(0.0))
        .unwrap();
    let e2 = agg
        .open(Source::LoadReports, node("edge-2"), clock.at(0.0))
        .unwrap();
    for i in 1..=6 {
        let now = clock.at(f64::from(i));
        let load = cluster_load(
            "checkout/v2",
            &[("127.0.0.1:8082", 9, 1, 0), ("127.0.0.1:8083", 5, 5, 0)],
        );
        agg.load(e1, &report(vec![load]), now);
        agg.load(
            e2,
            &report(vec![cluster_load(
                "checkout/v2",
                &[("127.0.0.1:8082", 10, 0, 0)],
            )]),
            now,
        );
        agg.load(
            e2,
            &report(vec![cluster_load(
                "checkout/v1",
                &[("127.0.0.1:8081", 7, 7, 0)],
            )]),
            now,
        );
    }
    let v2 = ClusterId::new("checkout", "v2");
    // The last 3 s: the reports at 4, 5 and 6 s (each covering the second before it).
    let (ok, failed) = agg.recent_calls(&v2, Duration::from_secs(3), clock.at(6.0));
    assert_eq!((ok, failed), (3 * (9 + 5 + 10), 3 * (1 + 5)));
    // The short window at most: all six.
    let (ok, failed) = agg.recent_calls(&v2, Duration::from_secs(60), clock.at(6.0));
    assert_eq!((ok, failed), (6 * 24, 6 * 6));
    assert_eq!(
        agg.recent_calls(
            &ClusterId::new("checkout", "v3"),
            Duration::from_secs(3),
            clock.at(6.0)
        ),
        (0, 0)
    );
}

/// Past the budget of load reports a second, the interval asked for grows, and a load
/// reporting stream stays fresh for three of those intervals (a stats stream keeps its own
/// limit); closing streams brings the interval back.
#[test]
fn load_streams_stay_fresh_for_three_of_the_longer_intervals_asked_for() {
    let clock = Clock::new();
    let mut agg = clock.aggregator(Limits {
        load_reports_per_second: 1,
        ..Limits::default()
    });
    assert_eq!(agg.load_interval(), Duration::from_secs(1));
    let loads: Vec<_> = (0..4)
        .map(|i| {
            agg.open(
                Source::LoadReports,
                node(&format!("edge-{i}")),
                clock.at(0.0),
            )
            .unwrap()
        })
        .collect();
    let sink = agg
        .open(Source::StatsSink, node("edge-0"), clock.at(0.0))
        .unwrap();
    assert_eq!(
        agg.load_interval(),
        Duration::from_secs(4),
        "4 reporters, 1 a second"
    );
    let fresh = |agg: &Aggregator, secs: f64| {
        let at = clock.at(secs);
        let load = agg.fresh(&agg.streams[&loads[0]], at);
        let stats = agg.fresh(&agg.streams[&sink], at);
        (load, stats)
    };
    assert_eq!(fresh(&agg, 11.0), (true, false));
    assert_eq!(fresh(&agg, 12.5), (false, false));
    for id in &loads[1..] {
        agg.close(*id);
    }
    assert_eq!(agg.load_interval(), Duration::from_secs(1));
    assert_eq!(fresh(&agg, 11.0), (false, false), "10 s again");
    agg.close(sink);
    assert_eq!(agg.load_interval(), Duration::from_secs(1));
}
