//! The switch-latency benchmark's core, shared by `benches/switch_latency.rs` (which prints and
//! saves the figures) and `tests/e2e_switch_latency_smoke.rs` (which runs a few switches): how
//! fast a save of the deployment file reaches Envoy through cutover, against Envoy's own
//! file-based dynamic configuration applying the same change.
//!
//! Two setups run side by side, each with its own Envoy, in front of the same two upstreams
//! (answering `blue` and `green`):
//!
//! - **A**, cutover: `cutover serve deploy.yaml` and an Envoy from `cutover bootstrap` (ADS). A
//!   switch rewrites `deploy.yaml` (`active: blue` ↔ `active: green`) by write-then-rename.
//! - **B**, Envoy file-based xDS: the resources `cutover render --format json` prints for the
//!   same deployment, with every ADS config source replaced by a `path_config_source` with a
//!   `watched_directory` (CDS, LDS, RDS and each cluster's EDS in a file of its own directory).
//!   A switch renames a new RDS file into place.
//!
//! Per switch, t0 is taken just before the rename; the setup's listener is then polled with fresh
//! requests over one keep-alive connection until the body is the new colour, whose arrival is
//! t1. A and B switches alternate with a pause between switches, during which a trickle of
//! requests (one per setup every ~1 ms) keeps both pipelines warm and checks every answer's
//! colour. Unless [`Options::quiet_logs`], both Envoys log `rds:debug` with microsecond
//! timestamps and cutover logs JSON at debug, so that [`Measurement`] also says when each
//! Envoy's main thread took the new routes and, for A, when cutover published the config,
//! pushed the routes and got Envoy's ACK, on the same clock as t0.
//!
//! The probe runs on a plain thread and sleeps with the operating system's timer: tokio's timer
//! has a 1 ms resolution, five times the probe's interval. [`run`] therefore needs tokio's
//! multi-threaded runtime (it measures inside `block_in_place`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use super::{
    Cutover, DeploymentFile, Envoy, Upstream, checkout_deployment, cutover_binary, free_port,
    get_json, http_client, interpolated_percentile, wait_for,
};

/// The two versions of every service, in the order the switches visit them.
pub const COLOURS: [&str; 2] = ["blue", "green"];

/// Envoy's log format in the benchmark: seconds since the epoch with microseconds, so that its
/// lines are on the clock of t0.
pub const ENVOY_LOG_FORMAT: &str = "%E.%f [%l][%n] %v";

/// What Envoy's main thread logs (`rds:debug`) when it takes a new route configuration, from
/// ADS or a file alike, just before handing it to the workers.
const ENVOY_RDS_APPLIED: &str = "rds: loading new configuration: config_name=public";

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// One probe request may take this long before it counts as an error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Options

/// Where setup B's resource files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dirs {
    /// Each file in a watched directory of its own: the least work per save for Envoy (a
    /// rename reloads only that file). Needs one inotify instance per file.
    PerFile,
    /// All in one watched directory, as with a Kubernetes ConfigMap: every save reloads every
    /// file.
    Shared,
}

impl std::str::FromStr for Dirs {
    type Err = String;

    fn from_str(s: &str) -> Result<Dirs, String> {
        match s {
            "per-file" => Ok(Dirs::PerFile),
            "shared" => Ok(Dirs::Shared),
            other => Err(format!("per-file or shared, not {other:?}")),
        }
    }
}

impl std::fmt::Display for Dirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dirs::PerFile => "per-file",
            Dirs::Shared => "shared",
        })
    }
}

/// How to measure. The defaults are the benchmark's.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured switches per setup.
    pub switches: usize,
    /// Switches per setup before the measured ones: reported, not in the statistics.
    pub warmup: usize,
    /// Services in the deployment; a switch changes the route of one of them.
    pub services: usize,
    /// Between two switches.
    pub pause: Duration,
    /// Sleep during pauses instead of keeping a trickle of requests on both Envoys.
    pub idle_pause: bool,
    /// Between two probe requests during a switch.
    pub poll_interval: Duration,
    /// How long a switch may take before it counts as timed out.
    pub timeout: Duration,
    pub dirs: Dirs,
    /// Envoy worker threads, both Envoys.
    pub concurrency: usize,
    /// cutover at `info` and Envoy without `rds:debug`: no breakdown.
    pub quiet_logs: bool,
    /// Requests per setup that measure the probe's own round trip before the switches.
    pub rest_probes: usize,
    /// Where to create the work directory (the system's temporary directory if `None`); its
    /// file system decides how long the rename of a save takes.
    pub workdir: Option<PathBuf>,
    /// Keep the work directory (configs and logs) instead of removing it.
    pub keep: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            switches: 100,
            warmup: 2,
            services: 1,
            pause: Duration::from_millis(50),
            idle_pause: false,
            poll_interval: Duration::from_micros(200),
            timeout: Duration::from_secs(5),
            dirs: Dirs::PerFile,
            concurrency: 1,
            quiet_logs: false,
            rest_probes: 200,
            workdir: None,
            keep: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What comes out

