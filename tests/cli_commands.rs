//! The operator commands: `cutover status` (rendering snapshots, and the real binary against a
//! server on port 0), `cutover diff` (snapshots on pairs of example files, exit codes) and
//! `cutover schema` (the committed `deploy.schema.json` is current; every example validates;
//! schema and parser agree on names), every printing command on a closed pipe, and files a
//! command must refuse with a clear message (not UTF-8, huge, over a limit, an alias bomb).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cutover::api::{
    BaselineReport, CheckReport, Counts, DrainReason, DrainReport, HistoryReport, MirrorReport,
    NackStatus, NodeReport, ObservedReport, ObservedVersion, PastRolloutReport, ReloadStatus,
    RetiringReport, RolloutKind, RolloutReport, RolloutState, ServiceReport, StatusReport,
    Strategy, TelemetryState, ThresholdsReport, TypeReport, Verdict,
};
use cutover::app;
use cutover::cli::diff::{self, Side};
use cutover::cli::schema;
use cutover::cli::status::{self, render_status};
use cutover::spec::{self, Limit};
use cutover::testing::read_exact;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> String {
    std::fs::read_to_string(root().join("examples").join(name)).expect("example exists")
}

/// The `cutover` binary, with none of the environment that changes what it does.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("CUTOVER_ADMIN");
    for limit in Limit::ALL {
        cmd.env_remove(limit.env_var());
    }
    cmd
}

