//! The demo's files agree with each other and with the code that makes them: the bootstraps in
//! `envoy/` are what `cutover bootstrap` prints today, and docker-compose.yml, examples/demo.yaml
//! and envoy/front.yaml name the same services, ports and paths. Pure file checks; the demo
//! itself runs in `tests/compose_demo.rs` and `tests/e2e_demo.rs`.

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
        ["./examples:/etc/cutover:ro", "certs:/etc/cutover/certs:ro"],
        "the directory is mounted (editors save by rename), read-only, with the certificates \
         the demo made over examples/certs"
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
    // An admin API bound beyond loopback needs a token, or cutover refuses to start.
    assert!(
        cutover["environment"]["CUTOVER_ADMIN_TOKEN"].is_string(),
        "compose gives cutover an admin token"
    );

    // The front Envoy: the official image at the release the tests use, started on the bootstrap.
    let envoy = &services["envoy"];
    let version = repo_file("scripts/test")
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION="))
        .expect("ENVOY_VERSION in scripts/test")
        .to_owned();
    assert_eq!(envoy["image"], format!("envoyproxy/envoy:v{version}"));
    assert_eq!(
        strings(&envoy["volumes"]),
        ["./envoy:/etc/envoy:ro", "certs:/certs:ro"]
    );
    let command = strings(&envoy["command"]);
    let config = command[command.iter().position(|a| a == "-c").unwrap() + 1].clone();
    assert_eq!(config, "/etc/envoy/front.yaml");
    let ports = strings(&envoy["ports"]);
    for l in &spec.listeners {
        let port = l.kind.address().expect("an Envoy listener").port();
        assert!(
            ports.contains(&format!("127.0.0.1:{port}:{port}")),
            "{}: {ports:?}",
            l.name
        );
    }
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
    // `cutover demo` starts the same upstreams on loopback: checked where its list is, in the
    // binary's unit tests (`src/demo/mod.rs`), the demo being no part of the library.
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
    for name in ["certs", "cutover", "blue", "green", "canary", "broken"] {
        assert_eq!(services[name]["image"], "cutover:demo", "{name}");
        assert_eq!(services[name]["build"], ".", "{name}");
    }
}

fn manifests(path: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// A container's port of that name.
fn port_named(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}"))
}

/// A container's environment variable of that name.
fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// The downward API field a container's variable is set from (`metadata.name`, ...).
fn field_ref(container: &Value, name: &str) -> Option<String> {
    env_var(container, name)?["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
        .map(str::to_owned)
}

/// A `cutover serve` setting given either as `--flag` in the container's args or as its
/// variable with a literal value (not both); `$(VAR)` references are left as written.
fn setting(container: &Value, flag_name: &str, var: &str) -> Option<String> {
    let from_args = flag(&strings(&container["args"]), flag_name);
    let from_env = env_var(container, var);
    assert!(
        from_args.is_none() || from_env.is_none(),
        "both --{flag_name} and {var}: which one wins is not for a manifest to rely on"
    );
    from_args.or_else(|| {
        from_env.map(|e| {
            e["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{var} is not a literal: {e}"))
                .to_owned()
        })
    })
}

/// The variable `$(NAME)` that `value` starts with at `prefix`, checked to be set before
/// `var` in the container's env (Kubernetes expands only variables defined earlier; args may
/// use any).
fn referenced_before<'a>(container: &Value, var: &str, value: &'a str, prefix: &str) -> &'a str {
    let name = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("$("))
        .and_then(|rest| rest.split_once(')'))
        .unwrap_or_else(|| panic!("{var}={value}: not {prefix}$(VAR)..."))
        .0;
    let names: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    let at = |n: &str| names.iter().position(|m| *m == n);
    assert!(
        at(name).is_some_and(|i| at(var).is_none_or(|v| i < v)),
        "{var} uses $({name}), which must be set before it"
    );
    name
}

