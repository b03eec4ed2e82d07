//! A fleet of simulated Envoys: N real ADS gRPC streams over loopback, each behaving as Envoy
//! does on the wire (state of the world or delta): it subscribes to every cluster and listener,
//! to the endpoints of its clusters and the routes of its listeners, ACKs every response, and
//! reconnects when its stream ends. Shared by the fleet benchmark and its smoke test.
//!
//! What a stream must hold is given as a [`Target`] (what cutover serves, compiled from the same
//! file by the library); each stream records the moment it first holds all of it, so that the
//! driver can time "file saved → every Envoy has ACKed" without asking cutover.
//!
//! The simulated Envoys decode nothing: the names they subscribe to come from the target, and
//! state of the world is checked by the versions ACKed, delta by each resource's version. Their
//! CPU cost is thereby small next to cutover's, though they share the machine with it.

#![allow(dead_code)] // The smoke test uses part of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutover::snapshot::Snapshot;
use cutover::xds::ResourceType;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Sotw,
    Delta,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sotw => "state of the world",
            Protocol::Delta => "delta",
        }
    }
}

/// What every stream must hold: per type, the version of the whole set (state of the world)
/// and each resource's version (delta).
#[derive(Debug, Default)]
pub struct Target {
    pub generation: u64,
    versions: [String; 4],
    resources: [BTreeMap<String, String>; 4],
}

impl Target {
    pub fn of(snapshot: &Snapshot, generation: u64) -> Target {
        Target {
            generation,
            versions: ResourceType::ALL.map(|ty| snapshot.type_version(ty).to_owned()),
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
        let snapshot = cutover::app::compile("fleet.yaml", text).expect("a valid generated file");
        Arc::new(Target::of(&snapshot, generation))
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

    pub fn len(&self) -> usize {
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
            if done == self.len() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(done);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let since = since.saturating_duration_since(self.base).as_nanos() as u64;
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
    versions: [String; 4],
    /// Delta: each resource's version per type.
    resources: [BTreeMap<String, String>; 4],
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
            let at = self.base.elapsed().as_nanos() as u64;
            self.synced[self.index].store(at, Ordering::Release);
            slot.store(target.generation, Ordering::Release);
        }
    }

    async fn client(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, ()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", self.ads))
                .map_err(|_| ())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|_| ())?;
        }
        let channel = endpoint.connect().await.map_err(|_| ())?;
        Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// One state-of-the-world session; `Err` when the stream ends.
    async fn sotw(&mut self, held: &mut Held) -> Result<(), ()> {
        let mut client = self.client().await?;
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        let node = self.node();
        let request =
            |ty: ResourceType, version: &str, nonce: &str, names: Vec<String>| DiscoveryRequest {
                type_url: ty.type_url().to_owned(),
                version_info: version.to_owned(),
                response_nonce: nonce.to_owned(),
                resource_names: names,
                node: Some(node.clone()),
                ..Default::default()
            };
        let target = self.target.borrow().clone();
        // Envoy's first requests: clusters and listeners (wildcard), and on a reconnect the
        // endpoints and routes it had, each with the version it holds.
        let first = [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Listener,
            ResourceType::Route,
        ];
        let mut subscribed: [Option<Vec<String>>; 4] = Default::default();
        for ty in first {
            let reconnecting = !held.versions[ty.index()].is_empty();
            let names = match ty {
                ResourceType::Cluster | ResourceType::Listener => Vec::new(),
                _ if reconnecting => target.names(ty),
                _ => continue,
            };
            if ty == ResourceType::Listener && !reconnecting {
                continue; // asked once the clusters are in, as Envoy does
            }
            tx.send(request(ty, &held.versions[ty.index()], "", names.clone()))
                .await
                .map_err(|_| ())?;
            subscribed[ty.index()] = Some(names);
        }
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|_| ())?
            .into_inner();
        let mut nonces: [String; 4] = Default::default();
        loop {
            let r: DiscoveryResponse = tokio::select! {
                r = responses.message() => match r {
                    Ok(Some(r)) => r,
                    _ => return Err(()),
                },
                _ = self.reconnect.changed() => return Ok(()),
                _ = self.target.changed() => {
                    // A new target may complete nothing by itself; it is checked on answers.
                    continue;
                }
            };
            let Some(ty) = ResourceType::from_type_url(&r.type_url) else {
                continue;
            };
            nonces[ty.index()] = r.nonce.clone();
            let target = self.target.borrow().clone();
            // Subscriptions follow what the clusters and listeners bring.
            let dependent = match ty {
                ResourceType::Cluster => Some(ResourceType::Endpoint),
                ResourceType::Listener => Some(ResourceType::Route),
                _ => None,
            };
            if let Some(dep) = dependent {
                let names = target.names(dep);
                if subscribed[dep.index()].as_ref() != Some(&names) {
                    let i = dep.index();
                    tx.send(request(dep, &held.versions[i], &nonces[i], names.clone()))
                        .await
                        .map_err(|_| ())?;
                    subscribed[dep.index()] = Some(names);
                }
            }
            let names = subscribed[ty.index()].clone().unwrap_or_default();
            tx.send(request(ty, &r.version_info, &r.nonce, names))
                .await
                .map_err(|_| ())?;
            held.versions[ty.index()] = r.version_info;
            let endpoints_done = ty == ResourceType::Endpoint
                || (ty == ResourceType::Cluster && target.names(ResourceType::Endpoint).is_empty());
            if endpoints_done && subscribed[ResourceType::Listener.index()].is_none() {
                tx.send(request(ResourceType::Listener, "", "", Vec::new()))
                    .await
                    .map_err(|_| ())?;
                subscribed[ResourceType::Listener.index()] = Some(Vec::new());
            }
            self.record_if_synced(held);
        }
    }

    /// One delta session; `Err` when the stream ends.
    async fn delta(&mut self, held: &mut Held) -> Result<(), ()> {
        let mut client = self.client().await?;
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let node = self.node();
        let request =
            |ty: ResourceType, subscribe: Vec<String>, nonce: &str| DeltaDiscoveryRequest {
                type_url: ty.type_url().to_owned(),
                resource_names_subscribe: subscribe,
                response_nonce: nonce.to_owned(),
                node: Some(node.clone()),
                ..Default::default()
            };
        let target = self.target.borrow().clone();
        let mut subscribed: [Option<Vec<String>>; 4] = Default::default();
        for ty in ResourceType::ALL {
            let reconnecting = !held.resources[ty.index()].is_empty();
            let names = match ty {
                ResourceType::Cluster => Vec::new(),
                ResourceType::Listener if reconnecting => Vec::new(),
                _ if reconnecting => target.names(ty),
                _ => continue,
            };
            let mut req = request(ty, names.clone(), "");
            req.initial_resource_versions = held.resources[ty.index()]
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            tx.send(req).await.map_err(|_| ())?;
            subscribed[ty.index()] = Some(names);
        }
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|_| ())?
            .into_inner();
        loop {
            let r: DeltaDiscoveryResponse = tokio::select! {
                r = responses.message() => match r {
                    Ok(Some(r)) => r,
                    _ => return Err(()),
                },
                _ = self.reconnect.changed() => return Ok(()),
                _ = self.target.changed() => continue,
            };
            let Some(ty) = ResourceType::from_type_url(&r.type_url) else {
                continue;
            };
            let set = &mut held.resources[ty.index()];
            for name in &r.removed_resources {
                set.remove(name);
            }
            for res in &r.resources {
                set.insert(res.name.clone(), res.version.clone());
            }
            let target = self.target.borrow().clone();
            let dependent = match ty {
                ResourceType::Cluster => Some(ResourceType::Endpoint),
                ResourceType::Listener => Some(ResourceType::Route),
                _ => None,
            };
            if let Some(dep) = dependent {
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
                    tx.send(req).await.map_err(|_| ())?;
                    subscribed[dep.index()] = Some(names);
                }
            }
            tx.send(request(ty, Vec::new(), &r.nonce))
                .await
                .map_err(|_| ())?;
            let endpoints_done = ty == ResourceType::Endpoint
                || (ty == ResourceType::Cluster && target.names(ResourceType::Endpoint).is_empty());
            if endpoints_done && subscribed[ResourceType::Listener.index()].is_none() {
                tx.send(request(ResourceType::Listener, Vec::new(), ""))
                    .await
                    .map_err(|_| ())?;
                subscribed[ResourceType::Listener.index()] = Some(Vec::new());
            }
            self.record_if_synced(held);
        }
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