fn cutover(args: &[&str]) -> Output {
    command(args).output().expect("run cutover")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// --- status ------------------------------------------------------------------------------------

fn versions(cds: &str, eds: &str, lds: &str, rds: &str) -> BTreeMap<String, TypeReport> {
    [("cds", cds), ("eds", eds), ("lds", lds), ("rds", rds)]
        .into_iter()
        .map(|(ty, v)| {
            (
                ty.to_owned(),
                TypeReport {
                    acked: Some(v.to_owned()),
                    pending: None,
                    last_nack: None,
                },
            )
        })
        .collect()
}

/// A report as the server builds it (its own types), read back through JSON by the client, so
/// that these snapshots also check that the client reads what the server writes.
fn through_json(report: &StatusReport) -> StatusReport {
    let json = serde_json::to_string(report).expect("the report serializes");
    serde_json::from_str(&json).expect("the client reads the server's report")
}

#[allow(
    clippy::too_many_lines,
    reason = "one report with something in every section"
)]
fn busy_report() -> StatusReport {
    let mut edge_2 = versions(
        "a1a1a1a1a1a1a1a1",
        "b2b2b2b2b2b2b2b2",
        "c3c3c3c3c3c3c3c3",
        "d4d4d4d4d4d4d4d4",
    );
    edge_2.get_mut("cds").unwrap().pending = Some("e5e5e5e5e5e5e5e5".into());
    edge_2.get_mut("lds").unwrap().last_nack = Some(NackStatus {
        version: "f6f6f6f6f6f6f6f6".into(),
        error: "Error adding/updating listener(s) public: cannot bind '127.0.0.1:10000': \
                Address already in use"
            .into(),
        at: "2026-01-02T03:04:07.000Z".into(),
    });
    StatusReport {
        file: "deploy.yaml".into(),
        state_file: None,
        config_version: Some("0123456789abcdef".into()),
        last_reload: Some(ReloadStatus {
            ok: true,
            error: None,
            at: "2026-01-02T03:04:05.000Z".into(),
        }),
        services: BTreeMap::from([
            (
                "checkout".to_owned(),
                ServiceReport {
                    counts: Counts::Requests,
                    strategy: Strategy::Canary,
                    split: BTreeMap::from([("v1".into(), 90.0), ("v2".into(), 10.0)]),
                    mirror: None,
                    rules: 2,
                    deployed: vec!["v1".into(), "v2".into()],
                    retiring: Vec::new(),
                    synced: false,
                    rollout: Some(RolloutReport {
                        kind: RolloutKind::Canary,
                        version: "v2".into(),
                        baseline: "v1".into(),
                        state: RolloutState::Progressing,
                        reason: None,
                        weight: Some(10.0),
                        mirror: None,
                        matching: None,
                        step: Some(2),
                        steps: Some(4),
                        before_switch: false,
                        awaiting_ack: false,
                        step_ends_in_seconds: Some(42.3),
                        next_check_in_seconds: Some(7.0),
                        progress_deadline_in_seconds: None,
                        gate: None,
                        checks: vec![],
                        failed_checks: 0,
                        last_check: Some(CheckReport {
                            at: "2026-01-02T03:04:20.000Z".into(),
                            verdict: Verdict::Pass,
                            reason: None,
                            requests: 1834,
                            errors: 3,
                            error_rate: 0.164,
                            p99_ms: Some(41.0),
                            // The step began 6.5 s before the check.
                            window_from: Some("2026-01-02T03:04:13.500Z".into()),
                            window_seconds: Some(6.5),
                            baseline: Some(BaselineReport {
                                version: "v1".into(),
                                requests: 16_506,
                                errors: 20,
                                error_rate: 0.121,
                                p99_ms: Some(38.0),
                                error_rate_p_value: Some(0.115),
                                latency_p_value: Some(0.345),
                            }),
                        }),
                        thresholds: Some(ThresholdsReport {
                            max_error_rate: Some(1.0),
                            max_p99_ms: Some(500.0),
                            min_requests: 100,
                            failure_limit: 2,
                            fails_early_at_errors: Some(2),
                            max_error_rate_increase: Some(1.0),
                            max_p99_ratio: Some(1.5),
                            confidence: Some(95.0),
                        }),
                        advice: None,
                        history: vec![
                            HistoryReport {
                                at: "2026-01-02T03:00:00.000Z".into(),
                                what: "started: v2 at 5%".into(),
                            },
                            HistoryReport {
                                at: "2026-01-02T03:03:38.000Z".into(),
                                what: "v2 5% → 10% after 6 passed check(s)".into(),
                            },
                        ],
                    }),
                    past_rollouts: vec![PastRolloutReport {
                        kind: RolloutKind::Canary,
                        version: "v2".into(),
                        baseline: "v1".into(),
                        state: RolloutState::RolledBack,
                        reason: Some("aborted by the operator at 127.0.0.1".into()),
                        started: "2026-01-01T22:00:00.000Z".into(),
                        history: vec![
                            HistoryReport {
                                at: "2026-01-01T22:00:00.000Z".into(),
                                what: "started: v2 at 5%".into(),
                            },
                            HistoryReport {
                                at: "2026-01-01T22:04:10.000Z".into(),
                                what: "rolled back: aborted by the operator at 127.0.0.1".into(),
                            },
                        ],
                    }],
                    draining: vec![DrainReport {
                        version: "v1".into(),
                        endpoint: Some("10.0.0.12:8080".into()),
                        reason: DrainReason::Removed,
                        removed_in_seconds: Some(3.2),
                        in_flight: Some(2),
                    }],
                    observed: Some(observed(&[
                        (
                            "v1",
                            ObservedVersion {
                                share_10s: Some(89.71),
                                share_1m: Some(90.12),
                                requests_per_second: 183.4,
                                error_rate: Some(0.164),
                                p99_ms: Some(41.0),
                                in_flight: 3,
                                healthy: Some(2),
                                endpoints: Some(2),
                                ejected: 0,
                                envoys: 1,
                            },
                        ),
                        (
                            "v2",
                            ObservedVersion {
                                share_10s: Some(10.29),
                                share_1m: Some(9.88),
                                requests_per_second: 21.03,
                                error_rate: Some(2.5),
                                p99_ms: Some(138.5),
                                in_flight: 0,
                                healthy: Some(1),
                                endpoints: Some(2),
                                ejected: 1,
                                envoys: 1,
                            },
                        ),
                    ])),
                },
            ),
            (
                "payments".to_owned(),
                ServiceReport {
                    counts: Counts::Requests,
                    strategy: Strategy::RedBlack,
                    split: BTreeMap::from([("black".into(), 100.0)]),
                    mirror: Some(MirrorReport {
                        version: "next".into(),
                        percent: 0.5,
                    }),
                    rules: 0,
                    deployed: vec!["black".into(), "next".into(), "red".into()],
                    retiring: vec![RetiringReport {
                        version: "red".into(),
                        awaiting_ack: false,
                        retires_in_seconds: Some(251.4),
                    }],
                    synced: false,
                    rollout: None,
                    past_rollouts: vec![],
                    draining: Vec::new(),
                    observed: Some(observed(&[
                        (
                            "black",
                            ObservedVersion {
                                share_10s: Some(100.0),
                                share_1m: Some(100.0),
                                requests_per_second: 55.2,
                                error_rate: Some(0.0),
                                p99_ms: Some(12.0),
                                healthy: Some(3),
                                endpoints: Some(3),
                                envoys: 1,
                                ..Default::default()
                            },
                        ),
                        (
                            "next",
                            ObservedVersion {
                                requests_per_second: 0.28,
                                error_rate: Some(0.0),
                                p99_ms: Some(9.5),
                                healthy: Some(1),
                                endpoints: Some(1),
                                envoys: 1,
                                ..Default::default()
                            },
                        ),
                        ("red", ObservedVersion::default()),
                    ])),
                },
            ),
            (
                "search".to_owned(),
                ServiceReport {
                    counts: Counts::Requests,
                    strategy: Strategy::RedBlack,
                    split: BTreeMap::from([("v7".into(), 100.0)]),
                    mirror: None,
                    rules: 0,
                    deployed: vec!["v6".into(), "v7".into()],
                    retiring: vec![RetiringReport {
                        version: "v6".into(),
                        awaiting_ack: true,
                        retires_in_seconds: None,
                    }],
                    synced: false,
                    rollout: None,
                    past_rollouts: vec![],
                    draining: Vec::new(),
                    observed: None,
                },
            ),
        ]),
        nodes: vec![
            NodeReport {
                id: "edge-1".into(),
                cluster: "edge".into(),
                group: Some("all".into()),
                address: Some("127.0.0.1:50001".into()),
                stream: "ads".into(),
                telemetry: TelemetryState::Reporting,
                connected_since: "2026-01-02T03:00:00.000Z".into(),
                config_version: Some("0123456789abcdef".into()),
                in_sync: true,
                types: versions(
                    "a1a1a1a1a1a1a1a1",
                    "b2b2b2b2b2b2b2b2",
                    "c3c3c3c3c3c3c3c3",
                    "d4d4d4d4d4d4d4d4",
                ),
            },
            NodeReport {
                id: "edge-2".into(),
                cluster: "edge".into(),
                group: Some("all".into()),
                address: Some("127.0.0.1:50002".into()),
                stream: "ads".into(),
                telemetry: TelemetryState::Absent,
                connected_since: "2026-01-02T03:01:00.000Z".into(),
                config_version: Some("0123456789abcdef".into()),
                in_sync: false,
                types: edge_2,
            },
            NodeReport {
                id: String::new(),
                cluster: String::new(),
                group: None,
                address: Some("127.0.0.1:50003".into()),
                stream: "cds".into(),
                telemetry: TelemetryState::Stale,
                connected_since: "2026-01-02T03:04:06.000Z".into(),
                config_version: None,
                in_sync: false,
                types: BTreeMap::new(),
            },
        ],
        nodes_without_telemetry: vec!["edge-2".into()],
        nodes_without_group: Vec::new(),
        groups: Default::default(),
        streams: None,
        cluster: None,
    }
}

fn observed(versions: &[(&str, ObservedVersion)]) -> ObservedReport {
    ObservedReport {
        requests_per_second: versions.iter().map(|(_, v)| v.requests_per_second).sum(),
        versions: versions
            .iter()
            .map(|(name, v)| ((*name).to_owned(), v.clone()))
            .collect(),
    }
}

