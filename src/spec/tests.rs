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

fn problems(text: &str) -> Vec<String> {
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
    assert_eq!(l.address, "127.0.0.1:10000".parse().unwrap());
    assert_eq!(
        l.routes,
        vec![Route {
            matcher: PathMatch::Prefix("/".into()),
            service: "checkout".into()
        }]
    );
    let svc = &spec.services["checkout"];
    assert_eq!(
        svc.strategy,
        Strategy::BlueGreen {
            active: "blue".into(),
            preview: None
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
        "deploy.yaml:12:5: unknown key `activ` (did you mean `active`?); valid keys here: `versions`, `active`, `strategy`, `mirror`, `rules`, `load_balancing`, `outlier_detection`, `health_check`, `slow_start`, `timeout`, `connect_timeout`, `retries`, `panic_threshold`"
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
    let p = problem("listeners:\n  - name: x\n    routes: []\nservices: {}\n");
    assert!(p.contains("missing key `address`"), "{p}");
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
      blue: { endpoints: [127.0.0.1:8081, 127.0.0.1:8081, localhost:80, 127.0.0.1:0] }
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
            "deploy.yaml:14:11: listener \"empty\" has no routes: add one under `routes:` that names a service",
            "deploy.yaml:19:43: endpoint 127.0.0.1:8081 is listed twice in services.checkout.versions.blue",
            "deploy.yaml:19:59: invalid endpoint \"localhost:80\" in services.checkout.versions.blue: write IP:PORT, e.g. 127.0.0.1:8081",
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
