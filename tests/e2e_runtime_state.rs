//! The runtime state survives a restart of cutover, with a real Envoy under load: an endpoint
//! removed from the file stays `DRAINING` in Envoy until its original deadline, and a red-black
//! service's previous version stays until its grace period ends, although cutover was killed
//! (SIGKILL) and started again inside those periods. Not one request fails.

use std::time::{Duration, Instant};

use cutover::checkout_head;
use cutover::testing::fixtures::rolling;
use cutover::testing::load::Load;
use cutover::testing::{NODE, Scenario, envoy_binary, wait_for};

const RED_BLACK: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      red:   { endpoints: [${red-1}] }
      black: { endpoints: [${black-1}] }
    strategy: { red-black: { active: %ACTIVE%, grace: 5s } }
",
);

/// The runtime state file cutover writes beside the scenario's deployment file.
fn state_file(s: &Scenario) -> String {
    std::fs::read_to_string(s.dir.path().join("deploy.yaml.state.json")).unwrap_or_default()
}

/// Kills cutover once its state file says `what` (so the kill cannot outrun the save), keeps it
/// down for a moment, starts it again and waits until Envoy is in sync with it.
async fn kill_and_restart_once_saved(s: &mut Scenario, what: &str) {
    wait_for(
        Duration::from_secs(10),
        &format!("the state file to hold {what}"),
        async || {
            let text = state_file(s);
            if text.contains(what) {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    s.cutover.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.cutover.restart().await;
    s.cutover.wait_in_sync(NODE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_a_drain_period_keeps_the_endpoint_draining_until_its_deadline() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let mut s = Scenario::start_with_args(
        &envoy_bin,
        &["live-1", "live-2", "live-3"],
        &rolling("${live-1}, ${live-2}, ${live-3}"),
        &["--drain-period", "6s"],
    )
    .await;
    let live_1 = s.upstream("live-1").addr;
    let cluster_modified = s.envoy.stat("cluster_manager.cluster_modified").await;
    let load = Load::start(s.listener);

    // Removed from the file: it drains for 6 s.
    let removed = Instant::now();
    s.apply(&rolling("${live-2}, ${live-3}")).await;
    let flags = s.envoy.health_flags("checkout/live", live_1).await;
    assert!(
        flags
            .as_deref()
            .is_some_and(|f| f.contains("eds_status_draining")),
        "live-1 drains in Envoy: {flags:?}"
    );

    kill_and_restart_once_saved(&mut s, &live_1.to_string()).await;
    let restarted = removed.elapsed();
    assert!(
        restarted < Duration::from_secs(5),
        "the restart took too long for this test to mean anything: {restarted:?}"
    );
    // Still draining after the restart, as before it (a restart used to remove it at once).
    let flags = s.envoy.health_flags("checkout/live", live_1).await;
    assert!(
        flags
            .as_deref()
            .is_some_and(|f| f.contains("eds_status_draining")),
        "live-1 is still draining after the restart: {flags:?}"
    );
    let status = s.cutover.status().await;
    assert!(
        status.state_file.as_ref().is_some_and(|f| f.ok),
        "{status:?}"
    );

    // And it leaves at its original deadline, not a new one counted from the restart.
    wait_for(
        Duration::from_secs(15),
        "Envoy to drop the drained endpoint",
        async || match s.envoy.health_flags("checkout/live", live_1).await {
            None => Ok(()),
            Some(flags) => Err(format!("live-1 is still there: {flags}")),
        },
    )
    .await;
    let gone = removed.elapsed();
    assert!(
        gone >= Duration::from_millis(5_800) && gone < Duration::from_secs(6) + restarted,
        "removed {gone:?} after it left the file; the drain period is 6 s"
    );

    let outcome = load.stop().await;
    outcome.assert_no_failures("restart inside a drain period");
    assert_eq!(
        s.envoy.stat("cluster_manager.cluster_modified").await,
        cluster_modified,
        "the restart made Envoy modify clusters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_a_red_black_grace_keeps_the_old_version_until_it_ends() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let mut s = Scenario::start(
        &envoy_bin,
        &["red-1", "black-1"],
        &RED_BLACK.replace("%ACTIVE%", "red"),
    )
    .await;
    assert_eq!(s.envoy.dynamic_clusters().await, ["checkout/red"]);
    let load = Load::start(s.listener);

    let switched = Instant::now();
    s.apply(&RED_BLACK.replace("%ACTIVE%", "black")).await;
    // Once every Envoy answered the switch, the grace runs: the state file says since when.
    kill_and_restart_once_saved(&mut s, "\"answered\"").await;
    let restarted = switched.elapsed();
    let clusters = s.envoy.dynamic_clusters().await;
    assert_eq!(
        clusters,
        ["checkout/black", "checkout/red"],
        "red is kept for rollback across the restart"
    );
    let status = s.cutover.status().await;
    let retiring = &status.services["checkout"].retiring[0];
    assert_eq!(retiring.version, "red", "{status:?}");
    let left = retiring.retires_in_seconds.unwrap();
    assert!(
        left > 0.0 && left <= 5.0,
        "the grace continues from before the restart: {left} s left"
    );

    wait_for(
        Duration::from_secs(15),
        "checkout/red to be removed from Envoy",
        async || match s.envoy.dynamic_clusters().await {
            c if c == ["checkout/black"] => Ok(()),
            c => Err(format!("{c:?}")),
        },
    )
    .await;
    let retired = switched.elapsed();
    assert!(
        retired >= Duration::from_millis(4_800) && retired < Duration::from_secs(5) + restarted,
        "red was removed {retired:?} after the switch; the grace is 5 s from the ACK"
    );
    let outcome = load.stop().await;
    outcome.assert_no_failures("restart inside a red-black grace");
    assert!(
        outcome.by_body.contains_key("red-1") && outcome.by_body.contains_key("black-1"),
        "{:?}",
        outcome.by_body
    );
}
