//! Benchmark: cutover serving a fleet — N simulated Envoys on real ADS streams over loopback
//! (`cutover::testing::fleet`), state of the world and delta.
//!
//! For each protocol and each N, a fresh `cutover serve` (the release binary) loads a file of
//! S services; the fleet connects and converges; then a series of edits is saved (a canary
//! weight, a route, an endpoint, a new version switched to), each timed from the rename to the
//! last of the N streams holding all of it; then every stream drops and reconnects at once (a
//! storm), and cutover is restarted under the fleet. Reported: convergence times (p50, p99,
//! max), cutover's CPU time per edit and resident memory, memory per stream as the slope over
//! N, and whether anything was encoded again for the storm.
//!
//!     cargo bench --bench fleet                             # N = 1000, 5000, 10000; 100 services
//!     STREAMS=100,1000 SERVICES=1000 PROTOCOLS=delta cargo bench --bench fleet
//!     FLEET_JSON=target/fleet.json cargo bench --bench fleet   # also the figures as JSON
//!     TLS=1 cargo bench --bench fleet                       # every stream over mutual TLS
//!
//! Needs an open-file limit above 2 N + 100 (each stream is a connection, both ends here).

use std::time::{Duration, Instant};

use cutover::testing::fleet::{
    Edits, Fleet, Target, deployment, env_numbers, env_protocols, percentile, usage,
};
use cutover::testing::{Cutover, DeploymentFile, Protocol, pki};

#[derive(serde::Serialize)]
struct Row {
    protocol: &'static str,
    streams: usize,
    services: usize,
    what: String,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_ms: f64,
    rss_mib: f64,
}

fn main() {
    let streams = env_numbers("STREAMS", "1000,5000,10000");
    let services: usize = std::env::var("SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let protocols = env_protocols();
    let tls = std::env::var("TLS").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut rows = Vec::new();
    for &protocol in &protocols {
        let mut slope = Vec::new();
        for &n in &streams {
            let (out, rss_per) = runtime.block_on(run(protocol, n, services, tls));
            slope.push((n, rss_per));
            rows.extend(out);
        }
        // Memory per stream: least squares over (N, RSS with N in sync).
        let k = slope.len() as f64;
        if k >= 2.0 {
            let mx = slope.iter().map(|(n, _)| *n as f64).sum::<f64>() / k;
            let my = slope.iter().map(|(_, r)| *r).sum::<f64>() / k;
            let num: f64 = slope.iter().map(|(n, r)| (*n as f64 - mx) * (r - my)).sum();
            let den: f64 = slope.iter().map(|(n, _)| (*n as f64 - mx).powi(2)).sum();
            println!(
                "{}: resident memory per stream (slope over N): {:.1} KiB",
                protocol.name(),
                num / den / 1024.0
            );
        }
    }
    if let Ok(path) = std::env::var("FLEET_JSON") {
        std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).expect("write JSON");
        println!("figures written to {path}");
    }
}

/// The access rule of a fleet whose streams all present one client certificate.
const FLEET_ACCESS: &str = "access:\n  - identity: \"spiffe://fleet/sim\"\n    node: \"*\"\n";

