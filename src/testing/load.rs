//! A bounded, steady HTTP load through Envoy that records every outcome: for the zero-downtime
//! tests and the flip benchmark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Concurrent clients for tests; each keeps one connection to Envoy alive, as a browser or an
/// SDK would.
pub const WORKERS: usize = 4;
/// Pause between one worker's requests in tests: together at most ~2000 requests/s, on a
/// 2-core machine shared with Envoy and cutover.
pub const PACE: Duration = Duration::from_millis(2);
/// Hard bounds on any one load run, whatever the test does.
const MAX_RUN: Duration = Duration::from_secs(90);
const MAX_REQUESTS_PER_WORKER: usize = 200_000;

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: usize,
    /// Responses by the upstream that answered (its name is the body).
    pub by_body: BTreeMap<String, usize>,
    pub failures: Vec<String>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        for (k, v) in other.by_body {
            *self.by_body.entry(k).or_default() += v;
        }
        self.failures.extend(other.failures);
    }

    pub fn assert_no_failures(&self, scenario: &str) {
        assert!(
            self.failures.is_empty(),
            "{scenario}: {} of {} requests failed; first ones: {:#?}",
            self.failures.len(),
            self.ok + self.failures.len(),
            &self.failures[..self.failures.len().min(10)]
        );
        assert!(self.ok > 0, "{scenario}: no request was sent");
        eprintln!(
            "{scenario}: {} requests, all 2xx: {:?}",
            self.ok, self.by_body
        );
    }
}

/// Steady load through Envoy until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Outcome>>,
}

impl Load {
    /// The load tests use: [`WORKERS`] clients paced by [`PACE`].
    pub fn start(listener: SocketAddr) -> Load {
        Load::with(listener, WORKERS, PACE)
    }

    /// `workers` clients, each pausing `pace` between requests (zero: as fast as it can).
    pub fn with(listener: SocketAddr, workers: usize, pace: Duration) -> Load {
        Load::with_headers(listener, workers, pace, &[])
    }

    /// As [`Load::with`], every request carrying `headers` (e.g. a tester's header).
    pub fn with_headers(
        listener: SocketAddr,
        workers: usize,
        pace: Duration,
        headers: &[(&str, &str)],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let workers = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                let headers = headers.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .no_proxy()
                        .pool_max_idle_per_host(1)
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("an HTTP client");
                    let url = format!("http://{listener}/");
                    let started = Instant::now();
                    let mut out = Outcome::default();
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < MAX_RUN
                        && sent < MAX_REQUESTS_PER_WORKER
                    {
                        sent += 1;
                        let mut request = client.get(&url);
                        for (k, v) in &headers {
                            request = request.header(k, v);
                        }
                        match request.send().await {
                            Ok(reply) => {
                                let status = reply.status();
                                let body = reply.text().await.unwrap_or_default();
                                if status.is_success() {
                                    out.ok += 1;
                                    *out.by_body.entry(body).or_default() += 1;
                                } else {
                                    out.failures.push(format!("HTTP {status}: {body}"));
                                }
                            }
                            Err(e) => out.failures.push(format!("connection error: {e}")),
                        }
                        if !pace.is_zero() {
                            tokio::time::sleep(pace).await;
                        }
                    }
                    out
                })
            })
            .collect();
        Load { stop, workers }
    }

    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Outcome::default();
        for w in self.workers {
            total.merge(w.await.expect("a load worker panicked"));
        }
        total
    }
}