/// One of the two setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Side {
    /// cutover: deploy.yaml → ADS → Envoy.
    A,
    /// Envoy's own file-based xDS: the RDS file.
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];
}

/// One switch of one setup. Times are milliseconds after t0 (just before the rename).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub setup: Side,
    pub round: usize,
    pub warmup: bool,
    /// The colour switched to.
    pub to: &'static str,
    /// t0 on the wall clock, nanoseconds since the epoch: what log lines are matched against.
    pub wall_t0_ns: u64,
    /// t1 − t0: the first response from the new colour; `None` if it timed out.
    pub latency_ms: Option<f64>,
    pub timed_out: bool,
    /// The rename itself (part of the latency, for both setups alike).
    pub rename_ms: f64,
    /// The switch took effect in Envoy after the last old-colour request was sent (or t0) and
    /// before the first new-colour response arrived (t1).
    pub last_old_sent_ms: Option<f64>,
    pub first_new_sent_ms: Option<f64>,
    pub polls: usize,
    pub old_responses: usize,
    pub error_responses: usize,
    pub error_samples: Vec<String>,
    pub poll_period_ms: f64,
    /// The first 100 probe requests: sent and received (ms after t0), and what came back.
    pub probe_trace: Vec<(f64, f64, Seen)>,
    /// When the setup's Envoy took the new routes (its log), unless the logs are quiet.
    pub envoy_applied_ms: Option<f64>,
    /// Setup A's steps in cutover's log, unless the logs are quiet.
    pub cutover: Option<CutoverSteps>,
}

/// What a probe request during a switch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seen {
    /// The colour switched to.
    New,
    /// The colour before the switch.
    Old,
    /// Anything else: another status, another body, no answer.
    Error,
}

/// Where an A switch's time went in cutover, from its JSON log (ms after t0).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CutoverSteps {
    /// "config published": read, validated, translated and encoded.
    pub loaded_ms: Option<f64>,
    /// The RDS response handed to gRPC.
    pub rds_push_ms: Option<f64>,
    /// Envoy's RDS ACK received.
    pub rds_ack_ms: Option<f64>,
    /// The types pushed in the switch's window.
    pub pushed_types: Vec<String>,
}

/// A setup's requests between switches, each of which must have the colour it serves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PauseTraffic {
    pub requests: usize,
    pub errors: usize,
    pub error_samples: Vec<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Every switch of both setups, in the order they were made (A, B, A, B, ...).
    pub samples: Vec<Sample>,
    /// The probe's round trip at rest, before the switches, ms: the resolution of the
    /// end-to-end figures.
    pub probe_rtt_ms: BTreeMap<Side, Vec<f64>>,
    pub pause_traffic: BTreeMap<Side, PauseTraffic>,
    /// After how many A switches cutover's `/status` showed the Envoy in sync at the new
    /// version within 2 s, and after how many not.
    pub status_in_sync: usize,
    pub status_not_in_sync: usize,
    /// `cutover --version`, Envoy's version.
    pub cutover_version: String,
    pub envoy_version: String,
    pub work_dir: PathBuf,
    /// The work directory's file system type (`ext4`, `tmpfs`, ...), or `?`.
    pub work_fs: String,
}

impl Measurement {
    /// The samples of `side`, warm-up switches included.
    pub fn of(&self, side: Side) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.setup == side)
    }
}

