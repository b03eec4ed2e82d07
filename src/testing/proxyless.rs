//! Real proxyless gRPC clients and real gRPC upstreams for `tests/proxyless_clients.rs`: gRPC's
//! Python xDS client (`grpcio`, `tests/proxyless/client.py`) and its Node one (`@grpc/grpc-js`
//! with `@grpc/grpc-js-xds`, `tests/proxyless/client.js`), each a child process driven with
//! one JSON command per line; upstreams are grpcio servers (`tests/proxyless/upstream.py`)
//! that answer every call with their label (`blue/1`).
//!
//! Finding the parts: Python with grpcio at `PROXYLESS_PYTHON` or `<repo>/.venv/bin/python`
//! (`tests/proxyless/requirements.txt`); `NODE_BIN` or `node` on `PATH`, with
//! `tests/proxyless/node_modules` (`npm ci --prefix tests/proxyless`). With `CI=true` a missing
//! part fails the test; elsewhere the test is skipped with a loud message. `scripts/test`
//! installs them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::Missing;
use super::driver::Driver;

/// One answer of a driver: its calls are bounded by the command (a count or a timeout), and
/// each call by a 5 s deadline.
const ANSWER: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "scripts/test installs them; by hand: `python3 -m venv .venv && \
     .venv/bin/pip install -r tests/proxyless/requirements.txt` and `npm ci --prefix tests/proxyless`";

/// Which real client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// grpcio (gRPC C-core's xDS client).
    Python,
    /// @grpc/grpc-js with @grpc/grpc-js-xds.
    Node,
}

/// Where the parts are.
#[derive(Debug, Clone)]
pub struct Parts {
    pub python: PathBuf,
    pub node: PathBuf,
    dir: PathBuf,
}

/// Where each part is, or what is missing. Pure but for looking at files: `env` looks up
/// environment variables.
pub fn find_parts_in(
    env: impl Fn(&str) -> Option<String>,
    manifest_dir: &Path,
) -> Result<Parts, String> {
    let mut missing = Missing::default();
    let dir = manifest_dir.join("tests/proxyless");
    let python = env("PROXYLESS_PYTHON")
        .filter(|v| !v.is_empty())
        .map_or_else(|| manifest_dir.join(".venv/bin/python"), PathBuf::from);
    let has_grpcio = python.is_file()
        && Command::new(&python)
            .args(["-c", "import grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    missing.unless(has_grpcio, || {
        format!("Python with grpcio ({})", python.display())
    });
    let node = missing.node(&env);
    let xds = dir.join("node_modules/@grpc/grpc-js-xds/package.json");
    missing.file(&xds, "@grpc/grpc-js-xds");
    missing.or(Parts { python, node, dir })
}

/// [`find_parts_in`] on the real environment: found → `Some`; missing on CI (`CI=true`) →
/// panic; elsewhere → a loud message and `None`.
pub fn parts_or_skip() -> Option<Parts> {
    super::real_or_skip(find_parts_in, "a proxyless gRPC test", INSTALL_HINT)
}

/// gRPC servers on loopback, each answering every call with its label.
pub struct Upstreams {
    driver: Driver,
    pub addrs: BTreeMap<String, std::net::SocketAddr>,
}

impl Upstreams {
    /// One server per label (e.g. `blue/1`), each on a free loopback port.
    pub async fn start(parts: &Parts, labels: &[&str]) -> Upstreams {
        let addrs: BTreeMap<String, std::net::SocketAddr> = labels
            .iter()
            .map(|l| ((*l).to_owned(), super::free_port()))
            .collect();
        let mut command = Command::new(&parts.python);
        command.arg(parts.dir.join("upstream.py"));
        command.args(addrs.iter().map(|(l, a)| format!("{l}={}", a.port())));
        let mut driver = Driver::start("the gRPC upstreams", command, ANSWER);
        let ready = driver.answer().await;
        assert_eq!(ready, "ready", "the gRPC upstreams said {ready:?}");
        Upstreams { driver, addrs }
    }

    pub fn addr(&self, label: &str) -> std::net::SocketAddr {
        self.addrs[label]
    }

