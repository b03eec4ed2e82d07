//! Telemetry with a real Envoy and real upstreams: what cutover's `/telemetry` says about each
//! version matches what the upstreams actually did. Envoy flushes stats and load reports every
//! second, so each check waits a few seconds at most; every load is a fixed number of requests.

use std::time::Duration;

use cutover::api::TelemetryState;
use cutover::checkout_head;
use cutover::telemetry::TelemetryReport;
use cutover::telemetry::report::{Membership, Quantiles, VersionTelemetry};
use cutover::testing::{Envoy, NODE, Scenario, WAIT, envoy_binary, wait_for};

/// The figures of one version in `/telemetry`, or why there are none yet.
fn version<'a>(
    t: &'a TelemetryReport,
    service: &str,
    version: &str,
) -> Result<&'a VersionTelemetry, String> {
    t.version(service, version)
        .ok_or_else(|| format!("no figures for {service}/{version} yet: {t:?}"))
}

/// The latency quantiles of a window with requests.
fn latency(v: &VersionTelemetry) -> Quantiles {
    v.last_1m
        .latency_ms
        .unwrap_or_else(|| panic!("no latency: {v:?}"))
}

/// Waits until the stats sink of `node` has flushed twice (its first flush is not counted), so
/// that every request from now on is counted.
async fn wait_counting(s: &Scenario, node: &str) {
    wait_for(WAIT, "the stats sink to report twice", async || {
        let t = s.cutover.telemetry().await?;
        let connected = t
            .nodes
            .iter()
            .find(|n| n.id == node)
            .and_then(|n| n.stats_sink.as_ref())
            .map_or(0.0, |sink| sink.connected_seconds);
        if connected >= 1.5 {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
}

const CANARY: &str = concat!(
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}] }
      v2: { endpoints: [${v2-1}] }
    strategy:
      canary: { stable: v1, canary: v2, weight: 10 }
    outlier_detection: { enabled: false }
",
);

/// Stable fails 10% of its requests; the canary, reached through its aggregate cluster
/// `checkout/v2~v1`, answers after 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_and_latency_are_measured_per_version_through_the_canary_aggregate() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["v1-1", "v2-1"], CANARY).await;
    let (stable, canary) = (s.upstream("v1-1"), s.upstream("v2-1"));
    wait_counting(&s, NODE).await;
    let before = s.cutover.telemetry().await.unwrap();
    let counted =
        |t: &TelemetryReport, v: &str| version(t, "checkout", v).map_or(0, |x| x.last_1m.requests);
    let errors =
        |t: &TelemetryReport| version(t, "checkout", "v1").map_or(0, |x| x.last_1m.errors.http_5xx);
    let (stable_hits, canary_hits) = (stable.hits(), canary.hits());
    stable.set_failure_share(0.1);
    canary.set_delay(Duration::from_millis(200));

    const N: usize = 1000;
    let replies = s.envoy.replies(N, "/", &[]).await;
    let served_by_stable = stable.hits() - stable_hits;
    let failed = stable.failed();
    assert_eq!(
        replies.iter().filter(|r| r.status == 500).count(),
        failed,
        "every 500 came from the stable upstream"
    );
    assert!(
        served_by_stable > 800 && canary.hits() - canary_hits > 50,
        "a 90/10 split of {N}: {served_by_stable} to stable"
    );

    // Every request counted, each on the version that served it, none on the aggregate.
    let t = wait_for(WAIT, "telemetry to count every request", async || {
        let t = s.cutover.telemetry().await?;
        let stable_counted = counted(&t, "v1") - counted(&before, "v1");
        let canary_counted = counted(&t, "v2") - counted(&before, "v2");
        if stable_counted == served_by_stable as u64
            && canary_counted == (canary.hits() - canary_hits) as u64
        {
            Ok(t)
        } else {
            Err(format!(
                "stable {stable_counted} of {served_by_stable}, canary {canary_counted}: {t:?}"
            ))
        }
    })
    .await;
    assert!(t.version("checkout", "v2~v1").is_none(), "{t:?}");
    assert_eq!(errors(&t) - errors(&before), failed as u64, "{t:?}");

    // The upstream failed each request with probability 0.1, independently: the error rate over
    // n ≈ 900 requests is binomial, with a standard deviation of sqrt(0.1 × 0.9 / n) ≈ 0.01.
    // Four of them (a false alarm about once in 16,000 runs), plus the few requests of the
    // scenario's start-up that are in the window and did not fail.
    let v1 = version(&t, "checkout", "v1").unwrap();
    let n = v1.last_1m.requests as f64;
    let tolerance = 4.0 * (0.1f64 * 0.9 / n).sqrt() + 0.005;
    let rate = v1.last_1m.error_rate.expect("an error rate");
    assert!(
        (rate - 0.1).abs() <= tolerance,
        "stable's error rate {rate} is not within {tolerance:.3} of 10% over {n} requests: {v1:?}"
    );
    assert!(latency(v1).p50 < 50.0, "{v1:?}");

    // 200 ms plus Envoy's and the upstream's own time is 200 to 209 ms, which Envoy counts in
    // the bucket (175, 200]: the quantiles are interpolated within it.
    let v2 = version(&t, "checkout", "v2").unwrap();
    assert_eq!(v2.last_1m.error_rate, Some(0.0), "{v2:?}");
    for (q, ms) in [("p50", latency(v2).p50), ("p99", latency(v2).p99)] {
        assert!(
            ms > 175.0 && ms <= 250.0,
            "the canary's {q} {ms} ms shows its 200 ms: {v2:?}"
        );
    }
    assert_eq!(v2.envoys, 1);
}

