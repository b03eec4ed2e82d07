//! `cutover status`: a running cutover's `GET /status`, as tables an operator reads at a glance.
//!
//! [`fetch`] makes the one HTTP request; [`render_status`] is pure (report in, text out) so its
//! output is snapshot-tested without a server. It reads the very types the server writes
//! ([`crate::api`]): every field has a default and an unknown state reads as `Unknown`, so a
//! `cutover status` of another release still shows what it understands.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use super::style::{Painter, Style, Table, percent};
use crate::api::{
    BaselineReport, DrainReason, NodeReport, ObservedVersion, PastRolloutReport, ReloadStatus,
    RolloutCommand, RolloutKind, RolloutReport, RolloutState, ServiceReport, StatusReport,
    Strategy, TelemetryState, Verdict, WaitAnswer, WaitFor,
};
use crate::http_client;

/// The default admin address of `cutover serve`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:19000";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "cannot reach cutover's admin API at {addr}: {source}\n\
         is `cutover serve` running? Give its admin address with --admin ADDR (default {DEFAULT_ADMIN})"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}; is it cutover's admin address (--admin)?")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the request to {addr} failed: {source}; is it cutover's admin address (--admin)?")]
    Http {
        addr: SocketAddr,
        #[source]
        source: http_client::Error,
    },
    #[error(
        "http://{addr}/status answered {status} ({body}); is {addr} cutover's admin address (--admin)?"
    )]
    Status {
        addr: SocketAddr,
        status: http_client::StatusCode,
        body: String,
    },
    #[error("cannot make the request: {0}")]
    Request(String),
    #[error("http://{addr}/status is not cutover's status JSON: {source}")]
    Json {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// How long one request to the admin API may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

impl FetchError {
    fn of(addr: SocketAddr, e: http_client::Error) -> FetchError {
        match e {
            http_client::Error::Connect(source) => FetchError::Connect { addr, source },
            http_client::Error::Timeout(timeout) => FetchError::Timeout { addr, timeout },
            e @ (http_client::Error::Url(_) | http_client::Error::Request(_)) => {
                FetchError::Request(e.to_string())
            }
            e @ http_client::Error::Http(_) => FetchError::Http { addr, source: e },
        }
    }
}

/// `GET http://{admin}/status`: the body as served, and as read.
pub async fn fetch(admin: SocketAddr) -> Result<(String, StatusReport), FetchError> {
    let answer = send(admin, http_client::Method::GET, "/status", None).await?;
    let body = answer.text();
    if !answer.status.is_success() {
        return Err(FetchError::Status {
            addr: admin,
            status: answer.status,
            body: first_line(&body),
        });
    }
    let status = serde_json::from_str(&body).map_err(|source| FetchError::Json {
        addr: admin,
        source,
    })?;
    Ok((body, status))
}

/// One request to the admin API, on its own connection (it is local and asked once a second
/// at most: there is nothing to pool): the answer, whatever its status.
async fn send(
    addr: SocketAddr,
    method: http_client::Method,
    path: &str,
    token: Option<&str>,
) -> Result<http_client::Answer, FetchError> {
    let url = format!("http://{addr}{path}");
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    http_client::Client::new()
        .send(method, &url, &headers, TIMEOUT)
        .await
        .map_err(|e| FetchError::of(addr, e))
}

/// One `GET /wait/{what}?service=..&target=..`: the answer, or the server's refusal (an
/// unknown service or target).
pub async fn wait_once(
    admin: SocketAddr,
    what: WaitFor,
    service: &str,
    target: Option<&str>,
) -> Result<Result<WaitAnswer, String>, FetchError> {
    let mut path = format!("/wait/{what}?service={}", query_escape(service));
    if let Some(t) = target {
        path.push_str(&format!("&target={}", query_escape(t)));
    }
    let answer = send(admin, http_client::Method::GET, &path, None).await?;
    if !answer.status.is_success() {
        return Ok(Err(format!("{}: {}", answer.status, answer.text().trim())));
    }
    serde_json::from_slice(&answer.body)
        .map(Ok)
        .map_err(|source| FetchError::Json {
            addr: admin,
            source,
        })
}

/// Percent-encodes what a query value may not carry as is (IPv6 brackets, `&`, `#`, ...).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /rollouts/{service}/{command}`: what the server did, or why it did nothing (`Err`
/// with the server's answer for a refused command).
pub async fn control(
    admin: SocketAddr,
    service: &str,
    command: RolloutCommand,
    token: Option<&str>,
) -> Result<Result<String, String>, FetchError> {
    let path = format!("/rollouts/{service}/{command}");
    let answer = send(admin, http_client::Method::POST, &path, token).await?;
    let body = answer.text().trim().to_owned();
    Ok(if answer.status.is_success() {
        Ok(body)
    } else {
        Err(format!("{}: {body}", answer.status))
    })
}

/// The start of an error body, enough to recognise what answered.
fn first_line(body: &str) -> String {
    const MAX: usize = 80;
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("empty body");
    if line.chars().count() > MAX {
        format!("{}…", line.chars().take(MAX).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// The report as text: the config and last reload, then a table of services, the live figures
/// per version next to the configured split, what drains, the rollouts, then a table of
/// connected Envoys with, under each, what it has ACKed, has pending and last rejected.
#[allow(
    clippy::too_many_lines,
    reason = "the report's sections in the order they are printed"
)]
pub fn render_status(report: &StatusReport, color: bool) -> String {
    let p = Painter { color };
    let mut out = String::new();

    let mut head = Table::default();
    head.row(vec![
        ("file".into(), Style::Bold),
        (report.file.clone(), Style::Plain),
    ]);
    head.row(vec![
        ("config version".into(), Style::Bold),
        match &report.config_version {
            Some(v) => (v.clone(), Style::Cyan),
            None => (
                "none: no valid deployment file loaded yet".into(),
                Style::Red,
            ),
        },
    ]);
    head.row(vec![
        ("last reload".into(), Style::Bold),
        match &report.last_reload {
            None => ("none yet".into(), Style::Dim),
            Some(r) if r.ok => (format!("ok at {}", r.at), Style::Green),
            Some(r) => (
                match &report.config_version {
                    Some(v) => format!("FAILED at {}; still serving config {v}", r.at),
                    None => format!("FAILED at {}", r.at),
                },
                Style::Red,
            ),
        },
    ]);
    if let Some(state) = report.state_file.as_ref().filter(|s| !s.ok) {
        head.row(vec![
            ("runtime state".into(), Style::Bold),
            (format!("PROBLEM with {}", state.path), Style::Red),
        ]);
    }
    if let Some(c) = &report.cluster {
        let leader = match (&c.leader, c.role.as_str()) {
            (_, "leader") => "leads".to_owned(),
            (Some(l), _) => format!("{}; {l} leads", c.role),
            (None, _) => format!("{}; no replica leads", c.role),
        };
        head.row(vec![
            ("replica".into(), Style::Bold),
            (
                format!(
                    "{} ({leader}); record revision {}; {} other replicas with {} Envoys",
                    c.replica, c.revision, c.other_replicas, c.other_envoys
                ),
                if c.role == "unknown" {
                    Style::Red
                } else {
                    Style::Plain
                },
            ),
        ]);
        for problem in [&c.etcd_problem, &c.unrecorded, &c.local_file]
            .into_iter()
            .flatten()
        {
            head.row(vec![
                ("".into(), Style::Plain),
                (problem.clone(), Style::Red),
            ]);
        }
    }
    out.push_str(&head.render("", p));
    if let Some(error) = report.state_file.as_ref().and_then(|s| s.error.as_deref()) {
        let _ = writeln!(out, "    {}", p.paint(Style::Red, error));
    }
    if let Some(ReloadStatus {
        ok: false,
        error: Some(error),
        ..
    }) = &report.last_reload
    {
        for line in error.lines() {
            let _ = writeln!(out, "    {}", p.paint(Style::Red, line));
        }
    }

    out.push('\n');
    if report.services.is_empty() {
        let _ = writeln!(out, "{}", p.paint(Style::Dim, "no services"));
    } else {
        out.push_str(&services_table(report).render("", p));
        out.push('\n');
        out.push_str(&render_traffic(report, p));
    }
    let rollouts: Vec<(&String, &RolloutReport)> = report
        .services
        .iter()
        .filter_map(|(name, s)| Some((name, s.rollout.as_ref()?)))
        .collect();
    if !rollouts.is_empty() {
        out.push('\n');
        for (name, r) in rollouts {
            out.push_str(&render_rollout(name, r, p));
        }
    }

    out.push('\n');
    if report.nodes.is_empty() {
        let _ = writeln!(out, "{}", p.paint(Style::Dim, "no Envoy connected"));
    } else {
        let current = report.config_version.as_deref();
        let mut nodes = Table::header(&[
            "NODE",
            "CLUSTER",
            "GROUP",
            "ADDRESS",
            "STREAM",
            "CONNECTED SINCE",
            "IN SYNC",
            "TELEMETRY",
        ]);
        for n in &report.nodes {
            // With node groups each Envoy converges to its group's version.
            let current = n
                .group
                .as_ref()
                .and_then(|g| report.groups.get(g))
                .map_or(current, |g| Some(g.config_version.as_str()));
            nodes.row(node_row(n, current));
        }
        // The node table and each node's type table are rendered apart, so that the type rows
        // do not widen the node columns; the header is the first line of the node table.
        let rendered = nodes.render("", p);
        let mut lines = rendered.lines();
        if let Some(header) = lines.next() {
            let _ = writeln!(out, "{header}");
        }
        for (n, line) in report.nodes.iter().zip(lines) {
            let _ = writeln!(out, "{line}");
            out.push_str(&node_types(n, p));
        }
    }
    out
}

fn services_table(report: &StatusReport) -> Table {
    // The split is in the versions table, next to the observed one.
    let mut t = Table::header(&[
        "SERVICE", "STRATEGY", "MIRROR", "RULES", "DEPLOYED", "RETIRING", "SYNCED",
    ]);
    for (name, s) in &report.services {
        let mirror = s.mirror.as_ref().map_or_else(
            || "-".to_owned(),
            |m| format!("{} {}", m.version, percent(m.percent)),
        );
        let retiring = if s.retiring.is_empty() {
            ("-".to_owned(), Style::Plain)
        } else {
            let text = s
                .retiring
                .iter()
                .map(|r| match (r.awaiting_ack, r.retires_in_seconds) {
                    (true, _) | (false, None) => format!("{} after every Envoy ACKs", r.version),
                    (false, Some(s)) if s <= 0.0 => format!("{} now", r.version),
                    (false, Some(s)) => format!("{} in {}", r.version, countdown(s)),
                })
                .collect::<Vec<_>>()
                .join(", ");
            (text, Style::Yellow)
        };
        t.row(vec![
            (name.clone(), Style::Bold),
            (
                match s.strategy {
                    Strategy::Unknown => "-".to_owned(),
                    known => known.to_string(),
                },
                Style::Plain,
            ),
            (mirror, Style::Plain),
            (s.rules.to_string(), Style::Plain),
            (or_dash(s.deployed.join(", ")), Style::Plain),
            retiring,
            yes_no(s.synced),
        ]);
    }
    t
}

/// `current`: the version the node converges to (its group's, with node groups).
fn node_row(n: &NodeReport, current: Option<&str>) -> Vec<(String, Style)> {
    let in_sync = n.in_sync && (current.is_none() || n.config_version.as_deref() == current);
    let group = match n.group.as_deref() {
        Some(g) if g.starts_with('(') => (g.to_owned(), Style::Yellow),
        other => (or_dash(other.unwrap_or_default().to_owned()), Style::Plain),
    };
    vec![
        (or_dash(n.id.clone()), Style::Bold),
        (or_dash(n.cluster.clone()), Style::Plain),
        group,
        (or_dash(n.address.clone().unwrap_or_default()), Style::Plain),
        (or_dash(n.stream.clone()), Style::Plain),
        (or_dash(n.connected_since.clone()), Style::Plain),
        yes_no(in_sync),
        match n.telemetry {
            TelemetryState::Reporting => ("yes".into(), Style::Green),
            // Absent from a cutover before telemetry.
            TelemetryState::Unknown => ("-".into(), Style::Plain),
            other => (other.to_string(), Style::Yellow),
        },
    ]
}

/// Per version, the configured split next to the observed one and the live figures (`-` where
/// nothing is known); then what drains, and which Envoys' traffic the figures cannot include.
#[allow(clippy::too_many_lines, reason = "one table, its columns in order")]
fn render_traffic(report: &StatusReport, p: Painter) -> String {
    let mut out = String::new();
    let mut t = Table::header(&[
        "SERVICE",
        "VERSION",
        "SPLIT",
        "OBSERVED 10s",
        "1m",
        "REQ/S",
        "ERRORS",
        "P99",
        "IN FLIGHT",
        "HEALTHY",
        "EJECTED",
    ]);
    let dash = || ("-".to_owned(), Style::Plain);
    for (name, s) in &report.services {
        let mirror = s.mirror.as_ref().map(|m| m.version.as_str());
        // Without figures, the versions the file gives traffic to or deploys.
        let versions: Vec<(&String, Option<&ObservedVersion>)> = match &s.observed {
            Some(o) => o.versions.iter().map(|(v, f)| (v, Some(f))).collect(),
            None => {
                let names: std::collections::BTreeSet<&String> =
                    s.split.keys().chain(s.deployed.iter()).collect();
                names.into_iter().map(|v| (v, None)).collect()
            }
        };
        for (i, (version, v)) in versions.into_iter().enumerate() {
            let mut row = vec![
                (
                    if i == 0 { name.clone() } else { String::new() },
                    Style::Bold,
                ),
                (version.clone(), Style::Plain),
                (
                    s.split
                        .get(version)
                        .map_or_else(|| "-".to_owned(), |x| percent(*x)),
                    Style::Plain,
                ),
            ];
            let Some(v) = v else {
                row.extend(std::iter::repeat_with(dash).take(8));
                t.row(row);
                continue;
            };
            let is_mirror = Some(version.as_str()) == mirror;
            let share = |x: Option<f64>, copies: &str| match x {
                _ if is_mirror => copies.to_owned(),
                Some(x) => share_text(x),
                None => "-".to_owned(),
            };
            row.push((share(v.share_10s, "copies"), Style::Cyan));
            row.push((share(v.share_1m, "-"), Style::Plain));
            row.push((figure(v.requests_per_second), Style::Plain));
            row.push(match v.error_rate {
                Some(e) if e >= 1.0 => (format!("{}%", figure(e)), Style::Red),
                Some(e) => (format!("{}%", figure(e)), Style::Plain),
                None => dash(),
            });
            row.push(
                v.p99_ms
                    .map_or_else(dash, |ms| (format!("{} ms", figure(ms)), Style::Plain)),
            );
            row.push((v.in_flight.to_string(), Style::Plain));
            match (v.healthy, v.endpoints) {
                (Some(h), Some(n)) => {
                    let style = if h < n { Style::Yellow } else { Style::Plain };
                    row.push((format!("{h}/{n}"), style));
                    let style = if v.ejected > 0 {
                        Style::Yellow
                    } else {
                        Style::Plain
                    };
                    row.push((v.ejected.to_string(), style));
                }
                _ => row.extend([dash(), dash()]),
            }
            t.row(row);
        }
    }
    out.push_str(&t.render("", p));
    if report.services.values().all(|s| s.observed.is_none()) {
        let _ = writeln!(
            out,
            "{}",
            p.paint(
                Style::Dim,
                "no live figures: no connected Envoy sends telemetry (see `cutover bootstrap`)"
            )
        );
    }
    for (name, s) in &report.services {
        for d in &s.draining {
            let what = match &d.endpoint {
                Some(e) => format!("{name}/{} {e}", d.version),
                None => format!("{name}/{} (left the file)", d.version),
            };
            let when = match (d.reason, d.removed_in_seconds) {
                (DrainReason::Marked, _) => "drain: true in the file".to_owned(),
                (_, Some(s)) if s <= 0.0 => "removed now".to_owned(),
                (_, Some(s)) => format!("removed in {}", countdown(s)),
                (_, None) => "removed after the drain period".to_owned(),
            };
            let in_flight = d.in_flight.map_or_else(
                || "in flight unknown".to_owned(),
                |n| format!("{n} in flight"),
            );
            let _ = writeln!(
                out,
                "{} {what} · {when} · {in_flight}",
                p.paint(Style::Yellow, "draining")
            );
        }
    }
    if !report.nodes_without_group.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            p.paint(
                Style::Yellow,
                &format!(
                    "no group of the file matches {}: they get an empty config (no listeners, no clusters); check their node id, cluster and metadata against `groups`",
                    report.nodes_without_group.join(", ")
                )
            )
        );
    }
    if !report.nodes_without_telemetry.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            p.paint(
                Style::Yellow,
                &format!(
                    "no telemetry from {}: their traffic is not in these figures (unknown, not zero)",
                    report.nodes_without_telemetry.join(", ")
                )
            )
        );
    }
    out
}