#[test]
fn status_with_services_and_envoys() {
    insta::assert_snapshot!(render_status(&through_json(&busy_report()), false));
}

/// With node groups: each Envoy shows its group, and one that no group matches is warned
/// about (it gets an empty config).
#[test]
fn status_history_of_a_service() {
    let report = through_json(&busy_report());
    insta::assert_snapshot!(status::render_history(
        "checkout",
        &report.services["checkout"],
        false
    ));
}

#[test]
fn status_with_node_groups_warns_about_an_envoy_in_no_group() {
    let mut report = busy_report();
    report.nodes.truncate(2);
    report.nodes[0].group = Some("edge".into());
    report.nodes[1].group = Some("(no group)".into());
    report.nodes[1].id = "stray-1".into();
    report.nodes[1].config_version = Some("5e5e5e5e5e5e5e5e".into());
    report.nodes_without_telemetry.clear();
    report.nodes_without_group = vec!["stray-1".into()];
    let text = render_status(&through_json(&report), false);
    assert!(
        text.contains("no group of the file matches stray-1: they get an empty config"),
        "{text}"
    );
    insta::assert_snapshot!(text);
}

#[test]
fn status_after_a_failed_reload() {
    let mut report = busy_report();
    report.last_reload = Some(ReloadStatus {
        ok: false,
        error: Some(
            "deploy.yaml:15:13: unknown version \"gren\" in services.checkout.active (versions are: blue, green); did you mean \"green\"?\n\
             deploy.yaml:20:7: endpoint 127.0.0.1:8081 is listed twice in services.checkout.versions.blue"
                .into(),
        ),
        at: "2026-01-02T03:05:00.000Z".into(),
    });
    report.nodes.clear();
    report.nodes_without_telemetry.clear();
    insta::assert_snapshot!(render_status(&through_json(&report), false));
}

#[test]
fn status_before_any_valid_config() {
    let report = StatusReport {
        file: "deploy.yaml".into(),
        state_file: None,
        config_version: None,
        last_reload: Some(ReloadStatus {
            ok: false,
            error: Some("deploy.yaml: cannot read the file: No such file or directory".into()),
            at: "2026-01-02T03:04:05.000Z".into(),
        }),
        services: BTreeMap::new(),
        nodes: Vec::new(),
        nodes_without_telemetry: Vec::new(),
        nodes_without_group: Vec::new(),
        groups: Default::default(),
        streams: None,
        cluster: None,
    };
    insta::assert_snapshot!(render_status(&through_json(&report), false));
}

