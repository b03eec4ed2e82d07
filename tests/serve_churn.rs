//! No growth after 10,000 connect/disconnect cycles (issue 14, "Clients"): a real `cutover serve`
//! process, 10,000 clients that each open a new TCP connection, an ADS stream, take the
//! clusters and go; its resident memory (`VmRSS`) after a warm-up and after the cycles must
//! differ by little, and every stream must be gone from /status. The figures are printed and
//! kept in docs/benchmarks.md ("Connect/disconnect churn").

use std::time::{Duration, Instant};

use cutover::testing::fixtures::DEPLOY;
use cutover::testing::fleet::usage;
use cutover::testing::xds::{CDS, Client, sotw_request};
use cutover::testing::{Cutover, DeploymentFile, Protocol};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let rss = usage(pid).rss_bytes / 1024;
    assert!(rss > 0, "no VmRSS in /proc/{pid}/status");
    rss
}

/// One client: a new connection, an ADS stream, the clusters, gone. The request stream stays
/// open until the client goes, as Envoy's does: then it ends and the connection closes (a client
/// that vanishes without closing is the keepalive's, see tests/wire_clients.rs).
async fn cycle(ads: std::net::SocketAddr, i: usize) {
    let mut client = Client::connect(ads, Protocol::Sotw, &format!("churn-{i}")).await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let cds = client.recv().await;
    assert_eq!(cds.resources.len(), 2);
    drop(client);
}

async fn cycles(ads: std::net::SocketAddr, range: std::ops::Range<usize>, concurrency: usize) {
    use futures::StreamExt as _;
    futures::stream::iter(range)
        .for_each_concurrent(concurrency, |i| cycle(ads, i))
        .await;
}

async fn open_streams(cutover: &Cutover) -> Option<usize> {
    Some(cutover.try_status().await.ok()?.streams?.open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connect_disconnect_cycles_leave_no_growth() {
    let dir = tempfile::tempdir().unwrap();
    let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
    file.write_renamed(DEPLOY);
    // Logging little, as in production: what it logs per stream is not what is measured.
    let cutover = Cutover::start_logging(dir.path(), &file.path, &[], "warn").await;
    let (ads, pid) = (cutover.ads, cutover.pid());
    let settled = async || {
        let started = Instant::now();
        while open_streams(&cutover).await != Some(0) {
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
    let growth = i128::from(after) - i128::from(before);
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
