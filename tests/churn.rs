//! No growth after 10,000 connect/disconnect cycles (issue 14, "Clients"): a real `cutover serve`
//! process, 10,000 clients that each open a new TCP connection, an ADS stream, take the
//! clusters and go; its resident memory (`VmRSS`) after a warm-up and after the cycles must
//! differ by little, and every stream must be gone from /status. The figures are printed and
//! kept in docs/benchmarks.md ("Connect/disconnect churn").

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

const DEPLOY: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue:  { endpoints: [127.0.0.1:8081] }
      green: { endpoints: [127.0.0.1:8082] }
    active: blue
";

/// Kills the server however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One client: a new connection, an ADS stream, the clusters, gone.
async fn cycle(ads: std::net::SocketAddr, i: usize) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{ads}"))
        .await
        .expect("connect");
    let request = DiscoveryRequest {
        type_url: CDS.into(),
        node: Some(Node {
            id: format!("churn-{i}"),
            cluster: "churn".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    use futures::StreamExt as _;
    // The request stream stays open until the client goes, as Envoy's does: then it ends and
    // the connection closes (a client that vanishes without closing is the keepalive's, see
    // tests/grpc_clients.rs).
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let requests = futures::stream::iter([request]).chain(
        futures::stream::once(async move {
            let _ = left.await;
        })
        .filter_map(|()| async { None }),
    );
    let mut responses = client
        .stream_aggregated_resources(requests)
        .await
        .expect("open a stream")
        .into_inner();
    let cds = responses
        .message()
        .await
        .expect("no error")
        .expect("a response");
    assert_eq!(cds.resources.len(), 2);
    drop((leave, responses, client));
}

async fn cycles(ads: std::net::SocketAddr, range: std::ops::Range<usize>, concurrency: usize) {
    use futures::StreamExt as _;
    futures::stream::iter(range)
        .for_each_concurrent(concurrency, |i| cycle(ads, i))
        .await;
}

async fn open_streams(http: &reqwest::Client, admin: std::net::SocketAddr) -> Option<u64> {
    let status: serde_json::Value = http
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["streams"]["open"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connect_disconnect_cycles_leave_no_growth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY).unwrap();
    let (ads, admin) = (free_port(), free_port());
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["serve", file.to_str().unwrap(), "--ads", &ads.to_string()])
            .args(["--admin", &admin.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cutover"),
    );
    let pid = server.0.id();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    while open_streams(&http, admin).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cutover did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled = async || {
        let started = Instant::now();
        while open_streams(&http, admin).await != Some(0) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "streams still open 10 s after their clients left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Freed memory returns to the allocator's caches at once; let the runtime go idle.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Warm-up: the runtime's worker caches, the allocator's arenas, the buffers of a stream.
    cycles(ads, 0..1_000, 16).await;
    settled().await;
    let before = rss_kib(pid);
    let timed = Instant::now();
    cycles(ads, 1_000..11_000, 16).await;
    let took = timed.elapsed();
    settled().await;
    let after = rss_kib(pid);
    let growth = after as i64 - before as i64;
    println!(
        "10,000 connect/disconnect cycles in {took:.1?} ({:.0}/s): VmRSS {before} KiB after a \
         1,000-cycle warm-up, {after} KiB after (growth {growth} KiB)",
        10_000.0 / took.as_secs_f64()
    );
    // A leak of even 1 KiB per cycle would be 10 MiB.
    assert!(
        growth < 4 * 1024,
        "VmRSS grew by {growth} KiB over 10,000 cycles ({before} → {after} KiB)"
    );
}
