//! `cutover demo-upstream`: the application the demo deploys. It answers every request with its
//! version and colour, answers `/health`, and can be told to fail a share of its requests (500)
//! or to answer slowly, for the outlier-detection and rollback parts of the walkthrough.
//!
//! Not a load-testing target and not an example of a real service: it exists so that the demo
//! needs nothing but cutover's own image.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

/// The response header that names the version that answered (the demo's traffic view and the
/// tests count it).
pub const VERSION_HEADER: &str = "x-demo-version";

/// `cutover demo-upstream`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The version this instance is (e.g. blue); in every answer and its x-demo-version header.
    #[arg(long)]
    pub name: String,
    /// Its colour, shown in every answer (default: the name).
    #[arg(long, alias = "color")]
    pub colour: Option<String>,
    /// Address to listen on; port 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Percent of requests (not /health) answered 500 from the start; `POST /fail?percent=N`
    /// changes it.
    #[arg(long, default_value_t = 0, env = "DEMO_FAIL_PERCENT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub fail_percent: u32,
    /// Time added to every answer (not /health) from the start, e.g. 200ms; `POST /slow?ms=N`
    /// changes it.
    #[arg(long, default_value = "0s", env = "DEMO_LATENCY", value_parser = humantime::parse_duration)]
    pub latency: Duration,
}

/// What can go wrong starting it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot listen on {addr}: {source}; choose another address with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the demo upstream stopped: {0}")]
    Serve(std::io::Error),
}

/// What the instance answers, changed at run time by `POST /fail` and `POST /slow`.
struct Behaviour {
    name: String,
    colour: String,
    fail_percent: AtomicU32,
    latency_ms: AtomicU64,
    /// Requests answered so far (not /health): decides which ones fail.
    requests: AtomicU64,
}

impl Behaviour {
    /// Whether request number `n` (from 0) fails, for `percent` of requests at random, as a bad
    /// build fails (evenly spread failures would never make three in a row, and outlier
    /// detection's `consecutive_5xx` would never see one). Pseudo-random from `n`
    /// (SplitMix64), so the same requests fail on every run.
    fn fails(n: u64, percent: u32) -> bool {
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 100 < u64::from(percent)
    }
}

/// A running demo upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Upstream {
    /// Binds and starts serving.
    pub async fn start(opts: &Options) -> Result<Upstream, UpstreamError> {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| UpstreamError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(UpstreamError::Serve)?;
        let state = Arc::new(Behaviour {
            name: opts.name.clone(),
            colour: opts.colour.clone().unwrap_or_else(|| opts.name.clone()),
            fail_percent: AtomicU32::new(opts.fail_percent.min(100)),
            latency_ms: AtomicU64::new(u64::try_from(opts.latency.as_millis()).unwrap_or(u64::MAX)),
            requests: AtomicU64::new(0),
        });
        let app = router(state);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Upstream { addr, server })
    }

    /// Serves until `signal` completes or the server fails.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), UpstreamError> {
        let mut server = self.server;
        tokio::select! {
            res = &mut server => match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(UpstreamError::Serve(e)),
                Err(e) => Err(UpstreamError::Serve(std::io::Error::other(e))),
            },
            () = signal => {
                server.abort();
                Ok(())
            }
        }
    }
}

fn router(state: Arc<Behaviour>) -> Router {
    Router::new()
        .route("/health", get(async || "ok\n"))
        .route("/fail", post(set_fail))
        .route("/slow", post(set_slow))
        .fallback(answer)
        .with_state(state)
}

async fn answer(State(b): State<Arc<Behaviour>>) -> Response {
    let n = b.requests.fetch_add(1, Ordering::Relaxed);
    let latency = b.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (status, body) = if Behaviour::fails(n, b.fail_percent.load(Ordering::Relaxed)) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{} ({}): failing on purpose (POST /fail?percent=0 to stop)\n",
                b.name, b.colour
            ),
        )
    } else {
        (StatusCode::OK, format!("{} ({})\n", b.name, b.colour))
    };
    let mut resp = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&b.name) {
        resp.headers_mut()
            .insert(HeaderName::from_static(VERSION_HEADER), v);
    }
    resp
}

#[derive(Deserialize)]
struct FailQuery {
    percent: u32,
}

async fn set_fail(
    State(b): State<Arc<Behaviour>>,
    Query(q): Query<FailQuery>,
) -> (StatusCode, String) {
    if q.percent > 100 {
        return (
            StatusCode::BAD_REQUEST,
            format!("percent={} is not 0 to 100\n", q.percent),
        );
    }
    b.fail_percent.store(q.percent, Ordering::Relaxed);
    tracing::info!(name = %b.name, percent = q.percent, "failing a share of requests");
    (
        StatusCode::OK,
        format!("{}: failing {}% of requests\n", b.name, q.percent),
    )
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: u64,
}

async fn set_slow(State(b): State<Arc<Behaviour>>, Query(q): Query<SlowQuery>) -> String {
    b.latency_ms.store(q.ms, Ordering::Relaxed);
    tracing::info!(name = %b.name, ms = q.ms, "answering slowly");
    format!("{}: {} ms added to every answer\n", b.name, q.ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_the_share_asked_for_at_random() {
        assert!((0..10_000).all(|n| !Behaviour::fails(n, 0)));
        assert!((0..10_000).all(|n| Behaviour::fails(n, 100)));
        for percent in [1, 20, 50, 99] {
            let count = (0..10_000)
                .filter(|n| Behaviour::fails(*n, percent))
                .count();
            // Binomial, n = 10 000: within 5 standard deviations (at most 250).
            let expected = 100 * percent as usize;
            assert!(
                count.abs_diff(expected) <= 250,
                "{percent}%: {count} of 10000"
            );
        }
        // Runs of three failures in a row happen (outlier detection's consecutive_5xx).
        assert!((0..100).any(|n| (n..n + 3).all(|i| Behaviour::fails(i, 50))));
    }

    #[tokio::test]
    async fn answers_fails_and_slows_down_on_request() {
        let up = Upstream::start(&Options {
            name: "canary".into(),
            colour: Some("yellow".into()),
            listen: "127.0.0.1:0".parse().unwrap(),
            fail_percent: 0,
            latency: Duration::ZERO,
        })
        .await
        .unwrap();
        let base = format!("http://{}", up.addr);
        let get = async |path: &str| http(&base, "GET", path).await;

        let (status, headers, body) = get("/anything").await;
        assert_eq!((status, body.as_str()), (200, "canary (yellow)\n"));
        assert_eq!(headers.get(VERSION_HEADER).unwrap(), "canary");
        assert_eq!(get("/health").await.0, 200);

        assert_eq!(http(&base, "POST", "/fail?percent=101").await.0, 400);
        assert_eq!(http(&base, "POST", "/fail?percent=100").await.0, 200);
        let (status, _, body) = get("/").await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(get("/health").await.0, 200, "health checks still pass");
        http(&base, "POST", "/fail?percent=0").await;
        assert_eq!(get("/").await.0, 200);

        http(&base, "POST", "/slow?ms=150").await;
        let started = std::time::Instant::now();
        assert_eq!(get("/").await.0, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    /// One request with cutover's HTTP client: status, headers and body.
    async fn http(base: &str, method: &str, path: &str) -> (u16, axum::http::HeaderMap, String) {
        let answer = cutover::http_client::Client::new()
            .send(
                method.parse().unwrap(),
                &format!("{base}{path}"),
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let text = answer.text();
        (answer.status.as_u16(), answer.headers, text)
    }
}
