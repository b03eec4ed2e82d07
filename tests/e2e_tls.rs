//! End to end with a real Envoy over mutual TLS: `cutover bootstrap --tls-*` gives Envoy the
//! transport socket; cutover checks Envoy's certificate against the file's `access:` rules;
//! config, the stats sink and load reports all flow over the one TLS connection; cutover's
//! certificate is rotated under traffic without Envoy reconnecting; an Envoy whose certificate
//! does not allow its node id gets nothing. In both xDS protocols.

use std::path::Path;
use std::time::Duration;

use cutover::testing;
use cutover::testing::pki::Ca;
use cutover::testing::{
    DeploymentFile, Envoy, Protocol, Upstream, WAIT, checkout_deployment, envoy_binary, eventually,
    free_port, in_both_xds_modes, version_of,
};

const ACCESS: &str = "\
access:
  - identity: \"spiffe://test/envoy/{id}\"
    node: \"{id}\"
";

/// Paths of `files` as `cutover bootstrap` arguments.
fn bootstrap_args(xds: Protocol, ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    let mut args: Vec<String> = xds.bootstrap_args().iter().map(|a| a.to_string()).collect();
    for (flag, path) in [("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)] {
        args.push(flag.into());
        args.push(path.display().to_string());
    }
    args
}

in_both_xds_modes! {
    async fn envoy_over_mutual_tls_gets_config_reports_and_survives_a_certificate_rotation(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("cutover e2e CA");
        let server = ca.write(dir.path(), "cutover", &ca.server(&["127.0.0.1"]));
        let edge = ca.write(dir.path(), "edge-1", &ca.client(&["spiffe://test/envoy/edge-1"]));
        let blue = Upstream::start("blue-1").await;
        let green = Upstream::start("green-1").await;
        let listener = free_port();
        let file = DeploymentFile { path: dir.path().join("deploy.yaml") };
        let deployment = |active: &str| {
            format!("{}{ACCESS}", checkout_deployment(listener, &[blue.addr], &[green.addr], active))
        };
        file.write_renamed(&deployment("blue"));
        let path = |p: &Path| p.display().to_string();
        let cutover = testing::Cutover::start_with_args(
            dir.path(),
            &file.path,
            &[
                "--tls-cert", &path(&server.cert),
                "--tls-key", &path(&server.key),
                "--tls-client-ca", &path(&server.ca),
            ],
        )
        .await;
        let args = bootstrap_args(xds, &edge.ca, &edge.cert, &edge.key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envoy = Envoy::start_with(&envoy_bin, dir.path(), "edge-1", cutover.ads, listener, &args).await;
        cutover.wait_in_sync("edge-1").await;
        assert_eq!(version_of(&envoy.get("/").await.unwrap()), "blue");

        // Envoy's own reports arrive over the same TLS connection.
        eventually(WAIT, "the stats sink and load reports of edge-1 to arrive", async || {
            let Ok(t) = cutover.telemetry().await else { return false };
            t.nodes.iter().any(|n| {
                n.id == "edge-1"
                    && n.stats_sink.as_ref().is_some_and(|s| s.streams >= 1)
                    && n.load_reporting.as_ref().is_some_and(|l| l.streams >= 1)
            })
        })
        .await;

        // Rotation under traffic, then a switch: Envoy keeps its one connection and applies it.
        let traffic = envoy.background_traffic();
        ca.server(&["127.0.0.1"]).write(&server.cert, &server.key);
        tokio::time::sleep(cutover::tls::RELOAD_EVERY * 2).await;
        let before = cutover.last_reload().await;
        file.write_renamed(&deployment("green"));
        cutover.wait_applied("edge-1", &before).await;
        eventually(WAIT, "traffic to move to green", async || {
            envoy.get("/").await.is_ok_and(|b| version_of(&b) == "green")
        })
        .await;
        let outcomes = traffic.stop().await;
        let failed = outcomes.iter().filter(|r| r.is_err()).count();
        assert_eq!(failed, 0, "{failed} of {} requests failed", outcomes.len());
        assert_eq!(
            envoy.stat("cluster.cutover_xds.upstream_cx_total").await,
            1,
            "Envoy reached cutover over one connection throughout: the rotation dropped nothing"
        );
        assert!(
            cutover.log().contains("TLS certificate reloaded"),
            "cutover logs the rotation"
        );

        // An Envoy whose certificate names another node gets no config and is told why.
        let other = ca.write(dir.path(), "impostor", &ca.client(&["spiffe://test/envoy/edge-9"]));
        let args = bootstrap_args(xds, &other.ca, &other.cert, &other.key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bootstrap = testing::bootstrap_with("edge-2", cutover.ads, &args);
        let impostor = Envoy::spawn(&envoy_bin, dir.path(), "edge-2", &bootstrap, free_port()).await;
        testing::wait_for(Duration::from_secs(20), "Envoy edge-2 to be told why it is refused", async || {
            let log = impostor.log();
            // PERMISSION_DENIED (7), with cutover's reason (percent-encoded as gRPC sends it).
            if log.contains("AggregatedResources gRPC config stream to cutover_xds closed: 7")
                && log.contains("is%20not%20one%20that%20client%20certificate%20identity")
            {
                Ok(())
            } else {
                Err(log.lines().filter(|l| l.contains("warn") || l.contains("rror")).take(20).collect::<Vec<_>>().join("\n"))
            }
        })
        .await;
        assert!(
            cutover.log().contains("refused an xDS stream"),
            "cutover logs the refusal"
        );
        let status = cutover.status().await;
        assert!(
            !status.nodes.iter().any(|n| n.id == "edge-2" && n.config_version.is_some()),
            "edge-2 holds no config: {:?}",
            status.nodes
        );
    }
}
