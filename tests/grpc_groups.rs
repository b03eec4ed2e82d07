//! Node groups over real gRPC in-process, in both protocols: each Envoy gets its group's
//! listeners and services, an edit to one group pushes nothing to another group's Envoys, an
//! Envoy no group matches gets an empty but valid config, and a red-black retirement waits only
//! for the Envoys that hold the service.

use std::time::Duration;

use cutover::app::{self, ServeOptions};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// An edge proxy (node ids `edge-*`) with the public listener, and sidecars (node cluster
/// `sidecars`, metadata `role: sidecar`) with the outbound one.
const DEPLOY: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
  - name: outbound
    address: 127.0.0.1:15001
    routes:
      - match: { prefix: / }
        service: payments
services:
  checkout:
    versions:
      blue:  { endpoints: [127.0.0.1:8081] }
      green: { endpoints: [127.0.0.1:8082] }
    active: blue
  payments:
    versions:
      v1: { endpoints: [127.0.0.1:8083] }
      v2: { endpoints: [127.0.0.1:8084] }
    active: v1
groups:
  - name: edge
    match: { id: \"edge-*\" }
    listeners: [public]
  - name: sidecars
    match: { cluster: sidecars, metadata: { role: sidecar } }
    listeners: [outbound]
";

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Sotw,
    Delta,
}

enum Stream {
    Sotw {
        tx: mpsc::Sender<DiscoveryRequest>,
        rx: tonic::Streaming<DiscoveryResponse>,
    },
    Delta {
        tx: mpsc::Sender<DeltaDiscoveryRequest>,
        rx: tonic::Streaming<DeltaDiscoveryResponse>,
    },
}

/// What one response brought: its type and the names of the resources in it (and, in delta,
/// the names it removed, prefixed with `-`).
type Push = (&'static str, Vec<String>);

/// A client that behaves like Envoy: subscribes to every cluster and listener, then to the
/// endpoints and routes they name, and ACKs everything.
struct Envoy {
    node: Node,
    stream: Stream,
}

impl Envoy {
    async fn connect(
        addr: std::net::SocketAddr,
        protocol: Protocol,
        id: &str,
        cluster: &str,
        metadata: &[(&str, &str)],
    ) -> Envoy {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to cutover");
        let fields = metadata
            .iter()
            .map(|(k, v)| {
                let v = Value {
                    kind: Some(value::Kind::StringValue((*v).to_owned())),
                };
                ((*k).to_owned(), v)
            })
            .collect();
        let node = Node {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        };
        let stream = match protocol {
            Protocol::Sotw => {
                let (tx, rx) = mpsc::channel(16);
                let rx = client
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .expect("open an ADS stream")
                    .into_inner();
                Stream::Sotw { tx, rx }
            }
            Protocol::Delta => {
                let (tx, rx) = mpsc::channel(16);
                let rx = client
                    .delta_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .expect("open a delta ADS stream")
                    .into_inner();
                Stream::Delta { tx, rx }
            }
        };
        let envoy = Envoy { node, stream };
        envoy.subscribe(CDS, &[], None).await;
        envoy.subscribe(LDS, &[], None).await;
        envoy
    }

    /// Subscribes to `names` of `type_url` (wildcard when empty), ACKing `answering` if given.
    async fn subscribe(&self, type_url: &str, names: &[String], answering: Option<&Answered>) {
        match &self.stream {
            Stream::Sotw { tx, .. } => {
                let (version, nonce) = answering
                    .map(|a| (a.version.clone(), a.nonce.clone()))
                    .unwrap_or_default();
                let req = DiscoveryRequest {
                    type_url: type_url.to_owned(),
                    version_info: version,
                    response_nonce: nonce,
                    resource_names: names.to_vec(),
                    node: Some(self.node.clone()),
                    ..Default::default()
                };
                tx.send(req).await.expect("stream open");
            }
            Stream::Delta { tx, .. } => {
                let req = DeltaDiscoveryRequest {
                    type_url: type_url.to_owned(),
                    response_nonce: answering.map(|a| a.nonce.clone()).unwrap_or_default(),
                    resource_names_subscribe: names.to_vec(),
                    node: Some(self.node.clone()),
                    ..Default::default()
                };
                tx.send(req).await.expect("stream open");
            }
        }
    }

    /// The next response within `wait`, if any.
    async fn next(&mut self, wait: Duration) -> Option<(Answered, Push)> {
        match &mut self.stream {
            Stream::Sotw { rx, .. } => {
                let r = tokio::time::timeout(wait, rx.message()).await.ok()?;
                let r = r.expect("no stream error").expect("stream open");
                let ty = type_of(&r.type_url);
                let names = r.resources.iter().map(|a| name_of(ty, a)).collect();
                let answered = Answered {
                    ty,
                    version: r.version_info,
                    nonce: r.nonce,
                };
                Some((answered, (ty, names)))
            }
            Stream::Delta { rx, .. } => {
                let r = tokio::time::timeout(wait, rx.message()).await.ok()?;
                let r = r.expect("no stream error").expect("stream open");
                let ty = type_of(&r.type_url);
                let mut names: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
                names.extend(r.removed_resources.iter().map(|n| format!("-{n}")));
                let answered = Answered {
                    ty,
                    version: r.system_version_info,
                    nonce: r.nonce,
                };
                Some((answered, (ty, names)))
            }
        }
    }

    /// Answers every response like Envoy until nothing comes for `quiet`; returns what came.
    async fn settle(&mut self, quiet: Duration) -> Vec<Push> {
        let mut pushes = Vec::new();
        while let Some((answered, push)) = self.next(quiet).await {
            self.answer(&answered, &push.1).await;
            pushes.push(push);
        }
        pushes
    }

    /// ACKs a response; a cluster or listener response also subscribes to the endpoints or
    /// routes it names (in SotW, the full list; in delta, the added names).
    async fn answer(&self, r: &Answered, names: &[String]) {
        let added: Vec<String> = names
            .iter()
            .filter(|n| !n.starts_with('-'))
            .cloned()
            .collect();
        let child = match r.ty {
            "cds" => Some(EDS),
            "lds" => Some(RDS),
            _ => None,
        };
        match (child, &self.stream) {
            (Some(child), _) => {
                if !added.is_empty() {
                    self.subscribe(child, &added, None).await;
                }
                self.subscribe(url_of(r.ty), &[], Some(r)).await;
            }
            (None, Stream::Sotw { .. }) => self.subscribe(url_of(r.ty), &added, Some(r)).await,
            (None, Stream::Delta { .. }) => self.subscribe(url_of(r.ty), &[], Some(r)).await,
        }
    }
}

/// What an ACK answers.
struct Answered {
    ty: &'static str,
    version: String,
    nonce: String,
}

fn type_of(url: &str) -> &'static str {
    match url {
        CDS => "cds",
        EDS => "eds",
        LDS => "lds",
        RDS => "rds",
        other => panic!("unexpected type {other}"),
    }
}