/// An observed share: `89.7%`, `100%`.
fn share_text(x: f64) -> String {
    let text = format!("{x:.1}");
    format!("{}%", text.strip_suffix(".0").unwrap_or(&text))
}

/// A figure with as many decimals as it needs to be read: `0.16`, `2.5`, `183`.
fn figure(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if x < 0.01 {
        "<0.01".to_owned()
    } else if x < 1.0 {
        format!("{x:.2}").trim_end_matches('0').to_owned()
    } else if x < 100.0 {
        let text = format!("{x:.1}");
        text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
    } else {
        format!("{x:.0}")
    }
}

/// The per-type versions of one node, indented under its row, and its rejections in full.
fn node_types(n: &NodeReport, p: Painter) -> String {
    if n.types.is_empty() {
        return format!("    {}\n", p.paint(Style::Dim, "nothing subscribed yet"));
    }
    let mut t = Table::header(&["TYPE", "ACKED", "PENDING", "LAST NACK"]);
    for (ty, s) in &n.types {
        t.row(vec![
            (ty.clone(), Style::Plain),
            (or_dash(s.acked.clone().unwrap_or_default()), Style::Plain),
            match &s.pending {
                Some(v) => (v.clone(), Style::Yellow),
                None => ("-".into(), Style::Plain),
            },
            match &s.last_nack {
                Some(nack) => (format!("{} at {}", nack.version, nack.at), Style::Red),
                None => ("-".into(), Style::Plain),
            },
        ]);
    }
    let mut out = t.render("    ", p);
    for (ty, s) in &n.types {
        if let Some(nack) = &s.last_nack {
            let _ = writeln!(
                out,
                "    {}",
                p.paint(Style::Red, &format!("{ty} rejected {}:", nack.version))
            );
            for line in nack.error.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    out
}

/// One rollout: where it is, its last check against its thresholds, its recent history and
/// what to do next.
fn render_rollout(name: &str, r: &RolloutReport, p: Painter) -> String {
    let mut out = String::new();
    let what = match (r.kind, r.weight) {
        (RolloutKind::Canary, Some(w)) => {
            let step = match (r.step, r.steps) {
                (Some(i), Some(n)) => format!(", step {i}/{n}"),
                _ => String::new(),
            };
            let at = match (r.mirror, &r.matching) {
                (Some(m), _) => format!("a mirror of {}", percent(m)),
                (None, Some(matching)) => matching.clone(),
                (None, None) => percent(w),
            };
            format!("canary {} at {at}{step} (stable {})", r.version, r.baseline)
        }
        _ if r.before_switch => format!(
            "switch {} → {}, checked before it happens ({} still active)",
            r.baseline, r.version, r.baseline
        ),
        _ => format!("switch {} → {}", r.baseline, r.version),
    };
    let (state, style) = match r.state {
        RolloutState::Progressing => ("progressing", Style::Cyan),
        RolloutState::Paused => ("PAUSED", Style::Yellow),
        RolloutState::Promoted => ("promoted", Style::Green),
        RolloutState::RolledBack => ("ROLLED BACK", Style::Red),
        RolloutState::Unknown => ("unknown", Style::Plain),
    };
    let when = if let Some(g) = &r.gate {
        format!(" · waiting for its {} webhooks before {}", g.kind, g.next)
    } else if r.awaiting_ack {
        " · waiting for every Envoy to ACK".to_owned()
    } else {
        r.step_ends_in_seconds
            .map(|s| format!(" · step ends in {}", countdown(s.max(0.0))))
            .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "{}  {what}  {}{when}",
        p.paint(Style::Bold, &format!("rollout {name}:")),
        p.paint(style, state)
    );
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "    {}", p.paint(Style::Red, reason));
    }
    if let Some(c) = &r.last_check {
        let t = r.thresholds.clone().unwrap_or_default();
        let errors = match t.max_error_rate {
            Some(max) => format!("{}% errors (max {})", c.error_rate, percent(max)),
            None => format!("{}% errors", c.error_rate),
        };
        let p99 = match (c.p99_ms, t.max_p99_ms) {
            (Some(v), Some(max)) => format!(", p99 {v:.0} ms (max {max:.0} ms)"),
            (Some(v), None) => format!(", p99 {v:.0} ms"),
            (None, _) => String::new(),
        };
        let verdict_style = match c.verdict {
            Verdict::Pass => Style::Green,
            Verdict::Fail => Style::Red,
            Verdict::Wait | Verdict::Unknown => Style::Yellow,
        };
        // The figures on a line of their own: with the thresholds beside them they do not
        // fit on the check's line in 100 columns.
        let _ = writeln!(
            out,
            "    last check {}: {}{}",
            c.at,
            p.paint(verdict_style, c.verdict.as_str()),
            c.reason
                .as_ref()
                .map(|r| format!(" · {r}"))
                .unwrap_or_default()
        );
        // Shorter than 10 s when the step, switch or resume judged began less than 10 s ago:
        // nothing from before it is counted.
        let window = c
            .window_seconds
            .map(|s| format!(" over the last {s:.1} s"))
            .unwrap_or_default();
        let _ = writeln!(out, "      {} requests{window}, {errors}{p99}", c.requests);
        if let Some(b) = &c.baseline {
            render_baseline(&mut out, b);
        }
    }
    for h in r.history.iter().rev().take(3).rev() {
        let _ = writeln!(out, "    {}  {}", p.paint(Style::Dim, &h.at), h.what);
    }
    if let Some(advice) = &r.advice {
        let _ = writeln!(out, "    {}", p.paint(Style::Yellow, advice));
    }
    out
}

