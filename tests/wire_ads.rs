//! The xDS server over real gRPC in-process: the kit's fake client against `app::start` on port
//! 0. Covers the wire side (framing, the pre-encoded codec, streams, status reporting) without
//! Envoy; the protocol rules themselves are unit-tested in `xds::sotw`.

use std::path::PathBuf;
use std::time::Duration;

use cutover::api::StatusReport;
use cutover::app;
use cutover::testing::fixtures::DEPLOY;
use cutover::testing::xds::{
    CDS, Client, EDS, FakeEnvoy, LDS, RDS, Response, node, sotw_ack, sotw_nack, sotw_request,
};
use cutover::testing::{Protocol, all_in_sync, read_exact, serve, serve_options, serve_with};
use cutover::xds::Mode;

/// A state-of-the-world client of `server` called `grpc-test`.
async fn connect(server: &app::Server) -> Client {
    Client::connect(server.ads_addr, Protocol::Sotw, "grpc-test").await
}

/// Waits until the one connected node has ACKed everything.
async fn wait_in_sync(server: &app::Server) {
    all_in_sync(server, 1, "the node").await;
}

/// Brings `client` up as Envoy does (listeners once its clusters have their endpoints: Envoy
/// starts LDS once its cluster manager is initialised), ACKing everything; checks the order and
/// returns the routes.
async fn bring_up(client: &mut Client) -> Response {
    let got = client.come_up().await;
    let types: Vec<_> = got.iter().map(|r| r.ty).collect();
    assert_eq!(types, [CDS, EDS, LDS, RDS], "clusters come first");
    assert_eq!(got[0].names(), ["checkout/blue", "checkout/green"]);
    assert_eq!(got[1].resources.len(), 2);
    got[3].clone()
}

#[tokio::test]
async fn ads_stream_serves_updates_and_reports_acks_and_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = connect(&server).await;
    let rds = bring_up(&mut client).await;
    assert_eq!(rds.route_cluster(), "checkout/blue");

    // The ACKs reach /status.
    wait_in_sync(&server).await;
    let report = server.status.report();
    assert_eq!(report.nodes[0].id, "grpc-test");
    assert_eq!(
        report.nodes[0].types["rds"].acked.as_deref(),
        Some(rds.version.as_str())
    );

    // A save that switches versions pushes only the routes.
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY.replace("active: blue", "active: green")).unwrap();
    let update = client.recv().await;
    assert_eq!(update.ty, RDS);
    assert_eq!(update.route_cluster(), "checkout/green");

    // Reject it: recorded with Envoy's text, and not sent again.
    client
        .send(sotw_nack(
            RDS,
            &rds.version,
            &update.nonce,
            &["public"],
            "route: unknown cluster (test)",
        ))
        .await;
    client
        .expect_nothing("a rejected version is not sent again")
        .await;
    let report = server.status.report();
    let nack = report.nodes[0].types["rds"]
        .last_nack
        .clone()
        .expect("NACK in status");
    assert_eq!(nack.version, update.version);
    assert_eq!(nack.error, "route: unknown cluster (test)");
    assert!(!report.nodes[0].in_sync);

    // An invalid save changes nothing and is reported.
    std::fs::write(&file, DEPLOY.replace("active: blue", "active: gren")).unwrap();
    client
        .expect_nothing("an invalid save changes nothing")
        .await;
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
    let server = serve(dir.path(), DEPLOY).await;
    let mut first = connect(&server).await;
    bring_up(&mut first).await;
    wait_in_sync(&server).await;
    let versions = server.status.report().nodes[0].types.clone();
    drop(first);

    let mut second = connect(&server).await;
    let v = |t: &str| versions[t].acked.clone().unwrap();
    second.send(sotw_request(CDS, &v("cds"), "", &[])).await;
    second.send(sotw_request(LDS, &v("lds"), "", &[])).await;
    let both = ["checkout/blue", "checkout/green"];
    second.send(sotw_request(EDS, &v("eds"), "", &both)).await;
    second
        .send(sotw_request(RDS, &v("rds"), "", &["public"]))
        .await;
    // One message all the same (Envoy resets its reconnect backoff only on a message): the
    // routes it holds, the same content under the same version, which changes nothing. Never
    // an empty response under the current version (issue 19's conformance finding).
    let greeting = second.recv().await;
    assert_eq!(greeting.ty, RDS);
    assert_eq!(greeting.names(), ["public"]);
    assert_eq!(greeting.version, v("rds"));
    second.send(sotw_ack(&greeting, &["public"])).await;
    second.expect_nothing("nothing else to apply").await;
}

