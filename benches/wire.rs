//! Benchmark: bytes on the wire per change, state of the world against delta.
//!
//! One simulated Envoy per protocol (the test kit's fake Envoy on the pure protocol machine: it
//! subscribes to the endpoints of the clusters and the routes of the listeners it holds, and
//! ACKs, as Envoy does) is converged on a config of S services × 2 versions, then each change
//! below is published. Counted: the gRPC messages cutover sends (5 bytes of framing each plus
//! the message as the server's codec encodes it) until the Envoy is in sync again. Requests from
//! Envoy are not counted (a few dozen bytes each, alike in both protocols).
//!
//!     cargo bench --bench wire                  # 1000 services
//!     SERVICES=100 cargo bench --bench wire

use std::sync::Arc;

use cutover::app::compile;
use cutover::snapshot::Snapshot;
use cutover::testing::Protocol;
use cutover::testing::xds::in_process::{Machine, exchange};
use cutover::testing::xds::{FakeEnvoy, Request};
use cutover::xds::clients::SyncState;
use cutover::xds::codec::EncodeResponse;
use cutover::xds::{Mode, ResourceType, delta, sotw};

/// gRPC's length-prefixed message framing: a flag byte and a 4-byte length.
const FRAME: usize = 5;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What can differ between the configs the changes go through.
#[derive(Clone, Default)]
struct Edit {
    /// Service 0's active version is green.
    switch: bool,
    /// Service 0's blue has a second endpoint.
    endpoint: bool,
    /// Service 0 has a third version, `canary`.
    version: bool,
}

fn deployment(services: usize, edit: &Edit) -> Arc<Snapshot> {
    let mut text =
        String::from("listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n");
    for s in 0..services {
        text.push_str(&format!(
            "      - match: {{ prefix: /s{s}/ }}\n        service: s{s}\n"
        ));
    }
    text.push_str("services:\n");
    for s in 0..services {
        let port = 20000 + 3 * s;
        let mut blue = format!("127.0.0.1:{port}");
        if s == 0 && edit.endpoint {
            blue.push_str(", 127.0.0.1:19999");
        }
        let active = if s == 0 && edit.switch {
            "green"
        } else {
            "blue"
        };
        text.push_str(&format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n      green: {{ endpoints: [127.0.0.1:{}] }}\n",
            port + 1
        ));
        if s == 0 && edit.version {
            text.push_str(&format!(
                "      canary: {{ endpoints: [127.0.0.1:{}] }}\n",
                port + 2
            ));
        }
        text.push_str(&format!("    active: {active}\n"));
    }
    Arc::new(compile("bench.yaml", &text).expect("a valid generated deployment"))
}

/// (bytes, messages) cutover sent.
type Cost = (usize, usize);

/// What cutover sends `envoy` on `stream` until both are quiet, starting from `responses` it
/// just made and `requests` from the Envoy.
fn cost<M: Machine>(
    stream: &mut M,
    envoy: &mut FakeEnvoy,
    responses: Vec<M::Response>,
    requests: Vec<Request>,
) -> Cost {
    let (mut bytes, mut messages) = (0, 0);
    exchange(stream, envoy, responses, requests, |r| {
        let mut buf = Vec::new();
        r.encode_to(&mut buf);
        bytes += FRAME + buf.len();
        messages += 1;
    });
    assert_eq!(stream.sync_state(), SyncState::InSync);
    (bytes, messages)
}

/// One protocol's column: the cost of the first connection, of each change (each made on top of
/// the one before) and of each reconnect (a new stream serving that snapshot).
fn column<M: Machine>(
    protocol: Protocol,
    first: &Arc<Snapshot>,
    changes: &[Arc<Snapshot>],
    reconnects: &[Arc<Snapshot>],
) -> Vec<Cost> {
    let mut envoy = FakeEnvoy::new(protocol);
    let mut stream = M::new(Mode::Aggregated);
    stream.on_snapshot(first.clone());
    let start = envoy.start();
    let mut out = vec![cost(&mut stream, &mut envoy, Vec::new(), start)];
    for snap in changes {
        let responses = stream.on_snapshot(snap.clone()).responses;
        out.push(cost(&mut stream, &mut envoy, responses, Vec::new()));
    }
    // cutover restarts: the Envoy reconnects to a new stream.
    for snap in reconnects {
        let mut stream = M::new(Mode::Aggregated);
        stream.on_snapshot(snap.clone());
        let requests = envoy.reconnect();
        out.push(cost(&mut stream, &mut envoy, Vec::new(), requests));
    }
    out
}

fn main() {
    let services = env("SERVICES", 1000);
    let steady = Edit::default();
    // Each change is made on top of the one before.
    let switched = Edit {
        switch: true,
        ..Edit::default()
    };
    let more_endpoints = Edit {
        endpoint: true,
        ..switched.clone()
    };
    let with_canary = Edit {
        version: true,
        ..more_endpoints.clone()
    };
    let changes: Vec<(&str, Edit)> = vec![
        ("switch one service (blue-green): its routes", switched),
        ("add an endpoint to one version", more_endpoints.clone()),
        ("add a version to one service (idle)", with_canary),
        ("remove that version again", more_endpoints),
    ];
    let first = deployment(services, &steady);
    println!(
        "config: {services} services, {} clusters, {} KiB of encoded resources",
        first.resources(ResourceType::Cluster).len(),
        first.encoded_len() / 1024
    );

    // cutover restarts: the Envoy reconnects, to the same config, then to one with a version
    // added meanwhile.
    let last = changes[changes.len() - 1].1.clone();
    let reconnects = [
        (
            "reconnect, nothing changed meanwhile",
            deployment(services, &last),
        ),
        (
            "reconnect, a version added meanwhile",
            deployment(
                services,
                &Edit {
                    version: true,
                    ..last
                },
            ),
        ),
    ];
    let snapshots: Vec<Arc<Snapshot>> = changes
        .iter()
        .map(|(_, edit)| deployment(services, edit))
        .collect();
    let restarted: Vec<Arc<Snapshot>> = reconnects.iter().map(|(_, s)| s.clone()).collect();
    let sotw = column::<sotw::Stream>(Protocol::Sotw, &first, &snapshots, &restarted);
    let delta = column::<delta::Stream>(Protocol::Delta, &first, &snapshots, &restarted);

    println!();
    println!("| change | state of the world | delta | delta / sotw |\n|---|---:|---:|---:|");
    let rows = std::iter::once("first connection")
        .chain(changes.iter().map(|(what, _)| *what))
        .chain(reconnects.iter().map(|(what, _)| *what));
    for (what, ((sb, sm), (db, dm))) in rows.zip(sotw.into_iter().zip(delta)) {
        println!(
            "| {what} | {} in {sm} messages | {} in {dm} messages | {:.4} |",
            human(sb),
            human(db),
            db as f64 / sb as f64
        );
    }
}

fn human(bytes: usize) -> String {
    if bytes >= 10 * 1024 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}
