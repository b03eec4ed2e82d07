//! The test kit: everything the unit tests, the integration tests and the benches share, so that
//! a new test starts from it and never from a copy of another test file.
//!
//! - [`xds`]: one fake xDS client for both protocols (state of the world, delta) and both
//!   transports (the pure protocol machines in-process; a gRPC stream to a server);
//! - [`serve`]: cutover started in-process (`app::start` on port 0), [`Cutover`]: the real
//!   `cutover serve` process, [`DeploymentFile`]: the file it watches, written as editors do;
//! - [`Envoy`]: a real Envoy, [`Upstream`]: HTTP upstreams, [`Stack`] and [`Scenario`]: all of
//!   them together, [`load`]: steady load through Envoy;
//! - [`pki`]: certificates, [`browser`]: a page in headless Chromium, [`proxyless`]: gRPC's own
//!   xDS clients; [`fleet`]: many simulated Envoys for the fleet benchmark and its smoke test;
//!   [`switch_latency`]: the switch-latency benchmark's two setups and probe, for the benchmark
//!   and its smoke test;
//! - [`fixtures`]: the deployment files the tests share; [`eventually`] and [`wait_for`]: every
//!   wait polls and is bounded, nothing sleeps for a fixed long time; [`read_exact`]: what
//!   cutover's admin API answers, in the types it is written from, hiding nothing.
//!
//! Compiled for the crate's own unit tests and, with the `testing` feature, for its integration
//! tests and benches (the crate is its own dev-dependency with that feature); never in a release
//! build. It checks nothing of cutover's behaviour itself: the tests do.

pub mod browser;
pub mod curl;
mod cutover;
mod driver;
mod envoy;
pub mod etcd;
mod exact;
pub mod fixtures;
pub mod fleet;
pub mod load;
pub mod pki;
pub mod proxyless;
mod scenario;
pub mod switch_latency;
pub mod tcp;
mod upstream;
pub mod websocket;
pub mod xds;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use self::cutover::{
    Cutover, DeploymentFile, LastReload, Staged, TEST_LOG, all_in_sync, bootstrap, bootstrap_with,
    serve, serve_options, serve_with,
};
pub use self::envoy::{
    CONCURRENCY, Envoy, Reply, Traffic, envoy_binary, envoy_or_skip_in, find_envoy_in,
};
pub use self::exact::read_exact;
pub use self::scenario::{NODE, Scenario, Stack, checkout_deployment, serve_live};
pub use self::upstream::{HEALTH_PATH, Upstream};
pub use crate::in_both_xds_modes;

/// How long to wait for something that normally takes well under a second. Generous because CI
/// runs on two slow cores with two test binaries at once.
pub const WAIT: Duration = Duration::from_secs(20);
/// Between two polls.
const POLL: Duration = Duration::from_millis(20);
/// One HTTP request to Envoy or an admin API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The two protocols

/// The xDS protocol a client speaks to cutover: what a test runs in both is parameterised by it
/// (see [`in_both_xds_modes!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// State of the world (`api_type: GRPC`, what `cutover bootstrap` writes by default).
    Sotw,
    /// Incremental (`cutover bootstrap --delta`, `api_type: DELTA_GRPC`).
    Delta,
}

impl Protocol {
    pub const BOTH: [Protocol; 2] = [Protocol::Sotw, Protocol::Delta];

    /// The `cutover bootstrap` arguments that choose it.
    pub fn bootstrap_args(self) -> &'static [&'static str] {
        match self {
            Protocol::Sotw => &[],
            Protocol::Delta => &["--delta"],
        }
    }

    /// As people say it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sotw => "state of the world",
            Protocol::Delta => "delta",
        }
    }
}

/// Declares each `async fn name(xds: Protocol) { ... }` as a module `name` with two tests,
/// `name::sotw` and `name::delta`, that run the same body with each protocol. The module sees
/// everything the test file has in scope.
#[macro_export]
macro_rules! in_both_xds_modes {
    ($($(#[doc = $doc:literal])* async fn $name:ident($xds:ident: Protocol) $body:block)*) => {
        $(
            $(#[doc = $doc])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn body($xds: $crate::testing::Protocol) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sotw() {
                    body($crate::testing::Protocol::Sotw).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn delta() {
                    body($crate::testing::Protocol::Delta).await
                }
            }
        )*
    };
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

/// Polls `condition` until it holds, and returns how long that took; panics after `timeout`
/// naming `what`.
pub async fn eventually(
    timeout: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    wait_for(timeout, what, async || {
        if condition().await {
            Ok(())
        } else {
            Err("condition false".to_owned())
        }
    })
    .await;
    started.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The `p` quantile (0 to 1) of sorted values, by nearest rank; `None` for none.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within 0..=last: p is clamped to 0..=1"
    )]
    let rank = (last as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted.get(rank).copied()
}

/// A duration in whole units (`as_millis`, `as_nanos`) as a `u64`, saturating: no wait in a
/// test comes near 584 years of nanoseconds.
pub fn whole_u64(units: u128) -> u64 {
    u64::try_from(units).unwrap_or(u64::MAX)
}

/// The `p` quantile (0 to 1) of sorted values, interpolated linearly between the two closest
/// ranks (numpy's default, which the switch-latency figures have always used); `None` for none.
pub fn interpolated_percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let k = last as f64 * p.clamp(0.0, 1.0);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "k is within 0..=last: p is clamped to 0..=1"
    )]
    let lo = k.floor() as usize;
    let hi = (lo + 1).min(last);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64))
}

