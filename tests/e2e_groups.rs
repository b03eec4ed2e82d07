//! End to end with real Envoys: node groups. An edge proxy and a sidecar, told apart by node id,
//! node cluster and node metadata (`cutover bootstrap --node-metadata`), get different listeners from one cutover, and an edit to the sidecars'
//! listener changes nothing in the edge proxy (its config dump and its xDS update counters stay
//! put). Each in state of the world and delta xDS (`name::sotw`, `name::delta`).

use std::net::SocketAddr;

use serde_json::Value;

use cutover::testing;
use cutover::testing::{
    Cutover, DeploymentFile, Envoy, Upstream, envoy_binary, eventually, free_port,
    in_both_xds_modes, version_of,
};

/// The edge (node ids `edge-*`) serves `checkout` on `public`; the sidecars (node cluster
/// `sidecars` and metadata `role: sidecar`) serve `payments` on `outbound`, with a `/health` route when `health` is set.
fn deployment(
    public: SocketAddr,
    outbound: SocketAddr,
    ups: &[&Upstream],
    payments: &str,
    health: bool,
) -> String {
    let [web, v1, v2] = ups else {
        panic!("three upstreams")
    };
    let health_route = if health {
        "      - match: { path: /health }\n        service: payments\n"
    } else {
        ""
    };
    format!(
        "\
listeners:
  - name: public
    address: {public}
    routes:
      - match: {{ prefix: / }}
        service: checkout
  - name: outbound
    address: {outbound}
    routes:
{health_route}      - match: {{ prefix: / }}
        service: payments
services:
  checkout:
    versions:
      blue: {{ endpoints: [{web}] }}
    active: blue
  payments:
    versions:
      v1: {{ endpoints: [{v1}] }}
      v2: {{ endpoints: [{v2}] }}
    active: {payments}
groups:
  - name: edge
    match: {{ id: \"edge-*\" }}
    listeners: [public]
  - name: sidecars
    match: {{ cluster: sidecars, metadata: {{ role: sidecar }} }}
    listeners: [outbound]
",
        web = web.addr,
        v1 = v1.addr,
        v2 = v2.addr,
    )
}

/// The names of the listeners in `/config_dump` that came from cutover, sorted.
fn dynamic_listeners(dump: &Value) -> Vec<String> {
    let mut names: Vec<String> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
        .filter_map(|l| l["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Envoy's counters of xDS responses received and applied, and of listeners changed.
async fn update_counters(envoy: &Envoy) -> Vec<(String, u64)> {
    let stats = envoy.stats().await;
    let mut out: Vec<(String, u64)> = stats
        .into_iter()
        .filter(|(name, _)| {
            name.ends_with(".update_attempt")
                || name.ends_with(".update_success")
                || name == "listener_manager.listener_modified"
                || name == "listener_manager.listener_added"
        })
        .collect();
    out.sort();
    out
}

in_both_xds_modes! {
    async fn an_edge_and_a_sidecar_get_their_own_listeners_and_an_edit_to_one_leaves_the_other(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let web = Upstream::start("blue-1").await;
        let v1 = Upstream::start("v1-1").await;
        let v2 = Upstream::start("v2-1").await;
        let ups = [&web, &v1, &v2];
        let (public, outbound) = (free_port(), free_port());
        let file = DeploymentFile {
            path: dir.path().join("deploy.yaml"),
        };
        file.write_renamed(&deployment(public, outbound, &ups, "v1", false));
        let cutover = Cutover::start(dir.path(), &file.path).await;
        let edge = Envoy::start_with(
            &envoy_bin,
            dir.path(),
            "edge-1",
            cutover.ads,
            public,
            xds.bootstrap_args(),
        )
        .await;
        let mut sidecar_args = vec!["--node-cluster", "sidecars", "--node-metadata", "role=sidecar"];
        sidecar_args.extend_from_slice(xds.bootstrap_args());
        let sidecar = Envoy::start_with(
            &envoy_bin,
            dir.path(),
            "payments-sidecar-1",
            cutover.ads,
            outbound,
            &sidecar_args,
        )
        .await;

        // Each holds only its group's listener and the clusters its routes use.
        assert_eq!(dynamic_listeners(&edge.config_dump().await), ["public"]);
        assert_eq!(edge.dynamic_clusters().await, ["checkout/blue"]);
        assert_eq!(dynamic_listeners(&sidecar.config_dump().await), ["outbound"]);
        assert_eq!(sidecar.dynamic_clusters().await, ["payments/v1", "payments/v2"]);
        assert_eq!(edge.get("/").await.unwrap(), "blue-1");
        assert_eq!(version_of(&sidecar.get("/").await.unwrap()), "v1");
        let status = cutover.status().await;
        let groups: Vec<(&str, &str)> = status
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.group.as_deref().expect("a node's group")))
            .collect();
        assert!(groups.contains(&("edge-1", "edge")), "{groups:?}");
        assert!(groups.contains(&("payments-sidecar-1", "sidecars")), "{groups:?}");

        let edge_dump = edge.config_dump().await;
        let edge_counters = update_counters(&edge).await;
        for prefix in ["listener_manager.lds.", "cluster_manager.cds."] {
            assert!(
                edge_counters.iter().any(|(n, v)| n.starts_with(prefix) && *v > 0),
                "Envoy counts {prefix}* updates: {edge_counters:?}"
            );
        }

        // An edit of the sidecars' listener (a new route) and of their service (a switch).
        file.write_renamed(&deployment(public, outbound, &ups, "v2", true));
        eventually(testing::WAIT, "the sidecar to route to payments v2", async || {
            sidecar
                .get("/")
                .await
                .is_ok_and(|body| version_of(&body) == "v2")
        })
        .await;
        eventually(testing::WAIT, "the sidecar to serve /health", async || {
            sidecar.get("/health").await.is_ok()
        })
        .await;
        cutover.wait_in_sync("payments-sidecar-1").await;
        cutover.wait_in_sync("edge-1").await;

        // The edge was sent nothing: the same config, not one more xDS response.
        assert_eq!(edge.config_dump().await, edge_dump, "the edge's config dump changed");
        assert_eq!(update_counters(&edge).await, edge_counters);
        assert_eq!(edge.get("/").await.unwrap(), "blue-1");
    }
}
