//! Real WebSocket upstreams and a real WebSocket client (Python's `websockets`,
//! `tests/edge/ws.py`) for `tests/e2e_websocket.rs`, each a child process driven one line at a
//! time.
//!
//! Python is the one of the proxyless tests (`PROXYLESS_PYTHON` or `<repo>/.venv/bin/python`)
//! with `websockets` (`tests/proxyless/requirements.txt`, which `scripts/test` installs). With
//! `CI=true` a missing part fails the test; elsewhere the test is skipped with a loud message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::driver::Driver;

const ANSWER: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "scripts/test installs it; by hand: `python3 -m venv .venv && \
     .venv/bin/pip install -r tests/proxyless/requirements.txt`";

/// Python with `websockets`, and the script.
#[derive(Debug, Clone)]
pub struct WsParts {
    python: PathBuf,
    script: PathBuf,
}

fn find_in(env: impl Fn(&str) -> Option<String>, manifest_dir: &Path) -> Result<WsParts, String> {
    let python = env("PROXYLESS_PYTHON")
        .filter(|v| !v.is_empty())
        .map_or_else(|| manifest_dir.join(".venv/bin/python"), PathBuf::from);
    let ok = python.is_file()
        && Command::new(&python)
            .args(["-c", "import websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        return Err(format!("no Python with websockets ({})", python.display()));
    }
    Ok(WsParts {
        python,
        script: manifest_dir.join("tests/edge/ws.py"),
    })
}

impl WsParts {
    /// The parts, or `None` (skipping, off CI) when they are missing.
    pub fn find() -> Option<WsParts> {
        super::real_or_skip(find_in, "a WebSocket end-to-end test", INSTALL_HINT)
    }
}

/// WebSocket servers on loopback, each answering every message with `<label>:<message>`.
pub struct WsUpstreams {
    _driver: Driver,
    pub addrs: BTreeMap<String, SocketAddr>,
}

impl WsUpstreams {
    pub async fn start(parts: &WsParts, labels: &[&str]) -> WsUpstreams {
        let addrs: BTreeMap<String, SocketAddr> = labels
            .iter()
            .map(|l| ((*l).to_owned(), super::free_port()))
            .collect();
        let mut command = Command::new(&parts.python);
        command.arg(&parts.script).arg("server");
        command.args(addrs.iter().map(|(l, a)| format!("{l}={}", a.port())));
        let mut driver = Driver::start("the WebSocket upstreams", command, ANSWER);
        let ready = driver.answer().await;
        assert_eq!(ready, "ready", "the WebSocket upstreams said {ready:?}");
        WsUpstreams {
            _driver: driver,
            addrs,
        }
    }

    pub fn addr(&self, label: &str) -> SocketAddr {
        self.addrs[label]
    }
}

/// A WebSocket client of `ws://<addr>/`: connections it keeps open, and one-message ones.
pub struct WsClient {
    driver: Driver,
}

impl WsClient {
    pub fn start(parts: &WsParts, addr: SocketAddr) -> WsClient {
        let mut command = Command::new(&parts.python);
        command
            .arg(&parts.script)
            .arg("client")
            .arg(format!("ws://{addr}/"));
        WsClient {
            driver: Driver::start("the WebSocket client", command, ANSWER),
        }
    }

    async fn ask(&mut self, line: &str) -> Result<String, String> {
        self.driver.send(line);
        let answer = self.driver.answer().await;
        match answer.strip_prefix("error: ") {
            Some(e) => Err(e.to_owned()),
            None => Ok(answer),
        }
    }

    /// Opens connection `name` and keeps it.
    pub async fn open(&mut self, name: &str) -> Result<(), String> {
        self.ask(&format!("open {name}")).await.map(drop)
    }

    /// Sends `text` on connection `name`: the reply.
    pub async fn send(&mut self, name: &str, text: &str) -> Result<String, String> {
        self.ask(&format!("send {name} {text}")).await
    }

    /// A new connection for one message: the reply.
    pub async fn once(&mut self, text: &str) -> Result<String, String> {
        self.ask(&format!("once {text}")).await
    }
}
