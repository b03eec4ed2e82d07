//! End to end with a real Envoy: a TCP listener (`tcp: <service>`) in front of line echo
//! servers, in both xDS protocols. A switch moves new connections and leaves open ones where
//! they are: Envoy gets each version's filter chain unchanged and only a new matcher, an
//! in-place update that drains nothing (this Envoy's drain time is 1 s, so a drained chain would
//! cut the open connection within the test). `wait drained` returns only once the last
//! connection to a draining endpoint has closed, a canary splits connections by weight, a
//! rolling drain sends new connections to the other endpoints, a red-black version keeps its
//! connections for its grace, and a canary rollout is judged on its connections and connect
//! failures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use cutover::api::{RolloutReport, RolloutState};
use cutover::testing::tcp::{TcpEcho, TcpLine};
use cutover::testing::{
    Cutover, DeploymentFile, Envoy, WAIT, bootstrap_with, envoy_binary, eventually, free_port,
    in_both_xds_modes, wait_for,
};

/// One Envoy worker (as every test Envoy) and a drain time short enough to show in a test.
const FLAGS: &[&str] = &[
    "--concurrency",
    "1",
    "--log-level",
    "info",
    "--drain-time-s",
    "1",
];

fn tcp_file(listener: SocketAddr, blue: &TcpEcho, green: &TcpEcho, strategy: &str) -> String {
    format!(
        "\
listeners:
  - name: db
    address: {listener}
    tcp: echo
services:
  echo:
    health_check: {{ tcp: true, interval: 1s, healthy_threshold: 1 }}
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    {strategy}
",
        blue = blue.addr,
        green = green.addr,
    )
}

async fn wait_cmd(cutover: &Cutover, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("wait")
        .args(args)
        .args(["--admin", &cutover.admin.to_string()]);
    tokio::task::spawn_blocking(move || cmd.output().expect("run cutover wait"))
        .await
        .unwrap()
}

/// A canary of green at `weight` percent.
fn canary_at(weight: u32) -> String {
    format!("strategy: {{ canary: {{ stable: blue, canary: green, weight: {weight} }} }}")
}

/// Blue and green echo servers, cutover serving them behind the TCP listener with `strategy`,
/// and an Envoy (node `edge-1`) in sync with it.
struct TcpStack {
    blue: TcpEcho,
    green: TcpEcho,
    listener: SocketAddr,
    file: DeploymentFile,
    cutover: Cutover,
    envoy: Envoy,
    _dir: tempfile::TempDir,
}

impl TcpStack {
    /// `None` (the test skipped, off CI) without Envoy.
    async fn start(xds: cutover::testing::Protocol, strategy: &str) -> Option<TcpStack> {
        let envoy_bin = envoy_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let (blue, green) = (TcpEcho::start("blue").await, TcpEcho::start("green").await);
        let listener = free_port();
        let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
        file.write_renamed(&tcp_file(listener, &blue, &green, strategy));
        let cutover = Cutover::start(dir.path(), &file.path).await;
        let bootstrap = bootstrap_with("edge-1", cutover.ads, xds.bootstrap_args());
        let envoy = Envoy::spawn_with_flags(
            &envoy_bin,
            dir.path(),
            "edge-1",
            &bootstrap,
            listener,
            FLAGS,
        )
        .await;
        envoy.wait_live().await;
        cutover.wait_in_sync("edge-1").await;
        Some(TcpStack {
            blue,
            green,
            listener,
            file,
            cutover,
            envoy,
            _dir: dir,
        })
    }
}

