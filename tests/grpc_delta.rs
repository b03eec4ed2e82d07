//! Delta xDS over real gRPC in-process: an envoy-types client on `DeltaAggregatedResources` (and
//! a per-type `DeltaClusters` stream) against `app::start` on port 0. Covers the wire side (the
//! pre-encoded delta codec, stream registration, status, node refusal, shutdown); the protocol
//! rules are unit-tested in `xds::delta`.

use std::time::Duration;

use cutover::app::{self, ServeOptions};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

const DEPLOY: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue:  { endpoints: [127.0.0.1:8081] }
      green: { endpoints: [127.0.0.1:8082] }
    active: blue
";

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
    node: String,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        Client::connect_as(addr, "delta-test").await
    }

    async fn connect_as(addr: std::net::SocketAddr, node: &str) -> Client {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to cutover");
        let (tx, rx) = mpsc::channel(16);
        let response = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open a delta ADS stream");
        Client {
            tx,
            rx: response.into_inner(),
            node: node.to_owned(),
        }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: Some(Node {
                    id: self.node.clone(),
                    cluster: "tests".into(),
                    ..Default::default()
                }),
                ..req
            })
            .await
            .expect("stream open");
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .expect("no stream error")
            .expect("stream not closed")
    }

    async fn expect_nothing(&mut self) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

fn route_cluster(r: &DeltaDiscoveryResponse) -> String {
    let any = r.resources[0].resource.as_ref().expect("a resource");
    let rc = RouteConfiguration::decode(any.value.as_slice()).unwrap();
    match &rc.virtual_hosts[0].routes[0].action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
            other => panic!("unexpected cluster specifier {other:?}"),
        },
        other => panic!("unexpected action {other:?}"),
    }
}

async fn start(dir: &tempfile::TempDir, allow_nodes: Vec<String>) -> app::Server {
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY).unwrap();
    app::start(ServeOptions {
        file,
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
        allow_nodes,
        tls: None,
        wait_for_file: false,
        clients: Default::default(),
    })
    .await
    .expect("server starts")
}

async fn wait_in_sync(server: &app::Server) {
    let mut changes = server.clients.changes();
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.clients.in_sync_count() != (1, 1) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("node in sync within 5 s");
}

/// Subscribes as Envoy does (clusters, their endpoints, then listeners and their routes) and
/// ACKs everything; returns the responses in order.
async fn bring_up(client: &mut Client) -> Vec<DeltaDiscoveryResponse> {
    let names = ["checkout/blue", "checkout/green"];
    client.subscribe(CDS, &[]).await;
    let cds = client.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), self::names(&cds)),
        (CDS, names.to_vec())
    );
    for r in &cds.resources {
        assert!(!r.version.is_empty(), "each resource carries its version");
    }
    client.subscribe(EDS, &names).await;
    client.ack(&cds).await;
    let eds = client.recv().await;
    assert_eq!(
        (eds.type_url.as_str(), self::names(&eds)),
        (EDS, names.to_vec())
    );
    client.ack(&eds).await;
    client.subscribe(LDS, &[]).await;
    let lds = client.recv().await;
    assert_eq!(
        (lds.type_url.as_str(), self::names(&lds)),
        (LDS, vec!["public"])
    );
    client.subscribe(RDS, &["public"]).await;
    client.ack(&lds).await;
    let rds = client.recv().await;
    assert_eq!(route_cluster(&rds), "checkout/blue");
    client.ack(&rds).await;
    vec![cds, eds, lds, rds]
}

