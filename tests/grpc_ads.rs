//! The xDS server over real gRPC in-process: an envoy-types ADS client against `app::start` on
//! port 0. Covers the wire side (framing, the pre-encoded codec, streams, status reporting)
//! without Envoy; the protocol rules themselves are unit-tested in `xds::sotw`.

use std::path::PathBuf;
use std::time::Duration;

use cutover::app::{self, ServeOptions};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
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
        self.send_req(DiscoveryRequest {
            type_url: type_url.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            node: Some(Node {
                id: "grpc-test".into(),
                cluster: "tests".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    }

    async fn send_req(&self, req: DiscoveryRequest) {
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

    async fn expect_nothing(&mut self) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }
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

/// Waits until the one connected node has ACKed everything.
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

async fn start(dir: &tempfile::TempDir) -> app::Server {
    start_with(dir, DEPLOY).await
}

async fn start_with(dir: &tempfile::TempDir, text: &str) -> app::Server {
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, text).unwrap();
    app::start(ServeOptions {
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
    .expect("server starts")
}

/// Connects, subscribes like Envoy does (listeners once its clusters have their endpoints: Envoy
/// starts LDS once its cluster manager is initialised) and ACKs everything; returns the last RDS
/// response.
async fn bring_up(client: &mut Client) -> DiscoveryResponse {
    let names = ["checkout/blue", "checkout/green"];
    client.send(CDS, "", "", &[]).await;
    let cds = client.recv().await;
    assert_eq!(cds.type_url, CDS, "clusters come first");
    let clusters: Vec<String> = cds
        .resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect();
    assert_eq!(clusters, names);
    client.send(EDS, "", "", &names).await;
    client.ack(&cds, &[]).await;
    let eds = client.recv().await;
    assert_eq!(eds.type_url, EDS);
    assert_eq!(eds.resources.len(), 2);
    client.ack(&eds, &names).await;
    client.send(LDS, "", "", &[]).await;
    let lds = client.recv().await;
    assert_eq!(lds.type_url, LDS);
    client.send(RDS, "", "", &["public"]).await;
    client.ack(&lds, &[]).await;
    let rds = client.recv().await;
    assert_eq!(rds.type_url, RDS);
    client.ack(&rds, &["public"]).await;
    rds
}

#[tokio::test]
async fn ads_stream_serves_updates_and_reports_acks_and_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut client = Client::connect(server.ads_addr).await;
    let rds = bring_up(&mut client).await;
    assert_eq!(route_cluster(&rds), "checkout/blue");

    // The ACKs reach /status.
    wait_in_sync(&server).await;
    let report = server.status.report();
    assert_eq!(report.nodes[0].id, "grpc-test");
    assert_eq!(
        report.nodes[0].types["rds"].acked.as_deref(),
        Some(rds.version_info.as_str())
    );

    // A save that switches versions pushes only the routes.
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY.replace("active: blue", "active: green")).unwrap();
    let update = client.recv().await;
    assert_eq!(update.type_url, RDS);
    assert_eq!(route_cluster(&update), "checkout/green");

    // Reject it: recorded with Envoy's text, and not sent again.
    client
        .send_req(DiscoveryRequest {
            type_url: RDS.into(),
            version_info: rds.version_info.clone(),
            response_nonce: update.nonce.clone(),
            resource_names: vec!["public".into()],
            error_detail: Some(Status {
                code: 3,
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
    assert_eq!(nack.version, update.version_info);
    assert_eq!(nack.error, "route: unknown cluster (test)");
    assert!(!report.nodes[0].in_sync);

    // An invalid save changes nothing and is reported.
    std::fs::write(&file, DEPLOY.replace("active: blue", "active: gren")).unwrap();
    client.expect_nothing().await;
    let report = server.status.report();
    let reload = report.last_reload.unwrap();
    assert!(!reload.ok);
    assert!(
        reload
            .error
            .as_deref()
            .unwrap()
            .contains("deploy.yaml:12:13: unknown version \"gren\""),
        "{reload:?}"
    );
}

#[tokio::test]
async fn a_reconnect_with_current_versions_gets_nothing_to_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut first = Client::connect(server.ads_addr).await;
    bring_up(&mut first).await;
    wait_in_sync(&server).await;
    let versions = server.status.report().nodes[0].types.clone();
    drop(first);

    let mut second = Client::connect(server.ads_addr).await;
    let v = |t: &str| versions[t].acked.clone().unwrap();
    second.send(CDS, &v("cds"), "", &[]).await;
    second.send(LDS, &v("lds"), "", &[]).await;
    second
        .send(EDS, &v("eds"), "", &["checkout/blue", "checkout/green"])
        .await;
    second.send(RDS, &v("rds"), "", &["public"]).await;
    // One message all the same (Envoy resets its reconnect backoff only on a message): the
    // routes it holds, as a response with no resource, which changes nothing.
    let greeting = second.recv().await;
    assert_eq!(greeting.type_url, RDS);
    assert!(greeting.resources.is_empty());
    assert_eq!(greeting.version_info, v("rds"));
    second.ack(&greeting, &["public"]).await;
    second.expect_nothing().await;
}

#[tokio::test]
async fn admin_api_reports_status_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let base = format!("http://{}", server.admin_addr);
    let get = |path: &str| reqwest::get(format!("{base}{path}"));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let status: serde_json::Value = get("/status").await.unwrap().json().await.unwrap();
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(
        status["config_version"].as_str(),
        Some(server.published.borrow().as_ref().unwrap().version.as_str())
    );
    let config: serde_json::Value = get("/config").await.unwrap().json().await.unwrap();
    assert_eq!(config["clusters"][0]["name"], "checkout/blue");
    assert_eq!(
        config["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
        "checkout/blue"
    );
}

#[tokio::test]
async fn not_ready_until_a_valid_file_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, "listeners: []\n").unwrap();
    let options = |wait_for_file| ServeOptions {
        file: file.clone(),
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
        allow_nodes: Vec::new(),
        tls: None,
        wait_for_file,
        clients: Default::default(),
    };
    // Without --wait-for-file, an invalid file is a failed start that says why and what to do.
    let err = app::start(options(false)).await.unwrap_err().to_string();
    assert!(
        err.contains("deploy.yaml:1:1") && err.contains("--wait-for-file"),
        "{err}"
    );
    let server = app::start(options(true)).await.unwrap();
    let readyz = format!("http://{}/readyz", server.admin_addr);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);
    std::fs::write(&file, DEPLOY).unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if reqwest::get(&readyz).await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready after a valid save");
}

/// The names of the resources in a response.
fn resource_names(r: &DiscoveryResponse) -> Vec<String> {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    r.resources
        .iter()
        .map(|a| {
            let bytes = a.value.as_slice();
            match r.type_url.as_str() {
                CDS => Cluster::decode(bytes).unwrap().name,
                EDS => ClusterLoadAssignment::decode(bytes).unwrap().cluster_name,
                LDS => Listener::decode(bytes).unwrap().name,
                _ => RouteConfiguration::decode(bytes).unwrap().name,
            }
        })
        .collect()
}

/// Answers every response the way Envoy does: subscribes to the endpoints of the clusters and
/// the routes of the listeners it receives, then ACKs.
async fn ack(client: &Client, r: &DiscoveryResponse) {
    let names = resource_names(r);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match r.type_url.as_str() {
        CDS => {
            client.send(EDS, "", "", &names).await;
            client.ack(r, &[]).await;
        }
        LDS => {
            client.send(RDS, "", "", &names).await;
            client.ack(r, &[]).await;
        }
        _ => client.ack(r, &names).await,
    }
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    assert_eq!(r.type_url, CDS);
    resource_names(r)
}

/// `DEPLOY` as a red-black service with versions red and black and a 300 ms grace.
fn red_black(active: &str) -> String {
    DEPLOY
        .replace("blue", "red")
        .replace("green", "black")
        .replace(
            "    active: red\n",
            &format!("    strategy:\n      red-black: {{ active: {active}, grace: 300ms }}\n"),
        )
}

/// Connects a client that subscribes like Envoy and ACKs its first four responses.
async fn connect_and_ack_all(server: &app::Server) -> Client {
    let mut client = Client::connect(server.ads_addr).await;
    client.send(CDS, "", "", &[]).await;
    client.send(LDS, "", "", &[]).await;
    for _ in 0..4 {
        let r = client.recv().await;
        ack(&client, &r).await;
    }
    client
}

#[tokio::test]
async fn red_black_retires_the_old_version_only_after_every_envoy_acked_and_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, red_black("red")).unwrap();
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
    .unwrap();
    let mut client = Client::connect(server.ads_addr).await;
    client.send(CDS, "", "", &[]).await;
    client.send(LDS, "", "", &[]).await;
    let cds = client.recv().await;
    assert_eq!(
        cluster_names(&cds),
        ["checkout/red"],
        "only the active version is deployed"
    );
    ack(&client, &cds).await;
    for _ in 0..3 {
        let r = client.recv().await;
        ack(&client, &r).await;
    }
    wait_in_sync(&server).await;

    // Switch: black is added, the routes move, red stays for rollback.
    std::fs::write(&file, red_black("black")).unwrap();
    let cds = client.recv().await;
    assert_eq!(cluster_names(&cds), ["checkout/black", "checkout/red"]);
    ack(&client, &cds).await;
    let eds = client.recv().await;
    assert_eq!(eds.type_url, EDS);
    ack(&client, &eds).await;
    let rds = client.recv().await;
    assert_eq!(rds.type_url, RDS);
    assert_eq!(route_cluster(&rds), "checkout/black");

    // The routes are not ACKed: red must stay however long we wait.
    client.expect_nothing().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.expect_nothing().await;
    let status = server.status.report();
    let retiring = &status.services["checkout"].retiring;
    assert_eq!(retiring[0].version, "red");
    assert!(retiring[0].awaiting_ack);

    // ACKed: red goes after the grace period, not before.
    let acked = std::time::Instant::now();
    ack(&client, &rds).await;
    let removal = client.recv().await;
    let waited = acked.elapsed();
    assert_eq!(cluster_names(&removal), ["checkout/black"]);
    assert!(
        waited >= Duration::from_millis(250),
        "retired after {waited:?}, before the 300ms grace"
    );
    ack(&client, &removal).await;
    wait_in_sync(&server).await;
    let status = server.status.report();
    assert_eq!(status.services["checkout"].deployed, ["black"]);
    assert!(status.services["checkout"].retiring.is_empty());
}

