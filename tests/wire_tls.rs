//! TLS and mutual TLS on the xDS port, over real gRPC with rustls on both ends (issue 11, "TLS
//! and who may ask for what"): certificates made in the test; a node id bound to the client
//! certificate's identity by the file's `access:` rules; CSDS and telemetry under the same
//! rules; certificate rotation without dropping streams.

use std::net::SocketAddr;
use std::time::Duration;

use cutover::app;
use cutover::testing;
use cutover::testing::fixtures::DEPLOY;
use cutover::testing::pki::{Ca, Pair};
use cutover::testing::xds::{
    CDS, Client, FakeEnvoy, Response, channel, node, sotw_ack, sotw_request,
};
use cutover::testing::{Protocol, serve_with};
use cutover::tls::TlsFiles;
use cutover::xds::Mode;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use tonic::transport::Channel;

/// Edge Envoys prove `spiffe://test/edge/<node id>`; an operator's tool may read every status.
const ACCESS: &str = "\
access:
  - identity: \"spiffe://test/edge/{id}\"
    node: \"{id}\"
  - identity: \"ops.test\"
    node: \"ops-*\"
    csds: all
";

/// The name cutover's certificate carries (besides 127.0.0.1).
const SERVER_NAME: &str = "cutover.test";

struct Tls {
    ca: Ca,
    server: TlsFiles,
    dir: tempfile::TempDir,
}

impl Tls {
    /// A CA, cutover's certificate signed by it, and (with `mutual`) the same CA for clients.
    fn new(mutual: bool) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("cutover test CA");
        let files = ca.write(
            dir.path(),
            "server",
            &ca.server(&[SERVER_NAME, "127.0.0.1"]),
        );
        let server = TlsFiles {
            cert: files.cert,
            key: files.key,
            client_ca: mutual.then_some(files.ca),
        };
        Tls { ca, server, dir }
    }

    async fn start(&self, deploy: &str) -> app::Server {
        serve_with(self.dir.path(), deploy, |o| {
            o.tls = Some(self.server.clone())
        })
        .await
    }

    fn deploy_file(&self) -> std::path::PathBuf {
        self.dir.path().join("deploy.yaml")
    }
}

/// A TLS channel to cutover that trusts `ca`, checks `domain`, and presents `client` if given.
async fn tls_channel(
    addr: SocketAddr,
    ca: &Ca,
    domain: &str,
    client: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    channel(addr, Some(ca.client_tls(domain, client))).await
}

/// A state-of-the-world ADS stream of `node_id` that asked for every cluster.
async fn open(channel: Channel, node_id: &str) -> Result<Client, tonic::Status> {
    let envoy = FakeEnvoy::named(Protocol::Sotw, node(node_id));
    let mut client = Client::open(channel, Mode::Aggregated, envoy).await?;
    client.send(sotw_request(CDS, "", "", &[])).await;
    Ok(client)
}

/// The next response, or the status that ended the stream.
async fn next(client: &mut Client) -> Result<Response, tonic::Status> {
    client
        .next(Duration::from_secs(10))
        .await
        .expect("an answer within 10 s")
}

/// Asks for clusters as `node_id` over `channel`: the first response, or the refusal.
async fn clusters(channel: Channel, node_id: &str) -> Result<Response, tonic::Status> {
    next(&mut open(channel, node_id).await?).await
}

