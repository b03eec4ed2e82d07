//! `cutover demo`, the no-Docker twin, as a user runs it: a real Envoy, cutover and the demo
//! upstreams as processes on loopback. It runs a few seconds, traffic flows (HTTPS too, with the
//! certificate the demo made, over xDS on mutual TLS), a scripted save of
//! its deployment file shifts the measured split, and Ctrl-C (SIGINT) leaves no process behind.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cutover::testing::curl::Curl;
use cutover::testing::{envoy_binary, free_port};

/// Four consecutive free loopback ports (the demo's upstreams).
fn four_free_ports() -> u16 {
    for _ in 0..200 {
        let base = free_port().port();
        if base > 65000 {
            continue;
        }
        let held: Vec<TcpListener> = (0..4)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == 4 {
            return base;
        }
    }
    panic!("no four consecutive free ports on 127.0.0.1");
}

/// A `demo t=3s blue=20 green=0 ... errors=0` line as numbers by name.
fn counts(line: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let rest = line.strip_prefix("demo t=")?;
    Some(
        rest.split_whitespace()
            .skip(1)
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Waits for a line of the view that satisfies `ok`; panics with the lines seen.
fn wait_line(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    ok: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool,
) -> std::collections::BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                seen.push(line.clone());
                if let Some(c) = counts(&line)
                    && ok(&c)
                {
                    return c;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!(
        "no view line showing {what}; the demo printed:\n{}",
        seen.join("\n")
    );
}

/// Living (not zombie) processes whose parent is `ppid`, from /proc: (pid, process group).
fn children_of(ppid: u32) -> Vec<(u32, u32)> {
    proc_stats()
        .into_iter()
        .filter(|s| s.ppid == ppid && s.state != 'Z')
        .map(|s| (s.pid, s.pgrp))
        .collect()
}

struct Stat {
    pid: u32,
    state: char,
    ppid: u32,
    pgrp: u32,
}

fn proc_stats() -> Vec<Stat> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        out.push(Stat {
            pid,
            state: f[0].chars().next().unwrap_or('?'),
            ppid: f[1].parse().unwrap_or(0),
            pgrp: f[2].parse().unwrap_or(0),
        });
    }
    out
}

/// Ctrl-C to a process of ours.
fn interrupt(pid: u32) -> rustix::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::SRCH)?;
    rustix::process::kill_process(pid, rustix::process::Signal::INT)
}

/// HTTPS through the demo's front Envoy answers from `version`, with the certificate the demo
/// made (its key sent to Envoy over SDS, on the xDS connection the demo runs on mutual TLS),
/// trusting only the demo's CA.
fn https_answers(curl: &Curl, dir: &std::path::Path, port: u16, version: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = dir.join("certs/ca.pem");
    let reply = runtime
        .block_on(curl.get(&ca, "localhost", port, &[]))
        .unwrap_or_else(|e| panic!("HTTPS through the demo's front Envoy: {e}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with(version), "{reply:?}");
}

#[test]
fn the_demo_shows_traffic_follows_an_edit_and_leaves_nothing_on_ctrl_c() {
    let (Some(envoy), Some(curl)) = (envoy_binary(), Curl::find()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let https_port = free_port().port();
    let upstream_port = four_free_ports();
    let addr = |a: SocketAddr| a.to_string();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("demo")
        .arg("--envoy")
        .arg(&envoy)
        .arg(format!("--port={port}"))
        .arg(format!("--https-port={https_port}"))
        .arg(format!("--upstream-port={upstream_port}"))
        .arg(format!("--ads={}", addr(free_port())))
        .arg(format!("--admin={}", addr(free_port())))
        .arg(format!("--envoy-admin={}", addr(free_port())))
        .arg("--dir")
        .arg(dir.path())
        .args(["--rate=50", "--duration=60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cutover demo");
    let demo_pid = demo.id();
    let (tx, lines) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Whatever happens below, the demo does not outlive the test.
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = interrupt(self.0);
        }
    }
    let guard = Guard(demo_pid);
    let mut seen = Vec::new();

    // Traffic flows, all to blue.
    wait_line(&lines, &mut seen, "blue answering", |c| {
        c["blue"] >= 30 && c["errors"] == 0
    });
    let children = children_of(demo_pid);
    assert_eq!(
        children.len(),
        6,
        "four upstreams, cutover and Envoy: {children:?}"
    );
    for (pid, pgrp) in &children {
        assert_eq!(pid, pgrp, "each process leads a process group of its own");
    }
    https_answers(&curl, dir.path(), https_port, "blue");

    // A save of the file it printed moves the traffic: to green, then canary at 50%.
    let file = dir.path().join("demo.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("active: blue", "active: green")).unwrap();
    wait_line(&lines, &mut seen, "all traffic on green", |c| {
        c["green"] >= 30 && c["blue"] == 0 && c["errors"] == 0
    });
    std::fs::write(
        &file,
        text.replace(
            "active: blue",
            "strategy: { canary: { stable: green, canary: canary, weight: 50 } }",
        ),
    )
    .unwrap();
    // Two seconds of 50 requests each at 50%: both versions clearly answer.
    let split = wait_line(&lines, &mut seen, "green and canary sharing", |c| {
        c["canary"] >= 10 && c["green"] >= 10 && c["blue"] == 0 && c["errors"] == 0
    });
    eprintln!("cutover demo, canary at 50%, one second: {split:?}");

    // Ctrl-C: the demo stops every process it started and exits 0.
    interrupt(demo_pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not exit within 15 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::mem::forget(guard);
    assert!(status.success(), "cutover demo exited with {status}");
    let groups: Vec<u32> = children.iter().map(|(_, g)| *g).collect();
    let left: Vec<u32> = proc_stats()
        .into_iter()
        .filter(|s| s.state != 'Z' && (groups.contains(&s.pgrp) || s.ppid == demo_pid))
        .map(|s| s.pid)
        .collect();
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the front Envoy still listens"
    );
}
