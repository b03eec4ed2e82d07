//! A burst of saves (a script writing the file 50 times in a second) against a slow client: a
//! real `cutover serve` process and a state-of-the-world client that answers each response only
//! after 100 ms. What changes while a response is unanswered goes out as one response, the
//! latest, once it is answered: the client gets a handful of responses, not 50, and ends
//! holding the last save. The latency of the last save is printed (docs/benchmarks.md,
//! "A burst of saves").

use std::time::{Duration, Instant};

use cutover::checkout_head;
use cutover::testing::xds::{CDS, Client, sotw_ack, sotw_request};
use cutover::testing::{Cutover, DeploymentFile, Protocol};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;

const SAVES: u64 = 50;
const EVERY: Duration = Duration::from_millis(20);
const CLIENT_TAKES: Duration = Duration::from_millis(100);

/// The deployment with the blue version's connect timeout at `ms`: each save changes a cluster.
fn save(ms: u64) -> String {
    format!(
        "{}      blue:  {{ endpoints: [127.0.0.1:8081] }}\n      green: {{ endpoints: [127.0.0.1:8082] }}\n    active: blue\n    connect_timeout: {ms}ms\n",
        checkout_head!("127.0.0.1:10000"),
    )
}

fn connect_timeout_ms(clusters: &[Cluster]) -> u64 {
    let timeout = clusters[0].connect_timeout.expect("a connect timeout");
    u64::try_from(timeout.seconds).unwrap() * 1000
        + u64::try_from(timeout.nanos).unwrap() / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_saves_reaches_a_slow_client_as_a_few_responses_ending_in_the_last_save() {
    let dir = tempfile::tempdir().unwrap();
    let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
    file.write_renamed(&save(1000));
    let cutover = Cutover::start(dir.path(), &file.path).await;
    let mut client = Client::connect(cutover.ads, Protocol::Sotw, "slow-edge").await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let first = client.recv().await;
    assert_eq!(connect_timeout_ms(&first.decode()), 1000);
    client.send(sotw_ack(&first, &[])).await;

    // The saves, from another task: 50 in a second, while the client takes its time.
    let last = 1000 + SAVES;
    let path = file.path.clone();
    let writer = tokio::spawn(async move {
        let file = DeploymentFile::new(path);
        let started = Instant::now();
        for ms in 1001..=last {
            file.write_renamed(&save(ms));
            tokio::time::sleep(EVERY).await;
        }
        (started, Instant::now())
    });
    let mut responses = 0;
    let held = loop {
        let r = client.recv().await;
        responses += 1;
        let held = connect_timeout_ms(&r.decode());
        tokio::time::sleep(CLIENT_TAKES).await;
        client.send(sotw_ack(&r, &[])).await;
        if held == last {
            break Instant::now();
        }
        assert!(responses < SAVES, "one response per save: no coalescing");
    };
    let (first_written, last_written) = writer.await.unwrap();
    client
        .expect_nothing("the last save is the last response")
        .await;
    let latency = held.saturating_duration_since(last_written);
    println!(
        "{SAVES} saves in {:?} to a client answering after {CLIENT_TAKES:?}: {responses} response(s), the last save held {latency:?} after it was written",
        EVERY * u32::try_from(SAVES).unwrap()
    );
    // Without coalescing the client would get one response per save that cutover read; with
    // it, at most one per answer it gave during the burst (as long as the burst really took on
    // this machine), and the last one.
    let burst = last_written.saturating_duration_since(first_written);
    let answers = burst.as_millis() / CLIENT_TAKES.as_millis();
    assert!(
        u128::from(responses) <= answers + 2,
        "{responses} responses for {SAVES} saves written over {burst:?}"
    );
}
