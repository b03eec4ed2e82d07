//! Benchmark: cluster mode (`cutover serve --etcd`) on three real etcd members on loopback and
//! release-built replicas (build with `--features cluster`).
//!
//! 1. A fleet of N simulated Envoys (real ADS streams, `cutover::testing::fleet`) spread over
//!    R replicas (R = 1 and 3): first connection, a route change and a new version switched to
//!    (p50/p99 from the save on the leader's copy to the last stream holding it, every
//!    replica's CPU for it), and a reconnect storm; with the writes and bytes etcd received for
//!    each (etcd's own `/metrics`): etcd's load must follow decisions and replicas, not Envoys.
//! 2. etcd's load at rest and with K rollouts taking a step every second, N Envoys connected.
//! 3. Leader failover: SIGKILL of the leader; time until another replica leads and until its
//!    first decision is in etcd (a record it wrote), for `--lease-ttl` 2 s and 5 s.
//!
//! Run:
//!
//!     cargo bench --features cluster --bench cluster                 # N = 3000, 100 services
//!     STREAMS=1500 SERVICES=100 RUNS=5 cargo bench --features cluster --bench cluster

use std::time::{Duration, Instant};

use cutover::testing::etcd::EtcdCluster;
use cutover::testing::fleet::{Edits, Fleet, Target, deployment, percentile, usage};
use cutover::testing::{Cutover, DeploymentFile, Protocol, eventually, free_port};

