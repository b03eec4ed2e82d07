//! End to end with a real Envoy and two cutover replicas serving the same deployment file: Envoy
//! is bootstrapped with both (`cutover bootstrap --ads A,B`, one xDS cluster of two endpoints).
//! SIGKILL the one it is connected to and it reconnects to the other, which serves the same
//! content-hash versions: no cluster or listener is added, modified or removed, and no request
//! through Envoy fails.

use std::time::{Duration, Instant};

use cutover::testing::{
    Cutover, DeploymentFile, Envoy, NODE, Upstream, WAIT, checkout_deployment, envoy_binary,
    eventually, free_port, in_both_xds_modes,
};

/// Two replicas, each with its own copy of `text` (and its own state), started with `args`;
/// their directories (the first for the Envoy's files too) and the processes.
async fn two_replicas(text: &str, args: &[&str]) -> ([tempfile::TempDir; 2], Vec<Cutover>) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut replicas = Vec::new();
    for dir in &dirs {
        let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
        file.write_renamed(text);
        replicas.push(Cutover::start_with_args(dir.path(), &file.path, args).await);
    }
    (dirs, replicas)
}

/// Whether `replica` sees the Envoy, in sync.
async fn holds(replica: &Cutover) -> bool {
    replica
        .try_status()
        .await
        .is_ok_and(|s| s.nodes.iter().any(|n| n.id == NODE && n.in_sync))
}

in_both_xds_modes! {
    async fn envoy_fails_over_to_another_replica_and_changes_nothing(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let blue = [Upstream::start("blue-1").await, Upstream::start("blue-2").await];
        let green = [Upstream::start("green-1").await];
        let listener = free_port();
        let addrs = |u: &[Upstream]| u.iter().map(|u| u.addr).collect::<Vec<_>>();
        let text = checkout_deployment(listener, &addrs(&blue), &addrs(&green), "blue");
        let ([dir_a, _dir_b], mut replicas) = two_replicas(&text, &[]).await;
        let both = format!("{},{}", replicas[0].ads, replicas[1].ads);
        let envoy =
            Envoy::start_with(&envoy_bin, dir_a.path(), NODE, &both, listener, xds.bootstrap_args())
                .await;
        eventually(WAIT, "one replica to hold the Envoy in sync", async || {
            holds(&replicas[0]).await || holds(&replicas[1]).await
        })
        .await;
        let first = usize::from(!holds(&replicas[0]).await);
        let other = 1 - first;
        let before = envoy.config_changes().await;
        assert_eq!(before["cluster_manager.cluster_added"], 3, "{before:?}");

        let traffic = envoy.background_traffic();
        traffic.at_least(10).await;
        replicas[first].kill();
        let killed = Instant::now();
        eventually(WAIT, "the other replica to hold the Envoy in sync", async || {
            holds(&replicas[other]).await
        })
        .await;
        let failover = killed.elapsed();
        eprintln!("{xds:?}: Envoy in sync on the other replica {failover:?} after the kill");
        assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
        let n = traffic.made() + 10;
        traffic.at_least(n).await;
        traffic.stop_all_answered("the failover").await;
        assert_eq!(
            envoy.config_changes().await,
            before,
            "the other replica serves the same versions: Envoy changes nothing"
        );
        assert_eq!(envoy.stat("control_plane.connected_state").await, 1);
    }
}

/// Balance: with `--max-stream-age`, a connection gets GOAWAY and its xDS stream ends at that
/// age (plus a random tenth), and Envoy's next stream goes out on a new connection, which its
/// round robin sends to the other replica. The Envoy visits both replicas, changes nothing and
/// no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_reach_their_age_move_envoy_between_replicas_without_a_change() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let blue = [Upstream::start("blue-1").await];
    let green = [Upstream::start("green-1").await];
    let listener = free_port();
    let addrs = |u: &[Upstream]| u.iter().map(|u| u.addr).collect::<Vec<_>>();
    let text = checkout_deployment(listener, &addrs(&blue), &addrs(&green), "blue");
    let ([dir_a, _dir_b], replicas) = two_replicas(&text, &["--max-stream-age", "2s"]).await;
    let both = format!("{},{}", replicas[0].ads, replicas[1].ads);
    let envoy = Envoy::start_with(&envoy_bin, dir_a.path(), NODE, &both, listener, &[]).await;
    eventually(WAIT, "one replica to hold the Envoy in sync", async || {
        holds(&replicas[0]).await || holds(&replicas[1]).await
    })
    .await;
    let before = envoy.config_changes().await;
    let traffic = envoy.background_traffic();
    let first = usize::from(!holds(&replicas[0]).await);
    eventually(
        Duration::from_secs(20),
        "the Envoy on the other replica",
        async || holds(&replicas[1 - first]).await,
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the Envoy back on the first",
        async || holds(&replicas[first]).await,
    )
    .await;
    let n = traffic.made() + 10;
    traffic.at_least(n).await;
    traffic
        .stop_all_answered("streams moving between replicas")
        .await;
    assert_eq!(
        envoy.config_changes().await,
        before,
        "a move changes nothing in Envoy"
    );
}
