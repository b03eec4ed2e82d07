//! A page open in a real headless Chromium (Debian's `chromium`), driven by Playwright through
//! `tests/browser/dashboard.mjs`: the test sends `read` and gets what the page shows, as JSON.
//!
//! Finding the parts: `NODE_BIN` or `node` on `PATH`; `CHROMIUM_BIN` or `/usr/bin/chromium`;
//! `playwright-core` in `tests/browser/node_modules` (`npm ci --prefix tests/browser`). With
//! `CI=true` a missing part fails the test; elsewhere the test is skipped with a loud message.
//! `scripts/test` installs them all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::Missing;
use super::driver::Driver;

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
    let mut missing = Missing::default();
    let node = missing.node(&env);
    let chromium = PathBuf::from(
        env("CHROMIUM_BIN")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "/usr/bin/chromium".to_owned()),
    );
    missing.file(&chromium, "Chromium");
    let browser_dir = manifest_dir.join("tests/browser");
    let playwright = browser_dir.join("node_modules/playwright-core/package.json");
    missing.file(&playwright, "playwright-core");
    missing.or(Browser {
        node,
        chromium,
        script: browser_dir.join("dashboard.mjs"),
    })
}

/// [`find_browser_in`] on the real environment: found → `Some`; missing on CI (`CI=true`) →
/// panic; elsewhere → a loud message and `None`.
pub fn browser_or_skip() -> Option<Browser> {
    super::real_or_skip(find_browser_in, "a browser test", INSTALL_HINT)
}

/// A page open at a URL. The browser is killed on drop.
pub struct Page {
    driver: Driver,
    /// The driver's `ready` answer: load time, HTTP status and headers of the page.
    pub ready: Value,
}

impl Page {
    /// Opens `url` and waits until the page shows a service.
    pub async fn open(browser: &Browser, url: &str) -> Page {
        let mut command = Command::new(&browser.node);
        command
            .arg(&browser.script)
            .arg(url)
            .env("CHROMIUM_BIN", &browser.chromium);
        let mut page = Page {
            driver: Driver::start("the browser driver", command, ANSWER),
            ready: Value::Null,
        };
        page.ready = page.answer("ready").await;
        page
    }

    /// The next answer of the driver; panics on an error, on silence or on an early exit.
    async fn answer(&mut self, key: &str) -> Value {
        let line = self.driver.answer().await;
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the browser driver said {line:?}: {e}"));
        if let Some(error) = value.get("error") {
            panic!("the browser failed: {}", error.as_str().unwrap_or_default());
        }
        assert!(value.get(key).is_some(), "expected {key}, got {value}");
        value
    }

    /// What the page shows now (`state`), with the driver's `problems` (console errors, failed
    /// requests) and every URL the page has `requests`ted.
    pub async fn read(&mut self) -> Value {
        self.driver.send("read");
        self.answer("state").await
    }

    /// Clicks `service`'s rollout button for `command` (`pause`, `resume`, `promote`,
    /// `abort`), accepting the confirmation it may ask for.
    pub async fn click(&mut self, service: &str, command: &str) {
        self.driver.send(&format!("click {service} {command}"));
        self.answer("clicked").await;
    }

    /// A full-page PNG at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        self.driver.send(&format!("screenshot {}", path.display()));
        self.answer("screenshot").await;
    }

    /// Closes the browser; panics unless the driver exits cleanly.
    pub async fn close(mut self) {
        self.driver.send("quit");
        let status = self.driver.finish().await;
        assert!(status.success(), "the browser driver exited with {status}");
    }
}
