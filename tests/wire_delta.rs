//! Delta xDS over real gRPC in-process: the kit's fake client on `DeltaAggregatedResources`
//! (and a per-type `DeltaClusters` stream) against `app::start` on port 0. Covers the wire side
//! (the pre-encoded delta codec, stream registration, status, node refusal, shutdown); the
//! protocol rules are unit-tested in `xds::delta`.

use cutover::app;
use cutover::testing::fixtures::DEPLOY;
use cutover::testing::xds::{
    CDS, Client, EDS, FakeEnvoy, LDS, RDS, Response, delta_ack, delta_nack, delta_request, node,
};
use cutover::testing::{Protocol, all_in_sync, serve, serve_with};
use cutover::xds::Mode;

/// A delta client of `server` called `delta-test`.
async fn connect(server: &app::Server) -> Client {
    Client::connect(server.ads_addr, Protocol::Delta, "delta-test").await
}

async fn wait_in_sync(server: &app::Server) {
    all_in_sync(server, 1, "the node").await;
}

/// Subscribes as Envoy does (clusters, their endpoints, then listeners and their routes) and
/// ACKs everything; checks what came and returns the responses in order.
async fn bring_up(client: &mut Client) -> Vec<Response> {
    let names = ["checkout/blue", "checkout/green"];
    let got = client.come_up().await;
    let [cds, eds, lds, rds] = &got[..] else {
        panic!("four responses expected: {got:?}")
    };
    assert_eq!((cds.ty, cds.names()), (CDS, names.to_vec()));
    for r in &cds.resources {
        assert!(!r.version.is_empty(), "each resource carries its version");
    }
    assert_eq!((eds.ty, eds.names()), (EDS, names.to_vec()));
    assert_eq!((lds.ty, lds.names()), (LDS, vec!["public"]));
    assert_eq!(rds.route_cluster(), "checkout/blue");
    got
}

#[tokio::test]
async fn a_delta_ads_stream_sends_changes_only_and_reports_acks_and_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = connect(&server).await;
    let first = bring_up(&mut client).await;
    wait_in_sync(&server).await;
    let report = server.status.report();
    assert_eq!(report.nodes[0].id, "delta-test");
    assert_eq!(
        report.nodes[0].types["rds"].acked.as_deref(),
        Some(first[3].version.as_str())
    );

    // A switch: only the route configuration, nothing removed.
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY.replace("active: blue", "active: green")).unwrap();
    let update = client.recv().await;
    assert_eq!((update.ty, update.names()), (RDS, vec!["public"]));
    assert!(update.removed.is_empty());
    assert_eq!(update.route_cluster(), "checkout/green");

    // Rejected: recorded with Envoy's text, and not sent again.
    client
        .send(delta_nack(
            RDS,
            &update.nonce,
            "route: unknown cluster (test)",
        ))
        .await;
    client
        .expect_nothing("a rejected response is not sent again")
        .await;
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
    assert_eq!(update.ty, RDS, "a new route configuration");
    client.send(delta_ack(RDS, &update.nonce)).await;
    let cds = client.recv().await;
    assert_eq!(
        (cds.ty, cds.resources.len(), cds.removed.clone()),
        (CDS, 0, vec!["checkout/blue".to_owned()])
    );
}

#[tokio::test]
async fn a_delta_reconnect_holding_the_current_versions_gets_nothing_to_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut first = connect(&server).await;
    let responses = bring_up(&mut first).await;
    wait_in_sync(&server).await;
    drop(first);

    let mut second = connect(&server).await;
    for r in &responses {
        let mut req = delta_request(r.ty, &[], &[]);
        req.initial_resource_versions = r
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        if r.ty == EDS || r.ty == RDS {
            req.resource_names_subscribe = r.names().into_iter().map(str::to_owned).collect();
        }
        second.send(req).await;
    }
    // One message all the same, which changes nothing (Envoy resets its reconnect backoff only
    // when a message arrives).
    let greeting = second.recv().await;
    assert!(greeting.resources.is_empty() && greeting.removed.is_empty());
    second.send(delta_ack(greeting.ty, &greeting.nonce)).await;
    second.expect_nothing("nothing else to apply").await;
    wait_in_sync(&server).await;
}

#[tokio::test]
async fn a_per_type_delta_stream_serves_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let channel = cutover::testing::xds::channel(server.ads_addr, None)
        .await
        .unwrap();
    let envoy = FakeEnvoy::named(Protocol::Delta, node("cds-only"));
    let mut client = Client::open(channel, Mode::Single(CDS), envoy)
        .await
        .unwrap();
    // The type URL may be left out: the service implies it.
    let mut first = delta_request(CDS, &["*"], &[]);
    first.type_url.clear();
    client.send(first).await;
    let r = client.recv().await;
    assert_eq!(
        (r.ty, r.names()),
        (CDS, vec!["checkout/blue", "checkout/green"])
    );
}

#[tokio::test]
async fn a_delta_stream_of_a_node_not_allowed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), DEPLOY, |o| {
        o.allow_nodes = vec!["edge-*".into()]
    })
    .await;
    let mut refused = Client::connect(server.ads_addr, Protocol::Delta, "intruder").await;
    refused.send(delta_request(CDS, &[], &[])).await;
    let status = refused.refusal().await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let mut allowed = Client::connect(server.ads_addr, Protocol::Delta, "edge-7").await;
    allowed.send(delta_request(CDS, &[], &[])).await;
    assert_eq!(allowed.recv().await.ty, CDS);
}

/// Conformance (issue 11, item 2) on a delta stream: listeners and routes first, as gRPC's
/// proxyless clients ask, each answered at once.
#[tokio::test]
async fn a_delta_client_that_asks_for_listeners_first_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = connect(&server).await;
    client.send(delta_request(LDS, &[], &[])).await;
    let lds = client.recv().await;
    assert_eq!(lds.names(), ["public"]);
    client.send(delta_request(RDS, &["public"], &[])).await;
    client.send(delta_ack(LDS, &lds.nonce)).await;
    let rds = client.recv().await;
    assert_eq!(rds.route_cluster(), "checkout/blue");
    client.send(delta_ack(RDS, &rds.nonce)).await;
    client
        .send(delta_request(CDS, &["checkout/blue"], &[]))
        .await;
    let cds = client.recv().await;
    assert_eq!(cds.names(), ["checkout/blue"]);
}