#[tokio::test]
async fn admin_api_reports_status_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let base = format!("http://{}", server.admin_addr);
    let get = |path: &str| reqwest::get(format!("{base}{path}"));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let status: StatusReport =
        read_exact(&get("/status").await.unwrap().json().await.unwrap()).unwrap();
    assert!(status.last_reload.is_some_and(|r| r.ok));
    assert_eq!(
        status.config_version.as_deref(),
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
    let options = |wait_for_file| app::ServeOptions {
        wait_for_file,
        ..serve_options(file.clone())
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

/// A client that comes up as Envoy does and ACKs everything.
async fn connect_and_ack_all(server: &app::Server) -> Client {
    let mut client = connect(server).await;
    client.come_up().await;
    client
}

#[tokio::test]
async fn red_black_retires_the_old_version_only_after_every_envoy_acked_and_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &red_black("red")).await;
    let file = dir.path().join("deploy.yaml");
    let mut client = connect(&server).await;
    client.start().await;
    let cds = client.recv().await;
    assert_eq!(
        cds.names(),
        ["checkout/red"],
        "only the active version is deployed"
    );
    client.answer(&cds).await;
    client
        .settle_until("the routes", |e| e.held.contains_key(&RDS))
        .await;
    wait_in_sync(&server).await;

    // Switch: black is added, the routes move, red stays for rollback.
    std::fs::write(&file, red_black("black")).unwrap();
    let cds = client.recv().await;
    assert_eq!(cds.names(), ["checkout/black", "checkout/red"]);
    client.answer(&cds).await;
    let eds = client.recv().await;
    assert_eq!(eds.ty, EDS);
    client.answer(&eds).await;
    let rds = client.recv().await;
    assert_eq!(rds.ty, RDS);
    assert_eq!(rds.route_cluster(), "checkout/black");

    // The routes are not ACKed: red must stay however long we wait.
    client.expect_nothing("red stays").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.expect_nothing("red stays").await;
    let status = server.status.report();
    let retiring = &status.services["checkout"].retiring;
    assert_eq!(retiring[0].version, "red");
    assert!(retiring[0].awaiting_ack);

    // ACKed: red goes after the grace period, not before.
    let acked = std::time::Instant::now();
    client.answer(&rds).await;
    let removal = client.recv().await;
    let waited = acked.elapsed();
    assert_eq!(removal.names(), ["checkout/black"]);
    assert!(
        waited >= Duration::from_millis(250),
        "retired after {waited:?}, before the 300ms grace"
    );
    client.answer(&removal).await;
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
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = connect(&server).await;
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
    let server = serve(dir.path(), DEPLOY).await;
    let mut rejecting = connect(&server).await;
    bring_up(&mut rejecting).await;
    let mut accepting = connect(&server).await;
    bring_up(&mut accepting).await;

    std::fs::write(
        dir.path().join("deploy.yaml"),
        DEPLOY.replace("active: blue", "active: green"),
    )
    .unwrap();
    let update = rejecting.recv().await;
    rejecting
        .send(sotw_nack(
            RDS,
            "",
            &update.nonce,
            &["public"],
            "rejected by this Envoy only",
        ))
        .await;
    let other = accepting.recv().await;
    assert_eq!(other.route_cluster(), "checkout/green");
    accepting.send(sotw_ack(&other, &["public"])).await;

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
    let server = serve(dir.path(), &red_black("red")).await;
    let mut accepting = connect_and_ack_all(&server).await;
    let mut rejecting = connect_and_ack_all(&server).await;

    std::fs::write(dir.path().join("deploy.yaml"), red_black("black")).unwrap();
    for client in [&mut accepting, &mut rejecting] {
        let cds = client.recv().await;
        assert_eq!(cds.names(), ["checkout/black", "checkout/red"]);
        client.answer(&cds).await;
        let eds = client.recv().await;
        client.answer(&eds).await;
    }
    let rds = accepting.recv().await;
    accepting.answer(&rds).await;
    let rejected = rejecting.recv().await;
    assert_eq!(rejected.ty, RDS);
    rejecting
        .send(sotw_nack(
            RDS,
            "",
            &rejected.nonce,
            &["public"],
            "rejected by this Envoy only",
        ))
        .await;

    // The rejection answers the switch: red goes after the grace, for the Envoy that took it.
    let removal = accepting.recv().await;
    assert_eq!(removal.names(), ["checkout/black"]);
    accepting.answer(&removal).await;
    // The rejecting Envoy still routes to red, so it keeps red: it is sent nothing.
    rejecting
        .expect_nothing("red stays where it is routed to")
        .await;
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
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), DEPLOY).await;
    let channel = cutover::testing::xds::channel(server.ads_addr, None)
        .await
        .unwrap();
    let envoy = FakeEnvoy::named(Protocol::Sotw, node("cds-only"));
    let mut cds = Client::open(channel, Mode::Single(CDS), envoy)
        .await
        .unwrap();
    cds.send(sotw_request(CDS, "", "", &[])).await;
    let r = cds.recv().await;
    cds.send(sotw_ack(&r, &[])).await;
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
    serve_with(dir.path(), text, |o| o.state_file = Some(state)).await
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
    let mut client = connect(&server).await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let cds = client.recv().await;
    assert_eq!(cds.names(), ["checkout/black", "checkout/red"]);
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
    let mut client = connect(&server).await;
    bring_up(&mut client).await;
    // Removing an endpoint starts a drain: the state changes and cannot be saved.
    let two = DEPLOY.replace("[127.0.0.1:8082]", "[127.0.0.1:8082, 127.0.0.1:8084]");
    std::fs::write(dir.path().join("deploy.yaml"), &two).unwrap();
    let eds = client.recv().await;
    client
        .send(sotw_ack(&eds, &["checkout/blue", "checkout/green"]))
        .await;
    std::fs::write(dir.path().join("deploy.yaml"), DEPLOY).unwrap();
    let eds = client.recv().await;
    assert_eq!(eds.ty, EDS, "the drain is served");
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
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = connect(&server).await;
    // 17 MiB of names: over the default limit of 16 MiB on one message.
    let names: Vec<String> = (0..17 * 16 * 1024).map(|i| format!("{i:062}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    client.send(sotw_request(EDS, "", "", &names)).await;
    let status = client.refusal().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too large") && status.message().contains("bytes"),
        "{status:?}"
    );
}