#[test]
fn status_colours_only_when_asked() {
    let report = through_json(&busy_report());
    let plain = render_status(&report, false);
    let colored = render_status(&report, true);
    assert!(!plain.contains('\x1b'));
    assert!(colored.contains("\x1b[32myes\x1b[0m"), "{colored}");
    assert!(colored.contains("\x1b[31m"), "NACKs are red: {colored}");
    // Same text once the escapes are gone: colour never changes the layout.
    let stripped = strip_ansi(&colored);
    assert_eq!(stripped, plain);
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn status_of_an_unknown_report_shape_shows_what_it_can() {
    // Another release may add or drop fields: the client reads what it knows.
    let report: StatusReport = serde_json::from_str(
        r#"{"config_version": "abc", "future_field": 1, "nodes": [{"id": "x"}]}"#,
    )
    .unwrap();
    let text = render_status(&report, false);
    assert!(text.contains("abc"), "{text}");
    assert!(text.contains("x "), "{text}");
}

async fn serve(file: PathBuf) -> app::Server {
    app::start(cutover::testing::serve_options(file))
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn status_command_reads_a_running_cutover() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, example("canary.yaml")).unwrap();
    let server = serve(file).await;
    let admin = server.admin_addr.to_string();

    let (body, report) = status::fetch(server.admin_addr)
        .await
        .expect("fetch /status");
    assert!(body.starts_with('{'));
    assert_eq!(report.services["checkout"].strategy, Strategy::Canary);

    let out = tokio::task::spawn_blocking(move || {
        (
            cutover(&["status", "--admin", &admin]),
            cutover(&["status", "--admin", &admin, "--json"]),
        )
    })
    .await
    .unwrap();
    let (table, json) = out;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.contains("last reload     ok at"), "{text}");
    // The configured split per version; with no Envoy there is nothing observed, and the
    // figures read as unknown, never as zero.
    let row = |version: &str| {
        text.lines()
            .find(|l| l.split_whitespace().any(|w| w == version) && l.contains('%'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row for {version}: {text}"))
    };
    assert_eq!(
        row("v1"),
        [
            "checkout", "v1", "90%", "-", "-", "-", "-", "-", "-", "-", "-"
        ]
    );
    assert_eq!(
        row("v2"),
        ["v2", "10%", "-", "-", "-", "-", "-", "-", "-", "-"]
    );
    assert!(text.contains("no live figures"), "{text}");
    assert!(text.contains("no Envoy connected"), "{text}");
    assert!(!text.contains('\x1b'), "no colour when not a terminal");

    assert!(json.status.success(), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("--json is JSON");
    let printed: StatusReport = read_exact(&value).expect("--json prints /status");
    assert_eq!(printed.services["checkout"].split.get("v2"), Some(&10.0));
}

#[test]
fn status_command_explains_an_unreachable_cutover() {
    // A port nothing listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = cutover(&["status", "--admin", &addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach cutover's admin API at {addr}")),
        "{err}"
    );
    assert!(err.contains("--admin"), "{err}");
}

/// A server on loopback that answers every request with `body` and `status` as is, or never
/// answers (`None`): what `cutover status` may find at a wrong address.
fn raw_server(answer: Option<(&'static str, &'static str)>) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut silent = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some((status, body)) = answer else {
                silent.push(stream);
                continue;
            };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn status_command_explains_what_answers_at_a_wrong_address() {
    let page = raw_server(Some(("404 Not Found", "no such page\n")));
    let not_json = raw_server(Some(("200 OK", "hello")));
    let silent = raw_server(None);
    let out: Vec<(Option<i32>, String)> = [&page, &not_json, &silent]
        .into_iter()
        .map(|addr| {
            let out = cutover(&["status", "--admin", addr]);
            assert!(stdout(&out).is_empty());
            (out.status.code(), stderr(&out))
        })
        .collect();
    assert_eq!(
        out,
        [
            (
                Some(1),
                format!(
                    "error: http://{page}/status answered 404 Not Found (no such page); is {page} cutover's admin address (--admin)?\n"
                )
            ),
            (
                Some(1),
                format!(
                    "error: http://{not_json}/status is not cutover's status JSON: expected value at line 1 column 1\n"
                )
            ),
            (
                Some(1),
                format!(
                    "error: no answer from {silent} within 5s; is it cutover's admin address (--admin)?\n"
                )
            ),
        ]
    );
}

// --- rollout commands and wait ------------------------------------------------------------------

/// What the operator commands print when the admin API refuses, with the HTTP status of each
/// kind of refusal: an unknown service 404, a command that does not apply now 409, bad input
/// 400; and their exit codes (1 for a refused rollout command, 2 for a refused wait).
#[tokio::test(flavor = "multi_thread")]
async fn refused_commands_say_why_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    let plain =
        "  plain:\n    versions:\n      v1: { endpoints: [127.0.0.1:8091] }\n    active: v1\n";
    let text = example("canary-rollout.yaml")
        .replace(
            "      - match: { prefix: / }\n",
            "      - match: { prefix: /plain }\n        service: plain\n      - match: { prefix: / }\n",
        )
        .replace("services:\n", &format!("services:\n{plain}"));
    std::fs::write(&file, text).unwrap();
    let server = serve(file).await;
    let admin = server.admin_addr.to_string();
    let run = move |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--admin", &admin]);
        let out = cutover(&args);
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let outputs = tokio::task::spawn_blocking(move || {
        [
            run(&["pause", "nope"]),
            run(&["pause", "plain"]),
            run(&["pause", "checkout"]),
            run(&["pause", "checkout"]),
            run(&["wait", "drained", "nope"]),
            run(&["wait", "healthy", "checkout", "v9"]),
        ]
    })
    .await
    .unwrap();
    let refused = |code: i32, err: &str| (Some(code), String::new(), format!("error: {err}\n"));
    assert_eq!(
        outputs,
        [
            refused(
                1,
                "404 Not Found: nope: no service \"nope\" in the deployment file"
            ),
            refused(
                1,
                "409 Conflict: plain: service \"plain\" has no rollout (a canary with `steps`, or a switch with an `analysis`)"
            ),
            (Some(0), "checkout: paused\n".to_owned(), String::new()),
            refused(
                1,
                "409 Conflict: checkout: cannot pause a rollout that is paused"
            ),
            refused(2, "404 Not Found: no service \"nope\" is served"),
            refused(
                2,
                "404 Not Found: \"v9\" is neither a version nor an endpoint of service \"checkout\" (its versions: v1, v2)"
            ),
        ]
    );
    // What the commands cannot send: bad input.
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.admin_addr);
    let promte = http
        .post(format!("{base}/rollouts/checkout/promte"))
        .send()
        .await
        .unwrap();
    assert_eq!(promte.status(), 400);
    assert_eq!(
        promte.text().await.unwrap(),
        "unknown command \"promte\": use promote, abort, pause or resume\n"
    );
    let drain = http
        .get(format!("{base}/wait/drain?service=checkout"))
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 400);
    assert_eq!(
        drain.text().await.unwrap(),
        "cannot wait for \"drain\": use /wait/drained or /wait/healthy\n"
    );
}

// --- diff --------------------------------------------------------------------------------------

/// `cutover diff` between two texts, as the command renders it without colour.
fn diff_text(old: (&str, &str), new: (&str, &str)) -> (bool, String) {
    let compile = |(label, text): (&str, &str)| {
        app::compile_resources(label, text).unwrap_or_else(|e| panic!("{e}"))
    };
    let (o, n) = (compile(old), compile(new));
    let d = diff::diff(
        Side {
            label: old.0,
            resources: &o,
        },
        Side {
            label: new.0,
            resources: &n,
        },
    )
    .expect("resources render");
    (d.is_empty(), d.render(false))
}

fn edited(name: &str, from: &str, to: &str) -> String {
    let text = example(name);
    assert!(text.contains(from), "{name} has no {from:?}");
    text.replace(from, to)
}

#[test]
fn diff_of_a_tcp_listener_says_where_new_connections_go() {
    let from = "active: blue                            # a switch moves new connections only";
    let canary = edited(
        "edge.yaml",
        from,
        "strategy: { canary: { stable: blue, canary: green, weight: 25 } }",
    );
    let (same, text) = diff_text(
        ("examples/edge.yaml", &example("edge.yaml")),
        ("edge-canary.yaml", &canary),
    );
    assert!(!same);
    assert!(
        text.contains(
            "  ~ db\n      new connections: postgres/blue → postgres/blue 75%, postgres/green~blue 25%\n"
        ),
        "{text}"
    );
    assert!(!text.contains("filter_chain"), "no matcher JSON: {text}");
}

/// Routes are read typed: a host's routes carry its names, a fixed response shows its status and
/// body, a redirect what it rewrites, and a cookie rule the file's condition (read back by the
/// code that wrote its regex), never a decompiled matcher.
#[test]
fn diff_of_the_edge_reads_hosts_redirects_responses_and_cookies() {
    let maintenance = edited(
        "edge.yaml",
        "          - match: { prefix: / }\n            service: api\n",
        "          - match: { prefix: / }\n            respond: { status: 503, body: \"Back at 10:00\" }\n",
    );
    let maintenance = maintenance.replace(
        "    active: blue\n  api:",
        "    active: blue\n    rules:\n      - match: { cookie: { \"beta.group\": \"yes;really\" } }\n        version: green\n  api:",
    );
    let maintenance = maintenance.replace("  - name: plain\n", "  - name: web\n");
    let (same, text) = diff_text(
        ("examples/edge.yaml", &example("edge.yaml")),
        ("edge-maintenance.yaml", &maintenance),
    );
    assert!(!same);
    insta::assert_snapshot!(text);
}

