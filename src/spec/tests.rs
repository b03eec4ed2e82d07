use super::*;

const GOOD: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue:  { endpoints: [127.0.0.1:8081, 127.0.0.1:8082] }
      green: { endpoints: [127.0.0.1:8083] }
    active: blue
";

/// Every problem reported for `text` (a file that must not parse), one line each.
pub(super) fn problems(text: &str) -> Vec<String> {
    match parse("deploy.yaml", text) {
        Ok(spec) => panic!("expected problems, got {spec:?}"),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

/// The single problem reported for `text`.
fn problem(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected exactly one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

#[test]
fn parses_the_readme_example() {
    let spec = parse("deploy.yaml", GOOD).unwrap();
    assert_eq!(spec.listeners.len(), 1);
    let l = &spec.listeners[0];
    assert_eq!(l.name, "public");
    assert_eq!(
        l.kind,
        ListenerKind::Envoy("127.0.0.1:10000".parse().unwrap())
    );
    assert_eq!(
        l.routes,
        vec![Route {
            matcher: PathMatch::Prefix("/".into()),
            target: RouteTarget::Service {
                name: "checkout".into(),
                rewrite: Rewrite::default(),
            },
            headers: HeaderEdits::default(),
        }]
    );
    let svc = &spec.services["checkout"];
    assert_eq!(
        svc.strategy,
        Strategy::BlueGreen {
            active: "blue".into(),
            preview: None,
            analysis: None,
        }
    );
    assert_eq!(svc.versions["blue"].endpoints.len(), 2);
    assert_eq!(
        svc.versions["green"].endpoints,
        vec![Endpoint {
            address: "127.0.0.1:8083".parse().unwrap(),
            weight: None,
            drain: false,
        }]
    );
}

#[test]
fn unknown_version_points_at_the_value() {
    let text = GOOD.replace("active: blue", "active: gren");
    assert_eq!(
        problem(&text),
        "deploy.yaml:12:13: unknown version \"gren\" in services.checkout.active (versions are: blue, green); did you mean \"green\"?"
    );
}

#[test]
fn unknown_key_suggests_the_closest() {
    let text = GOOD.replace("active: blue", "activ: blue");
    assert_eq!(
        problem(&text),
        "deploy.yaml:12:5: unknown key `activ` (did you mean `active`?); valid keys here: `versions`, `active`, `strategy`, `mirror`, `rules`, `load_balancing`, `outlier_detection`, `health_check`, `slow_start`, `timeout`, `connect_timeout`, `retries`, `protocol`, `websocket`, `tls`, `panic_threshold`"
    );
    let text = GOOD.replace("routes:", "routs:");
    assert!(
        problem(&text).starts_with("deploy.yaml:4:5: unknown key `routs` (did you mean `routes`?)")
    );
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let p = problem("listeners: [\n  - name: x\n");
    assert!(p.starts_with("deploy.yaml:2:"), "{p}");
    let p = problem("listeners:\n  - name: x\n    name: y\n");
    assert_eq!(
        p,
        "deploy.yaml:3:5: duplicate key `name`: each key may appear only once in a mapping"
    );
}

#[test]
fn missing_keys_are_named() {
    let p = problems("listeners:\n  - name: x\n    routes: []\nservices: {}\n");
    assert!(p[0].contains("listener \"x\" needs an `address`"), "{p:?}");
}

#[test]
fn empty_file_is_rejected() {
    assert_eq!(
        problem(""),
        "deploy.yaml:1:1: no listeners: add at least one under `listeners:` so Envoy has a port to serve"
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
  - name: public
    address: 0.0.0.0:10000
    routes:
      - match: { prefix: /, path: /x }
        service: chekout
      - match: { prefix: api }
        service: checkout
  - name: empty
    address: 127.0.0.1:10001
services:
  checkout:
    versions:
      blue: { endpoints: [127.0.0.1:8081, 127.0.0.1:8081, loc@lhost:80, 127.0.0.1:0] }
      green: { endpoints: [] }
    active: green
  bad/name:
    versions: {}
    active: x
  quiet:
    versions:
      v1: { endpoints: [127.0.0.1:9000] }
";
    assert_eq!(
        problems(text),
        vec![
            "deploy.yaml:7:11: duplicate listener name \"public\" (first defined at line 2); listener names must be unique",
            "deploy.yaml:8:14: listener \"public\" binds 0.0.0.0:10000 which clashes with listener \"public\" (127.0.0.1:10000 at line 3); give each listener its own port",
            "deploy.yaml:10:16: a route matches on either `prefix` or `path`, not both",
            "deploy.yaml:11:18: unknown service \"chekout\" in route of listener \"public\" (services are: checkout, bad/name, quiet); did you mean \"checkout\"?",
            "deploy.yaml:12:26: `prefix` must start with '/', got \"api\"",
            "deploy.yaml:14:11: listener \"empty\" has no routes: add one under `routes:` that names a service (or give it `hosts:` with theirs, or `redirect: https`)",
            "deploy.yaml:19:43: endpoint 127.0.0.1:8081 is listed twice in services.checkout.versions.blue",
            "deploy.yaml:19:59: invalid endpoint \"loc@lhost:80\" in services.checkout.versions.blue: \"loc@lhost\" is neither an IP address nor a DNS name: a name is dot-separated labels of 1 to 63 letters, digits, '-' or '_' (not starting or ending with '-'), at most 253 characters; write IPv6 addresses in brackets, e.g. [::1]:8081",
            "deploy.yaml:19:73: endpoint \"127.0.0.1:0\" has port 0: give the port the version listens on",
            "deploy.yaml:21:13: version \"green\" of service \"checkout\" gets traffic but has no endpoints: add endpoints or send the traffic to another version",
            "deploy.yaml:22:3: invalid service name \"bad/name\": use 1 to 64 letters, digits, '-', '_' or '.'",
            "deploy.yaml:23:15: service \"bad/name\" has no versions: add one under `versions:` with its endpoints",
            "deploy.yaml:24:13: unknown version \"x\" in services.bad/name.active (versions are: none)",
            "deploy.yaml:25:3: service \"quiet\" does not say which version gets traffic: add `active: <version>` or a `strategy` (versions are: v1)",
        ]
    );
}

#[test]
fn listeners_on_different_ports_or_families_do_not_clash() {
    let text = GOOD.replace(
        "services:",
        "  - name: second
    address: 127.0.0.2:10000
    routes:
      - match: { path: /health }
        service: checkout
  - name: v6
    address: \"[::]:10000\"
    routes:
      - match: { prefix: / }
        service: checkout
services:",
    );
    let spec = parse("deploy.yaml", &text).unwrap();
    assert_eq!(spec.listeners.len(), 3);
    assert_eq!(
        spec.listeners[1].routes[0].matcher,
        PathMatch::Exact("/health".into())
    );
}

#[test]
fn idle_versions_may_have_no_endpoints() {
    let text = GOOD.replace("green: { endpoints: [127.0.0.1:8083] }", "green: {}");
    let spec = parse("deploy.yaml", &text).unwrap();
    assert!(
        spec.services["checkout"].versions["green"]
            .endpoints
            .is_empty()
    );
}

fn service(body: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: checkout\nservices:\n  checkout:\n    versions:\n      v1: {{ endpoints: [127.0.0.1:8081] }}\n      v2: {{ endpoints: [127.0.0.1:8082] }}\n{body}"
    )
}

#[test]
fn percentages() {
    let p = |t: &str| Percent::parse(t).map(Percent::ppm);
    assert_eq!(p("10"), Some(100_000));
    assert_eq!(p("0.5"), Some(5_000));
    assert_eq!(p("0.5%"), Some(5_000));
    assert_eq!(p("100"), Some(1_000_000));
    assert_eq!(p("0"), Some(0));
    assert_eq!(p("33.3333"), Some(333_333));
    assert_eq!(p("100.1"), None);
    assert_eq!(p("0.00001"), None);
    assert_eq!(p("-1"), None);
    assert_eq!(p("ten"), None);
}

#[test]
fn canary_with_sticky_defaults() {
    let spec = parse(
        "d.yaml",
        &service(
            "    strategy:\n      canary: { stable: v1, canary: v2, weight: 0.5, sticky: {} }\n",
        ),
    )
    .unwrap();
    assert_eq!(
        spec.services["checkout"].strategy,
        Strategy::Canary {
            stable: "v1".into(),
            canary: "v2".into(),
            weight: Percent::from_ppm(5_000).unwrap(),
            sticky: Some(Sticky {
                cookie: "cutover-checkout".into(),
                ttl: std::time::Duration::from_secs(86_400)
            }),
            rollout: None,
        }
    );
}

#[test]
fn strategy_problems_point_at_their_values() {
    assert_eq!(
        problem(&service(
            "    strategy:\n      canary: { stable: v1, canary: v3, weight: 10 }\n"
        )),
        "deploy.yaml:13:37: unknown version \"v3\" in services.checkout.strategy.canary.canary (versions are: v1, v2)"
    );
    assert_eq!(
        problem(&service(
            "    strategy:\n      canary: { stable: v1, canary: v2, weight: 120 }\n"
        )),
        "deploy.yaml:13:49: invalid percentage \"120\" for `strategy.canary.weight`: write a number from 0 to 100 with at most 4 decimals, e.g. 10, 0.5 or 25%"
    );
    assert_eq!(
        problem(&service(
            "    active: v1\n    strategy:\n      blue-green: { active: v2 }\n"
        )),
        "deploy.yaml:12:13: service \"checkout\" has both `active` and `strategy`: `active: v` is short for `strategy: { blue-green: { active: v } }`; keep one"
    );
    assert_eq!(
        problem(&service(
            "    strategy:\n      red-black: { active: v2, grace: soon }\n"
        )),
        "deploy.yaml:13:39: invalid duration \"soon\" for `grace`: write e.g. 500ms, 5s, 2m or 1h"
    );
    assert!(
        problem(&service("    strategy:\n      purple: { active: v2 }\n"))
            .contains("unknown variant `purple`"),
    );
}

#[test]
fn mirrors_and_rules_need_receiving_versions() {
    assert_eq!(
        problem(&service("    active: v1\n    mirror: { version: v1 }\n")),
        "deploy.yaml:13:24: version \"v1\" of service \"checkout\" answers requests and cannot also be their mirror: mirror a version that gets no traffic"
    );
    let text = service("    active: v1\n    rules:\n      - match: { header: { x-beta: \"1\" } }\n        version: v2\n")
        .replace("v2: { endpoints: [127.0.0.1:8082] }", "v2: { endpoints: [] }");
    assert_eq!(
        problem(&text),
        "deploy.yaml:15:18: version \"v2\" of service \"checkout\" gets traffic from a rule but has no endpoints: add endpoints or send the traffic to another version"
    );
    assert_eq!(
        problem(&service(
            "    active: v1\n    rules:\n      - match: {}\n        version: v2\n"
        )),
        "deploy.yaml:14:16: a rule needs at least one `header`, `cookie`, `query` or `prefix` to match"
    );
}

#[test]
fn draining_every_endpoint_of_a_serving_version_is_refused() {
    let text = service("    active: v1\n").replace(
        "v1: { endpoints: [127.0.0.1:8081] }",
        "v1: { endpoints: [{ address: 127.0.0.1:8081, drain: true }] }",
    );
    assert_eq!(
        problem(&text),
        "deploy.yaml:12:13: version \"v1\" of service \"checkout\" gets traffic but every endpoint is draining: add an endpoint that is not draining first, or move the traffic"
    );
}

#[test]
fn policy_defaults_and_errors() {
    let spec = parse("d.yaml", &service("    active: v1\n")).unwrap();
    let policy = &spec.services["checkout"].policy;
    assert_eq!(policy.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(policy.panic_threshold.ppm(), 0);
    assert_eq!(policy.connect_timeout, std::time::Duration::from_secs(1));
    assert_eq!(
        policy.retries.on,
        ["connect-failure", "refused-stream", "reset-before-request"]
    );
    let od = policy.outlier_detection.as_ref().expect("on by default");
    assert_eq!((od.consecutive_5xx, od.max_ejection_percent), (5, 50));
    assert!(policy.health_check.is_none());

    let off = parse(
        "d.yaml",
        &service("    active: v1\n    outlier_detection: { enabled: false }\n"),
    )
    .unwrap();
    assert!(off.services["checkout"].policy.outlier_detection.is_none());

    assert_eq!(
        problem(&service(
            "    active: v1\n    retries: { on: [conect-failure] }\n"
        )),
        "deploy.yaml:13:21: unknown retry condition \"conect-failure\" (did you mean \"connect-failure\"?); Envoy's conditions are: 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable"
    );
    assert_eq!(
        problem(&service(
            "    active: v1\n    health_check: { interval: 5s }\n"
        )),
        "deploy.yaml:13:19: the health check of service \"checkout\" needs an HTTP `path` (e.g. /health), `tcp: true` or (gRPC) `grpc: true`"
    );
    assert_eq!(
        problem(&service(
            "    active: v1\n    load_balancing: { ring_hash: source_ip }\n    slow_start: 30s\n"
        )),
        "deploy.yaml:14:17: `slow_start` works with `round_robin` and `least_request` load balancing only"
    );
    let hashed = parse(
        "d.yaml",
        &service("    active: v1\n    load_balancing: { maglev: { header: X-User } }\n"),
    )
    .unwrap();
    assert_eq!(
        hashed.services["checkout"].policy.load_balancing,
        LoadBalancing::Maglev(HashOn::Header("x-user".into()))
    );
}

fn with_strategy(strategy: &str) -> String {
    GOOD.replace("    active: blue\n", strategy)
}

/// The first step's weight and the rollout of `checkout`'s canary.
fn canary_rollout(spec: &Spec) -> (Percent, &Rollout) {
    match &spec.services["checkout"].strategy {
        Strategy::Canary {
            weight,
            rollout: Some(r),
            ..
        } => (*weight, r),
        other => panic!("a canary with a rollout: {other:?}"),
    }
}

#[test]
fn a_rollout_reads_its_steps_interval_and_analysis() {
    let spec = parse(
        "deploy.yaml",
        &with_strategy(
            "    strategy:
      canary:
        stable: blue
        canary: green
        steps: [5, { weight: 25, pause: 2m }, \"50%\", 100]
        interval: 30s
        analysis:
          max_error_rate: 1%
          max_p99_latency: 500ms
          min_requests: 100
          webhooks: [ { url: http://127.0.0.1:9000/check } ]
",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (weight, r) = canary_rollout(&spec);
    assert_eq!(weight.ppm(), 50_000, "a rollout starts at its first step");
    let steps: Vec<(u32, u64)> = r
        .steps
        .iter()
        .map(|s| (s.kind.weight_ppm(), s.pause.as_secs()))
        .collect();
    assert_eq!(
        steps,
        [(50_000, 30), (250_000, 120), (500_000, 30), (1_000_000, 30)]
    );
    let a = r.analysis.as_ref().unwrap();
    assert_eq!(a.interval, std::time::Duration::from_secs(10));
    assert_eq!(a.max_error_rate, Percent::from_ppm(10_000));
    assert_eq!(a.min_requests, 100);
    assert_eq!(a.failure_limit, 2);
    assert_eq!(a.webhooks[0].url, "http://127.0.0.1:9000/check");
}

#[test]
fn rollout_problems_point_at_their_values() {
    let canary = |body: &str| {
        with_strategy(&format!(
            "    strategy:\n      canary:\n        stable: blue\n        canary: green\n{body}"
        ))
    };
    assert_eq!(
        problem(&canary("        weight: 10\n        steps: [10, 100]\n")),
        "deploy.yaml:17:16: give either `weight` (a manual canary) or `steps` (an automated rollout), not both"
    );
    assert!(
        problem(&canary("")).contains("the canary needs `weight` (a manual canary"),
        "{}",
        problem(&canary(""))
    );
    assert_eq!(
        problem(&canary("        steps: [10, 50, 25]\n")),
        "deploy.yaml:16:25: steps must rise: 25% comes after 50%"
    );
    assert_eq!(
        problem(&canary("        steps: [0, 50]\n")),
        "deploy.yaml:16:17: a step's weight must be above 0 (a rollout starts at its first step)"
    );
    assert!(
        problem(&canary("        weight: 10\n        interval: 1m\n"))
            .contains("`interval` belongs to an automated rollout")
    );
    assert!(
        problem(&canary(
            "        steps: [10, 100]\n        analysis: { window: 1m }\n"
        ))
        .contains("`window` is for blue-green and red-black analysis")
    );
    assert!(
        problem(&canary(
            "        steps: [10, 100]\n        analysis: { webhooks: [ { url: \"ftp://x\" } ] }\n"
        ))
        .contains("invalid webhook URL \"ftp://x\"")
    );
    assert!(
        problem(&canary(
            "        steps: [10, 100]\n        analysis: { failure_limit: 0 }\n"
        ))
        .contains("`failure_limit` must be at least 1")
    );
}

#[test]
fn a_canary_compared_with_stable_reads_its_relative_limits() {
    let canary = |analysis: &str| {
        service(&format!(
            "    strategy:\n      canary:\n        stable: v1\n        canary: v2\n        steps: [10, 100]\n        analysis: {analysis}\n"
        ))
    };
    let spec = parse(
        "d.yaml",
        &canary("{ max_error_rate_increase: 0.5%, max_p99_ratio: 1.5, confidence: 99% }"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let b = spec.services["checkout"]
        .strategy
        .analysis()
        .unwrap()
        .baseline
        .unwrap();
    assert_eq!(b.max_error_rate_increase, Percent::from_ppm(5_000));
    assert_eq!(b.max_p99_ratio_milli, Some(1500));
    assert_eq!(b.confidence, Percent::from_ppm(990_000).unwrap());
    assert!((b.significance() - 0.01).abs() < 1e-12);
    let spec = parse("d.yaml", &canary("{ max_p99_ratio: 2 }")).unwrap();
    let b = spec.services["checkout"]
        .strategy
        .analysis()
        .unwrap()
        .baseline
        .unwrap();
    assert_eq!(
        (b.max_error_rate_increase, b.confidence.ppm()),
        (None, 950_000),
        "95% unless given"
    );
    let plain = parse("d.yaml", &canary("{ max_error_rate: 1% }")).unwrap();
    assert_eq!(
        plain.services["checkout"]
            .strategy
            .analysis()
            .unwrap()
            .baseline,
        None
    );

    assert_eq!(
        problem(&canary("{ max_p99_ratio: 0.5 }")),
        "deploy.yaml:17:36: invalid `max_p99_ratio` \"0.5\": write how many times stable's p99 the canary's may reach, a number from 1 to 1000, e.g. 1.5"
    );
    assert!(
        problem(&canary("{ confidence: 99% }"))
            .contains("`confidence` applies to `max_error_rate_increase` and `max_p99_ratio`"),
        "{}",
        problem(&canary("{ confidence: 99% }"))
    );
    assert!(
        problem(&canary("{ max_p99_ratio: 2, confidence: 40% }"))
            .contains("`confidence` 40% is out of range"),
        "{}",
        problem(&canary("{ max_p99_ratio: 2, confidence: 40% }"))
    );
    assert!(
        problem(&service(
            "    strategy:\n      blue-green:\n        active: v2\n        analysis: { max_p99_ratio: 2 }\n"
        ))
        .contains("`max_p99_ratio` compares a canary with stable in the same window: it is for a canary's analysis")
    );
}

#[test]
fn a_progress_deadline_must_leave_every_step_its_time() {
    let canary = |analysis: &str| {
        service(&format!(
            "    strategy:\n      canary:\n        stable: v1\n        canary: v2\n        steps: [10, {{ weight: 50, pause: 10m }}, 100]\n        analysis: {analysis}\n"
        ))
    };
    let spec = parse("d.yaml", &canary("{ progress_deadline: 15m }")).unwrap();
    assert_eq!(
        spec.services["checkout"]
            .strategy
            .analysis()
            .unwrap()
            .progress_deadline,
        Some(Duration::from_secs(900))
    );
    assert_eq!(
        problem(&canary("{ progress_deadline: 10m }")),
        "deploy.yaml:17:40: `progress_deadline` 10m is not longer than the step at 50% (10m): that step would always roll back; make it longer"
    );
    assert_eq!(
        problem(&service(
            "    strategy:\n      blue-green:\n        active: v2\n        analysis: { window: 2m, progress_deadline: 1m }\n"
        )),
        "deploy.yaml:15:52: `progress_deadline` 1m is not longer than the switch's 2m watch: every switch would roll back; make it longer"
    );
}

#[test]
fn checks_before_a_switch_and_notify_webhooks() {
    let bg = |body: &str| {
        service(&format!(
            "    strategy:\n      blue-green:\n        active: v2\n{body}"
        ))
    };
    let spec = parse(
        "d.yaml",
        &bg("        preview: {}\n        analysis: { before_switch: 2m }\n        notify: [ { url: http://127.0.0.1:9000/events } ]\n"),
    )
    .unwrap();
    let s = &spec.services["checkout"];
    assert_eq!(
        s.strategy.analysis().unwrap().before_switch,
        Some(Duration::from_secs(120))
    );
    assert_eq!(s.notify[0].url, "http://127.0.0.1:9000/events");
    assert_eq!(s.notify[0].timeout, Duration::from_secs(5));
    assert_eq!(s.notify[0].format, crate::spec::WebhookFormat::Json);
    let chat = parse(
        "d.yaml",
        &bg("        preview: {}\n        analysis: { before_switch: 2m }\n        notify: [ { url: http://127.0.0.1:9000/hooks, format: slack } ]\n"),
    )
    .unwrap();
    assert_eq!(
        chat.services["checkout"].notify[0].format,
        crate::spec::WebhookFormat::Slack
    );
    assert!(
        problem(&bg("        preview: {}\n        analysis: { before_switch: 2m }\n        notify: [ { url: http://127.0.0.1:9000/hooks, format: teams } ]\n"))
            .contains("unknown webhook format \"teams\": write `json` (the event as JSON) or `slack`")
    );
    assert!(
        problem(&bg("        preview: {}\n        analysis: { before_switch: 2m, webhooks: [ { url: http://127.0.0.1:9000/check, format: slack } ] }\n"))
            .contains("`format` is for `notify` webhooks")
    );

    assert_eq!(
        problem(&bg("        analysis: { before_switch: 2m }\n")),
        "deploy.yaml:15:36: `before_switch` watches the new version's preview traffic: add `preview: {}` to the blue-green strategy (requests with `x-cutover-preview: <version>` reach it), or remove `before_switch`"
    );
    assert!(
        problem(&service(
            "    strategy:\n      red-black:\n        active: v2\n        analysis: { before_switch: 2m }\n"
        ))
        .contains("`before_switch` is for blue-green with `preview`: red-black deploys only")
    );
    assert!(
        problem(&service(
            "    strategy:\n      canary: { stable: v1, canary: v2, steps: [10, 100], analysis: { before_switch: 1m } }\n"
        ))
        .contains("`before_switch` is for blue-green with `preview`; a canary")
    );
    assert_eq!(
        problem(&bg("        notify: [ { url: http://127.0.0.1:9000/ } ]\n")),
        "deploy.yaml:15:19: `notify` tells of a rollout's steps, promotion and rollback, and this service has no rollout: add `steps` (canary) or `analysis` (blue-green, red-black), or remove `notify`"
    );
    assert!(
        problem(&service(
            "    strategy:\n      canary: { stable: v1, canary: v2, steps: [10, 100], notify: [ { url: \"https://x\" } ] }\n"
        ))
        .contains("invalid webhook URL \"https://x\"")
    );
}

#[test]
fn endpoints_may_be_dns_names() {
    let text = GOOD.replace(
        "green: { endpoints: [127.0.0.1:8083] }",
        "green: { endpoints: [green:8080, { address: Green-2.example.com:8080, weight: 3, drain: true }, 127.0.0.1:8083] }",
    );
    let spec = parse("deploy.yaml", &text).unwrap();
    let green: Vec<(String, bool, Option<u32>, bool)> = spec.services["checkout"].versions["green"]
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.address.is_name(),
                e.weight,
                e.drain,
            )
        })
        .collect();
    assert_eq!(
        green,
        [
            ("green:8080".to_owned(), true, None, false),
            ("green-2.example.com:8080".to_owned(), true, Some(3), true),
            ("127.0.0.1:8083".to_owned(), false, None, false),
        ]
    );
}

#[test]
fn invalid_names_and_ports_are_reported_where_they_are() {
    let text = GOOD.replace(
        "green: { endpoints: [127.0.0.1:8083] }",
        "green: { endpoints: [green:8080, GREEN:8080, green, green:0, green:99999, -green:80, 10.0.0.256:80] }",
    );
    assert_eq!(
        problems(&text),
        [
            "deploy.yaml:11:40: endpoint green:8080 is listed twice in services.checkout.versions.green",
            "deploy.yaml:11:52: invalid endpoint \"green\" in services.checkout.versions.green: no port: write IP:PORT or HOST:PORT, e.g. 127.0.0.1:8081 or blue:8080",
            "deploy.yaml:11:59: endpoint \"green:0\" has port 0: give the port the version listens on",
            "deploy.yaml:11:68: invalid endpoint \"green:99999\" in services.checkout.versions.green: port \"99999\" is not a number from 1 to 65535",
            "deploy.yaml:11:81: invalid endpoint \"-green:80\" in services.checkout.versions.green: \"-green\" is neither an IP address nor a DNS name: a name is dot-separated labels of 1 to 63 letters, digits, '-' or '_' (not starting or ending with '-'), at most 253 characters; write IPv6 addresses in brackets, e.g. [::1]:8081",
            "deploy.yaml:11:92: invalid endpoint \"10.0.0.256:80\" in services.checkout.versions.green: \"10.0.0.256\" looks like an IPv4 address but is not one (each of the 4 numbers is 0 to 255)",
        ]
    );
}

/// Two listeners, and `groups` appended to the file.
fn with_groups(groups: &str) -> String {
    let two = GOOD.replace(
        "services:",
        "  - name: internal\n    address: 127.0.0.1:15001\n    routes:\n      - match: { prefix: / }\n        service: checkout\nservices:",
    );
    format!("{two}groups:\n{groups}")
}

#[test]
fn groups_select_nodes_by_id_cluster_and_metadata_in_file_order() {
    let spec = parse(
        "deploy.yaml",
        &with_groups(
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public]\n  - name: sidecars\n    match: { cluster: checkout, metadata: { role: sidecar, replicas: 3 } }\n    listeners: [internal, public]\n",
        ),
    )
    .unwrap();
    assert_eq!(spec.groups.len(), 2);
    assert_eq!(spec.groups[1].listeners, ["internal", "public"]);
    assert_eq!(spec.groups[1].selector.metadata["replicas"], "3");
    let groups = spec.node_groups();
    let node = |id: &str, cluster: &str, role: &str| crate::node::NodeInfo {
        id: id.into(),
        cluster: cluster.into(),
        metadata: [
            ("role".to_owned(), role.to_owned()),
            ("replicas".into(), "3".into()),
        ]
        .into_iter()
        .collect(),
    };
    assert_eq!(
        groups
            .group_of(&node("edge-1", "checkout", "sidecar"))
            .as_str(),
        "edge"
    );
    assert_eq!(
        groups
            .group_of(&node("c-1", "checkout", "sidecar"))
            .as_str(),
        "sidecars"
    );
    assert!(
        groups
            .group_of(&node("c-1", "checkout", "edge"))
            .is_unmatched()
    );
    assert_eq!(
        spec.groups_routing("checkout"),
        ["edge".to_owned(), "sidecars".to_owned()].into()
    );
    // Without `groups`, no targeting: every node in `all`.
    assert!(parse("deploy.yaml", GOOD).unwrap().groups.is_empty());
}

#[test]
fn group_problems_point_at_their_values() {
    let cases = [
        (
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public, internl]\n",
            "deploy.yaml:7:11: listener \"internal\" is in no group, so no Envoy gets it; add it to a group's `listeners` or remove it\n\
             deploy.yaml:21:25: unknown listener \"internl\" in group \"edge\" (listeners are: public, internal); did you mean \"internal\"?",
        ),
        (
            "  - name: all-of-them\n    match: { id: \"*\" }\n    listeners: [public, internal]\n  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public]\n",
            "deploy.yaml:23:12: group \"edge\" can never get an Envoy: group \"all-of-them\" (line 20) comes first and matches every node this one matches (the first matching group wins); put the narrower group first, or make this match narrower",
        ),
        (
            "  - name: a\n    match: { cluster: edge }\n    listeners: [public, internal]\n  - name: b\n    match: { cluster: edge }\n    listeners: [public]\n",
            "deploy.yaml:23:12: group \"b\" can never get an Envoy: group \"a\" (line 20) comes first and matches every node this one matches (the first matching group wins); put the narrower group first, or make this match narrower",
        ),
        (
            "  - name: edge\n    match: {}\n    listeners: [public, internal]\n",
            "deploy.yaml:20:12: the match of group \"edge\" has no condition; give `id` (a glob), `cluster` or `metadata`; to take every remaining Envoy, write `match: { id: \"*\" }`",
        ),
        (
            "  - name: edge\n    match: { id: \"edge-[\" }\n    listeners: [public, internal]\n",
            "deploy.yaml:20:18: invalid glob \"edge-[\" in `id`: Pattern syntax error near position 5: invalid range pattern",
        ),
        (
            "  - name: edge\n    match: { cluster: \"\" }\n    listeners: [public, internal]\n",
            "deploy.yaml:20:23: an empty `cluster` matches only Envoys with no node cluster; name a cluster, or leave `cluster` out",
        ),
        (
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: []\n  - name: rest\n    match: { id: \"*\" }\n    listeners: [public, internal]\n",
            "deploy.yaml:21:16: group \"edge\" gets no listener: its Envoys would get an empty config, as Envoys no group matches do; name at least one listener",
        ),
        (
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public]\n",
            "deploy.yaml:7:11: listener \"internal\" is in no group, so no Envoy gets it; add it to a group's `listeners` or remove it",
        ),
        (
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public, internal, public]\n",
            "deploy.yaml:21:35: listener \"public\" is named twice in group \"edge\"",
        ),
        (
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public]\n  - name: edge\n    match: { id: \"side-*\" }\n    listeners: [internal]\n",
            "deploy.yaml:22:11: duplicate group name \"edge\" (first defined at line 19); group names must be unique",
        ),
        (
            "  - name: edge\n    match: { node: \"edge-*\" }\n    listeners: [public, internal]\n",
            "deploy.yaml:20:14: unknown key `node`; valid keys here: `id`, `cluster`, `metadata`",
        ),
    ];
    for (groups, expected) in cases {
        assert_eq!(
            problems(&with_groups(groups)).join("\n"),
            expected,
            "{groups}"
        );
    }
    assert_eq!(
        problem(&format!("{GOOD}groups: []\n")),
        "deploy.yaml:13:9: `groups` is empty: no Envoy would get any listener; list at least one group, or remove `groups` so that every Envoy gets every listener"
    );
}

#[test]
fn access_rules_bind_certificate_identities_to_node_ids_and_groups() {
    let text = format!(
        "{}access:\n  - identity: \"spiffe://corp.example/edge/{{name}}\"\n    node: \"{{name}}\"\n    groups: [edge]\n  - identity: \"ops.corp.example\"\n    node: \"*\"\n    csds: all\n",
        with_groups(
            "  - name: edge\n    match: { id: \"edge-*\" }\n    listeners: [public]\n  - name: rest\n    match: { id: \"*\" }\n    listeners: [internal]\n"
        )
    );
    let spec = parse("deploy.yaml", &text).unwrap();
    let rules = &spec.access.rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].groups.as_deref(), Some(&["edge".to_owned()][..]));
    assert_eq!(rules[1].csds, crate::access::CsdsScope::All);
    let who = crate::access::Identity {
        names: vec!["spiffe://corp.example/edge/edge-1".into()],
    };
    assert_eq!(spec.access.check(&who, "edge-1", Some("edge")), Ok(()));
    assert!(spec.access.check(&who, "edge-2", Some("edge")).is_err());
    // Without `access`, no rules: a node id must be one of the certificate's names.
    assert!(parse("deploy.yaml", GOOD).unwrap().access.rules.is_empty());
}

#[test]
fn access_rule_problems_point_at_their_values() {
    let p = problem(&format!(
        "{GOOD}access:\n  - identity: \"spiffe://corp/{{name\"\n    node: \"x\"\n"
    ));
    assert!(
        p.starts_with("deploy.yaml:14:15:") && p.contains("without a closing"),
        "{p}"
    );
    let p = problem(&format!(
        "{GOOD}access:\n  - identity: \"spiffe://corp/{{sa}}\"\n    node: \"{{name}}\"\n"
    ));
    assert!(
        p.starts_with("deploy.yaml:15:11:")
            && p.contains("uses {name}, which its identity pattern")
            && p.contains("it captures: sa"),
        "{p}"
    );
    let p = problem(&format!(
        "{GOOD}access:\n  - identity: \"a\"\n    node: \"a\"\n    groups: [edge]\n"
    ));
    assert!(p.contains("the file has no `groups:`"), "{p}");
    let p = problem(&format!("{GOOD}access: []\n"));
    assert!(p.contains("`access` is empty"), "{p}");
    let p = problem(&format!(
        "{}access:\n  - identity: \"a\"\n    node: \"a\"\n    groups: [egde]\n",
        with_groups(
            "  - name: edge\n    match: { id: \"*\" }\n    listeners: [public, internal]\n"
        )
    ));
    assert!(
        p.contains("unknown group \"egde\"") && p.contains("did you mean \"edge\""),
        "{p}"
    );
}

#[test]
fn mirror_and_match_steps_come_before_the_weights() {
    let steps = |steps: &str| {
        service(&format!(
            "    strategy:\n      canary:\n        stable: v1\n        canary: v2\n        steps: {steps}\n"
        ))
    };
    let spec = parse(
        "d.yaml",
        &steps("[{ mirror: 20, pause: 5m }, { match: { header: { X-Tester: \"1\" }, cookie: { beta: b1 } } }, 5, 100]"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (weight, r) = canary_rollout(&spec);
    assert_eq!(
        weight.ppm(),
        0,
        "a mirror step gives users nothing of the canary"
    );
    let kinds: Vec<String> = r
        .steps
        .iter()
        .map(|s| format!("{} ({}s)", s.kind, s.pause.as_secs()))
        .collect();
    assert_eq!(
        kinds,
        [
            "a mirror of 20% (300s)",
            "requests with header x-tester: 1 and cookie beta=b1 (60s)",
            "5% (60s)",
            "100% (60s)"
        ]
    );

    for (text, expected) in [
        (
            "[5, { mirror: 20 }, 100]",
            "d.yaml:16:20: a mirror step comes after the weight 5%: mirror and match steps come first, before any user gets the canary's answers by weight",
        ),
        (
            "[{ mirror: 20, weight: 5 }, 100]",
            "d.yaml:16:17: a step gives exactly one of `weight` (a share of requests), `mirror` (a share copied to the canary) or `match` (only matching requests, e.g. `match: { header: { x-tester: \"1\" } }`)",
        ),
        (
            "[{ mirror: 0 }, 100]",
            "d.yaml:16:17: a mirror step copies more than 0% of the requests to the canary",
        ),
        (
            "[{ match: {} }, 100]",
            "d.yaml:16:26: a match step needs at least one `header`, `cookie`, `query` or `prefix` to match",
        ),
        (
            "[{ mirror: 20 }, { mirror: 20 }, 100]",
            "d.yaml:16:33: the step a mirror of 20% is listed twice",
        ),
    ] {
        let p = parse("d.yaml", &steps(text)).expect_err(text).to_string();
        assert_eq!(p, expected, "{text}");
    }

    // The service's own mirror and a mirror step would both need the route's one mirror.
    let both = steps("[{ mirror: 20 }, 100]").replace(
        "    strategy:",
        "    mirror: { version: v1 }\n    strategy:",
    );
    let p = parse(
        "d.yaml",
        &both
            .replace("stable: v1", "stable: v2")
            .replace("canary: v2", "canary: v1"),
    );
    assert!(
        p.as_ref()
            .is_err_and(|e| e.to_string().contains("its rollout has a mirror step")),
        "{p:?}"
    );
}
