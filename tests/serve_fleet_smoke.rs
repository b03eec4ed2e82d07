//! A smoke run of the fleet benchmark's simulator (benches/fleet), so that it cannot rot, and a
//! check of what it measures: 20 simulated Envoys per protocol on real ADS streams to a real
//! `cutover serve` follow every edit of the series, are served again after a reconnect storm
//! without anything being encoded for it, and after a restart of cutover.

use std::time::{Duration, Instant};

use cutover::testing::fleet::{Edits, Fleet, Target, deployment};
use cutover::testing::{Cutover, DeploymentFile, Protocol};

const STREAMS: usize = 20;
const SERVICES: usize = 20;
const WITHIN: Duration = Duration::from_secs(20);

async fn smoke(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let file = DeploymentFile::new(dir.path().join("fleet.yaml"));
    let base = deployment(SERVICES, 3, &Edits::default());
    file.write_renamed(&base);
    let mut server = Cutover::start(dir.path(), &file.path).await;
    let what = protocol.name();

    let fleet = Fleet::connect(
        server.ads,
        STREAMS,
        protocol,
        Target::compile(&base, 1),
        None,
    )
    .await;
    fleet
        .converged(Instant::now(), WITHIN)
        .await
        .unwrap_or_else(|n| panic!("{what}: {n} of {STREAMS} streams got the first config"));
    let mut generation = 1;
    let mut text = base;
    for (edit, edits) in Edits::series() {
        generation += 1;
        text = deployment(SERVICES, 3, &edits);
        fleet.set_target(Target::compile(&text, generation));
        file.write_renamed(&text);
        fleet
            .converged(Instant::now(), WITHIN)
            .await
            .unwrap_or_else(|n| panic!("{what}, {edit}: {n} of {STREAMS} streams followed"));
    }
    let streams = server.metric("cutover_xds_streams").await;
    assert_eq!(streams, STREAMS as f64, "{what}: one stream each");

    let encoded = server.metric("cutover_resources_encoded_total").await;
    assert!(encoded > 0.0);
    generation += 1;
    fleet.set_target(Target::compile(&text, generation));
    fleet.reconnect_all();
    fleet
        .converged(Instant::now(), WITHIN)
        .await
        .unwrap_or_else(|n| panic!("{what}, storm: {n} of {STREAMS} streams back"));
    assert_eq!(
        server.metric("cutover_resources_encoded_total").await,
        encoded,
        "{what}: a reconnect storm encodes nothing"
    );

    generation += 1;
    fleet.set_target(Target::compile(&text, generation));
    server.terminate(Duration::from_secs(10)).await;
    server.launch();
    fleet
        .converged(Instant::now(), WITHIN)
        .await
        .unwrap_or_else(|n| panic!("{what}, restart: {n} of {STREAMS} streams back"));
    fleet.close().await;
    server.terminate(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_follows_every_edit_a_storm_and_a_restart_over_state_of_the_world() {
    smoke(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_follows_every_edit_a_storm_and_a_restart_over_delta() {
    smoke(Protocol::Delta).await;
}
