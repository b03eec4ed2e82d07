//! Benchmark: how fast a save of the deployment file reaches Envoy through cutover, against
//! Envoy's own file-based dynamic configuration applying the same change, in the same run on
//! the same machine (the method: `cutover::testing::switch_latency`; the figures:
//! docs/benchmarks.md, "Switch latency").
//!
//!     cargo bench --bench switch_latency                           # 100 switches per setup
//!     cargo bench --bench switch_latency -- --switches 300 --json results.json
//!     cargo bench --bench switch_latency -- --switches 60 --services 1000   # one route among 1000
//!     SWITCHES=60 SERVICES=1000 cargo bench --bench switch_latency         # the same
//!
//! Every option is a flag after `--` or an environment variable (`--help` lists them). Envoy:
//! `--envoy`, `ENVOY_BIN`, `.venv/bin/envoy` or `envoy` on `PATH`; cutover: the binary of this
//! build. Only 127.0.0.1 is used; every wait is bounded; every process it starts is stopped at
//! the end. Exits non-zero if a switch timed out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cutover::testing::envoy_binary;
use cutover::testing::switch_latency::{self, Dirs, Measurement, Options, Side, Summary, log};
use serde_json::{Value, json};

/// Switch latency: cutover (A) against Envoy's own file-based xDS (B), interleaved A, B, A, B.
#[derive(Parser, Debug)]
#[command(name = "switch_latency")]
struct Args {
    /// Measured switches per setup.
    #[arg(long, env = "SWITCHES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    switches: u32,
    /// Services in the deployment; a switch changes one route among them.
    #[arg(long, env = "SERVICES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    services: u32,
    /// Switches per setup before the measured ones; printed, not in the statistics.
    #[arg(long, env = "WARMUP", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1000))]
    warmup: u32,
    /// Seconds between switches (0 to 10).
    #[arg(long, env = "PAUSE", default_value_t = 0.05)]
    pause: f64,
    /// Sleep during pauses instead of keeping a trickle of requests on both Envoys.
    #[arg(long, env = "IDLE_PAUSE")]
    idle_pause: bool,
    /// Seconds between probe requests during a switch (0 to 0.1).
    #[arg(long, env = "POLL_INTERVAL", default_value_t = 0.0002)]
    poll_interval: f64,
    /// Seconds a switch may take before it counts as timed out (up to 60).
    #[arg(long, env = "SWITCH_TIMEOUT", default_value_t = 5.0)]
    timeout: f64,
    /// Setup B: each resource file in a watched directory of its own (`per-file`), or all in one
    /// (`shared`), so that every save reloads every file.
    #[arg(long, env = "B_DIRS", default_value_t = Dirs::PerFile)]
    b_dirs: Dirs,
    /// Envoy worker threads, both Envoys.
    #[arg(long, env = "ENVOY_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// cutover at RUST_LOG=info and Envoy without rds:debug: no breakdown.
    #[arg(long, env = "QUIET_LOGS")]
    quiet_logs: bool,
    /// Where to create the work directory (default: the system's temporary directory); its
    /// file system decides how long the rename of a save takes.
    #[arg(long, env = "WORKDIR")]
    workdir: Option<PathBuf>,
    /// Also write the summary and every sample to this file.
    #[arg(long, env = "SWITCH_JSON")]
    json: Option<PathBuf>,
    /// Keep the work directory (configs and logs).
    #[arg(long, env = "KEEP")]
    keep: bool,
    /// The Envoy binary (default: ENVOY_BIN, .venv/bin/envoy, or envoy on PATH).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// What `cargo bench` passes to every bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn seconds(name: &str, value: f64, range: std::ops::RangeInclusive<f64>) -> Duration {
    if !range.contains(&value) {
        eprintln!(
            "--{name} must be {} to {} seconds, not {value}",
            range.start(),
            range.end()
        );
        std::process::exit(2);
    }
    Duration::from_secs_f64(value)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let options = Options {
        switches: args.switches as usize,
        warmup: args.warmup as usize,
        services: args.services as usize,
        pause: seconds("pause", args.pause, 0.0..=10.0),
        idle_pause: args.idle_pause,
        poll_interval: seconds("poll-interval", args.poll_interval, 0.0..=0.1),
        timeout: seconds("timeout", args.timeout, 0.001..=60.0),
        dirs: args.b_dirs,
        concurrency: args.concurrency as usize,
        quiet_logs: args.quiet_logs,
        workdir: args.workdir.clone(),
        keep: args.keep,
        ..Options::default()
    };
    let Some(envoy) = args.envoy.clone().or_else(envoy_binary) else {
        eprintln!(
            "Envoy not found: pass --envoy, set ENVOY_BIN or run scripts/test once to install it"
        );
        std::process::exit(2);
    };
    let m = switch_latency::run(&envoy, &options).await;
    let result = result(&m, &options);
    let environment = environment(&m, &options, &envoy);
    print_report(&environment, &result, &options);
    if let Some(path) = &args.json {
        let all = json!({ "environment": environment, "result": result, "samples": m.samples });
        let text = serde_json::to_string_pretty(&all).expect("serialise the results");
        std::fs::write(path, text + "\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        log(&format!(
            "summary and samples written to {}",
            path.display()
        ));
    }
    if m.samples.iter().any(|s| s.timed_out) {
        std::process::exit(1);
    }
}