#[test]
fn diff_of_a_certificate_rotation_names_the_secret_and_shows_no_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for f in [
        "shop.pem",
        "shop-key.pem",
        "wildcard.pem",
        "wildcard-key.pem",
    ] {
        std::fs::copy(
            root().join("examples/certs").join(f),
            dir.path().join("certs").join(f),
        )
        .unwrap();
    }
    let old = dir.path().join("old.yaml");
    std::fs::write(&old, example("edge.yaml")).unwrap();
    let new = dir.path().join("new.yaml");
    let rotated = edited(
        "edge.yaml",
        "cert: certs/shop.pem              # chain, leaf first\n          key: certs/shop-key.pem",
        "cert: certs/wildcard.pem          # chain, leaf first\n          key: certs/wildcard-key.pem",
    );
    std::fs::write(&new, rotated).unwrap();
    let out = cutover(&[
        "diff",
        &old.display().to_string(),
        &new.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "secrets\n  ~ public/shop.example.com\n      certificate chain changed\n      private key changed\n"
        ),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[test]
fn diff_canary_weight() {
    let new = edited("canary.yaml", "weight: 10 ", "weight: 25 ");
    let (same, text) = diff_text(
        ("examples/canary.yaml", &example("canary.yaml")),
        ("canary-25.yaml", &new),
    );
    assert!(!same);
    insta::assert_snapshot!(text);
}

#[test]
fn diff_canary_promotion_to_100() {
    let new = edited("canary.yaml", "weight: 10 ", "weight: 100 ");
    let (_, text) = diff_text(
        ("examples/canary.yaml", &example("canary.yaml")),
        ("canary-100.yaml", &new),
    );
    insta::assert_snapshot!(text);
}

#[test]
fn diff_blue_green_switch() {
    let new = edited("blue-green.yaml", "active: blue", "active: green");
    let (_, text) = diff_text(
        ("examples/blue-green.yaml", &example("blue-green.yaml")),
        ("blue-green-switched.yaml", &new),
    );
    insta::assert_snapshot!(text);
}

#[test]
fn diff_red_black_switch_adds_the_new_active_cluster() {
    let new = edited("red-black.yaml", "active: black", "active: red");
    let (_, text) = diff_text(
        ("examples/red-black.yaml", &example("red-black.yaml")),
        ("red-black-switched.yaml", &new),
    );
    insta::assert_snapshot!(text);
}

#[test]
fn diff_rolling_endpoints_and_policy() {
    let old = example("rolling.yaml");
    let new = old
        .replace("{ address: 127.0.0.1:8081, drain: true }", "127.0.0.1:8081")
        .replace("- 127.0.0.1:8082", "- { address: 127.0.0.1:8082, drain: true }")
        .replace("weight: 2 }", "weight: 3 }")
        .replace(
            "    active: live\n",
            "          - 127.0.0.1:8084\n    active: live\n    timeout: 5s\n    load_balancing: least_request\n",
        );
    assert_ne!(old, new);
    let (_, text) = diff_text(("examples/rolling.yaml", &old), ("rolling-next.yaml", &new));
    insta::assert_snapshot!(text);
}

#[test]
fn diff_listener_moved_and_rule_added() {
    let old = example("ab-testing.yaml");
    let new = old.replace("127.0.0.1:10000", "127.0.0.1:10080").replace(
        "      - match: { prefix: /new-checkout }",
        "      - match: { header: { x-canary: \"1\" }, query: { debug: \"on\" } }\n        version: b\n      - match: { prefix: /new-checkout }",
    );
    let (_, text) = diff_text(
        ("examples/ab-testing.yaml", &old),
        ("ab-testing-next.yaml", &new),
    );
    insta::assert_snapshot!(text);
}

#[test]
fn diff_between_strategies() {
    let (_, text) = diff_text(
        ("examples/basic.yaml", &example("basic.yaml")),
        ("examples/shadow.yaml", &example("shadow.yaml")),
    );
    insta::assert_snapshot!(text);
}

#[test]
fn diff_of_a_file_with_itself_is_empty() {
    let text = example("load-balancing.yaml");
    let (same, out) = diff_text(("a.yaml", &text), ("b.yaml", &text));
    assert!(same);
    assert!(out.ends_with("no difference\n"), "{out}");
    // Comments and key order do not reach Envoy.
    let reformatted = format!(
        "# a comment\n{}",
        text.replace("    active: v1\n", "    active: v1 # same\n")
    );
    assert!(diff_text(("a.yaml", &text), ("b.yaml", &reformatted)).0);
}

#[test]
fn diff_command_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let canary = write("canary.yaml", &example("canary.yaml"));
    let canary_25 = write(
        "canary-25.yaml",
        &edited("canary.yaml", "weight: 10 ", "weight: 25 "),
    );
    let invalid = write(
        "invalid.yaml",
        &edited("canary.yaml", "stable: v1", "stable: v0"),
    );

    let same = cutover(&["diff", &canary, &canary]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    assert!(stdout(&same).contains("no difference"));

    let changed = cutover(&["diff", &canary, &canary_25]);
    assert_eq!(changed.status.code(), Some(1), "{}", stderr(&changed));
    let text = stdout(&changed);
    assert!(
        text.contains("- prefix / & sticky bucket (x-request-id) below 410 of 4096 (10.0%)")
            && text
                .contains("+ prefix / & sticky bucket (x-request-id) below 1024 of 4096 (25.0%)"),
        "{text}"
    );
    assert!(!stdout(&changed).contains('\x1b'));

    // Both files' problems are reported, not only the first file's.
    let missing = dir.path().join("missing.yaml").display().to_string();
    let bad = cutover(&["diff", &invalid, &missing]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stdout(&bad).is_empty());
    let err = stderr(&bad);
    assert!(
        err.contains(&format!("{invalid}:")) && err.contains("unknown version \"v0\""),
        "{err}"
    );
    assert!(err.contains(&format!("cannot read {missing}")), "{err}");
}

// --- schema ------------------------------------------------------------------------------------

#[test]
fn committed_schema_is_current() {
    let committed = std::fs::read_to_string(root().join("deploy.schema.json")).unwrap_or_default();
    let generated = schema::deployment_schema_text();
    assert!(
        committed == generated,
        "deploy.schema.json is not what the deployment file's types generate; \
         regenerate it with `cargo run -- schema > deploy.schema.json` and commit it"
    );
}

#[test]
fn schema_command_prints_the_schema() {
    let out = cutover(&["schema"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), schema::deployment_schema_text());
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema::deployment_schema()).expect("the schema is valid")
}