/// A headless Service (the name resolves to every ready pod, no virtual IP), whose ports are
/// each the container's port it targets: a headless Service does not translate ports.
fn assert_headless(service: &Value, container: &Value) {
    let name = &service["metadata"]["name"];
    assert_eq!(service["spec"]["clusterIP"], "None", "{name}: not headless");
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().expect("a named target port");
        assert_eq!(
            p["port"].as_u64(),
            Some(port_named(container, target)),
            "{name}: {p}"
        );
    }
}

/// etcd.yaml's members as cutover reaches them: the client URL of each, in order
/// (`http://<statefulset>-<i>.<service>:<client port>`), checked against the manifests.
fn etcd_client_urls(etcd_docs: &[Value]) -> Vec<String> {
    let service = kind(etcd_docs, "Service", "etcd");
    let set = kind(etcd_docs, "StatefulSet", "etcd");
    assert_eq!(
        set["spec"]["serviceName"], service["metadata"]["name"],
        "the members' stable names come from the StatefulSet's Service"
    );
    let members = set["spec"]["replicas"].as_u64().expect("replicas");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let client = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client")
        .expect("a client port on the etcd Service");
    assert_eq!(
        client["port"].as_u64(),
        Some(port_named(container, "client")),
        "a headless Service does not translate ports"
    );
    (0..members)
        .map(|i| {
            format!(
                "http://{}-{i}.{}:{}",
                set["metadata"]["name"].as_str().unwrap(),
                service["metadata"]["name"].as_str().unwrap(),
                client["port"]
            )
        })
        .collect()
}