#[tokio::test]
async fn tls_serves_ads_and_csds_and_plaintext_is_not_answered() {
    let tls = Tls::new(false);
    let server = tls.start(DEPLOY).await;
    // Checked by name and by IP address: both are in cutover's certificate.
    for domain in [SERVER_NAME, "127.0.0.1"] {
        let ch = tls_channel(server.ads_addr, &tls.ca, domain, None)
            .await
            .expect("a TLS connection");
        let r = clusters(ch, "edge-1").await.expect("clusters over TLS");
        assert_eq!(r.resources.len(), 2, "{r:?}");
    }
    // Without client certificates there is no identity to check: CSDS shows every Envoy.
    let ch = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, None)
        .await
        .unwrap();
    let _open = open(ch.clone(), "edge-2").await.unwrap();
    testing::eventually(Duration::from_secs(5), "CSDS to list edge-2", async || {
        let status = ClientStatusDiscoveryServiceClient::new(ch.clone())
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        status
            .config
            .iter()
            .any(|c| c.node.as_ref().is_some_and(|n| n.id == "edge-2"))
    })
    .await;
    // A plaintext client gets no answer from a TLS port.
    let plain = async {
        let ch = channel(server.ads_addr, None)
            .await
            .map_err(|e| e.to_string())?;
        let envoy = FakeEnvoy::new(Protocol::Sotw);
        let mut c = Client::open(ch, Mode::Aggregated, envoy)
            .await
            .map_err(|e| e.to_string())?;
        c.message().await.map_err(|e| e.to_string())
    };
    let got = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plaintext client is answered (with an error) within 10 s");
    assert!(got.is_err(), "a plaintext client got {got:?}");
    // A certificate for another name is refused by the client.
    assert!(
        clusters_over(server.ads_addr, &tls.ca, "other.test", None)
            .await
            .is_err()
    );
}

/// Connect and ask for clusters; any failure as text.
async fn clusters_over(
    addr: SocketAddr,
    ca: &Ca,
    domain: &str,
    client: Option<&Pair>,
) -> Result<Response, String> {
    let ch = tls_channel(addr, ca, domain, client)
        .await
        .map_err(|e| format!("{e:?}"))?;
    clusters(ch, "edge-1").await.map_err(|s| s.to_string())
}

#[tokio::test]
async fn mutual_tls_binds_node_ids_to_certificate_identities() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let edge1 = tls.ca.client(&["spiffe://test/edge/edge-1"]);
    let ch = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&edge1))
        .await
        .unwrap();
    let r = clusters(ch.clone(), "edge-1")
        .await
        .expect("edge-1 gets its config");
    assert_eq!(r.resources.len(), 2);
    // The same certificate claiming another node id.
    let refused = clusters(ch.clone(), "edge-2").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused.message().contains("node id \"edge-2\"")
            && refused.message().contains("spiffe://test/edge/edge-1")
            && refused.message().contains("it may use: \"edge-1\""),
        "{}",
        refused.message()
    );
    // A certificate no rule knows.
    let stranger = tls.ca.client(&["spiffe://test/sidecar/s1"]);
    let ch2 = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&stranger))
        .await
        .unwrap();
    let refused = clusters(ch2, "s1").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("matches no rule"),
        "{}",
        refused.message()
    );
    // No client certificate, or one another CA signed: the handshake fails, nothing is served.
    assert!(
        clusters_over(server.ads_addr, &tls.ca, SERVER_NAME, None)
            .await
            .is_err()
    );
    let rogue = Ca::new("rogue").client(&["spiffe://test/edge/edge-1"]);
    assert!(
        clusters_over(server.ads_addr, &tls.ca, SERVER_NAME, Some(&rogue))
            .await
            .is_err()
    );
    // The telemetry services take reports only for a node the sender may be.
    let report = |id: &str| StreamMetricsMessage {
        identifier: Some(Identifier {
            node: Some(node(id)),
        }),
        ..Default::default()
    };
    let sent = MetricsServiceClient::new(ch.clone())
        .stream_metrics(tokio_stream::iter([report("edge-2")]))
        .await
        .unwrap_err();
    assert_eq!(sent.code(), tonic::Code::PermissionDenied, "{sent}");
    MetricsServiceClient::new(ch)
        .stream_metrics(tokio_stream::iter([report("edge-1")]))
        .await
        .expect("edge-1's own report is taken");
}

