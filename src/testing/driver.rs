//! A child process driven one line at a time: the test writes a command line, the process
//! answers with a line. For the drivers of real clients written in other languages (gRPC's
//! proxyless clients, a browser).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

/// A child process that answers one line per command line. Killed on drop.
pub(crate) struct Driver {
    what: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// How long one answer may take.
    answer: Duration,
}

impl Driver {
    /// Starts `command` (its stderr goes to the test's); `what` names it in failures.
    pub(crate) fn start(what: &str, mut command: Command, answer: Duration) -> Driver {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
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
        Driver {
            what: what.to_owned(),
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            answer,
        }
    }

    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the driver's stdin is open");
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("write to {}: {e}", self.what));
        stdin.flush().expect("flush the driver's input");
    }

    /// The next line it writes; panics on silence or on an early exit.
    pub(crate) async fn answer(&mut self) -> String {
        let (what, within) = (&self.what, self.answer);
        tokio::time::timeout(within, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} did not answer within {within:?}"))
            .unwrap_or_else(|| {
                let status = self.child.as_mut().map(Child::try_wait);
                panic!("{what} exited ({status:?}) before answering")
            })
    }

    /// Closes its input and waits for it to exit; its exit status.
    pub(crate) async fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let mut child = self.child.take().expect("the driver is running");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait for the driver")
            .unwrap_or_else(|e| panic!("the exit status of {}: {e}", self.what))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
