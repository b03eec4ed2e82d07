//! A version reached by name is a DNS cluster with its endpoints inline, and has no EDS
//! resource: the make-before-break gate (`xds::order::clusters_ready`) must send the routes to it
//! once its cluster is ACKed, without waiting for endpoints that will never come. Over real gRPC
//! in-process, with the kit's client sending what Envoy sends (EDS only for EDS clusters).
//!
//! With ADS, Envoy withholds its CDS ACK until every new cluster has warmed (for a DNS cluster:
//! the names resolved, the first health checks done), so the ACK alone is the signal that routes
//! may use it; the real-Envoy side of this is in `tests/e2e_dns.rs`.

use cutover::testing::fixtures::DEPLOY;
use cutover::testing::xds::{CDS, Client, EDS, LDS, RDS, sotw_ack, sotw_request};
use cutover::testing::{Protocol, all_in_sync, serve};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;

/// blue by IP address (EDS); the edit adds green by name (DNS) and switches to it at once.
fn blue_only() -> String {
    DEPLOY.replace("      green: { endpoints: [127.0.0.1:8082] }\n", "")
}

#[tokio::test]
async fn routes_to_a_new_dns_cluster_follow_its_cds_ack_without_eds() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &blue_only()).await;
    let file = dir.path().join("deploy.yaml");

    // Up on blue, as Envoy comes up.
    let mut client = Client::connect(server.ads_addr, Protocol::Sotw, "dns-test").await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let cds = client.recv().await;
    assert_eq!(cds.ty, CDS);
    client
        .send(sotw_request(EDS, "", "", &["checkout/blue"]))
        .await;
    client.send(sotw_ack(&cds, &[])).await;
    let eds = client.recv().await;
    assert_eq!(eds.ty, EDS);
    client.send(sotw_ack(&eds, &["checkout/blue"])).await;
    // Envoy asks for listeners once its clusters are initialized.
    client.send(sotw_request(LDS, "", "", &[])).await;
    let lds = client.recv().await;
    assert_eq!(lds.ty, LDS);
    client.send(sotw_request(RDS, "", "", &["public"])).await;
    client.send(sotw_ack(&lds, &[])).await;
    let rds = client.recv().await;
    assert_eq!(rds.route_cluster(), "checkout/blue");
    client.send(sotw_ack(&rds, &["public"])).await;

    // One edit adds green, reached by name, and sends the traffic to it.
    let edit = blue_only().replace(
        "      blue:  { endpoints: [127.0.0.1:8081] }\n    active: blue",
        "      blue:  { endpoints: [127.0.0.1:8081] }\n      green: { endpoints: [green.internal:8080] }\n    active: green",
    );
    assert_ne!(edit, blue_only());
    std::fs::write(&file, edit).unwrap();

    // Clusters first: green is STRICT_DNS with its endpoint inline.
    let cds = client.recv().await;
    assert_eq!(cds.ty, CDS, "the new cluster comes before the routes");
    let green = cds
        .decode::<Cluster>()
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
    client.send(sotw_ack(&cds, &[])).await;
    let rds = client.recv().await;
    assert_eq!(
        rds.ty, RDS,
        "the routes follow the CDS ACK (no EDS resource to wait for)"
    );
    assert_eq!(rds.route_cluster(), "checkout/green");
    client.send(sotw_ack(&rds, &["public"])).await;

    // And the node is in sync, with nothing pending for EDS.
    all_in_sync(&server, 1, "the node").await;
}

/// When every cluster is a DNS cluster, Envoy never subscribes to endpoints at all: the
/// listeners and routes follow the CDS ACK alone (the compose demo's case).
#[tokio::test]
async fn a_client_with_only_dns_clusters_gets_its_routes_without_ever_asking_for_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let only_dns = blue_only().replace("127.0.0.1:8081", "blue.internal:8080");
    let server = serve(dir.path(), &only_dns).await;

    let mut client = Client::connect(server.ads_addr, Protocol::Sotw, "dns-test").await;
    client.send(sotw_request(CDS, "", "", &[])).await;
    let cds = client.recv().await;
    assert_eq!(cds.ty, CDS);
    assert!(cds.decode::<Cluster>()[0].load_assignment.is_some());
    client.send(sotw_ack(&cds, &[])).await;
    // Envoy asks for listeners once its clusters are initialized: a DNS cluster needs no EDS.
    client.send(sotw_request(LDS, "", "", &[])).await;
    let lds = client.recv().await;
    assert_eq!(
        lds.ty, LDS,
        "the listeners follow the CDS ACK with no EDS subscription"
    );
    client.send(sotw_request(RDS, "", "", &["public"])).await;
    client.send(sotw_ack(&lds, &[])).await;
    let rds = client.recv().await;
    assert_eq!(rds.route_cluster(), "checkout/blue");
    client.send(sotw_ack(&rds, &["public"])).await;

    all_in_sync(&server, 1, "the node (nothing expected for EDS)").await;
}
