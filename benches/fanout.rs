//! Benchmark: the per-stream cost of a config change, without sockets.
//!
//! N simulated Envoys (xDS state machines, each converged on a config of S services × 2
//! versions) receive a new snapshot that changes one route; every stream computes what to send,
//! gets the ACK, and reports to the client view after each step, as the server's stream task
//! does. Reports the time per stream per change, so that work done per stream that belongs per
//! config version shows up.
//!
//!     cargo bench --bench fanout                      # 200 streams, 500 services
//!     STREAMS=1000 SERVICES=1000 cargo bench --bench fanout
//!     CHANGE=endpoint cargo bench --bench fanout      # an endpoint moves instead of a route

use std::sync::Arc;
use std::time::Instant;

use cutover::app::compile;
use cutover::node::GroupId;
use cutover::snapshot::Snapshot;
use cutover::xds::ResourceType;
use cutover::xds::clients::{ClientUpdate, Clients};
use cutover::xds::sotw::{Event, Mode, Response, Stream};
use cutover::xds::stream::Machine as _;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `services` services, `flip` switched to green, and `moved`'s blue endpoint on another port.
fn deployment(services: usize, flip: usize, moved: usize) -> Arc<Snapshot> {
    let mut text =
        String::from("listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n");
    for s in 0..services {
        text.push_str(&format!(
            "      - match: {{ prefix: /s{s}/ }}\n        service: s{s}\n"
        ));
    }
    text.push_str("services:\n");
    for s in 0..services {
        let active = if s == flip { "green" } else { "blue" };
        let port = 20000 + 2 * s + if s == moved { 10_000 } else { 0 };
        text.push_str(&format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:{port}] }}\n      green: {{ endpoints: [127.0.0.1:{}] }}\n    active: {active}\n",
            port + 1
        ));
    }
    Arc::new(compile("bench.yaml", &text).expect("a valid generated deployment"))
}

fn request(ty: ResourceType, r: Option<&Response>, names: &[String]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url().to_owned(),
        version_info: r.map(|r| r.version.clone()).unwrap_or_default(),
        response_nonce: r.map(|r| r.nonce.clone()).unwrap_or_default(),
        resource_names: names.to_vec(),
        ..Default::default()
    }
}

/// Drives a stream to convergence the way Envoy would, answering every response with an ACK.
fn converge(stream: &mut Stream, first: Vec<DiscoveryRequest>, clusters: &[String]) {
    let mut queue = first;
    let routes = vec!["public".to_owned()];
    while let Some(req) = queue.pop() {
        for r in stream.on_request(&req).responses {
            let names: &[String] = match r.ty {
                ResourceType::Endpoint => clusters,
                ResourceType::Route => &routes,
                _ => &[],
            };
            match r.ty {
                ResourceType::Cluster => {
                    queue.push(request(ResourceType::Endpoint, None, clusters))
                }
                ResourceType::Listener => queue.push(request(ResourceType::Route, None, &routes)),
                _ => {}
            }
            queue.insert(0, request(r.ty, Some(&r), names));
        }
    }
}

fn main() {
    let streams = env("STREAMS", 200);
    let services = env("SERVICES", 500);
    // CHANGE=route (default): one route switches colour; CHANGE=endpoint: one endpoint moves
    // (every stream's endpoints response, of all the clusters' endpoints, changes).
    let change = std::env::var("CHANGE").unwrap_or_else(|_| "route".to_owned());
    let before = deployment(services, usize::MAX, usize::MAX);
    let after = match change.as_str() {
        "route" => deployment(services, 0, usize::MAX),
        "endpoint" => deployment(services, usize::MAX, 0),
        other => panic!("CHANGE={other}: route or endpoint"),
    };
    let clusters: Vec<String> = before
        .resources(ResourceType::Cluster)
        .keys()
        .cloned()
        .collect();

    let mut all: Vec<Stream> = (0..streams)
        .map(|_| {
            let mut s = Stream::new(Mode::Aggregated);
            s.on_snapshot(before.clone());
            converge(
                &mut s,
                vec![
                    request(ResourceType::Cluster, None, &[]),
                    request(ResourceType::Listener, None, &[]),
                ],
                &clusters,
            );
            assert!(s.in_sync());
            s
        })
        .collect();

    let clients = Clients::new(Default::default());
    let group = GroupId::all();
    let report = |id: u64, s: &Stream, events: &[Event]| {
        clients.update(
            id,
            ClientUpdate {
                node: s.node(),
                group: Some(&group),
                config_version: s.snapshot_version(),
                changed_at: None,
                sync: s.sync_state(),
                view: s.view(),
                events,
            },
        )
    };
    let ids: Vec<u64> = all
        .iter()
        .map(|s| {
            let id = clients.connect(Mode::Aggregated, None);
            report(id, s, &[]);
            id
        })
        .collect();

    let started = Instant::now();
    let mut bytes = 0;
    for (s, id) in all.iter_mut().zip(&ids) {
        let out = s.on_snapshot(after.clone());
        report(*id, s, &out.events);
        for r in &out.responses {
            bytes += r.resources.iter().map(|x| x.encoded.len()).sum::<usize>();
        }
        let r = out.responses.last().expect("the change").clone();
        let names = match r.ty {
            ResourceType::Endpoint => clusters.clone(),
            _ => vec!["public".to_owned()],
        };
        let ack = s.on_request(&request(r.ty, Some(&r), &names));
        report(*id, s, &ack.events);
    }
    let elapsed = started.elapsed();
    assert!(all.iter().all(Stream::in_sync));
    println!("streams               {streams}");
    println!(
        "config                {services} services, {} clusters, {} KiB encoded",
        clusters.len(),
        after.encoded_len() / 1024
    );
    println!(
        "change                {}, pushed to every stream and ACKed",
        match change.as_str() {
            "route" => "one route (RDS only)",
            _ => "one endpoint (EDS only, every cluster's endpoints in the response)",
        }
    );
    println!(
        "time                  {:.2} ms for all streams, {:.1} µs per stream ({} KiB of resources referenced)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / streams as f64,
        bytes / 1024
    );
}