/// Writes `text` to `path` as editors do: a temporary file renamed over it.
pub fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the deployment file");
    std::fs::rename(&tmp, path).expect("rename the deployment file into place");
}

/// Percentiles of sorted durations, in milliseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A `cutover serve` process on fresh loopback ports.
pub struct Server {
    pub binary: std::path::PathBuf,
    pub file: std::path::PathBuf,
    pub ads: SocketAddr,
    pub admin: SocketAddr,
    pub child: Option<std::process::Child>,
    args: Vec<String>,
    log: std::path::PathBuf,
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address")
}

impl Server {
    /// `cutover serve FILE` with `args`, ready.
    pub async fn start(binary: &std::path::Path, file: &std::path::Path, args: &[&str]) -> Server {
        let mut s = Server {
            binary: binary.to_owned(),
            file: file.to_owned(),
            ads: free_port(),
            admin: free_port(),
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: file.with_extension("log"),
        };
        s.spawn();
        s.wait_ready().await;
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let child = std::process::Command::new(&self.binary)
            .arg("serve")
            .arg(&self.file)
            .args([
                "--ads",
                &self.ads.to_string(),
                "--admin",
                &self.admin.to_string(),
            ])
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .spawn()
            .expect("start cutover");
        self.child = Some(child);
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .get("/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cutover not ready within 30 s; see {}", self.log.display());
    }

    /// A GET on the admin API: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: cutover\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status line")?;
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        Ok((status, body))
    }

    /// A counter or gauge from `/metrics` (the sum over its labels).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await.expect("GET /metrics");
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then waits for the exit (at most 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts again on the same ports and files; returns when the new process is
    /// spawned (not yet ready).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
