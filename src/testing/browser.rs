//! A page open in a real headless Chromium (Debian's `chromium`), driven by Playwright through
//! `tests/browser/dashboard.mjs`: the test sends `read` and gets what the page shows, as JSON.
//!
//! Finding the parts: `NODE_BIN` or `node` on `PATH`; `CHROMIUM_BIN` or `/usr/bin/chromium`;
//! `playwright-core` in `tests/browser/node_modules` (`npm ci --prefix tests/browser`). With
//! `CI=true` a missing part fails the test; elsewhere the test is skipped with a loud message.
//! `scripts/test` installs them all.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

/// One answer of the driver; Chromium's start is included in the first.
const ANSWER: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "scripts/test installs them; by hand: `apt-get install -y chromium` and \
     `npm ci --prefix tests/browser`";

/// What it takes to drive a browser.
#[derive(Debug, Clone)]
pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    script: PathBuf,
}

/// Where each part is, or what is missing. Pure: `env` looks up environment variables.
pub fn find_browser_in(
    env: impl Fn(&str) -> Option<String>,
    manifest_dir: &Path,
) -> Result<Browser, String> {
    let mut missing = Vec::new();
    let node = super::find_node(&env);
    if node.is_none() {
        missing.push("Node.js (`node` on PATH or NODE_BIN)".to_owned());
    }
    let chromium = PathBuf::from(
        env("CHROMIUM_BIN")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "/usr/bin/chromium".to_owned()),
    );
    if !chromium.is_file() {
        missing.push(format!("Chromium ({})", chromium.display()));
    }
    let browser_dir = manifest_dir.join("tests/browser");
    let playwright = browser_dir.join("node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push(format!("playwright-core ({})", playwright.display()));
    }
    match node {
        Some(node) if missing.is_empty() => Ok(Browser {
            node,
            chromium,
            script: browser_dir.join("dashboard.mjs"),
        }),
        _ => Err(format!("missing {}", missing.join(", "))),
    }
}

/// [`find_browser_in`] on the real environment: found → `Some`; missing on CI (`CI=true`) →
/// panic; elsewhere → a loud message and `None`.
pub fn browser_or_skip() -> Option<Browser> {
    let env = |name: &str| std::env::var(name).ok();
    let ci = super::on_ci(&env);
    super::found_or_skip(
        find_browser_in(env, super::repo()),
        ci,
        "a browser test",
        INSTALL_HINT,
    )
}

/// A page open at a URL. The browser is killed on drop.
pub struct Page {
    /// Taken by [`Page::close`].
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// The driver's `ready` answer: load time, HTTP status and headers of the page.
    pub ready: Value,
}

impl Page {
    /// Opens `url` and waits until the page shows a service.
    pub async fn open(browser: &Browser, url: &str) -> Page {
        let mut child = Command::new(&browser.node)
            .arg(&browser.script)
            .arg(url)
            .env("CHROMIUM_BIN", &browser.chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", browser.node.display()));
        let stdout = child.stdout.take().expect("the driver's stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut page = Page {
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            ready: Value::Null,
        };
        page.ready = page.answer("ready").await;
        page
    }

    /// The next answer of the driver; panics on an error, on silence or on an early exit.
    async fn answer(&mut self, key: &str) -> Value {
        let line = tokio::time::timeout(ANSWER, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("the browser did not answer ({key}) within {ANSWER:?}"))
            .unwrap_or_else(|| {
                let status = self.child.as_mut().map(Child::try_wait);
                panic!("the browser driver exited ({status:?}) before answering ({key})")
            });
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the browser driver said {line:?}: {e}"));
        if let Some(error) = value.get("error") {
            panic!("the browser failed: {}", error.as_str().unwrap_or_default());
        }
        assert!(value.get(key).is_some(), "expected {key}, got {value}");
        value
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("the driver's stdin is open");
        writeln!(stdin, "{command}").expect("write to the browser driver");
        stdin.flush().expect("flush the browser driver's input");
    }

    /// What the page shows now (`state`), with the driver's `problems` (console errors, failed
    /// requests) and every URL the page has `requests`ted.
    pub async fn read(&mut self) -> Value {
        self.send("read");
        self.answer("state").await
    }

    /// A full-page PNG at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        self.send(&format!("screenshot {}", path.display()));
        self.answer("screenshot").await;
    }

    /// Closes the browser; panics unless the driver exits cleanly.
    pub async fn close(mut self) {
        self.send("quit");
        drop(self.stdin.take());
        let mut child = self.child.take().expect("the driver is running");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait for the browser driver")
            .expect("the browser driver's exit status");
        assert!(status.success(), "the browser driver exited with {status}");
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