/// A loopback port that was free a moment ago: bind port 0, note it, let it go. Never the same
/// port twice in one process: the kernel may hand a port just let go to the next bind, and a
/// test that asks for a listener and then for cutover's ports would get one port twice.
pub fn free_port() -> SocketAddr {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    // Below the kernel's ephemeral range when there is room: the client side of every
    // connection a test opens takes a port from that range, and could take one a test meant to
    // bind a moment later (seen: an Envoy listener's port taken during a restart under load).
    if let Some(low) = ephemeral_low().filter(|low| *low >= 24_000) {
        use std::hash::{BuildHasher as _, Hasher as _};
        let span = u64::from(low) - 20_000;
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let start = h.finish() % span;
        for i in 0..span {
            let port = u16::try_from(20_000 + (start + i * 7_919) % span).expect("below 65536");
            let mut given = GIVEN.lock().expect("ports lock");
            if given.contains(&port) {
                continue;
            }
            if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
        }
    }
    for _ in 0..1000 {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        if GIVEN.lock().expect("ports lock").insert(addr.port()) {
            return addr;
        }
    }
    panic!("no loopback port that this process has not used yet after 1000 tries");
}

/// The lowest port of the kernel's ephemeral range (Linux), if it can be read.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `n` GET requests to `listener`, each on a task of its own, left running while a test drains
/// or moves what serves them (slow upstreams keep them in flight); each ends with the status it
/// got.
pub fn requests_in_background(
    listener: SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<reqwest::StatusCode, reqwest::Error>>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                reqwest::Client::builder()
                    .no_proxy()
                    .build()?
                    .get(format!("http://{listener}/"))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect()
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

/// The `cutover` binary of this build, for tests and benches that run it: `CARGO_BIN_EXE_cutover`
/// when it is set at run time (cargo-nextest sets it), else the binary beside the `deps/`
/// directory the running test or bench executable is in, where cargo builds it for them.
pub fn cutover_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_cutover") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the path of the running executable");
    let bin = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .map(|profile| profile.join("cutover"))
        .unwrap_or_else(|| {
            panic!(
                "{} is not in a cargo target directory's deps/: set CARGO_BIN_EXE_cutover to the cutover binary",
                exe.display()
            )
        });
    assert!(
        bin.is_file(),
        "no cutover binary at {}: build it (`cargo build`), or set CARGO_BIN_EXE_cutover",
        bin.display()
    );
    bin
}

/// Where the repository is (for files it ships: examples, test drivers).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether this runs on CI (`CI=true` or `CI=1`), where a missing tool fails a test instead of
/// skipping it.
fn on_ci(env: &impl Fn(&str) -> Option<String>) -> bool {
    env("CI").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A tool a test needs: found → `Some`; missing on CI → panic with how to install it; missing
/// elsewhere → a loud message on stderr and `None`, so that a developer without it can still
/// run the other tests.
fn found_or_skip<T>(
    found: Result<T, String>,
    ci: bool,
    test: &str,
    install_hint: &str,
) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(err) if ci => panic!("{err}; CI must run {test}: {install_hint}"),
        Err(err) => {
            eprintln!(
                "\n{bar}\n!!! SKIPPING {test}: {err}.\n!!! {install_hint}.\n{bar}\n",
                bar = "!".repeat(100)
            );
            None
        }
    }
}

/// The real environment, for the `find_*_in` functions (which take it as an argument, so that
/// their tests can pass another).
fn real_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `find` on the real environment and repository, then [`found_or_skip`].
fn real_or_skip<T>(
    find: impl FnOnce(fn(&str) -> Option<String>, &Path) -> Result<T, String>,
    test: &str,
    install_hint: &str,
) -> Option<T> {
    found_or_skip(find(real_env, repo()), on_ci(&real_env), test, install_hint)
}

/// What a test's tools lack, said all at once.
#[derive(Default)]
struct Missing(Vec<String>);

impl Missing {
    /// Notes `what` unless `found`.
    fn unless(&mut self, found: bool, what: impl FnOnce() -> String) {
        if !found {
            self.0.push(what());
        }
    }

    /// Notes `what (path)` unless `path` is a file.
    fn file(&mut self, path: &Path, what: &str) {
        self.unless(path.is_file(), || format!("{what} ({})", path.display()));
    }

    /// Node.js: `NODE_BIN`, else `node` on `PATH`; noted if neither is there.
    fn node(&mut self, env: &impl Fn(&str) -> Option<String>) -> PathBuf {
        let node = env("NODE_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                env("PATH").and_then(|path| {
                    std::env::split_paths(&path)
                        .map(|d| d.join("node"))
                        .find(|p| p.is_file())
                })
            })
            .filter(|p| p.is_file());
        self.unless(node.is_some(), || {
            "Node.js (`node` on PATH or NODE_BIN)".to_owned()
        });
        node.unwrap_or_default()
    }

    /// `found` if nothing is missing, else what is.
    fn or<T>(self, found: T) -> Result<T, String> {
        if self.0.is_empty() {
            Ok(found)
        } else {
            Err(format!("missing {}", self.0.join(", ")))
        }
    }
}

/// An HTTP client for loopback only: never a proxy from the environment.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        // A redirect is an answer the tests look at, not one to follow.
        .redirect(reqwest::redirect::Policy::none())
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