fn url_of(ty: &str) -> &'static str {
    match ty {
        "cds" => CDS,
        "eds" => EDS,
        "lds" => LDS,
        _ => RDS,
    }
}

fn name_of(ty: &str, a: &Any) -> String {
    let bytes = a.value.as_slice();
    match ty {
        "cds" => Cluster::decode(bytes).unwrap().name,
        "eds" => ClusterLoadAssignment::decode(bytes).unwrap().cluster_name,
        "lds" => Listener::decode(bytes).unwrap().name,
        _ => RouteConfiguration::decode(bytes).unwrap().name,
    }
}

/// Every name of `ty` the pushes brought.
fn held(pushes: &[Push], ty: &str) -> Vec<String> {
    let mut names: Vec<String> = pushes
        .iter()
        .filter(|(t, _)| *t == ty)
        .flat_map(|(_, n)| n.iter().filter(|n| !n.starts_with('-')).cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

const QUIET: Duration = Duration::from_millis(400);

async fn start(dir: &tempfile::TempDir, text: &str) -> app::Server {
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

async fn edge_and_sidecar(server: &app::Server, protocol: Protocol) -> (Envoy, Envoy) {
    let mut edge = Envoy::connect(server.ads_addr, protocol, "edge-1", "edge", &[]).await;
    let mut sidecar = Envoy::connect(
        server.ads_addr,
        protocol,
        "payments-7",
        "sidecars",
        &[("role", "sidecar")],
    )
    .await;
    let edge_got = edge.settle(QUIET).await;
    assert_eq!(held(&edge_got, "lds"), ["public"]);
    assert_eq!(held(&edge_got, "cds"), ["checkout/blue", "checkout/green"]);
    let sidecar_got = sidecar.settle(QUIET).await;
    assert_eq!(held(&sidecar_got, "lds"), ["outbound"]);
    assert_eq!(held(&sidecar_got, "rds"), ["outbound"]);
    assert_eq!(held(&sidecar_got, "cds"), ["payments/v1", "payments/v2"]);
    assert_eq!(held(&sidecar_got, "eds"), ["payments/v1", "payments/v2"]);
    (edge, sidecar)
}

async fn an_edit_to_one_group_pushes_nothing_to_the_other(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, DEPLOY).await;
    let (mut edge, mut sidecar) = edge_and_sidecar(&server, protocol).await;
    let edge_version = |server: &app::Server| {
        let p = server.published.borrow().clone().unwrap();
        let g = p.group(&cutover::node::GroupId::named("edge")).unwrap();
        g.snapshot.version.clone()
    };
    let before = edge_version(&server);

    // A switch of payments (the sidecars' service) and a new endpoint for it.
    let edited = DEPLOY
        .replace("    active: v1\n", "    active: v2\n")
        .replace(
            "v2: { endpoints: [127.0.0.1:8084] }",
            "v2: { endpoints: [127.0.0.1:8084, 127.0.0.1:8085] }",
        );
    std::fs::write(dir.path().join("deploy.yaml"), &edited).unwrap();
    let sidecar_got = sidecar.settle(QUIET).await;
    assert_eq!(
        held(&sidecar_got, "rds"),
        ["outbound"],
        "the sidecars get the switch: {sidecar_got:?}"
    );
    assert!(
        held(&sidecar_got, "eds").contains(&"payments/v2".to_owned()),
        "{sidecar_got:?}"
    );
    let edge_got = edge.settle(QUIET).await;
    assert!(edge_got.is_empty(), "the edge was sent {edge_got:?}");
    assert_eq!(edge_version(&server), before, "the edge group's version");

    // And the other way round: the edge's switch leaves the sidecars alone.
    let sidecar_version = server.status.report().nodes[1].config_version.clone();
    let edited = edited.replace("    active: blue\n", "    active: green\n");
    std::fs::write(dir.path().join("deploy.yaml"), edited).unwrap();
    let edge_got = edge.settle(QUIET).await;
    assert_eq!(held(&edge_got, "rds"), ["public"], "{edge_got:?}");
    let sidecar_got = sidecar.settle(QUIET).await;
    assert!(
        sidecar_got.is_empty(),
        "the sidecar was sent {sidecar_got:?}"
    );
    assert_eq!(
        server.status.report().nodes[1].config_version,
        sidecar_version
    );
    // /status gives each group's own version and how many of its Envoys hold it.
    let report = server.status.report();
    let edge = &report.groups["edge"];
    assert_eq!(
        (edge.config_version.clone(), edge.envoys, edge.in_sync),
        (edge_version(&server), 1, 1)
    );
    let sidecars = &report.groups["sidecars"];
    assert_eq!(
        (
            Some(sidecars.config_version.clone()),
            sidecars.envoys,
            sidecars.in_sync
        ),
        (sidecar_version, 1, 1)
    );
    assert_ne!(
        report.config_version.as_deref(),
        Some(edge.config_version.as_str())
    );
    // And /metrics, per group.
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"cutover_group_envoys{group="edge"} 1"#,
        r#"cutover_group_envoys_in_sync{group="sidecars"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in {metrics}");
    }
}

#[tokio::test]
async fn sotw_an_edit_to_one_group_pushes_nothing_to_the_other() {
    an_edit_to_one_group_pushes_nothing_to_the_other(Protocol::Sotw).await;
}

#[tokio::test]
async fn delta_an_edit_to_one_group_pushes_nothing_to_the_other() {
    an_edit_to_one_group_pushes_nothing_to_the_other(Protocol::Delta).await;
}

async fn an_envoy_no_group_matches_gets_an_empty_config(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, DEPLOY).await;
    // A sidecar without the metadata the group asks for.
    let mut stray = Envoy::connect(server.ads_addr, protocol, "payments-8", "sidecars", &[]).await;
    let got = stray.settle(QUIET).await;
    let types: Vec<&str> = got.iter().map(|(t, _)| *t).collect();
    match protocol {
        // Empty but valid: both full-state types are answered, with nothing in them.
        Protocol::Sotw => assert_eq!(types, ["cds", "lds"], "{got:?}"),
        // Delta sends a response only for what changed: nothing.
        Protocol::Delta => assert!(got.iter().all(|(_, n)| n.is_empty()), "{got:?}"),
    }
    assert!(got.iter().all(|(_, names)| names.is_empty()), "{got:?}");
    let status = server.status.report();
    assert_eq!(status.nodes_without_group, ["payments-8"]);
    assert_eq!(status.nodes[0].group.as_deref(), Some("(no group)"));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["nodes_without_group"][0], "payments-8");
}

