//! The telemetry services over real gRPC in-process: envoy-types clients play Envoy's stats sink
//! and load reporter against `app::start` on port 0. Covers the wire side (node from the first
//! message, the one LRS answer, forgetting a stream when it ends); the figures themselves are
//! unit-tested in `telemetry::aggregate`.

use std::time::{Duration, Instant};

use cutover::app;
use cutover::telemetry::TelemetryReport;
use cutover::testing::fixtures::DEPLOY;
use cutover::testing::serve;
use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress, address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterStats, UpstreamEndpointStats, UpstreamLocalityStats,
};
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{
    StreamMetricsMessage, stream_metrics_message::Identifier,
};
use envoy_types::pb::io::prometheus::client::{Counter, Metric, MetricFamily, MetricType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn node() -> Node {
    Node {
        id: "grpc-test".into(),
        cluster: "tests".into(),
        ..Default::default()
    }
}

/// Polls the server's telemetry until `check` returns `Some` (at most 10 s).
async fn wait_for<T>(
    server: &app::Server,
    what: &str,
    check: impl Fn(&TelemetryReport) -> Option<T>,
) -> T {
    cutover::testing::wait_for(Duration::from_secs(10), what, async || {
        let report = server.telemetry.report(Instant::now());
        check(&report).ok_or_else(|| format!("{report:?}"))
    })
    .await
}

/// One flush of the sink: `ok` 2xx answers of `checkout/blue`, taken at `snapshot_ms`.
fn flush(identifier: bool, snapshot_ms: i64, ok: f64) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: identifier.then(|| Identifier { node: Some(node()) }),
        envoy_metrics: vec![MetricFamily {
            name: Some("cluster.checkout/blue.upstream_rq_2xx".into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(ok),
                    ..Default::default()
                }),
                timestamp_ms: Some(snapshot_ms),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn a_stats_sink_stream_counts_from_its_second_flush_and_is_forgotten_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = MetricsServiceClient::connect(format!("http://{}", server.ads_addr))
        .await
        .expect("connect to cutover");
    let (tx, rx) = mpsc::channel(4);
    let call = tokio::spawn(async move { client.stream_metrics(ReceiverStream::new(rx)).await });
    // Only the first message names the node, as Envoy does.
    tx.send(flush(true, 1_000_000, 500.0)).await.unwrap();
    tx.send(flush(false, 1_001_000, 7.0)).await.unwrap();
    let requests = wait_for(&server, "the second flush", |r| {
        let v = r.version("checkout", "blue")?;
        (v.last_10s.requests > 0).then_some(v.last_10s.requests)
    })
    .await;
    assert_eq!(requests, 7, "the first flush covers an unknown time");
    let nodes = server.telemetry.report(Instant::now()).nodes;
    assert_eq!(nodes[0].id, "grpc-test");
    assert!(nodes[0].stats_sink.is_some() && nodes[0].load_reporting.is_none());

    drop(tx);
    call.await.unwrap().expect("the stream ends cleanly");
    wait_for(&server, "the node to be forgotten", |r| {
        (r.nodes.is_empty() && r.services.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stats_sink_stream_that_names_no_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = MetricsServiceClient::connect(format!("http://{}", server.ads_addr))
        .await
        .expect("connect to cutover");
    let (tx, rx) = mpsc::channel(4);
    tx.send(flush(false, 1_000_000, 5.0)).await.unwrap();
    let status = client
        .stream_metrics(ReceiverStream::new(rx))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status:?}");
    assert!(server.telemetry.report(Instant::now()).nodes.is_empty());
}

fn report(in_progress: u64) -> LoadStatsRequest {
    LoadStatsRequest {
        node: Some(node()),
        cluster_stats: vec![ClusterStats {
            cluster_name: "checkout/blue".into(),
            load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                upstream_endpoint_stats: vec![UpstreamEndpointStats {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(
                                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(8081),
                            ),
                            ..Default::default()
                        })),
                    }),
                    total_successful_requests: 10,
                    total_issued_requests: 10 + in_progress,
                    total_requests_in_progress: in_progress,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn load_reporting_asks_for_every_endpoint_every_second_and_forgets_the_node_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = LoadReportingServiceClient::connect(format!("http://{}", server.ads_addr))
        .await
        .expect("connect to cutover");
    let (tx, rx) = mpsc::channel(4);
    // Envoy's first report on a new stream, before any answer: nothing tracked yet.
    tx.send(LoadStatsRequest {
        node: Some(node()),
        cluster_stats: Vec::new(),
    })
    .await
    .unwrap();
    let mut answers = client
        .stream_load_stats(ReceiverStream::new(rx))
        .await
        .expect("open the LRS stream")
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("an answer in time")
        .expect("a well-formed answer")
        .expect("one answer");
    assert!(answer.send_all_clusters && answer.report_endpoint_granularity);
    assert!(answer.clusters.is_empty());
    let interval = answer.load_reporting_interval.unwrap();
    assert_eq!((interval.seconds, interval.nanos), (1, 0));

    tx.send(report(3)).await.unwrap();
    let in_flight = wait_for(&server, "the requests in flight", |_| {
        let by_node = server.telemetry.in_flight(Instant::now()).to(
            "checkout",
            Some("blue"),
            Some("127.0.0.1:8081"),
        );
        by_node.get("grpc-test").copied().filter(|n| *n > 0)
    })
    .await;
    assert_eq!(in_flight, 3);

    drop(tx);
    wait_for(&server, "the node to be forgotten", |r| {
        r.nodes.is_empty().then_some(())
    })
    .await;
    assert!(server.telemetry.in_flight(Instant::now()).nodes.is_empty());
}