in_both_xds_modes! {
    async fn a_switch_moves_new_connections_and_leaves_open_ones_until_they_close(xds: Protocol) {
        let Some(s) = TcpStack::start(xds, "active: blue").await else {
            return;
        };
        let (listener, file, cutover, envoy) = (s.listener, &s.file, &s.cutover, &s.envoy);
        let (blue, green) = (&s.blue, &s.green);
        cutover.wait_in_sync("edge-1").await;
        eventually(WAIT, "a connection through the listener to reach blue", async || {
            TcpLine::once(listener, "hi").await.is_ok_and(|a| a == "blue:hi")
        })
        .await;
        let mut long = TcpLine::connect(listener).await.unwrap();
        assert_eq!(long.send("hello").await.unwrap(), "blue:hello");
        let in_place = envoy.stat("listener_manager.listener_in_place_updated").await;

        // The switch: new connections reach green, the open one stays on blue, and Envoy
        // drains no filter chain (it would close the connection after 1 s).
        file.write_renamed(&tcp_file(listener, blue, green, "active: green"));
        // Envoy ACKs a listener before its workers have the update.
        eventually(WAIT, "new connections to reach green", async || {
            TcpLine::once(listener, "new").await.is_ok_and(|a| a == "green:new")
        })
        .await;
        for i in 0..5 {
            assert_eq!(TcpLine::once(listener, "new").await.unwrap(), "green:new", "connection {i}");
        }
        assert_eq!(
            envoy.stat("listener_manager.listener_in_place_updated").await,
            in_place + 1,
            "the switch is an in-place filter chain update"
        );
        assert_eq!(envoy.stat("listener_manager.total_filter_chains_draining").await, 0);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(long.send("still").await.unwrap(), "blue:still");
        assert_eq!(envoy.stat("listener_manager.listener_removed").await, 0);

        // Blue drains: `wait drained` waits while the long connection is open...
        let drained = tcp_file(listener, blue, green, "active: green")
            .replace(&format!("[{}]", blue.addr), &format!("[{{ address: {}, drain: true }}]", blue.addr));
        file.write_renamed(&drained);
        cutover.wait_in_sync("edge-1").await;
        let target = blue.addr.to_string();
        let out = wait_cmd(cutover, &["drained", "echo", &target, "--timeout", "3s"]).await;
        assert_eq!(out.status.code(), Some(1), "returned with a connection open: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("in flight"),
            "it says what it waits for: {out:?}"
        );
        assert_eq!(long.send("draining").await.unwrap(), "blue:draining");
        assert_eq!(blue.open(), 1);

        // ...and returns once it has closed.
        drop(long);
        let out = wait_cmd(cutover, &["drained", "echo", &target, "--timeout", "20s"]).await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(blue.open(), 0);
        assert_eq!(TcpLine::once(listener, "after").await.unwrap(), "green:after");
    }
}