/// deploy/kubernetes: the manifests parse, and names, ports and paths agree with each other, with
/// the deployment file they carry and with `cutover bootstrap`; cutover runs as three replicas
/// on etcd.yaml's members, which every Envoy reaches through one headless Service.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one check per manifest, in the order kubectl applies them"
)]
fn kubernetes_manifests_agree_with_each_other_and_with_cutover_bootstrap() {
    let cutover_docs = manifests("deploy/kubernetes/cutover.yaml");
    let envoy_docs = manifests("deploy/kubernetes/envoy.yaml");
    let etcd_docs = manifests("deploy/kubernetes/etcd.yaml");
    for d in cutover_docs.iter().chain(&envoy_docs).chain(&etcd_docs) {
        assert!(d["apiVersion"].is_string() && d["kind"].is_string(), "{d}");
    }

    // cutover: serves the ConfigMap's file, mounted as a directory.
    let config = kind(&cutover_docs, "ConfigMap", "cutover-deployment");
    let file_text = config["data"]["deploy.yaml"].as_str().unwrap();
    let spec =
        cutover::spec::parse("deploy.yaml", file_text).expect("the ConfigMap's file is valid");
    let deployment = kind(&cutover_docs, "Deployment", "cutover");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    let container = &pod["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "serve");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}"))
    };
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(
        volume("deployment")["configMap"]["name"],
        "cutover-deployment"
    );
    let file_mount = mount_of("deployment");
    assert!(
        file_mount["subPath"].is_null(),
        "a subPath mount never sees ConfigMap updates"
    );
    assert_eq!(
        args[1],
        format!("{}/deploy.yaml", file_mount["mountPath"].as_str().unwrap())
    );

    // Cluster mode: three replicas on etcd.yaml's members, each named after its pod. The runtime
    // state is the leader's record in etcd: no state file, no volume for one.
    assert_eq!(deployment["spec"]["replicas"], 3);
    let etcd = setting(container, "etcd", "CUTOVER_ETCD").expect("--etcd: cluster mode");
    assert_eq!(
        etcd.split(',').collect::<Vec<_>>(),
        etcd_client_urls(&etcd_docs),
        "--etcd names every member of etcd.yaml, by its stable name and client port"
    );
    assert_eq!(
        field_ref(container, "CUTOVER_REPLICA").as_deref(),
        Some("metadata.name"),
        "--replica: the pod's name"
    );
    assert_eq!(setting(container, "state", "CUTOVER_STATE"), None);
    assert!(
        volumes.iter().all(|v| v["name"] != "state") && mounts.iter().all(|m| m["name"] != "state"),
        "a state volume in cluster mode"
    );
    // One replica per node where there are nodes; a drain takes one replica at a time.
    let labels = &pod["metadata"]["labels"];
    let spread = &pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["labelSelector"]["matchLabels"], *labels);
    let budget = kind(&cutover_docs, "PodDisruptionBudget", "cutover");
    assert_eq!(budget["spec"]["minAvailable"], 2);
    assert_eq!(budget["spec"]["selector"]["matchLabels"], *labels);
    let ads_port = port_named(container, "ads");
    assert_eq!(flag(&args, "ads"), Some(format!("0.0.0.0:{ads_port}")));
    let admin_port = port_named(container, "admin");
    assert_eq!(flag(&args, "admin"), Some(format!("0.0.0.0:{admin_port}")));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    // Where the other replicas reach this one's admin API (to forward a command to the
    // leader): the pod's IP, from the downward API, on the admin port.
    let advertise = setting(container, "advertise-admin", "CUTOVER_ADVERTISE_ADMIN")
        .expect("--advertise-admin");
    let ip = referenced_before(container, "CUTOVER_ADVERTISE_ADMIN", &advertise, "http://");
    assert_eq!(field_ref(container, ip).as_deref(), Some("status.podIP"));
    assert_eq!(advertise, format!("http://$({ip}):{admin_port}"));
    let env = container["env"].as_array().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "CUTOVER_ADMIN_TOKEN"
            && e["valueFrom"]["secretKeyRef"]["name"] == "cutover-admin"),
        "the admin token comes from a Secret: {env:?}"
    );

    // The Service Envoy reaches it by: headless, so that its name resolves to every replica
    // (a headless Service does not translate ports: each is the container's).
    let service = kind(&cutover_docs, "Service", "cutover");
    assert_eq!(service["spec"]["selector"], pod["metadata"]["labels"]);
    assert_headless(service, container);
    let ads = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["targetPort"] == "ads")
        .expect("an ADS port on the Service");

    // Envoy: its bootstrap is what `cutover bootstrap` prints for that Service.
    let bootstrap_map = kind(&envoy_docs, "ConfigMap", "envoy-bootstrap");
    let bootstrap_text = bootstrap_map["data"]["front.yaml"].as_str().unwrap();
    let expected_command = format!(
        "bootstrap --node-id front --ads cutover:{} --admin 127.0.0.1:9901",
        ads["port"]
    );
    let printed = cutover(&expected_command.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        bootstrap_text, printed,
        "regenerate with `cutover {expected_command}`"
    );
    assert!(
        repo_file("deploy/kubernetes/envoy.yaml")
            .contains(&format!("#   cutover {expected_command}")),
        "the ConfigMap's comment names the command"
    );
    let bootstrap = yaml(bootstrap_text);
    assert_eq!(
        ads_of(&bootstrap),
        (
            service["metadata"]["name"].as_str().unwrap().to_owned(),
            ads["port"].as_u64().unwrap()
        )
    );
    assert_eq!(
        bootstrap["static_resources"]["clusters"][0]["type"], "STRICT_DNS",
        "every address the name resolves to is an endpoint of the xDS cluster"
    );
    let envoy = kind(&envoy_docs, "Deployment", "envoy");
    let epod = &envoy["spec"]["template"];
    assert_eq!(
        envoy["spec"]["selector"]["matchLabels"],
        epod["metadata"]["labels"]
    );
    let econtainer = &epod["spec"]["containers"][0];
    let version = repo_file("scripts/test")
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION="))
        .unwrap()
        .to_owned();
    assert_eq!(econtainer["image"], format!("envoyproxy/envoy:v{version}"));
    let eargs = strings(&econtainer["args"]);
    let emount = &econtainer["volumeMounts"][0];
    let evolume = &epod["spec"]["volumes"][0];
    assert_eq!(emount["name"], evolume["name"]);
    assert_eq!(evolume["configMap"]["name"], "envoy-bootstrap");
    assert_eq!(
        eargs[eargs.iter().position(|a| a == "-c").unwrap() + 1],
        format!("{}/front.yaml", emount["mountPath"].as_str().unwrap())
    );
    // Envoy's port is the deployment file's listener, and its Service targets it.
    let http = port_named(econtainer, "http");
    assert_eq!(
        u64::from(
            spec.listeners[0]
                .kind
                .address()
                .expect("an Envoy listener")
                .port()
        ),
        http
    );
    let eservice = kind(&envoy_docs, "Service", "envoy");
    assert_eq!(eservice["spec"]["selector"], epod["metadata"]["labels"]);
    assert_eq!(eservice["spec"]["ports"][0]["targetPort"], "http");

    // The image cutover runs is the Dockerfile's, whose build has cluster mode (with protoc,
    // which the etcd client's build needs).
    let dockerfile = repo_file("Dockerfile").replace("\\\n", " ");
    let build_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS build"))
        .expect("a build stage");
    // The words of the build stage's command that starts with these words.
    let run = |command: &str| {
        let words: Vec<&str> = command.split_whitespace().collect();
        build_stage
            .lines()
            .filter_map(|l| l.strip_prefix("RUN "))
            .flat_map(|l| l.split("&&"))
            .map(|c| c.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.starts_with(&words))
            .unwrap_or_else(|| panic!("no `{command}` in the Dockerfile's build stage"))
    };
    let build = run("cargo build");
    assert!(
        build.windows(2).any(|w| w == ["--features", "cluster"])
            || build.contains(&"--features=cluster"),
        "the image is built with --features cluster: {build:?}"
    );
    assert!(
        run("apt-get install").contains(&"protobuf-compiler"),
        "the build stage installs protoc"
    );
}

