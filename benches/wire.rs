//! Benchmark: bytes on the wire per change, state of the world against delta.
//!
//! One simulated Envoy per protocol (the pure protocol machine, answered the way Envoy answers:
//! it subscribes to the endpoints of the clusters and the routes of the listeners it holds, and
//! ACKs) is converged on a config of S services × 2 versions, then each change below is
//! published. Counted: the gRPC messages cutover sends (5 bytes of framing each plus the message
//! as the server's codec encodes it) until the Envoy is in sync again. Requests from Envoy are
//! not counted (a few dozen bytes each, alike in both protocols).
//!
//!     cargo bench --bench wire                  # 1000 services
//!     SERVICES=100 cargo bench --bench wire

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cutover::app::compile;
use cutover::snapshot::Snapshot;
use cutover::xds::codec::{encode_delta_response, encode_response};
use cutover::xds::{Mode, ResourceType, delta, sotw};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

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

/// A state-of-the-world Envoy: (bytes, messages) sent by cutover until quiet.
#[derive(Default)]
struct SotwEnvoy {
    clusters: BTreeSet<String>,
    listeners: bool,
    /// The version of each type it holds, for a reconnect.
    versions: BTreeMap<ResourceType, String>,
}

impl SotwEnvoy {
    fn request(
        ty: ResourceType,
        r: Option<&sotw::Response>,
        names: Vec<String>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().to_owned(),
            version_info: r.map(|r| r.version.clone()).unwrap_or_default(),
            response_nonce: r.map(|r| r.nonce.clone()).unwrap_or_default(),
            resource_names: names,
            ..Default::default()
        }
    }

    fn names(&self, ty: ResourceType) -> Vec<String> {
        match ty {
            ResourceType::Endpoint => self.clusters.iter().cloned().collect(),
            ResourceType::Route if self.listeners => vec!["public".to_owned()],
            _ => Vec::new(),
        }
    }

    fn run(
        &mut self,
        s: &mut sotw::Stream,
        mut out: Vec<sotw::Response>,
        mut queue: Vec<DiscoveryRequest>,
    ) -> (usize, usize) {
        let (mut bytes, mut messages) = (0, 0);
        loop {
            for r in out.drain(..) {
                let mut buf = Vec::new();
                encode_response(&r, &mut buf);
                bytes += FRAME + buf.len();
                messages += 1;
                let dependent = match r.ty {
                    ResourceType::Cluster => {
                        self.clusters = r.resources.iter().map(|c| c.name.clone()).collect();
                        Some(ResourceType::Endpoint)
                    }
                    ResourceType::Listener => {
                        self.listeners = true;
                        Some(ResourceType::Route)
                    }
                    _ => None,
                };
                if let Some(dep) = dependent {
                    queue.push(Self::request(dep, None, self.names(dep)));
                }
                queue.push(Self::request(r.ty, Some(&r), self.names(r.ty)));
                self.versions.insert(r.ty, r.version.clone());
                if r.ty == ResourceType::Endpoint && !self.listeners {
                    queue.push(Self::request(ResourceType::Listener, None, Vec::new()));
                }
            }
            if queue.is_empty() {
                return (bytes, messages);
            }
            out = s.on_request(&queue.remove(0)).responses;
        }
    }
}

impl SotwEnvoy {
    /// The first requests on a new stream: every type again, with the version it holds.
    fn reconnect(&self) -> Vec<DiscoveryRequest> {
        ResourceType::ALL
            .into_iter()
            .map(|ty| DiscoveryRequest {
                version_info: self.versions[&ty].clone(),
                ..Self::request(ty, None, self.names(ty))
            })
            .collect()
    }
}

/// A delta Envoy: (bytes, messages) sent by cutover until quiet.
#[derive(Default)]
struct DeltaEnvoy {
    clusters: BTreeSet<String>,
    listeners: bool,
    /// The version of each resource it holds, for a reconnect.
    held: BTreeMap<ResourceType, BTreeMap<String, String>>,
}

impl DeltaEnvoy {
    fn request(
        ty: ResourceType,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.type_url().to_owned(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        }
    }

