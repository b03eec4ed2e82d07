//! The gRPC transport: one xDS stream (ADS or one type's service, either protocol) to a server,
//! over plaintext or TLS, carrying a [`FakeEnvoy`]'s requests or a test's own.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Status, Streaming};

use super::{CDS, EDS, FakeEnvoy, LDS, RDS, Request, Response, node};
use crate::testing::Protocol;
use crate::xds::Mode;

/// How long a response may take.
const ANSWER: Duration = Duration::from_secs(10);
/// How long "nothing comes" is watched for.
const NOTHING: Duration = Duration::from_millis(300);
/// Responses a client takes: large configs (thousands of clusters) in one message.
const MAX_RESPONSE: usize = 64 << 20;

/// A channel to `addr`: plaintext, or TLS with `tls`. `Err` if it cannot connect.
pub async fn channel(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
}

/// Opens a stream of `$mode` on `$channel` sending `$requests`, in the protocol `sotw` or
/// `delta` says, with the method of the ADS or per-type client that serves it; `?` on a refusal.
macro_rules! call {
    (sotw, $channel:expr, $mode:expr, $requests:expr) => {
        call!(@ $channel, $mode, $requests, stream_aggregated_resources, stream_clusters,
            stream_endpoints, stream_listeners, stream_routes)
    };
    (delta, $channel:expr, $mode:expr, $requests:expr) => {
        call!(@ $channel, $mode, $requests, delta_aggregated_resources, delta_clusters,
            delta_endpoints, delta_listeners, delta_routes)
    };
    (@ $channel:expr, $mode:expr, $requests:expr, $ads:ident, $cds:ident, $eds:ident, $lds:ident, $rds:ident) => {{
        // One type's service: its client, its method.
        macro_rules! one {
            ($client:ident, $method:ident) => {
                $client::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE)
                    .$method($requests)
                    .await
            };
        }
        match $mode {
            Mode::Aggregated => {
                AggregatedDiscoveryServiceClient::new($channel)
                    .max_encoding_message_size(usize::MAX)
                    .max_decoding_message_size(MAX_RESPONSE)
                    .$ads($requests)
                    .await
            }
            Mode::Single(CDS) => one!(ClusterDiscoveryServiceClient, $cds),
            Mode::Single(EDS) => one!(EndpointDiscoveryServiceClient, $eds),
            Mode::Single(LDS) => one!(ListenerDiscoveryServiceClient, $lds),
            Mode::Single(RDS) => one!(RouteDiscoveryServiceClient, $rds),
            // cutover serves secrets on ADS only.
            Mode::Single(crate::xds::ResourceType::Secret) => {
                Err(Status::unimplemented("no secret discovery service of its own"))
            }
        }?
        .into_inner()
    }};
}

/// A request channel of `depth` with `first` already in it, and the stream it feeds.
fn queue<R>(depth: usize, first: impl Iterator<Item = R>) -> (mpsc::Sender<R>, ReceiverStream<R>) {
    let (tx, rx) = mpsc::channel(depth);
    for r in first {
        if tx.try_send(r).is_err() {
            panic!("no room for the first requests in a queue of {depth}");
        }
    }
    (tx, ReceiverStream::new(rx))
}

enum Sender {
    Sotw(mpsc::Sender<DiscoveryRequest>),
    Delta(mpsc::Sender<DeltaDiscoveryRequest>),
}

enum Receiver {
    Sotw(Streaming<DiscoveryResponse>),
    Delta(Streaming<DeltaDiscoveryResponse>),
}

/// A response as the wire brought it, for a client that reads no more of it than it needs.
#[derive(Debug)]
pub enum Raw {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

impl From<Raw> for Response {
    fn from(raw: Raw) -> Response {
        match raw {
            Raw::Sotw(r) => r.into(),
            Raw::Delta(r) => r.into(),
        }
    }
}

/// One xDS stream to a server, and the [`FakeEnvoy`] at its end. A test drives it as Envoy
/// ([`Client::start`], [`Client::answer`], [`Client::settle`]) or sends its own requests
/// ([`Client::send`]); either way the stream's first request names the client's node unless it
/// names one itself.
pub struct Client {
    pub envoy: FakeEnvoy,
    tx: Sender,
    rx: Receiver,
}

impl Client {
    /// Connects over plaintext gRPC to `addr` and opens an ADS stream for a fake Envoy of
    /// `protocol` called `node_id` (nothing is sent yet). Panics if it cannot.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, node_id: &str) -> Client {
        Client::connect_as(addr, FakeEnvoy::named(protocol, node(node_id))).await
    }

    /// [`Client::connect`] for `envoy`, which may hold what it held on an earlier stream.
    pub async fn connect_as(addr: SocketAddr, envoy: FakeEnvoy) -> Client {
        let channel = channel(addr, None)
            .await
            .unwrap_or_else(|e| panic!("connect to cutover at {addr}: {e}"));
        Client::open(channel, Mode::Aggregated, envoy)
            .await
            .unwrap_or_else(|s| panic!("open an xDS stream to {addr}: {s}"))
    }

    /// Opens a stream of `mode` (ADS, or one type's discovery service) on `channel` in
    /// `envoy`'s protocol; the status if the server refuses the stream at once.
    pub async fn open(channel: Channel, mode: Mode, envoy: FakeEnvoy) -> Result<Client, Status> {
        Client::open_sending(channel, mode, envoy, Vec::new()).await
    }