/// deploy/kubernetes/etcd.yaml: three members that find each other by their stable names, and
/// keep a majority through a voluntary disruption.
#[test]
fn kubernetes_etcd_members_name_each_other() {
    let docs = manifests("deploy/kubernetes/etcd.yaml");
    let service = kind(&docs, "Service", "etcd");
    let set = kind(&docs, "StatefulSet", "etcd");
    let pod = &set["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(set["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(service["spec"]["selector"], *labels);
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"], true,
        "members resolve each other's names before a majority makes any of them ready"
    );
    assert_eq!(
        set["spec"]["podManagementPolicy"], "Parallel",
        "one member at a time would wait forever for a majority"
    );
    let members = set["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(members, 3);

    let container = &pod["spec"]["containers"][0];
    let image = container["image"].as_str().unwrap();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    assert!(
        ["quay.io/coreos/etcd", "gcr.io/etcd-development/etcd"].contains(&repository),
        "{image}"
    );
    assert!(
        tag.strip_prefix("v3.5.")
            .is_some_and(|patch| patch.parse::<u32>().is_ok()),
        "{image}: a pinned etcd 3.5 release"
    );

    let args = strings(&container["args"]);
    let arg = |name: &str| flag(&args, name).unwrap_or_else(|| panic!("no --{name}"));
    let set_name = set["metadata"]["name"].as_str().unwrap();
    let service_name = service["metadata"]["name"].as_str().unwrap();
    let client = port_named(container, "client");
    let peer = port_named(container, "peer");
    assert_eq!(
        field_ref(container, "POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        arg("name"),
        "$(POD_NAME)",
        "each member is named after its pod"
    );
    assert_eq!(
        arg("initial-cluster"),
        (0..members)
            .map(|i| format!("{set_name}-{i}=http://{set_name}-{i}.{service_name}:{peer}"))
            .collect::<Vec<_>>()
            .join(","),
        "--initial-cluster names every pod of the StatefulSet by its stable name"
    );
    assert_eq!(arg("initial-cluster-state"), "new");
    assert_eq!(
        arg("initial-advertise-peer-urls"),
        format!("http://$(POD_NAME).{service_name}:{peer}")
    );
    assert_eq!(arg("listen-peer-urls"), format!("http://0.0.0.0:{peer}"));
    assert_eq!(
        arg("advertise-client-urls"),
        format!("http://$(POD_NAME).{service_name}:{client}")
    );
    assert_eq!(
        arg("listen-client-urls"),
        format!("http://0.0.0.0:{client}")
    );
    let metrics = port_named(container, "metrics");
    assert_eq!(
        arg("listen-metrics-urls"),
        format!("http://0.0.0.0:{metrics}")
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_headless(service, container);
    // The names cutover's --etcd lists (checked against it in the test above).
    assert_eq!(
        etcd_client_urls(&docs).len(),
        usize::try_from(members).unwrap()
    );

    // Each member's data on its own volume.
    let claim = &set["spec"]["volumeClaimTemplates"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim["metadata"]["name"])
        .expect("the claim is mounted");
    assert!(
        Path::new(&arg("data-dir")).starts_with(mount["mountPath"].as_str().unwrap()),
        "--data-dir on the member's volume"
    );

    // A drain takes one member at a time: a majority stays.
    let budget = kind(&docs, "PodDisruptionBudget", "etcd");
    assert_eq!(
        budget["spec"]["minAvailable"].as_u64(),
        Some(members / 2 + 1)
    );
    assert_eq!(budget["spec"]["selector"]["matchLabels"], *labels);
}

/// The demo runs xDS on mutual TLS with the certificates its `certs` service makes, and its
/// HTTPS listener serves the one made for it.
#[test]
fn the_demo_runs_on_the_certificates_it_makes() {
    let compose = yaml(&repo_file("docker-compose.yml"));
    let services = compose["services"].as_object().expect("services");
    let bootstrap = yaml(&repo_file("envoy/front.yaml"));
    let spec = cutover::spec::parse("examples/demo.yaml", &repo_file("examples/demo.yaml"))
        .expect("demo.yaml valid");
    let cutover = &services["cutover"];
    let command = strings(&cutover["command"]);
    // The certificates: made by `certs` (before cutover starts) into the volume the others
    // mount; cutover serves xDS over mutual TLS with them, and the bootstrap's Envoy presents
    // the client certificate and trusts the same CA, under the same file names.
    let certs = &services["certs"];
    assert_eq!(strings(&certs["command"]), ["demo-certs", "/certs"]);
    assert_eq!(strings(&certs["volumes"]), ["certs:/certs"]);
    assert!(compose["volumes"]["certs"].is_null() || compose["volumes"]["certs"].is_object());
    assert!(
        compose["volumes"]
            .as_object()
            .unwrap()
            .contains_key("certs")
    );
    assert_eq!(
        cutover["depends_on"]["certs"]["condition"], "service_completed_successfully",
        "cutover reads the certificates when it starts"
    );
    let served = |name: &str| {
        let file = flag(&command, name).unwrap_or_else(|| panic!("--{name}: xDS over TLS"));
        file.strip_prefix("/etc/cutover/certs/")
            .unwrap_or_else(|| panic!("--{name} {file} is not in the certificates volume"))
            .to_owned()
    };
    let context = &bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
        ["common_tls_context"];
    let envoy_file = |v: &Value| {
        let file = v.as_str().expect("a file name");
        file.strip_prefix("/certs/")
            .unwrap_or_else(|| panic!("{file} is not in the certificates volume"))
            .to_owned()
    };
    assert_eq!(
        served("tls-client-ca"),
        envoy_file(&context["validation_context"]["trusted_ca"]["filename"]),
        "one CA signs both sides"
    );
    assert_eq!(served("tls-cert"), "cutover.pem");
    assert_eq!(served("tls-key"), "cutover-key.pem");
    assert_eq!(
        envoy_file(&context["tls_certificates"][0]["certificate_chain"]["filename"]),
        "front.pem"
    );
    for l in &spec.listeners {
        if let Some(tls) = &l.tls {
            for c in &tls.certificates {
                assert!(
                    c.cert.path.starts_with("certs/") && c.key.path.starts_with("certs/"),
                    "{}: the HTTPS certificate is the one the demo makes: {c:?}",
                    l.name
                );
            }
        }
    }
}
