//! The demo's files agree with each other and with the code that makes them: the bootstraps in
//! `envoy/` are what `cutover bootstrap` prints today, and docker-compose.yml, examples/demo.yaml
//! and envoy/front.yaml name the same services, ports and paths. Pure file checks; the demo
//! itself runs in `tests/compose.rs` and `tests/demo.rs`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// `cutover` with these arguments; its stdout. Panics if it fails.
fn cutover(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("run cutover");
    assert!(
        out.status.success(),
        "cutover {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A generated file: its header names the command (a `#   cutover bootstrap ...` line), and the
/// rest is exactly what that command prints today.
fn check_generated(path: &str) -> Value {
    let text = repo_file(path);
    let command = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("cutover "))
        .unwrap_or_else(|| panic!("{path}: no `#   cutover ...` line in its header"));
    let body: String = text
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let args: Vec<&str> = command.split_whitespace().collect();
    let printed = cutover(&args);
    assert!(
        body == printed,
        "{path} is not what `cutover {command}` prints today; regenerate it:\n--- {path}\n{body}\n--- printed\n{printed}"
    );
    yaml(&body)
}

/// The ADS address (host, port) of a bootstrap.
fn ads_of(bootstrap: &Value) -> (String, u64) {
    let sa = &bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        [0]["endpoint"]["address"]["socket_address"];
    (
        sa["address"].as_str().unwrap().to_owned(),
        sa["port_value"].as_u64().unwrap(),
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| match s {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// `--name=value` or `--name value` in a command.
fn flag(command: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    command.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{long}="))
            .map(str::to_owned)
            .or_else(|| (*a == long).then(|| command.get(i + 1).cloned()).flatten())
    })
}

#[test]
fn the_front_envoy_bootstrap_is_what_cutover_bootstrap_prints() {
    let b = check_generated("envoy/front.yaml");
    assert_eq!(b["node"]["id"], "front");
    assert_eq!(ads_of(&b), ("cutover".to_owned(), 18000));
    assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
}

#[test]
fn compose_file_deployment_file_and_bootstrap_agree() {
    let compose = yaml(&repo_file("docker-compose.yml"));
    let services = compose["services"].as_object().expect("services");
    let bootstrap = yaml(&repo_file("envoy/front.yaml"));
    let deploy_text = repo_file("examples/demo.yaml");
    let spec = cutover::spec::parse("examples/demo.yaml", &deploy_text).expect("demo.yaml valid");

    // Every port is published on the host's loopback only.
    for (name, s) in services {
        for p in s["ports"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} beyond loopback"
            );
        }
    }

    // cutover serves the mounted demo.yaml on the ADS port the bootstrap names, by its name.
    let cutover = &services["cutover"];
    let command = strings(&cutover["command"]);
    assert_eq!(command[0], "serve");
    assert_eq!(command[1], "/etc/cutover/demo.yaml");
    assert_eq!(
        strings(&cutover["volumes"]),
        ["./examples:/etc/cutover:ro"],
        "the directory is mounted (editors save by rename), read-only"
    );
    let ads = flag(&command, "ads").expect("--ads");
    let (host, port) = ads_of(&bootstrap);
    assert_eq!(host, "cutover", "the bootstrap names the compose service");
    assert_eq!(ads, format!("0.0.0.0:{port}"));
    let state = flag(&command, "state").expect("--state: the mount is read-only");
    assert!(state.starts_with("/var/lib/cutover/"), "{state}");
    let admin = flag(&command, "admin").expect("--admin");
    let admin_port = admin.rsplit(':').next().unwrap();
    assert!(strings(&cutover["ports"]).contains(&format!("127.0.0.1:{admin_port}:{admin_port}")));

    // The front Envoy: the official image at the release the tests use, started on the bootstrap.
    let envoy = &services["envoy"];
    let version = repo_file("scripts/test")
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION="))
        .expect("ENVOY_VERSION in scripts/test")
        .to_owned();
    assert_eq!(envoy["image"], format!("envoyproxy/envoy:v{version}"));
    assert_eq!(strings(&envoy["volumes"]), ["./envoy:/etc/envoy:ro"]);
    let command = strings(&envoy["command"]);
    let config = command[command.iter().position(|a| a == "-c").unwrap() + 1].clone();
    assert_eq!(config, "/etc/envoy/front.yaml");
    let ports = strings(&envoy["ports"]);
    let listener = spec.listeners[0].address.port();
    assert!(
        ports.contains(&format!("127.0.0.1:{listener}:{listener}")),
        "{ports:?}"
    );
    let envoy_admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap();
    assert!(
        ports.contains(&format!("127.0.0.1:{envoy_admin}:{envoy_admin}")),
        "{ports:?}"
    );

    // Every endpoint of the deployment file is an upstream service of the compose file, on the
    // port it listens on; each upstream runs `cutover demo-upstream` named after its service.
    let mut upstreams = Vec::new();
    for (name, s) in services {
        let command = strings(&s["command"]);
        if command.first().map(String::as_str) == Some("demo-upstream") {
            assert_eq!(flag(&command, "name").as_deref(), Some(name.as_str()));
            assert_eq!(flag(&command, "listen").as_deref(), Some("0.0.0.0:8080"));
            upstreams.push(name.clone());
        }
    }
    upstreams.sort();
    assert_eq!(upstreams, ["blue", "broken", "canary", "green"]);
    // `cutover demo` starts the same upstreams on loopback.
    for (name, colour, fail) in cutover::demo::twin::UPSTREAMS {
        let command = strings(&services[name]["command"]);
        assert_eq!(flag(&command, "colour").as_deref(), Some(colour), "{name}");
        let compose_fail = flag(&command, "fail-percent").unwrap_or_else(|| "0".into());
        assert_eq!(compose_fail, fail.to_string(), "{name}");
    }
    for (service, s) in &spec.services {
        for (version, v) in &s.versions {
            for e in &v.endpoints {
                assert!(
                    upstreams.contains(&e.address.host()) && e.address.port() == 8080,
                    "{service}/{version}: endpoint {} is no compose upstream",
                    e.address
                );
            }
        }
    }
    // cutover and the upstreams share one image, built from the Dockerfile.
    for name in ["cutover", "blue", "green", "canary", "broken"] {
        assert_eq!(services[name]["image"], "cutover:demo", "{name}");
        assert_eq!(services[name]["build"], ".", "{name}");
    }
}
