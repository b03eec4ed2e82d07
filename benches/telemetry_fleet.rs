//! Benchmark: telemetry at fleet scale. N simulated Envoys report to a release-built `cutover
//! serve`, each on a connection of its own as Envoy does:
//!
//! - a load reporting stream, at the interval cutover asks for (it grows past
//!   `--load-reports-per-second`, 200 by default), each report carrying a node the size of
//!   Envoy 1.40's (516 extensions, about 60 KB) and the 20 version clusters of a 10-service file;
//! - for K of them (`STATS_SAMPLE`), also a stats sink stream flushing every second a message the
//!   size of a real Envoy's for 10 services (about 30 KB; docs/benchmarks.md, "Telemetry cost").
//!
//! First, with no process at all, what checks read from a sample of Envoys' stats costs in
//! accuracy: a canary's observed split and error rate on k of 10,000 simulated Envoys against
//! all of them (each request goes to the canary and fails at random, Envoys' traffic differs).
//!
//! Over a steady window (two of the load reporting intervals, at least `SECONDS`), cutover's CPU
//! (as a share of one core) and the bytes the simulated Envoys sent it, against issue 21's target:
//! 10,000 Envoys' telemetry in ≤ 10% of one core and ≤ 20 MB/s. The simulator shares the 2 CPUs.
//!
//!     ulimit -n 30000
//!     cargo bench --bench telemetry_fleet                       # N = 1,000, 5,000, 10,000
//!     ENVOYS=2000 STATS_SAMPLE=2000 SECONDS=20 cargo bench --bench telemetry_fleet
//!     IDLE=1 ENVOYS=10000 cargo bench --bench telemetry_fleet   # the connections alone

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutover::testing::fleet::{Edits, deployment, env_numbers, usage};
use cutover::testing::{Cutover, DeploymentFile};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Extension, Node, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterStats, UpstreamEndpointStats, UpstreamLocalityStats,
};
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, stream_metrics_message};
use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SERVICES: usize = 10;

fn main() {
    sampled_split_error();
    let envoys = env_numbers("ENVOYS", "1000,5000,10000");
    let sample = env_numbers("STATS_SAMPLE", "100")[0];
    let seconds = env_numbers("SECONDS", "20")[0];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "node {} B, load report {} B, stats flush {} B",
        node(0).encoded_len(),
        load_report(node(0), Duration::from_secs(1)).encoded_len(),
        stats_flush().encoded_len()
    );
    println!(
        "| Envoys | with a stats sink | load reports every | window s | cutover CPU, % of one core | MB/s received | of which load reports |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in envoys.into_iter().filter(|n| *n > 0) {
        runtime.block_on(run(n, sample.min(n), seconds));
    }
}

/// A small, seeded generator: the figures are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A check's 10 s window on a fleet of 10,000 Envoys whose traffic differs (10 requests a
/// second on average, log-normal across Envoys), the canary at 10% failing 1% of its requests:
/// the split and the canary's error rate as k sampled Envoys see them, against all of them.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts and ranks of a simulation, far inside every type's range"
)]
fn sampled_split_error() {
    const FLEET: usize = 10_000;
    const TRIALS: usize = 200;
    let samples = [10, 100, 1_000];
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    // Per sample size: |split error| and |error-rate error| in percentage points, per trial.
    let mut split_err: Vec<Vec<f64>> = vec![Vec::new(); samples.len()];
    let mut rate_err: Vec<Vec<f64>> = vec![Vec::new(); samples.len()];
    let mut requests_seen: Vec<f64> = vec![0.0; samples.len()];
    for _ in 0..TRIALS {
        // (requests, to the canary, canary failures) per Envoy over the window.
        let envoys: Vec<(u64, u64, u64)> = (0..FLEET)
            .map(|_| {
                let rate = 10.0 * (rng.normal() - 0.5).exp();
                let n = (rate * 10.0).round() as u64;
                let mut canary = 0;
                let mut failed = 0;
                for _ in 0..n {
                    if rng.unit() < 0.10 {
                        canary += 1;
                        if rng.unit() < 0.01 {
                            failed += 1;
                        }
                    }
                }
                (n, canary, failed)
            })
            .collect();
        let figures = |of: &[&(u64, u64, u64)]| {
            let (n, c, f) = of
                .iter()
                .fold((0, 0, 0), |a, e| (a.0 + e.0, a.1 + e.1, a.2 + e.2));
            let split = 100.0 * c as f64 / n.max(1) as f64;
            let rate = 100.0 * f as f64 / c.max(1) as f64;
            (split, rate, n)
        };
        let all: Vec<&(u64, u64, u64)> = envoys.iter().collect();
        let (split, rate, _) = figures(&all);
        for (i, &k) in samples.iter().enumerate() {
            // k distinct Envoys at random (a partial shuffle).
            let mut order: Vec<usize> = (0..FLEET).collect();
            for j in 0..k {
                let pick = j + (rng.next() as usize) % (FLEET - j);
                order.swap(j, pick);
            }
            let sample: Vec<&(u64, u64, u64)> = order[..k].iter().map(|&j| &envoys[j]).collect();
            let (s, r, n) = figures(&sample);
            split_err[i].push((s - split).abs());
            rate_err[i].push((r - rate).abs());
            requests_seen[i] += n as f64 / TRIALS as f64;
        }
    }
    let p = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    println!(
        "| Envoys sampled of 10,000 | requests in a 10 s window | split (10%): median / p99 error, points | canary error rate (1%): median / p99 error, points |"
    );
    println!("|---:|---:|---:|---:|");
    for (i, k) in samples.iter().enumerate() {
        println!(
            "| {k} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} |",
            requests_seen[i],
            p(&mut split_err[i], 0.5),
            p(&mut split_err[i], 0.99),
            p(&mut rate_err[i], 0.5),
            p(&mut rate_err[i], 0.99),
        );
    }
    println!();
}

