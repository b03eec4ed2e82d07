//! Benchmark: what Envoy's telemetry to cutover costs, with and without the bootstrap's stats
//! filter. Two Envoys share one listener: `edge-1` from the default bootstrap (stats matcher on)
//! and `edge-2` from `cutover bootstrap --all-stats`. Paced requests on fresh connections (so the
//! kernel spreads them over both Envoys) reach every service; then cutover's `/telemetry` tells
//! per Envoy the metric families per flush and the bytes per second of each stream, and Envoy's
//! own `/stats` how many stats it keeps.
//!
//!     cargo bench --bench telemetry_cost                    # 10 services, 15 s
//!     SERVICES=100 SECONDS=20 cargo bench --bench telemetry_cost
//!
//! Not part of the test suite. Loopback only; bounded in count and time.

use std::time::{Duration, Instant};

use cutover::testing::{Envoy, Scenario, WAIT, envoy_binary, wait_for};
use serde_json::Value;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` services, each a canary (stable `v1`, `v2` at 10% through its aggregate cluster), each
/// under its own path prefix.
fn deployment(n: usize) -> (String, Vec<String>) {
    let mut upstreams = Vec::new();
    let mut routes = String::new();
    let mut services = String::new();
    for i in 0..n {
        routes.push_str(&format!(
            "      - match: {{ prefix: /s{i}/ }}\n        service: s{i}\n"
        ));
        services.push_str(&format!(
            "  s{i}:\n    versions:\n      v1: {{ endpoints: [${{s{i}-v1}}] }}\n      v2: {{ endpoints: [${{s{i}-v2}}] }}\n    strategy:\n      canary: {{ stable: v1, canary: v2, weight: 10 }}\n"
        ));
        upstreams.push(format!("s{i}-v1"));
        upstreams.push(format!("s{i}-v2"));
    }
    // The scenario waits for `/` to answer 200.
    routes.push_str("      - match: { prefix: / }\n        service: s0\n");
    (
        format!(
            "listeners:\n  - name: public\n    address: ${{listener}}\n    routes:\n{routes}services:\n{services}"
        ),
        upstreams,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let services = env("SERVICES", 10).max(1);
    let seconds = env("SECONDS", 15).clamp(5, 120) as u64;
    let Some(envoy_bin) = envoy_binary() else {
        eprintln!("Envoy not found: set ENVOY_BIN or run scripts/test once to install it");
        std::process::exit(2);
    };
    let (template, upstreams) = deployment(services);
    let names: Vec<&str> = upstreams.iter().map(String::as_str).collect();
    let s = Scenario::start(&envoy_bin, &names, &template).await;
    let unfiltered = Envoy::start_with(
        &envoy_bin,
        s.dir.path(),
        "edge-2",
        s.cutover.ads,
        s.listener,
        &["--all-stats"],
    )
    .await;

    // Paced, bounded: one request per service every 50 ms, each on a new connection.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        for i in 0..services {
            let _ = client
                .get(format!("http://{}/s{i}/", s.listener))
                .send()
                .await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t = wait_for(WAIT, "both Envoys in /telemetry", async || {
        let t = s.cutover.telemetry().await?;
        if t.nodes.len() == 2 {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    println!(
        "{services} services ({} clusters with aggregates), {sent} requests over {seconds} s",
        services * 3
    );
    println!(
        "| Envoy | stats Envoy keeps | metric families per flush | stats sink bytes/s | load reports bytes/s |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (envoy, label) in [
        (&s.envoy, "default bootstrap (filtered)"),
        (&unfiltered, "`--all-stats`"),
    ] {
        let node = t.nodes.iter().find(|n| n.id == envoy.node_id);
        let sink = node.and_then(|n| n.stats_sink.as_ref());
        let load = node.and_then(|n| n.load_reporting.as_ref());
        let kept = envoy.stats().await.len() + histograms(envoy).await;
        println!(
            "| {label} | {kept} | {} | {} | {} |",
            shown(sink.and_then(|s| s.metric_families_per_flush)),
            shown(sink.map(|s| s.bytes_per_second)),
            shown(load.map(|l| l.bytes_per_second)),
        );
    }
}

/// A figure of the table, `–` when cutover has none.
fn shown(figure: Option<impl std::fmt::Display>) -> String {
    figure.map_or_else(|| "–".to_owned(), |f| f.to_string())
}

/// Histograms in Envoy's `/stats?format=json` (the harness's `stats()` has counters and gauges).
async fn histograms(envoy: &Envoy) -> usize {
    let url = format!("http://{}/stats?format=json", envoy.admin);
    let json: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
        .get(url)
        .send()
        .await
        .expect("Envoy /stats")
        .json()
        .await
        .expect("JSON");
    json["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["histograms"]["computed_quantiles"].as_array())
        .map(Vec::len)
        .sum()
}
