//! What every Envoy sees, pushed to cutover: per service version the request rate, success and
//! error rates, latency, ejections, endpoint health and requests in flight, over the last 10 s
//! and the last minute; per endpoint requests in flight and rate.
//!
//! Two gRPC services on the ADS port take Envoy's own reports, configured by `cutover
//! bootstrap`: the stats sink (`envoy.service.metrics.v3.MetricsService`, see [`stats`]) and the
//! Load Reporting Service (`envoy.service.load_stats.v3.LoadReportingService`, see [`lrs`]).
//! [`server`] is that I/O edge; [`aggregate`] is the pure, bounded core it feeds; [`report`] is
//! what readers get. Nothing here scrapes Envoy, and nothing here changes what cutover serves.
//!
//! An Envoy from a bootstrap without these reports keeps working; it is listed as sending no
//! telemetry ([`TelemetryReport::nodes_without_telemetry`]), never as having no traffic.

pub mod aggregate;
pub mod lrs;
pub mod report;
pub mod server;
pub mod stats;
pub mod window;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use aggregate::{Aggregator, Limits, NodeKey, Source, StreamId, TooManyStreams};
pub use report::{InFlight, TelemetryReport};

/// The shared handle: the gRPC services write to it, the admin API and status read it. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct Telemetry {
    core: Arc<Mutex<Aggregator>>,
    /// Set when cutover shuts down: open streams end, so the server can stop.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The interval load reports are asked for, told to every load reporting stream when the
    /// number of them changes it.
    load_interval: Arc<tokio::sync::watch::Sender<std::time::Duration>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new(Limits::default())
    }
}

impl Telemetry {
    pub fn new(limits: Limits) -> Telemetry {
        Telemetry {
            core: Arc::new(Mutex::new(Aggregator::new(limits, Instant::now()))),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            load_interval: Arc::new(tokio::sync::watch::Sender::new(
                lrs::LOAD_REPORTING_INTERVAL,
            )),
        }
    }

    /// The interval load reports are asked for, as it changes.
    pub(crate) fn load_interval(&self) -> tokio::sync::watch::Receiver<std::time::Duration> {
        self.load_interval.subscribe()
    }

    /// Recomputes the load reporting interval after a load reporting stream opened or closed.
    pub(crate) fn refresh_load_interval(&self) {
        let now = self.lock().load_interval();
        self.load_interval.send_if_modified(|current| {
            let changed = *current != now;
            *current = now;
            changed
        });
    }

    /// Ends every open stream (cutover is shutting down; Envoy reconnects to the next one).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Telemetry::close_streams`] was called.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|closing| *closing).await;
    }

    /// Every figure at `now`.
    pub fn report(&self, now: Instant) -> TelemetryReport {
        self.lock().report(now)
    }

    /// One version's figures over the last `last` (at most 10 s) before `now`, from what
    /// Envoys reported of that time only: what rollout checks judge.
    /// See [`aggregate::Aggregator::recent_calls`].
    pub fn recent_calls(
        &self,
        id: &crate::ids::ClusterId,
        last: std::time::Duration,
        now: Instant,
    ) -> (u64, u64) {
        self.lock().recent_calls(id, last, now)
    }

    pub fn recent_figures(
        &self,
        id: &crate::ids::ClusterId,
        last: std::time::Duration,
        now: Instant,
    ) -> (report::WindowFigures, report::Histogram) {
        self.lock().recent_figures(id, last, now)
    }

    /// Per Envoy, what its latest stats flush said of a version's endpoints, for `cutover wait
    /// healthy`.
    pub fn health(&self, id: &crate::ids::ClusterId, now: Instant) -> Vec<report::NodeHealth> {
        self.lock().health(id, now)
    }

    /// Requests in flight per Envoy and endpoint at `now`, for `cutover wait drained`.
    pub fn in_flight(&self, now: Instant) -> InFlight {
        self.lock().in_flight(now)
    }

    /// The stats sink's gRPC service.
    pub fn metrics_service(
        &self,
        slots: std::sync::Arc<crate::xds::limits::StreamSlots>,
        access: tokio::sync::watch::Receiver<std::sync::Arc<crate::access::Access>>,
        max_message_bytes: usize,
    ) -> envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsServiceServer<
        server::Sink,
    >{
        server::metrics_service(self.clone(), slots, access, max_message_bytes)
    }

    /// The Load Reporting Service.
    pub fn load_reporting_service(
        &self,
        slots: std::sync::Arc<crate::xds::limits::StreamSlots>,
        access: tokio::sync::watch::Receiver<std::sync::Arc<crate::access::Access>>,
        max_message_bytes: usize,
    ) -> envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::LoadReportingServiceServer<server::LoadReporting>{
        server::load_reporting_service(self.clone(), slots, access, max_message_bytes)
    }

    /// The core, also after a panic while it was held: at worst that message is half counted,
    /// and the figures stay bounded and usable.
    fn lock(&self) -> MutexGuard<'_, Aggregator> {
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