async fn run(n: usize, sample: usize, seconds: usize) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
    file.write_renamed(&deployment(SERVICES, 1, &Edits::default()));
    let max_streams = (3 * n + 100).to_string();
    let server = Cutover::start_logging(
        dir.path(),
        &file.path,
        &["--max-streams", &max_streams],
        "warn",
    )
    .await;
    let load_bytes = Arc::new(AtomicU64::new(0));
    let stats_bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (load_bytes, stats_bytes) = (load_bytes.clone(), stats_bytes.clone());
        tasks.spawn(envoy(i, server.ads, i < sample, load_bytes, stats_bytes));
        if i % 256 == 255 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Every stream open, and the interval cutover asks for settled.
    let started = Instant::now();
    let interval = loop {
        let t = server.telemetry().await.expect("/telemetry");
        let reporting = t
            .nodes
            .iter()
            .filter(|x| x.load_reporting.is_some())
            .count();
        if reporting == n {
            break t.load_reporting_interval_seconds;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{reporting} of {n} Envoys report load after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Reports spread over the interval the Envoys were told at once, as a real fleet's are
    // spread by when each connected: one interval to settle, then the window.
    tokio::time::sleep(Duration::from_secs(interval)).await;
    let window = Duration::from_secs((2 * interval).max(seconds as u64));
    let (cpu0, load0, stats0) = (
        usage(server.pid()).cpu,
        load_bytes.load(Ordering::Relaxed),
        stats_bytes.load(Ordering::Relaxed),
    );
    tokio::time::sleep(window).await;
    let cpu = usage(server.pid()).cpu - cpu0;
    let load = load_bytes.load(Ordering::Relaxed) - load0;
    let stats = stats_bytes.load(Ordering::Relaxed) - stats0;
    let secs = window.as_secs_f64();
    println!(
        "| {n} | {sample} | {interval} s | {} | {:.1} | {:.1} | {:.1} |",
        window.as_secs(),
        100.0 * cpu.as_secs_f64() / secs,
        (load + stats) as f64 / secs / 1e6,
        load as f64 / secs / 1e6,
    );
    tasks.abort_all();
    drop(server);
}

/// One simulated Envoy: its load reports at the interval cutover asks, and its stats flushes
/// every second if it has a stats sink.
async fn envoy(
    i: usize,
    ads: SocketAddr,
    stats_sink: bool,
    load_bytes: Arc<AtomicU64>,
    stats_bytes: Arc<AtomicU64>,
) {
    let channel = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{ads}")).expect("an endpoint");
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if stats_sink {
        let channel = channel.clone();
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let mut client = MetricsServiceClient::new(channel);
            let call =
                tokio::spawn(async move { client.stream_metrics(ReceiverStream::new(rx)).await });
            let mut first = true;
            loop {
                let mut m = stats_flush();
                if first {
                    m.identifier = Some(stream_metrics_message::Identifier {
                        node: Some(node(i)),
                    });
                    first = false;
                }
                stats_bytes.fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
                if tx.send(m).await.is_err() {
                    break;
                }
                if !reporting() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            call.abort();
        });
    }
    let (tx, rx) = mpsc::channel(4);
    let mut client = LoadReportingServiceClient::new(channel);
    let first = load_report(node(i), Duration::ZERO);
    load_bytes.fetch_add(first.encoded_len() as u64, Ordering::Relaxed);
    tx.send(first).await.expect("queued");
    let Ok(answers) = client.stream_load_stats(ReceiverStream::new(rx)).await else {
        return;
    };
    let mut answers = answers.into_inner();
    let mut every = Duration::from_secs(1);
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            answer = answers.message() => match answer {
                Ok(Some(a)) => {
                    if let Some(d) = a.load_reporting_interval {
                        every = Duration::from_secs(d.seconds.unsigned_abs());
                        // As Envoy does: a new answer starts a new period.
                        next = tokio::time::Instant::now() + every;
                    }
                }
                _ => return,
            },
            () = tokio::time::sleep_until(next), if reporting() => {
                let report = load_report(node(i), every);
                load_bytes.fetch_add(report.encoded_len() as u64, Ordering::Relaxed);
                if tx.send(report).await.is_err() {
                    return;
                }
                next += every;
            }
        }
    }
}

