//! The dashboard of a replica in cluster mode, in a real headless Chromium: it says which
//! replica serves the page, its role and who leads.

use std::time::{Duration, Instant};

use cutover::testing::browser::{Page, browser_or_skip};
use cutover::testing::etcd::EtcdCluster;
use cutover::testing::{Cutover, DeploymentFile, TEST_LOG, WAIT, eventually, free_port};

const FILE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:1
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue: { endpoints: [127.0.0.1:2] }
    active: blue
";

async fn replica(etcd: &EtcdCluster, dir: &std::path::Path, name: &str) -> Cutover {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = DeploymentFile::new(dir.join("deploy.yaml"));
    file.write_renamed(FILE);
    let endpoints = etcd.endpoints().join(",");
    let args = ["--etcd", &endpoints, "--replica", name];
    Cutover::start_at(&dir, &file.path, free_port(), &args, TEST_LOG).await
}

/// The page's summary line, once it contains `expected`.
async fn summary_until(page: &mut Page, expected: &str) -> String {
    let started = Instant::now();
    loop {
        let state = page.read().await;
        let summary = state["state"]["summary"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if summary.contains(expected) {
            return summary;
        }
        assert!(
            started.elapsed() < WAIT,
            "the dashboard's summary never said {expected:?}: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_says_which_replica_it_is_and_who_leads() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r1 = replica(&etcd, dir.path(), "r1").await;
    eventually(WAIT, "r1 to lead", async || {
        r1.try_status()
            .await
            .is_ok_and(|s| s.cluster.is_some_and(|c| c.role == "leader"))
    })
    .await;
    let r2 = replica(&etcd, dir.path(), "r2").await;
    let mut page = Page::open(&browser, &format!("http://{}/", r2.admin)).await;
    summary_until(&mut page, "replica r2 · follower of r1 · record").await;
    page.close().await;
    let mut page = Page::open(&browser, &format!("http://{}/", r1.admin)).await;
    summary_until(&mut page, "replica r1 · leader").await;
    page.close().await;
}
