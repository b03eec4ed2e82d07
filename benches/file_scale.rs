//! Benchmark: how cutover's cost grows with the deployment file, and what memory a big file
//! leaves behind.
//!
//! 1. Files of 100, 1,000 and 10,000 services (blue and green versions of 3 endpoints each,
//!    one listener routing to all, one service a canary): the time of each stage — parse and
//!    validate, plan, translate, encode — in-process (median of RUNS runs), the encoded
//!    snapshot's size, and the resident memory of a `cutover serve` that loaded the file.
//! 2. A file of 100,000 endpoints loaded by `cutover serve`, then replaced by a small one:
//!    resident memory before, with the big file, and after the small one replaced it.
//!
//! ```sh
//! cargo bench --bench file_scale
//! SCALES=100,1000 RUNS=3 cargo bench --bench file_scale
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::reconcile::{RuntimeState, Timestamp, plan};
use cutover::snapshot::{Builder, Snapshot};
use cutover::testing::fleet::{Edits, deployment, usage};
use cutover::testing::{Cutover, DeploymentFile};
use cutover::translate::translate;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// A save that changes one service (s0's canary weight, 10% -> 20% and back) as `cutover
/// serve` reads it: the median time to parse and validate it (only that service is read again),
/// and the median of the whole save (parse, plan, translate and encode what changed).
fn one_service_saved(services: usize, text: &str, runs: usize) -> (f64, f64) {
    let edited = deployment(
        services,
        3,
        &Edits {
            weight: true,
            ..Edits::default()
        },
    );
    let limits = cutover::spec::Limits::current();
    let mut reparser = cutover::spec::Reparser::default();
    let spec = reparser
        .parse_with("scale.yaml", text, limits)
        .expect("valid");
    // As `cutover serve` builds snapshots: keeping what the last save encoded the same way.
    let mut builder = Builder::default();
    builder.build(&Arc::new(plan(
        &spec,
        &RuntimeState::default(),
        Timestamp::now(),
    )));
    let (mut reread, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for next in [&edited, text] {
            let t = Instant::now();
            let spec = reparser
                .parse_with("scale.yaml", next, limits)
                .expect("valid");
            reread.push(t.elapsed());
            assert_eq!(reparser.last().kept + 1, services);
            let plan = Arc::new(plan(&spec, &RuntimeState::default(), Timestamp::now()));
            let (snapshot, built) = builder.build(&plan);
            whole.push(t.elapsed());
            assert_eq!(built.encoded, 2, "the listener and its routes");
            drop((plan, snapshot));
        }
    }
    (median(reread), median(whole))
}

/// The parser's default budget stops at 250,000 values; cutover's own is its limits'.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = usize::MAX;
    budget.max_events = usize::MAX;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn main() {
    let scales: Vec<usize> = std::env::var("SCALES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SCALES: numbers"))
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    println!(
        "| services | file | parse + validate ms | of which YAML ms | a save of one service: parse + validate ms | plan ms | translate ms | encode ms | total ms | a save of one service: total ms | snapshot | cutover RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &services in &scales {
        let text = deployment(services, 3, &Edits::default());
        let (mut parse, mut yaml, mut planning, mut translating, mut encoding) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut size = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let spec = cutover::spec::parse("scale.yaml", &text).expect("valid");
            parse.push(t.elapsed());
            // The YAML alone: text to the raw, spanned structs, before any validation.
            let t = Instant::now();
            let raw: cutover::spec::RawSpec =
                serde_saphyr::from_str_with_options(&text, yaml_options()).expect("valid YAML");
            yaml.push(t.elapsed());
            drop(raw);
            let t = Instant::now();
            let p = plan(&spec, &RuntimeState::default(), Timestamp::now());
            planning.push(t.elapsed());
            let t = Instant::now();
            let resources = translate(&p);
            translating.push(t.elapsed());
            let t = Instant::now();
            let snapshot = Snapshot::new(&resources);
            encoding.push(t.elapsed());
            size = snapshot.encoded_len();
        }
        let (r, w) = one_service_saved(services, &text, runs);
        let (a, y, b, c, d) = (
            median(parse),
            median(yaml),
            median(planning),
            median(translating),
            median(encoding),
        );
        let rss = runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let file = DeploymentFile::new(dir.path().join("scale.yaml"));
            file.write_renamed(&text);
            let mut server = start(dir.path(), &file).await;
            let rss = usage(server.pid()).rss_bytes;
            server.terminate(Duration::from_secs(10)).await;
            rss
        });
        println!(
            "| {services} | {} KiB | {a:.1} | {y:.1} | {r:.1} | {b:.1} | {c:.1} | {d:.1} | {:.1} | {w:.1} | {} KiB | {:.1} MiB |",
            text.len() / 1024,
            a + b + c + d,
            size / 1024,
            mib(rss)
        );
    }

    // 1,000 services × 2 versions × 50 endpoints = 100,000 endpoints, then 10 services.
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let file = DeploymentFile::new(dir.path().join("big.yaml"));
        let small = deployment(10, 3, &Edits::default());
        file.write_renamed(&small);
        let mut server = start(dir.path(), &file).await;
        let settle = || tokio::time::sleep(Duration::from_secs(2));
        settle().await;
        let before = usage(server.pid()).rss_bytes;
        let big = deployment(1000, 50, &Edits::default());
        file.write_renamed(&big);
        let loaded = wait_for_snapshot(&server, "the big file", |b| b > 1 << 20).await;
        settle().await;
        let with_big = usage(server.pid()).rss_bytes;
        file.write_renamed(&small);
        wait_for_snapshot(&server, "the small file", |b| b < 1 << 20).await;
        settle().await;
        let after = usage(server.pid()).rss_bytes;
        println!();
        println!("| cutover serve | resident memory |\n|---|---:|");
        println!("| 10 services loaded | {:.1} MiB |", mib(before));
        println!(
            "| 100,000 endpoints loaded ({} KiB file, {} KiB snapshot) | {:.1} MiB |",
            big.len() / 1024,
            loaded / 1024,
            mib(with_big)
        );
        println!(
            "| replaced by the 10 services again | {:.1} MiB |",
            mib(after)
        );
        server.terminate(Duration::from_secs(10)).await;
    });
}

/// `cutover serve` on `file`, logging little (logging costs it time and memory).
async fn start(dir: &std::path::Path, file: &DeploymentFile) -> Cutover {
    Cutover::start_logging(dir, &file.path, &[], "warn").await
}

/// Waits until the served snapshot's size satisfies `done` (at most 30 s); its size.
async fn wait_for_snapshot(server: &Cutover, what: &str, done: impl Fn(u64) -> bool) -> u64 {
    for _ in 0..600 {
        let size = cutover::telemetry::report::count(server.metric("cutover_snapshot_bytes").await);
        if done(size) {
            return size;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} was not loaded within 30 s");
}
