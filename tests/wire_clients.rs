//! Clients that misbehave or vanish, over real gRPC in-process (issue 14, "Clients"): the limits
//! on streams, message size and subscribed names, requests the spec says to ignore, NACK storms,
//! oversized node identities, and peers that disappear without closing their connection. Every
//! refusal is a gRPC status that says which limit and how to raise it; what a client can repeat
//! at will is logged once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover::testing::fixtures::DEPLOY;
use cutover::testing::xds::{
    CDS, Client, EDS, FakeEnvoy, channel, delta_request, node, sotw_request,
};
use cutover::testing::{Protocol, serve, serve_with};
use cutover::xds::Mode;
use cutover::xds::limits::ClientLimits;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc::Status;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// An ADS stream of `protocol` to `addr`; the status if it is refused at once. (Its requests
/// name their node themselves.)
async fn open(addr: std::net::SocketAddr, protocol: Protocol) -> Result<Client, tonic::Status> {
    let channel = channel(addr, None).await.expect("connect to cutover");
    Client::open(channel, Mode::Aggregated, FakeEnvoy::new(protocol)).await
}

/// A state-of-the-world ADS stream.
async fn open_sotw(addr: std::net::SocketAddr) -> Result<Client, tonic::Status> {
    open(addr, Protocol::Sotw).await
}

/// A delta ADS stream.
async fn open_delta(addr: std::net::SocketAddr) -> Client {
    open(addr, Protocol::Delta)
        .await
        .expect("open a delta stream")
}

fn node_named(id: &str) -> Option<Node> {
    Some(node(id))
}

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/{i:08}")).collect()
}

/// Log lines of this test's thread, as `cutover serve` writes them (the server's streams run
/// on the test's single-threaded runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `condition` for up to 10 s; how long it took to hold.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    cutover::testing::eventually(Duration::from_secs(10), what, async || condition()).await
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_with_the_limit_and_how_to_raise_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), DEPLOY, |o| {
        o.clients = ClientLimits {
            max_streams: 2,
            ..Default::default()
        }
    })
    .await;
    let streams = || server.status.report().streams.expect("streams in /status");
    // One xDS stream and one telemetry stream (Envoy's stats sink) fill the limit.
    let mut ads = open_sotw(server.ads_addr).await.unwrap();
    ads.send(sotw_request(CDS, "", "", &[])).await;
    assert_eq!(ads.recv().await.ty, CDS);
    let (stats_tx, stats_rx) = mpsc::channel(1);
    let mut sink = MetricsServiceClient::connect(format!("http://{}", server.ads_addr))
        .await
        .unwrap();
    let sink_stream =
        tokio::spawn(async move { sink.stream_metrics(ReceiverStream::new(stats_rx)).await });
    stats_tx
        .send(StreamMetricsMessage {
            identifier: Some(Identifier {
                node: node_named("edge-1"),
            }),
            envoy_metrics: Vec::new(),
        })
        .await
        .unwrap();
    eventually("two streams open", || streams().open == 2).await;
    assert_eq!(streams().limit, 2);

    let refused = match open_sotw(server.ads_addr).await {
        Err(status) => status,
        Ok(mut third) => third.refusal().await,
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("limit of 2 concurrent gRPC streams")
            && refused.message().contains("--max-streams")
            && refused.message().contains("CUTOVER_MAX_STREAMS"),
        "{refused:?}"
    );
    let metrics = server.status.metrics.encode();
    for line in [
        "cutover_grpc_streams 2",
        "cutover_grpc_streams_limit 2",
        "cutover_grpc_streams_refused_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // A stream that ends gives its slot back.
    drop(stats_tx);
    sink_stream
        .await
        .unwrap()
        .expect("the stats sink answers at its end");
    eventually("one stream open", || streams().open == 1).await;
    let mut again = open_sotw(server.ads_addr).await.unwrap();
    again
        .send(DiscoveryRequest {
            node: node_named("edge-2"),
            ..sotw_request(CDS, "", "", &[])
        })
        .await;
    assert_eq!(again.recv().await.ty, CDS);
}

