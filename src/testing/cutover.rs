//! cutover itself, started two ways: in-process ([`serve`]: `app::start` on port 0, for tests
//! that drive it over gRPC and read its status directly) and as the real `cutover serve` process
//! ([`Cutover`]: for tests with a real Envoy, and benches that measure the process), with the
//! deployment file it watches ([`DeploymentFile`]) and the bootstrap it gives Envoy.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::exact::exact;
use super::{
    POLL, WAIT, cutover_binary, free_port, get_json, get_text, http_client, kill, read_log,
};
use crate::api::StatusReport;
use crate::app::{self, ServeOptions};
use crate::telemetry::TelemetryReport;

// ---------------------------------------------------------------------------------------------
// In-process

/// What `cutover serve FILE` runs with by default, on loopback port 0 for both addresses (the
/// server says which ports it bound) and a 5 s drain period. Tests change the fields they need.
pub fn serve_options(file: PathBuf) -> ServeOptions {
    ServeOptions {
        file,
        ads: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
        allow_nodes: Vec::new(),
        wait_for_file: false,
        clients: Default::default(),
        load_reports_per_second: crate::telemetry::lrs::LOAD_REPORTS_PER_SECOND,
        tls: None,
        cluster: None,
    }
}

/// cutover started in-process on `text`, saved as `deploy.yaml` in `dir`, with
/// [`serve_options`]. Panics if it does not start.
pub async fn serve(dir: &Path, text: &str) -> app::Server {
    serve_with(dir, text, |_| {}).await
}

/// [`serve`] with the options `configure` sets.
pub async fn serve_with(
    dir: &Path,
    text: &str,
    configure: impl FnOnce(&mut ServeOptions),
) -> app::Server {
    let file = dir.join("deploy.yaml");
    std::fs::write(&file, text).expect("write the deployment file");
    let mut options = serve_options(file);
    configure(&mut options);
    app::start(options)
        .await
        .unwrap_or_else(|e| panic!("cutover did not start: {e:#}"))
}

/// Waits until `server` has `clients` clients, all in sync with their group's config; panics
/// after 5 s, saying what `what` waited for.
pub async fn all_in_sync(server: &app::Server, clients: usize, what: &str) {
    let mut changes = server.clients.changes();
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.clients.in_sync_count() != (clients, clients) {
            changes.changed().await.expect("the server runs");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{what}: (in sync, connected) is {:?} after 5 s",
            server.clients.in_sync_count()
        )
    });
}

// ---------------------------------------------------------------------------------------------
// The deployment file

/// The deployment file cutover watches, written the two ways editors and tools do.
pub struct DeploymentFile {
    pub path: PathBuf,
}

impl DeploymentFile {
    pub fn new(path: impl Into<PathBuf>) -> DeploymentFile {
        DeploymentFile { path: path.into() }
    }

    /// Writes a temporary file in the same directory, then renames it over the file (a new
    /// inode, as most editors and `kubectl cp`-style tools save).
    pub fn write_renamed(&self, text: &str) {
        self.stage(text).commit();
    }

    /// The first half of [`DeploymentFile::write_renamed`]: writes the temporary file and
    /// returns it unrenamed, so that a bench can start its clock just before the rename.
    pub fn stage(&self, text: &str) -> Staged {
        let name = self.path.file_name().expect("file name").to_string_lossy();
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write the temporary deployment file");
        Staged {
            tmp,
            path: self.path.clone(),
        }
    }

    /// Truncates the file and writes into the same inode (as `>` in a shell does).
    pub fn write_in_place(&self, text: &str) {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .expect("open the deployment file for writing");
        f.write_all(text.as_bytes())
            .expect("write the deployment file");
        f.sync_all().expect("sync the deployment file");
    }
}

/// A new content written beside the file, not yet renamed over it; see [`DeploymentFile::stage`].
#[must_use = "the file changes only when the staged content is committed"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Renames the new content over the file: the save, in one step.
    pub fn commit(self) {
        std::fs::rename(&self.tmp, &self.path).expect("rename over the deployment file");
    }
}

// ---------------------------------------------------------------------------------------------
// The process

