//! The operator commands: `cutover status` (rendering snapshots, and the real binary against a
//! server on port 0), `cutover diff` (snapshots on pairs of example files, exit codes) and
//! `cutover schema` (the committed `deploy.schema.json` is current; every example validates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cutover::app::{self, ServeOptions};
use cutover::cli::diff::{self, Side};
use cutover::cli::schema;
use cutover::cli::status::{self, render_status};
use cutover::status::{
    CheckReport, DrainReport, HistoryReport, MirrorReport, NackStatus, NodeReport, ObservedReport,
    ObservedVersion, ReloadStatus, RetiringReport, RolloutReport, ServiceReport, StatusReport,
    ThresholdsReport, TypeReport,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> String {
    std::fs::read_to_string(root().join("examples").join(name)).expect("example exists")
}

fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("CUTOVER_ADMIN")
        .output()
        .expect("run cutover")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// --- status ------------------------------------------------------------------------------------

fn versions(cds: &str, eds: &str, lds: &str, rds: &str) -> BTreeMap<&'static str, TypeReport> {
    [("cds", cds), ("eds", eds), ("lds", lds), ("rds", rds)]
        .into_iter()
        .map(|(ty, v)| {
            (
                ty,
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
fn through_json(report: &StatusReport) -> status::Status {
    let json = serde_json::to_string(report).expect("the report serializes");
    serde_json::from_str(&json).expect("the client reads the server's report")
}

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
                    strategy: "canary",
                    split: BTreeMap::from([("v1".into(), 90.0), ("v2".into(), 10.0)]),
                    mirror: None,
                    rules: 2,
                    deployed: vec!["v1".into(), "v2".into()],
                    retiring: Vec::new(),
                    synced: false,
                    rollout: Some(RolloutReport {
                        kind: "canary",
                        version: "v2".into(),
                        baseline: "v1".into(),
                        state: "progressing",
                        reason: None,
                        weight: Some(10.0),
                        step: Some(2),
                        steps: Some(4),
                        awaiting_ack: false,
                        step_ends_in_seconds: Some(42.3),
                        next_check_in_seconds: Some(7.0),
                        failed_checks: 0,
                        last_check: Some(CheckReport {
                            at: "2026-01-02T03:04:20.000Z".into(),
                            verdict: "pass",
                            reason: None,
                            requests: 1834,
                            errors: 3,
                            error_rate: 0.164,
                            p99_ms: Some(41.0),
                        }),
                        thresholds: Some(ThresholdsReport {
                            max_error_rate: Some(1.0),
                            max_p99_ms: Some(500.0),
                            min_requests: 100,
                            failure_limit: 2,
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
                    draining: vec![DrainReport {
                        version: "v1".into(),
                        endpoint: Some("10.0.0.12:8080".into()),
                        reason: "removed",
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
                    strategy: "red-black",
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
                    strategy: "red-black",
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
                    draining: Vec::new(),
                    observed: None,
                },
            ),
        ]),
        nodes: vec![
            NodeReport {
                id: "edge-1".into(),
                cluster: "edge".into(),
                address: Some("127.0.0.1:50001".into()),
                stream: "ads".into(),
                telemetry: "reporting",
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
                address: Some("127.0.0.1:50002".into()),
                stream: "ads".into(),
                telemetry: "none",
                connected_since: "2026-01-02T03:01:00.000Z".into(),
                config_version: Some("0123456789abcdef".into()),
                in_sync: false,
                types: edge_2,
            },
            NodeReport {
                id: String::new(),
                cluster: String::new(),
                address: Some("127.0.0.1:50003".into()),
                stream: "cds".into(),
                telemetry: "stale",
                connected_since: "2026-01-02T03:04:06.000Z".into(),
                config_version: None,
                in_sync: false,
                types: BTreeMap::new(),
            },
        ],
        nodes_without_telemetry: vec!["edge-2".into()],
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
    let report: status::Status = serde_json::from_str(
        r#"{"config_version": "abc", "future_field": 1, "nodes": [{"id": "x"}]}"#,
    )
    .unwrap();
    let text = render_status(&report, false);
    assert!(text.contains("abc"), "{text}");
    assert!(text.contains("x "), "{text}");
}

async fn serve(file: PathBuf) -> app::Server {
    app::start(ServeOptions {
        file,
        ads: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        drain_period: Duration::from_secs(5),
        admin_token: None,
        state_file: None,
    })
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
    assert_eq!(report.services["checkout"].strategy, "canary");

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
    assert_eq!(value["services"]["checkout"]["split"]["v2"], 10.0);
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
        text.contains("~ prefix /: checkout/v1 90% / ") && text.contains("→ checkout/v1 75% / "),
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