/// The statistics of the measured (not warm-up) switches of `side`, as JSON: a [`Summary`] with
/// how many switches lacked the figure, or null.
fn stat(
    m: &Measurement,
    side: Side,
    get: impl Fn(&switch_latency::Sample) -> Option<f64>,
) -> Value {
    let mine: Vec<_> = m.of(side).filter(|s| !s.warmup).collect();
    let xs: Vec<f64> = mine.iter().filter_map(|s| get(s)).collect();
    match Summary::of(&xs) {
        Some(summary) => {
            let mut v = json!(summary);
            v["missing"] = json!(mine.len() - xs.len());
            v
        }
        None => Value::Null,
    }
}

fn summary(xs: &[f64]) -> Value {
    Summary::of(xs).map_or(Value::Null, |s| json!(s))
}

fn result(m: &Measurement, o: &Options) -> Value {
    let (mut latency, mut applied, mut checks, mut rtt) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    for side in Side::BOTH {
        let name = format!("{side:?}");
        let mine: Vec<_> = m.of(side).filter(|s| !s.warmup).collect();
        let mean = |f: &dyn Fn(&switch_latency::Sample) -> f64| {
            mine.iter().map(|s| f(s)).sum::<f64>() / mine.len().max(1) as f64
        };
        let pause = &m.pause_traffic[&side];
        latency.insert(name.clone(), stat(m, side, |s| s.latency_ms));
        if !o.quiet_logs {
            applied.insert(name.clone(), stat(m, side, |s| s.envoy_applied_ms));
        }
        let renames: Vec<f64> = mine.iter().map(|s| s.rename_ms).collect();
        checks.insert(
            name.clone(),
            json!({
                "timed_out": mine.iter().filter(|s| s.timed_out).count(),
                "error_responses_during_switches": mine.iter().map(|s| s.error_responses).sum::<usize>(),
                "old_responses_per_switch_mean": mean(&|s| s.old_responses as f64),
                "probe_period_ms_mean": mean(&|s| s.poll_period_ms),
                "rename_ms": summary(&renames),
                "pause_requests": pause.requests,
                "pause_error_responses": pause.errors,
                "pause_error_samples": pause.error_samples,
                "warmup_latency_ms": m.of(side).filter(|s| s.warmup).map(|s| s.latency_ms).collect::<Vec<_>>(),
            }),
        );
        rtt.insert(name, summary(&m.probe_rtt_ms[&side]));
    }
    checks.get_mut("A").expect("setup A")["status_in_sync"] =
        json!({ "in_sync": m.status_in_sync, "not_in_sync": m.status_not_in_sync });
    let mut cutover = serde_json::Map::new();
    if !o.quiet_logs {
        let steps = |s: &switch_latency::Sample| s.cutover.clone().unwrap_or_default();
        cutover.insert("loaded_ms".into(), stat(m, Side::A, |s| steps(s).loaded_ms));
        cutover.insert(
            "rds_push_ms".into(),
            stat(m, Side::A, |s| steps(s).rds_push_ms),
        );
        cutover.insert(
            "rds_ack_ms".into(),
            stat(m, Side::A, |s| steps(s).rds_ack_ms),
        );
        let mut types: Vec<String> = m
            .of(Side::A)
            .filter(|s| !s.warmup)
            .map(|s| steps(s).pushed_types.join(","))
            .collect();
        types.sort();
        types.dedup();
        cutover.insert("pushed_types".into(), json!(types));
    }
    json!({
        "latency": latency,
        "envoy_applied": applied,
        "cutover": cutover,
        "checks": checks,
        "probe_rtt_at_rest": rtt,
    })
}

fn environment(m: &Measurement, o: &Options, envoy: &std::path::Path) -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let command = if args.is_empty() {
        "cargo bench --bench switch_latency".to_owned()
    } else {
        format!("cargo bench --bench switch_latency -- {}", args.join(" "))
    };
    json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": format!("{} {} {}, {cpus} CPUs", std::env::consts::OS, kernel.trim(), std::env::consts::ARCH),
        "cutover": m.cutover_version,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "envoy": m.envoy_version,
        "envoy_bin": envoy,
        "switches": o.switches,
        "warmup": o.warmup,
        "pause_s": o.pause.as_secs_f64(),
        "pause_traffic": !o.idle_pause,
        "poll_interval_s": o.poll_interval.as_secs_f64(),
        "envoy_concurrency": o.concurrency,
        "services": o.services,
        "b_dirs": o.dirs,
        "workdir": format!("{} ({})", m.work_dir.display(), m.work_fs),
        "work_fs": m.work_fs,
        "logs": if o.quiet_logs { "info" } else { "cutover=debug, envoy rds:debug" },
        "command": command,
    })
}