#[tokio::test]
async fn sotw_an_envoy_no_group_matches_gets_an_empty_config_and_status_warns() {
    an_envoy_no_group_matches_gets_an_empty_config(Protocol::Sotw).await;
}

#[tokio::test]
async fn delta_an_envoy_no_group_matches_gets_an_empty_config_and_status_warns() {
    an_envoy_no_group_matches_gets_an_empty_config(Protocol::Delta).await;
}

#[tokio::test]
async fn an_envoy_of_another_group_that_never_answers_does_not_hold_a_red_black_retirement() {
    let red_black = |active: &str| {
        DEPLOY.replace(
            "    active: blue\n",
            &format!("    strategy:\n      red-black: {{ active: {active}, grace: 300ms }}\n"),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &red_black("blue")).await;
    let mut edge = Envoy::connect(server.ads_addr, Protocol::Sotw, "edge-1", "edge", &[]).await;
    assert_eq!(
        held(&edge.settle(QUIET).await, "cds"),
        ["checkout/blue"],
        "only the active version is deployed"
    );
    // A sidecar that reads its first response and never answers anything.
    let mut silent = Envoy::connect(
        server.ads_addr,
        Protocol::Sotw,
        "payments-7",
        "sidecars",
        &[("role", "sidecar")],
    )
    .await;
    let (_, first) = silent.next(QUIET).await.expect("the sidecar's clusters");
    assert_eq!(
        first,
        ("cds", vec!["payments/v1".into(), "payments/v2".into()])
    );

    std::fs::write(dir.path().join("deploy.yaml"), red_black("green")).unwrap();
    // The edge ACKs the switch: blue goes after the grace although the sidecar never answered.
    let mut pushes: Vec<Push> = Vec::new();
    let retired = |pushes: &[Push]| {
        pushes
            .iter()
            .any(|(t, n)| *t == "cds" && *n == ["checkout/green"])
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while !retired(&pushes) {
            pushes.extend(edge.settle(QUIET).await);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("blue retired within 5 s: {pushes:?}"));
    let clusters: Vec<&Vec<String>> = pushes
        .iter()
        .filter(|(t, _)| *t == "cds")
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        clusters,
        [
            &vec!["checkout/blue".to_owned(), "checkout/green".to_owned()],
            &vec!["checkout/green".to_owned()]
        ],
        "the switch keeps blue, then blue is retired"
    );
    // `cutover wait` on checkout asks only the edge; the silent sidecar holds no checkout.
    let waited_on: Vec<String> = server
        .status
        .wait_envoys("checkout")
        .into_iter()
        .map(|e| e.node)
        .collect();
    assert_eq!(waited_on, ["edge-1"]);
    let status = server.status.report();
    assert_eq!(status.services["checkout"].deployed, ["green"]);
    assert!(status.services["checkout"].synced);
    assert!(
        !status.services["payments"].synced,
        "the sidecar never ACKed"
    );
}

#[tokio::test]
async fn an_envoy_moves_to_another_group_when_the_file_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, DEPLOY).await;
    let (_edge, mut sidecar) = edge_and_sidecar(&server, Protocol::Sotw).await;
    // Now the edge group takes every node whose id starts with `payments-` too.
    let edited = DEPLOY.replace("match: { id: \"edge-*\" }", "match: { id: \"[ep]*\" }");
    std::fs::write(dir.path().join("deploy.yaml"), edited).unwrap();
    let got = sidecar.settle(QUIET).await;
    assert_eq!(held(&got, "lds"), ["public"], "{got:?}");
    assert_eq!(held(&got, "rds"), ["public"]);
    let status = server.status.report();
    let groups: Vec<Option<&str>> = status.nodes.iter().map(|n| n.group.as_deref()).collect();
    assert_eq!(groups, [Some("edge"), Some("edge")]);
}
