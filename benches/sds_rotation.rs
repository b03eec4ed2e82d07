//! Benchmark: a certificate rotated to a fleet — N simulated Envoys on real ADS streams over
//! loopback (`cutover::testing::fleet`) that hold an HTTPS listener's certificate, state of the
//! world and delta.
//!
//! For each protocol and N, a fresh `cutover serve` loads a file with one HTTPS listener whose
//! certificate is `certs/site.pem` (and its key); the fleet connects and converges (each stream
//! asks for the secret its listener names, as Envoy does); then the certificate and key files
//! are replaced R times (alternating the two example certificates), each timed from the first
//! file write to the last of the N streams holding the new secret. cutover watches the files'
//! directory and reads them 50 ms after the last write of a rotation. Reported: p50, p99 and
//! max over all streams of all rotations; the time from the first stream holding a rotation to
//! the last (the push itself, without the wait to see the files); cutover's CPU time per
//! rotation; and the size of the secret as SDS sends it.
//!
//!     cargo bench --bench sds_rotation                         # N = 1000, 10 rotations
//!     STREAMS=1000,5000 ROTATIONS=20 PROTOCOLS=delta cargo bench --bench sds_rotation
//!
//! Not part of the test suite. Loopback only; bounded in count and time.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover::testing::fleet::{Fleet, Target, env_numbers, env_protocols, percentile, usage};
use cutover::testing::{Cutover, DeploymentFile, Protocol, free_port, repo};

fn main() {
    let streams = env_numbers("STREAMS", "1000");
    let rotations = env_numbers("ROTATIONS", "10")[0];
    let protocols = env_protocols();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "| protocol | streams | rotations | p50 ms | p99 ms | max ms | first to last stream, median ms | first to last stream, max ms | cutover CPU ms per rotation | secret bytes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for protocol in &protocols {
        for n in &streams {
            runtime.block_on(run(*protocol, *n, rotations));
        }
    }
}

/// Replaces `certs/site.pem` and its key with example certificate `stem`, each by a rename.
fn install(dir: &Path, stem: &str) {
    let examples = repo().join("examples/certs");
    for (from, to) in [
        (format!("{stem}-key.pem"), "site-key.pem"),
        (format!("{stem}.pem"), "site.pem"),
    ] {
        let tmp = dir.join(format!("certs/.{to}.tmp"));
        std::fs::copy(examples.join(from), &tmp).expect("copy an example certificate");
        std::fs::rename(&tmp, dir.join("certs").join(to)).expect("rename");
    }
}

async fn run(protocol: Protocol, n: usize, rotations: usize) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(dir.path().join("certs")).expect("certs/");
    install(dir.path(), "shop");
    let file = DeploymentFile::new(dir.path().join("fleet.yaml"));
    file.write_renamed(&format!(
        "\
listeners:
  - name: public
    address: {}
    tls:
      certificates:
        - {{ cert: certs/site.pem, key: certs/site-key.pem, server_names: [shop.example.com] }}
    routes:
      - match: {{ prefix: / }}
        service: shop
services:
  shop:
    versions:
      blue: {{ endpoints: [127.0.0.1:8081] }}
    active: blue
",
        free_port()
    ));
    let limit = (n + 100).to_string();
    let mut server =
        Cutover::start_logging(dir.path(), &file.path, &["--max-streams", &limit], "warn").await;
    let mut generation = 1;
    let (target, sizes) = Target::load(&file.path, generation);
    let fleet = Fleet::connect(server.ads, n, protocol, target, None).await;
    fleet
        .converged(Instant::now(), Duration::from_secs(300))
        .await
        .unwrap_or_else(|done| panic!("only {done} of {n} streams converged at first"));
    let mut all = Vec::with_capacity(n * rotations);
    let mut spreads = Vec::with_capacity(rotations);
    let before = usage(server.pid());
    for i in 0..rotations {
        generation += 1;
        let t0 = Instant::now();
        install(dir.path(), if i % 2 == 0 { "wildcard" } else { "shop" });
        let (target, _) = Target::load(&file.path, generation);
        fleet.set_target(target);
        let lat = fleet
            .converged(t0, Duration::from_secs(30))
            .await
            .unwrap_or_else(|done| panic!("rotation {i}: only {done} of {n} streams have it"));
        if let (Some(first), Some(last)) = (lat.first(), lat.last()) {
            spreads.push(*last - *first);
        }
        all.extend(lat);
    }
    let after = usage(server.pid());
    all.sort();
    spreads.sort();
    let cpu_ms = (after.cpu - before.cpu).as_secs_f64() * 1000.0 / rotations as f64;
    let bytes: Vec<String> = sizes.values().map(ToString::to_string).collect();
    println!(
        "| {} | {n} | {rotations} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {cpu_ms:.0} | {} |",
        protocol.name(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        percentile(&spreads, 0.5),
        percentile(&spreads, 1.0),
        bytes.join(", ")
    );
    fleet.close().await;
    server.terminate(Duration::from_secs(10)).await;
}
