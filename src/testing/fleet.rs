//! A fleet of simulated Envoys: N real ADS gRPC streams over loopback, each behaving as Envoy
//! does on the wire (state of the world or delta): it subscribes to every cluster and listener,
//! to the endpoints of its clusters and the routes of its listeners, ACKs every response, and
//! reconnects when its stream ends. For the fleet benchmark (`benches/fleet.rs`) and its smoke
//! test.
//!
//! What a stream must hold is given as a [`Target`] (what cutover serves, compiled from the same
//! file by the library); each stream records the moment it first holds all of it, so that the
//! driver can time "file saved → every Envoy has ACKed" without asking cutover.
//!
//! A stream is the kit's [`Client`] (its gRPC stream, plaintext or TLS) with a loop of its own
//! instead of the [`FakeEnvoy`]'s answers: the fake Envoy decodes every
//! resource to check it, which for thousands of streams sharing two cores with cutover would
//! take the CPU the benchmark measures. These streams decode nothing: the names they subscribe
//! to come from the target, and state of the world is checked by the versions ACKed, delta by
//! each resource's version. Their CPU cost is thereby small next to cutover's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Protocol;
use super::xds::{
    Client, FakeEnvoy, Raw, Request, channel, delta_request, dependent, sotw_request,
};
use crate::snapshot::Snapshot;
use crate::xds::{Mode, ResourceType};

/// What every stream must hold: per type, the version of the whole set (state of the world)
/// and each resource's version (delta).
#[derive(Debug, Default)]
pub struct Target {
    pub generation: u64,
    versions: [String; ResourceType::COUNT],
    resources: [BTreeMap<String, String>; ResourceType::COUNT],
}

impl Target {
    pub fn of(snapshot: &Snapshot, generation: u64) -> Target {
        Target {
            generation,
            // A simulated Envoy asks for secrets only when its listeners name some.
            versions: ResourceType::ALL.map(|ty| match ty {
                ResourceType::Secret if snapshot.resources(ty).is_empty() => String::new(),
                _ => snapshot.type_version(ty).to_owned(),
            }),
            resources: ResourceType::ALL.map(|ty| {
                snapshot
                    .resources(ty)
                    .iter()
                    .map(|(n, r)| (n.clone(), r.version.clone()))
                    .collect()
            }),
        }
    }

    /// The target of a deployment file's text: what cutover serves for it (compiled by the
    /// library, as the server does).
    pub fn compile(text: &str, generation: u64) -> Arc<Target> {
        let snapshot = crate::app::compile("fleet.yaml", text).expect("a valid generated file");
        Arc::new(Target::of(&snapshot, generation))
    }

    /// The target of the deployment file at `path` with the PEM files it names, as the server
    /// loads it; and the encoded size of each secret, by name.
    pub fn load(path: &std::path::Path, generation: u64) -> (Arc<Target>, BTreeMap<String, usize>) {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("the deployment file");
        let spec = crate::spec::parse(&label, &text).expect("a valid file");
        let read = crate::watch::read_pem_files(path, &crate::spec::pem_paths(&spec));
        let (spec, _) =
            crate::spec::load_pem_files(spec, &label, &read, std::time::SystemTime::now())
                .expect("valid PEM files");
        let snapshot = crate::app::fresh_snapshot(&spec);
        let sizes = snapshot
            .resources(ResourceType::Secret)
            .iter()
            .map(|(n, r)| (n.clone(), r.encoded.len()))
            .collect();
        (Arc::new(Target::of(&snapshot, generation)), sizes)
    }

    fn names(&self, ty: ResourceType) -> Vec<String> {
        self.resources[ty.index()].keys().cloned().collect()
    }
}

/// The fleet's streams and when each last reached its target.
pub struct Fleet {
    tasks: JoinSet<()>,
    target: watch::Sender<Arc<Target>>,
    /// Per stream: nanoseconds after `base` at which it held the current target (0: not yet).
    synced: Arc<Vec<AtomicU64>>,
    /// Per stream: the generation `synced` is for.
    synced_generation: Arc<Vec<AtomicU64>>,
    /// Bumped to make every stream drop its connection and connect again.
    reconnect: watch::Sender<u64>,
    base: Instant,
}