const LABELS: [(&str, &str); 2] = [
    ("A", "A  cutover: deploy.yaml -> ADS -> Envoy"),
    ("B", "B  Envoy: RDS file (path_config_source)"),
];

fn row(label: &str, s: &Value) {
    if s.is_null() {
        println!("  {label:<44}{:>5}", "-");
        return;
    }
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    let missing = s["missing"].as_u64().unwrap_or(0);
    let miss = if missing > 0 {
        format!("   ({missing} without this event)")
    } else {
        String::new()
    };
    println!(
        "  {label:<44}{:>5}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{miss}",
        s["n"].as_u64().unwrap_or(0),
        f("median"),
        f("p90"),
        f("p99"),
        f("min"),
        f("max"),
        f("mean")
    );
}

fn ratio(table: &Value) -> String {
    match (table["A"]["median"].as_f64(), table["B"]["median"].as_f64()) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

fn print_report(env: &Value, result: &Value, o: &Options) {
    let cols = format!(
        "{:>5}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "n", "median", "p90", "p99", "min", "max", "mean"
    );
    println!();
    println!(
        "Switch latency: {} switches per setup, interleaved A,B,A,B (+{} warmup each, not counted); {:.0} ms between switches{}",
        o.switches,
        o.warmup,
        o.pause.as_secs_f64() * 1000.0,
        if o.idle_pause {
            ""
        } else {
            " with a trickle of requests"
        }
    );
    println!(
        "{}; Envoy {} (--concurrency {}); {} ({} build); {} services; B watched directories: {}",
        env["machine"].as_str().unwrap_or_default(),
        env["envoy"].as_str().unwrap_or_default(),
        o.concurrency,
        env["cutover"].as_str().unwrap_or_default(),
        env["build"].as_str().unwrap_or_default(),
        o.services,
        o.dirs
    );
    println!(
        "work directory on {}; command: {}",
        env["work_fs"].as_str().unwrap_or_default(),
        env["command"].as_str().unwrap_or_default()
    );
    println!();
    println!("  save (rename) -> first response from the new version, ms");
    println!("  {:<44}{cols}", "");
    for (k, label) in LABELS {
        row(label, &result["latency"][k]);
    }
    println!("  ratio of medians A/B: {}", ratio(&result["latency"]));
    if !o.quiet_logs {
        println!();
        println!(
            "  save (rename) -> Envoy's main thread takes the new routes (Envoy log, rds:debug), ms"
        );
        println!("  {:<44}{cols}", "");
        for (k, label) in LABELS {
            row(label, &result["envoy_applied"][k]);
        }
        println!(
            "  ratio of medians A/B: {}",
            ratio(&result["envoy_applied"])
        );
        println!();
        println!("  setup A step by step (cutover's log), ms after the save");
        println!("  {:<44}{cols}", "");
        let c = &result["cutover"];
        row("cutover: config published (watch+compile)", &c["loaded_ms"]);
        row("cutover: RDS response handed to gRPC", &c["rds_push_ms"]);
        row(
            "Envoy: new routes taken (Envoy log)",
            &result["envoy_applied"]["A"],
        );
        row("cutover: Envoy's RDS ACK received", &c["rds_ack_ms"]);
        row(
            "probe: first response from the new version",
            &result["latency"]["A"],
        );
        println!("  types pushed per switch: {}", c["pushed_types"]);
    }
    println!();
    print_checks(result);
}

/// What each setup's switches and pauses saw besides the figures.
fn print_checks(result: &Value) {
    for (k, _) in LABELS {
        let c = &result["checks"][k];
        let warm: Vec<String> = c["warmup_latency_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_f64().map(|x| format!("{x:.2}")))
            .collect();
        let warm = if warm.is_empty() {
            "-".to_owned()
        } else {
            warm.join(", ")
        };
        let r = &c["rename_ms"];
        println!(
            "  {k}: timed out {}; error responses: {} during switches, {} of {} between them; probe period {:.2} ms; warmup switches [{warm}] ms",
            c["timed_out"],
            c["error_responses_during_switches"],
            c["pause_error_responses"],
            c["pause_requests"],
            c["probe_period_ms_mean"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "     the rename itself (included above): median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            r["median"].as_f64().unwrap_or(f64::NAN),
            r["p90"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for (k, _) in LABELS {
        let r = &result["probe_rtt_at_rest"][k];
        println!(
            "  {k}: probe round trip at rest ({} requests): median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            r["n"],
            r["median"].as_f64().unwrap_or(f64::NAN),
            r["p90"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let st = &result["checks"]["A"]["status_in_sync"];
    println!(
        "  A: cutover /status showed the Envoy in sync at the new version after {} switches (not within 2 s: {})",
        st["in_sync"], st["not_in_sync"]
    );
    println!();
}
