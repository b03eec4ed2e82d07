//! Automated rollouts with a real Envoy, real upstreams and bounded load: the analysis reads
//! what Envoy itself reports to cutover (its stats sink, flushed every second), with steps and
//! checks of a second or two.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use cutover::api::{RolloutKind, RolloutReport, RolloutState, Verdict};
use cutover::checkout_head;
use cutover::testing::load::Load;
use cutover::testing::{NODE, Scenario, envoy_binary, eventually, version_of, wait_for};

/// A canary rollout of `checkout` from v1 to v2; `steps`, `interval` and `analysis` as given.
fn canary(steps: &str, interval: &str, analysis: &str) -> String {
    format!(
        "{head}      v1: {{ endpoints: [${{v1-1}}] }}
      v2: {{ endpoints: [${{v2-1}}] }}
    strategy:
      canary:
        stable: v1
        canary: v2
        steps: {steps}
        interval: {interval}
        analysis: {analysis}
    # Ejections would hide the canary's errors behind its fallback to stable.
    outlier_detection: {{ enabled: false }}
",
        head = checkout_head!("${listener}"),
    )
}

const ANALYSIS: &str = "{ interval: 1s, max_error_rate: 5%, max_p99_latency: 150ms, min_requests: 10, failure_limit: 1 }";

/// The rollout of `checkout`, if it has one.
async fn try_rollout(s: &Scenario) -> Option<RolloutReport> {
    let mut status = s.cutover.status().await;
    status.services.remove("checkout")?.rollout
}

async fn rollout(s: &Scenario) -> RolloutReport {
    try_rollout(s).await.expect("checkout has a rollout")
}

/// Waits until the rollout is in `state`; returns it.
async fn wait_state(s: &Scenario, state: RolloutState, within: Duration) -> RolloutReport {
    wait_for(
        within,
        &format!("the rollout to be {state}"),
        async || match try_rollout(s).await {
            Some(r) if r.state == state => Ok(r),
            other => Err(format!("{other:?}")),
        },
    )
    .await
}

/// Who answers `n` fresh requests.
async fn answers(listener: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let body = client
            .get(format!("http://{listener}/"))
            .send()
            .await
            .expect("a request through Envoy")
            .text()
            .await
            .unwrap();
        *out.entry(version_of(&body).to_owned()).or_insert(0) += 1;
    }
    out
}

fn history(r: &RolloutReport) -> Vec<String> {
    r.history.iter().map(|e| e.what.clone()).collect()
}