#[tokio::test]
async fn a_message_over_the_configured_size_is_refused_with_how_to_raise_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), DEPLOY, |o| {
        o.clients = ClientLimits {
            max_message_bytes: 1024 * 1024,
            ..Default::default()
        }
    })
    .await;
    let mut client = open_sotw(server.ads_addr).await.unwrap();
    // 40,000 names of 60 bytes: 2.4 MB, over the 1 MiB limit.
    let big: Vec<String> = (0..40_000).map(|i| format!("{i:060}")).collect();
    client
        .send(DiscoveryRequest {
            resource_names: big,
            ..sotw_request(EDS, "", "", &[])
        })
        .await;
    let status = client.refusal().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too large")
            && status.message().contains("--max-message-mib")
            && status.message().contains("CUTOVER_MAX_MESSAGE_MIB"),
        "{status:?}"
    );
}

/// A 100,000-name subscription is what an Envoy with 100,000 clusters sends: it is served
/// (names that do not exist are not sent, per the spec); a stream over `--max-names` is
/// refused, in both protocols, and a name longer than any of cutover's is too.
#[tokio::test]
async fn subscriptions_are_served_up_to_the_name_limit_and_refused_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut sotw = open_sotw(server.ads_addr).await.unwrap();
    let mut wanted = names(99_999, "nowhere");
    wanted.push("checkout/blue".into());
    sotw.send(DiscoveryRequest {
        resource_names: wanted,
        ..sotw_request(EDS, "", "", &[])
    })
    .await;
    let eds = sotw.recv().await;
    assert_eq!(eds.ty, EDS);
    assert_eq!(eds.resources.len(), 1, "only the name that exists is sent");

    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), DEPLOY, |o| {
        o.clients = ClientLimits {
            max_names: 1_000,
            ..Default::default()
        }
    })
    .await;
    let mut sotw = open_sotw(server.ads_addr).await.unwrap();
    sotw.send(DiscoveryRequest {
        resource_names: names(1_001, "s"),
        ..sotw_request(EDS, "", "", &[])
    })
    .await;
    let status = sotw.refusal().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("1001 resource names")
            && status.message().contains("limit of 1000")
            && status.message().contains("--max-names"),
        "{status:?}"
    );

    // Delta subscriptions add up over requests: the second one goes over.
    let mut delta = open_delta(server.ads_addr).await;
    delta
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: names(600, "a"),
            node: node_named("edge-2"),
            ..delta_request(EDS, &[], &[])
        })
        .await;
    // Names that do not exist are named in removed_resources (the client need not wait).
    let told = delta.recv().await;
    assert_eq!(told.removed.len(), 600);
    delta
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: names(600, "b"),
            ..delta_request(EDS, &[], &[])
        })
        .await;
    let status = delta.refusal().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("1200 resource names"),
        "{status:?}"
    );

    let mut long = open_delta(server.ads_addr).await;
    long.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["x".repeat(300)],
        node: node_named("edge-3"),
        ..delta_request(EDS, &[], &[])
    })
    .await;
    let status = long.refusal().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("300 bytes") && status.message().contains("at most 256"),
        "{status:?}"
    );
    eventually("refused streams are gone", || {
        server.status.report().streams.unwrap().open == 0
    })
    .await;
}