/// `cutover status SERVICE --history`: the current rollout and those before it, newest first,
/// each with its whole history.
pub fn render_history(name: &str, s: &ServiceReport, color: bool) -> String {
    let p = Painter { color };
    let mut out = String::new();
    // The current rollout read as an ended one: the same lines.
    let current = s.rollout.as_ref().map(|r| PastRolloutReport {
        kind: r.kind,
        version: r.version.clone(),
        baseline: r.baseline.clone(),
        state: r.state,
        reason: r.reason.clone(),
        started: String::new(),
        history: r.history.clone(),
    });
    let all: Vec<&PastRolloutReport> = current.iter().chain(&s.past_rollouts).collect();
    if all.is_empty() {
        let _ = writeln!(out, "{name}: no rollout yet");
        return out;
    }
    for (i, r) in all.into_iter().enumerate() {
        let (version, baseline) = (&r.version, &r.baseline);
        let what = match r.kind {
            RolloutKind::Canary => format!("canary {version} (stable {baseline})"),
            _ => format!("switch {baseline} → {version}"),
        };
        let now = if i == 0 && s.rollout.is_some() {
            " (current)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{}  {what}  {}{now}",
            p.paint(Style::Bold, &format!("{name}:")),
            r.state
        );
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "    {}", p.paint(Style::Red, reason));
        }
        for h in &r.history {
            let _ = writeln!(out, "    {}  {}", p.paint(Style::Dim, &h.at), h.what);
        }
    }
    out
}

