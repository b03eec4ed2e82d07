//! What one client, or all of them together, may make cutover hold: concurrent gRPC streams,
//! the size of one message, the names one stream subscribes to, the size of what is kept of a
//! node's identity and of Envoy's NACK text; and how fast a dead peer is found. Also the log
//! limiter that keeps a misbehaving client from flooding the log.
//!
//! Every bound here answers a client with a status that says which limit and how to raise it;
//! none of them is reached by an Envoy that cutover's own limits on the deployment file let
//! through (see [`crate::spec::Limits`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Longest node id or node cluster a stream may name. Node ids are host or pod names (at most
/// 253 bytes); anything this long is not an Envoy's.
pub const MAX_NODE_FIELD_BYTES: usize = 1024;

/// Longest resource name a client may subscribe to. cutover's own names are at most 194 bytes
/// (`service/version~fallback`, each name at most 64), so a longer one can never exist; refusing
/// it bounds what a subscription holds.
pub const MAX_NAME_BYTES: usize = 256;

/// How much of Envoy's error text of a NACK is kept (status, CSDS) and logged.
pub const MAX_NACK_ERROR_BYTES: usize = 4096;

/// The bounds on clients; [`Default`] is what `cutover serve` uses without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Concurrent xDS and telemetry streams, all clients together.
    pub max_streams: usize,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Resource names one stream may subscribe to, all types together.
    pub max_names: usize,
    /// HTTP/2 PING sent on a connection this long without a frame from the peer.
    pub keepalive_interval: Duration,
    /// A PING not answered within this closes the connection and ends its streams.
    pub keepalive_timeout: Duration,
    /// Balance across replicas: a connection gets GOAWAY at this age and its xDS stream ends
    /// (UNAVAILABLE) somewhat later ([`ClientLimits::stream_age`]), so the client opens a new
    /// connection, which its load balancer may send to another replica. `None`: never.
    pub max_stream_age: Option<Duration>,
}

pub const MIB: usize = 1024 * 1024;

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_streams: 10_000,
            // A state-of-the-world EDS request names every cluster: 100,000 versions (the
            // deployment file's limit) of names up to 129 bytes is 13 MB.
            max_message_bytes: 16 * MIB,
            // Twice the most clusters a file may have (CUTOVER_MAX_VERSIONS).
            max_names: 200_000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_stream_age: None,
        }
    }
}

impl ClientLimits {
    /// The longest a vanished peer (no FIN, no RST) stays connected: a PING is sent after one
    /// interval of silence and the connection closed when its answer is overdue.
    pub fn dead_peer_after(&self) -> Duration {
        self.keepalive_interval + self.keepalive_timeout
    }

    /// How long one xDS stream may last: `max_stream_age` plus a random tenth of it at most,
    /// so that streams opened together (a fleet reconnecting after a failover) do not all
    /// reconnect together again. By then its connection has had GOAWAY, so the client opens
    /// the next stream on a new connection.
    pub fn stream_age(&self) -> Option<Duration> {
        use std::hash::{BuildHasher as _, Hasher as _};
        let age = self.max_stream_age.filter(|a| !a.is_zero())?;
        // A random number from the standard library's randomly keyed hasher.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .unwrap_or_default()
                .as_nanos(),
        );
        let share = (h.finish() % 1_000) as f64 / 10_000.0;
        Some(age + age.mul_f64(share))
    }
}

/// The concurrent streams in use and the limit on them, shared by every gRPC service on the
/// ADS port. A stream holds a [`StreamSlot`] for as long as its task runs.
#[derive(Debug)]
pub struct StreamSlots {
    open: AtomicUsize,
    max: usize,
    open_gauge: Gauge,
    refused: Counter,
    /// Refusals come in storms (every refused Envoy retries): logged at most every 10 s.
    log: Mutex<LogLimiter>,
}

impl StreamSlots {
    pub fn new(max: usize, metrics: &Metrics) -> StreamSlots {
        metrics.grpc_streams_limit.set(gauge(max));
        StreamSlots {
            open: AtomicUsize::new(0),
            max,
            open_gauge: metrics.grpc_streams.clone(),
            refused: metrics.grpc_streams_refused.clone(),
            log: Mutex::new(LogLimiter::new(Duration::from_secs(10))),
        }
    }