/// What the tests log: everything cutover says about a change, for the log printed on failure.
pub const TEST_LOG: &str = "info,cutover=debug";

/// The real `cutover serve` process. Killed on drop; its log is printed if the test panics.
pub struct Cutover {
    pub file: PathBuf,
    pub ads: SocketAddr,
    pub admin: SocketAddr,
    /// Extra arguments of `cutover serve`, after the file and addresses.
    args: Vec<String>,
    /// `RUST_LOG`.
    log_filter: String,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
    client: reqwest::Client,
}

impl Cutover {
    /// Starts `cutover serve FILE` on fresh loopback ports and waits until it is ready. Its
    /// stderr goes to `cutover.log` in `dir`.
    pub async fn start(dir: &Path, file: &Path) -> Cutover {
        Cutover::start_with_args(dir, file, &[]).await
    }

    /// [`Cutover::start`] with extra arguments for `cutover serve` (such as `--drain-period 1s`).
    pub async fn start_with_args(dir: &Path, file: &Path, args: &[&str]) -> Cutover {
        Cutover::start_logging(dir, file, args, TEST_LOG).await
    }

    /// [`Cutover::start_with_args`] with `log_filter` as `RUST_LOG`: a bench that measures the
    /// process logs little, since logging costs it time.
    pub async fn start_logging(
        dir: &Path,
        file: &Path,
        args: &[&str],
        log_filter: &str,
    ) -> Cutover {
        Cutover::start_at(dir, file, free_port(), args, log_filter).await
    }

    /// [`Cutover::start_logging`] serving xDS at `ads` (chosen before, e.g. for an Envoy's
    /// bootstrap that names it).
    pub async fn start_at(
        dir: &Path,
        file: &Path,
        ads: SocketAddr,
        args: &[&str],
        log_filter: &str,
    ) -> Cutover {
        let mut c = Cutover {
            file: file.to_owned(),
            ads,
            admin: free_port(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log_filter: log_filter.to_owned(),
            log: dir.join("cutover.log"),
            child: None,
            starts: 0,
            client: http_client(),
        };
        c.launch();
        c.wait_ready().await;
        c
    }

    /// Starts the process (again, after [`Cutover::kill`] or [`Cutover::terminate`]) without
    /// waiting until it is ready.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "cutover is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open cutover.log");
        writeln!(log, "--- cutover start #{} ---", self.starts).expect("write cutover.log");
        let child = Command::new(cutover_binary())
            .arg("serve")
            .arg(&self.file)
            .arg("--ads")
            .arg(self.ads.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            // Plain text in the log file.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start cutover");
        self.child = Some(child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("cutover is running").id()
    }

    /// Kills the process (SIGKILL: no goodbye to its Envoys).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Sends SIGTERM, as a service manager stopping it would, and waits for it to exit (up to
    /// `within`); the exit status, or `None` if it did not exit in time (then it is killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(POLL).await;
        }
        kill(&mut child);
        None
    }

    /// Starts it again after [`Cutover::kill`] or [`Cutover::terminate`].
    pub async fn start_again(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Kills the process if running and starts it again on the same file and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_ready().await;
    }