/// A YAML deployment file as the JSON value a YAML language server checks against the schema.
fn yaml_as_json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).expect("valid YAML")
}

#[test]
fn every_example_validates_against_the_schema() {
    let validator = validator();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../deploy.schema.json\n"),
            "{} should start with the schema modeline for editors",
            path.display()
        );
        let errors: Vec<String> = validator
            .iter_errors(&yaml_as_json(&text))
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema:\n{}",
            path.display(),
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} examples found");
}

#[test]
fn schema_rejects_what_the_parser_rejects() {
    let validator = validator();
    let base = example("canary.yaml");
    for (what, text) in [
        ("unknown key", base.replace("    strategy:", "    stratgy:")),
        (
            "unknown strategy",
            base.replace("      canary:\n", "      canarie:\n"),
        ),
        (
            "endpoint option typo",
            base.replace("127.0.0.1:8083]", "{ adress: 127.0.0.1:8083 }]"),
        ),
        (
            "weight above 100",
            base.replace("weight: 10 ", "weight: 150 "),
        ),
        (
            "invalid version name",
            base.replace("      v2:", "      \"v 2\":"),
        ),
        (
            "a number as a listener name",
            base.replace("name: public", "name: 12345"),
        ),
        ("path without /", base.replace("prefix: /", "prefix: api")),
        (
            "unknown load balancer",
            base.replace(
                "services:\n  checkout:\n",
                "services:\n  checkout:\n    load_balancing: fastest\n",
            ),
        ),
    ] {
        assert_ne!(text, base, "{what}: the edit applies");
        assert!(
            !validator.is_valid(&yaml_as_json(&text)),
            "the schema accepts a file with {what}"
        );
    }
}

#[test]
fn schema_describes_keys_for_editors() {
    let s = schema::deployment_schema();
    assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(s["additionalProperties"], false);
    let canary = &s["definitions"]["Canary"]["properties"]["weight"]["description"];
    assert!(
        canary
            .as_str()
            .is_some_and(|d| d.contains("Percent of requests")),
        "{canary}"
    );
    // Doc comments wrapped in the source read as one line.
    let services = s["properties"]["services"]["description"].as_str().unwrap();
    assert!(!services.contains('\n'), "{services}");
}

#[test]
fn every_example_is_a_fuzz_seed() {
    let seeds = root().join("fuzz/corpus/deployment_file");
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            // examples/certs: the PEM files examples/edge.yaml names.
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy();
        let seed = seeds.join(format!("example-{name}"));
        assert_eq!(
            std::fs::read_to_string(&seed).ok(),
            Some(std::fs::read_to_string(&path).unwrap()),
            "{} should be a fuzz seed: cp {} {}",
            path.display(),
            path.display(),
            seed.display()
        );
    }
}

