//! Benchmark: what TLS costs Envoy at the edge, for the record — requests per second through
//! one Envoy worker over plain HTTP and over HTTPS (a certificate cutover sent over SDS), with
//! connections kept alive and with a new connection (so a new TLS handshake) per request.
//! Envoy's cost, not cutover's: cutover is out of the request path. The load is `wrk` (Debian's
//! package), one thread, on the same two cores as Envoy and the upstream.
//!
//!     cargo bench --bench edge_tls                     # 10 s per case, 16 connections
//!     DURATION=30s CONNECTIONS=64 cargo bench --bench edge_tls
//!
//! Not part of the test suite. Loopback only; bounded in time.

use std::process::Command;

use cutover::testing::{Cutover, DeploymentFile, Envoy, Upstream, envoy_binary, free_port, repo};

/// What one `wrk` run reported.
struct Run {
    requests_per_second: f64,
    p50: String,
    p99: String,
    errors: String,
}

fn wrk(url: &str, duration: &str, connections: &str, close: bool) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c", connections, "-d", duration, "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().expect("run wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let errors = [field("Socket errors:"), field("Non-2xx or 3xx responses:")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ");
    Run {
        requests_per_second: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        errors: if errors.is_empty() {
            "none".to_owned()
        } else {
            errors
        },
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let duration = std::env::var("DURATION").unwrap_or_else(|_| "10s".to_owned());
    let connections = std::env::var("CONNECTIONS").unwrap_or_else(|_| "16".to_owned());
    let Some(envoy_bin) = envoy_binary() else {
        eprintln!("Envoy not found: set ENVOY_BIN or run scripts/test once to install it");
        std::process::exit(2);
    };
    let upstream = Upstream::start("blue").await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (plain, https) = (free_port(), free_port());
    let certs = repo().join("examples/certs");
    let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
    file.write_renamed(&format!(
        "\
listeners:
  - name: plain
    address: {plain}
    routes: [{{ match: {{ prefix: / }}, service: shop }}]
  - name: public
    address: {https}
    tls:
      certificates:
        - {{ cert: \"{cert}\", key: \"{key}\" }}
    routes: [{{ match: {{ prefix: / }}, service: shop }}]
services:
  shop:
    outlier_detection: {{ enabled: false }}
    versions:
      blue: {{ endpoints: [{upstream}] }}
    active: blue
",
        cert = certs.join("wildcard.pem").display(),
        key = certs.join("wildcard-key.pem").display(),
        upstream = upstream.addr,
    ));
    let cutover = Cutover::start(dir.path(), &file.path).await;
    let _envoy = Envoy::start(&envoy_bin, dir.path(), "edge-1", cutover.ads, plain).await;
    cutover.wait_in_sync("edge-1").await;
    println!(
        "{duration} per case, {connections} connections, wrk -t1; Envoy --concurrency 1\n\n\
         | case | requests/s | p50 | p99 | errors |\n|---|---:|---:|---:|---|"
    );
    for (case, url, close) in [
        ("HTTP, kept alive", format!("http://{plain}/"), false),
        ("HTTPS, kept alive", format!("https://{https}/"), false),
        (
            "HTTP, a connection per request",
            format!("http://{plain}/"),
            true,
        ),
        (
            "HTTPS, a connection (and TLS handshake) per request",
            format!("https://{https}/"),
            true,
        ),
    ] {
        let r = wrk(&url, &duration, &connections, close);
        println!(
            "| {case} | {:.0} | {} | {} | {} |",
            r.requests_per_second, r.p50, r.p99, r.errors
        );
    }
}