#[tokio::test]
async fn without_access_rules_the_node_id_must_be_a_certificate_name() {
    let tls = Tls::new(true);
    let server = tls.start(DEPLOY).await;
    let pair = tls.ca.client(&["edge-1.envoys.test"]);
    let ch = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&pair))
        .await
        .unwrap();
    clusters(ch.clone(), "edge-1.envoys.test")
        .await
        .expect("the certificate's own name");
    let refused = clusters(ch, "edge-1").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("must equal a DNS or URI name"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn csds_shows_a_caller_only_the_envoys_its_certificate_may_be() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let mut channels = Vec::new();
    let mut streams = Vec::new();
    for id in ["edge-1", "edge-2"] {
        let pair = tls.ca.client(&[&format!("spiffe://test/edge/{id}")]);
        let ch = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&pair))
            .await
            .unwrap();
        let mut ads = open(ch.clone(), id).await.unwrap();
        next(&mut ads).await.unwrap();
        streams.push(ads);
        channels.push(ch);
    }
    let ops = tls.ca.client(&["ops.test"]);
    let ops = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&ops))
        .await
        .unwrap();
    let seen = async |ch: &Channel| -> Vec<String> {
        let status = ClientStatusDiscoveryServiceClient::new(ch.clone())
            .fetch_client_status(ClientStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut ids: Vec<String> = status
            .config
            .into_iter()
            .filter_map(|c| c.node.map(|n| n.id))
            .collect();
        ids.sort();
        ids
    };
    testing::eventually(
        Duration::from_secs(5),
        "both Envoys to connect",
        async || seen(&ops).await == ["edge-1", "edge-2"],
    )
    .await;
    assert_eq!(seen(&channels[0]).await, ["edge-1"]);
    assert_eq!(seen(&channels[1]).await, ["edge-2"]);
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_and_open_streams_go_on() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let edge1 = tls.ca.client(&["spiffe://test/edge/edge-1"]);
    let ch = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&edge1))
        .await
        .unwrap();
    let mut stream = open(ch, "edge-1").await.unwrap();
    let first = next(&mut stream).await.unwrap();
    stream.send(sotw_ack(&first, &[])).await;

    // Rotation: a certificate for a new name, then a broken one that must not replace it.
    tls.ca
        .server(&["rotated.test", "127.0.0.1"])
        .write(&tls.server.cert, &tls.server.key);
    testing::eventually(
        Duration::from_secs(10),
        "new connections to get the rotated certificate",
        async || {
            clusters_over(server.ads_addr, &tls.ca, "rotated.test", Some(&edge1))
                .await
                .is_ok()
        },
    )
    .await;
    std::fs::write(&tls.server.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    tokio::time::sleep(cutover::tls::RELOAD_EVERY * 2).await;
    clusters_over(server.ads_addr, &tls.ca, "rotated.test", Some(&edge1))
        .await
        .expect("a broken certificate file leaves the last good one in use");

    // The stream opened before the rotation still gets pushes.
    testing::DeploymentFile::new(tls.deploy_file()).write_renamed(
        &format!("{DEPLOY}{ACCESS}").replace(
            "green: { endpoints: [127.0.0.1:8082] }",
            "green: { endpoints: [127.0.0.1:8082] }\n      red: { endpoints: [127.0.0.1:8083] }",
        ),
    );
    let pushed = next(&mut stream)
        .await
        .expect("the old stream is still served");
    assert_eq!(pushed.resources.len(), 3, "{pushed:?}");
}

#[tokio::test]
async fn a_rule_taken_out_of_the_file_ends_the_streams_it_allowed() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let edge1 = tls.ca.client(&["spiffe://test/edge/edge-1"]);
    let ch = tls_channel(server.ads_addr, &tls.ca, SERVER_NAME, Some(&edge1))
        .await
        .unwrap();
    let mut stream = open(ch, "edge-1").await.unwrap();
    let first = next(&mut stream).await.unwrap();
    stream.send(sotw_ack(&first, &[])).await;
    // Only the operator's rule is left.
    let (_, ops_rule) = ACCESS.split_once("  - identity: \"ops.test\"").unwrap();
    testing::DeploymentFile::new(tls.deploy_file()).write_renamed(&format!(
        "{DEPLOY}access:\n  - identity: \"ops.test\"{ops_rule}"
    ));
    let ended = next(&mut stream).await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended}");
    assert!(ended.message().contains("matches no rule"), "{ended}");
}
