//! What an operator sees with a real Envoy connected: its ACKed versions in `/status`, CSDS and
//! `/metrics`, and a config Envoy rejects shown as a NACK with Envoy's own error text, while
//! traffic keeps flowing on the last config it accepted.

use std::net::TcpListener;

use cutover::checkout_head;
use cutover::testing::{NODE, Scenario, WAIT, envoy_binary, wait_for};

const ONE_LISTENER: &str = concat!(
    checkout_head!("${listener}"),
    "      blue: { endpoints: [${blue-1}] }
    active: blue
",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_envoy_rejects_is_reported_as_a_nack_and_traffic_stays() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["blue-1"], ONE_LISTENER).await;
    let status = s.cutover.status().await;
    let node = status
        .nodes
        .iter()
        .find(|n| n.id == NODE)
        .expect("the Envoy is listed");
    assert!(node.in_sync);
    assert_eq!(node.config_version, status.config_version);
    for ty in ["cds", "eds", "lds", "rds"] {
        assert!(
            node.types.get(ty).is_some_and(|t| t.acked.is_some()),
            "{ty} ACKed: {node:#?}"
        );
    }

    // A listener on a port something else holds: valid as a file, but Envoy cannot bind it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let clash = ONE_LISTENER.replace(
        "services:",
        &format!(
            "  - name: second\n    address: {port}\n    routes:\n      - match: {{ prefix: / }}\n        service: checkout\nservices:"
        ),
    );
    s.write(&clash);
    let nack = wait_for(
        WAIT,
        "Envoy's NACK of the listener to show in /status",
        async || {
            let status = s.cutover.status().await;
            let node = status.nodes.iter().find(|n| n.id == NODE);
            match node.map(|n| n.types.get("lds").and_then(|t| t.last_nack.clone())) {
                Some(Some(nack)) => Ok(nack),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let error = &nack.error;
    assert!(
        error.contains("second") && error.contains(&port.to_string()),
        "Envoy's own error text names the listener and the address: {error}"
    );

    // Traffic is untouched, the metrics count the NACK, CSDS and `cutover status` show it.
    assert_eq!(
        s.envoy.count_bodies(20, "/", &[]).await.get("blue-1"),
        Some(&20)
    );
    let metrics = reqwest::get(format!("http://{}/metrics", s.cutover.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "cutover_xds_nacks_total{type=\"lds\"} 1"),
        "{metrics}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["status", "--admin", &s.cutover.admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("lds rejected"), "{text}");
    assert!(text.contains(&port.to_string()), "{text}");
    drop(taken);
}