    fn run(
        &mut self,
        s: &mut delta::Stream,
        mut out: Vec<delta::Response>,
        mut queue: Vec<DeltaDiscoveryRequest>,
    ) -> (usize, usize) {
        let (mut bytes, mut messages) = (0, 0);
        loop {
            for r in out.drain(..) {
                let mut buf = Vec::new();
                encode_delta_response(&r, &mut buf);
                bytes += FRAME + buf.len();
                messages += 1;
                match r.ty {
                    ResourceType::Cluster => {
                        let before = self.clusters.clone();
                        for name in &r.removed {
                            self.clusters.remove(name);
                        }
                        self.clusters
                            .extend(r.resources.iter().map(|c| c.name.clone()));
                        let add = self.clusters.difference(&before).cloned().collect();
                        let remove = before.difference(&self.clusters).cloned().collect();
                        queue.push(Self::request(ResourceType::Endpoint, add, remove));
                    }
                    ResourceType::Listener if !self.listeners => {
                        self.listeners = true;
                        queue.push(Self::request(
                            ResourceType::Route,
                            vec!["public".to_owned()],
                            Vec::new(),
                        ));
                    }
                    _ => {}
                }
                let held = self.held.entry(r.ty).or_default();
                for name in &r.removed {
                    held.remove(name);
                }
                for res in &r.resources {
                    held.insert(res.name.clone(), res.version.clone());
                }
                queue.push(DeltaDiscoveryRequest {
                    response_nonce: r.nonce.clone(),
                    ..Self::request(r.ty, Vec::new(), Vec::new())
                });
                if r.ty == ResourceType::Endpoint && !self.listeners {
                    queue.push(Self::request(
                        ResourceType::Listener,
                        Vec::new(),
                        Vec::new(),
                    ));
                }
            }
            if queue.is_empty() {
                return (bytes, messages);
            }
            out = s.on_request(&queue.remove(0)).responses;
        }
    }
}

impl DeltaEnvoy {
    /// The first requests on a new stream: every subscription again, and what it holds.
    fn reconnect(&self) -> Vec<DeltaDiscoveryRequest> {
        ResourceType::ALL
            .into_iter()
            .map(|ty| {
                let subscribe = match ty {
                    ResourceType::Endpoint => self.clusters.iter().cloned().collect(),
                    ResourceType::Route => vec!["public".to_owned()],
                    _ => Vec::new(),
                };
                DeltaDiscoveryRequest {
                    initial_resource_versions: self.held[&ty]
                        .iter()
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect(),
                    ..Self::request(ty, subscribe, Vec::new())
                }
            })
            .collect()
    }
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

    let mut sotw_stream = sotw::Stream::new(Mode::Aggregated);
    let mut sotw_envoy = SotwEnvoy::default();
    sotw_stream.on_snapshot(first.clone());
    let initial_sotw = sotw_envoy.run(
        &mut sotw_stream,
        Vec::new(),
        vec![SotwEnvoy::request(ResourceType::Cluster, None, Vec::new())],
    );
    let mut delta_stream = delta::Stream::new(Mode::Aggregated);
    let mut delta_envoy = DeltaEnvoy::default();
    delta_stream.on_snapshot(first.clone());
    let initial_delta = delta_envoy.run(
        &mut delta_stream,
        Vec::new(),
        vec![DeltaEnvoy::request(
            ResourceType::Cluster,
            Vec::new(),
            Vec::new(),
        )],
    );
    assert!(sotw_stream.in_sync() && delta_stream.in_sync());

    println!();
    println!("| change | state of the world | delta | delta / sotw |\n|---|---:|---:|---:|");
    let row = |what: &str, (sb, sm): (usize, usize), (db, dm): (usize, usize)| {
        println!(
            "| {what} | {} in {sm} messages | {} in {dm} messages | {:.4} |",
            human(sb),
            human(db),
            db as f64 / sb as f64
        );
    };
    row("first connection", initial_sotw, initial_delta);
    for (what, edit) in &changes {
        let snap = deployment(services, edit);
        let out = sotw_stream.on_snapshot(snap.clone()).responses;
        let sotw_cost = sotw_envoy.run(&mut sotw_stream, out, Vec::new());
        let out = delta_stream.on_snapshot(snap.clone()).responses;
        let delta_cost = delta_envoy.run(&mut delta_stream, out, Vec::new());
        assert!(sotw_stream.in_sync(), "{what}: state of the world in sync");
        assert!(delta_stream.in_sync(), "{what}: delta in sync");
        row(what, sotw_cost, delta_cost);
    }

    // cutover restarts: the Envoy reconnects, to the same config, then to one with an endpoint
    // added meanwhile.
    let same = deployment(services, &changes[changes.len() - 1].1);
    let moved = deployment(
        services,
        &Edit {
            version: true,
            ..changes[changes.len() - 1].1.clone()
        },
    );
    for (what, snap) in [
        ("reconnect, nothing changed meanwhile", same),
        ("reconnect, a version added meanwhile", moved),
    ] {
        let mut s = sotw::Stream::new(Mode::Aggregated);
        s.on_snapshot(snap.clone());
        let sotw_cost = sotw_envoy.run(&mut s, Vec::new(), sotw_envoy.reconnect());
        assert!(s.in_sync(), "{what}: state of the world in sync");
        sotw_stream = s;
        let mut d = delta::Stream::new(Mode::Aggregated);
        d.on_snapshot(snap.clone());
        let delta_cost = delta_envoy.run(&mut d, Vec::new(), delta_envoy.reconnect());
        assert!(d.in_sync(), "{what}: delta in sync");
        delta_stream = d;
        row(what, sotw_cost, delta_cost);
    }
    drop((sotw_stream, delta_stream));
}

fn human(bytes: usize) -> String {
    if bytes >= 10 * 1024 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}