    /// A slot for one more stream, or the status that refuses it.
    pub fn try_open(self: &Arc<Self>) -> Result<StreamSlot, tonic::Status> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(n) => {
                self.open_gauge.set(gauge(n + 1));
                Ok(StreamSlot {
                    slots: self.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                let message = format!(
                    "cutover has its limit of {} concurrent gRPC streams (xDS and telemetry) open; \
                     connect again later or to another replica, or raise the limit with \
                     `cutover serve --max-streams N` (CUTOVER_MAX_STREAMS)",
                    self.max
                );
                let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(suppressed) = log.check(Instant::now()) {
                    tracing::warn!(
                        limit = self.max,
                        refused_since_last_line = suppressed,
                        "refused a gRPC stream: --max-streams reached"
                    );
                }
                Err(tonic::Status::resource_exhausted(message))
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// A count as a Prometheus gauge value (saturating: no count here comes near `i64::MAX`).
pub(crate) fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One open stream; dropping it (however the stream task ends) frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let n = self.slots.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.slots.open_gauge.set(gauge(n));
    }
}

/// At most one log line per `every`; the lines in between are counted, and the next line says
/// how many were left out. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, saying that `n` lines were left out since the last one; `None`:
    /// leave this one out.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Lines left out and not reported yet (for a last summary line).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// What a client can make cutover log again and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noise {
    /// Requests for a type cutover does not serve.
    UnknownType,
    /// NACKs (one per response, but a client that reconnects and NACKs repeats them).
    Nack,
    /// Streams refused for what they ask (a node id too long, too many names).
    Refused,
    /// Certificates asked for over a connection that would expose their keys.
    Secrets,
}

/// [`LogLimiter`]s per node id and kind of [`Noise`], shared by every stream so that a client
/// reconnecting in a loop is limited as one. Bounded: past `max_keys` node ids, ids not seen
/// for a while are forgotten, and if none is, the new ones share one limiter.
#[derive(Debug)]
pub struct NoiseLog {
    every: Duration,
    max_keys: usize,
    keys: Mutex<HashMap<(Noise, String), LogLimiter>>,
    overflow: Mutex<LogLimiter>,
}

impl NoiseLog {
    pub fn new(every: Duration, max_keys: usize) -> NoiseLog {
        NoiseLog {
            every,
            max_keys,
            keys: Mutex::new(HashMap::new()),
            overflow: Mutex::new(LogLimiter::new(every)),
        }
    }

    /// Whether to log one `noise` of `node` now, and how many were left out before it.
    pub fn check(&self, noise: Noise, node: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let key = (noise, node.to_owned());
        if !keys.contains_key(&key) && keys.len() >= self.max_keys {
            // Nothing to report of a limiter idle this long: it would log its next line.
            let every = self.every;
            keys.retain(|_, l| {
                l.last
                    .is_some_and(|last| now.saturating_duration_since(last) < every)
                    || l.suppressed > 0
            });
            if keys.len() >= self.max_keys {
                drop(keys);
                return self
                    .overflow
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .check(now);
            }
        }
        keys.entry(key)
            .or_insert_with(|| LogLimiter::new(self.every))
            .check(now)
    }
}

impl Default for NoiseLog {
    fn default() -> Self {
        NoiseLog::new(Duration::from_secs(60), 10_000)
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was left out.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limiter_logs_once_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.check(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(l.check(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.check(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(l.check(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.take_suppressed(), 1);
        assert_eq!(l.take_suppressed(), 0);
    }

    #[test]
    fn noise_is_limited_per_node_and_kind_and_the_keys_are_bounded() {
        let t0 = Instant::now();
        let log = NoiseLog::new(Duration::from_secs(60), 3);
        assert_eq!(log.check(Noise::Nack, "a", t0), Some(0));
        assert_eq!(log.check(Noise::Nack, "a", t0), None);
        // Another kind, another node: logged on their own.
        assert_eq!(log.check(Noise::UnknownType, "a", t0), Some(0));
        assert_eq!(log.check(Noise::Nack, "b", t0), Some(0));
        // Full, and every key is busy: new nodes share one limiter.
        assert_eq!(log.check(Noise::Nack, "c", t0), Some(0));
        assert_eq!(log.check(Noise::Nack, "d", t0), None);
        assert_eq!(log.keys.lock().unwrap().len(), 3);
        // A minute later the idle keys are forgotten to make room.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(log.check(Noise::Nack, "e", later), Some(0));
        assert!(log.keys.lock().unwrap().len() <= 3);
        // "a" had one left out: it is kept until it reports it.
        assert_eq!(log.check(Noise::Nack, "a", later), Some(1));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        let long = "é".repeat(10); // 20 bytes
        let cut = truncated(&long, 5);
        assert_eq!(cut, "éé… (16 more bytes)");
    }

    #[test]
    fn streams_over_the_limit_are_refused_and_slots_come_back() {
        let metrics = Metrics::new();
        let slots = Arc::new(StreamSlots::new(2, &metrics));
        let a = slots.try_open().unwrap();
        let _b = slots.try_open().unwrap();
        let refused = slots.try_open().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("limit of 2 concurrent")
                && refused.message().contains("--max-streams"),
            "{refused:?}"
        );
        assert_eq!(slots.open(), 2);
        drop(a);
        assert_eq!(slots.open(), 1);
        slots.try_open().unwrap();
        let text = metrics.encode();
        assert!(text.contains("cutover_grpc_streams 1"), "{text}");
        assert!(text.contains("cutover_grpc_streams_limit 2"), "{text}");
        assert!(
            text.contains("cutover_grpc_streams_refused_total 1"),
            "{text}"
        );
    }
}
