//! End to end with real proxyless gRPC clients: gRPC's own xDS clients, Python `grpcio` and
//! Node `@grpc/grpc-js-xds` (each test runs once with each, `name::python`, `name::node`), dial
//! `xds:///checkout` with the bootstrap `cutover bootstrap --grpc` prints, and call real gRPC
//! upstreams through the config a real `cutover serve` gives them: a canary's weights, a
//! blue-green switch and a drain, each with the calls made while the change happens counted,
//! not one of which may fail. See `testing::proxyless` for the clients and upstreams.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cutover::testing;
use cutover::testing::proxyless::{ClientKind, GrpcClient, Parts, Upstreams, parts_or_skip};
use cutover::testing::{Cutover, DeploymentFile, WAIT};

/// Each test once per real client.
macro_rules! with_each_client {
    ($(async fn $name:ident($kind:ident: ClientKind) $body:block)*) => {$(
        mod $name {
            use super::*;

            async fn run($kind: ClientKind) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn python() {
                run(ClientKind::Python).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn node() {
                run(ClientKind::Node).await;
            }
        }
    )*};
}

/// Calls in a row from the new side that say a change has reached the client.
const SETTLED: u64 = 50;

/// The deployment: proxyless listener `checkout` routing gRPC service `shop.Checkout` to
/// service `checkout`; blue on `blue/1` (draining if `drain_blue_1`) and `blue/2`, green on
/// `green/1`; `strategy` is the service's strategy line(s).
fn deployment(up: &Upstreams, strategy: &str, drain_blue_1: bool) -> String {
    format!(
        "\
# Written by tests/proxyless_clients.rs.
listeners:
  - name: checkout
    proxyless: true
    routes:
      - match: {{ prefix: /shop.Checkout/ }}
        service: checkout
services:
  checkout:
    versions:
      blue:  {{ endpoints: [{{ address: {b1}, drain: {drain_blue_1} }}, {b2}] }}
      green: {{ endpoints: [{g1}] }}
    {strategy}
",
        b1 = up.addr("blue/1"),
        b2 = up.addr("blue/2"),
        g1 = up.addr("green/1"),
    )
}

fn canary(weight: u32) -> String {
    format!("strategy: {{ canary: {{ stable: blue, canary: green, weight: {weight} }} }}")
}

/// Upstreams, cutover serving `strategy`, and one client of `kind` started from the bootstrap
/// `cutover bootstrap --grpc` printed.
struct Setup {
    dir: tempfile::TempDir,
    file: DeploymentFile,
    cutover: Cutover,
    upstreams: Upstreams,
    client: GrpcClient,
    node: String,
}

impl Setup {
    async fn start(parts: &Parts, kind: ClientKind, strategy: &str) -> Setup {
        Setup::start_in(parts, kind, strategy, false).await
    }

    /// [`Setup::start`] with `mutual_tls`: cutover serves mutual TLS, and the client's
    /// bootstrap (`cutover bootstrap --grpc --tls-*`) has gRPC's `tls` channel credentials with
    /// a certificate whose DNS name is the client's node id.
    async fn start_in(parts: &Parts, kind: ClientKind, strategy: &str, mutual_tls: bool) -> Setup {
        let dir = tempfile::tempdir().expect("temporary directory");
        let upstreams = Upstreams::start(parts, &["blue/1", "blue/2", "green/1"]).await;
        let file = DeploymentFile {
            path: dir.path().join("deploy.yaml"),
        };
        file.write_renamed(&deployment(&upstreams, strategy, false));
        let node = format!("grpc-{kind:?}").to_lowercase();
        let mut serve_args = Vec::new();
        let mut bootstrap_args = Vec::new();
        if mutual_tls {
            let ca = testing::pki::Ca::new("proxyless CA");
            let server = ca.write(dir.path(), "cutover", &ca.server(&["127.0.0.1"]));
            let client = ca.write(dir.path(), &node, &ca.client(&[&node]));
            let path = |p: &Path| p.display().to_string();
            serve_args = vec![
                "--tls-cert".to_owned(),
                path(&server.cert),
                "--tls-key".into(),
                path(&server.key),
                "--tls-client-ca".into(),
                path(&server.ca),
            ];
            bootstrap_args = vec![
                "--tls-ca".to_owned(),
                path(&client.ca),
                "--tls-cert".into(),
                path(&client.cert),
                "--tls-key".into(),
                path(&client.key),
            ];
        }
        let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
        let cutover = Cutover::start_with_args(dir.path(), &file.path, &serve_args).await;
        let bootstrap = dir.path().join("xds-bootstrap.json");
        std::fs::write(
            &bootstrap,
            grpc_bootstrap(&node, cutover.ads, &bootstrap_args),
        )
        .unwrap();
        let client = GrpcClient::start(parts, kind, "checkout", &bootstrap).await;
        Setup {
            dir,
            file,
            cutover,
            upstreams,
            client,
            node,
        }
    }

    /// Saves the file with `strategy`; returns when cutover has read it (the client is not
    /// waited for: the caller's calls measure that).
    async fn save(&self, strategy: &str, drain_blue_1: bool) -> Instant {
        let before = self.cutover.last_reload().await;
        let saved = Instant::now();
        self.file
            .write_renamed(&deployment(&self.upstreams, strategy, drain_blue_1));
        testing::wait_for(WAIT, "cutover to read the file", async || {
            let now = self.cutover.last_reload().await;
            if now != before {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        })
        .await;
        saved
    }

    /// cutover's `/status` shows the client in sync with the current config: it answered
    /// (ACKed) what it asked for, so it does not hold back retirements or rollouts.
    async fn wait_client_in_sync(&self) {
        let node = &self.node;
        testing::wait_for(WAIT, &format!("{node} in sync in /status"), async || {
            let status = self.cutover.try_status().await?;
            let in_sync = status
                .nodes
                .iter()
                .any(|n| n.id == *node && n.in_sync && n.config_version == status.config_version);
            if in_sync {
                Ok(())
            } else {
                Err(format!("{:?}", status.nodes))
            }
        })
        .await;
    }
}

/// What `cutover bootstrap --grpc` prints for `node` and cutover's ADS address.
fn grpc_bootstrap(node: &str, ads: std::net::SocketAddr, args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["bootstrap", "--grpc", "--node-id", node, "--ads"])
        .arg(ads.to_string())
        .args(args)
        .output()
        .expect("run cutover bootstrap --grpc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 bootstrap")
}

fn report(kind: ClientKind, what: &str, value: impl std::fmt::Display) {
    // Measured figures, for the README and the record; `--nocapture` shows them.
    eprintln!("proxyless {kind:?}: {what}: {value}");
}

with_each_client! {
    async fn calls_follow_a_canary_from_0_to_50_to_100_percent(kind: ClientKind) {
        let Some(parts) = parts_or_skip() else {
            return;
        };
        let mut s = Setup::start(&parts, kind, &canary(0)).await;
        let calls = s.client.calls(200).await;
        assert_eq!((calls.of("blue"), calls.errors), (200, 0), "canary at 0%: {calls:?}");
        s.wait_client_in_sync().await;

        let saved = s.save(&canary(50), false).await;
        let first = s.client.until(&["green"], 1, WAIT).await;
        assert!(first.done, "no call reached the canary at 50%: {first:?}");
        report(kind, "0% -> 50%: first call on the canary after (ms)", saved.elapsed().as_millis());
        let calls = s.client.calls(400).await;
        let green = calls.of("green");
        assert_eq!(calls.errors + first.errors, 0, "{first:?} {calls:?}");
        // 400 calls at 50%: outside 140..=260 happens with probability ~1e-9.
        assert!((140..=260).contains(&green), "canary at 50%: {calls:?}");
        assert_eq!(calls.answered(), 400);
        report(kind, "split at 50% (green of 400)", green);
        s.wait_client_in_sync().await;

        let saved = s.save(&canary(100), false).await;
        let moved = s.client.until(&["green"], SETTLED, WAIT).await;
        assert!(moved.done, "the canary at 100% never got every call: {moved:?}");
        assert_eq!(moved.errors, 0, "{moved:?}");
        report(kind, "50% -> 100%: every call on the canary after (ms)", saved.elapsed().as_millis());
        let calls = s.client.calls(200).await;
        assert_eq!((calls.of("green"), calls.errors), (200, 0), "canary at 100%: {calls:?}");
        s.wait_client_in_sync().await;
        drop(s.dir);
    }

    async fn a_blue_green_switch_moves_every_call_and_fails_none(kind: ClientKind) {
        let Some(parts) = parts_or_skip() else {
            return;
        };
        let mut s = Setup::start(&parts, kind, "active: blue").await;
        let calls = s.client.calls(100).await;
        assert_eq!((calls.of("blue"), calls.errors), (100, 0), "{calls:?}");
        // In sync although it never asked for green's cluster (the idle colour).
        s.wait_client_in_sync().await;

        let saved = s.save("active: green", false).await;
        let moved = s.client.until(&["green"], SETTLED, WAIT).await;
        assert!(moved.done, "calls never all went to green: {moved:?}");
        assert_eq!(moved.errors, 0, "a call failed during the switch: {moved:?}");
        report(kind, "blue -> green: every call on green after (ms)", saved.elapsed().as_millis());
        report(kind, "calls during the switch (all answered)", moved.calls);
        s.wait_client_in_sync().await;

        let saved = s.save("active: blue", false).await;
        let back = s.client.until(&["blue"], SETTLED, WAIT).await;
        assert!(back.done && back.errors == 0, "switch back: {back:?}");
        report(kind, "green -> blue: every call on blue after (ms)", saved.elapsed().as_millis());
        let calls = s.client.calls(100).await;
        assert_eq!((calls.of("blue"), calls.errors), (100, 0), "{calls:?}");
    }

    async fn a_draining_endpoint_gets_no_more_calls_and_none_fails(kind: ClientKind) {
        let Some(parts) = parts_or_skip() else {
            return;
        };
        let mut s = Setup::start(&parts, kind, "active: blue").await;
        let calls = s.client.calls(100).await;
        assert!(
            calls.tally.get("blue/1") > Some(&0) && calls.tally.get("blue/2") > Some(&0),
            "round robin over both blue endpoints: {calls:?}"
        );

        let saved = s.save("active: blue", true).await;
        let drained = s.client.until(&["blue/2"], SETTLED, WAIT).await;
        assert!(drained.done, "blue/1 kept getting calls: {drained:?}");
        assert_eq!(drained.errors, 0, "{drained:?}");
        report(kind, "drain: blue/1 out of rotation after (ms)", saved.elapsed().as_millis());
        s.wait_client_in_sync().await;

        // Gone for good: stopping it costs no call.
        s.upstreams.stop("blue/1").await;
        let calls = s.client.calls(200).await;
        assert_eq!(
            (calls.tally.get("blue/2").copied(), calls.errors),
            (Some(200), 0),
            "{calls:?}"
        );
        assert!(Path::new(&s.file.path).exists());
    }
}

/// grpcio over mutual TLS with the `tls` channel credentials `cutover bootstrap --grpc --tls-*`
/// writes (gRFC A65). Python only: grpc-js-xds 1.14 does not accept `tls` channel credentials
/// in its bootstrap (it fails to load it), so Node clients reach cutover in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_over_mutual_tls_resolves_and_follows_a_switch() {
    let Some(parts) = parts_or_skip() else {
        return;
    };
    // cutover serves mutual TLS only: a call answered is a call resolved over TLS.
    let mut s = Setup::start_in(&parts, ClientKind::Python, "active: blue", true).await;
    let calls = s.client.calls(50).await;
    assert_eq!((calls.of("blue"), calls.errors), (50, 0), "{calls:?}");
    s.wait_client_in_sync().await;
    s.save("active: green", false).await;
    let moved = s.client.until(&["green"], SETTLED, WAIT).await;
    assert!(moved.done && moved.errors == 0, "{moved:?}");
    s.wait_client_in_sync().await;
}