/// The observed split in `/status` is where the requests went, `/metrics` exports it per
/// version (and nothing for the aggregate cluster), and `cutover status` prints it next to the
/// configured split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observed_split_in_status_and_metrics_is_where_requests_went() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["v1-1", "v2-1"], CANARY).await;
    wait_counting(&s, NODE).await;
    let (stable, canary) = (s.upstream("v1-1"), s.upstream("v2-1"));
    let (stable_hits, canary_hits) = (stable.hits(), canary.hits());
    s.envoy.replies(400, "/", &[]).await;
    let served = [stable.hits() - stable_hits, canary.hits() - canary_hits];
    let canary_share = served[1] as f64 * 100.0 / (served[0] + served[1]) as f64;
    let observed = wait_for(WAIT, "/status to count the requests", async || {
        let mut status = s.cutover.try_status().await?;
        let o = status
            .services
            .get_mut("checkout")
            .and_then(|c| c.observed.take());
        let rps = o.as_ref().map_or(0.0, |o| o.requests_per_second);
        let v2_share = o.as_ref().and_then(|o| o.versions.get("v2")?.share_10s);
        // Every request of the batch is in the last 10 s' rate once it is counted.
        match o {
            Some(o) if rps * 10.0 >= 400.0 && v2_share.is_some() => Ok(o),
            _ => Err(format!("{status:?}")),
        }
    })
    .await;
    let version = |v: &str| {
        observed
            .versions
            .get(v)
            .unwrap_or_else(|| panic!("{v} observed: {observed:?}"))
    };
    // A few requests of the scenario's start may be in the window too.
    let share = version("v2").share_10s.unwrap();
    assert!(
        (share - canary_share).abs() < 2.0,
        "observed {share}% on the canary, which answered {canary_share:.1}%: {observed:?}"
    );
    let total = version("v1").share_10s.expect("v1's share") + share;
    assert!((total - 100.0).abs() < 0.02, "{observed:?}");
    assert_eq!(version("v1").error_rate, Some(0.0), "{observed:?}");
    assert_eq!(version("v2").healthy, Some(1), "{observed:?}");
    assert!(!observed.versions.contains_key("v2~v1"), "{observed:?}");

    let metrics = s.cutover.metrics().await;
    let sample = |name: &str, version: &str| {
        let prefix = format!("{name}{{service=\"checkout\",version=\"{version}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}"))
    };
    assert!(sample("cutover_version_requests_per_second", "v2") > 0.0);
    assert_eq!(sample("cutover_version_error_ratio", "v1"), 0.0);
    assert!(sample("cutover_version_latency_p99_seconds", "v1") > 0.0);
    assert_eq!(sample("cutover_version_healthy_endpoints", "v1"), 1.0);
    assert!(
        !metrics.contains("~"),
        "no series for aggregate clusters:\n{metrics}"
    );

    let admin = s.cutover.admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["status", "--admin", &admin])
            .env("NO_COLOR", "1")
            .output()
            .expect("run cutover status")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("          v2 "))
        .unwrap_or_else(|| panic!("no row for v2: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["v2", "10%"], "{text}");
    assert!(row[2].ends_with('%') && row[2] != "0%", "observed: {text}");
}

const TWO_ENDPOINTS: &str = concat!(
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}, ${v1-2}] }
    active: v1
    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 30s }