/// Percentiles and more of a set of figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for no figures.
    pub fn of(xs: &[f64]) -> Option<Summary> {
        let mut s = xs.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            median: interpolated_percentile(&s, 0.5)?,
            p90: interpolated_percentile(&s, 0.9)?,
            p99: interpolated_percentile(&s, 0.99)?,
            min: *s.first()?,
            max: *s.last()?,
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The deployment and setup B's files

/// The deployment both setups serve: `checkout` (the one switched) behind `/`, and
/// `services - 1` more services, each routed by a prefix of its own before it, so that a
/// switch changes one route of a route configuration as large as the file.
pub fn deployment(
    listener: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
    active: &str,
    services: usize,
) -> String {
    let mut routes = String::new();
    let mut others = String::new();
    for i in 1..services {
        routes.push_str(&format!(
            "      - match: {{ prefix: /s{i}/ }}\n        service: s{i}\n"
        ));
        others.push_str(&format!(
            "  s{i}:\n    versions:\n      blue:  {{ endpoints: [{blue}] }}\n      green: {{ endpoints: [{green}] }}\n    active: blue\n"
        ));
    }
    // The kit's one-service file, with the other services' routes before its catch-all.
    let catch_all = "      - match: { prefix: / }\n";
    let file = checkout_deployment(listener, &[blue], &[green], active);
    assert!(file.contains(catch_all), "a catch-all route in {file}");
    file.replacen(catch_all, &format!("{routes}{catch_all}"), 1) + &others
}

/// `cutover render FILE --format json`.
fn render(file: &Path) -> Value {
    let out = Command::new(cutover_binary())
        .arg("render")
        .arg(file)
        .args(["--format", "json"])
        .stdin(Stdio::null())
        .output()
        .expect("run cutover render");
    assert!(
        out.status.success(),
        "cutover render {} failed ({}): {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cutover render prints JSON")
}

/// Where setup B's resource files are.
struct Layout {
    root: PathBuf,
    dirs: Dirs,
}

impl Layout {
    fn path(&self, name: &str) -> PathBuf {
        match self.dirs {
            Dirs::Shared => self.root.join(format!("{name}.json")),
            Dirs::PerFile => self.root.join(name).join(format!("{name}.json")),
        }
    }

    fn cds(&self) -> PathBuf {
        self.path("cds")
    }

    fn lds(&self) -> PathBuf {
        self.path("lds")
    }

    fn rds(&self) -> PathBuf {
        self.path("rds")
    }

    fn eds(&self, cluster: &str) -> PathBuf {
        let safe: String = cluster
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.path(&format!("eds-{safe}"))
    }
}

/// A config source Envoy reads from `file`, watching its directory.
fn path_source(file: &Path) -> Value {
    json!({
        "path": file,
        "watched_directory": { "path": file.parent().expect("a file in a directory") },
    })
}

/// `original` (an ADS config source) with `ads` replaced by a watched path source.
fn replace_ads(original: &mut Value, file: &Path) {
    assert!(
        original.get("ads").is_some(),
        "expected an ADS config source, got {original}"
    );
    let source = original.as_object_mut().expect("an object");
    source.remove("ads");
    source.insert("path_config_source".to_owned(), path_source(file));
}

fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(o) => o.contains_key(key) || o.values().any(|v| contains_key(v, key)),
        Value::Array(a) => a.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Setup B's files from `cutover render` output: path → DiscoveryResponse-shaped JSON.
fn file_based_resources(rendered: &Value, layout: &Layout) -> BTreeMap<PathBuf, Value> {
    let version = &rendered["version"];
    let list = |key: &str| -> Vec<Value> {
        rendered[key]
            .as_array()
            .unwrap_or_else(|| panic!("cutover render: no {key} list"))
            .clone()
    };
    let mut files = BTreeMap::new();
    let mut clusters = list("clusters");
    for cluster in &mut clusters {
        let name = cluster["name"].as_str().expect("a cluster name").to_owned();
        replace_ads(
            &mut cluster["eds_cluster_config"]["eds_config"],
            &layout.eds(&name),
        );
    }
    for cla in list("endpoints") {
        let name = cla["cluster_name"].as_str().expect("a cluster name");
        files.insert(
            layout.eds(name),
            json!({ "version_info": version, "resources": [cla] }),
        );
    }
    let mut listeners = list("listeners");
    let mut with_rds = 0;
    for listener in &mut listeners {
        for chain in listener["filter_chains"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            for filter in chain["filters"].as_array_mut().into_iter().flatten() {
                let config = &mut filter["typed_config"];
                if config["@type"] == HCM_TYPE {
                    replace_ads(&mut config["rds"]["config_source"], &layout.rds());
                    with_rds += 1;
                }
            }
        }
    }
    let routes = list("routes");
    assert!(
        with_rds == 1 && routes.len() == 1,
        "expected exactly one listener with RDS and one route configuration"
    );
    files.insert(
        layout.cds(),
        json!({ "version_info": version, "resources": clusters }),
    );
    files.insert(
        layout.lds(),
        json!({ "version_info": version, "resources": listeners }),
    );
    files.insert(
        layout.rds(),
        json!({ "version_info": version, "resources": routes }),
    );
    for (path, content) in &files {
        assert!(
            !contains_key(content, "ads"),
            "{}: an ADS config source is left",
            path.display()
        );
    }
    files
}

/// Setup B's bootstrap: CDS and LDS from their files, Envoy's admin on a port it picks.
fn file_based_bootstrap(layout: &Layout) -> Value {
    let source = |file: PathBuf| json!({ "resource_api_version": "V3", "path_config_source": path_source(&file) });
    json!({
        "node": { "id": NODE_B, "cluster": NODE_B },
        "dynamic_resources": { "cds_config": source(layout.cds()), "lds_config": source(layout.lds()) },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
    })
}

/// JSON as setup B's files hold it: one space of indentation per level.
fn to_json_text(value: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b" "),
    );
    value.serialize(&mut ser).expect("serialise JSON");
    out.push(b'\n');
    String::from_utf8(out).expect("JSON is UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Probing

/// What a request through a setup's Envoy gave: status and body, or what went wrong.
type Answer = Result<(u16, String), String>;

/// Fresh requests over one keep-alive HTTP/1.1 connection to an Envoy listener, sent from the
/// measuring thread on a runtime of its own, so that a request and its connection are driven by
/// one thread and nothing else waits in between.
struct Probe {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Empty<Bytes>>>,
}

impl Probe {
    fn get(&mut self, rt: &Runtime) -> Answer {
        let answer = rt.block_on(async {
            tokio::time::timeout(PROBE_TIMEOUT, self.exchange())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
        });
        if answer.is_err() {
            // Start again on a new connection.
            self.sender = None;
        }
        answer
    }

    async fn exchange(&mut self) -> Answer {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            stale => {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| format!("connect to {}: {e}", self.addr))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("TCP_NODELAY: {e}"))?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(connection);
                stale.insert(sender)
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let request = hyper::Request::get("/")
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Empty::new())
            .expect("a GET request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET /: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One side of the comparison: its probe, and the file whose rename is a switch.
struct Setup {
    side: Side,
    probe: Probe,
    /// deploy.yaml (A) or the RDS file (B).
    target: DeploymentFile,
    /// Its content per colour, in the order of [`COLOURS`].
    texts: [String; 2],
    /// The index of the colour it serves.
    colour: usize,
    pause: PauseTraffic,
}

impl Setup {
    /// Serving blue, probed on `listener`.
    fn new(side: Side, listener: SocketAddr, target: DeploymentFile, texts: [String; 2]) -> Setup {
        Setup {
            side,
            probe: Probe {
                addr: listener,
                sender: None,
            },
            target,
            texts,
            colour: 0,
            pause: PauseTraffic::default(),
        }
    }
}

fn is(answer: &Answer, colour: &str) -> bool {
    matches!(answer, Ok((200, body)) if body == colour)
}

fn describe(answer: &Answer) -> String {
    match answer {
        Ok((status, body)) => format!("{status}: {}", body.chars().take(120).collect::<String>()),
        Err(e) => format!("None: {e}"),
    }
}

fn wall_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_nanos()).expect("nanoseconds since the epoch fit in 64 bits")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Switches `setup` to colour `new` and polls until it answers with it, or `timeout` passes.
fn switch(rt: &Runtime, setup: &mut Setup, new: usize, o: &Options) -> Sample {
    let old = COLOURS[setup.colour];
    let new_colour = COLOURS[new];
    let staged = setup.target.stage(&setup.texts[new]);
    let wall_t0_ns = wall_ns();
    let t0 = Instant::now();
    staged.commit();
    let renamed = t0.elapsed();
    let (mut polls, mut old_seen, mut errors) = (0, 0, 0);
    let mut error_samples = Vec::new();
    let (mut t1, mut last_old_sent, mut first_new_sent) = (None, None, None);
    let mut trace = Vec::new();
    let mut now;
    loop {
        let sent = t0.elapsed();
        let answer = setup.probe.get(rt);
        now = t0.elapsed();
        polls += 1;
        let seen = if is(&answer, new_colour) {
            Seen::New
        } else if is(&answer, old) {
            Seen::Old
        } else {
            Seen::Error
        };
        if trace.len() < 100 {
            trace.push((round3(ms(sent)), round3(ms(now)), seen));
        }
        match seen {
            Seen::New => {
                (t1, first_new_sent) = (Some(now), Some(sent));
                break;
            }
            Seen::Old => {
                old_seen += 1;
                last_old_sent = Some(sent);
            }
            Seen::Error => {
                errors += 1;
                if error_samples.len() < 3 {
                    error_samples.push(describe(&answer));
                }
            }
        }
        if now >= o.timeout {
            break;
        }
        std::thread::sleep(o.poll_interval);
    }
    setup.colour = new;
    Sample {
        setup: setup.side,
        round: 0,
        warmup: false,
        to: new_colour,
        wall_t0_ns,
        latency_ms: t1.map(ms),
        timed_out: t1.is_none(),
        rename_ms: ms(renamed),
        last_old_sent_ms: last_old_sent.map(ms),
        first_new_sent_ms: first_new_sent.map(ms),
        polls,
        old_responses: old_seen,
        error_responses: errors,
        error_samples,
        poll_period_ms: ms(now) / polls as f64,
        probe_trace: trace,
        envoy_applied_ms: None,
        cutover: None,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Polls until `setup` answers `colour`; panics after `within`.
fn wait_colour(rt: &Runtime, setup: &mut Setup, colour: &str, within: Duration) {
    let started = Instant::now();
    let mut last = setup.probe.get(rt);
    while !is(&last, colour) {
        assert!(
            started.elapsed() < within,
            "setup {:?} did not answer {colour:?} within {within:?}; last answer {}",
            setup.side,
            describe(&last)
        );
        std::thread::sleep(Duration::from_millis(10));
        last = setup.probe.get(rt);
    }
}

/// Waits `o.pause`; unless `o.idle_pause`, keeps a trickle of requests (one per setup every
/// ~1 ms) on both Envoys meanwhile, so that no switch starts from an idle pipeline, and checks
/// that every answer is the colour the setup serves.
fn warm_pause(rt: &Runtime, setups: &mut [Setup], o: &Options) {
    if o.idle_pause {
        std::thread::sleep(o.pause);
        return;
    }
    let end = Instant::now() + o.pause;
    while Instant::now() < end {
        for s in setups.iter_mut() {
            let answer = s.probe.get(rt);
            s.pause.requests += 1;
            if !is(&answer, COLOURS[s.colour]) {
                s.pause.errors += 1;
                if s.pause.error_samples.len() < 3 {
                    s.pause.error_samples.push(describe(&answer));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether cutover's `/status` shows node A in sync at `version`.
async fn in_sync(client: &reqwest::Client, admin: SocketAddr, version: &str) -> Result<(), String> {
    let json = get_json(client, &format!("http://{admin}/status")).await?;
    let status: crate::api::StatusReport = super::read_exact(&json)?;
    let mut a = status.nodes.iter().filter(|n| n.id == NODE_A);
    match (a.next(), a.next()) {
        (Some(node), None) if node.in_sync && status.config_version.as_deref() == Some(version) => {
            Ok(())
        }
        _ => Err(json.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Node ids of the two Envoys.
pub const NODE_A: &str = "bench-cutover";
pub const NODE_B: &str = "bench-file";

/// Starts both setups in a work directory, makes `o.warmup + o.switches` switches per setup
/// (interleaved) and returns what was measured. Panics if a setup never reaches a colour it was
/// switched to (a switch that is merely slower than `o.timeout` is recorded as timed out). Needs
/// tokio's multi-threaded runtime.
pub async fn run(envoy_bin: &Path, o: &Options) -> Measurement {
    assert!(o.services >= 1, "at least one service");
    let mut builder = tempfile::Builder::new();
    builder.prefix("cutover-switch-bench-");
    let work = match &o.workdir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .expect("create the work directory");
    let work_dir = work.path().to_owned();
    let cutover_version = command_output(&cutover_binary(), "--version");
    let envoy_version = command_output(envoy_bin, "--version")
        .rsplit("version:")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let (a_listener, b_listener) = (free_port(), free_port());

    let a = start_setup_a(&work_dir.join("a"), a_listener, blue.addr, green.addr, o).await;

    let b = write_setup_b(&work_dir.join("b"), b_listener, blue.addr, green.addr, o);

    let concurrency = o.concurrency.to_string();
    let mut flags = vec!["--concurrency", &concurrency, "--log-level", "warn"];
    if !o.quiet_logs {
        flags.extend([
            "--component-log-level",
            "rds:debug",
            "--log-format",
            ENVOY_LOG_FORMAT,
        ]);
    }
    let envoy_a =
        Envoy::spawn_with_flags(envoy_bin, &a.dir, NODE_A, &a.bootstrap, a_listener, &flags).await;
    let envoy_b =
        Envoy::spawn_with_flags(envoy_bin, &b.dir, NODE_B, &b.bootstrap, b_listener, &flags).await;
    for envoy in [&envoy_a, &envoy_b] {
        envoy.wait_live().await;
        wait_for(
            super::WAIT,
            &format!("Envoy {} to answer blue", envoy.node_id),
            async || match envoy.get("/").await {
                Ok(body) if body == "blue" => Ok(()),
                Ok(body) => Err(body),
                Err(e) => Err(e),
            },
        )
        .await;
    }
    let client = http_client();
    wait_for(
        Duration::from_secs(10),
        "cutover /status to show the Envoy in sync",
        async || in_sync(&client, a.cutover.admin, &a.versions[0]).await,
    )
    .await;
    log(&format!(
        "both setups answer 'blue'; work directory {}",
        work_dir.display()
    ));

    let setups = [
        Setup::new(Side::A, a_listener, a.deploy, a.texts),
        Setup::new(Side::B, b_listener, DeploymentFile::new(b.rds), b.texts),
    ];
    let (cutover, versions) = (a.cutover, a.versions);
    let mut switched = tokio::task::block_in_place(|| measure(setups, cutover.admin, &versions, o));
    if !o.quiet_logs {
        annotate_cutover(&cutover.log(), &mut switched.samples, &versions);
        annotate_envoy(&envoy_a.log(), &mut switched.samples, Side::A);
        annotate_envoy(&envoy_b.log(), &mut switched.samples, Side::B);
    }
    drop((envoy_a, envoy_b, cutover));
    let m = Measurement {
        samples: switched.samples,
        probe_rtt_ms: switched.probe_rtt_ms,
        pause_traffic: switched.pause_traffic,
        status_in_sync: switched.status_in_sync,
        status_not_in_sync: switched.status_not_in_sync,
        cutover_version,
        envoy_version,
        work_fs: fs_type(&work_dir),
        work_dir,
    };
    if o.keep {
        log(&format!("work directory kept: {}", work.keep().display()));
    }
    m
}

/// Setup A, started in `dir`: cutover serving the deployment, and what a switch writes.
struct SetupA {
    dir: PathBuf,
    cutover: Cutover,
    /// The file cutover watches, its content per colour and the config version of each.
    deploy: DeploymentFile,
    texts: [String; 2],
    versions: [String; 2],
    /// The Envoy's, from `cutover bootstrap`.
    bootstrap: String,
}

/// Writes the deployment (blue) in `dir` and starts cutover on it, logging JSON.
async fn start_setup_a(
    dir: &Path,
    listener: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
    o: &Options,
) -> SetupA {
    std::fs::create_dir_all(dir.join("conf")).expect("create a/conf");
    let texts = COLOURS.map(|c| deployment(listener, blue, green, c, o.services));
    let versions = [0, 1].map(|i| {
        let spec = dir.join(format!("spec-{}.yaml", COLOURS[i]));
        std::fs::write(&spec, &texts[i]).expect("write a spec");
        render(&spec)["version"]
            .as_str()
            .expect("a config version")
            .to_owned()
    });
    let deploy = DeploymentFile::new(dir.join("conf/deploy.yaml"));
    std::fs::write(&deploy.path, &texts[0]).expect("write deploy.yaml");
    let log_filter = if o.quiet_logs {
        "info"
    } else {
        "info,cutover=debug"
    };
    let cutover =
        Cutover::start_logging(dir, &deploy.path, &["--log-format", "json"], log_filter).await;
    let bootstrap = super::bootstrap(NODE_A, cutover.ads);
    SetupA {
        dir: dir.to_owned(),
        cutover,
        deploy,
        texts,
        versions,
        bootstrap,
    }
}

/// Setup B's files, written in `dir`: what it switches and how Envoy starts.
struct SetupB {
    dir: PathBuf,
    /// The RDS file, and its content per colour.
    rds: PathBuf,
    texts: [String; 2],
    bootstrap: String,
}

/// Renders the deployment for both colours, turns each into setup B's files, checks that only
/// the route configuration differs between them, and writes blue's.
fn write_setup_b(
    dir: &Path,
    listener: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
    o: &Options,
) -> SetupB {
    std::fs::create_dir_all(dir).expect("create b");
    let layout = Layout {
        root: dir.join("xds"),
        dirs: o.dirs,
    };
    let files = COLOURS.map(|c| {
        let spec = dir.join(format!("spec-{c}.yaml"));
        std::fs::write(&spec, deployment(listener, blue, green, c, o.services))
            .expect("write a spec");
        file_based_resources(&render(&spec), &layout)
    });
    let rds = layout.rds();
    let without_version = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().map(|o| o.remove("version_info"));
        v
    };
    for (path, content) in &files[0] {
        assert!(
            *path == rds || without_version(content) == without_version(&files[1][path]),
            "{}: differs between blue and green besides RDS",
            path.display()
        );
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("create a directory");
        std::fs::write(path, to_json_text(content)).expect("write a resource file");
    }
    SetupB {
        dir: dir.to_owned(),
        texts: [0, 1].map(|i| to_json_text(&files[i][&rds])),
        rds,
        bootstrap: to_json_text(&file_based_bootstrap(&layout)),
    }
}

/// What the switches gave, before the logs are read.
struct Switched {
    samples: Vec<Sample>,
    probe_rtt_ms: BTreeMap<Side, Vec<f64>>,
    pause_traffic: BTreeMap<Side, PauseTraffic>,
    status_in_sync: usize,
    status_not_in_sync: usize,
}

/// The switches, on this thread with a runtime of its own (see [`Probe`]).
fn measure(
    mut setups: [Setup; 2],
    admin: SocketAddr,
    versions: &[String; 2],
    o: &Options,
) -> Switched {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the probe's runtime");
    let client = http_client();

    // The probe's own round trip at rest: the resolution of the end-to-end figures.
    let mut probe_rtt_ms = BTreeMap::new();
    for s in &mut setups {
        let mut rtts = Vec::with_capacity(o.rest_probes);
        for _ in 0..o.rest_probes {
            let t = Instant::now();
            let answer = s.probe.get(&rt);
            rtts.push(ms(t.elapsed()));
            assert!(
                is(&answer, "blue"),
                "setup {:?} answered {} at rest",
                s.side,
                describe(&answer)
            );
            std::thread::sleep(o.poll_interval);
        }
        probe_rtt_ms.insert(s.side, rtts);
    }

    let mut samples = Vec::new();
    let (mut synced, mut not_synced) = (0, 0);
    let total = o.warmup + o.switches;
    for round in 0..total {
        let new = (round + 1) % 2;
        for k in 0..setups.len() {
            let mut sample = switch(&rt, &mut setups[k], new, o);
            sample.round = round;
            sample.warmup = round < o.warmup;
            if sample.timed_out {
                log(&format!(
                    "round {round}: setup {:?} did not answer {:?} within {:?}; {} error responses {:?}",
                    sample.setup,
                    COLOURS[new],
                    o.timeout,
                    sample.error_responses,
                    sample.error_samples
                ));
                wait_colour(&rt, &mut setups[k], COLOURS[new], Duration::from_secs(10));
            }
            if sample.setup == Side::A {
                // A check, not a timing: cutover reports the Envoy in sync at the new version.
                let started = Instant::now();
                let ok = loop {
                    if rt.block_on(in_sync(&client, admin, &versions[new])).is_ok() {
                        break true;
                    }
                    if started.elapsed() >= Duration::from_secs(2) {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                };
                if ok {
                    synced += 1;
                } else {
                    not_synced += 1;
                }
            }
            samples.push(sample);
            warm_pause(&rt, &mut setups, o);
        }
        if (round + 1) % 25 == 0 || round + 1 == total {
            log(&format!("{}/{total} rounds", round + 1));
        }
    }
    let pause_traffic = setups.map(|s| (s.side, s.pause)).into_iter().collect();
    Switched {
        samples,
        probe_rtt_ms,
        pause_traffic,
        status_in_sync: synced,
        status_not_in_sync: not_synced,
    }
}

fn command_output(bin: &Path, arg: &str) -> String {
    let out = Command::new(bin)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} {arg}: {e}", bin.display()));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A progress line on stderr, with the time of day (UTC).
pub fn log(msg: &str) {
    let secs = wall_ns() / 1_000_000_000 % 86_400;
    eprintln!(
        "[{:02}:{:02}:{:02}] {msg}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// The file system type of `path`, from /proc/self/mounts (Linux), or `?`.
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (mount, kind) = (parts.nth(1)?.replace("\\040", " "), parts.next()?);
            path.starts_with(&mount)
                .then(|| (mount.len(), kind.to_owned()))
        })
        .max()
        .map_or_else(|| "?".to_owned(), |(_, kind)| kind)
}

// ---------------------------------------------------------------------------------------------
// Logs: where the time goes

/// When Envoy's main thread took a new route configuration, ns since the epoch, from a log
/// written with [`ENVOY_LOG_FORMAT`].
fn envoy_rds_times(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains(ENVOY_RDS_APPLIED))
        .filter_map(|line| {
            let stamp = line.split(' ').next()?;
            let (secs, frac) = stamp.split_once('.')?;
            let secs: u64 = secs.parse().ok()?;
            let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
            Some(secs * 1_000_000_000 + frac.parse::<u64>().ok()?)
        })
        .collect()
}

/// For each sample of `side`: its index and the wall-clock span in which its events are looked
/// for, from its t0 to the next switch of the same setup.
fn windows(samples: &[Sample], side: Side) -> Vec<(usize, u64, Option<u64>)> {
    let mine: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].setup == side)
        .collect();
    mine.iter()
        .enumerate()
        .map(|(k, &i)| {
            let end = mine.get(k + 1).map(|&j| samples[j].wall_t0_ns);
            (i, samples[i].wall_t0_ns, end)
        })
        .collect()
}

fn ms_after(t: u64, t0: u64) -> f64 {
    (t as f64 - t0 as f64) / 1e6
}

fn within(t: u64, t0: u64, end: Option<u64>) -> bool {
    t >= t0 && end.is_none_or(|end| t < end)
}

fn annotate_envoy(log: &str, samples: &mut [Sample], side: Side) {
    let times = envoy_rds_times(log);
    for (i, t0, end) in windows(samples, side) {
        samples[i].envoy_applied_ms = times
            .iter()
            .find(|&&t| within(t, t0, end))
            .map(|&t| ms_after(t, t0));
    }
}

/// For each A switch, from cutover's JSON log: when the new config was published, the RDS
/// response handed to gRPC and Envoy's RDS ACK received, and which types were pushed.
fn annotate_cutover(log: &str, samples: &mut [Sample], versions: &[String; 2]) {
    // (time, message, fields) of every JSON line; the kit's own lines are not JSON.
    let events: Vec<(u64, String, Value)> = log
        .lines()
        .filter_map(|line| {
            let event: Value = serde_json::from_str(line).ok()?;
            let at = humantime::parse_rfc3339(event["timestamp"].as_str()?).ok()?;
            let at = u64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()?;
            let fields = event["fields"].clone();
            Some((at, fields["message"].as_str()?.to_owned(), fields))
        })
        .collect();
    for (i, t0, end) in windows(samples, Side::A) {
        let version = &versions[COLOURS
            .iter()
            .position(|c| *c == samples[i].to)
            .unwrap_or(0)];
        let window: Vec<&(u64, String, Value)> =
            events.iter().filter(|e| within(e.0, t0, end)).collect();
        let loaded = window
            .iter()
            .find(|(_, m, f)| {
                (m == "config published" || m == "config loaded") && f["version"] == **version
            })
            .map(|e| e.0);
        let pushes: Vec<&&(u64, String, Value)> =
            window.iter().filter(|(_, m, _)| m == "push").collect();
        let rds_push = pushes.iter().find(|e| e.2["type"] == "rds").map(|e| e.0);
        let rds_ack = rds_push.and_then(|push| {
            window
                .iter()
                .find(|(t, m, f)| m == "ACK" && f["type"] == "rds" && *t >= push)
                .map(|e| e.0)
        });
        let mut types: Vec<String> = pushes
            .iter()
            .filter_map(|e| e.2["type"].as_str().map(str::to_owned))
            .collect();
        types.sort();
        types.dedup();
        samples[i].cutover = Some(CutoverSteps {
            loaded_ms: loaded.map(|t| ms_after(t, t0)),
            rds_push_ms: rds_push.map(|t| ms_after(t, t0)),
            rds_ack_ms: rds_ack.map(|t| ms_after(t, t0)),
            pushed_types: types,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_interpolate_between_closest_ranks() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(interpolated_percentile(&xs, 0.5), Some(2.5));
        assert_eq!(interpolated_percentile(&xs, 1.0), Some(4.0));
        assert!((interpolated_percentile(&xs, 0.9).unwrap() - 3.7).abs() < 1e-9);
        assert_eq!(interpolated_percentile(&[], 0.5), None);
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("figures");
        assert_eq!(
            (s.n, s.median, s.min, s.max, s.mean),
            (3, 2.0, 1.0, 3.0, 2.0)
        );
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn envoy_log_lines_give_microsecond_wall_clock_times() {
        let log = "1764000000.123456 [debug][rds] rds: loading new configuration: config_name=public hash=1\n\
                   1764000000.200000 [debug][rds] something else\n";
        assert_eq!(envoy_rds_times(log), vec![1_764_000_000_123_456_000]);
    }
}