/// One protocol at one N; the rows and cutover's resident bytes once the N streams converged.
/// With `tls`, cutover serves mutual TLS and every stream is its own TLS connection.
#[allow(
    clippy::too_many_lines,
    reason = "one measurement, its phases in order"
)]
async fn run(protocol: Protocol, n: usize, services: usize, tls: bool) -> (Vec<Row>, f64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = DeploymentFile::new(dir.path().join("fleet.yaml"));
    let deployment = |services: usize, versions: usize, edits: &Edits| {
        let text = deployment(services, versions, edits);
        if tls {
            format!("{text}{FLEET_ACCESS}")
        } else {
            text
        }
    };
    let base = deployment(services, 3, &Edits::default());
    file.write_renamed(&base);
    let limit = (n + 100).to_string();
    let mut args: Vec<String> = vec!["--max-streams".into(), limit];
    let mut client_tls = None;
    if tls {
        let ca = pki::Ca::new("fleet CA");
        let server = ca.write(dir.path(), "cutover", &ca.server(&["127.0.0.1"]));
        let client = ca.client(&["spiffe://fleet/sim"]);
        for (flag, path) in [
            ("--tls-cert", &server.cert),
            ("--tls-key", &server.key),
            ("--tls-client-ca", &server.ca),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        client_tls = Some(ca.client_tls("127.0.0.1", Some(&client)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Little logging: what cutover logs costs it the CPU time measured here.
    let mut server = Cutover::start_logging(dir.path(), &file.path, &args, "warn").await;
    let idle = usage(server.pid());
    let mut rows = Vec::new();
    let mut row = |what: String, lat: &[Duration], cpu: Duration, rss: u64| {
        let r = Row {
            protocol: protocol.name(),
            streams: n,
            services,
            what,
            p50_ms: percentile(lat, 0.5),
            p99_ms: percentile(lat, 0.99),
            max_ms: percentile(lat, 1.0),
            cpu_ms: cpu.as_secs_f64() * 1000.0,
            rss_mib: rss as f64 / f64::from(1 << 20),
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
            r.protocol, r.streams, r.what, r.p50_ms, r.p99_ms, r.max_ms, r.cpu_ms, r.rss_mib
        );
        rows.push(r);
    };
    println!(
        "\n{} services, {n} streams, {}{}; cutover idle: {:.1} MiB",
        services,
        protocol.name(),
        if tls { " over mutual TLS" } else { "" },
        idle.rss_bytes as f64 / 1048576.0
    );
    println!(
        "| protocol | streams | what | p50 ms | p99 ms | max ms | cutover CPU ms | cutover RSS MiB |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");

    let mut generation = 1;
    let started = Instant::now();
    let fleet = Fleet::connect(
        server.ads,
        n,
        protocol,
        Target::compile(&base, generation),
        client_tls,
    )
    .await;
    let lat = fleet
        .converged(started, Duration::from_secs(300))
        .await
        .unwrap_or_else(|done| panic!("only {done} of {n} streams converged at first"));
    let synced = usage(server.pid());
    row(
        "first connection of every stream".into(),
        &lat,
        synced.cpu - idle.cpu,
        synced.rss_bytes,
    );
    let rss_with_fleet = synced.rss_bytes as f64;

    for (what, edits) in Edits::series() {
        generation += 1;
        let text = deployment(services, 3, &edits);
        fleet.set_target(Target::compile(&text, generation));
        let encoded = server.metric("cutover_resources_encoded_total").await;
        let before = usage(server.pid());
        let t0 = Instant::now();
        file.write_renamed(&text);
        let lat = fleet
            .converged(t0, Duration::from_secs(120))
            .await
            .unwrap_or_else(|done| panic!("{what}: only {done} of {n} streams converged"));
        let after = usage(server.pid());
        let encoded = server.metric("cutover_resources_encoded_total").await - encoded;
        row(
            format!("{what}; {encoded} resources encoded"),
            &lat,
            after.cpu - before.cpu,
            after.rss_bytes,
        );
    }

    // A storm: every stream drops and reconnects at once, holding the current config.
    let encoded = server.metric("cutover_resources_encoded_total").await;
    generation += 1;
    let last = deployment(services, 3, &Edits::series().last().unwrap().1);
    fleet.set_target(Target::compile(&last, generation));
    let before = usage(server.pid());
    let t0 = Instant::now();
    fleet.reconnect_all();
    let lat = fleet
        .converged(t0, Duration::from_secs(120))
        .await
        .unwrap_or_else(|done| panic!("storm: only {done} of {n} streams back"));
    let after = usage(server.pid());
    let again = server.metric("cutover_resources_encoded_total").await - encoded;
    row(
        format!("reconnect storm (resources encoded for it: {again})"),
        &lat,
        after.cpu - before.cpu,
        after.rss_bytes,
    );

    // cutover restarted under the fleet (SIGTERM, then a new process on the same ports).
    generation += 1;
    fleet.set_target(Target::compile(&last, generation));
    server.terminate(Duration::from_secs(10)).await;
    server.launch();
    let t0 = Instant::now();
    let lat = fleet
        .converged(t0, Duration::from_secs(120))
        .await
        .unwrap_or_else(|done| panic!("restart: only {done} of {n} streams back"));
    let after = usage(server.pid());
    row(
        "cutover restarted (from the new process's start)".into(),
        &lat,
        after.cpu,
        after.rss_bytes,
    );

    fleet.close().await;
    server.terminate(Duration::from_secs(10)).await;
    (rows, rss_with_fleet)
}