in_both_xds_modes! {
    async fn a_canary_splits_connections_by_weight_and_its_steps_cut_none(xds: Protocol) {
        let Some(s) = TcpStack::start(xds, &canary_at(0)).await else {
            return;
        };
        let (listener, file, cutover, envoy) = (s.listener, &s.file, &s.cutover, &s.envoy);
        let (blue, green) = (&s.blue, &s.green);
        let canary = |weight: u32| {
            tcp_file(
                listener,
                blue,
                green,
                &canary_at(weight),
            )
        };
        cutover.wait_in_sync("edge-1").await;
        eventually(WAIT, "connections to reach blue", async || {
            TcpLine::once(listener, "hi").await.is_ok_and(|a| a == "blue:hi")
        })
        .await;
        let mut on_blue = TcpLine::connect(listener).await.unwrap();
        assert_eq!(on_blue.send("x").await.unwrap(), "blue:x");

        file.write_renamed(&canary(30));
        cutover.wait_in_sync("edge-1").await;
        // Envoy ACKs a listener before its workers have the update.
        eventually(WAIT, "a connection to reach green", async || {
            TcpLine::once(listener, "x").await.is_ok_and(|a| a == "green:x")
        })
        .await;
        let n = 400;
        let mut to_green = 0;
        let mut on_green = None;
        for _ in 0..n {
            let mut c = TcpLine::connect(listener).await.unwrap();
            let answer = c.send("x").await.unwrap();
            if answer == "green:x" {
                to_green += 1;
                on_green.get_or_insert(c);
            } else {
                assert_eq!(answer, "blue:x");
            }
        }
        // Binomial(400, 0.3): mean 120, standard deviation 9.2; ±5 of them.
        assert!((74..=166).contains(&to_green), "{to_green} of {n} connections reached green at 30%");
        let mut on_green = on_green.expect("a connection on green");

        // The next step and the promotion change only the matcher: both open connections
        // stay where they are, past Envoy's 1 s drain time.
        file.write_renamed(&canary(60));
        cutover.wait_in_sync("edge-1").await;
        file.write_renamed(&tcp_file(listener, blue, green, "active: green"));
        cutover.wait_in_sync("edge-1").await;
        // The canary's weights went through its fallback cluster `echo/green~blue`, which
        // lingers for the drain period (5 s) and then goes: the chain of its connections stays.
        eventually(Duration::from_secs(15), "the fallback cluster to go", async || {
            !envoy.clusters().await.contains("echo/green~blue::")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(on_blue.send("y").await.unwrap(), "blue:y");
        assert_eq!(on_green.send("y").await.unwrap(), "green:y");
        assert_eq!(envoy.stat("listener_manager.total_filter_chains_draining").await, 0);
        assert_eq!(TcpLine::once(listener, "z").await.unwrap(), "green:z");
    }
}

/// Connections opened one after the other until stopped, each saying one line: how many got an
/// answer, by answer, and how many failed.
struct Connections {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(BTreeMap<String, usize>, usize)>,
}

impl Connections {
    fn start(listener: SocketAddr) -> Connections {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut answers, mut failed) = (BTreeMap::new(), 0);
            while !*stopped.borrow_and_update() {
                match TcpLine::once(listener, "x").await {
                    Ok(a) => *answers.entry(a).or_insert(0) += 1,
                    Err(_) => failed += 1,
                }
                // Bounded: at most 50 connections a second.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answers, failed)
        });
        Connections { stop, task }
    }

    async fn stop(self) -> (BTreeMap<String, usize>, usize) {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

fn rollout_file(listener: SocketAddr, blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        "\
listeners:
  - name: db
    address: {listener}
    tcp: echo
services:
  echo:
    # Ejections would hide the canary's failures behind its fallback to stable.
    outlier_detection: {{ enabled: false }}
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    strategy:
      canary:
        stable: blue
        canary: green
        steps: [50, 100]
        interval: 3s
        analysis: {{ interval: 1s, max_error_rate: 5%, min_requests: 5, failure_limit: 1 }}
"
    )
}

async fn wait_rollout(cutover: &Cutover, state: RolloutState) -> RolloutReport {
    wait_for(
        Duration::from_secs(30),
        &format!("the rollout to be {state}"),
        async || {
            let mut status = cutover.status().await;
            match status.services.remove("echo").and_then(|s| s.rollout) {
                Some(r) if r.state == state => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

in_both_xds_modes! {
    async fn a_tcp_canary_is_judged_on_its_connections(xds: Protocol) {
        let Some(s) = TcpStack::start(xds, "active: blue").await else {
            return;
        };
        let (listener, file, cutover) = (s.listener, &s.file, &s.cutover);
        let (blue, green) = (&s.blue, &s.green);
        cutover.wait_in_sync("edge-1").await;

        // A canary whose endpoint refuses connections: rolled back on its connect failures.
        let nobody = free_port();
        let load = Connections::start(listener);
        file.write_renamed(&rollout_file(listener, blue.addr, nobody));
        let r = wait_rollout(cutover, RolloutState::RolledBack).await;
        load.stop().await;
        let reason = r.reason.as_deref().unwrap();
        assert!(reason.starts_with("error rate "), "{r:?}");
        assert_eq!(r.weight, Some(0.0), "{r:?}");
        let check = r.last_check.as_ref().unwrap();
        assert!(check.errors > 0 && check.requests >= 5, "{check:?}");

        // A canary that accepts them is promoted step by step. The file without the canary
        // ends the rolled-back rollout first: read only together with the next save (the
        // watcher takes the last of a burst), the same canary version would stay rolled back.
        file.write_renamed(&tcp_file(listener, blue, green, "active: blue"));
        wait_for(WAIT, "the file to end the rollout", async || {
            match cutover.status().await.services.remove("echo").and_then(|s| s.rollout) {
                None => Ok(()),
                Some(r) => Err(format!("{r:?}")),
            }
        })
        .await;
        cutover.wait_in_sync("edge-1").await;
        let load = Connections::start(listener);
        file.write_renamed(&rollout_file(listener, blue.addr, green.addr));
        let r = wait_rollout(cutover, RolloutState::Promoted).await;
        let (answers, failed) = load.stop().await;
        assert_eq!(failed, 0, "{answers:?}");
        assert!(answers.get("green:x").is_some_and(|n| *n > 0), "{answers:?}");
        assert!(r.failed_checks == 0, "{r:?}");
        assert_eq!(TcpLine::once(listener, "z").await.unwrap(), "green:z");
    }
}

in_both_xds_modes! {
    async fn a_rolling_drain_and_a_red_black_retirement_with_open_connections(xds: Protocol) {
        let Some(s) = TcpStack::start(xds, "active: blue").await else {
            return;
        };
        let (listener, file, cutover, envoy) = (s.listener, &s.file, &s.cutover, &s.envoy);
        let (blue, green) = (&s.blue, &s.green);
        let blue2 = TcpEcho::start("blue2").await;
        // Blue gets a second endpoint.
        let two = |strategy: &str, first: &str| {
            tcp_file(listener, blue, green, strategy).replace(
                &format!("[{}]", blue.addr),
                &format!("[{first}, {}]", blue2.addr),
            )
        };
        file.write_renamed(&two("active: blue", &blue.addr.to_string()));
        cutover.wait_in_sync("edge-1").await;
        eventually(WAIT, "both blue endpoints to take connections", async || {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..4 {
                if let Ok(a) = TcpLine::once(listener, "x").await {
                    seen.insert(a);
                }
            }
            seen.len() == 2
        })
        .await;
        let mut on_blue = None;
        let mut others = Vec::new();
        for _ in 0..6 {
            let mut c = TcpLine::connect(listener).await.unwrap();
            if c.send("hi").await.unwrap() == "blue:hi" && on_blue.is_none() {
                on_blue = Some(c);
            } else {
                others.push(c);
            }
        }
        let mut long = on_blue.expect("a connection on blue's first endpoint");

        // Rolling: the first endpoint drains. New connections go to the other; the open one
        // goes on.
        let drained = format!("{{ address: {}, drain: true }}", blue.addr);
        file.write_renamed(&two("active: blue", &drained));
        cutover.wait_in_sync("edge-1").await;
        // Round robin alternates: one connection to blue2 proves nothing, four in a row do.
        eventually(WAIT, "new connections to avoid the drained endpoint", async || {
            for _ in 0..4 {
                if !TcpLine::once(listener, "n").await.is_ok_and(|a| a == "blue2:n") {
                    return false;
                }
            }
            true
        })
        .await;
        for i in 0..10 {
            assert_eq!(TcpLine::once(listener, "n").await.unwrap(), "blue2:n", "connection {i}");
        }
        assert_eq!(long.send("draining").await.unwrap(), "blue:draining");

        // Red-black to green: new connections to green; the open ones stay on blue through the
        // grace period. Retiring blue removes its cluster, and Envoy closes the connections of a
        // removed cluster: the grace is what they get (README, "TCP services").
        let cdx_before = envoy.stat("cluster_manager.cluster_removed").await;
        file.write_renamed(&two("strategy: { red-black: { active: green, grace: 2s } }", &drained));
        eventually(WAIT, "new connections to reach green", async || {
            TcpLine::once(listener, "g").await.is_ok_and(|a| a == "green:g")
        })
        .await;
        assert_eq!(long.send("grace").await.unwrap(), "blue:grace");
        eventually(WAIT, "blue to be retired", async || {
            envoy.stat("cluster_manager.cluster_removed").await > cdx_before
        })
        .await;
        eventually(WAIT, "blue's connections to be closed with its cluster", async || {
            long.send("retired").await.is_err()
        })
        .await;
        for (i, c) in others.iter_mut().enumerate() {
            assert!(c.send("retired").await.is_err(), "connection {i} to blue2");
        }
        assert_eq!(TcpLine::once(listener, "after").await.unwrap(), "green:after");
        // No filter chain drained at any point: only the cluster went.
        assert_eq!(envoy.stat("listener_manager.total_filter_chains_draining").await, 0);
    }
}
