//! A version reached by name is a DNS cluster with its endpoints inline, and has no EDS
//! resource: the make-before-break gate (`xds::order::clusters_ready`) must send the routes to it
//! once its cluster is ACKed, without waiting for endpoints that will never come. Over real gRPC
//! in-process, with an envoy-types ADS client that subscribes as Envoy does (EDS only for EDS
//! clusters).
//!
//! With ADS, Envoy withholds its CDS ACK until every new cluster has warmed (for a DNS cluster:
//! the names resolved, the first health checks done), so the ACK alone is the signal that routes
//! may use it; the real-Envoy side of this is in `tests/e2e_dns.rs`.

use std::time::Duration;

use cutover::app::{self, ServeOptions};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// blue by IP address (EDS); the edit adds green by name (DNS) and switches to it at once.
const BLUE_ONLY: &str = "\
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
    active: blue
";

struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to cutover");
        let (tx, rx) = mpsc::channel(16);
        let response = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open ADS stream");
        Client {
            tx,
            rx: response.into_inner(),
        }
    }

    async fn send(&self, type_url: &str, version: &str, nonce: &str, names: &[&str]) {
        let req = DiscoveryRequest {
            type_url: type_url.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            node: Some(Node {
                id: "dns-test".into(),
                cluster: "tests".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tx.send(req).await.expect("stream open");
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .expect("no stream error")
            .expect("stream not closed")
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.send(&r.type_url, &r.version_info, &r.nonce, names)
            .await;
    }

    async fn expect_nothing(&mut self, why: &str) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("{why}; got {r:?}");
        }
    }
}

fn clusters(r: &DiscoveryResponse) -> Vec<Cluster> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap())
        .collect()
}

fn route_cluster(r: &DiscoveryResponse) -> String {
    let rc = RouteConfiguration::decode(r.resources[0].value.as_slice()).unwrap();
    match &rc.virtual_hosts[0].routes[0].action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
            other => panic!("unexpected cluster specifier {other:?}"),
        },
        other => panic!("unexpected action {other:?}"),
    }
}

#[tokio::test]
async fn routes_to_a_new_dns_cluster_follow_its_cds_ack_without_eds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, BLUE_ONLY).unwrap();
    let server = app::start(ServeOptions {
        file: file.clone(),
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
        allow_nodes: Vec::new(),
        tls: None,
        wait_for_file: false,
        clients: Default::default(),
    })
    .await
    .expect("server starts");

    // Up on blue, as Envoy comes up.
    let mut client = Client::connect(server.ads_addr).await;
    client.send(CDS, "", "", &[]).await;
    let cds = client.recv().await;
    assert_eq!(cds.type_url, CDS);
    client.send(EDS, "", "", &["checkout/blue"]).await;
    client.ack(&cds, &[]).await;
    let eds = client.recv().await;
    assert_eq!(eds.type_url, EDS);
    client.ack(&eds, &["checkout/blue"]).await;
    // Envoy asks for listeners once its clusters are initialized.
    client.send(LDS, "", "", &[]).await;
    let lds = client.recv().await;
    assert_eq!(lds.type_url, LDS);
    client.send(RDS, "", "", &["public"]).await;
    client.ack(&lds, &[]).await;
    let rds = client.recv().await;
    assert_eq!(route_cluster(&rds), "checkout/blue");
    client.ack(&rds, &["public"]).await;

    // One edit adds green, reached by name, and sends the traffic to it.
    let edit = BLUE_ONLY.replace(
        "      blue:  { endpoints: [127.0.0.1:8081] }\n    active: blue",
        "      blue:  { endpoints: [127.0.0.1:8081] }\n      green: { endpoints: [green.internal:8080] }\n    active: green",
    );
    assert_ne!(edit, BLUE_ONLY);
    std::fs::write(&file, edit).unwrap();

    // Clusters first: green is STRICT_DNS with its endpoint inline.
    let cds = client.recv().await;
    assert_eq!(cds.type_url, CDS, "the new cluster comes before the routes");
    let green = clusters(&cds)
        .into_iter()
        .find(|c| c.name == "checkout/green")
        .expect("checkout/green in CDS");
    assert_eq!(
        green.cluster_discovery_type,
        Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::StrictDns
                    as i32
            )
        )
    );
    assert!(green.eds_cluster_config.is_none());
    let inline = green.load_assignment.expect("endpoints inline");
    assert_eq!(inline.endpoints[0].lb_endpoints.len(), 1);

    // Not ACKed yet: the routes to green wait.
    client
        .expect_nothing("routes were sent before the DNS cluster they use was ACKed")
        .await;

    // Envoy asks no endpoints for a DNS cluster; its CDS ACK is enough.
    client.ack(&cds, &[]).await;
    let rds = client.recv().await;
    assert_eq!(
        rds.type_url, RDS,
        "the routes follow the CDS ACK (no EDS resource to wait for)"
    );
    assert_eq!(route_cluster(&rds), "checkout/green");
    client.ack(&rds, &["public"]).await;

    // And the node is in sync, with nothing pending for EDS.
    let mut changes = server.clients.changes();
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.clients.in_sync_count() != (1, 1) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("node in sync within 5 s");
}

/// When every cluster is a DNS cluster, Envoy never subscribes to endpoints at all: the
/// listeners and routes follow the CDS ACK alone (the compose demo's case).
#[tokio::test]
async fn a_client_with_only_dns_clusters_gets_its_routes_without_ever_asking_for_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(
        &file,
        BLUE_ONLY.replace("127.0.0.1:8081", "blue.internal:8080"),
    )
    .unwrap();
    let server = app::start(ServeOptions {
        file,
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
        allow_nodes: Vec::new(),
        tls: None,
        wait_for_file: false,
        clients: Default::default(),
    })
    .await
    .expect("server starts");

    let mut client = Client::connect(server.ads_addr).await;
    client.send(CDS, "", "", &[]).await;
    let cds = client.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert!(clusters(&cds)[0].load_assignment.is_some());
    client.ack(&cds, &[]).await;
    // Envoy asks for listeners once its clusters are initialized: a DNS cluster needs no EDS.
    client.send(LDS, "", "", &[]).await;
    let lds = client.recv().await;
    assert_eq!(
        lds.type_url, LDS,
        "the listeners follow the CDS ACK with no EDS subscription"
    );
    client.send(RDS, "", "", &["public"]).await;
    client.ack(&lds, &[]).await;
    let rds = client.recv().await;
    assert_eq!(route_cluster(&rds), "checkout/blue");
    client.ack(&rds, &["public"]).await;

    let mut changes = server.clients.changes();
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.clients.in_sync_count() != (1, 1) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("node in sync within 5 s (nothing expected for EDS)");
}
