//! `cutover wait drained|healthy` with a real Envoy: it returns only once requests in flight
//! to a draining endpoint have finished, and a rolling deploy written as the seed's script
//! (drain, wait drained, stop, replace, wait healthy) loses not one request under load.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cutover::testing;
use cutover::testing::fixtures;
use cutover::testing::load::Load;
use cutover::testing::{Scenario, envoy_binary};

/// The kit's rolling deployment with the health check and the outlier detection these tests
/// run with.
fn rolling(endpoints: &str) -> String {
    format!(
        "{}    health_check: {{ path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 1 }}
    outlier_detection: {{ enabled: false }}
",
        fixtures::rolling(endpoints)
    )
}

/// `cutover wait ...` against the scenario's cutover, run on a thread so the test's runtime
/// keeps serving the upstreams meanwhile.
async fn wait(s: &Scenario, args: &[&str]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("wait")
        .args(args)
        .args(["--admin", &s.cutover.admin.to_string()]);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run cutover wait"))
        .await
        .unwrap();
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_returns_only_after_the_requests_in_flight_finish() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["live-1", "live-2"],
        &rolling("${live-1}, ${live-2}"),
    )
    .await;
    let live_1 = s.upstream("live-1");
    live_1.set_delay(Duration::from_secs(2));
    s.upstream("live-2").set_delay(Duration::from_secs(2));
    // Slow requests: round robin puts some on live-1.
    let traffic = testing::requests_in_background(s.listener, 4);
    testing::wait_for(
        Duration::from_secs(5),
        "requests in flight to live-1",
        async || match live_1.in_flight() {
            0 => Err("none yet".to_owned()),
            n => Ok(n),
        },
    )
    .await;
    s.apply(&rolling("{ address: ${live-1}, drain: true }, ${live-2}"))
        .await;
    let target = live_1.addr.to_string();
    let (out, took) = wait(&s, &["drained", "checkout", &target, "--timeout", "20s"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("checkout {target}: drained\n")
    );
    assert_eq!(
        live_1.in_flight(),
        0,
        "returned while requests were in flight; it said: {stderr}; telemetry: {:?}",
        s.cutover.telemetry().await.unwrap()
    );
    assert!(
        stderr.contains(&format!("request(s) in flight to {target}")),
        "it said what it waited for: {stderr}"
    );
    assert!(took >= Duration::from_millis(500), "{took:?}");
    for t in traffic {
        assert_eq!(t.await.unwrap().unwrap(), 200, "a slow request failed");
    }

    // Unknown targets are refused at once; an endpoint not draining times out saying why.
    let (out, _) = wait(&s, &["drained", "checkout", "10.9.9.9:1"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let live_2 = s.upstream("live-2").addr.to_string();
    let (out, _) = wait(&s, &["drained", "checkout", &live_2, "--timeout", "1s"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not draining"),
        "{out:?}"
    );
}

/// The seed's rolling deploy (tell the load balancer first, wait until traffic stops, replace,
/// check health), server by server, while clients keep sending requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_rolling_deploy_under_load_loses_no_request() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["old-1", "old-2", "new-1", "new-2"],
        &rolling("${old-1}, ${old-2}"),
    )
    .await;
    let load = Load::start(s.listener);
    let mut endpoints = vec!["old-1", "old-2"];
    for (old, new) in [("old-1", "new-1"), ("old-2", "new-2")] {
        let file = |eps: &[&str], draining: Option<&str>| {
            let list: Vec<String> = eps
                .iter()
                .map(|e| match draining {
                    Some(d) if d == *e => format!("{{ address: ${{{e}}}, drain: true }}"),
                    _ => format!("${{{e}}}"),
                })
                .collect();
            rolling(&list.join(", "))
        };
        // 1. Tell the load balancer: drain.
        s.apply(&file(&endpoints, Some(old))).await;
        // 2. Wait until its traffic stops.
        let target = s.upstream(old).addr.to_string();
        let (out, _) = wait(&s, &["drained", "checkout", &target, "--timeout", "20s"]).await;
        assert!(out.status.success(), "wait drained {old}: {out:?}");
        // 3. Stop it; 4. the new one runs; 5. put it in the file in its place.
        s.upstream(old).stop();
        endpoints.retain(|e| e != &old);
        endpoints.push(new);
        s.apply(&file(&endpoints, None)).await;
        // 6. Wait until every Envoy sees it healthy.
        let target = s.upstream(new).addr.to_string();
        let (out, _) = wait(&s, &["healthy", "checkout", &target, "--timeout", "20s"]).await;
        assert!(out.status.success(), "wait healthy {new}: {out:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = load.stop().await;
    outcome.assert_no_failures("a scripted rolling deploy");
    assert!(
        outcome.by_body.contains_key("new-1") && outcome.by_body.contains_key("new-2"),
        "{:?}",
        outcome.by_body
    );
    // The old servers are stopped and gone: everything is on the new ones.
    let after = s.envoy.count_bodies(40, "/", &[]).await;
    assert!(after.keys().all(|b| b.starts_with("new-")), "{after:?}");
}