    /// Makes one server answer every call from now on with `UNAVAILABLE` (HTTP 200,
    /// `grpc-status: 14`), as a broken release would.
    pub async fn fail(&mut self, label: &str) {
        self.driver.send(&format!("fail {label}"));
        let ok = self.driver.answer().await;
        assert_eq!(ok, "ok");
    }

    /// Stops one server (after a 1 s grace for calls in flight), as a removed endpoint would.
    pub async fn stop(&mut self, label: &str) {
        self.driver.send(&format!("stop {label}"));
        let ok = self.driver.answer().await;
        assert_eq!(ok, "ok");
    }
}

/// What a batch of calls saw.
#[derive(Debug, Clone, Deserialize)]
pub struct Calls {
    /// Answers by upstream label.
    pub tally: BTreeMap<String, u64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub calls: u64,
    /// Time the batch took, in the client.
    pub ms: f64,
    /// The batch reached its goal (not its timeout).
    pub done: bool,
}

impl Calls {
    /// Answers from `version` (labels `version/N`).
    pub fn of(&self, version: &str) -> u64 {
        self.tally
            .iter()
            .filter(|(label, _)| label.split('/').next() == Some(version))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn answered(&self) -> u64 {
        self.tally.values().sum()
    }
}

/// One real proxyless gRPC client dialling `xds:///<target>`.
pub struct GrpcClient {
    pub kind: ClientKind,
    driver: Driver,
}

impl GrpcClient {
    /// Starts the client with `GRPC_XDS_BOOTSTRAP=bootstrap` and waits for its first answered
    /// call (the channel resolves through cutover: LDS, RDS, CDS, EDS).
    pub async fn start(parts: &Parts, kind: ClientKind, target: &str, bootstrap: &Path) -> Self {
        let mut command = match kind {
            ClientKind::Python => {
                let mut c = Command::new(&parts.python);
                c.arg(parts.dir.join("client.py"));
                c
            }
            ClientKind::Node => {
                let mut c = Command::new(&parts.node);
                c.arg(parts.dir.join("client.js"));
                c
            }
        };
        command.arg(target).env("GRPC_XDS_BOOTSTRAP", bootstrap);
        let mut client = GrpcClient {
            kind,
            driver: Driver::start(&format!("the {kind:?} gRPC client"), command, ANSWER),
        };
        let ready = client
            .run(json!({ "op": "ready", "timeout_ms": 20_000 }))
            .await;
        assert!(
            ready.done,
            "the {kind:?} client's first call through cutover failed: {ready:?}"
        );
        client
    }

    /// A Python (grpcio) client with a plain channel to `addr` (an Envoy listener in front of
    /// a gRPC service), once its first call is answered.
    pub async fn direct(parts: &Parts, addr: std::net::SocketAddr) -> Self {
        let mut command = Command::new(&parts.python);
        command
            .arg(parts.dir.join("client.py"))
            .arg(format!("direct:{addr}"));
        let mut client = GrpcClient {
            kind: ClientKind::Python,
            driver: Driver::start("the gRPC client", command, ANSWER),
        };
        let ready = client
            .run(json!({ "op": "ready", "timeout_ms": 20_000 }))
            .await;
        assert!(ready.done, "the first call through Envoy failed: {ready:?}");
        client
    }

    async fn run(&mut self, command: serde_json::Value) -> Calls {
        self.driver.send(&command.to_string());
        let line = self.driver.answer().await;
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the {:?} client said {line:?}: {e}", self.kind))
    }

    /// `n` calls, one after the other.
    pub async fn calls(&mut self, n: u64) -> Calls {
        self.run(json!({ "op": "calls", "n": n })).await
    }

    /// Calls until `consecutive` answers in a row come from `accept` (labels or versions), or
    /// `timeout` passes (then `done` is false).
    pub async fn until(&mut self, accept: &[&str], consecutive: u64, timeout: Duration) -> Calls {
        self.run(json!({
            "op": "until",
            "accept": accept,
            "consecutive": consecutive,
            "timeout_ms": super::whole_u64(timeout.as_millis()),
        }))
        .await
    }
}