fn cli(s: &Scenario, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .args(["--admin", &s.cutover.admin.to_string()])
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .output()
        .expect("run cutover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[20, 50, 100]", "2s", ANALYSIS),
    )
    .await;
    let load = Load::start(s.listener);
    let r = wait_state(&s, RolloutState::Promoted, Duration::from_secs(40)).await;
    let outcome = load.stop().await;
    outcome.assert_no_failures("a healthy canary rollout");
    assert_eq!(
        history(&r),
        [
            "started: v2 at 20%",
            history(&r)[1].as_str(),
            history(&r)[2].as_str(),
            "promoted (every step passed)"
        ]
    );
    assert!(history(&r)[1].starts_with("v2 20% → 50% after"), "{r:?}");
    assert!(history(&r)[2].starts_with("v2 50% → 100% after"), "{r:?}");
    assert_eq!(r.weight, Some(100.0));
    assert_eq!(
        answers(s.listener, 30).await,
        BTreeMap::from([("v2".to_owned(), 30)])
    );
    let metrics = s.cutover.metrics().await;
    assert!(
        metrics.contains("cutover_rollout_steps_total 2")
            && metrics.contains("cutover_rollout_promotions_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_a_fifth_of_its_requests_is_rolled_back_at_its_first_analysis() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[20, 50, 100]", "30s", ANALYSIS),
    )
    .await;
    s.upstream("v2-1").set_failure_share(0.2);
    let load = Load::start(s.listener);
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    load.stop().await;
    let reason = r.reason.as_deref().unwrap();
    assert!(reason.starts_with("error rate "), "{r:?}");
    assert_eq!(r.failed_checks, 1, "{r:?}");
    assert_eq!(r.weight, Some(0.0));
    assert_eq!(
        r.last_check.as_ref().map(|c| c.verdict),
        Some(Verdict::Fail)
    );
    assert!(
        !history(&r).iter().any(|h| h.contains("→")),
        "no step was taken: {r:?}"
    );
    assert!(r.advice.as_deref().unwrap().contains("cutover resume"));

    // Stable serves everything from now on, and not one request fails.
    s.cutover.wait_in_sync(NODE).await;
    let load = Load::start(s.listener);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = load.stop().await;
    outcome.assert_no_failures("after the rollback");
    assert!(
        outcome.by_body.keys().all(|b| version_of(b) == "v1"),
        "{:?}",
        outcome.by_body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_only_errors_is_rolled_back_before_min_requests() {
    let Some(envoy) = envoy_binary() else { return };
    // 200 requests take the canary's 20% ten seconds at this load; 11 errors of 200 are
    // already more than 5% whatever the rest do.
    let analysis = ANALYSIS.replace("min_requests: 10", "min_requests: 200");
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[20, 50, 100]", "30s", &analysis),
    )
    .await;
    s.upstream("v2-1").set_failure_share(1.0);
    // About 100 requests a second, 20 of them to the canary.
    let load = Load::with(s.listener, 2, Duration::from_millis(20));
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    load.stop().await;
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.contains(" request(s): above max_error_rate 5% even if the ")
            && reason.ends_with(" more up to min_requests 200 all succeed"),
        "{r:?}"
    );
    let check = r.last_check.as_ref().unwrap();
    assert_eq!(check.verdict, Verdict::Fail, "{r:?}");
    assert!(
        check.requests < 200 && check.errors >= 11 && check.errors == check.requests,
        "{r:?}"
    );
    assert_eq!(
        r.thresholds.as_ref().and_then(|t| t.fails_early_at_errors),
        Some(11)
    );
    assert_eq!(r.weight, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_fixed_and_resumed_is_judged_on_its_requests_since_the_resume() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[20, 100]", "3s", ANALYSIS),
    )
    .await;
    s.upstream("v2-1").set_failure_share(1.0);
    let load = Load::start(s.listener);
    wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    // Fixed, and resumed at once: the last 10 s still hold the canary's errors, which the
    // checks after the resume must not count.
    s.upstream("v2-1").set_failure_share(0.0);
    let resumed_at = std::time::SystemTime::now();
    let out = cli(&s, &["resume", "checkout"]);
    assert!(out.status.success(), "{out:?}");
    let r = wait_for(
        Duration::from_secs(30),
        "the resumed rollout to be promoted",
        async || match try_rollout(&s).await {
            Some(r) if r.state == RolloutState::Promoted => Ok(r),
            Some(r) if r.state == RolloutState::RolledBack => Err(format!("failed again: {r:?}")),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    load.stop().await;
    assert!(
        history(&r)
            .iter()
            .filter(|h| h.starts_with("rolled back"))
            .count()
            == 1,
        "{r:?}"
    );
    // The last check's window began after the resume.
    let check = r.last_check.as_ref().unwrap();
    let from = check.window_from.as_deref().expect("a window");
    let from = humantime::parse_rfc3339(from).unwrap();
    assert!(from >= resumed_at - Duration::from_millis(1), "{r:?}");
    assert!(check.window_seconds.is_some_and(|s| s <= 10.0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_its_mirrored_copies_is_rolled_back_while_no_user_sees_an_error() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[{ mirror: 100 }, 50, 100]", "30s", ANALYSIS),
    )
    .await;
    s.upstream("v2-1").set_failure_share(1.0);
    let before = s.hits();
    let load = Load::start(s.listener);
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    let outcome = load.stop().await;
    // Every user got stable's answer, while the canary's copies were judged and failed.
    outcome.assert_no_failures("a canary failing at its mirror step");
    assert!(
        outcome.by_body.keys().all(|b| version_of(b) == "v1"),
        "{:?}",
        outcome.by_body
    );
    let reason = r.reason.as_deref().unwrap();
    assert!(reason.contains("error"), "{r:?}");
    let check = r.last_check.as_ref().unwrap();
    assert!(
        check.requests > 0 && check.errors == check.requests,
        "judged on the mirror's 500s: {r:?}"
    );
    assert!(
        history(&r)[0] == "started: v2 at a mirror of 100%"
            && !history(&r).iter().any(|h| h.contains("→")),
        "{r:?}"
    );
    assert_eq!(r.mirror, None, "no copies once rolled back: {r:?}");
    let copies = s.hits_since(&before);
    assert!(
        copies.get("v2-1").copied().unwrap_or(0) > 0,
        "the canary got copies: {copies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_step_sends_only_the_testers_to_the_canary_then_the_weights_follow() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary(
            "[{ match: { header: { x-tester: \"1\" } }, pause: 5s }, 100]",
            "2s",
            ANALYSIS,
        ),
    )
    .await;
    let r = rollout(&s).await;
    assert_eq!(
        r.matching.as_deref(),
        Some("requests with header x-tester: 1")
    );
    assert_eq!((r.weight, r.step, r.steps), (Some(0.0), Some(1), Some(2)));
    s.cutover.wait_in_sync(NODE).await;
    let users = Load::start(s.listener);
    let testers = Load::with_headers(
        s.listener,
        1,
        Duration::from_millis(20),
        &[("x-tester", "1")],
    );
    // Users stay on stable while the testers' requests reach the canary and pass its checks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rollout(&s).await.state, RolloutState::Progressing);
    let (users_seen, testers_seen) = (users.stop().await, testers.stop().await);
    users_seen.assert_no_failures("users during the match step");
    testers_seen.assert_no_failures("testers during the match step");
    assert!(
        users_seen.by_body.keys().all(|b| version_of(b) == "v1"),
        "{:?}",
        users_seen.by_body
    );
    assert!(
        testers_seen.by_body.keys().all(|b| version_of(b) == "v2"),
        "{:?}",
        testers_seen.by_body
    );
    let testers = Load::with_headers(
        s.listener,
        1,
        Duration::from_millis(20),
        &[("x-tester", "1")],
    );
    let r = wait_state(&s, RolloutState::Promoted, Duration::from_secs(30)).await;
    testers.stop().await;
    assert!(
        history(&r)[1].starts_with("v2 requests with header x-tester: 1 → 100% after"),
        "{r:?}"
    );
    assert_eq!(
        answers(s.listener, 20).await,
        BTreeMap::from([("v2".to_owned(), 20)])
    );
}

/// Judged against stable only: no absolute limit would tell a slow day from a slow canary.
const COMPARED: &str = "{ interval: 1s, min_requests: 20, failure_limit: 1, max_error_rate_increase: 5%, max_p99_ratio: 1.5 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_as_slow_as_a_slowed_stable_passes_the_comparison_and_three_times_slower_fails() {
    let Some(envoy) = envoy_binary() else { return };
    // A bad day: stable answers in 100 ms, and so does the canary.
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        // Long enough at 50% to read a passed comparison before the step ends.
        &canary("[50, 100]", "5s", COMPARED),
    )
    .await;
    s.upstream("v1-1").set_delay(Duration::from_millis(100));
    s.upstream("v2-1").set_delay(Duration::from_millis(100));
    // Enough clients that both versions get their 20 requests a second at 100 ms each.
    let load = Load::with(s.listener, 16, Duration::from_millis(2));
    // At 50% the check compares with stable (at 100% stable gets nothing to compare with).
    let compared = wait_for(
        Duration::from_secs(20),
        "a check at 50% compared with stable",
        async || {
            let r = rollout(&s).await;
            match r.last_check.as_ref() {
                Some(c) if r.weight == Some(50.0) && c.verdict == Verdict::Pass => c
                    .baseline
                    .clone()
                    .ok_or_else(|| format!("no baseline: {r:?}")),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await;
    assert_eq!(compared.version, "v1");
    assert!(compared.requests >= 20, "{compared:?}");
    assert!(
        compared.latency_p_value.is_some_and(|p| p >= 0.05),
        "{compared:?}"
    );
    let r = wait_state(&s, RolloutState::Promoted, Duration::from_secs(30)).await;
    load.stop()
        .await
        .assert_no_failures("a canary as slow as stable");
    assert!(r.last_check.unwrap().baseline.is_none(), "none at 100%");
    drop(s);

    // Three times slower than stable.
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[50, 100]", "30s", COMPARED),
    )
    .await;
    s.upstream("v1-1").set_delay(Duration::from_millis(100));
    s.upstream("v2-1").set_delay(Duration::from_millis(300));
    let load = Load::with(s.listener, 16, Duration::from_millis(2));
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    load.stop()
        .await
        .assert_no_failures("a slow canary: slow, not failing");
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("p99 latency ")
            && reason.contains(" times v1's ")
            && reason.contains("more than max_p99_ratio 1.5 (Mann-Whitney p = "),
        "{r:?}"
    );
    let t = r.thresholds.as_ref().unwrap();
    assert_eq!(
        (t.max_p99_ratio, t.max_error_rate_increase, t.confidence),
        (Some(1.5), Some(5.0), Some(95.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_stuck_past_its_progress_deadline_rolls_back_and_says_why() {
    let Some(envoy) = envoy_binary() else { return };
    // No traffic: the checks wait for requests that never come (no max_wait).
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary(
            "[20, 100]",
            "2s",
            "{ interval: 1s, max_error_rate: 5%, min_requests: 10, progress_deadline: 4s }",
        ),
    )
    .await;
    let progressing = rollout(&s).await;
    assert!(
        progressing
            .progress_deadline_in_seconds
            .is_some_and(|s| s > 0.0 && s <= 4.0),
        "{progressing:?}"
    );
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(15)).await;
    assert_eq!(
        r.reason.as_deref(),
        Some(
            "no progress for 4s (progress_deadline): its checks wait: 0 request(s), fewer than min_requests 10"
        ),
        "{r:?}"
    );
    assert_eq!(r.weight, Some(0.0));
    s.cutover.wait_in_sync(NODE).await;
    assert_eq!(
        answers(s.listener, 10).await,
        BTreeMap::from([("v1".to_owned(), 10)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_fails_max_p99_latency() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[50, 100]", "30s", ANALYSIS),
    )
    .await;
    s.upstream("v2-1").set_delay(Duration::from_millis(200));
    let load = Load::start(s.listener);
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    let outcome = load.stop().await;
    outcome.assert_no_failures("a slow canary");
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("p99 latency ") && reason.ends_with("above max_p99_latency 150ms"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_waits_then_passes_once_traffic_arrives() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[50, 100]", "1s", ANALYSIS),
    )
    .await;
    // No traffic: checks wait, the step neither passes nor fails.
    let r = wait_for(
        Duration::from_secs(15),
        "a check that waits",
        async || match try_rollout(&s).await {
            Some(r) if r.last_check.as_ref().map(|c| c.verdict) == Some(Verdict::Wait) => Ok(r),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(r.state, RolloutState::Progressing);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = rollout(&s).await;
    assert_eq!(
        (r.state, r.weight),
        (RolloutState::Progressing, Some(50.0)),
        "waiting does not pass the step: {r:?}"
    );
    let load = Load::start(s.listener);
    wait_state(&s, RolloutState::Promoted, Duration::from_secs(30)).await;
    load.stop().await.assert_no_failures("once traffic arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cutover_resumes_at_the_same_step_and_weight() {
    let Some(envoy) = envoy_binary() else { return };
    let mut s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[20, 50, 100]", "3s", ANALYSIS),
    )
    .await;
    let load = Load::start(s.listener);
    wait_for(
        Duration::from_secs(30),
        "step 2 at 50%",
        async || match try_rollout(&s).await {
            Some(r) if r.weight == Some(50.0) && !r.awaiting_ack => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let reloads = "http.public.rds.public.config_reload";
    let before = s.envoy.stat(reloads).await;
    s.cutover.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.cutover.restart().await;
    s.cutover.wait_in_sync(NODE).await;
    let r = rollout(&s).await;
    assert_eq!(
        r.weight,
        Some(50.0),
        "the same step after the restart: {r:?}"
    );
    assert_eq!(r.step, Some(2));
    assert_eq!(
        s.envoy.stat(reloads).await,
        before,
        "the restart made Envoy reload its routes"
    );
    wait_state(&s, RolloutState::Promoted, Duration::from_secs(30)).await;
    load.stop()
        .await
        .assert_no_failures("a rollout across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_promote_and_abort_from_the_cli() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["v1-1", "v2-1"],
        &canary("[20, 50, 100]", "1m", ANALYSIS),
    )
    .await;
    let out = cli(&s, &["pause", "checkout"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "checkout: paused\n");
    assert_eq!(rollout(&s).await.state, RolloutState::Paused);
    let out = cli(&s, &["pause", "checkout"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("409 Conflict: checkout: cannot pause a rollout that is paused"),
        "{out:?}"
    );
    assert!(cli(&s, &["resume", "checkout"]).status.success());
    assert_eq!(rollout(&s).await.state, RolloutState::Progressing);
    assert!(cli(&s, &["promote", "checkout"]).status.success());
    s.cutover.wait_in_sync(NODE).await;
    // Envoy ACKs a route change once its main thread has it; its workers get it a moment later.
    eventually(
        Duration::from_secs(2),
        "a request answered by v2",
        async || answers(s.listener, 1).await.contains_key("v2"),
    )
    .await;
    assert_eq!(
        answers(s.listener, 20).await,
        BTreeMap::from([("v2".to_owned(), 20)])
    );
    let out = cli(&s, &["abort", "checkout"]);
    assert_eq!(out.status.code(), Some(1), "promoted is final: {out:?}");
    // Who did what, in the rollout's history.
    let out = cli(&s, &["status", "checkout", "--history"]);
    assert!(out.status.success(), "{out:?}");
    let history = String::from_utf8_lossy(&out.stdout);
    for line in [
        "checkout:  canary v2 (stable v1)  promoted (current)",
        "paused by the operator at 127.0.0.1",
        "resumed by the operator at 127.0.0.1",
        "promoted (by the operator at 127.0.0.1)",
    ] {
        assert!(history.contains(line), "{line:?} in:\n{history}");
    }
    let out = cli(&s, &["abort", "nope"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service \"nope\""),
        "{out:?}"
    );
}

const SWITCH: &str = concat!(
    checkout_head!("${listener}"),
    "      blue:  { endpoints: [${blue-1}] }
      green: { endpoints: [${green-1}] }
    strategy:
      blue-green:
        active: ACTIVE
        analysis: { window: 20s, interval: 1s, max_error_rate: 5%, min_requests: 10, failure_limit: 1 }
    outlier_detection: { enabled: false }
",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_to_a_failing_colour_switches_back() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(
        &envoy,
        &["blue-1", "green-1"],
        &SWITCH.replace("ACTIVE", "blue"),
    )
    .await;
    s.upstream("green-1").set_failure_share(0.3);
    let load = Load::start(s.listener);
    s.apply(&SWITCH.replace("ACTIVE", "green")).await;
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    load.stop().await;
    assert_eq!(r.kind, RolloutKind::Switch);
    assert!(
        r.reason.as_deref().unwrap().starts_with("error rate"),
        "{r:?}"
    );
    assert!(
        r.advice
            .as_deref()
            .unwrap()
            .contains("switched back to blue")
    );
    s.cutover.wait_in_sync(NODE).await;
    assert_eq!(
        answers(s.listener, 20).await,
        BTreeMap::from([("blue".to_owned(), 20)])
    );
    let status = s.cutover.status().await;
    assert_eq!(
        status.services["checkout"].split,
        BTreeMap::from([("blue".to_owned(), 100.0)])
    );
}

/// Blue-green whose switch is checked on the new colour's preview traffic first.
fn checked_switch(active: &str) -> String {
    SWITCH.replace("ACTIVE", active).replace(
        "        analysis: { window: 20s,",
        "        preview: {}\n        analysis: { before_switch: 3s, window: 2s,",
    )
}

/// Testers' requests to the idle colour through the preview header, every 20 ms, until
/// stopped (at most 30 s); the answers by version.
fn preview_traffic(
    listener: SocketAddr,
    version: &'static str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<BTreeMap<String, usize>>,
) {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut out = BTreeMap::new();
        for _ in 0..1500 {
            if stopped.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(reply) = client
                .get(format!("http://{listener}/"))
                .header("x-cutover-preview", version)
                .send()
                .await
            {
                let body = reply.text().await.unwrap_or_default();
                *out.entry(version_of(&body).to_owned()).or_insert(0) += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_checked_on_preview_traffic_first_never_sends_users_to_a_failing_colour() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["blue-1", "green-1"], &checked_switch("blue")).await;
    s.upstream("green-1").set_failure_share(0.3);
    let load = Load::start(s.listener);
    let (stop, preview) = preview_traffic(s.listener, "green");
    s.apply(&checked_switch("green")).await;
    let r = wait_state(&s, RolloutState::RolledBack, Duration::from_secs(20)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let previewed = preview.await.unwrap();
    let users = load.stop().await;
    assert!(r.before_switch, "{r:?}");
    assert!(
        r.reason.as_deref().unwrap().starts_with("error rate"),
        "{r:?}"
    );
    assert!(
        r.advice.as_deref().unwrap().contains("blue stays active"),
        "{r:?}"
    );
    assert!(previewed.contains_key("green"), "{previewed:?}");
    // Users never met green: every request without the header was answered by blue.
    users.assert_no_failures("a failing colour checked before the switch");
    assert!(
        users.by_body.keys().all(|b| version_of(b) == "blue"),
        "{:?}",
        users.by_body
    );
    assert_eq!(
        s.cutover.status().await.services["checkout"].split,
        BTreeMap::from([("blue".to_owned(), 100.0)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_checked_on_preview_traffic_first_happens_once_the_check_passes() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["blue-1", "green-1"], &checked_switch("blue")).await;
    let load = Load::start(s.listener);
    let (stop, _preview) = preview_traffic(s.listener, "green");
    s.apply(&checked_switch("green")).await;
    // Still blue while green's preview traffic is checked.
    let r = rollout(&s).await;
    assert!(r.before_switch, "{r:?}");
    assert_eq!(
        answers(s.listener, 10).await,
        BTreeMap::from([("blue".to_owned(), 10)])
    );
    let r = wait_state(&s, RolloutState::Promoted, Duration::from_secs(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let users = load.stop().await;
    let history = history(&r);
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("green passed its pre-switch analysis")),
        "{history:?}"
    );
    users.assert_no_failures("a healthy colour checked before the switch");
    s.cutover.wait_in_sync(NODE).await;
    eventually(
        Duration::from_secs(2),
        "a request answered by green",
        async || answers(s.listener, 1).await.contains_key("green"),
    )
    .await;
    assert_eq!(
        answers(s.listener, 10).await,
        BTreeMap::from([("green".to_owned(), 10)])
    );
}