fn main() {
    let n: usize = env("STREAMS", 3000);
    let services: usize = env("SERVICES", 100);
    let runs: usize = env("RUNS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let Some(etcd) = EtcdCluster::start(3).await else {
            panic!("etcd is needed: install Debian's etcd-server");
        };
        println!("| replicas | streams | what | p50 ms | p99 ms | CPU ms, all replicas | etcd writes | etcd KiB received |");
        println!("|---:|---:|---|---:|---:|---:|---:|---:|");
        for replicas in [1, 3] {
            fleet_over(&etcd, replicas, n, services).await;
        }
        println!();
        rollouts_load(&etcd, n, services).await;
        println!();
        println!("| lease TTL | runs | another replica leads, p50 / max ms | its first decision in etcd, p50 / max ms |");
        println!("|---:|---:|---|---|");
        for ttl in [2, 5] {
            failover(&etcd, ttl, runs).await;
        }
    });
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// etcd's counters: puts (one member: every member applies every put) and bytes received
/// from clients (all members: each client talks to one).
async fn etcd_counters(etcd: &EtcdCluster) -> (f64, f64) {
    let client = reqwest::Client::new();
    let (mut puts, mut bytes) = (0.0, 0.0);
    for (i, url) in etcd.endpoints().iter().enumerate() {
        let Ok(r) = client.get(format!("{url}/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines() {
            let value = || {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if i == 0 && line.starts_with("etcd_mvcc_put_total ") {
                puts += value();
            }
            if line.starts_with("etcd_network_client_grpc_received_bytes_total") {
                bytes += value();
            }
        }
    }
    (puts, bytes)
}

/// Starts replica `i` of `prefix` on `text`, its file in `dir`.
async fn replica(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    prefix: &str,
    i: usize,
    text: &str,
    extra: &[&str],
) -> Cutover {
    let dir = dir.join(format!("r{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = DeploymentFile::new(dir.join("fleet.yaml"));
    file.write_renamed(text);
    let endpoints = etcd.endpoints().join(",");
    let name = format!("r{i}");
    let mut args = vec![
        "--etcd",
        &endpoints,
        "--etcd-prefix",
        prefix,
        "--replica",
        &name,
        "--max-streams",
        "20000",
    ];
    args.extend_from_slice(extra);
    Cutover::start_at(&dir, &file.path, free_port(), &args, "warn").await
}

async fn role(r: &Cutover) -> String {
    r.try_status()
        .await
        .ok()
        .and_then(|s| s.cluster)
        .map(|c| c.role)
        .unwrap_or_default()
}

/// Part 1 at `replicas` replicas.
async fn fleet_over(etcd: &EtcdCluster, replicas: usize, n: usize, services: usize) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("/bench/fleet{replicas}");
    let base = deployment(services, 3, &Edits::default());
    let mut rs = Vec::new();
    for i in 0..replicas {
        rs.push(replica(etcd, dir.path(), &prefix, i, &base, &[]).await);
        if i == 0 {
            eventually(Duration::from_secs(30), "r0 to lead", async || {
                role(&rs[0]).await == "leader"
            })
            .await;
        }
    }
    let leader_file = DeploymentFile::new(dir.path().join("r0/fleet.yaml"));
    let cpu = |rs: &[Cutover]| rs.iter().map(|r| usage(r.pid()).cpu).sum::<Duration>();
    let row = async |what: &str, lat: &[Duration], cpu: Duration, before: (f64, f64)| {
        let after = etcd_counters(etcd).await;
        println!(
            "| {replicas} | {n} | {what} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} |",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            cpu.as_secs_f64() * 1000.0,
            after.0 - before.0,
            (after.1 - before.1) / 1024.0
        );
    };
    let mut generation = 1;
    let (counters, cpu0, t0) = (etcd_counters(etcd).await, cpu(&rs), Instant::now());
    let mut fleets = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        let share = n / replicas + usize::from(i < n % replicas);
        fleets.push(
            Fleet::connect(
                r.ads,
                share,
                Protocol::Sotw,
                Target::compile(&base, generation),
                None,
            )
            .await,
        );
    }
    let mut lat = converged(&fleets, t0).await;
    row(
        "first connection of every stream",
        &lat,
        cpu(&rs) - cpu0,
        counters,
    )
    .await;
    for (what, edits) in Edits::series().into_iter().skip(1).step_by(2) {
        generation += 1;
        let text = deployment(services, 3, &edits);
        for f in &fleets {
            f.set_target(Target::compile(&text, generation));
        }
        let (counters, cpu0, t0) = (etcd_counters(etcd).await, cpu(&rs), Instant::now());
        leader_file.write_renamed(&text);
        lat = converged(&fleets, t0).await;
        row(what, &lat, cpu(&rs) - cpu0, counters).await;
    }
    generation += 1;
    let (counters, cpu0, t0) = (etcd_counters(etcd).await, cpu(&rs), Instant::now());
    for f in &fleets {
        f.set_target(Target::compile(
            &deployment(services, 3, &Edits::series().last().unwrap().1),
            generation,
        ));
        f.reconnect_all();
    }
    lat = converged(&fleets, t0).await;
    // Answers written within the storm land after it: wait them out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    row("reconnect storm", &lat, cpu(&rs) - cpu0, counters).await;
    for f in fleets {
        f.close().await;
    }
    for mut r in rs {
        r.terminate(Duration::from_secs(10)).await;
    }
}

/// Every stream of every fleet in sync; the times, sorted.
async fn converged(fleets: &[Fleet], since: Instant) -> Vec<Duration> {
    let mut all = Vec::new();
    for f in fleets {
        all.extend(
            f.converged(since, Duration::from_secs(300))
                .await
                .expect("the fleet converged"),
        );
    }
    all.sort();
    all
}

/// Part 2: etcd's load with `k` rollouts stepping every second and `n` streams on 3 replicas.
async fn rollouts_load(etcd: &EtcdCluster, n: usize, services: usize) {
    println!(
        "| rollouts stepping every 1 s | streams on 3 replicas | etcd writes/s | etcd KiB/s received |"
    );
    println!("|---:|---:|---:|---:|");
    for k in [0, 1, 5] {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("/bench/rollouts{k}");
        let mut text = deployment(services, 3, &Edits::default());
        for s in 0..k {
            let from = format!("  s{}:\n", 10 + s);
            let i = text.find(&from).unwrap();
            let active = text[i..].find("    active: blue\n").unwrap() + i;
            text.replace_range(
                active..active + "    active: blue\n".len(),
                "    strategy:\n      canary:\n        stable: blue\n        canary: green\n        steps: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]\n        interval: 1s\n",
            );
        }
        let mut rs = Vec::new();
        for i in 0..3 {
            rs.push(replica(etcd, dir.path(), &prefix, i, &text, &[]).await);
        }
        let target = Target::compile(&text, 1);
        let mut fleets = Vec::new();
        for r in &rs {
            fleets.push(Fleet::connect(r.ads, n / 3, Protocol::Sotw, target.clone(), None).await);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = etcd_counters(etcd).await;
        let window = Duration::from_secs(10);
        tokio::time::sleep(window).await;
        let after = etcd_counters(etcd).await;
        println!(
            "| {k} | {} | {:.1} | {:.1} |",
            n / 3 * 3,
            (after.0 - before.0) / window.as_secs_f64(),
            (after.1 - before.1) / 1024.0 / window.as_secs_f64()
        );
        for f in fleets {
            f.close().await;
        }
        for mut r in rs {
            r.terminate(Duration::from_secs(10)).await;
        }
    }
}

/// Part 3: `runs` SIGKILLs of the leader of three replicas with `--lease-ttl ttl`.
async fn failover(etcd: &EtcdCluster, ttl: u64, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("/bench/failover{ttl}");
    // A canary taking a step every second: the leader decides (writes a record) that often.
    let steps: Vec<String> = (1..=50).map(|i| (i * 2).to_string()).collect();
    let text = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:1] }}\n      green: {{ endpoints: [127.0.0.1:2] }}\n    strategy:\n      canary:\n        stable: blue\n        canary: green\n        steps: [{}]\n        interval: 1s\n",
        steps.join(", ")
    );
    let ttl_arg = format!("{ttl}s");
    let mut rs = Vec::new();
    for i in 0..3 {
        rs.push(
            replica(
                etcd,
                dir.path(),
                &prefix,
                i,
                &text,
                &["--lease-ttl", &ttl_arg],
            )
            .await,
        );
    }
    let store = cutover::cluster::Etcd::connect(&etcd.endpoints(), &prefix)
        .await
        .unwrap();
    let (mut leads, mut decides) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut leader = None;
        eventually(Duration::from_secs(30), "a leader", async || {
            for (i, r) in rs.iter().enumerate() {
                if role(r).await == "leader" {
                    leader = Some(i);
                    return true;
                }
            }
            false
        })
        .await;
        let l = leader.unwrap();
        let dead = format!("r{l}");
        let from = store.load().await.unwrap().map_or(0, |r| r.revision);
        let mut records = store.follow(from).await.unwrap();
        rs[l].kill();
        let killed = Instant::now();
        let others: Vec<&Cutover> = rs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != l)
            .map(|(_, r)| r)
            .collect();
        eventually(Duration::from_secs(30), "another leader", async || {
            for r in &others {
                if role(r).await == "leader" {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            false
        })
        .await;
        leads.push(killed.elapsed());
        loop {
            let r = records.next().await.unwrap();
            if r.leader != dead {
                break;
            }
        }
        decides.push(killed.elapsed());
        rs[l].start_again().await;
    }
    leads.sort();
    decides.sort();
    println!(
        "| {ttl} s | {runs} | {:.0} / {:.0} | {:.0} / {:.0} |",
        percentile(&leads, 0.5),
        percentile(&leads, 1.0),
        percentile(&decides, 0.5),
        percentile(&decides, 1.0)
    );
    for mut r in rs {
        r.terminate(Duration::from_secs(10)).await;
    }
}
