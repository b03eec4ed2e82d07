//! Hostile and pathological input: bytes that are not UTF-8, names YAML reads as numbers, alias
//! bombs, deep nesting, duplicate keys, and every limit of [`Limits`].

use super::*;

/// Every message for `bytes`, one `file:line:column: message` each.
fn problems_with(bytes: &[u8], limits: &Limits) -> Vec<String> {
    match parse_bytes_with("deploy.yaml", bytes, limits) {
        Ok(spec) => panic!("expected problems, got {} listeners", spec.listeners.len()),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

fn problem_with(bytes: &[u8], limits: &Limits) -> String {
    let p = problems_with(bytes, limits);
    assert_eq!(p.len(), 1, "expected exactly one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

fn problem(bytes: &[u8]) -> String {
    problem_with(bytes, &Limits::default())
}

const ONE_SERVICE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue: { endpoints: [127.0.0.1:8081] }
    active: blue
";

// --- bytes -------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_is_located_at_its_first_bad_byte() {
    // Latin-1 "é" (0xE9) after "caf" on line 2.
    assert_eq!(
        problem(b"listeners:\n  - name: \"caf\xe9\"\n"),
        "deploy.yaml:2:15: the file is not valid UTF-8 here (byte 0xE9): deployment files are \
         UTF-8 text; re-save it as UTF-8 (it may be Latin-1 or Windows-1252)"
    );
    // Columns count characters, as in every other message: "é" before the bad byte is one.
    assert!(problem(b"# \xc3\xa9\n\xc3\xa9\xff").starts_with("deploy.yaml:2:2: "));
    assert!(problem(b"\xff").starts_with("deploy.yaml:1:1: "));
    // A sequence cut off by the end of the file shows every byte of it.
    let p = problem(b"listeners: []\n# \xe2\x82");
    assert!(
        p.starts_with("deploy.yaml:2:3: the file is not valid UTF-8 here (byte 0xE2 0x82)"),
        "{p}"
    );
}

#[test]
fn valid_bytes_parse_as_the_text_does() {
    let spec = parse_bytes("deploy.yaml", ONE_SERVICE.as_bytes()).unwrap();
    assert_eq!(spec, parse("deploy.yaml", ONE_SERVICE).unwrap());
}

#[test]
fn a_file_over_the_size_limit_is_not_parsed() {
    let limits = Limits {
        file_bytes: ONE_SERVICE.len(),
        ..Limits::default()
    };
    parse_bytes_with("deploy.yaml", ONE_SERVICE.as_bytes(), &limits).expect("at the limit");
    let longer = format!("{ONE_SERVICE}#");
    let p = problem_with(longer.as_bytes(), &limits);
    assert!(
        p.starts_with(&format!(
            "deploy.yaml:1:1: the file is larger than {} bytes, the limit on deployment files",
            ONE_SERVICE.len()
        )),
        "{p}"
    );
    assert!(
        p.ends_with("raise the limit with CUTOVER_MAX_FILE_MIB=<MiB>"),
        "{p}"
    );
    // Before UTF-8 and YAML: a huge file of garbage costs no parsing.
    let garbage = vec![0xffu8; limits.file_bytes + 1];
    assert!(problem_with(&garbage, &limits).contains("larger than"));
}

// --- names -------------------------------------------------------------------------------------

#[test]
fn names_yaml_reads_as_numbers_booleans_or_null_are_refused_even_quoted() {
    for (name, kind) in [
        ("12345", "a number"),
        ("1.10", "a number"),
        ("-1", "a number"),
        ("1e3", "a number"),
        (".5", "a number"),
        ("5.", "a number"),
        ("0x1F", "a number"),
        ("0o17", "a number"),
        (".inf", "a number"),
        ("-.Inf", "a number"),
        (".NaN", "a number"),
        ("1_000", "a number"),
        ("0b101", "a number"),
        ("-0X1F", "a number"),
        ("true", "a boolean"),
        ("FALSE", "a boolean"),
        ("tRue", "a boolean"),
        ("yes", "a boolean"),
        ("on", "a boolean"),
        ("Off", "a boolean"),
        ("y", "a boolean"),
        ("N", "a boolean"),
        ("null", "null"),
        ("Null", "null"),
    ] {
        for written in [name.to_owned(), format!("\"{name}\"")] {
            let text = ONE_SERVICE.replace("name: public", &format!("name: {written}"));
            let p = problem(text.as_bytes());
            if kind == "null" && written == name {
                // Not even a string to check.
                assert_eq!(
                    p,
                    "deploy.yaml:2:11: expected a text value here, but YAML reads this one as \
                     null (it is empty, `~` or `null`)"
                );
                continue;
            }
            assert!(
                p.starts_with(&format!(
                    "deploy.yaml:2:11: invalid listener name \"{name}\": YAML may read it as {kind}, not as text"
                )),
                "{written}: {p}"
            );
        }
    }
    // Names that are text to YAML, however close to a number they look.
    for name in [
        "v1", "1.2.3", "0.0.0", "1-2", "e3", "0x", "0xG", "1e", "-x", ".", "inf", "nan", "yess",
        "only", "nope",
    ] {
        let text = ONE_SERVICE.replace("name: public", &format!("name: {name}"));
        parse_bytes("deploy.yaml", text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn keys_used_as_names_are_checked_too() {
    let text = ONE_SERVICE
        .replace("blue: {", "1: {")
        .replace("active: blue", "active: \"1\"");
    assert_eq!(
        problem(text.as_bytes()),
        "deploy.yaml:10:7: invalid version name \"1\": YAML may read it as a number, not as text, \
         and tools that rewrite YAML may change such values (1.10 becomes 1.1, on becomes true); \
         a name must not look like a YAML number, boolean or null (YAML 1.1 or 1.2), even \
         quoted: use e.g. \"v1\""
    );
    let text = ONE_SERVICE
        .replace("  checkout:", "  true:")
        .replace("service: checkout", "service: \"true\"");
    let p = problem(text.as_bytes());
    assert!(
        p.starts_with(
            "deploy.yaml:8:3: invalid service name \"true\": YAML may read it as a boolean"
        ),
        "{p}"
    );
    assert!(p.ends_with("even quoted: use another name"), "{p}");
}

// --- YAML: aliases, nesting, duplicate keys ----------------------------------------------------

/// A file that is valid, key by key and type by type, and expands `per_level`³ endpoints out
/// of a few lines: `per_level` services, each `per_level` versions of `per_level` endpoints,
/// all repeated by aliases.
fn alias_bomb(per_level: usize) -> String {
    let endpoints: Vec<String> = (0..per_level)
        .map(|i| format!("127.0.0.1:{}", 1000 + i))
        .collect();
    let versions: Vec<String> = (1..per_level).map(|i| format!("v{i}: *v")).collect();
    let services: Vec<String> = (1..per_level).map(|i| format!("  s{i}: *s\n")).collect();
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes: [{{ match: {{ prefix: / }}, service: s0 }}]\n\
         services:\n  s0: &s {{ versions: {{ v0: &v {{ endpoints: [{}] }}, {} }}, active: v0 }}\n{}",
        endpoints.join(", "),
        versions.join(", "),
        services.concat(),
    )
}

#[test]
fn an_alias_bomb_under_valid_keys_stops_at_the_value_limit() {
    let bomb = alias_bomb(20);
    let roomy = Limits {
        yaml_nodes: 100_000,
        ..Limits::default()
    };
    // Every key and type is right: with room for its 8,000 endpoints, the file is valid, so
    // nothing but the expansion limit can stop it below.
    let spec = parse_bytes_with("deploy.yaml", bomb.as_bytes(), &roomy).expect("valid");
    let endpoints: usize = spec
        .services
        .values()
        .flat_map(|s| s.versions.values())
        .map(|v| v.endpoints.len())
        .sum();
    assert_eq!(endpoints, 20 * 20 * 20);

    let tight = Limits {
        yaml_nodes: 5_000,
        ..Limits::default()
    };
    let p = problem_with(bomb.as_bytes(), &tight);
    // At the alias whose expansion went over, in words.
    assert!(p.starts_with("deploy.yaml:"), "{p}");
    assert!(
        p.contains(
            ": the file expands to more than 5,000 YAML values (mappings, lists and scalars, \
             each value an alias `*name` repeats counted again); cutover stops reading there so \
             that a small file cannot take unbounded memory (an \"alias bomb\"); if the file is \
             legitimate, raise the limit with CUTOVER_MAX_YAML_NODES=<values>"
        ),
        "{p}"
    );
    let line: usize = p.split(':').nth(1).unwrap().parse().unwrap();
    assert!(
        bomb.lines().nth(line - 1).unwrap().contains(": *s"),
        "{p} should point at an alias of the services"
    );
}

#[test]
fn a_long_string_repeated_by_aliases_stops_at_the_text_limit() {
    let limits = Limits {
        file_bytes: 1024 * 1024,
        ..Limits::default()
    };
    // 100 KiB of header value, repeated 100 times: 10 MiB of text from a 100 KiB file.
    let value = "x".repeat(100 * 1024);
    let rules: String = (0..100)
        .map(|i| {
            let value = if i == 0 {
                format!("&h {value}")
            } else {
                "*h".to_owned()
            };
            format!("      - match: {{ header: {{ x-user: {value} }} }}\n        version: blue\n")
        })
        .collect();
    let text = format!("{ONE_SERVICE}    rules:\n{rules}");
    let p = problem_with(text.as_bytes(), &limits);
    assert!(
        p.contains("the file's text expands to more than 4 MiB"),
        "{}",
        &p[..p.len().min(300)]
    );
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for text in [
        format!("listeners: {}", "[".repeat(100_000)),
        format!("listeners: {}", "{a: ".repeat(100_000)),
        format!("services: {}", "{a: [".repeat(50_000)),
    ] {
        let p = problem(text.as_bytes());
        assert!(
            p.contains(": values are nested more than 64 levels deep")
                || p.contains(": expected a "),
            "{}",
            &p[..p.len().min(300)]
        );
    }
    // Unclosed brackets are counted before anything else reads them.
    assert_eq!(
        problem(format!("listeners: {}", "[".repeat(100_000)).as_bytes()),
        "deploy.yaml:1:76: values are nested more than 64 levels deep; a deployment file needs \
         about ten, so the file is damaged or not a deployment file"
    );
}

#[test]
fn an_alias_of_itself_is_refused() {
    assert_eq!(
        problem(b"listeners: &a [*a]\n"),
        "deploy.yaml:1:16: an alias (`*name`) repeats a value that contains the alias itself; an \
         alias can only repeat a value that is complete before it"
    );
}

#[test]
fn duplicate_keys_are_refused_in_every_mapping() {
    let service = "  checkout:\n    versions:\n      blue: { endpoints: [127.0.0.1:8081] }\n    active: blue\n";
    let twice = format!("{ONE_SERVICE}{service}");
    assert_eq!(
        problem(twice.as_bytes()),
        "deploy.yaml:12:3: duplicate key `checkout`: each key may appear only once in a mapping"
    );
    let text = ONE_SERVICE.replace(
        "      blue: { endpoints: [127.0.0.1:8081] }\n",
        "      blue: { endpoints: [127.0.0.1:8081] }\n      blue: {}\n",
    );
    assert_eq!(
        problem(text.as_bytes()),
        "deploy.yaml:11:7: duplicate key `blue`: each key may appear only once in a mapping"
    );
    let text = ONE_SERVICE.replace("    active: blue\n", "    active: blue\n    active: blue\n");
    assert_eq!(
        problem(text.as_bytes()),
        "deploy.yaml:12:5: duplicate key `active`: each key may appear only once in a mapping"
    );
}

// --- limits ------------------------------------------------------------------------------------

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one file crossing every limit, and each report"
)]
fn every_limit_is_reported_where_the_file_crosses_it() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: a
      - match: { prefix: /b }
        service: b
  - name: admin
    address: 127.0.0.1:10001
    routes:
      - match: { prefix: / }
        service: a
services:
  a:
    versions:
      v1: { endpoints: [127.0.0.1:8081, 127.0.0.1:8082] }
      v2: { endpoints: [127.0.0.1:8083] }
    active: v1
    rules:
      - match: { header: { x-beta: \"1\" } }
        version: v2
  b:
    versions:
      v1: { endpoints: [127.0.0.1:9081] }
    active: v1
";
    let limits = Limits {
        file_bytes: 1024 * 1024,
        yaml_nodes: 1_000,
        listeners: 1,
        // Routes to `a` become up to 1 + 1 rule + 2 versions = 4 Envoy routes, to `b` 2.
        routes: 5,
        services: 1,
        versions: 2,
        endpoints: 3,
    };
    let over = |what: &str, counted: &str, max: usize, var: &str, total: usize| {
        format!(
            "too many {what}: {counted}, more than the limit of {max}, which keeps cutover's and \
             every Envoy's memory bounded; from here on the file is over it. If this deployment \
             is legitimate, raise the limit with {var}={total}"
        )
    };
    assert_eq!(
        problems_with(text.as_bytes(), &limits),
        vec![
            format!(
                "deploy.yaml:7:9: {}",
                over(
                    "Envoy routes",
                    "the listeners' routes become up to 10 Envoy routes (one per rule, per version and for the strategy of the service each names)",
                    5,
                    "CUTOVER_MAX_ROUTES",
                    10
                )
            ),
            format!(
                "deploy.yaml:9:5: {}",
                over(
                    "listeners",
                    "the file has 2 listeners",
                    1,
                    "CUTOVER_MAX_LISTENERS",
                    2
                )
            ),
            format!(
                "deploy.yaml:23:3: {}",
                over(
                    "services",
                    "the file has 2 services",
                    1,
                    "CUTOVER_MAX_SERVICES",
                    2
                )
            ),
            format!(
                "deploy.yaml:25:7: {}",
                over(
                    "versions",
                    "the file has 3 versions",
                    2,
                    "CUTOVER_MAX_VERSIONS",
                    3
                )
            ),
            format!(
                "deploy.yaml:25:25: {}",
                over(
                    "endpoints",
                    "the file has 4 endpoints",
                    3,
                    "CUTOVER_MAX_ENDPOINTS",
                    4
                )
            ),
        ]
    );
    let roomy = Limits {
        listeners: 2,
        routes: 10,
        services: 2,
        versions: 3,
        endpoints: 4,
        ..limits
    };
    parse_bytes_with("deploy.yaml", text.as_bytes(), &roomy).expect("exactly at every limit");
}

/// `services` services, each with `endpoints` endpoints and a route, sharing one anchored
/// retry policy.
fn fleet(services: usize, endpoints: usize) -> String {
    let mut text =
        String::from("listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n");
    for i in 0..services {
        text.push_str(&format!(
            "      - match: {{ prefix: /s{i} }}\n        service: s{i}\n"
        ));
    }
    text.push_str("services:\n");
    for i in 0..services {
        let addresses: Vec<String> = (0..endpoints)
            .map(|k| {
                let n = i * endpoints + k;
                format!("10.{}.{}.{}:8080", n >> 16 & 255, n >> 8 & 255, n & 255)
            })
            .collect();
        let retries = if i == 0 { "&r { attempts: 3 }" } else { "*r" };
        text.push_str(&format!(
            "  s{i}:\n    versions:\n      v1: {{ endpoints: [{}] }}\n    active: v1\n    retries: {retries}\n",
            addresses.join(", ")
        ));
    }
    text
}

#[test]
fn a_fleet_of_10000_services_is_within_the_default_limits() {
    // Every count a fleet uses grows linearly with its services, so a tenth of the fleet within
    // a tenth of every limit is the fleet within the limits, at a tenth of the test's time.
    let d = Limits::default();
    let tenth = Limits {
        file_bytes: d.file_bytes / 10,
        yaml_nodes: d.yaml_nodes / 10,
        listeners: d.listeners,
        routes: d.routes / 10,
        services: d.services / 10,
        versions: d.versions / 10,
        endpoints: d.endpoints / 10,
    };
    let text = fleet(1_000, 3);
    let spec = parse_bytes_with("deploy.yaml", text.as_bytes(), &tenth).expect("valid");
    assert_eq!(spec.services.len(), 1_000);
    assert_eq!(spec.services["s999"].versions["v1"].endpoints.len(), 3);
    // Sharing one anchored policy among thousands of services is no alias bomb.
    assert_eq!(spec.services["s999"].policy.retries.attempts, 3);
}

#[test]
fn limits_come_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |var: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(Limits::from_env(env(&[])), Ok(Limits::default()));
    let limits = Limits::from_env(env(&[
        ("CUTOVER_MAX_FILE_MIB", "64"),
        ("CUTOVER_MAX_YAML_NODES", "5_000_000"),
        ("CUTOVER_MAX_SERVICES", " 100000 "),
    ]))
    .unwrap();
    assert_eq!(
        limits,
        Limits {
            file_bytes: 64 << 20,
            yaml_nodes: 5_000_000,
            services: 100_000,
            ..Limits::default()
        }
    );
    for bad in ["0", "-1", "lots", "1.5", ""] {
        let err = Limits::from_env(|var| (var == "CUTOVER_MAX_ENDPOINTS").then(|| bad.to_owned()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "CUTOVER_MAX_ENDPOINTS={bad:?} is not a limit: write a whole number from 1 to 4294967295"
            )
        );
    }
}