#[tokio::test]
async fn only_allowed_node_ids_get_config() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), DEPLOY, |o| {
        o.allow_nodes = vec!["edge-*".into(), "grpc-t?st".into()];
    })
    .await;
    // `grpc-test` (what `connect` names the client) matches `grpc-t?st`.
    let mut allowed = connect(&server).await;
    allowed.send(sotw_request(CDS, "", "", &[])).await;
    assert_eq!(allowed.recv().await.ty, CDS);

    let mut refused = Client::connect(server.ads_addr, Protocol::Sotw, "intruder").await;
    refused.send(sotw_request(CDS, "", "", &[])).await;
    let status = refused.refusal().await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"intruder\""), "{status:?}");
    assert!(
        app::start(app::ServeOptions {
            allow_nodes: vec!["[".into()],
            ..serve_options(dir.path().join("deploy.yaml"))
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
    let server = serve(dir.path(), DEPLOY).await;
    let mut client = connect(&server).await;
    client.send(sotw_request(LDS, "", "", &[])).await;
    let lds = client.recv().await;
    assert_eq!(lds.names(), ["public"]);
    client.send(sotw_request(RDS, "", "", &["public"])).await;
    client.send(sotw_ack(&lds, &[])).await;
    let rds = client.recv().await;
    assert_eq!(rds.route_cluster(), "checkout/blue");
    client
        .send(sotw_request(CDS, "", "", &["checkout/blue"]))
        .await;
    client.send(sotw_ack(&rds, &["public"])).await;
    let cds = client.recv().await;
    assert_eq!(cds.names(), ["checkout/blue"]);
    client
        .send(sotw_request(EDS, "", "", &["checkout/blue"]))
        .await;
    client.send(sotw_ack(&cds, &["checkout/blue"])).await;
    let eds = client.recv().await;
    assert_eq!(eds.names(), ["checkout/blue"]);
    client.send(sotw_ack(&eds, &["checkout/blue"])).await;
    client.expect_nothing("everything is answered").await;
    let report = server.status.report();
    assert_eq!(
        report.nodes[0].types["rds"].acked.as_deref(),
        Some(rds.version.as_str())
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
    let server = serve(dir.path(), &many_services(400, 0)).await;
    let mut stalled = connect(&server).await;
    stalled.send(sotw_request(CDS, "", "", &[])).await;
    stalled.send(sotw_request(LDS, "", "", &[])).await;

    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect_and_ack_all(&server).await);
    }
    for flip in 1..=5 {
        let saved = std::time::Instant::now();
        std::fs::write(dir.path().join("deploy.yaml"), many_services(400, flip)).unwrap();
        for c in &mut clients {
            let rds = c.recv().await;
            assert_eq!(rds.ty, RDS);
            c.answer(&rds).await;
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