/// The baseline's figures a check compared with, and how likely the differences are by chance.
fn render_baseline(out: &mut String, b: &BaselineReport) {
    let p99 = b
        .p99_ms
        .map(|v| format!(", p99 {v:.0} ms"))
        .unwrap_or_default();
    // The p-values: how likely the differences are by chance.
    let tests: Vec<String> = [
        ("errors", b.error_rate_p_value),
        ("latency", b.latency_p_value),
    ]
    .into_iter()
    .filter_map(|(what, p)| Some(format!("{what} p = {:.3}", p?)))
    .collect();
    let tests = if tests.is_empty() {
        String::new()
    } else {
        format!(" ({})", tests.join(", "))
    };
    let _ = writeln!(
        out,
        "      baseline {}: {} requests, {}% errors{p99}{tests}",
        b.version, b.requests, b.error_rate
    );
}

fn yes_no(yes: bool) -> (String, Style) {
    if yes {
        ("yes".into(), Style::Green)
    } else {
        ("no".into(), Style::Yellow)
    }
}

fn or_dash(text: String) -> String {
    if text.is_empty() { "-".into() } else { text }
}

/// Whole seconds, as `4m 12s`.
fn countdown(seconds: f64) -> String {
    // Rounded up to whole seconds; a countdown already past reads 0s.
    let whole = Duration::try_from_secs_f64(seconds.ceil().max(0.0)).unwrap_or(Duration::MAX);
    humantime::format_duration(whole).to_string()
}

