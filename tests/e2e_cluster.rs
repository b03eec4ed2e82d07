//! End to end: three etcd members, three `cutover serve --etcd` replicas, real Envoys spread
//! over them. One replica leads and decides; every one serves the record it writes. SIGKILL
//! the leader mid-rollout: another leads within the lease's TTL + 1 s, the rollout goes on
//! from the same step with the same deadline, the Envoys on the dead replica move to another
//! and change nothing, and no request fails.

use std::time::{Duration, Instant};

use cutover::api::{RolloutState, StatusReport};
use cutover::testing::TEST_LOG;
use cutover::testing::etcd::EtcdCluster;
use cutover::testing::{
    Cutover, DeploymentFile, Envoy, Upstream, WAIT, envoy_binary, eventually, free_port,
};

/// The lease's TTL the replicas run with: a dead leader is replaced within it (+ 1 s).
const TTL: Duration = Duration::from_secs(2);

/// A deployment file of one listener at `listener` routing everything to `checkout`, whose
/// versions and strategy are `service` (indented under it).
fn checkout(listener: std::net::SocketAddr, service: &str) -> String {
    format!(
        "\
# Written by the cluster tests.
listeners:
  - name: public
    address: {listener}
    routes:
      - match: {{ prefix: / }}
        service: checkout
services:
  checkout:
{service}"
    )
}

/// A canary of `checkout` from blue to green, its step `interval` long.
fn canary(
    listener: std::net::SocketAddr,
    blue: &Upstream,
    green: &Upstream,
    interval: &str,
) -> String {
    checkout(
        listener,
        &format!(
            "    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    strategy:
      canary:
        stable: blue
        canary: green
        steps: [20, 100]
        interval: {interval}
",
            blue = blue.addr,
            green = green.addr,
        ),
    )
}

/// Starts replica `name` of the cluster at `etcd` on its own copy of `text`.
async fn replica(etcd: &EtcdCluster, dir: &std::path::Path, name: &str, text: &str) -> Cutover {
    replica_at(etcd, dir, name, text, free_port()).await
}

/// [`replica`] serving xDS at `ads`.
async fn replica_at(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    name: &str,
    text: &str,
    ads: std::net::SocketAddr,
) -> Cutover {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = DeploymentFile::new(dir.join("deploy.yaml"));
    file.write_renamed(text);
    let endpoints = etcd.endpoints().join(",");
    let ttl = format!("{}s", TTL.as_secs());
    Cutover::start_at(
        &dir,
        &file.path,
        ads,
        &[
            "--etcd",
            &endpoints,
            "--etcd-prefix",
            "/cutover/e2e",
            "--replica",
            name,
            "--lease-ttl",
            &ttl,
        ],
        TEST_LOG,
    )
    .await
}

fn role(s: &StatusReport) -> &str {
    s.cluster.as_ref().map_or("", |c| c.role.as_str())
}

/// Whether `replica` holds Envoy `node` in sync.
async fn holds(replica: &Cutover, node: &str) -> bool {
    replica
        .try_status()
        .await
        .is_ok_and(|s| s.nodes.iter().any(|n| n.id == node && n.in_sync))
}

