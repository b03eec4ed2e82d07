//! Benchmark: blue↔green flips under the highest load this machine sustains, through several
//! Envoys sharing one listener port (SO_REUSEPORT). Reports requests sent and failed, the
//! request rate, and the switch latency from the file save to every Envoy having ACKed it.
//!
//!     cargo bench --bench flip_under_load                 # 200 flips, 16 clients, 2 Envoys
//!     FLIPS=500 CLIENTS=32 ENVOYS=3 cargo bench --bench flip_under_load
//!
//! Not part of the test suite: it runs for tens of seconds and reports numbers; it exits
//! non-zero only if a request failed. Loopback only; bounded in count and time.

use std::time::{Duration, Instant};

use cutover::testing::load::Load;
use cutover::testing::{Envoy, NODE, Scenario, WAIT, envoy_binary, percentile};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const DEPLOYMENT: &str = "\
listeners:
  - name: public
    address: ${listener}
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue:  { endpoints: [${blue-1}, ${blue-2}] }
      green: { endpoints: [${green-1}, ${green-2}] }
    active: ACTIVE
";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let flips = env("FLIPS", 200);
    let clients = env("CLIENTS", 16);
    let envoys = env("ENVOYS", 2).max(1);
    let Some(envoy_bin) = envoy_binary() else {
        eprintln!("Envoy not found: set ENVOY_BIN or run scripts/test once to install it");
        std::process::exit(2);
    };
    let s = Scenario::start(
        &envoy_bin,
        &["blue-1", "blue-2", "green-1", "green-2"],
        &DEPLOYMENT.replace("ACTIVE", "blue"),
    )
    .await;
    let mut extra = Vec::new();
    for i in 2..=envoys {
        let id = format!("edge-{i}");
        extra.push(Envoy::start(&envoy_bin, s.dir.path(), &id, s.cutover.ads, s.listener).await);
        s.cutover.wait_in_sync(&id).await;
    }
    let node_ids: Vec<String> = std::iter::once(NODE.to_owned())
        .chain((2..=envoys).map(|i| format!("edge-{i}")))
        .collect();

    let load = Load::with(s.listener, clients, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(flips);
    for i in 0..flips {
        let colour = if i % 2 == 0 { "green" } else { "blue" };
        let text = s.render(&DEPLOYMENT.replace("ACTIVE", colour));
        let before = s.cutover.status().await.config_version;
        let t0 = Instant::now();
        if i % 2 == 0 {
            s.file.write_renamed(&text);
        } else {
            s.file.write_in_place(&text);
        }
        // Poll /status tightly (every millisecond) so the figure is not the poll interval.
        loop {
            assert!(
                t0.elapsed() < WAIT,
                "the flip was not ACKed by every Envoy within {WAIT:?}"
            );
            if let Ok(status) = s.cutover.try_status().await {
                let version = &status.config_version;
                let all = *version != before
                    && node_ids.iter().all(|id| {
                        status
                            .nodes
                            .iter()
                            .any(|n| n.id == *id && n.in_sync && n.config_version == *version)
                    });
                if all {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let outcome = load.stop().await;
    drop(extra);

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let total = outcome.ok + outcome.failures.len();
    println!("flips                 {flips} (write-then-rename and in-place, alternating)");
    println!("Envoys                {envoys} (one listener port, SO_REUSEPORT)");
    println!("clients               {clients} (keep-alive, unpaced)");
    println!(
        "requests sent         {total} in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!("requests failed       {}", outcome.failures.len());
    println!(
        "save → all ACKed      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (polled every 1 ms)",
        ms(percentile(&latencies, 0.5).unwrap_or_default()),
        ms(percentile(&latencies, 0.9).unwrap_or_default()),
        ms(percentile(&latencies, 0.99).unwrap_or_default()),
        ms(*latencies.last().unwrap()),
    );
    if !outcome.failures.is_empty() {
        eprintln!(
            "first failures: {:#?}",
            &outcome.failures[..outcome.failures.len().min(10)]
        );
        std::process::exit(1);
    }
}