#[tokio::test]
async fn a_delta_ads_stream_sends_changes_only_and_reports_acks_and_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Vec::new()).await;
    let mut client = Client::connect(server.ads_addr).await;
    let first = bring_up(&mut client).await;
    wait_in_sync(&server).await;
    let report = server.status.report();
    assert_eq!(report.nodes[0].id, "delta-test");
    assert_eq!(
        report.nodes[0].types["rds"].acked.as_deref(),
        Some(first[3].system_version_info.as_str())
    );

    // A switch: only the route configuration, nothing removed.
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY.replace("active: blue", "active: green")).unwrap();
    let update = client.recv().await;
    assert_eq!(
        (update.type_url.as_str(), names(&update)),
        (RDS, vec!["public"])
    );
    assert!(update.removed_resources.is_empty());
    assert_eq!(route_cluster(&update), "checkout/green");

    // Rejected: recorded with Envoy's text, and not sent again.
    client
        .send(DeltaDiscoveryRequest {
            type_url: RDS.into(),
            response_nonce: update.nonce.clone(),
            error_detail: Some(Status {
                code: 13,
                message: "route: unknown cluster (test)".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    client.expect_nothing().await;
    let report = server.status.report();
    let nack = report.nodes[0].types["rds"]
        .last_nack
        .clone()
        .expect("NACK in status");
    assert_eq!(nack.error, "route: unknown cluster (test)");
    assert!(!report.nodes[0].in_sync);

    // Blue goes, with a new path: new routes (to green), and once they are ACKed blue's removal,
    // a name in removed_resources.
    std::fs::write(
        &file,
        DEPLOY
            .replace("active: blue", "active: green")
            .replace("prefix: /", "prefix: /app")
            .replace("      blue:  { endpoints: [127.0.0.1:8081] }\n", ""),
    )
    .unwrap();
    let update = client.recv().await;
    assert_eq!(update.type_url, RDS, "a new route configuration");
    client.ack(&update).await;
    let cds = client.recv().await;
    assert_eq!(
        (
            cds.type_url.as_str(),
            cds.resources.len(),
            cds.removed_resources.clone()
        ),
        (CDS, 0, vec!["checkout/blue".to_owned()])
    );
}

#[tokio::test]
async fn a_delta_reconnect_holding_the_current_versions_gets_nothing_to_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Vec::new()).await;
    let mut first = Client::connect(server.ads_addr).await;
    let responses = bring_up(&mut first).await;
    wait_in_sync(&server).await;
    drop(first);

    let mut second = Client::connect(server.ads_addr).await;
    for r in &responses {
        let held = r
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let subscribe: Vec<String> = match r.type_url.as_str() {
            CDS | LDS => Vec::new(),
            _ => r.resources.iter().map(|r| r.name.clone()).collect(),
        };
        second
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                resource_names_subscribe: subscribe,
                initial_resource_versions: held,
                ..Default::default()
            })
            .await;
    }
    // One message all the same, which changes nothing (Envoy resets its reconnect backoff only
    // when a message arrives).
    let greeting = second.recv().await;
    assert!(greeting.resources.is_empty() && greeting.removed_resources.is_empty());
    second.ack(&greeting).await;
    second.expect_nothing().await;
    wait_in_sync(&server).await;
}

#[tokio::test]
async fn a_per_type_delta_stream_serves_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Vec::new()).await;
    let mut client = ClusterDiscoveryServiceClient::connect(format!("http://{}", server.ads_addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    // The type URL may be left out: the service implies it.
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "cds-only".into(),
            ..Default::default()
        }),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .delta_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.type_url.as_str(), names(&r)),
        (CDS, vec!["checkout/blue", "checkout/green"])
    );
}

#[tokio::test]
async fn a_delta_stream_of_a_node_not_allowed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, vec!["edge-*".into()]).await;
    let mut refused = Client::connect_as(server.ads_addr, "intruder").await;
    refused.subscribe(CDS, &[]).await;
    let status = tokio::time::timeout(Duration::from_secs(5), refused.rx.message())
        .await
        .unwrap()
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let mut allowed = Client::connect_as(server.ads_addr, "edge-7").await;
    allowed.subscribe(CDS, &[]).await;
    assert_eq!(allowed.recv().await.type_url, CDS);
}

/// Conformance (issue 11, item 2) on a delta stream: listeners and routes first, as gRPC's
/// proxyless clients ask, each answered at once.
#[tokio::test]
async fn a_delta_client_that_asks_for_listeners_first_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, Vec::new()).await;
    let mut client = Client::connect(server.ads_addr).await;
    client.subscribe(LDS, &[]).await;
    let lds = client.recv().await;
    assert_eq!(names(&lds), ["public"]);
    client.subscribe(RDS, &["public"]).await;
    client.ack(&lds).await;
    let rds = client.recv().await;
    assert_eq!(route_cluster(&rds), "checkout/blue");
    client.ack(&rds).await;
    client.subscribe(CDS, &["checkout/blue"]).await;
    let cds = client.recv().await;
    assert_eq!(names(&cds), ["checkout/blue"]);
}