/// `IDLE=1`: the Envoys connect and open their streams, then send nothing more: what the
/// connections and streams cost cutover by themselves (an Envoy's telemetry shares its ADS
/// connection, whose upkeep xDS pays anyway).
fn reporting() -> bool {
    static IDLE: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var("IDLE").is_ok_and(|v| v == "1"));
    !*IDLE
}

/// A node as Envoy 1.40 describes itself: its id, and the 516 extensions it was built with.
fn node(i: usize) -> Node {
    let extensions = (0..516)
        .map(|k| Extension {
            name: format!("envoy.filters.category_{}.extension_{k:03}", k % 40),
            category: format!("envoy.filters.category_{}", k % 40),
            type_urls: vec![format!("envoy.extensions.category_{}.v3.Config{k}", k % 40)],
            ..Default::default()
        })
        .collect();
    Node {
        id: format!("edge-{i}"),
        cluster: "edge".to_owned(),
        user_agent_name: "envoy".to_owned(),
        extensions,
        ..Default::default()
    }
}

/// A load report of the file's 20 version clusters, one endpoint each.
fn load_report(node: Node, interval: Duration) -> LoadStatsRequest {
    let cluster_stats = (0..SERVICES)
        .flat_map(|s| ["blue", "green"].map(move |v| (s, v)))
        .map(|(s, v)| ClusterStats {
            cluster_name: format!("s{s}/{v}"),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                total_successful_requests: 10,
                total_issued_requests: 10,
                upstream_endpoint_stats: vec![UpstreamEndpointStats {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: format!("127.1.0.{}", s + 1),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                20000 + u32::try_from(s).unwrap() * 4,
                            )),
                            ..Default::default()
                        })),
                    }),
                    total_successful_requests: 10,
                    total_issued_requests: 10,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            load_report_interval: (!interval.is_zero()).then(|| {
                envoy_types::pb::google::protobuf::Duration {
                    seconds: i64::try_from(interval.as_secs()).unwrap(),
                    nanos: 0,
                }
            }),
            ..Default::default()
        })
        .collect();
    LoadStatsRequest {
        node: Some(node),
        cluster_stats,
    }
}

/// One stats flush of an Envoy serving the 10-service file: per version cluster the stats
/// cutover reads (counters, gauges, the latency histogram in 41 buckets), and about a hundred
/// of Envoy's own.
fn stats_flush() -> StreamMetricsMessage {
    let ts = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let family = |name: String, kind: MetricType, metric: Metric| MetricFamily {
        name: Some(name),
        r#type: Some(kind as i32),
        metric: vec![Metric {
            timestamp_ms: Some(ts),
            ..metric
        }],
        ..Default::default()
    };
    let counter = |name: String, value: f64| {
        family(
            name,
            MetricType::Counter,
            Metric {
                counter: Some(Counter {
                    value: Some(value),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    };
    let gauge = |name: String, value: f64| {
        family(
            name,
            MetricType::Gauge,
            Metric {
                gauge: Some(Gauge { value: Some(value) }),
                ..Default::default()
            },
        )
    };
    let mut envoy_metrics = Vec::new();
    for s in 0..SERVICES {
        for v in ["blue", "green"] {
            let c = format!("cluster.s{s}/{v}");
            for stat in [
                "upstream_rq_2xx",
                "upstream_rq_5xx",
                "upstream_rq_total",
                "upstream_rq_timeout",
                "upstream_rq_rx_reset",
                "upstream_cx_connect_fail",
            ] {
                envoy_metrics.push(counter(format!("{c}.{stat}"), 10.0));
            }
            for stat in [
                "upstream_rq_active",
                "upstream_rq_pending_active",
                "membership_healthy",
                "membership_total",
            ] {
                envoy_metrics.push(gauge(format!("{c}.{stat}"), 1.0));
            }
            let bucket = cutover::telemetry::stats::LATENCY_BOUNDS_MS
                .iter()
                .enumerate()
                .map(|(k, b)| Bucket {
                    upper_bound: Some(*b),
                    cumulative_count: Some(if k > 10 { 10 } else { 0 }),
                    ..Default::default()
                })
                .collect();
            envoy_metrics.push(family(
                format!("{c}.upstream_rq_time"),
                MetricType::Histogram,
                Metric {
                    histogram: Some(Histogram {
                        sample_count: Some(10),
                        sample_sum: Some(300.0),
                        bucket,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ));
        }
    }
    for k in 0..100 {
        envoy_metrics.push(counter(format!("server.envoy_own_stat_number_{k:03}"), 1.0));
    }
    StreamMetricsMessage {
        identifier: None,
        envoy_metrics,
    }
}