#[test]
fn schema_and_parser_agree_on_names() {
    let validator = validator();
    let base = example("basic.yaml");
    let mut checked = 0;
    for name in [
        "blue", "v1", "1.2.3", "0.0.0", "1-2", "e3", "0x", "0xG", "1e", "inf", "nan", "yess",
        "only", "_1", "0_1", "1_0.5", "0b2", "12345", "1.10", "-1", "+1", "1e3", ".5", "5.",
        "1_000", "-1_000", "0x1F", "0X1F", "-0x1F", "0o17", "0b1_0", ".inf", "-.Inf", ".NaN",
        "true", "False", "tRue", "yes", "No", "on", "OFF", "y", "N", "null", "NULL", "nULL", "a b",
        "",
    ] {
        let quoted = format!("\"{name}\"");
        let as_listener = |written: &str| base.replace("name: public", &format!("name: {written}"));
        let as_version = |written: &str| {
            base.replace("      blue:", &format!("      {written}:"))
                .replace("active: blue", &format!("active: {quoted}"))
        };
        for text in [
            as_listener(name),
            as_listener(&quoted),
            as_version(name),
            as_version(&quoted),
        ] {
            // A file YAML cannot read is no question for the schema.
            let Ok(json) = serde_saphyr::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let parsed = spec::parse("basic.yaml", &text);
            assert_eq!(
                validator.is_valid(&json),
                parsed.is_ok(),
                "schema and parser disagree on {name:?}: {parsed:?}\n{text}"
            );
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} files checked");
}

// --- closed pipes ------------------------------------------------------------------------------

/// Runs `cutover` with its stdout (or stderr) a pipe whose reader is already gone, as when
/// `cutover render FILE | head -1` has read its line; the other stream is captured. Fails the
/// test if the command does not end within 30 s (`status --watch` must notice it too).
fn with_closed(stream: &str, cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    match stream {
        "stdout" => cmd.stdout(writer).stderr(std::process::Stdio::piped()),
        "stderr" => cmd.stderr(writer).stdout(std::process::Stdio::piped()),
        _ => unreachable!("stdout or stderr"),
    };
    let child = cmd.spawn().expect("run cutover");
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match waited.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("cutover ran"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("cutover did not stop writing to a closed {stream}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_that_prints_exits_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, example("canary-rollout.yaml")).unwrap();
    let server = serve(file).await;
    let admin = server.admin_addr.to_string();
    let example = |name: &str| root().join("examples").join(name).display().to_string();
    let (basic, canary) = (example("basic.yaml"), example("canary.yaml"));
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&invalid, edited("canary.yaml", "stable: v1", "stable: v0")).unwrap();
    let invalid = invalid.display().to_string();

    let run = |stream: &'static str, args: &[&str], code: i32| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        (stream, args, code)
    };
    let runs = vec![
        run("stdout", &["render", &basic], 0),
        run("stdout", &["render", "--format", "json", &basic], 0),
        run("stdout", &["bootstrap", "--node-id", "edge-1"], 0),
        run(
            "stdout",
            &["bootstrap", "--node-id", "edge-1", "--format", "json"],
            0,
        ),
        run("stdout", &["schema"], 0),
        run("stdout", &["validate", &basic], 0),
        run("stderr", &["validate", &invalid], 1),
        run("stderr", &["render", &invalid], 1),
        run("stdout", &["diff", &basic, &canary], 1),
        run("stderr", &["diff", &basic, &invalid], 2),
        run("stdout", &["status", "--admin", &admin], 0),
        run("stdout", &["status", "--admin", &admin, "--json"], 0),
        run("stdout", &["status", "--admin", &admin, "--watch"], 0),
        run(
            "stdout",
            &["status", "--admin", &admin, "--json", "--watch"],
            0,
        ),
        run("stdout", &["pause", "checkout", "--admin", &admin], 0),
        run("stderr", &["promote", "nosuch", "--admin", &admin], 1),
    ];
    let outs = tokio::task::spawn_blocking(move || {
        runs.into_iter()
            .map(|(stream, args, code)| {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = with_closed(stream, &mut command(&args));
                (stream, args.join(" "), code, out)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (stream, args, code, out) in outs {
        // A panic exits with 101 and prints "panicked" and a backtrace hint.
        assert_eq!(
            out.status.code(),
            Some(code),
            "cutover {args} with a closed {stream}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let other = if stream == "stdout" {
            stderr(&out)
        } else {
            stdout(&out)
        };
        assert!(
            other.is_empty(),
            "cutover {args} with a closed {stream} printed: {other}"
        );
    }
}

// --- files a command refuses -------------------------------------------------------------------

#[test]
fn validate_points_at_the_first_byte_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.yaml");
    let text = example("basic.yaml").replace("name: public", "name: caf\u{e9}");
    // The same file saved as Latin-1: "é" is the one byte 0xE9.
    let latin1: Vec<u8> = text.chars().map(|c| u8::try_from(c).unwrap()).collect();
    std::fs::write(&file, latin1).unwrap();
    let label = file.display().to_string();
    let out = cutover(&["validate", &label]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{label}:5:14: the file is not valid UTF-8 here (byte 0xE9): deployment files are \
             UTF-8 text; re-save it as UTF-8 (it may be Latin-1 or Windows-1252)\n{label}: 1 problem\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reports_where_a_saved_file_stops_being_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, example("basic.yaml")).unwrap();
    let server = serve(file.clone()).await;
    let latin1 = example("basic.yaml").replace("name: public", "name: caf\u{e9}");
    let latin1: Vec<u8> = latin1.chars().map(|c| u8::try_from(c).unwrap()).collect();
    std::fs::write(&file, latin1).unwrap();
    let want = format!(
        "{}:5:14: the file is not valid UTF-8 here (byte 0xE9)",
        file.display()
    );
    let started = std::time::Instant::now();
    loop {
        let (_, report) = status::fetch(server.admin_addr).await.expect("/status");
        let reload = report.last_reload.expect("a reload");
        if let Some(error) = reload.error.filter(|e| e.contains(&want)) {
            assert!(!reload.ok, "{error}");
            // The last good config is still served.
            assert!(report.config_version.is_some());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no reload error with {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_huge_file_is_refused_without_being_read_whole() {
    // Endless: only a bounded read finishes.
    let out = cutover(&["validate", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "/dev/zero:1:1: the file is larger than 16 MiB, the limit on deployment files"
        ),
        "{err}"
    );
    assert!(
        err.contains("raise the limit with CUTOVER_MAX_FILE_MIB=<MiB>"),
        "{err}"
    );
}

#[test]
fn one_shot_commands_read_a_pipe() {
    use std::io::Write as _;
    // `cutover validate <(generate)` and `generate | cutover validate /dev/stdin`: unlike the
    // server's watched file, a one-shot command reads what a pipe gives it.
    let mut child = command(&["validate", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(example("basic.yaml").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_directory_is_no_deployment_file() {
    let dir = tempfile::tempdir().unwrap();
    let label = dir.path().display().to_string();
    for (args, code) in [
        (vec!["validate", &label], 1),
        (vec!["render", &label], 1),
        (vec!["diff", &label, &label], 2),
    ] {
        let out = cutover(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("error: cannot read {label}: Is a directory")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn limits_are_raised_from_the_environment() {
    let basic = root().join("examples/basic.yaml").display().to_string();
    let run = |var: &str, value: &str| {
        command(&["validate", &basic])
            .env(var, value)
            .output()
            .unwrap()
    };
    // basic.yaml has 3 endpoints.
    let over = run("CUTOVER_MAX_ENDPOINTS", "2");
    assert_eq!(over.status.code(), Some(1));
    let err = stderr(&over);
    assert!(
        err.contains(": too many endpoints: the file has 3 endpoints, more than the limit of 2")
            && err.contains("raise the limit with CUTOVER_MAX_ENDPOINTS=3"),
        "{err}"
    );
    let raised = run("CUTOVER_MAX_ENDPOINTS", "3");
    assert!(raised.status.success(), "{}", stderr(&raised));
    let wrong = run("CUTOVER_MAX_ENDPOINTS", "three");
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(
        stderr(&wrong),
        "error: CUTOVER_MAX_ENDPOINTS=\"three\" is not a limit: write a whole number from 1 to 4294967295\n"
    );
}

#[test]
fn an_alias_bomb_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bomb.yaml");
    // 20 services of 20 versions of 20 endpoints: 8,000 endpoints from 22 lines, valid key by
    // key, so only the expansion limit stops it.
    let endpoints: Vec<String> = (0..20).map(|i| format!("127.0.0.1:{}", 2000 + i)).collect();
    let versions: Vec<String> = (1..20).map(|i| format!("v{i}: *v")).collect();
    let services: Vec<String> = (1..20).map(|i| format!("  s{i}: *s\n")).collect();
    let text = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes: [{{ match: {{ prefix: / }}, service: s0 }}]\n\
         services:\n  s0: &s {{ versions: {{ v0: &v {{ endpoints: [{}] }}, {} }}, active: v0 }}\n{}",
        endpoints.join(", "),
        versions.join(", "),
        services.concat(),
    );
    std::fs::write(&file, text).unwrap();
    let label = file.display().to_string();
    let out = command(&["validate", &label])
        .env("CUTOVER_MAX_YAML_NODES", "5000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "the file expands to more than 5,000 YAML values (mappings, lists and scalars, each \
             value an alias `*name` repeats counted again); cutover stops reading there so that a \
             small file cannot take unbounded memory (an \"alias bomb\"); if the file is \
             legitimate, raise the limit with CUTOVER_MAX_YAML_NODES=<values>"
        ),
        "{err}"
    );
    assert!(!err.contains("budget") && !err.contains("Nodes {"), "{err}");
    let roomy = command(&["validate", &label])
        .env("CUTOVER_MAX_YAML_NODES", "100000")
        .output()
        .unwrap();
    assert!(roomy.status.success(), "{}", stderr(&roomy));
}

// --- render --node -------------------------------------------------------------------------

/// The names of the resources of one type in `cutover render --format json` output.
fn rendered_names(json: &serde_json::Value, key: &str) -> Vec<String> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {json}"))
        .iter()
        .map(|r| {
            r.get("name")
                .or_else(|| r.get("cluster_name"))
                .and_then(|n| n.as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn render_node_shows_what_that_node_gets() {
    let file = root()
        .join("examples/node-groups.yaml")
        .display()
        .to_string();
    let render = |extra: &[&str]| {
        let mut args = vec!["render", "--format", "json", &file];
        args.extend_from_slice(extra);
        let out = cutover(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (json, stderr(&out))
    };
    let (edge, note) = render(&["--node", "edge-1"]);
    assert_eq!(note.trim(), "node \"edge-1\" is in group edge");
    assert_eq!(rendered_names(&edge, "listeners"), ["public"]);
    assert_eq!(
        rendered_names(&edge, "clusters"),
        ["api/v1", "web/blue", "web/green"]
    );
    let (sidecar, note) = render(&[
        "--node",
        "checkout-7",
        "--node-cluster",
        "checkout",
        "--node-metadata",
        "role=sidecar",
    ]);
    assert_eq!(note.trim(), "node \"checkout-7\" is in group sidecars");
    assert_eq!(rendered_names(&sidecar, "listeners"), ["outbound"]);
    assert_eq!(rendered_names(&sidecar, "routes"), ["outbound"]);
    assert_eq!(
        rendered_names(&sidecar, "endpoints"),
        ["payments/next", "payments/stable"]
    );
    // Without the metadata the sidecars' group asks for: no group, an empty config.
    let (stray, note) = render(&["--node", "checkout-7", "--node-cluster", "checkout"]);
    assert!(
        note.contains("no group of the file matches node \"checkout-7\""),
        "{note}"
    );
    for key in ["clusters", "endpoints", "listeners", "routes"] {
        assert!(rendered_names(&stray, key).is_empty(), "{key}: {stray}");
    }
    // Without --node: every group's resources.
    let (all, _) = render(&[]);
    assert_eq!(rendered_names(&all, "listeners"), ["outbound", "public"]);
    // A node's cluster or metadata alone names no node.
    let out = cutover(&["render", &file, "--node-cluster", "checkout"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// With node groups, `diff` says which groups' Envoys would see the change.
#[test]
fn diff_names_the_node_groups_a_change_reaches() {
    let old = example("node-groups.yaml");
    let new = old.replace("    active: blue\n", "    active: green\n");
    let plan = |label: &str, text: &str| app::compile_plan(label, text).unwrap();
    let (o, n) = (plan("old.yaml", &old), plan("new.yaml", &new));
    let (or, nr) = (
        cutover::translate::translate(&o),
        cutover::translate::translate(&n),
    );
    let side = |label, resources| Side { label, resources };
    let d = diff::diff(side("old.yaml", &or), side("new.yaml", &nr))
        .unwrap()
        .with_groups(&o, &n);
    let text = d.render(false);
    assert!(
        text.contains("node groups: edge changed, sidecars unchanged\n"),
        "{text}"
    );
    // From no groups to groups: every Envoy was in `all`.
    let basic = plan("basic.yaml", &example("basic.yaml"));
    let basic_resources = cutover::translate::translate(&basic);
    let d = diff::diff(side("basic.yaml", &basic_resources), side("new.yaml", &nr))
        .unwrap()
        .with_groups(&basic, &n);
    assert!(
        d.render(false)
            .contains("node groups: (no group) added, all removed, edge added, sidecars added"),
        "{}",
        d.render(false)
    );
    // Without groups on either side, no such line.
    let d = diff::diff(side("a", &or), side("b", &or))
        .unwrap()
        .with_groups(&basic, &basic);
    assert!(!d.render(false).contains("node groups"));
}
