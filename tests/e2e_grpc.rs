//! End to end with a real Envoy in front of real gRPC servers (grpcio) and a real gRPC client
//! (grpcio, a plain channel to Envoy's listener): a `protocol: grpc` service switched blue →
//! green and canaried while calls go on, with no failed call, in both xDS protocols; and a
//! canary rollout of it judged on the calls' gRPC status, which their HTTP status (200) hides.

use std::time::Duration;

use cutover::api::RolloutState;
use cutover::testing::proxyless::{GrpcClient, Upstreams, parts_or_skip};
use cutover::testing::{
    Cutover, DeploymentFile, Envoy, WAIT, envoy_binary, eventually, free_port, in_both_xds_modes,
    serve_live,
};

fn grpc_file(listener: std::net::SocketAddr, upstreams: &Upstreams, strategy: &str) -> String {
    file_with(listener, upstreams, "grpc", strategy)
}

fn file_with(
    listener: std::net::SocketAddr,
    upstreams: &Upstreams,
    protocol: &str,
    strategy: &str,
) -> String {
    format!(
        "\
listeners:
  - name: public
    address: {listener}
    routes:
      - match: {{ prefix: / }}
        service: checkout
services:
  checkout:
    protocol: {protocol}
    # A call that goes wrong fails fast (the HTTP/1.1 case at the end).
    timeout: 1s
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    {strategy}
",
        blue = upstreams.addr("blue/1"),
        green = upstreams.addr("green/1"),
    )
}

/// cutover serving `grpc_file` with blue active, and an Envoy (node `edge-1`) in sync with it.
struct GrpcStack {
    listener: std::net::SocketAddr,
    file: DeploymentFile,
    cutover: Cutover,
    /// Killed when dropped: kept until the end.
    _envoy: Envoy,
    _dir: tempfile::TempDir,
}

impl GrpcStack {
    async fn start(
        xds: cutover::testing::Protocol,
        envoy_bin: &std::path::Path,
        upstreams: &Upstreams,
    ) -> GrpcStack {
        let dir = tempfile::tempdir().unwrap();
        let listener = free_port();
        let text = grpc_file(listener, upstreams, "active: blue");
        let (file, cutover, envoy) = serve_live(envoy_bin, dir.path(), &text, listener, xds).await;
        GrpcStack {
            listener,
            file,
            cutover,
            _envoy: envoy,
            _dir: dir,
        }
    }
}

in_both_xds_modes! {
    async fn a_grpc_service_switches_and_canaries_with_no_failed_call(xds: Protocol) {
        let (Some(envoy_bin), Some(parts)) = (envoy_binary(), parts_or_skip()) else {
            return;
        };
        let upstreams = Upstreams::start(&parts, &["blue/1", "green/1"]).await;
        let s = GrpcStack::start(xds, &envoy_bin, &upstreams).await;
        let (listener, file) = (s.listener, &s.file);
        let mut client = GrpcClient::direct(&parts, listener).await;
        let before = client.calls(50).await;
        assert_eq!((before.of("blue"), before.errors), (50, 0), "{before:?}");

        // The switch lands while calls go on: blue until Envoy has green, then green only.
        file.write_renamed(&grpc_file(listener, &upstreams, "active: green"));
        let switch = client.until(&["green"], 50, WAIT).await;
        assert!(switch.done, "{switch:?}");
        assert_eq!(switch.errors, 0, "{switch:?}");

        // A canary at 50%: both answer, within a wide binomial band of 400 calls.
        file.write_renamed(&grpc_file(
            listener,
            &upstreams,
            "strategy: { canary: { stable: green, canary: blue, weight: 50 } }",
        ));
        let mixed = client.until(&["blue"], 1, WAIT).await;
        assert_eq!(mixed.errors, 0, "{mixed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let split = client.calls(400).await;
        assert_eq!(split.errors, 0, "{split:?}");
        // 50% of 400: mean 200, sd 10; ±60 is six sd.
        assert!((140..=260).contains(&split.of("blue")), "{split:?}");
        assert_eq!(split.of("blue") + split.of("green"), 400, "{split:?}");
        // Every call answered: Envoy spoke HTTP/2 to the upstreams (grpcio serves nothing
        // else). With `protocol: http1` it speaks HTTP/1.1 and every call fails.
        // That edit redefines the clusters: Envoy re-creates them and ACKs them only once they
        // have warmed, which needs their endpoints again, so those go right behind them (were
        // they sent after the ACK, the clusters would warm until Envoy's 15 s timeout).
        let edited = std::time::Instant::now();
        file.write_renamed(&file_with(listener, &upstreams, "http1", "active: green"));
        eventually(WAIT, "calls to fail over HTTP/1.1", async || {
            client.calls(1).await.errors == 1
        })
        .await;
        assert!(
            edited.elapsed() < Duration::from_secs(5),
            "the redefined clusters took {:?}",
            edited.elapsed()
        );
    }
}

in_both_xds_modes! {
    async fn a_grpc_canary_failing_its_calls_is_rolled_back_on_their_grpc_status(xds: Protocol) {
        let (Some(envoy_bin), Some(parts)) = (envoy_binary(), parts_or_skip()) else {
            return;
        };
        let mut upstreams = Upstreams::start(&parts, &["blue/1", "green/1"]).await;
        upstreams.fail("green/1").await;
        let s = GrpcStack::start(xds, &envoy_bin, &upstreams).await;
        let (listener, file, cutover) = (s.listener, &s.file, &s.cutover);
        let mut client = GrpcClient::direct(&parts, listener).await;
        assert_eq!(client.calls(20).await.errors, 0);

        // Ejections would hide the canary's failures behind its fallback to stable.
        let rollout = "strategy:
      canary:
        stable: blue
        canary: green
        steps: [50, 100]
        interval: 30s
        analysis: { interval: 1s, max_error_rate: 5%, min_requests: 10, failure_limit: 1 }
    outlier_detection: { enabled: false }";
        file.write_renamed(&grpc_file(listener, &upstreams, rollout));
        let started = std::time::Instant::now();
        let (mut calls, mut failed) = (0, 0);
        let report = loop {
            let batch = client.calls(20).await;
            calls += batch.calls;
            failed += batch.errors;
            let mut status = cutover.status().await;
            let r = status.services.remove("checkout").and_then(|s| s.rollout);
            match r {
                Some(r) if r.state == RolloutState::RolledBack => break r,
                r => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "not rolled back: {r:?}"
                ),
            }
        };
        assert!(failed > 0, "the canary's calls failed ({failed} of {calls})");
        let reason = report.reason.as_deref().unwrap();
        assert!(reason.starts_with("error rate "), "{report:?}");
        let check = report.last_check.as_ref().unwrap();
        assert!(check.errors > 0 && check.requests >= 10, "{check:?}");

        // Stable answers every call from now on.
        cutover.wait_in_sync("edge-1").await;
        let after = client.until(&["blue"], 20, WAIT).await;
        assert!(after.done, "{after:?}");
        let after = client.calls(50).await;
        assert_eq!((after.of("blue"), after.errors), (50, 0), "{after:?}");
    }
}