",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_ejected_by_outlier_detection_shows_as_ejected() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["v1-1", "v1-2"], TWO_ENDPOINTS).await;
    let bad = s.upstream("v1-2");
    bad.set_status(500);
    wait_for(WAIT, "Envoy to eject the failing endpoint", async || {
        s.envoy.replies(10, "/", &[]).await;
        match s.envoy.health_flags("checkout/v1", bad.addr).await {
            Some(f) if f.contains("failed_outlier_check") => Ok(()),
            other => Err(format!("health flags {other:?}")),
        }
    })
    .await;
    let v1 = wait_for(WAIT, "telemetry to show the ejection", async || {
        let t = s.cutover.telemetry().await?;
        let v1 = version(&t, "checkout", "v1")?;
        if v1.ejections_active == 1 {
            Ok(v1.clone())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    assert_eq!(
        v1.membership,
        Some(Membership {
            healthy: 1,
            total: 2
        }),
        "{v1:?}"
    );

    // The bootstrap's stats matcher: Envoy keeps what cutover reads of its clusters and
    // everything else, and not the rest.
    let stats = s.envoy.stats().await;
    for kept in [
        "cluster.checkout/v1.upstream_rq_5xx",
        "cluster.checkout/v1.outlier_detection.ejections_active",
        "cluster_manager.cluster_added",
        "cluster.cutover_xds.upstream_cx_total",
    ] {
        assert!(stats.contains_key(kept), "{kept}");
    }
    for dropped in [
        "cluster.checkout/v1.upstream_rq_500",
        "cluster.checkout/v1.upstream_cx_total",
    ] {
        assert!(!stats.contains_key(dropped), "{dropped}");
    }
}

const ONE_ENDPOINT: &str = concat!(
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}] }
    active: v1
",
);