    /// [`Client::open`] with `first` already on its way when the stream opens (as a client
    /// that writes before it reads sends them: in the stream's first packets).
    pub async fn open_sending(
        channel: Channel,
        mode: Mode,
        mut envoy: FakeEnvoy,
        first: Vec<Request>,
    ) -> Result<Client, Status> {
        // A few requests of headroom: a client sends at most a few before it reads.
        let depth = 16.max(first.len());
        let first: Vec<Request> = first.into_iter().map(|r| envoy.stamp(r)).collect();
        let first = first.into_iter();
        let (tx, rx) = match envoy.protocol() {
            Protocol::Sotw => {
                let (tx, requests) = queue(depth, first.map(Request::into_sotw));
                let rx = call!(sotw, channel, mode, requests);
                (Sender::Sotw(tx), Receiver::Sotw(rx))
            }
            Protocol::Delta => {
                let (tx, requests) = queue(depth, first.map(Request::into_delta));
                let rx = call!(delta, channel, mode, requests);
                (Sender::Delta(tx), Receiver::Delta(rx))
            }
        };
        Ok(Client { envoy, tx, rx })
    }

    /// Sends `req` (the stream's first request gets the client's node if it names none). A
    /// stream the server ended takes it silently: the status it ended with is what the client
    /// reads next.
    pub async fn send(&mut self, req: impl Into<Request>) {
        match (self.envoy.stamp(req), &self.tx) {
            (Request::Sotw(r), Sender::Sotw(tx)) => {
                let _ = tx.send(r).await;
            }
            (Request::Delta(r), Sender::Delta(tx)) => {
                let _ = tx.send(r).await;
            }
            (r, _) => panic!(
                "a {} request on a {} stream: {r:?}",
                r.protocol().name(),
                self.envoy.protocol().name()
            ),
        }
    }

    /// The next message as the wire brought it, waiting as long as it takes: `Ok(None)` when
    /// the stream ended without a status. (No timer: the fleet simulator reads thousands of
    /// streams with it.)
    pub async fn message(&mut self) -> Result<Option<Raw>, Status> {
        match &mut self.rx {
            Receiver::Sotw(rx) => Ok(rx.message().await?.map(Raw::Sotw)),
            Receiver::Delta(rx) => Ok(rx.message().await?.map(Raw::Delta)),
        }
    }

    /// The next message within `within` as the wire brought it: `None` if nothing came, `Err`
    /// with the status that ended the stream (a stream that ends without one is `UNKNOWN`).
    pub async fn next_raw(&mut self, within: Duration) -> Option<Result<Raw, Status>> {
        let got = tokio::time::timeout(within, self.message()).await.ok()?;
        Some(
            got.and_then(|r| r.ok_or_else(|| Status::unknown("the stream ended without a status"))),
        )
    }

    /// The next response within `within`: `None` if nothing came, `Err` with the status that
    /// ended the stream.
    pub async fn next(&mut self, within: Duration) -> Option<Result<Response, Status>> {
        Some(self.next_raw(within).await?.map(Response::from))
    }

    /// The next response; panics on anything else within 10 s.
    pub async fn recv(&mut self) -> Response {
        match self.next(ANSWER).await {
            Some(Ok(r)) => r,
            Some(Err(status)) => panic!("the stream ended: {status:?}"),
            None => panic!("no response within {ANSWER:?}"),
        }
    }

    /// The status that ends the stream; panics on a response or on silence for 10 s.
    pub async fn refusal(&mut self) -> Status {
        match self.next(ANSWER).await {
            Some(Err(status)) => status,
            Some(Ok(r)) => panic!("a response where the stream should end: {r:?}"),
            None => panic!("the stream did not end within {ANSWER:?}"),
        }
    }

    /// Panics (saying `why`) if anything comes within 300 ms.
    pub async fn expect_nothing(&mut self, why: &str) {
        if let Some(got) = self.next(NOTHING).await {
            panic!("{why}; got {got:?}");
        }
    }

    /// As Envoy starts a stream: asks for every cluster.
    pub async fn start(&mut self) {
        for req in self.envoy.start() {
            self.send(req).await;
        }
    }

    /// As Envoy starts a stream again after it lost one: every subscription, with what it holds.
    pub async fn resume(&mut self) {
        for req in self.envoy.reconnect() {
            self.send(req).await;
        }
    }

    /// Answers `r` as the fake Envoy does (see [`FakeEnvoy::receive`]).
    pub async fn answer(&mut self, r: &Response) {
        for req in self.envoy.receive(r) {
            self.send(req).await;
        }
    }

    /// Comes up as Envoy does ([`Client::start`]) and answers everything until it holds its
    /// routes; what came.
    pub async fn come_up(&mut self) -> Vec<Response> {
        self.start().await;
        self.settle_until("the routes", |e| e.held.contains_key(&RDS))
            .await
    }

    /// Answers every response as Envoy until nothing comes for `quiet`; what came.
    pub async fn settle(&mut self, quiet: Duration) -> Vec<Response> {
        let mut got = Vec::new();
        while let Some(r) = self.next(quiet).await {
            let r = r.unwrap_or_else(|status| panic!("the stream ended: {status:?}"));
            self.answer(&r).await;
            got.push(r);
        }
        got
    }

    /// Answers every response as Envoy until `done` holds of what it holds (at most 10 s for
    /// each response); what came.
    pub async fn settle_until(
        &mut self,
        what: &str,
        done: impl Fn(&FakeEnvoy) -> bool,
    ) -> Vec<Response> {
        let mut got = Vec::new();
        while !done(&self.envoy) {
            let r = match self.next(ANSWER).await {
                Some(Ok(r)) => r,
                Some(Err(status)) => panic!("the stream ended before {what}: {status:?}"),
                None => panic!("no response within {ANSWER:?} before {what}; came: {got:?}"),
            };
            self.answer(&r).await;
            got.push(r);
        }
        got
    }
}