/// Per-stream cost of the simulation's bookkeeping is a few atomics; the rest is tonic.
impl Fleet {
    /// Opens `n` streams to `ads`, one connection each as Envoys have, at most `parallel`
    /// connecting at a time; over TLS with `tls` (each stream its own TLS connection).
    pub async fn connect(
        ads: SocketAddr,
        n: usize,
        protocol: Protocol,
        target: Arc<Target>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Fleet {
        let (target_tx, target_rx) = watch::channel(target);
        let (reconnect, reconnect_rx) = watch::channel(0);
        let synced: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let synced_generation: Arc<Vec<AtomicU64>> =
            Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let base = Instant::now();
        let mut tasks = JoinSet::new();
        // Connections are opened in waves so that the accept queue never overflows.
        let wave = 256;
        for i in 0..n {
            let stream = StreamTask {
                index: i,
                ads,
                tls: tls.clone(),
                protocol,
                target: target_rx.clone(),
                reconnect: reconnect_rx.clone(),
                synced: synced.clone(),
                synced_generation: synced_generation.clone(),
                base,
            };
            tasks.spawn(stream.run());
            if i % wave == wave - 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Fleet {
            tasks,
            target: target_tx,
            synced,
            synced_generation,
            reconnect,
            base,
        }
    }

    /// How many streams it has.
    pub fn streams(&self) -> usize {
        self.synced.len()
    }

    /// Sets what every stream must hold from now on.
    pub fn set_target(&self, target: Arc<Target>) {
        self.target.send_replace(target);
    }

    /// Makes every stream drop its connection and connect again at once (a storm).
    pub fn reconnect_all(&self) {
        self.reconnect.send_modify(|g| *g += 1);
    }

    /// How many streams hold the current target.
    pub fn in_sync(&self) -> usize {
        let generation = self.target.borrow().generation;
        self.synced_generation
            .iter()
            .filter(|g| g.load(Ordering::Acquire) == generation)
            .count()
    }

    /// Waits until every stream holds the current target, at most `timeout`; the time from
    /// `since` to each stream's moment (sorted), or `Err` with how many got there.
    pub async fn converged(
        &self,
        since: Instant,
        timeout: Duration,
    ) -> Result<Vec<Duration>, usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.in_sync();
            if done == self.streams() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(done);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let since = super::whole_u64(since.saturating_duration_since(self.base).as_nanos());
        let mut out: Vec<Duration> = self
            .synced
            .iter()
            .map(|s| Duration::from_nanos(s.load(Ordering::Acquire).saturating_sub(since)))
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn close(mut self) {
        self.tasks.shutdown().await;
    }
}

struct StreamTask {
    index: usize,
    ads: SocketAddr,
    tls: Option<tonic::transport::ClientTlsConfig>,
    protocol: Protocol,
    target: watch::Receiver<Arc<Target>>,
    reconnect: watch::Receiver<u64>,
    synced: Arc<Vec<AtomicU64>>,
    synced_generation: Arc<Vec<AtomicU64>>,
    base: Instant,
}

/// What a stream holds across reconnects (what Envoy keeps when its connection drops).
#[derive(Default)]
struct Held {
    /// State of the world: the version ACKed per type.
    versions: [String; ResourceType::COUNT],
    /// Delta: each resource's version per type.
    resources: [BTreeMap<String, String>; ResourceType::COUNT],
}

impl StreamTask {
    async fn run(mut self) {
        let mut held = Held::default();
        loop {
            self.reconnect.mark_unchanged();
            let session = match self.protocol {
                Protocol::Sotw => self.sotw(&mut held).await,
                Protocol::Delta => self.delta(&mut held).await,
            };
            // Ended by the server (a restart) or a refused connection: try again soon, as
            // Envoy does (without its growing backoff: the benchmark times cutover).
            if session.is_err() {
                tokio::time::sleep(Duration::from_millis(50 + (self.index % 50) as u64)).await;
            }
        }
    }

    fn node(&self) -> Node {
        Node {
            id: format!("sim-{}", self.index),
            cluster: "fleet".into(),
            ..Default::default()
        }
    }

    fn record_if_synced(&self, held: &Held) {
        let target = self.target.borrow().clone();
        let holds = match self.protocol {
            Protocol::Sotw => held.versions == target.versions,
            Protocol::Delta => held.resources == target.resources,
        };
        let slot = &self.synced_generation[self.index];
        if holds && slot.load(Ordering::Acquire) != target.generation {
            let at = super::whole_u64(self.base.elapsed().as_nanos());
            self.synced[self.index].store(at, Ordering::Release);
            slot.store(target.generation, Ordering::Release);
        }
    }

    /// Opens this stream's ADS stream with `first` on its way.
    async fn open(&self, first: Vec<Request>) -> Result<Client, ()> {
        let channel = channel(self.ads, self.tls.clone()).await.map_err(|_| ())?;
        let envoy = FakeEnvoy::named(self.protocol, self.node());
        Client::open_sending(channel, Mode::Aggregated, envoy, first)
            .await
            .map_err(|_| ())
    }

    /// The next response on `client` of a type it knows, and that type; `None` when every
    /// stream is told to reconnect, `Err` when the stream ends. A new target only wakes it: it may complete nothing by itself, and
    /// is checked on answers.
    async fn next(&mut self, client: &mut Client) -> Result<Option<(ResourceType, Raw)>, ()> {
        loop {
            let r = tokio::select! {
                r = client.message() => match r {
                    Ok(Some(r)) => r,
                    _ => return Err(()),
                },
                _ = self.reconnect.changed() => return Ok(None),
                _ = self.target.changed() => continue,
            };
            let url = match &r {
                Raw::Sotw(r) => &r.type_url,
                Raw::Delta(r) => &r.type_url,
            };
            if let Some(ty) = ResourceType::from_type_url(url) {
                return Ok(Some((ty, r)));
            }
        }
    }

    /// One state-of-the-world session; `Err` when the stream ends.
    async fn sotw(&mut self, held: &mut Held) -> Result<(), ()> {
        // Every request names the node, as these streams always have (their figures compare).
        let node = self.node();
        let request = |ty: ResourceType, version: &str, nonce: &str, names: Vec<String>| {
            Request::Sotw(DiscoveryRequest {
                resource_names: names,
                node: Some(node.clone()),
                ..sotw_request(ty, version, nonce, &[])
            })
        };
        // Envoy's first requests, each with the version it holds.
        let target = self.target.borrow().clone();
        let (first, mut subscribed) = first_requests(
            |ty| !held.versions[ty.index()].is_empty(),
            &target,
            |ty, names| request(ty, &held.versions[ty.index()], "", names),
        );
        let mut client = self.open(first).await?;
        let mut nonces: [String; ResourceType::COUNT] = Default::default();
        loop {
            let (ty, r) = match self.next(&mut client).await? {
                Some((ty, Raw::Sotw(r))) => (ty, r),
                _ => return Ok(()),
            };
            nonces[ty.index()] = r.nonce.clone();
            let target = self.target.borrow().clone();
            // Subscriptions follow what the clusters and listeners bring.
            for dep in dependents(ty, &target) {
                let names = target.names(dep);
                if subscribed[dep.index()].as_ref() != Some(&names) {
                    let i = dep.index();
                    client
                        .send(request(dep, &held.versions[i], &nonces[i], names.clone()))
                        .await;
                    subscribed[dep.index()] = Some(names);
                }
            }
            let names = subscribed[ty.index()].clone().unwrap_or_default();
            client
                .send(request(ty, &r.version_info, &r.nonce, names))
                .await;
            held.versions[ty.index()] = r.version_info;
            let listeners = request(ResourceType::Listener, "", "", Vec::new());
            ask_listeners(&mut client, &mut subscribed, ty, &target, listeners).await;
            self.record_if_synced(held);
        }
    }

    /// One delta session; `Err` when the stream ends.
    async fn delta(&mut self, held: &mut Held) -> Result<(), ()> {
        // Every request names the node, as these streams always have (their figures compare).
        let node = self.node();
        let request =
            |ty: ResourceType, subscribe: Vec<String>, nonce: &str| DeltaDiscoveryRequest {
                resource_names_subscribe: subscribe,
                response_nonce: nonce.to_owned(),
                node: Some(node.clone()),
                ..delta_request(ty, &[], &[])
            };
        // Envoy's first requests, with what it holds.
        let target = self.target.borrow().clone();
        let (first, mut subscribed) = first_requests(
            |ty| !held.resources[ty.index()].is_empty(),
            &target,
            |ty, names| {
                let mut req = request(ty, names, "");
                req.initial_resource_versions = held.resources[ty.index()]
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect();
                Request::Delta(req)
            },
        );
        let mut client = self.open(first).await?;
        loop {
            let (ty, r) = match self.next(&mut client).await? {
                Some((ty, Raw::Delta(r))) => (ty, r),
                _ => return Ok(()),
            };
            let set = &mut held.resources[ty.index()];
            for name in &r.removed_resources {
                set.remove(name);
            }
            for res in &r.resources {
                set.insert(res.name.clone(), res.version.clone());
            }
            let target = self.target.borrow().clone();
            for dep in dependents(ty, &target) {
                let names = target.names(dep);
                let before = subscribed[dep.index()].clone().unwrap_or_default();
                let add: Vec<String> = names
                    .iter()
                    .filter(|n| !before.contains(n))
                    .cloned()
                    .collect();
                let drop: Vec<String> = before
                    .iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                if !add.is_empty() || !drop.is_empty() || subscribed[dep.index()].is_none() {
                    let mut req = request(dep, add, "");
                    req.resource_names_unsubscribe = drop;
                    client.send(req).await;
                    subscribed[dep.index()] = Some(names);
                }
            }
            client.send(request(ty, Vec::new(), &r.nonce)).await;
            let listeners = request(ResourceType::Listener, Vec::new(), "");
            ask_listeners(&mut client, &mut subscribed, ty, &target, listeners).await;
            self.record_if_synced(held);
        }
    }
}

/// The first requests of a stream, made by `make` from a type and the names it asks for: every
/// cluster (a wildcard); the rest only when `reconnecting` for that type (listeners are asked
/// for once the clusters are in, as Envoy does), the listeners as a wildcard and the endpoints
/// and routes by the target's names. With the subscriptions they make.
fn first_requests(
    reconnecting: impl Fn(ResourceType) -> bool,
    target: &Target,
    make: impl Fn(ResourceType, Vec<String>) -> Request,
) -> (Vec<Request>, [Option<Vec<String>>; ResourceType::COUNT]) {
    let mut subscribed: [Option<Vec<String>>; ResourceType::COUNT] = Default::default();
    let mut first = Vec::new();
    for ty in ResourceType::ALL {
        let names = match ty {
            ResourceType::Cluster => Vec::new(),
            _ if !reconnecting(ty) => continue,
            ResourceType::Listener => Vec::new(),
            _ => target.names(ty),
        };
        first.push(make(ty, names.clone()));
        subscribed[ty.index()] = Some(names);
    }
    (first, subscribed)
}

/// The types whose subscription follows what a response of `ty` brings: the endpoints of the
/// clusters; the routes of the listeners, and their secrets when the target has some (asked for
/// by name: an empty list would be a wildcard in state of the world).
fn dependents(ty: ResourceType, target: &Target) -> Vec<ResourceType> {
    match dependent(ty) {
        Some(ResourceType::Route) if !target.names(ResourceType::Secret).is_empty() => {
            vec![ResourceType::Route, ResourceType::Secret]
        }
        Some(dep) => vec![dep],
        None => Vec::new(),
    }
}

/// Asks for listeners with `request` once a response of `ty` completes the clusters' endpoints
/// (the endpoints themselves, or clusters when the target has no endpoints), as Envoy does, if
/// not asked yet.
async fn ask_listeners(
    client: &mut Client,
    subscribed: &mut [Option<Vec<String>>; ResourceType::COUNT],
    ty: ResourceType,
    target: &Target,
    request: impl Into<Request>,
) {
    let endpoints_done = ty == ResourceType::Endpoint
        || (ty == ResourceType::Cluster && target.names(ResourceType::Endpoint).is_empty());
    let listeners = &mut subscribed[ResourceType::Listener.index()];
    if endpoints_done && listeners.is_none() {
        client.send(request).await;
        *listeners = Some(Vec::new());
    }
}

/// Resident memory and CPU time of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu: Duration,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields counted from the state (field 3) here: utime is field 14, index 11.
    let cpu_ticks = ticks(11) + ticks(12);
    Usage {
        rss_bytes: rss_kib * 1024,
        cpu: Duration::from_millis(cpu_ticks * 10),
    }
}

/// A generated deployment file: `services` services, each with blue and green versions of
/// `endpoints` endpoints, routed by prefix from one listener; `edits` changes a few of them.
pub fn deployment(services: usize, endpoints: usize, edits: &Edits) -> String {
    let mut text =
        String::from("listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n");
    for s in 0..services {
        let prefix = if s == 1 && edits.route {
            "/moved1/"
        } else {
            ""
        };
        if prefix.is_empty() {
            text.push_str(&format!(
                "      - match: {{ prefix: /s{s}/ }}\n        service: s{s}\n"
            ));
        } else {
            text.push_str(&format!(
                "      - match: {{ prefix: {prefix} }}\n        service: s{s}\n"
            ));
        }
    }
    text.push_str("services:\n");
    for s in 0..services {
        let base = 20000 + (s % 10_000) * 4;
        let host = |v: usize, e: usize| {
            format!(
                "127.{}.{}.{}:{}",
                1 + e,
                (s / 250) % 250,
                s % 250 + 1,
                base + v
            )
        };
        let list = |v: usize, n: usize| (0..n).map(|e| host(v, e)).collect::<Vec<_>>().join(", ");
        let blue_n = if s == 2 && edits.endpoint {
            endpoints + 1
        } else {
            endpoints
        };
        text.push_str(&format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [{}] }}\n      green: {{ endpoints: [{}] }}\n",
            list(0, blue_n),
            list(1, endpoints)
        ));
        if s == 3 && edits.version {
            text.push_str(&format!(
                "      purple: {{ endpoints: [{}] }}\n    active: purple\n",
                list(2, endpoints)
            ));
        } else if s == 0 {
            let w = if edits.weight { 20 } else { 10 };
            text.push_str(&format!(
                "    strategy:\n      canary: {{ stable: blue, canary: green, weight: {w} }}\n"
            ));
        } else {
            text.push_str("    active: blue\n");
        }
    }
    text
}

