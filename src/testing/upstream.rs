//! HTTP/1.1 upstreams on loopback that answer with their name, count what they get and can be
//! told to fail, answer late or fail their health checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

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
        Upstream::start_with(name, None).await
    }

    /// [`Upstream::start`] speaking TLS with this certificate chain and key (PEM).
    pub async fn start_tls(name: &str, cert: &str, key: &str) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("a PEM certificate chain");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
            .expect("a PEM private key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a certificate and its key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Upstream::start_with(name, Some(acceptor)).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
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
        let task = tokio::spawn(serve_upstream(
            listener,
            name.to_owned(),
            state.clone(),
            tls,
        ));
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
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "0 to 1,000,000 once clamped"
        )]
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
            .store(super::whole_u64(delay.as_millis()), Ordering::SeqCst);
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

async fn serve_upstream(
    listener: TcpListener,
    name: String,
    state: Arc<UpstreamState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
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
        let (body, state, tls) = (body.clone(), state.clone(), tls.clone());
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
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
}
