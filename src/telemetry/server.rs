//! The gRPC edge: Envoy's stats sink and load reporting streams, on the ADS port. Each stream
//! is identified by the node in its first message, parsed outside the lock, applied to the
//! core, and forgotten when it ends, however it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::load_stats::v3::{
    LoadStatsRequest, LoadStatsResponse,
    load_reporting_service_server::{LoadReportingService, LoadReportingServiceServer},
};
use envoy_types::pb::envoy::service::metrics::v3::{
    StreamMetricsMessage, StreamMetricsResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::aggregate::{NodeKey, Source, StreamId};
use super::{Telemetry, lrs, stats};
use crate::access::Access;
use crate::tls::PeerInfo;
use crate::xds::limits::StreamSlots;

pub fn metrics_service(
    telemetry: Telemetry,
    slots: Arc<StreamSlots>,
    access: watch::Receiver<Arc<Access>>,
    max_message_bytes: usize,
) -> MetricsServiceServer<Sink> {
    MetricsServiceServer::new(Sink {
        telemetry,
        slots,
        access,
    })
    .max_decoding_message_size(max_message_bytes)
}

pub fn load_reporting_service(
    telemetry: Telemetry,
    slots: Arc<StreamSlots>,
    access: watch::Receiver<Arc<Access>>,
    max_message_bytes: usize,
) -> LoadReportingServiceServer<LoadReporting> {
    LoadReportingServiceServer::new(LoadReporting {
        telemetry,
        slots,
        access,
    })
    .max_decoding_message_size(max_message_bytes)
}

/// `envoy.service.metrics.v3.MetricsService`.
#[derive(Debug)]
pub struct Sink {
    telemetry: Telemetry,
    /// Telemetry streams count against `--max-streams` with the xDS ones.
    slots: Arc<StreamSlots>,
    /// With mutual TLS, a report is taken only for a node its sender's certificate may be: a
    /// forged report could otherwise fail a rollout's check or hide an error rate.
    access: watch::Receiver<Arc<Access>>,
}

/// `envoy.service.load_stats.v3.LoadReportingService`.
#[derive(Debug)]
pub struct LoadReporting {
    telemetry: Telemetry,
    slots: Arc<StreamSlots>,
    access: watch::Receiver<Arc<Access>>,
}

/// An open stream in the core; closing it on drop forgets it also when the handler is
/// cancelled (the connection went away).
struct Registration {
    telemetry: Telemetry,
    id: StreamId,
    node: String,
    source: Source,
}

impl Registration {
    fn open(
        telemetry: &Telemetry,
        source: Source,
        node: Option<&Node>,
        peer: &PeerInfo,
        access: &Access,
    ) -> Result<Registration, Status> {
        let peer_addr = peer.addr;
        let what = match source {
            Source::StatsSink => "StreamMetricsMessage (identifier.node)",
            Source::LoadReports => "LoadStatsRequest (node)",
        };
        let node = node.filter(|n| !n.id.is_empty()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "the first {what} must name the Envoy node; cutover identifies telemetry streams by node id"
            ))
        })?;
        if let Some(who) = &peer.identity
            && let Err(refusal) = access.check(who, &node.id, None)
        {
            // Its xDS stream, on the same connection with the same node id, is refused and
            // logged too (at most once a minute per node).
            tracing::debug!(node = %node.id, peer = ?peer_addr, "refused a telemetry stream: {refusal}");
            return Err(Status::permission_denied(refusal.to_string()));
        }
        let key = NodeKey::new(&node.id, &node.cluster);
        let id = telemetry
            .lock()
            .open(source, key.clone(), Instant::now())
            .map_err(|e| {
                tracing::warn!(node = %key.id, peer = ?peer_addr, "{e}");
                Status::resource_exhausted(e.to_string())
            })?;
        tracing::info!(node = %key.id, peer = ?peer_addr, source = ?source, "telemetry stream opened");
        Ok(Registration {
            telemetry: telemetry.clone(),
            id,
            node: key.id,
            source,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.telemetry.lock().close(self.id);
        if self.source == Source::LoadReports {
            self.telemetry.refresh_load_interval();
        }
        tracing::info!(node = %self.node, source = ?self.source, "telemetry stream closed");
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let _slot = self.slots.try_open()?;
        let peer = PeerInfo::of(&request);
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Ok(Response::new(StreamMetricsResponse {}));
        };
        let node = first.identifier.as_ref().and_then(|i| i.node.as_ref());
        let access = self.access.borrow().clone();
        let registration =
            Registration::open(&self.telemetry, Source::StatsSink, node, &peer, &access)?;
        let mut message = Some(first);
        while let Some(m) = message {
            // Parsed before taking the lock: the lock is held only to add up figures.
            let flush = stats::parse(&m);
            self.telemetry
                .lock()
                .stats(registration.id, &flush, Instant::now());
            message = tokio::select! {
                next = inbound.message() => match next {
                    Ok(next) => next,
                    Err(status) => {
                        tracing::debug!(node = %registration.node, %status, "stats sink stream ended");
                        None
                    }
                },
                () = self.telemetry.closed() => None,
            };
        }
        // Envoy never reads the answer; it reopens the stream at its next flush.
        Ok(Response::new(StreamMetricsResponse {}))
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<LoadStatsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LoadReportingService for LoadReporting {
    type StreamLoadStatsStream = ResponseStream;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let slot = self.slots.try_open()?;
        let peer = PeerInfo::of(&request);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the load reporting stream ended before its first report")
        })?;
        let registration = Registration::open(
            &self.telemetry,
            Source::LoadReports,
            first.node.as_ref(),
            &peer,
            &self.access.borrow().clone(),
        )?;
        let telemetry = self.telemetry.clone();
        telemetry
            .lock()
            .load(registration.id, &lrs::parse(&first), Instant::now());
        telemetry.refresh_load_interval();
        let mut interval = telemetry.load_interval();
        let (answers, rx) = tokio::sync::mpsc::channel(1);
        // One answer starts Envoy's reports for good; the stream stays open while Envoy
        // reports, and its end (Envoy gone) forgets the node's load. Another answer goes out
        // when the interval changes (more or fewer Envoys report); if the previous one is
        // still unread, the next change sends the latest.
        let _ = answers.try_send(Ok(lrs::response(*interval.borrow_and_update())));
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    Ok(()) = interval.changed() => {
                        let every = *interval.borrow_and_update();
                        let _ = answers.try_send(Ok(lrs::response(every)));
                        continue;
                    }
                    () = telemetry.closed() => break,
                };
                match next {
                    Ok(Some(report)) => {
                        let report = lrs::parse(&report);
                        telemetry
                            .lock()
                            .load(registration.id, &report, Instant::now());
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %registration.node, %status, "load reporting stream ended");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