// ---------------------------------------------------------------------------------------------
// The command

/// `cutover status`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// cutover's admin address (`cutover serve --admin`).
    #[arg(long, default_value = DEFAULT_ADMIN, env = "CUTOVER_ADMIN")]
    admin: SocketAddr,
    /// Print the JSON as served instead of tables.
    #[arg(long)]
    json: bool,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// With `--history`: the service whose rollouts to show.
    #[arg(requires = "history")]
    service: Option<String>,
    /// The service's rollouts, the current one and those before it, each with every step,
    /// check result and operator command.
    #[arg(long, requires = "service")]
    history: bool,
}

/// Prints the report once (exit 1 if cutover cannot be reached), or with `--watch` every second
/// until Ctrl-C or until nobody reads any more.
pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    use std::io::IsTerminal as _;
    use std::process::ExitCode;

    use super::output::{Written, complain, say};

    let Args {
        admin,
        json,
        watch,
        service,
        history: _,
    } = args;
    let runtime = super::current_thread_runtime()?;
    let color = super::color_for_stdout();
    let show = |fetched: &Result<(String, StatusReport), FetchError>| match (fetched, &service) {
        (Ok((body, _)), None) if json => say(format_args!("{}\n", body.trim_end())),
        (Ok((_, report)), None) => say(format_args!("{}", render_status(report, color))),
        (Ok((_, report)), Some(name)) => match report.services.get(name) {
            Some(s) if json => say(format_args!(
                "{}\n",
                serde_json::json!({ "rollout": s.rollout, "past_rollouts": s.past_rollouts })
            )),
            Some(s) => say(format_args!("{}", render_history(name, s, color))),
            None => complain(format_args!(
                "error: cutover serves no service \"{name}\" (see `cutover status`)\n"
            )),
        },
        (Err(err), _) => complain(format_args!("error: {err}\n")),
    };
    if !watch {
        let fetched = runtime.block_on(fetch(admin));
        show(&fetched)?;
        return Ok(if fetched.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let terminal = std::io::stdout().is_terminal();
    runtime.block_on(async {
        loop {
            let fetched = fetch(admin).await;
            // Clear the screen and go home, as watch(1) does; an error stays on screen until
            // the next refresh, so cutover coming back is picked up. Into a pipe or a file,
            // refreshes follow each other.
            let clear = if terminal { "\x1b[2J\x1b[H" } else { "" };
            let header = say(format_args!(
                "{clear}every 1s: cutover status --admin {admin}    {}\n\n",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            ))?;
            // The reader is gone (`cutover status --watch | head`): nobody is watching.
            if header == Written::Closed || show(&fetched)? == Written::Closed {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}