/// The canary's step and when it ends (as an instant of this test), as `replica` reports it.
async fn step(replica: &Cutover) -> Option<(usize, Instant, RolloutState)> {
    let asked = Instant::now();
    let mut s = replica.try_status().await.ok()?;
    let r = s.services.remove("checkout")?.rollout?;
    // While every Envoy has not ACKed the step, its time has not started: no deadline yet.
    let ends = match r.step_ends_in_seconds {
        Some(s) if !r.awaiting_ack => asked + Duration::from_secs_f64(s),
        _ if r.state == RolloutState::Progressing => return None,
        _ => asked,
    };
    Some((r.step?, ends, r.state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "one story in the order it happens: three replicas, two Envoys, a rollout, a kill"
)]
async fn the_leader_killed_mid_rollout_is_replaced_and_the_rollout_goes_on_without_a_failed_request()
 {
    let (Some(envoy_bin), Some(etcd)) = (envoy_binary(), EtcdCluster::start(3).await) else {
        return;
    };
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (listener_a, listener_b) = (free_port(), free_port());
    // Each Envoy has its own listener port: one file per Envoy group would need node groups,
    // so both listeners are in the one file.
    let with_canary = canary(listener_a, &blue, &green, "8s").replace(
        "    routes:\n      - match: { prefix: / }\n        service: checkout\n",
        &format!(
            "    routes:\n      - match: {{ prefix: / }}\n        service: checkout\n  - name: public-b\n    address: {listener_b}\n    routes:\n      - match: {{ prefix: / }}\n        service: checkout\n"
        ),
    );
    // Before the rollout: blue only.
    let text = with_canary.replace(
        "    strategy:\n      canary:\n        stable: blue\n        canary: green\n        steps: [20, 100]\n        interval: 8s\n",
        "    active: blue\n",
    );
    assert_ne!(text, with_canary);
    // The first replica leads (the others campaign after it); the third starts once the
    // Envoys are connected, so that each Envoy is on the replica meant for it.
    let r1 = replica(&etcd, dir.path(), "r1", &text).await;
    eventually(WAIT, "r1 to lead", async || {
        r1.try_status().await.is_ok_and(|s| role(&s) == "leader")
    })
    .await;
    let r2 = replica(&etcd, dir.path(), "r2", &text).await;
    let r3_ads = free_port();
    // Envoy a: r1, then r3; Envoy b: r2, then r3. Until r3 runs, each can only reach its own.
    let ads_a = format!("{},{r3_ads}", r1.ads);
    let ads_b = format!("{},{r3_ads}", r2.ads);
    let envoy_a =
        Envoy::start_with(&envoy_bin, dir.path(), "edge-a", &ads_a, listener_a, &[]).await;
    let dir_b = dir.path().join("b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let envoy_b = Envoy::start_with(&envoy_bin, &dir_b, "edge-b", &ads_b, listener_b, &[]).await;
    eventually(WAIT, "each Envoy in sync on its replica", async || {
        holds(&r1, "edge-a").await && holds(&r2, "edge-b").await
    })
    .await;
    let r3 = replica_at(&etcd, dir.path(), "r3", &text, r3_ads).await;

    // The leader's copy of the file starts the rollout: the leader records it, and every
    // replica serves it (the others' copies are not read while they follow).
    DeploymentFile::new(dir.path().join("r1/deploy.yaml")).write_renamed(&with_canary);
    // The rollout is at step 1 with a deadline every replica reports alike.
    let (traffic_a, traffic_b) = (envoy_a.background_traffic(), envoy_b.background_traffic());
    traffic_a.at_least(10).await;
    traffic_b.at_least(10).await;
    eventually(
        WAIT,
        "the canary's first step to start on every replica",
        async || {
            let mut ends = Vec::new();
            for r in [&r1, &r2, &r3] {
                match step(r).await {
                    Some((1, end, RolloutState::Progressing)) => ends.push(end),
                    _ => return false,
                }
            }
            ends.iter().all(|e| {
                e.duration_since(ends[0]).as_millis() < 300
                    && ends[0].duration_since(*e).as_millis() < 300
            })
        },
    )
    .await;
    let (_, deadline, _) = step(&r2).await.unwrap();
    let before = envoy_a.config_changes().await;

    let mut r1 = r1;
    r1.kill();
    let killed = Instant::now();
    let (mut new_leader, mut took) = (None, Duration::ZERO);
    eventually(WAIT, "another replica to lead", async || {
        for (i, r) in [&r2, &r3].into_iter().enumerate() {
            if r.try_status().await.is_ok_and(|s| role(&s) == "leader") {
                new_leader = Some(i);
                took = killed.elapsed();
                return true;
            }
        }
        false
    })
    .await;
    eprintln!("a new leader {took:?} after the kill");
    assert!(
        took <= TTL + Duration::from_secs(1),
        "a new leader after {took:?}"
    );
    let leader = [&r2, &r3][new_leader.unwrap()];

    // The rollout goes on from the same step with the same deadline.
    let (at, ends, state) = step(leader).await.unwrap();
    assert_eq!((at, state), (1, RolloutState::Progressing));
    let moved = ends.max(deadline) - ends.min(deadline);
    eprintln!("the step's deadline as the new leader reports it: {moved:?} off");
    // Both read from /status in whole milliseconds, each asked under load.
    assert!(
        moved < Duration::from_secs(1),
        "the step's deadline moved by {moved:?}"
    );

    // Envoy a moved to r3 and changed nothing.
    eventually(WAIT, "Envoy a in sync on r3", async || {
        holds(&r3, "edge-a").await
    })
    .await;
    assert_eq!(
        envoy_a.config_changes().await,
        before,
        "the failover changed nothing in Envoy"
    );

    // The new leader ends the step at its deadline: promoted.
    eventually(
        Duration::from_secs(20),
        "the canary to be promoted",
        async || matches!(step(leader).await, Some((_, _, RolloutState::Promoted))),
    )
    .await;
    // Step 1 ended at its deadline, and step 2 (8 s) started once every Envoy on every
    // replica had it.
    let promoted_after = deadline.elapsed();
    eprintln!("promoted {promoted_after:?} after the first step's deadline");
    assert!(
        promoted_after > Duration::from_millis(7_700)
            && promoted_after < Duration::from_millis(9_500),
        "promoted {promoted_after:?} after the first step's deadline, not one 8 s step later"
    );
    for traffic in [traffic_a, traffic_b] {
        let n = traffic.made() + 10;
        traffic.at_least(n).await;
        traffic
            .stop_all_answered("the leader's death and the rollout")
            .await;
    }
}

/// `cutover pause|promote SERVICE --admin REPLICA`: its output, and whether it succeeded.
fn command(replica: &Cutover, command: &str) -> (bool, String) {
    let out = std::process::Command::new(cutover::testing::cutover_binary())
        .args([command, "checkout", "--admin", &replica.admin.to_string()])
        .output()
        .expect("run cutover");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `blue` with the given endpoints, active: each list is another config.
fn plain(listener: std::net::SocketAddr, endpoints: &[&str]) -> String {
    checkout(
        listener,
        &format!(
            "    versions:\n      blue: {{ endpoints: [{}] }}\n    active: blue\n",
            endpoints.join(", ")
        ),
    )
}

/// The config version `replica` serves, once it serves one.
async fn version(replica: &Cutover) -> String {
    replica
        .status()
        .await
        .config_version
        .expect("a config is served")
}

/// Waits until both replicas serve the same config, other than `not`; returns it.
async fn both_serve_other_than(a: &Cutover, b: &Cutover, not: &str) -> String {
    let mut served = String::new();
    eventually(WAIT, "both replicas to serve a new config", async || {
        let (va, vb) = (version(a).await, version(b).await);
        served.clone_from(&va);
        va == vb && va != not
    })
    .await;
    served
}

/// Waits until `replica` leads.
async fn leads(replica: &Cutover) -> Duration {
    let asked = Instant::now();
    eventually(WAIT, "the replica to lead", async || {
        replica
            .try_status()
            .await
            .is_ok_and(|s| role(&s) == "leader")
    })
    .await;
    asked.elapsed()
}

/// `leader` leads and `follower` follows, as /status, /metrics and `cutover status` say.
async fn says_who_leads(leader: &Cutover, follower: &Cutover) {
    // Who leads, in /status, /metrics and `cutover status`.
    let l = leader.status().await.cluster.unwrap();
    let c = follower.status().await.cluster.unwrap();
    assert_eq!(
        (l.role.as_str(), l.leader.as_deref()),
        ("leader", Some(l.replica.as_str()))
    );
    assert_eq!(
        (c.role.as_str(), c.leader.as_deref()),
        ("follower", Some(l.replica.as_str()))
    );
    assert_eq!(c.leader_admin, Some(format!("http://{}", leader.admin)));
    assert_eq!(
        (
            leader.metric("cutover_cluster_leader").await,
            follower.metric("cutover_cluster_leader").await
        ),
        (1.0, 0.0)
    );
    assert!(follower.metric("cutover_cluster_record_revision").await >= 1.0);
    let shown = std::process::Command::new(cutover::testing::cutover_binary())
        .args(["status", "--admin", &follower.admin.to_string()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    let says = format!("{} (follower; {} leads)", c.replica, l.replica);
    assert!(shown.contains(&says), "{shown}");
}

/// Operator commands sent to a follower are the leader's to do, and reach it. Replicas that
/// read different copies of the file serve one config, the leader's; a replica with an older
/// copy that becomes leader keeps serving what the cluster served, and one with a newer copy
/// (edited while it followed) serves that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_leader_and_an_older_copy_of_the_file_never_rolls_back() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let rollout = canary(listener, &blue, &green, "1h");
    let mut r1 = replica(&etcd, dir.path(), "r1", &rollout).await;
    leads(&r1).await;
    let mut r2 = replica(&etcd, dir.path(), "r2", &rollout).await;
    let file = |name: &str| DeploymentFile::new(dir.path().join(name).join("deploy.yaml"));

    says_who_leads(&r1, &r2).await;

    // Commands to the follower, done by the leader.
    let (ok, said) = command(&r2, "pause");
    assert!(ok, "{said}");
    let state = async |r: &Cutover| {
        let mut s = r.status().await;
        s.services
            .remove("checkout")
            .and_then(|s| s.rollout)
            .map(|r| r.state)
    };
    assert_eq!(state(&r1).await, Some(RolloutState::Paused), "{said}");
    let (ok, said) = command(&r2, "promote");
    assert!(ok, "{said}");
    eventually(WAIT, "the promotion to be served by both", async || {
        state(&r1).await == Some(RolloutState::Promoted)
            && state(&r2).await == Some(RolloutState::Promoted)
    })
    .await;
    let history = r1.status().await.services["checkout"]
        .rollout
        .clone()
        .unwrap();
    assert!(
        format!("{history:?}").contains("the operator at 127.0.0.1"),
        "the history names who asked: {history:?}"
    );

    // r2's copy stays the rollout file; r1's (the leader's) moves on: the cluster serves r1's.
    let promoted = version(&r1).await;
    file("r1").write_renamed(&plain(listener, &["127.0.0.1:1"]));
    let one = both_serve_other_than(&r1, &r2, &promoted).await;
    // Editing a follower's copy changes nothing.
    file("r2").write_renamed(&plain(listener, &["127.0.0.1:7"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (version(&r1).await, version(&r2).await),
        (one.clone(), one.clone())
    );
    file("r2").write_renamed(&rollout);

    // The leader dies; r2, whose copy is a file the cluster served before, leads and serves
    // what the cluster served.
    r1.kill();
    let took = leads(&r2).await;
    assert!(
        took <= TTL + Duration::from_secs(1),
        "r2 led {took:?} after the kill"
    );
    assert_eq!(
        version(&r2).await,
        one,
        "r2 must not roll back to its older copy"
    );
    eventually(WAIT, "r2 to say why its copy is not served", async || {
        r2.status()
            .await
            .cluster
            .and_then(|c| c.local_file)
            .is_some_and(|l| l.contains("served before"))
    })
    .await;
    assert_eq!(
        version(&r2).await,
        one,
        "r2 must not roll back to its older copy"
    );
    // Its copy changes: that is a new decision.
    file("r2").write_renamed(&plain(listener, &["127.0.0.1:1", "127.0.0.1:2"]));
    let two = eventually_other(&r2, &one).await;

    // r1 comes back as a follower with a newer copy (edited while it was down): it serves the
    // cluster's config; when it leads, its copy is a new file and is served.
    file("r1").write_renamed(&plain(
        listener,
        &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
    ));
    r1.start_again().await;
    eventually(WAIT, "r1 to serve the cluster's config", async || {
        r1.try_status()
            .await
            .is_ok_and(|s| s.config_version.as_deref() == Some(two.as_str()))
    })
    .await;
    r2.kill();
    leads(&r1).await;
    eventually_other(&r1, &two).await;
    let _ = &mut r2;
}

/// Waits until `replica` serves a config other than `not`; returns it.
async fn eventually_other(replica: &Cutover, not: &str) -> String {
    let mut served = String::new();
    eventually(WAIT, "a new config to be served", async || {
        served = version(replica).await;
        served != not
    })
    .await;
    served
}

/// A rollout check counts what the Envoys of every replica reported: the leader has no Envoy of
/// its own, the only Envoy (its xDS and its telemetry on a follower) sees the canary fail, and
/// the leader rolls the canary back on those figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_counts_what_the_envoys_of_every_replica_reported() {
    let (Some(envoy_bin), Some(etcd)) = (envoy_binary(), EtcdCluster::start(1).await) else {
        return;
    };
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    green.set_status(500);
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let rollout = canary(listener, &blue, &green, "30s").replace(
        "        interval: 30s\n",
        "        interval: 30s\n        analysis: { interval: 1s, max_error_rate: 5%, min_requests: 10, failure_limit: 1 }\n    outlier_detection: { enabled: false }\n",
    );
    let before = format!(
        "{}    active: blue\n",
        &rollout[..rollout.find("    strategy:").unwrap()]
    );
    let r1 = replica(&etcd, dir.path(), "r1", &before).await;
    leads(&r1).await;
    let r2 = replica(&etcd, dir.path(), "r2", &before).await;
    let envoy = Envoy::start_with(&envoy_bin, dir.path(), "edge", r2.ads, listener, &[]).await;
    assert!(
        r1.status().await.nodes.is_empty(),
        "the leader has no Envoy"
    );

    DeploymentFile::new(dir.path().join("r1/deploy.yaml")).write_renamed(&rollout);
    let mut last = None;
    eventually(
        Duration::from_secs(30),
        "the leader to roll the canary back",
        async || {
            for _ in 0..10 {
                let _ = envoy.get("/").await;
            }
            let mut s = r1.status().await;
            last = s.services.remove("checkout").and_then(|s| s.rollout);
            last.as_ref()
                .is_some_and(|r| r.state == RolloutState::RolledBack)
        },
    )
    .await;
    let reason = last.unwrap().reason.unwrap_or_default();
    assert!(reason.contains("error"), "{reason}");
    assert!(green.hits() > 0, "the canary got requests");
}

/// A canary whose steps take `interval` each: the leader writes a record at every step.
fn stepping(listener: std::net::SocketAddr, interval: &str) -> String {
    let steps: Vec<String> = (1..=20).map(|i| (i * 5).to_string()).collect();
    checkout(
        listener,
        &format!(
            "    versions:
      blue:  {{ endpoints: [127.0.0.1:1] }}
      green: {{ endpoints: [127.0.0.1:2] }}
    strategy:
      canary:
        stable: blue
        canary: green
        steps: [{}]
        interval: {interval}
",
            steps.join(", ")
        ),
    )
}

/// Every record written so far under `/cutover/e2e`, in order.
async fn history(etcd: &EtcdCluster) -> Vec<cutover::replica::Recorded> {
    let store = cutover::cluster::Etcd::connect(&etcd.endpoints(), "/cutover/e2e")
        .await
        .unwrap();
    let newest = store.load().await.unwrap().map_or(0, |r| r.revision);
    let mut records = store.follow(0).await.unwrap();
    let mut out = Vec::new();
    while out
        .last()
        .is_none_or(|r: &cutover::replica::Recorded| r.revision < newest)
    {
        out.push(records.next().await.unwrap());
    }
    out
}

/// The canary's step on `replica`.
async fn step_of(replica: &Cutover) -> Option<usize> {
    let mut s = replica.try_status().await.ok()?;
    s.services.remove("checkout")?.rollout?.step
}

/// A leader paused past its lease (SIGSTOP) is replaced; once it runs again (SIGCONT) it writes
/// nothing (etcd's history has no record of it after its successor's first) and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_writes_nothing_after_its_successor_and_follows() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = stepping(free_port(), "500ms");
    let r1 = replica(&etcd, dir.path(), "r1", &text).await;
    leads(&r1).await;
    let r2 = replica(&etcd, dir.path(), "r2", &text).await;
    eventually(WAIT, "a few steps", async || step_of(&r2).await >= Some(3)).await;
    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &r1.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    let took = leads(&r2).await;
    assert!(
        took <= TTL + Duration::from_secs(1),
        "r2 led {took:?} after the pause"
    );
    let at = step_of(&r2).await.unwrap();
    eventually(WAIT, "r2 to take steps", async || {
        step_of(&r2).await > Some(at)
    })
    .await;
    // r1 wakes up believing it leads, with steps overdue: whatever it tries is refused.
    signal("-CONT");
    eventually(WAIT, "r1 to follow", async || {
        r1.try_status().await.is_ok_and(|s| role(&s) == "follower")
    })
    .await;
    eventually(WAIT, "r2 to take more steps", async || {
        step_of(&r2).await > Some(at + 2)
    })
    .await;
    let records = history(&etcd).await;
    let first_of_r2 = records.iter().position(|r| r.leader == "r2").unwrap();
    let late: Vec<_> = records[first_of_r2..]
        .iter()
        .filter(|r| r.leader != "r2")
        .map(|r| (r.revision, r.leader.clone()))
        .collect();
    assert!(late.is_empty(), "written after r2 was elected: {late:?}");
    assert!(records[..first_of_r2].iter().all(|r| r.leader == "r1"));
    assert_eq!(
        version(&r1).await,
        version(&r2).await,
        "r1 serves the record"
    );
}

/// One etcd member of three down changes nothing; without a majority every replica keeps
/// serving, decides nothing, and says why; with the majority back the rollout goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_nothing_advances_and_the_rollout_resumes_when_it_is_back() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = stepping(free_port(), "1s");
    let r1 = replica(&etcd, dir.path(), "r1", &text).await;
    leads(&r1).await;
    let r2 = replica(&etcd, dir.path(), "r2", &text).await;
    eventually(WAIT, "the first steps", async || {
        step_of(&r2).await >= Some(2)
    })
    .await;
    // One member down: steps go on.
    etcd.kill(2);
    let at = step_of(&r2).await.unwrap();
    eventually(WAIT, "steps with a member down", async || {
        step_of(&r2).await >= Some(at + 2)
    })
    .await;
    // No majority.
    etcd.kill(1);
    for r in [&r1, &r2] {
        eventually(WAIT, "the replica to say it cannot decide", async || {
            r.try_status().await.is_ok_and(|s| {
                let c = s.cluster.unwrap_or_default();
                c.role == "unknown" && c.etcd_problem.is_some()
            })
        })
        .await;
    }
    // Each serves the last record it has (a follower's may be one behind the leader's).
    let mut held = Vec::new();
    for r in [&r1, &r2] {
        held.push((step_of(r).await, version(r).await));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (r, (step, served)) in [&r1, &r2].into_iter().zip(&held) {
        assert_eq!(&step_of(r).await, step, "a step was taken without etcd");
        assert_eq!(
            &version(r).await,
            served,
            "what is served changed without etcd"
        );
    }
    let held = held[0].0.max(held[1].0);
    let why = r1.status().await.cluster.unwrap().etcd_problem.unwrap();
    eprintln!("without a majority, /status says: {why}");
    let readyz = reqwest::get(format!("http://{}/readyz", r1.admin))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200, "a replica without etcd still serves");
    let said = readyz.text().await.unwrap();
    assert!(
        said.contains("nothing advances") && said.contains("etcd"),
        "{said}"
    );
    // The majority is back: a leader decides from the record, and the steps go on.
    etcd.restart(1).await;
    eventually(Duration::from_secs(20), "the steps to go on", async || {
        step_of(&r1).await > held && step_of(&r2).await > held
    })
    .await;
}

/// A red-black retirement waits for the Envoys of every replica: an Envoy on a follower that
/// has not answered the switch holds the old version in place (its grace does not even start);
/// once it answers, the grace runs and the old version is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_waits_for_an_envoy_on_another_replica() {
    use cutover::testing::Protocol;
    use cutover::testing::xds::Client;
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let red_black = |active: &str| {
        checkout(
            listener,
            &format!(
                "    versions:
      red:   {{ endpoints: [127.0.0.1:1] }}
      black: {{ endpoints: [127.0.0.1:2] }}
    strategy: {{ red-black: {{ active: {active}, grace: 1s }} }}
"
            ),
        )
    };

    let r1 = replica(&etcd, dir.path(), "r1", &red_black("red")).await;
    leads(&r1).await;
    let r2 = replica(&etcd, dir.path(), "r2", &red_black("red")).await;
    // A fake Envoy on the follower holds everything, then stops answering.
    let mut slow = Client::connect(r2.ads, Protocol::Sotw, "slow").await;
    slow.come_up().await;
    eventually(WAIT, "r2 to count its Envoy in sync", async || {
        holds(&r2, "slow").await
    })
    .await;
    let retiring = async |r: &Cutover| {
        let s = r.status().await;
        let service = &s.services["checkout"];
        (service.deployed.clone(), service.retiring.clone())
    };

    DeploymentFile::new(dir.path().join("r1/deploy.yaml")).write_renamed(&red_black("black"));
    eventually(WAIT, "the switch to be served", async || {
        retiring(&r2).await.0 == ["black", "red"]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (deployed, waiting) = retiring(&r1).await;
    assert_eq!(
        deployed,
        ["black", "red"],
        "red retired before every Envoy answered"
    );
    assert!(waiting.iter().all(|w| w.awaiting_ack), "{waiting:?}");

    // It answers: the grace runs, then red is retired everywhere.
    let answered = Instant::now();
    slow.settle(Duration::from_millis(300)).await;
    eventually(WAIT, "red to be retired", async || {
        retiring(&r1).await.0 == ["black"] && retiring(&r2).await.0 == ["black"]
    })
    .await;
    assert!(
        answered.elapsed() >= Duration::from_millis(900),
        "the grace did not run"
    );
}

/// When each of a red-black retirement and an endpoint's drain is due, as a replica reports it
/// (absolute times: the countdown read from `/status` added to when it was asked).
async fn deadlines(replica: &Cutover) -> Option<(Instant, Instant)> {
    let asked = Instant::now();
    let s = replica.try_status().await.ok()?;
    let service = s.services.get("checkout")?;
    let retires = service
        .retiring
        .iter()
        .find(|r| r.version == "red" && !r.awaiting_ack)?
        .retires_in_seconds?;
    let removed = service.draining.iter().find_map(|d| d.removed_in_seconds)?;
    Some((
        asked + Duration::from_secs_f64(retires),
        asked + Duration::from_secs_f64(removed),
    ))
}

/// A red-black grace and an endpoint's drain are running when the leader is killed: the
/// successor reports the same deadlines and retires the version and removes the endpoint at
/// them, to the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_and_a_drain_running_when_the_leader_dies_end_at_their_deadlines() {
    let (Some(envoy_bin), Some(etcd)) = (envoy_binary(), EtcdCluster::start(1).await) else {
        return;
    };
    let (red, b1, b2) = (
        Upstream::start("red").await,
        Upstream::start("b1").await,
        Upstream::start("b2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let file = |active: &str, black: &str| {
        checkout(
            listener,
            &format!(
                "    versions:
      red:   {{ endpoints: [{red}] }}
      black: {{ endpoints: [{black}] }}
    strategy: {{ red-black: {{ active: {active}, grace: 6s }} }}
",
                red = red.addr
            ),
        )
    };
    let before = file("red", &format!("{}, {}", b1.addr, b2.addr));
    let r1 = replica(&etcd, dir.path(), "r1", &before).await;
    leads(&r1).await;
    let r2 = replica(&etcd, dir.path(), "r2", &before).await;
    let envoy = Envoy::start_with(&envoy_bin, dir.path(), "edge", r2.ads, listener, &[]).await;
    eventually(WAIT, "the Envoy in sync on r2", async || {
        holds(&r2, "edge").await
    })
    .await;

    // The switch to black starts red's 6 s grace; then b2 leaves the file and drains for the
    // default drain period (5 s).
    let leaders_file = DeploymentFile::new(dir.path().join("r1/deploy.yaml"));
    leaders_file.write_renamed(&file("black", &format!("{}, {}", b1.addr, b2.addr)));
    eventually(WAIT, "the switch to be served", async || {
        r2.status().await.services["checkout"].deployed == ["black", "red"]
    })
    .await;
    leaders_file.write_renamed(&file("black", &b1.addr.to_string()));
    let mut due = None;
    eventually(WAIT, "the grace and the drain to run", async || {
        due = deadlines(&r2).await;
        due.is_some()
    })
    .await;
    let (retires, removed) = due.unwrap();

    let mut r1 = r1;
    r1.kill();
    leads(&r2).await;
    let (retires_then, removed_then) = deadlines(&r2).await.expect("both still running");
    for (what, before, after) in [
        ("red's retirement", retires, retires_then),
        ("b2's removal", removed, removed_then),
    ] {
        let moved = after.max(before) - after.min(before);
        assert!(
            moved < Duration::from_millis(500),
            "{what} moved by {moved:?} with the new leader"
        );
    }

    let (mut retired_at, mut removed_at) = (None, None);
    eventually(
        Duration::from_secs(15),
        "red retired and b2 removed",
        async || {
            let s = r2.status().await;
            let service = &s.services["checkout"];
            if retired_at.is_none() && service.deployed == ["black"] {
                retired_at = Some(Instant::now());
            }
            if removed_at.is_none() && service.draining.is_empty() {
                removed_at = Some(Instant::now());
            }
            retired_at.is_some() && removed_at.is_some()
        },
    )
    .await;
    for (what, due, done) in [
        ("red's retirement", retires, retired_at.unwrap()),
        ("b2's removal", removed, removed_at.unwrap()),
    ] {
        let early = due.saturating_duration_since(done);
        let late = done.saturating_duration_since(due);
        eprintln!("{what}: {early:?} early, {late:?} late");
        assert!(
            early < Duration::from_millis(200) && late < Duration::from_secs(1),
            "{what} was due at its deadline: {early:?} early, {late:?} late"
        );
    }
    envoy.get("/").await.expect("served by black");
}

/// `cutover wait drained` asked of a follower with no Envoy of its own waits for the requests in
/// flight at an Envoy on the leader: the replica asked gathers what the Envoys of every
/// replica answered and reported (`GET /wait-facts`). Alone, it would say "drained" at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_asked_of_a_follower_waits_for_requests_at_an_envoy_on_the_leader() {
    let (Some(envoy_bin), Some(etcd)) = (envoy_binary(), EtcdCluster::start(1).await) else {
        return;
    };
    let (live_1, live_2) = (
        Upstream::start("live-1").await,
        Upstream::start("live-2").await,
    );
    let (l1, l2) = (live_1.addr.to_string(), live_2.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let listener = free_port();
    let r1 = replica(&etcd, dir.path(), "r1", &plain(listener, &[&l1, &l2])).await;
    leads(&r1).await;
    let r2 = replica(&etcd, dir.path(), "r2", &plain(listener, &[&l1, &l2])).await;
    let envoy = Envoy::start_with(&envoy_bin, dir.path(), "edge", r1.ads, listener, &[]).await;
    envoy.get("/").await.expect("served");

    live_1.set_delay(Duration::from_secs(3));
    live_2.set_delay(Duration::from_secs(3));
    let traffic = cutover::testing::requests_in_background(listener, 4);
    eventually(WAIT, "requests in flight to live-1", async || {
        live_1.in_flight() > 0
    })
    .await;
    let drained = format!("{{ address: {l1}, drain: true }}");
    DeploymentFile::new(dir.path().join("r1/deploy.yaml"))
        .write_renamed(&plain(listener, &[&drained, &l2]));

    let mut wait = std::process::Command::new(cutover::testing::cutover_binary());
    wait.args(["wait", "drained", "checkout", &l1, "--timeout", "20s"])
        .args(["--admin", &r2.admin.to_string()]);
    let out = tokio::task::spawn_blocking(move || wait.output().expect("run cutover wait"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        live_1.in_flight(),
        0,
        "drained while requests were in flight at the leader's Envoy; it said: {stderr}"
    );
    assert!(
        stderr.contains(&format!("request(s) in flight to {l1}")) && stderr.contains("Envoy edge"),
        "it said what it waited for: {stderr}"
    );
    for t in traffic {
        assert_eq!(t.await.unwrap().unwrap(), 200, "a slow request failed");
    }
}

/// `cutover serve --etcd https://… --etcd-ca --etcd-cert --etcd-key`: a replica reaches etcd
/// over mutual TLS and leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_etcd_over_mutual_tls() {
    use cutover::testing::pki::Ca;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("etcd CA");
    let server = ca.write(dir.path(), "etcd", &ca.server(&["127.0.0.1"]));
    let client = ca.write(dir.path(), "client", &ca.client(&["r1"]));
    let Some(etcd) = EtcdCluster::start_tls(1, server).await else {
        return;
    };
    let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
    file.write_renamed(&plain(free_port(), &["127.0.0.1:1"]));
    let endpoints = etcd.endpoints().join(",");
    assert!(endpoints.starts_with("https://"), "{endpoints}");
    let args = [
        "--etcd",
        &endpoints,
        "--etcd-ca",
        client.ca.to_str().unwrap(),
        "--etcd-cert",
        client.cert.to_str().unwrap(),
        "--etcd-key",
        client.key.to_str().unwrap(),
    ];
    let r1 = Cutover::start_at(dir.path(), &file.path, free_port(), &args, TEST_LOG).await;
    leads(&r1).await;
    assert!(r1.status().await.config_version.is_some());
}
