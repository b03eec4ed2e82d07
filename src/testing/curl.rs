//! curl as the HTTPS client of the edge tests: a real client with SNI, ALPN and certificate
//! verification, run as a process.
//!
//! With `CI=true` a missing curl fails the test (`scripts/test` installs it); elsewhere the
//! test is skipped with a loud message.

use std::path::{Path, PathBuf};

use std::process::Command;

const INSTALL_HINT: &str = "install curl (Debian: `apt-get install curl`)";

/// curl, found on `PATH`.
#[derive(Debug, Clone)]
pub struct Curl {
    bin: PathBuf,
}

/// What one HTTPS request gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// `1.1` or `2`.
    pub http_version: String,
}

impl Curl {
    /// curl, or `None` (skipping, off CI) when it is missing.
    pub fn find() -> Option<Curl> {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("curl"))
            .find(|p| p.is_file())
            .map(|bin| Curl { bin })
            .ok_or_else(|| "no curl on PATH".to_owned());
        super::found_or_skip(
            found,
            super::on_ci(&super::real_env),
            "an HTTPS end-to-end test",
            INSTALL_HINT,
        )
    }

    /// The base command: quiet, bounded in time, no proxy from the environment.
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ]);
        c
    }

    /// GET `https://{host}:{port}/` through `127.0.0.1`, trusting only `ca`: the request sends
    /// `host` as SNI (none when it is an IP address) and verifies that the certificate is for
    /// it. `extra` are more curl arguments (`--http2`, `--http1.1`).
    pub async fn get(
        &self,
        ca: &Path,
        host: &str,
        port: u16,
        extra: &[&str],
    ) -> Result<Reply, String> {
        let mut c = self.command();
        c.arg("--cacert")
            .arg(ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["--write-out", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(format!("https://{host}:{port}/"));
        // curl's own --max-time bounds it.
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .map_err(|e| format!("curl's task: {e}"))?
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "curl {host}: {} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut parts = last.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(Reply {
            status,
            body: body.to_owned(),
            http_version: parts.next().unwrap_or_default().to_owned(),
        })
    }

    /// `count` GETs of `https://{host}:{port}/`, one after the other at `per_second`, on one
    /// connection as long as the server keeps it (curl reuses it): for each, the status and
    /// how many new connections it needed (0 when it went on the open one). Runs as a process
    /// the caller awaits; bounded by `count`.
    pub fn steady(
        &self,
        ca: &Path,
        host: &str,
        port: u16,
        count: usize,
        per_second: u32,
        extra: &[&str],
    ) -> tokio::task::JoinHandle<Result<Vec<(u16, u32)>, String>> {
        let mut c = self.command();
        c.arg("--cacert")
            .arg(ca)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["--rate", &format!("{per_second}/s")])
            .args(["--write-out", "%{http_code} %{num_connects}\n"])
            .args(extra);
        for _ in 0..count {
            // `--output` goes with one URL.
            c.args(["--output", "/dev/null"])
                .arg(format!("https://{host}:{port}/"));
        }
        // Bounded by `count` requests of at most --max-time each.
        tokio::task::spawn_blocking(move || {
            let out = c.output().map_err(|e| format!("cannot run curl: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let replies = text
                .lines()
                .map(|l| {
                    let mut p = l.split_whitespace();
                    let status = p.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    let connects = p.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    (status, connects)
                })
                .collect();
            if out.status.success() {
                Ok(replies)
            } else {
                Err(format!(
                    "curl: {} ({}) after {replies:?}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    out.status
                ))
            }
        })
    }
}
