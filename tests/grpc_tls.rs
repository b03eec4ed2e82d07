//! TLS and mutual TLS on the xDS port, over real gRPC with rustls on both ends (issue 11, "TLS
//! and who may ask for what"): certificates made in the test; a node id bound to the client
//! certificate's identity by the file's `access:` rules; CSDS and telemetry under the same
//! rules; certificate rotation without dropping streams.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cutover::app::{self, ServeOptions};
use cutover::testing;
use cutover::testing::pki::{Ca, Pair};
use cutover::tls::TlsFiles;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

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
        let file = self.dir.path().join("deploy.yaml");
        std::fs::write(&file, deploy).unwrap();
        app::start(ServeOptions {
            file,
            ads: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            drain_period: Duration::from_secs(5),
            admin_token: None,
            state_file: None,
            allow_nodes: Vec::new(),
            wait_for_file: false,
            clients: Default::default(),
            tls: Some(self.server.clone()),
        })
        .await
        .expect("server starts")
    }

    fn deploy_file(&self) -> std::path::PathBuf {
        self.dir.path().join("deploy.yaml")
    }
}

/// A TLS channel to cutover that trusts `ca`, checks `domain`, and presents `client` if given.
async fn channel(
    addr: SocketAddr,
    ca: &str,
    domain: &str,
    client: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(domain);
    if let Some(p) = client {
        tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        cluster: "tests".into(),
        ..Default::default()
    })
}

/// A state-of-the-world ADS stream asking for clusters.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Ads {
    /// Opens the stream and asks for every cluster as `node_id`.
    async fn open(channel: Channel, node_id: &str) -> Result<Ads, tonic::Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: node(node_id),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    /// The next response, or the status that ended the stream.
    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("an answer within 10 s")?
            .ok_or_else(|| tonic::Status::unknown("the stream ended without a status"))
    }

    async fn ack(&self, r: &DiscoveryResponse) {
        let _ = self
            .tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await;
    }
}

/// Asks for clusters as `node_id` over `channel`: the first response, or the refusal.
async fn clusters(channel: Channel, node_id: &str) -> Result<DiscoveryResponse, tonic::Status> {
    Ads::open(channel, node_id).await?.next().await
}

#[tokio::test]
async fn tls_serves_ads_and_csds_and_plaintext_is_not_answered() {
    let tls = Tls::new(false);
    let server = tls.start(DEPLOY).await;
    // Checked by name and by IP address: both are in cutover's certificate.
    for domain in [SERVER_NAME, "127.0.0.1"] {
        let ch = channel(server.ads_addr, &tls.ca.pem, domain, None)
            .await
            .expect("a TLS connection");
        let r = clusters(ch, "edge-1").await.expect("clusters over TLS");
        assert_eq!(r.resources.len(), 2, "{r:?}");
    }
    // Without client certificates there is no identity to check: CSDS shows every Envoy.
    let ch = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, None)
        .await
        .unwrap();
    let _open = Ads::open(ch.clone(), "edge-2").await.unwrap();
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
        let mut c =
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.ads_addr))
                .await
                .map_err(|e| e.to_string())?;
        let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        c.stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .message()
            .await
            .map_err(|e| e.to_string())
    };
    let got = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plaintext client is answered (with an error) within 10 s");
    assert!(got.is_err(), "a plaintext client got {got:?}");
    // A certificate for another name is refused by the client.
    assert!(
        clusters_over(server.ads_addr, &tls.ca.pem, "other.test", None)
            .await
            .is_err()
    );
}

/// Connect and ask for clusters; any failure as text.
async fn clusters_over(
    addr: SocketAddr,
    ca: &str,
    domain: &str,
    client: Option<&Pair>,
) -> Result<DiscoveryResponse, String> {
    let ch = channel(addr, ca, domain, client)
        .await
        .map_err(|e| format!("{e:?}"))?;
    clusters(ch, "edge-1").await.map_err(|s| s.to_string())
}

#[tokio::test]
async fn mutual_tls_binds_node_ids_to_certificate_identities() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let edge1 = tls.ca.client(&["spiffe://test/edge/edge-1"]);
    let ch = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&edge1))
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
    let ch2 = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&stranger))
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
        clusters_over(server.ads_addr, &tls.ca.pem, SERVER_NAME, None)
            .await
            .is_err()
    );
    let rogue = Ca::new("rogue").client(&["spiffe://test/edge/edge-1"]);
    assert!(
        clusters_over(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&rogue))
            .await
            .is_err()
    );
    // The telemetry services take reports only for a node the sender may be.
    let report = |id: &str| StreamMetricsMessage {
        identifier: Some(Identifier { node: node(id) }),
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
    let ch = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&pair))
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
        let ch = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&pair))
            .await
            .unwrap();
        let mut ads = Ads::open(ch.clone(), id).await.unwrap();
        ads.next().await.unwrap();
        streams.push(ads);
        channels.push(ch);
    }
    let ops = tls.ca.client(&["ops.test"]);
    let ops = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&ops))
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

/// Replaces the deployment file (write beside, rename).
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_and_open_streams_go_on() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let edge1 = tls.ca.client(&["spiffe://test/edge/edge-1"]);
    let ch = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&edge1))
        .await
        .unwrap();
    let mut open = Ads::open(ch, "edge-1").await.unwrap();
    let first = open.next().await.unwrap();
    open.ack(&first).await;

    // Rotation: a certificate for a new name, then a broken one that must not replace it.
    tls.ca
        .server(&["rotated.test", "127.0.0.1"])
        .write(&tls.server.cert, &tls.server.key);
    testing::eventually(
        Duration::from_secs(10),
        "new connections to get the rotated certificate",
        async || {
            clusters_over(server.ads_addr, &tls.ca.pem, "rotated.test", Some(&edge1))
                .await
                .is_ok()
        },
    )
    .await;
    std::fs::write(&tls.server.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    tokio::time::sleep(cutover::tls::RELOAD_EVERY * 2).await;
    clusters_over(server.ads_addr, &tls.ca.pem, "rotated.test", Some(&edge1))
        .await
        .expect("a broken certificate file leaves the last good one in use");

    // The stream opened before the rotation still gets pushes.
    save(
        &tls.deploy_file(),
        &format!("{DEPLOY}{ACCESS}").replace(
            "green: { endpoints: [127.0.0.1:8082] }",
            "green: { endpoints: [127.0.0.1:8082] }\n      red: { endpoints: [127.0.0.1:8083] }",
        ),
    );
    let pushed = open.next().await.expect("the old stream is still served");
    assert_eq!(pushed.resources.len(), 3, "{pushed:?}");
}

#[tokio::test]
async fn a_rule_taken_out_of_the_file_ends_the_streams_it_allowed() {
    let tls = Tls::new(true);
    let server = tls.start(&format!("{DEPLOY}{ACCESS}")).await;
    let edge1 = tls.ca.client(&["spiffe://test/edge/edge-1"]);
    let ch = channel(server.ads_addr, &tls.ca.pem, SERVER_NAME, Some(&edge1))
        .await
        .unwrap();
    let mut open = Ads::open(ch, "edge-1").await.unwrap();
    let first = open.next().await.unwrap();
    open.ack(&first).await;
    // Only the operator's rule is left.
    let (_, ops_rule) = ACCESS.split_once("  - identity: \"ops.test\"").unwrap();
    save(
        &tls.deploy_file(),
        &format!("{DEPLOY}access:\n  - identity: \"ops.test\"{ops_rule}"),
    );
    let ended = open.next().await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended}");
    assert!(ended.message().contains("matches no rule"), "{ended}");
}