#[tokio::test]
async fn csds_metrics_and_reload() {
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut client = Client::connect(server.ads_addr).await;
    bring_up(&mut client).await;
    wait_in_sync(&server).await;

    // CSDS on the ADS port: every resource the node holds, ACKed.
    let mut csds =
        ClientStatusDiscoveryServiceClient::connect(format!("http://{}", server.ads_addr))
            .await
            .unwrap();
    let status = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.config.len(), 1);
    let node = &status.config[0];
    assert_eq!(node.node.as_ref().unwrap().id, "grpc-test");
    let mut held: Vec<(String, String, i32)> = node
        .generic_xds_configs
        .iter()
        .map(|c| {
            (
                c.type_url.rsplit('.').next().unwrap().to_owned(),
                c.name.clone(),
                c.client_status,
            )
        })
        .collect();
    held.sort();
    let acked = envoy_types::pb::envoy::admin::v3::ClientResourceStatus::Acked as i32;
    assert_eq!(
        held,
        [
            ("Cluster".to_owned(), "checkout/blue".to_owned(), acked),
            ("Cluster".to_owned(), "checkout/green".to_owned(), acked),
            (
                "ClusterLoadAssignment".to_owned(),
                "checkout/blue".to_owned(),
                acked
            ),
            (
                "ClusterLoadAssignment".to_owned(),
                "checkout/green".to_owned(),
                acked
            ),
            ("Listener".to_owned(), "public".to_owned(), acked),
            ("RouteConfiguration".to_owned(), "public".to_owned(), acked),
        ]
    );
    assert!(
        node.generic_xds_configs
            .iter()
            .all(|c| c.xds_config.is_some())
    );

    // Prometheus text: every sample line is `name{labels} value`, and the counters add up.
    let base = format!("http://{}", server.admin_addr);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        assert!(name.starts_with("cutover_"), "unprefixed metric {line}");
    }
    for expected in [
        "cutover_xds_pushes_total{type=\"cds\"} 1",
        "cutover_xds_pushes_total{type=\"rds\"} 1",
        "cutover_connected_envoys 1",
        "cutover_xds_streams 1",
        "cutover_reloads_total{result=\"ok\"} 1",
        "cutover_save_to_ack_seconds_count 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == expected),
            "no `{expected}` in:\n{metrics}"
        );
    }

    // A mutating call from loopback is allowed.
    let reply = reqwest::Client::new()
        .post(format!("{base}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
}

#[tokio::test]
async fn one_envoys_nack_does_not_affect_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut rejecting = Client::connect(server.ads_addr).await;
    bring_up(&mut rejecting).await;
    let mut accepting = Client::connect(server.ads_addr).await;
    bring_up(&mut accepting).await;

    std::fs::write(
        dir.path().join("deploy.yaml"),
        DEPLOY.replace("active: blue", "active: green"),
    )
    .unwrap();
    let update = rejecting.recv().await;
    rejecting
        .send_req(DiscoveryRequest {
            type_url: RDS.into(),
            response_nonce: update.nonce.clone(),
            resource_names: vec!["public".into()],
            error_detail: Some(Status {
                code: 3,
                message: "rejected by this Envoy only".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    let other = accepting.recv().await;
    assert_eq!(route_cluster(&other), "checkout/green");
    accepting.ack(&other, &["public"]).await;

    let mut changes = server.clients.changes();
    let report = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let report = server.status.report();
            if report.nodes.iter().any(|n| n.in_sync) {
                return report;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the accepting Envoy gets in sync");
    let synced: Vec<bool> = report.nodes.iter().map(|n| n.in_sync).collect();
    assert_eq!(synced.iter().filter(|s| **s).count(), 1, "{synced:?}");
    let nacked: Vec<&str> = report
        .nodes
        .iter()
        .filter_map(|n| n.types["rds"].last_nack.as_ref().map(|x| x.error.as_str()))
        .collect();
    assert_eq!(nacked, ["rejected by this Envoy only"]);
}

#[tokio::test]
async fn an_envoy_that_rejects_a_red_black_switch_does_not_hold_the_others_retirement() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(&dir, &red_black("red")).await;
    let mut accepting = connect_and_ack_all(&server).await;
    let mut rejecting = connect_and_ack_all(&server).await;

    std::fs::write(dir.path().join("deploy.yaml"), red_black("black")).unwrap();
    for client in [&mut accepting, &mut rejecting] {
        let cds = client.recv().await;
        assert_eq!(cluster_names(&cds), ["checkout/black", "checkout/red"]);
        ack(client, &cds).await;
        let eds = client.recv().await;
        ack(client, &eds).await;
    }
    let rds = accepting.recv().await;
    ack(&accepting, &rds).await;
    let rejected = rejecting.recv().await;
    assert_eq!(rejected.type_url, RDS);
    rejecting
        .send_req(DiscoveryRequest {
            type_url: RDS.into(),
            response_nonce: rejected.nonce.clone(),
            resource_names: vec!["public".into()],
            error_detail: Some(Status {
                code: 3,
                message: "rejected by this Envoy only".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;

    // The rejection answers the switch: red goes after the grace, for the Envoy that took it.
    let removal = accepting.recv().await;
    assert_eq!(cluster_names(&removal), ["checkout/black"]);
    ack(&accepting, &removal).await;
    // The rejecting Envoy still routes to red, so it keeps red: it is sent nothing.
    rejecting.expect_nothing().await;
    let status = server.status.report();
    assert_eq!(status.services["checkout"].deployed, ["black"]);
    assert!(status.services["checkout"].retiring.is_empty());
    let nacks: Vec<bool> = status
        .nodes
        .iter()
        .map(|n| n.types["rds"].last_nack.is_some())
        .collect();
    assert_eq!(nacks.iter().filter(|n| **n).count(), 1, "{nacks:?}");
}

/// A change that a stream's client does not hold anything of (only routes change, the stream
/// carries clusters) puts it in sync at once; that counts as a save-to-ACK sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_sync_at_once_is_a_save_to_ack_sample() {
    use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut cds = ClusterDiscoveryServiceClient::connect(format!("http://{}", server.ads_addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let request = |version: &str, nonce: &str| DiscoveryRequest {
        type_url: CDS.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        node: Some(Node {
            id: "cds-only".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(request("", "")).await.unwrap();
    let mut responses = cds
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = responses.message().await.unwrap().unwrap();
    tx.send(request(&r.version_info, &r.nonce)).await.unwrap();
    let samples = || {
        server
            .status
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("cutover_save_to_ack_seconds_count "))
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    let mut changes = server.clients.changes();
    let wait_samples = async |n: u64, changes: &mut tokio::sync::watch::Receiver<u64>| {
        tokio::time::timeout(Duration::from_secs(5), async {
            while samples() < n {
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} save-to-ACK samples, expected {n}", samples()));
    };
    wait_samples(1, &mut changes).await;

    std::fs::write(
        dir.path().join("deploy.yaml"),
        DEPLOY.replace("active: blue", "active: green"),
    )
    .unwrap();
    wait_samples(2, &mut changes).await;
    assert_eq!(server.clients.in_sync_count(), (1, 1));
}

async fn start_with_state(dir: &tempfile::TempDir, text: &str, state: PathBuf) -> app::Server {
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, text).unwrap();
    app::start(ServeOptions {
        file,
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: Some(state),
        allow_nodes: Vec::new(),
        tls: None,
        wait_for_file: false,
        clients: Default::default(),
    })
    .await
    .expect("server starts")
}

#[tokio::test]
async fn an_unusable_state_file_is_reported_and_every_listed_version_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{ this is not a state file").unwrap();
    let server = start_with_state(&dir, &red_black("black"), state.clone()).await;
    let report = server.status.report();
    let state_file = report.state_file.expect("state file in /status");
    assert!(!state_file.ok);
    let error = state_file.error.unwrap();
    assert!(
        error.contains(&state.display().to_string()) && error.contains("state.json.unusable"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state.json.unusable")).unwrap(),
        "{ this is not a state file",
        "kept for whoever wants to look"
    );
    // Nothing is known of what Envoys hold: red is kept, as after a switch, not retired.
    let mut client = Client::connect(server.ads_addr).await;
    client.send(CDS, "", "", &[]).await;
    let cds = client.recv().await;
    assert_eq!(cluster_names(&cds), ["checkout/black", "checkout/red"]);
    assert_eq!(report.services["checkout"].retiring[0].version, "red");
}

#[tokio::test]
async fn an_unwritable_state_file_is_reported_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // The state file is written to `<path>.tmp` first; a directory there stops it, even as
    // root. Reading finds no state file: a first start.
    std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
    let server = start_with_state(&dir, DEPLOY, dir.path().join("state.json")).await;
    assert!(server.status.report().state_file.unwrap().ok);
    let mut client = Client::connect(server.ads_addr).await;
    bring_up(&mut client).await;
    // Removing an endpoint starts a drain: the state changes and cannot be saved.
    let two = DEPLOY.replace("[127.0.0.1:8082]", "[127.0.0.1:8082, 127.0.0.1:8084]");
    std::fs::write(dir.path().join("deploy.yaml"), &two).unwrap();
    let eds = client.recv().await;
    client.ack(&eds, &["checkout/blue", "checkout/green"]).await;
    std::fs::write(dir.path().join("deploy.yaml"), DEPLOY).unwrap();
    let eds = client.recv().await;
    assert_eq!(eds.type_url, EDS, "the drain is served");
    let mut changes = server.clients.changes();
    let report = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let report = server.status.report();
            if report.state_file.as_ref().is_some_and(|s| !s.ok) {
                return report;
            }
            // The save follows the push, and the client may have reported its last change
            // before it: look again after a change or a short while, whichever comes first.
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
    })
    .await
    .expect("the failed save shows in /status");
    let error = report.state_file.unwrap().error.unwrap();
    assert!(
        error.contains("cannot write the runtime state file") && error.contains("--state"),
        "{error}"
    );
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_with_a_status_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut client = Client::connect(server.ads_addr).await;
    // 17 MiB of names: over the default limit of 16 MiB on one message.
    let names: Vec<String> = (0..17 * 16 * 1024).map(|i| format!("{i:062}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    client.send(EDS, "", "", &names).await;
    let status = tokio::time::timeout(Duration::from_secs(10), client.rx.message())
        .await
        .expect("an answer within 10 s")
        .expect_err("the stream ends with an error status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too large") && status.message().contains("bytes"),
        "{status:?}"
    );
}

#[tokio::test]
async fn only_allowed_node_ids_get_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY).unwrap();
    let server = app::start(ServeOptions {
        file,
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
        allow_nodes: vec!["edge-*".into(), "grpc-t?st".into()],
        tls: None,
        wait_for_file: false,
        clients: Default::default(),
    })
    .await
    .unwrap();
    // `grpc-test` (what Client::send names itself) matches `grpc-t?st`.
    let mut allowed = Client::connect(server.ads_addr).await;
    allowed.send(CDS, "", "", &[]).await;
    assert_eq!(allowed.recv().await.type_url, CDS);

    let mut refused = Client::connect(server.ads_addr).await;
    refused
        .send_req(DiscoveryRequest {
            type_url: CDS.into(),
            node: Some(Node {
                id: "intruder".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let status = tokio::time::timeout(Duration::from_secs(5), refused.rx.message())
        .await
        .unwrap()
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"intruder\""), "{status:?}");
    assert!(
        app::start(ServeOptions {
            file: dir.path().join("deploy.yaml"),
            ads: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            drain_period: Duration::from_secs(5),
            admin_token: None,
            state_file: None,
            allow_nodes: vec!["[".into()],
            tls: None,
            wait_for_file: false,
            clients: Default::default(),
        })
        .await
        .unwrap_err()
        .to_string()
        .contains("invalid --allow-node pattern \"[\"")
    );
}

/// Conformance (issue 11, item 2), as gRPC's proxyless clients ask: LDS → RDS → CDS → EDS, each
/// only after the answer to the one before. A client that routes nothing yet has nothing to
/// break, so every request is answered at once.
#[tokio::test]
async fn a_client_that_asks_for_listeners_first_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir).await;
    let mut client = Client::connect(server.ads_addr).await;
    client.send(LDS, "", "", &[]).await;
    let lds = client.recv().await;
    assert_eq!(resource_names(&lds), ["public"]);
    client.send(RDS, "", "", &["public"]).await;
    client.ack(&lds, &[]).await;
    let rds = client.recv().await;
    assert_eq!(route_cluster(&rds), "checkout/blue");
    client.send(CDS, "", "", &["checkout/blue"]).await;
    client.ack(&rds, &["public"]).await;
    let cds = client.recv().await;
    assert_eq!(cluster_names(&cds), ["checkout/blue"]);
    client.send(EDS, "", "", &["checkout/blue"]).await;
    client.ack(&cds, &["checkout/blue"]).await;
    let eds = client.recv().await;
    assert_eq!(resource_names(&eds), ["checkout/blue"]);
    client.ack(&eds, &["checkout/blue"]).await;
    client.expect_nothing().await;
    let report = server.status.report();
    assert_eq!(
        report.nodes[0].types["rds"].acked.as_deref(),
        Some(rds.version_info.as_str())
    );
}

/// A deployment of `n` services, each with two versions; `flipped` gets green.
fn many_services(n: usize, flipped: usize) -> String {
    let mut text =
        String::from("listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n");
    for s in 0..n {
        text.push_str(&format!(
            "      - match: {{ prefix: /s{s}/ }}\n        service: s{s}\n"
        ));
    }
    text.push_str("services:\n");
    for s in 0..n {
        let active = if s == flipped { "green" } else { "blue" };
        text.push_str(&format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:{}] }}\n      green: {{ endpoints: [127.0.0.1:{}] }}\n    active: {active}\n",
            20000 + 2 * s,
            20001 + 2 * s
        ));
    }
    text
}

/// A client that never reads what it is sent fills its HTTP/2 window and its stream's small
/// queue; it must not hold back anyone else, and its stream ends when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_delays_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(&dir, &many_services(400, 0)).await;
    let stalled = Client::connect(server.ads_addr).await;
    stalled.send(CDS, "", "", &[]).await;
    stalled.send(LDS, "", "", &[]).await;

    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect_and_ack_all(&server).await);
    }
    for flip in 1..=5 {
        let saved = std::time::Instant::now();
        std::fs::write(dir.path().join("deploy.yaml"), many_services(400, flip)).unwrap();
        for c in &mut clients {
            let rds = c.recv().await;
            assert_eq!(rds.type_url, RDS);
            ack(c, &rds).await;
        }
        let took = saved.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "change {flip} took {took:?} to reach every reading client"
        );
    }
    assert_eq!(server.clients.in_sync_count().1, 6);
    drop(stalled);
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.clients.in_sync_count().1 != 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled client's stream is gone once it disconnects");
}