/// The spec: a request for a type the server does not serve is ignored, as is one whose nonce
/// answers no response (stale or garbage), also when it carries an error. A client that repeats
/// them, reconnecting in a loop, is logged once.
#[tokio::test]
async fn unknown_types_and_garbage_nonces_change_nothing_and_are_logged_once() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    for _ in 0..20 {
        let mut sotw = open_sotw(server.ads_addr).await.unwrap();
        for i in 0..10 {
            sotw.send(DiscoveryRequest {
                type_url: format!("type.googleapis.com/not.a.Type{i}"),
                node: node_named("confused"),
                ..Default::default()
            })
            .await;
        }
        sotw.send(DiscoveryRequest {
            response_nonce: "not-a-nonce".into(),
            error_detail: Some(Status {
                code: 3,
                message: "a NACK of nothing".into(),
                details: Vec::new(),
            }),
            ..sotw_request(CDS, "", "", &[])
        })
        .await;
        // The stream still works, and the garbage changed nothing: CDS as if first asked.
        sotw.send(sotw_request(CDS, "", "", &[])).await;
        let cds = sotw.recv().await;
        assert_eq!(cds.ty, CDS);
        assert_eq!(cds.resources.len(), 2);
    }
    let mut delta = open_delta(server.ads_addr).await;
    for _ in 0..10 {
        delta
            .send(DeltaDiscoveryRequest {
                type_url: "type.googleapis.com/not.a.Type".into(),
                node: node_named("confused"),
                ..Default::default()
            })
            .await;
    }
    delta
        .send(DeltaDiscoveryRequest {
            response_nonce: "not-a-nonce".into(),
            error_detail: Some(Status {
                code: 3,
                message: "a NACK of nothing".into(),
                details: Vec::new(),
            }),
            ..delta_request(CDS, &[], &[])
        })
        .await;
    let cds = delta.recv().await;
    assert_eq!(cds.resources.len(), 2);
    let report = server.status.report();
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.types.values().all(|t| t.last_nack.is_none())),
        "a NACK answering no response is no NACK"
    );
    assert_eq!(
        logs.count("does not serve"),
        1,
        "210 ignored requests, one line"
    );
    assert_eq!(logs.count("rejected a config"), 0);
}

/// An Envoy that NACKs every push and reconnects in a loop: every NACK is counted (metrics,
/// status) and logged once, and Envoy's error text is kept short however long it is.
#[tokio::test]
async fn a_nack_storm_is_logged_once_and_long_errors_are_cut() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let error = Status {
        code: 3,
        message: "bad cluster ".repeat(100_000),
        details: Vec::new(),
    };
    let mut last_sotw = None;
    for _ in 0..25 {
        let mut sotw = open_sotw(server.ads_addr).await.unwrap();
        sotw.send(DiscoveryRequest {
            node: node_named("stormy"),
            ..sotw_request(CDS, "", "", &[])
        })
        .await;
        let cds = sotw.recv().await;
        sotw.send(DiscoveryRequest {
            response_nonce: cds.nonce.clone(),
            error_detail: Some(error.clone()),
            ..sotw_request(CDS, "", "", &[])
        })
        .await;
        last_sotw = Some(sotw);
    }
    let mut last_delta = None;
    for _ in 0..25 {
        let mut delta = open_delta(server.ads_addr).await;
        delta
            .send(DeltaDiscoveryRequest {
                node: node_named("stormy-delta"),
                ..delta_request(CDS, &[], &[])
            })
            .await;
        let cds = delta.recv().await;
        delta
            .send(DeltaDiscoveryRequest {
                response_nonce: cds.nonce.clone(),
                error_detail: Some(error.clone()),
                ..delta_request(CDS, &[], &[])
            })
            .await;
        last_delta = Some(delta);
    }
    eventually("every NACK counted", || {
        server
            .status
            .metrics
            .encode()
            .lines()
            .any(|l| l == "cutover_xds_nacks_total{type=\"cds\"} 50")
    })
    .await;
    let report = server.status.report();
    for id in ["stormy", "stormy-delta"] {
        let nack = report
            .nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.types["cds"].last_nack.as_ref())
            .unwrap_or_else(|| panic!("{id}'s NACK in /status: {:?}", report.nodes));
        assert!(
            nack.error.len() < 4200 && nack.error.ends_with("more bytes)"),
            "{} bytes: {}",
            nack.error.len(),
            &nack.error[nack.error.len() - 40..]
        );
    }
    assert_eq!(
        logs.count("rejected a config"),
        2,
        "one line per node for 25 NACKs each"
    );
    drop((last_sotw, last_delta));
}