    /// Waits until `/readyz` answers 200; panics with the log if the process exits first.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let (child, client, log) = (&mut self.child, &self.client, &self.log);
        super::wait_for(WAIT, "cutover /readyz to answer 200", async || {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "cutover exited ({status}) before it was ready; its log:\n{}",
                    read_log(log)
                );
            }
            get_text(client, &url).await.map(drop)
        })
        .await;
    }

    /// `GET /status`, read exactly into the type cutover writes it from ([`super::read_exact`]): an
    /// error if cutover does not answer 200, a panic if the answer does not read back as it
    /// came.
    pub async fn try_status(&self) -> Result<StatusReport, String> {
        let json = get_json(&self.client, &format!("http://{}/status", self.admin)).await?;
        Ok(exact(&json, "cutover /status"))
    }

    /// [`Cutover::try_status`], or a panic.
    pub async fn status(&self) -> StatusReport {
        self.try_status()
            .await
            .unwrap_or_else(|e| panic!("cutover /status: {e}"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        get_text(&self.client, &format!("http://{}/metrics", self.admin))
            .await
            .unwrap_or_else(|e| panic!("cutover /metrics: {e}"))
    }

    /// A counter or gauge from `/metrics`: the sum of its samples over their labels (0 when it
    /// has none).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `GET /telemetry`, read exactly as [`Cutover::try_status`] reads `/status`.
    pub async fn telemetry(&self) -> Result<TelemetryReport, String> {
        let json = get_json(&self.client, &format!("http://{}/telemetry", self.admin)).await?;
        Ok(exact(&json, "cutover /telemetry"))
    }

    /// Waits until `/status` lists a stream of node `node_id` that is in sync.
    pub async fn wait_in_sync(&self, node_id: &str) -> StatusReport {
        super::wait_for(
            WAIT,
            &format!("cutover /status to show node {node_id} in sync"),
            async || {
                let status = self.try_status().await?;
                if status.nodes.iter().any(|n| n.id == node_id && n.in_sync) {
                    Ok(status)
                } else {
                    Err(format!("{status:?}"))
                }
            },
        )
        .await
    }

    /// What identifies the last reload in `/status`: the config version and the time of the
    /// reload. A file that translates to the same resources as the one before keeps the version
    /// (versions are content hashes), so the time tells that it was read.
    pub async fn last_reload(&self) -> LastReload {
        LastReload::of(&self.status().await)
    }

    /// Waits until cutover has reloaded the file since `previous` (a [`Cutover::last_reload`])
    /// and node `node_id` has ACKed all of the config. Panics at once if cutover rejected the
    /// file.
    pub async fn wait_applied(&self, node_id: &str, previous: &LastReload) -> StatusReport {
        super::wait_for(
            WAIT,
            &format!("cutover to load the new file and node {node_id} to ACK it"),
            async || {
                let status = self.try_status().await?;
                if let Some(reload) = status.last_reload.as_ref().filter(|r| !r.ok) {
                    panic!(
                        "cutover rejected the deployment file: {}",
                        reload.error.as_deref().unwrap_or("(no error given)")
                    );
                }
                let current = status.config_version.as_ref();
                // With node groups, a node converges to its group's version.
                let synced = LastReload::of(&status) != *previous
                    && status.nodes.iter().any(|n| {
                        let target = n
                            .group
                            .as_ref()
                            .and_then(|g| status.groups.get(g))
                            .map_or(current, |g| Some(&g.config_version));
                        n.id == node_id && n.in_sync && n.config_version.as_ref() == target
                    });
                if synced {
                    Ok(status)
                } else {
                    Err(format!("{status:?}"))
                }
            },
        )
        .await
    }

    /// Everything cutover logged so far, across restarts.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// What identifies a reload in `/status` (see [`Cutover::last_reload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    pub config_version: Option<String>,
    /// When the file was last read, valid or not.
    pub at: Option<String>,
}

impl LastReload {
    pub fn of(status: &StatusReport) -> LastReload {
        LastReload {
            config_version: status.config_version.clone(),
            at: status.last_reload.as_ref().map(|r| r.at.clone()),
        }
    }
}

impl Drop for Cutover {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "===== cutover log ({}) =====\n{}\n===== end of cutover log =====",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// The bootstrap `cutover bootstrap` prints for this node, with Envoy's admin on a free port.
pub fn bootstrap(node_id: &str, ads: impl std::fmt::Display) -> String {
    bootstrap_with(node_id, ads, &[])
}

/// [`bootstrap`] with extra arguments for `cutover bootstrap` (such as `--no-stats-sink`).
pub fn bootstrap_with(node_id: &str, ads: impl std::fmt::Display, args: &[&str]) -> String {
    let out = Command::new(cutover_binary())
        .args(["bootstrap", "--node-id", node_id, "--ads"])
        .arg(ads.to_string())
        .args(["--admin", "127.0.0.1:0", "--format", "yaml"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cutover bootstrap");
    assert!(
        out.status.success(),
        "cutover bootstrap failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the bootstrap is UTF-8")
}
