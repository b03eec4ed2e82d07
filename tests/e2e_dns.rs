//! Addresses by name with a real Envoy: upstreams reached as `localhost:PORT` (a STRICT_DNS
//! cluster Envoy resolves itself) and cutover reached by Envoy as `localhost:PORT` (a bootstrap
//! made by `cutover bootstrap --ads localhost:PORT`).

use std::collections::BTreeMap;

use cutover::testing::load::Load;
use cutover::testing::{
    Cutover, DeploymentFile, Envoy, Upstream, WAIT, checkout_deployment, envoy_binary, free_port,
    wait_for,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_upstreams_and_cutover_by_name() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blue = Upstream::start("blue-1").await;
    let green = [
        Upstream::start("green-1").await,
        Upstream::start("green-2").await,
    ];
    let by_name = |u: &Upstream| format!("localhost:{}", u.addr.port());
    let listener = free_port();
    let file = DeploymentFile {
        path: dir.path().join("deploy.yaml"),
    };
    // green has no endpoint yet (an idle version may have none).
    file.write_renamed(
        &checkout_deployment(listener, &[blue.addr], &[""; 0], "blue")
            .replace("green: { endpoints: [] }", "green: {}"),
    );
    let cutover = Cutover::start(dir.path(), &file.path).await;

    // Envoy finds cutover by name: its ADS cluster is STRICT_DNS on localhost.
    let ads = format!("localhost:{}", cutover.ads.port());
    let envoy = Envoy::start_with_ads(&envoy_bin, dir.path(), "edge-dns", &ads, listener).await;
    cutover.wait_in_sync("edge-dns").await;
    assert_eq!(envoy.get("/").await.unwrap(), "blue-1");
    let clusters = envoy.clusters().await;
    assert!(
        clusters.contains("cutover_xds::127.0.0.1:") && clusters.contains("::hostname::localhost"),
        "the ADS cluster resolved localhost to 127.0.0.1 (V4_PREFERRED):\n{clusters}"
    );

    // One edit adds green's two endpoints by name and switches to it, under load: Envoy gets the
    // routes only once the new DNS cluster is ACKed, which it does once the names resolved, so
    // not one request fails.
    let load = Load::start(listener);
    let previous = cutover.last_reload().await;
    let names = format!("{}, {}", by_name(&green[0]), by_name(&green[1]));
    file.write_renamed(&checkout_deployment(
        listener,
        &[blue.addr],
        &[names],
        "green",
    ));
    cutover.wait_applied("edge-dns", &previous).await;
    wait_for(WAIT, "requests to reach green", async || {
        match envoy.get("/").await? {
            body if body.starts_with("green") => Ok(()),
            body => Err(body),
        }
    })
    .await;
    load.stop()
        .await
        .assert_no_failures("switch to a new version reached by name");

    // Both addresses of the version are endpoints: round robin over them.
    let split = envoy.count_bodies(40, "/", &[]).await;
    assert_eq!(
        split,
        BTreeMap::from([("green-1".to_owned(), 20), ("green-2".to_owned(), 20)]),
        "round robin over both names"
    );
    let clusters = envoy.clusters().await;
    for u in &green {
        let line = format!("checkout/green::{}::hostname::localhost", u.addr);
        assert!(clusters.contains(&line), "no {line} in:\n{clusters}");
    }
    let dump = envoy.config_dump().await.to_string();
    assert!(
        dump.contains("\"STRICT_DNS\""),
        "no STRICT_DNS cluster in {dump}"
    );

    // `drain: true` on a name: DRAINING in the DNS cluster's own endpoints, so no new requests.
    let previous = cutover.last_reload().await;
    let drained = format!(
        "{}, {{ address: {}, drain: true }}",
        by_name(&green[0]),
        by_name(&green[1])
    );
    file.write_renamed(&checkout_deployment(
        listener,
        &[blue.addr],
        &[drained],
        "green",
    ));
    cutover.wait_applied("edge-dns", &previous).await;
    wait_for(WAIT, "green-2 to be drained", async || {
        let flags = envoy.health_flags("checkout/green", green[1].addr).await;
        match flags.as_deref() {
            Some(f) if f.contains("draining") => Ok(()),
            other => Err(format!("health flags {other:?}")),
        }
    })
    .await;
    let before = green[1].hits();
    let split = envoy.count_bodies(20, "/", &[]).await;
    assert_eq!(split, BTreeMap::from([("green-1".to_owned(), 20)]));
    assert_eq!(green[1].hits(), before, "a drained name got new requests");
}