/// Megabytes of node metadata are read (within the message limit) and not kept: only the id,
/// the cluster and at most 4 KiB of metadata (for node groups) are. A node id longer than any
/// Envoy's is refused.
#[tokio::test]
async fn node_metadata_is_not_kept_and_oversized_node_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut sotw = open_sotw(server.ads_addr).await.unwrap();
    let metadata = Struct {
        fields: [(
            "blob".to_owned(),
            Value {
                kind: Some(value::Kind::StringValue("m".repeat(3 * 1024 * 1024))),
            },
        )]
        .into(),
    };
    sotw.send(DiscoveryRequest {
        node: Some(Node {
            id: "heavy".into(),
            cluster: "tests".into(),
            metadata: Some(metadata),
            ..Default::default()
        }),
        ..sotw_request(CDS, "", "", &[])
    })
    .await;
    assert_eq!(sotw.recv().await.resources.len(), 2);
    let json = serde_json::to_string(&server.status.report()).unwrap();
    assert!(json.contains("\"heavy\""));
    assert!(json.len() < 16 * 1024, "/status is {} bytes", json.len());

    for (id, cluster, field) in [
        (
            "i".repeat(2048),
            "tests".to_owned(),
            "node id of 2048 bytes",
        ),
        (
            "ok".to_owned(),
            "c".repeat(4096),
            "node cluster of 4096 bytes",
        ),
    ] {
        let mut refused = open_sotw(server.ads_addr).await.unwrap();
        refused
            .send(DiscoveryRequest {
                node: Some(Node {
                    id,
                    cluster,
                    ..Default::default()
                }),
                ..sotw_request(CDS, "", "", &[])
            })
            .await;
        let status = refused.refusal().await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
}

/// A TCP proxy between a client and cutover that can go silent: it stops forwarding in both
/// directions and keeps both connections open, as a peer that lost power or a NAT that forgot
/// the connection does (no FIN, no RST).
async fn silent_proxy(to: std::net::SocketAddr) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (silence, silent) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(to).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, silent.clone()));
            tokio::spawn(pump(sr, cw, silent.clone()));
        }
    });
    (addr, silence)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut silent: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n,
            _ = silent.wait_for(|s| *s) => break,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) if to.write_all(&buf[..n]).await.is_err() => return,
            Ok(_) => {}
        }
    }
    // Silent: hold both halves open and forward nothing, until the test ends.
    std::future::pending::<()>().await;
    drop((from, to));
}

#[tokio::test]
async fn a_peer_that_vanishes_without_closing_leaves_status_within_the_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ClientLimits {
        keepalive_interval: Duration::from_millis(500),
        keepalive_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let server = serve_with(dir.path(), DEPLOY, |o| o.clients = limits).await;
    let (proxy, silence) = silent_proxy(server.ads_addr).await;
    let mut sotw = open_sotw(proxy).await.unwrap();
    sotw.send(DiscoveryRequest {
        node: node_named("vanishing"),
        ..sotw_request(CDS, "", "", &[])
    })
    .await;
    sotw.recv().await;
    let mut delta_client = open_delta(proxy).await;
    delta_client
        .send(DeltaDiscoveryRequest {
            node: node_named("vanishing-delta"),
            ..delta_request(CDS, &[], &[])
        })
        .await;
    delta_client.recv().await;
    assert_eq!(server.status.report().nodes.len(), 2);
    // Quiet for longer than the keepalive: PINGs are answered, nobody is dropped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.status.report().nodes.len(), 2, "live peers stay");

    silence.send_replace(true);
    let gone = eventually("the vanished peers leave /status", || {
        let report = server.status.report();
        report.nodes.is_empty() && report.streams.unwrap().open == 0
    })
    .await;
    // A PING after at most one interval of silence, the connection closed when its answer is
    // overdue; some slack for timers on a busy machine.
    let bound = limits.dead_peer_after() + Duration::from_millis(1500);
    assert!(
        gone <= bound,
        "gone after {gone:?}, expected within {bound:?}"
    );
    drop((sotw, delta_client));
}
