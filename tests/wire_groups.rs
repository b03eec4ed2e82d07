//! Node groups over real gRPC in-process, in both protocols: each Envoy gets its group's
//! listeners and services, an edit to one group pushes nothing to another group's Envoys, an
//! Envoy no group matches gets an empty but valid config, and a red-black retirement waits only
//! for the Envoys that hold the service.

use std::time::Duration;

use cutover::app;
use cutover::testing::xds::{CDS, Client, EDS, FakeEnvoy, LDS, RDS, Response, node_in};
use cutover::testing::{Protocol, serve};
use cutover::xds::ResourceType;

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

/// A client that behaves like Envoy (the kit's fake) as node `id` of `cluster` with
/// `metadata`.
async fn connect(
    server: &app::Server,
    protocol: Protocol,
    id: &str,
    cluster: &str,
    metadata: &[(&str, &str)],
) -> Client {
    let envoy = FakeEnvoy::named(protocol, node_in(id, cluster, metadata));
    let mut client = Client::connect_as(server.ads_addr, envoy).await;
    client.start().await;
    client
}

/// Every name of `ty` the responses brought, sorted.
fn held(pushes: &[Response], ty: ResourceType) -> Vec<String> {
    let mut names: Vec<String> = pushes
        .iter()
        .filter(|r| r.ty == ty)
        .flat_map(|r| r.names())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

const QUIET: Duration = Duration::from_millis(400);

async fn edge_and_sidecar(server: &app::Server, protocol: Protocol) -> (Client, Client) {
    let mut edge = connect(server, protocol, "edge-1", "edge", &[]).await;
    let mut sidecar = connect(
        server,
        protocol,
        "payments-7",
        "sidecars",
        &[("role", "sidecar")],
    )
    .await;
    let edge_got = edge.settle(QUIET).await;
    assert_eq!(held(&edge_got, LDS), ["public"]);
    assert_eq!(held(&edge_got, CDS), ["checkout/blue", "checkout/green"]);
    let sidecar_got = sidecar.settle(QUIET).await;
    assert_eq!(held(&sidecar_got, LDS), ["outbound"]);
    assert_eq!(held(&sidecar_got, RDS), ["outbound"]);
    assert_eq!(held(&sidecar_got, CDS), ["payments/v1", "payments/v2"]);
    assert_eq!(held(&sidecar_got, EDS), ["payments/v1", "payments/v2"]);
    (edge, sidecar)
}

async fn an_edit_to_one_group_pushes_nothing_to_the_other(protocol: Protocol) {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
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
        held(&sidecar_got, RDS),
        ["outbound"],
        "the sidecars get the switch: {sidecar_got:?}"
    );
    assert!(
        held(&sidecar_got, EDS).contains(&"payments/v2".to_owned()),
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
    assert_eq!(held(&edge_got, RDS), ["public"], "{edge_got:?}");
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
    let server = serve(dir.path(), DEPLOY).await;
    // A sidecar without the metadata the group asks for.
    let mut stray = connect(&server, protocol, "payments-8", "sidecars", &[]).await;
    let got = stray.settle(QUIET).await;
    let types: Vec<ResourceType> = got.iter().map(|r| r.ty).collect();
    let empty = |r: &Response| r.resources.is_empty() && r.removed.is_empty();
    match protocol {
        // Empty but valid: both full-state types are answered, with nothing in them.
        Protocol::Sotw => assert_eq!(types, [CDS, LDS], "{got:?}"),
        // Delta sends a response only for what changed: nothing.
        Protocol::Delta => assert!(got.iter().all(empty), "{got:?}"),
    }
    assert!(got.iter().all(empty), "{got:?}");
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
    let server = serve(dir.path(), &red_black("blue")).await;
    let mut edge = connect(&server, Protocol::Sotw, "edge-1", "edge", &[]).await;
    assert_eq!(
        held(&edge.settle(QUIET).await, CDS),
        ["checkout/blue"],
        "only the active version is deployed"
    );
    // A sidecar that reads its first response and never answers anything.
    let mut silent = connect(
        &server,
        Protocol::Sotw,
        "payments-7",
        "sidecars",
        &[("role", "sidecar")],
    )
    .await;
    let first = silent
        .next(QUIET)
        .await
        .expect("the sidecar's clusters")
        .unwrap();
    assert_eq!(
        (first.ty, first.names()),
        (CDS, vec!["payments/v1", "payments/v2"])
    );

    std::fs::write(dir.path().join("deploy.yaml"), red_black("green")).unwrap();
    // The edge ACKs the switch: blue goes after the grace although the sidecar never answered.
    let mut pushes: Vec<Response> = Vec::new();
    let retired = |pushes: &[Response]| {
        pushes
            .iter()
            .any(|r| r.ty == CDS && r.names() == ["checkout/green"])
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while !retired(&pushes) {
            pushes.extend(edge.settle(QUIET).await);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("blue retired within 5 s: {pushes:?}"));
    let clusters: Vec<Vec<&str>> = pushes
        .iter()
        .filter(|r| r.ty == CDS)
        .map(Response::names)
        .collect();
    assert_eq!(
        clusters,
        [
            vec!["checkout/blue", "checkout/green"],
            vec!["checkout/green"]
        ],
        "the switch keeps blue, then blue is retired"
    );
    // `cutover wait` on checkout asks only the edge; the silent sidecar holds no checkout.
    let waited_on: Vec<String> = server
        .status
        .wait_envoys(
            "checkout",
            (std::time::Instant::now(), std::time::SystemTime::now()),
        )
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
    let server = serve(dir.path(), DEPLOY).await;
    let (_edge, mut sidecar) = edge_and_sidecar(&server, Protocol::Sotw).await;
    // Now the edge group takes every node whose id starts with `payments-` too.
    let edited = DEPLOY.replace("match: { id: \"edge-*\" }", "match: { id: \"[ep]*\" }");
    std::fs::write(dir.path().join("deploy.yaml"), edited).unwrap();
    let got = sidecar.settle(QUIET).await;
    assert_eq!(held(&got, LDS), ["public"], "{got:?}");
    assert_eq!(held(&got, RDS), ["public"]);
    let status = server.status.report();
    let groups: Vec<Option<&str>> = status.nodes.iter().map(|n| n.group.as_deref()).collect();
    assert_eq!(groups, [Some("edge"), Some("edge")]);
}