/// Requests in flight to a slow endpoint show per endpoint and per Envoy, and go when they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_a_slow_endpoint_show_until_they_end() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["v1-1"], ONE_ENDPOINT).await;
    let slow = s.upstream("v1-1");
    let endpoint = slow.addr.to_string();
    slow.set_delay(Duration::from_millis(3000));
    const SLOW: usize = 4;
    let requests = s.envoy.replies(SLOW, "/", &[]);
    let watch = async {
        wait_for(
            WAIT,
            "telemetry to show the requests in flight",
            async || {
                let t = s.cutover.telemetry().await?;
                let v1 = version(&t, "checkout", "v1")?;
                let e = v1.endpoints.get(&endpoint);
                let sent = SLOW as u64;
                // Load reports and the stats sink (requests sent and not answered) agree.
                if e.is_some_and(|e| {
                    e.in_flight == sent && e.in_flight_by_node.get(NODE) == Some(&sent)
                }) && v1.in_flight == sent
                {
                    Ok(t)
                } else {
                    Err(format!(
                        "upstream has {} in flight: {t:?}",
                        slow.in_flight()
                    ))
                }
            },
        )
        .await
    };
    let (replies, _) = tokio::join!(requests, watch);
    assert!(replies.iter().all(|r| r.status == 200));
    wait_for(WAIT, "the requests in flight to go", async || {
        let t = s.cutover.telemetry().await?;
        let v1 = version(&t, "checkout", "v1")?;
        if v1
            .endpoints
            .get(&endpoint)
            .is_some_and(|e| e.in_flight == 0)
            && v1.in_flight == 0
        {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
}

/// An Envoy that disconnects leaves the figures; one from a bootstrap without telemetry is
/// named as sending none, not counted as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_envoy_leaves_the_figures_and_a_silent_one_is_named() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(&envoy_bin, &["v1-1"], ONE_ENDPOINT).await;
    let dir = s.dir.path();
    let mut second = Envoy::start(&envoy_bin, dir, "edge-2", s.cutover.ads, s.listener).await;
    let _old = Envoy::start_with(
        &envoy_bin,
        dir,
        "edge-old",
        s.cutover.ads,
        s.listener,
        &["--no-stats-sink", "--no-load-reporting"],
    )
    .await;
    s.cutover.wait_in_sync("edge-old").await;
    let envoys = async |n: usize| {
        wait_for(
            WAIT,
            &format!("{n} Envoys to report checkout/v1"),
            async || {
                let t = s.cutover.telemetry().await?;
                let v1 = version(&t, "checkout", "v1")?;
                // Each one's load reports too: they start apart from its stats (on a loaded
                // machine, seconds later).
                let reporting_load = t
                    .nodes
                    .iter()
                    .filter(|n| n.load_reporting.as_ref().is_some_and(|l| !l.stale))
                    .count();
                // An Envoy that left ends its telemetry and its xDS stream apart: it is gone
                // from both, not connected and silent.
                let only_the_silent_one = t.nodes_without_telemetry == ["edge-old"];
                if v1.envoys == n
                    && t.nodes.len() == n
                    && reporting_load == n
                    && only_the_silent_one
                {
                    Ok(t)
                } else {
                    Err(format!("{t:?}"))
                }
            },
        )
        .await
    };
    let t = envoys(2).await;
    assert_eq!(t.nodes_without_telemetry, ["edge-old"]);
    // `/status` says the same, per node.
    let status = s.cutover.status().await;
    assert_eq!(status.nodes_without_telemetry, ["edge-old"]);
    let node = |id: &str| {
        status
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.telemetry)
    };
    assert_eq!(node("edge-old"), Some(TelemetryState::Absent), "{status:?}");
    assert_eq!(node(NODE), Some(TelemetryState::Reporting), "{status:?}");
    assert!(
        t.nodes[1].load_reporting.as_ref().is_some_and(|l| !l.stale),
        "edge-2 reports load too: {t:?}"
    );

    second.kill();
    let t = envoys(1).await;
    assert_eq!(t.nodes[0].id, NODE);
    assert_eq!(t.nodes_without_telemetry, ["edge-old"]);
}

/// Fleet scale: past `--load-reports-per-second`, cutover asks every Envoy (those already
/// reporting too) to report less often, and back when Envoys leave. With a budget of 1 a
/// second, two Envoys report every 2 s; one alone, every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_slow_down_as_more_envoys_report_than_the_budget() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start_with_args(
        &envoy_bin,
        &["v1-1"],
        ONE_ENDPOINT,
        &["--load-reports-per-second", "1"],
    )
    .await;
    // What cutover asks for, with the load reports `node` sent so far.
    let asked = async |node: &str| {
        let t = s.cutover.telemetry().await.unwrap();
        let sent = t
            .nodes
            .iter()
            .find(|n| n.id == node)
            .and_then(|n| n.load_reporting.as_ref())
            .map(|l| l.messages);
        (t.load_reporting_interval_seconds, sent)
    };
    // Reports `node` sends over 6 s.
    let over_6s = async |node: &str| {
        let before = asked(node).await.1.expect("it reports");
        tokio::time::sleep(Duration::from_secs(6)).await;
        asked(node).await.1.expect("it reports") - before
    };
    wait_for(
        WAIT,
        "the first Envoy to report load",
        async || match asked(NODE).await {
            (1, Some(n)) if n >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    let mut second = Envoy::start(
        &envoy_bin,
        s.dir.path(),
        "edge-2",
        s.cutover.ads,
        s.listener,
    )
    .await;
    wait_for(
        WAIT,
        "two Envoys to be asked for a report every 2 s",
        async || match asked("edge-2").await {
            (2, Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // The first Envoy was told on its open stream too; its next report may be on the old
    // period, then every 2 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slow = over_6s(NODE).await;
    assert!((2..=4).contains(&slow), "{slow} reports in 6 s at 2 s each");

    second.kill();
    wait_for(
        WAIT,
        "one Envoy to be asked for a report every second again",
        async || match asked(NODE).await {
            (1, Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fast = over_6s(NODE).await;
    assert!((5..=7).contains(&fast), "{fast} reports in 6 s at 1 s each");
}