/// Which of the generated file's edits are applied (each on top of the ones before).
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits {
    /// Service 0's canary weight 10% → 20%.
    pub weight: bool,
    /// Service 1's route prefix changes.
    pub route: bool,
    /// Service 2's blue version gets another endpoint.
    pub endpoint: bool,
    /// Service 3 gets a third version, `purple`, and switches to it.
    pub version: bool,
}

impl Edits {
    /// The series a benchmark applies: each entry adds one edit to the ones before.
    pub fn series() -> Vec<(&'static str, Edits)> {
        let a = Edits {
            weight: true,
            ..Edits::default()
        };
        let b = Edits { route: true, ..a };
        let c = Edits {
            endpoint: true,
            ..b
        };
        let d = Edits { version: true, ..c };
        vec![
            ("canary weight 10% → 20% (routes)", a),
            ("route prefix changed (routes)", b),
            ("endpoint added (endpoints)", c),
            (
                "version added and switched to (clusters, endpoints, routes)",
                d,
            ),
        ]
    }
}

/// Percentiles of sorted durations, in milliseconds (0 for none).
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    super::percentile(sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A benchmark's comma-separated setting `name` from the environment, or `default`.
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A benchmark's numbers `name` (e.g. `STREAMS=1000,5000`), or `default`.
pub fn env_numbers(name: &str, default: &str) -> Vec<usize> {
    env_list(name, default)
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: numbers, not {s:?}"))
        })
        .collect()
}

/// The protocols a benchmark runs: `PROTOCOLS=sotw,delta` (the default), or one of them.
pub fn env_protocols() -> Vec<Protocol> {
    env_list("PROTOCOLS", "sotw,delta")
        .iter()
        .map(|p| match p.as_str() {
            "sotw" => Protocol::Sotw,
            "delta" => Protocol::Delta,
            other => panic!("PROTOCOLS: sotw or delta, not {other}"),
        })
        .collect()
}
