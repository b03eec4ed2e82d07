//! The dashboard in a real headless Chromium, against the real `cutover serve`, a real Envoy
//! and real upstreams under load: the page loads from the binary alone, shows the service, and
//! its observed split moves when the file moves the traffic (all of it within the last 10 s:
//! the test takes about 20 s).

use std::time::{Duration, Instant};

use cutover::checkout_head;
use cutover::testing::browser::{Page, browser_or_skip};
use cutover::testing::load::Load;
use cutover::testing::{NODE, Scenario, WAIT, envoy_binary, wait_for};
use serde_json::Value;

/// Two groups: the Envoy's group has a version of its own, which the page must count as in sync
/// (the `internal` group has no Envoy, so its listener's address is never bound).
const BLUE_GREEN: &str = "\
listeners:
  - name: public
    address: ${listener}
    routes:
      - match: { prefix: / }
        service: checkout
  - name: internal
    address: 127.0.0.2:15999
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue: { endpoints: [${blue-1}] }
      green: { endpoints: [${green-1}] }
    active: blue
groups:
  - { name: edge, match: { id: \"edge-*\" }, listeners: [public] }
  - { name: internal, match: { id: \"internal-*\" }, listeners: [internal] }
";

/// A share as the page writes it (`89.7%`), or `None` for `–` (unknown).
fn share(text: &Value) -> Option<f64> {
    text.as_str()?.strip_suffix('%')?.parse().ok()
}

/// What the page shows of `version` of `checkout`.
fn version<'a>(page: &'a Value, version: &str) -> &'a Value {
    &page["state"]["services"]["checkout"]["versions"][version]
}

/// Reads the page until `done` accepts what it shows; panics after `WAIT` with the last state.
async fn page_until(page: &mut Page, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let state = page.read().await;
        if done(&state) {
            return state;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out after {:?} waiting for the page to show {what}; it shows: {:#}",
            started.elapsed(),
            state["state"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn the_dashboard_shows_the_observed_split_move_when_the_file_switches_colours() {
    let Some(envoy) = envoy_binary() else { return };
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let s = Scenario::start(&envoy, &["blue-1", "green-1"], BLUE_GREEN).await;
    // Two clients, paced: about 150 requests a second, enough for a clear split each second.
    let load = Load::with(s.listener, 2, Duration::from_millis(10));
    wait_for(WAIT, "/status to observe blue's traffic", async || {
        let status = s.cutover.try_status().await?;
        let blue = status
            .services
            .get("checkout")
            .and_then(|c| c.observed.as_ref()?.versions.get("blue"));
        if blue.is_some_and(|b| b.share_10s == Some(100.0) && b.requests_per_second > 10.0) {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;

    let url = format!("http://{}/", s.cutover.admin);
    let opened = Instant::now();
    let mut page = Page::open(&browser, &url).await;
    assert_eq!(page.ready["status"], 200, "{}", page.ready);
    let csp = page.ready["csp"].as_str().unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");

    // Blue serves everything, and the page says so: configured and observed.
    let before = page_until(&mut page, "blue observed at 100%", |p| {
        share(&version(p, "blue")["observed"]) == Some(100.0)
    })
    .await;
    let loaded = opened.elapsed();
    let checkout = &before["state"]["services"]["checkout"];
    assert_eq!(checkout["strategy"], "blue-green", "{checkout:#}");
    assert_eq!(version(&before, "blue")["configured"], "100%");
    assert_eq!(version(&before, "green")["configured"], "–");
    assert_eq!(share(&version(&before, "green")["observed"]), Some(0.0));
    assert_eq!(version(&before, "blue")["healthy"], "1/1");
    assert_eq!(checkout["configured_bar"], serde_json::json!(["blue 100%"]));
    assert!(
        checkout["charts"]["rps"]["blue"].as_u64() >= Some(1),
        "the request rate chart draws blue: {checkout:#}"
    );
    assert_eq!(before["state"]["connection"], "live");
    let envoy_row = before["state"]["envoys"][NODE].to_string();
    assert!(
        envoy_row.contains("in sync")
            && envoy_row.contains("reporting")
            && envoy_row.contains("\"edge\""),
        "{envoy_row}"
    );

    // Move the traffic: the page follows without a reload.
    let switched = Instant::now();
    s.apply(&BLUE_GREEN.replace("active: blue", "active: green"))
        .await;
    let after = page_until(
        &mut page,
        "green with every request of the last 10 s",
        |p| {
            let green = version(p, "green");
            green["configured"] == "100%"
                && share(&green["observed"]) == Some(100.0)
                && share(&version(p, "blue")["observed"]) == Some(0.0)
        },
    )
    .await;
    let moved = switched.elapsed();
    assert_eq!(version(&after, "blue")["configured"], "–");
    // The last minute still holds blue's requests from before the switch.
    let blue_1m = share(&version(&after, "blue")["observed_1m"]);
    let green_1m = share(&version(&after, "green")["observed_1m"]);
    assert!(
        blue_1m.is_some_and(|x| x > 0.0) && green_1m.is_some_and(|x| x < 100.0),
        "1 min: blue {blue_1m:?}, green {green_1m:?}"
    );
    assert_eq!(
        after["state"]["services"]["checkout"]["observed_bar"],
        serde_json::json!(["green 100%"])
    );
    assert_ne!(
        after["state"]["updated"], before["state"]["updated"],
        "the page is fed live"
    );
    let checkout = &after["state"]["services"]["checkout"];
    assert!(
        checkout["charts"]["rps"]["green"].as_u64() >= Some(1),
        "the chart draws green's requests: {checkout:#}"
    );

    // Everything the page loaded came from the admin address: nothing from elsewhere, nothing
    // failed, nothing on the console.
    let origin = format!("http://{}/", s.cutover.admin);
    let requests: Vec<&str> = after["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        requests.iter().all(|r| r.starts_with(&origin)),
        "{requests:?}"
    );
    for asset in ["dashboard.js", "dashboard.css", "events"] {
        assert!(
            requests.contains(&format!("{origin}{asset}").as_str()),
            "{requests:?}"
        );
    }
    assert_eq!(after["problems"], serde_json::json!([]), "{after}");

    if let Some(path) = std::env::var_os("CUTOVER_DASHBOARD_SCREENSHOT") {
        page.screenshot(std::path::Path::new(&path)).await;
    }
    page.close().await;
    load.stop()
        .await
        .assert_no_failures("blue to green under the dashboard");
    eprintln!(
        "the page showed blue after {loaded:?}; green had all of the last 10 s {moved:?} after the save"
    );
}

/// A canary rollout that stays at its first step until someone acts.
const CANARY: &str = concat!(
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}] }
      v2: { endpoints: [${v2-1}] }
    strategy:
      canary:
        stable: v1
        canary: v2
        steps: [20, 100]
        interval: 10m
        analysis: { interval: 1s, max_error_rate: 5%, min_requests: 1 }
",
);

/// The rollout of `checkout` as the page shows it.
fn rollout(page: &Value) -> &Value {
    &page["state"]["services"]["checkout"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_and_abort_a_rollout_from_the_dashboard() {
    let Some(envoy) = envoy_binary() else { return };
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let s = Scenario::start(&envoy, &["v1-1", "v2-1"], CANARY).await;
    // About 50 requests a second, 10 of them to the canary: every check has some.
    let load = Load::with(s.listener, 1, Duration::from_millis(20));
    let mut page = Page::open(&browser, &format!("http://{}/", s.cutover.admin)).await;
    // Each check a point of the error rate chart, against max_error_rate.
    let shown = page_until(&mut page, "the rollout's checks charted", |p| {
        rollout(p)["rollout_state"] == "progressing"
            && rollout(p)["check_points"]["error_rate"]
                .as_array()
                .is_some_and(|c| c.len() >= 2 && c.iter().all(|v| v == "pass"))
    })
    .await;
    assert_eq!(
        rollout(&shown)["actions"],
        serde_json::json!(["pause", "promote", "abort"])
    );
    // The README's picture of a rollout on the dashboard.
    if let Some(path) = std::env::var_os("CUTOVER_ROLLOUT_SCREENSHOT") {
        page_until(&mut page, "a few checks charted", |p| {
            rollout(p)["check_points"]["error_rate"]
                .as_array()
                .is_some_and(|c| c.len() >= 8)
        })
        .await;
        page.screenshot(std::path::Path::new(&path)).await;
    }

    // Each button does what `cutover pause|resume|abort` does, through the same admin API.
    for (command, state, answer) in [
        ("pause", "paused", "checkout: paused"),
        ("resume", "progressing", "checkout: resumed"),
        ("abort", "rolled_back", "checkout: rolled back"),
    ] {
        page.click("checkout", command).await;
        let shown = page_until(&mut page, &format!("the rollout {state}"), |p| {
            rollout(p)["rollout_state"] == state && rollout(p)["action_result"] == answer
        })
        .await;
        let status = s.cutover.status().await;
        let r = status.services["checkout"].rollout.as_ref().unwrap();
        assert_eq!(r.state.to_string(), state, "{r:?}");
        if state == "rolled_back" {
            assert_eq!(rollout(&shown)["actions"], serde_json::json!(["resume"]));
            assert_eq!(
                r.reason.as_deref(),
                Some("aborted by the operator at 127.0.0.1")
            );
        }
    }
    load.stop()
        .await
        .assert_no_failures("operators acting on the dashboard");
    s.cutover.wait_in_sync(NODE).await;
    let read = page.read().await;
    assert_eq!(read["problems"], serde_json::json!([]), "{read:#}");
    page.close().await;
}
