//! Real etcd members on loopback ports in a test's temporary directory (Debian's `etcd-server`,
//! installed by `scripts/test`): a cluster started, members killed and started again, all
//! stopped when it is dropped.
//!
//! With `CI=true` a missing `etcd` fails the test; elsewhere the test is skipped, loudly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

const INSTALL_HINT: &str = "install etcd (Debian: `apt-get install etcd-server`)";
/// A new cluster elects its leader in about a second here.
const HEALTHY: Duration = Duration::from_secs(20);

/// One member: its name, ports and process (none while it is down).
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Plain HTTP `/health` and `/metrics`, whether clients speak TLS or not.
    metrics: SocketAddr,
    child: Option<Child>,
}

/// A cluster of etcd members on 127.0.0.1.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Clients over mutual TLS: the server's certificate, its key, and the CA a client's
    /// certificate must be signed by.
    tls: Option<super::pki::Files>,
}

impl EtcdCluster {
    /// `n` members, healthy; `None` (skipping, off CI) without etcd.
    pub async fn start(n: usize) -> Option<EtcdCluster> {
        EtcdCluster::start_with(n, None).await
    }

    /// [`EtcdCluster::start`] whose clients must speak mutual TLS: `tls` holds the members'
    /// certificate (for 127.0.0.1) and key, and the CA client certificates must come from.
    pub async fn start_tls(n: usize, tls: super::pki::Files) -> Option<EtcdCluster> {
        EtcdCluster::start_with(n, Some(tls)).await
    }

    async fn start_with(n: usize, tls: Option<super::pki::Files>) -> Option<EtcdCluster> {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
            .ok_or_else(|| "no etcd on PATH".to_owned());
        let bin = super::found_or_skip(
            found,
            super::on_ci(&super::real_env),
            "a test with a real etcd",
            INSTALL_HINT,
        )?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            bin,
            dir: tempfile::tempdir().expect("a temporary directory"),
            members,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy().await;
        Some(cluster)
    }

    /// The client URLs of every member, up or not (`https://` with TLS).
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}", m.client))
            .collect()
    }

    /// The plain HTTP URLs of every member's `/metrics` and `/health`.
    pub fn metrics_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.metrics))
            .collect()
    }

    /// Kills member `i` (SIGKILL): its data stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data, and waits until the cluster is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        self.wait_healthy().await;
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.log(i)).expect("an etcd log file");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut command = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("{scheme}://{}", m.client)])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://{}", m.client),
            ])
            .args(["--listen-metrics-urls", &format!("http://{}", m.metrics)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "cutover-test"])
            // Elections in a fraction of a second, as on a quiet loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.members[i].child = Some(child);
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// Waits until every running member answers `/health` with a leader elected.
    async fn wait_healthy(&self) {
        let started = Instant::now();
        let running: Vec<&Member> = self.members.iter().filter(|m| m.child.is_some()).collect();
        loop {
            let mut healthy = true;
            for m in &running {
                healthy &= health(m.metrics).await;
            }
            if healthy {
                return;
            }
            assert!(
                started.elapsed() < HEALTHY,
                "etcd not healthy after {HEALTHY:?}; logs in {}: {}",
                self.dir.path().display(),
                tail(&self.log(0))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Whether the member at `client` says it is healthy (`GET /health`: a leader and a quorum).
async fn health(client: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(client).await.ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        Some(text.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
