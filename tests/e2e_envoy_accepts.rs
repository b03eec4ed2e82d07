//! Property: any deployment file that passes validation translates into resources a real Envoy
//! accepts. Files are generated across listeners (with TLS, hosts and redirects, and TCP ones), routes,
//! services, versions, every strategy, rules, mirrors and every policy; each one that
//! validates is compiled as a freshly started cutover serves it, turned into a static bootstrap
//! (EDS clusters get their load assignment inline, RDS its route configuration inline, SDS
//! secrets become static ones; aggregate clusters stay as they are) and checked with `envoy
//! --mode validate`. Envoy is found as the end-to-end tests find it; without one, on CI
//! (`CI=true`) the test fails, elsewhere it skips Envoy with a loud message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use cutover::render;
use cutover::testing;
use cutover::translate::Resources;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{Value, json};

// --- the generated file ------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct File {
    /// Each listener's routes: a match, the index of the service it names, and what else the
    /// route does (see [`route_extra`]).
    listeners: Vec<Vec<(String, usize, u8)>>,
    /// Each listener's edge settings (missing ones: none).
    edges: Vec<Edge>,
    services: Vec<Service>,
    /// A TCP listener in front of a service of its own: its versions' count, its strategy
    /// line and whether it has a TCP health check.
    tcp: Option<(usize, String, bool)>,
}

/// A listener's TLS, hosts and redirect.
#[derive(Debug, Clone, Default)]
struct Edge {
    /// `tls:` with the example certificates: the default one only, or with an SNI name too;
    /// and `min_version: "1.3"`.
    tls: Option<(bool, bool)>,
    /// The routes under two hosts instead of the listener's own.
    hosts: bool,
    /// `redirect: https` (on plain listeners only).
    redirect: bool,
}

/// The example certificates (examples/certs), by absolute path.
fn example_cert(stem: &str) -> (String, String) {
    let dir = testing::repo().join("examples/certs");
    let path = |name: String| dir.join(name).display().to_string();
    (path(format!("{stem}.pem")), path(format!("{stem}-key.pem")))
}

impl Edge {
    fn yaml(&self, i: usize, routes: &str) -> String {
        let mut out = String::new();
        if let Some((sni, tls13)) = self.tls {
            let (cert, key) = example_cert("wildcard");
            out.push_str("    tls:\n      certificates:\n");
            let _ = writeln!(out, "        - {{ cert: \"{cert}\", key: \"{key}\" }}");
            if sni {
                let (cert, key) = example_cert("shop");
                let _ = writeln!(
                    out,
                    "        - {{ cert: \"{cert}\", key: \"{key}\", server_names: [shop.example.com] }}"
                );
            }
            if tls13 {
                out.push_str("      min_version: \"1.3\"\n");
            }
        } else if self.redirect {
            out.push_str("    redirect: https\n");
        }
        if self.hosts {
            let _ = write!(
                out,
                "    hosts:\n      - names: [h{i}.example.com]\n        routes:\n{routes}      - names: [\"*.h{i}.example.com\"]\n        routes:\n{routes}",
                routes = indent(routes, 4)
            );
        } else {
            let _ = write!(out, "    routes:\n{routes}");
        }
        out
    }
}

/// Who answers a route and what else it does: 0 the service; 1 Envoy itself; 2 a rewrite;
/// 3 header edits; 4 both.
fn route_extra(extra: u8, matcher: &str, service: usize) -> String {
    if extra == 1 {
        return "        respond: { status: 503, body: \"Back at 10:00, 100% sure\" }\n".to_owned();
    }
    let mut out = format!("        service: s{service}\n");
    if extra == 2 || extra == 4 {
        let prefix = if matcher.starts_with("prefix") {
            "prefix: /r, "
        } else {
            ""
        };
        let _ = writeln!(out, "        rewrite: {{ {prefix}host: backend.internal }}");
    }
    if extra >= 3 {
        out.push_str(
            "        request_headers: { add: { x-edge: \"50%\" }, remove: [cookie] }\n        response_headers: { add: { x-served-by: edge }, remove: [server] }\n",
        );
    }
    out
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

#[derive(Debug, Clone)]
struct Service {
    /// Per version, its endpoints: (weight, drain). The first endpoint never drains, so that
    /// every version can take traffic.
    versions: Vec<Vec<(Option<u32>, bool)>>,
    strategy: String,
    /// A version no strategy sends answered traffic to, and an optional percent.
    mirror: Option<(usize, Option<String>)>,
    rules: Vec<Rule>,
    /// `key: value` lines of the service's policy.
    policy: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    header: BTreeMap<String, String>,
    cookie: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    prefix: Option<String>,
    version: usize,
}

impl File {
    fn yaml(&self) -> String {
        let mut out = String::from("listeners:\n");
        for (i, routes) in self.listeners.iter().enumerate() {
            let _ = writeln!(out, "  - name: l{i}\n    address: 127.0.0.1:{}", 10_000 + i);
            let mut lines = String::new();
            for (matcher, service, extra) in routes {
                let _ = writeln!(lines, "      - match: {{ {matcher} }}");
                lines.push_str(&route_extra(*extra, matcher, service % self.services.len()));
            }
            let edge = self.edges.get(i).cloned().unwrap_or_default();
            out.push_str(&edge.yaml(i, &lines));
        }
        if self.tcp.is_some() {
            out.push_str("  - name: db\n    address: 127.0.0.1:15432\n    tcp: db\n");
        }
        out.push_str("services:\n");
        if let Some((versions, strategy, health_check)) = &self.tcp {
            out.push_str("  db:\n    versions:\n");
            for v in 0..*versions {
                let _ = writeln!(
                    out,
                    "      v{v}: {{ endpoints: [127.0.0.1:{}] }}",
                    30_000 + v
                );
            }
            let _ = writeln!(out, "    {strategy}");
            if *health_check {
                out.push_str("    health_check: { tcp: true }\n");
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            let _ = writeln!(out, "  s{i}:\n    versions:");
            for (v, endpoints) in s.versions.iter().enumerate() {
                let endpoints: Vec<String> = endpoints
                    .iter()
                    .enumerate()
                    .map(|(k, (weight, drain))| {
                        let address = format!("127.0.0.1:{}", 20_000 + i * 100 + v * 10 + k);
                        match (weight, drain) {
                            (None, false) => address,
                            (weight, drain) => {
                                let weight = weight.map(|w| format!(", weight: {w}"));
                                format!(
                                    "{{ address: {address}{}, drain: {drain} }}",
                                    weight.unwrap_or_default()
                                )
                            }
                        }
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "      v{v}: {{ endpoints: [{}] }}",
                    endpoints.join(", ")
                );
            }
            let _ = writeln!(out, "    {}", s.strategy);
            if let Some((version, percent)) = &s.mirror {
                let percent = percent.as_ref().map(|p| format!(", percent: {p}"));
                let _ = writeln!(
                    out,
                    "    mirror: {{ version: v{version}{} }}",
                    percent.unwrap_or_default()
                );
            }
            if !s.rules.is_empty() {
                out.push_str("    rules:\n");
            }
            for r in &s.rules {
                let mut conditions = Vec::new();
                for (key, map) in [
                    ("header", &r.header),
                    ("cookie", &r.cookie),
                    ("query", &r.query),
                ] {
                    if !map.is_empty() {
                        let entries: Vec<String> = map
                            .iter()
                            .map(|(k, v)| format!("{k}: {}", quoted(v)))
                            .collect();
                        conditions.push(format!("{key}: {{ {} }}", entries.join(", ")));
                    }
                }
                if let Some(prefix) = &r.prefix {
                    conditions.push(format!("prefix: {prefix}"));
                }
                let _ = write!(
                    out,
                    "      - match: {{ {} }}\n        version: v{}\n",
                    conditions.join(", "),
                    r.version
                );
            }
            for line in &s.policy {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }
}

/// A YAML double-quoted string (JSON's escapes are YAML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

// --- strategies --------------------------------------------------------------------------------

fn duration() -> impl Strategy<Value = &'static str> {
    select(vec!["1ms", "250ms", "1s", "5s", "90s", "2m", "1h"])
}

fn percent() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..=100).prop_map(|p| p.to_string()),
        (0u32..=1_000_000).prop_map(|ppm| format!("{}.{:04}", ppm / 10_000, ppm % 10_000)),
        (0u32..=100).prop_map(|p| format!("\"{p}%\"")),
    ]
}

/// An HTTP token as validation accepts header and cookie names.
fn token() -> impl Strategy<Value = String> {
    (
        select(vec!["x", "X-User", "beta", "a.b", "grp_1", "k~"]),
        0u8..4,
    )
        .prop_map(|(t, n)| format!("{t}{n}"))
}

/// Header, cookie and query values, with the characters that need escaping in regexes and YAML.
fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        select(vec![
            "a", "Z", "0", " ", ".", "*", "+", "?", "(", ")", "[", "]", "{", "}", "|", "^", "$",
            "\\", "/", "=", ";", ",", "\"", "'", "%", "-", "é",
        ]),
        1..8,
    )
    .prop_map(|parts| parts.concat())
}

fn rule(versions: usize) -> impl Strategy<Value = Rule> {
    let map = || proptest::collection::btree_map(token(), value(), 0..3);
    (
        map(),
        map(),
        proptest::collection::btree_map(select(vec!["q", "beta", "v_1"]), value(), 0..2),
        proptest::option::of(select(vec!["/", "/api", "/a/b"])),
        0..versions,
    )
        .prop_map(|(header, cookie, query, prefix, version)| Rule {
            // Header names are case-insensitive: one spelling each.
            header: header
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect::<BTreeMap<_, _>>(),
            cookie,
            query: query.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            prefix: prefix.map(str::to_owned),
            version,
        })
        .prop_filter("a rule needs a condition", |r| {
            !(r.header.is_empty()
                && r.cookie.is_empty()
                && r.query.is_empty()
                && r.prefix.is_none())
        })
}

/// Two different versions of `versions` (at least two).
fn two_versions(versions: usize) -> impl Strategy<Value = (usize, usize)> {
    (0..versions, 1..versions).prop_map(move |(a, offset)| (a, (a + offset) % versions))
}

/// The strategy line(s) and the versions that answer requests.
fn strategy(versions: usize) -> BoxedStrategy<(String, Vec<usize>)> {
    let v = 0..versions;
    let mut options: Vec<BoxedStrategy<(String, Vec<usize>)>> = vec![
        v.clone()
            .prop_map(|a| (format!("active: v{a}"), vec![a]))
            .boxed(),
        (
            v.clone(),
            proptest::option::of(proptest::option::of(token())),
        )
            .prop_map(|(a, preview)| {
                let preview = match preview {
                    None => String::new(),
                    Some(None) => ", preview: {}".to_owned(),
                    Some(Some(h)) => format!(", preview: {{ header: {h} }}"),
                };
                (
                    format!("strategy:\n      blue-green: {{ active: v{a}{preview} }}"),
                    vec![a],
                )
            })
            .boxed(),
        (v.clone(), proptest::option::of(duration()))
            .prop_map(|(a, grace)| {
                let grace = grace.map(|g| format!(", grace: {g}")).unwrap_or_default();
                (
                    format!("strategy:\n      red-black: {{ active: v{a}{grace} }}"),
                    vec![a],
                )
            })
            .boxed(),
    ];
    if versions >= 2 {
        options.push(
            (
                two_versions(versions),
                percent(),
                proptest::option::of((
                    proptest::option::of(token()),
                    proptest::option::of(duration()),
                )),
            )
                .prop_map(|((stable, canary), weight, sticky)| {
                    let sticky = match sticky {
                        None => String::new(),
                        Some((cookie, ttl)) => {
                            let mut fields = Vec::new();
                            if let Some(c) = cookie {
                                fields.push(format!("cookie: {c}"));
                            }
                            if let Some(t) = ttl {
                                fields.push(format!("ttl: {t}"));
                            }
                            format!(", sticky: {{ {} }}", fields.join(", "))
                        }
                    };
                    (
                        format!(
                            "strategy:\n      canary: {{ stable: v{stable}, canary: v{canary}, weight: {weight}{sticky} }}"
                        ),
                        vec![stable, canary],
                    )
                })
                .boxed(),
        );
        options.push(
            (
                two_versions(versions),
                proptest::option::of(percent()),
            )
                .prop_map(|((primary, mirror), percent)| {
                    let percent = percent.map(|p| format!(", percent: {p}")).unwrap_or_default();
                    (
                        format!(
                            "strategy:\n      shadow: {{ primary: v{primary}, mirror: v{mirror}{percent} }}"
                        ),
                        // The shadow's mirror is a mirror: no second one.
                        vec![primary, mirror],
                    )
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

fn hash_on() -> impl Strategy<Value = String> {
    prop_oneof![
        token().prop_map(|h| format!("{{ header: {h} }}")),
        token().prop_map(|c| format!("{{ cookie: {c} }}")),
        Just("source_ip".to_owned()),
    ]
}

#[allow(
    clippy::too_many_lines,
    reason = "one generator per policy key, in the README's order"
)]
fn policy() -> impl Strategy<Value = Vec<String>> {
    let load_balancing = prop_oneof![
        Just(None),
        select(vec!["round_robin", "least_request", "random"]).prop_map(|l| Some(l.to_owned())),
        hash_on().prop_map(|h| Some(format!("{{ ring_hash: {h} }}"))),
        hash_on().prop_map(|h| Some(format!("{{ maglev: {h} }}"))),
    ];
    let outlier = prop_oneof![
        Just(None),
        Just(Some("{ enabled: false }".to_owned())),
        (
            1u32..10,
            proptest::option::of(1u32..10),
            duration(),
            duration(),
            0u32..=100,
            proptest::option::of((1u32..10, 1u32..200, select(vec!["1", "1.9", "2.5"]))),
            proptest::option::of((0u32..=100, 1u32..10, 1u32..200)),
        )
            .prop_map(|(c5, gw, interval, base, max, sr, fp)| {
                let mut f = vec![
                    format!("consecutive_5xx: {c5}"),
                    format!("interval: {interval}"),
                    format!("base_ejection_time: {base}"),
                    format!("max_ejection_percent: {max}"),
                ];
                if let Some(gw) = gw {
                    f.push(format!("consecutive_gateway_errors: {gw}"));
                }
                if let Some((hosts, volume, stdev)) = sr {
                    f.push(format!(
                        "success_rate: {{ minimum_hosts: {hosts}, request_volume: {volume}, stdev_factor: {stdev} }}"
                    ));
                }
                if let Some((threshold, hosts, volume)) = fp {
                    f.push(format!(
                        "failure_percentage: {{ threshold: {threshold}, minimum_hosts: {hosts}, request_volume: {volume} }}"
                    ));
                }
                Some(format!("{{ {} }}", f.join(", ")))
            }),
    ];
    let health_check = proptest::option::of((
        prop_oneof![
            select(vec!["/health", "/", "/a/b?c=d"]).prop_map(|p| format!("path: {p}")),
            Just("tcp: true".to_owned()),
        ],
        duration(),
        duration(),
        1u32..5,
        1u32..5,
        any::<bool>(),
    ))
    .prop_map(|h| {
        // The kind of check, and the rest (the kind may become gRPC's below).
        h.map(|(check, interval, timeout, unhealthy, healthy, wait)| {
            (
                check,
                format!(
                    "interval: {interval}, timeout: {timeout}, unhealthy_threshold: {unhealthy}, healthy_threshold: {healthy}, wait_for_first_check: {wait}"
                ),
            )
        })
    });
    let retries = proptest::option::of((
        0u32..5,
        proptest::option::of(subsequence(
            vec![
                "5xx",
                "gateway-error",
                "reset",
                "reset-before-request",
                "connect-failure",
                "retriable-4xx",
                "refused-stream",
                "unavailable",
            ],
            0..4,
        )),
        proptest::option::of(duration()),
    ))
    .prop_map(|r| {
        r.map(|(attempts, on, per_try)| {
            let mut f = vec![format!("attempts: {attempts}")];
            if let Some(on) = on {
                f.push(format!("on: [{}]", on.join(", ")));
            }
            if let Some(t) = per_try {
                f.push(format!("per_try_timeout: {t}"));
            }
            format!("{{ {} }}", f.join(", "))
        })
    });
    (
        load_balancing,
        outlier,
        health_check,
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        retries,
        proptest::option::of(percent()),
        upstream(),
    )
        .prop_map(
            |(lb, outlier, health, slow_start, timeout, connect, retries, panic, upstream)| {
                let slow_start_fits = lb
                    .as_deref()
                    .is_none_or(|l| l == "round_robin" || l == "least_request");
                let mut lines = Vec::new();
                let mut push = |key: &str, value: Option<String>| {
                    if let Some(v) = value {
                        lines.push(format!("{key}: {v}"));
                    }
                };
                push("load_balancing", lb);
                push("outlier_detection", outlier);
                let (protocol, websocket, tls, grpc_check) = upstream;
                push(
                    "health_check",
                    health.map(|(check, rest)| {
                        let check = if protocol == Some("grpc") && grpc_check {
                            "grpc: true".to_owned()
                        } else {
                            check
                        };
                        format!("{{ {check}, {rest} }}")
                    }),
                );
                push(
                    "slow_start",
                    slow_start.filter(|_| slow_start_fits).map(str::to_owned),
                );
                push("timeout", timeout.map(str::to_owned));
                push("connect_timeout", connect.map(str::to_owned));
                push("retries", retries);
                push("panic_threshold", panic);
                push("protocol", protocol.map(str::to_owned));
                push(
                    "websocket",
                    websocket
                        .filter(|_| protocol.is_none_or(|p| p == "http1"))
                        .map(|w| w.to_string()),
                );
                push("tls", tls);
                lines
            },
        )
}

/// How Envoy speaks to the endpoints: the protocol, WebSocket upgrades, TLS (with the example
/// CA), and whether a gRPC service's health check is gRPC's.
#[allow(
    clippy::type_complexity,
    reason = "a tuple of a generator, read where it is used"
)]
fn upstream() -> impl Strategy<Value = (Option<&'static str>, Option<bool>, Option<String>, bool)> {
    let tls = proptest::option::of((any::<bool>(), any::<bool>())).prop_map(|t| {
        t.map(|(sni, ca)| {
            let mut f = Vec::new();
            if sni {
                f.push("sni: shop.example.com".to_owned());
            }
            if ca {
                f.push(format!("ca: \"{}\"", example_cert("shop").0));
            }
            format!("{{ {} }}", f.join(", "))
        })
    });
    (
        proptest::option::of(select(vec!["http1", "http2", "grpc"])),
        proptest::option::of(any::<bool>()),
        tls,
        any::<bool>(),
    )
}

fn service() -> impl Strategy<Value = Service> {
    (1usize..=4).prop_flat_map(|versions| {
        let endpoint = (proptest::option::of(1u32..100), any::<bool>());
        (
            proptest::collection::vec(proptest::collection::vec(endpoint, 1..=3), versions),
            strategy(versions),
            proptest::option::of((0..versions, proptest::option::of(percent()))),
            proptest::collection::vec(rule(versions), 0..=3),
            policy(),
        )
            .prop_map(
                |(mut endpoints, (strategy, answering), mirror, rules, policy)| {
                    for version in &mut endpoints {
                        version[0].1 = false;
                    }
                    let shadow = strategy.contains("shadow:");
                    Service {
                        versions: endpoints,
                        mirror: mirror.filter(|(m, _)| !shadow && !answering.contains(m)),
                        strategy,
                        rules,
                        policy,
                    }
                },
            )
    })
}

fn file() -> impl Strategy<Value = File> {
    let matcher = prop_oneof![
        Just("prefix: /".to_owned()),
        (0u8..3).prop_map(|i| format!("prefix: /p{i}")),
        (0u8..3).prop_map(|i| format!("path: /x{i}")),
    ];
    (
        proptest::collection::vec(
            proptest::collection::vec((matcher, 0usize..8, 0u8..5), 1..=3),
            1..=3,
        ),
        proptest::collection::vec(service(), 1..=4),
        proptest::collection::vec(edge(), 0..=3),
        proptest::option::of(tcp()),
    )
        .prop_map(|(listeners, services, edges, tcp)| File {
            listeners,
            edges,
            services,
            tcp,
        })
}

/// A TCP service: its versions' count, a strategy a TCP proxy can do, a health check or not.
fn tcp() -> impl Strategy<Value = (usize, String, bool)> {
    (2usize..=3).prop_flat_map(|versions| {
        let strategy = prop_oneof![
            (0..versions).prop_map(|v| format!("active: v{v}")),
            (0..versions).prop_map(|v| format!("strategy: {{ red-black: {{ active: v{v} }} }}")),
            (two_versions(versions), 0u32..=100).prop_map(|((a, b), w)| format!(
                "strategy: {{ canary: {{ stable: v{a}, canary: v{b}, weight: {w} }} }}"
            )),
        ];
        (Just(versions), strategy, any::<bool>(), any::<bool>()).prop_map(
            |(versions, strategy, health_check, hash)| {
                let strategy = if hash {
                    format!("{strategy}\n    load_balancing: {{ ring_hash: source_ip }}")
                } else {
                    strategy
                };
                (versions, strategy, health_check)
            },
        )
    })
}

fn edge() -> impl Strategy<Value = Edge> {
    (
        proptest::option::of((any::<bool>(), any::<bool>())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(tls, hosts, redirect)| Edge {
            tls,
            hosts,
            redirect,
        })
}

// --- Envoy -------------------------------------------------------------------------------------

/// A static bootstrap holding `resources` as Envoy would after receiving them over ADS.
fn bootstrap(resources: &Resources) -> Value {
    let json = |v: Result<Value, render::RenderError>| v.expect("renders as JSON");
    let assignments: BTreeMap<&str, Value> = resources
        .endpoints
        .iter()
        .map(|e| (e.cluster_name.as_str(), json(render::to_json(e))))
        .collect();
    let routes: BTreeMap<&str, Value> = resources
        .routes
        .iter()
        .map(|r| (r.name.as_str(), json(render::to_json(r))))
        .collect();
    let clusters: Vec<Value> = resources
        .clusters
        .iter()
        .map(|c| {
            let mut cluster = json(render::to_json(c));
            let object = cluster.as_object_mut().expect("a cluster is an object");
            if object.remove("eds_cluster_config").is_some() {
                let assignment = assignments
                    .get(c.name.as_str())
                    .unwrap_or_else(|| panic!("no endpoints for EDS cluster {}", c.name));
                object.insert("type".into(), json!("STATIC"));
                object.insert("load_assignment".into(), assignment.clone());
            }
            cluster
        })
        .collect();
    let listeners: Vec<Value> = resources
        .listeners
        .iter()
        .map(|l| {
            let mut listener = json(render::to_json(l));
            inline_rds(&mut listener, &routes);
            listener
        })
        .collect();
    // Secrets as static ones: a listener names them without an SDS config source.
    let secrets: Vec<Value> = resources
        .secrets
        .iter()
        .map(|s| json(render::to_json(s)))
        .collect();
    let mut listeners = Value::Array(listeners);
    drop_sds_sources(&mut listeners);
    json!({
        "node": { "id": "proptest", "cluster": "proptest" },
        "static_resources": { "clusters": clusters, "listeners": listeners, "secrets": secrets },
    })
}

/// Removes every `sds_config` (secrets over ADS), leaving the names of static secrets.
fn drop_sds_sources(value: &mut Value) {
    match value {
        Value::Object(object) => {
            object.remove("sds_config");
            object.values_mut().for_each(drop_sds_sources);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_sds_sources),
        _ => {}
    }
}

/// Replaces every `rds` (a route configuration by name over ADS) with that configuration.
fn inline_rds(value: &mut Value, routes: &BTreeMap<&str, Value>) {
    match value {
        Value::Object(object) => {
            if let Some(rds) = object.remove("rds") {
                let name = rds["route_config_name"].as_str().expect("an RDS name");
                let config = routes
                    .get(name)
                    .unwrap_or_else(|| panic!("no route configuration {name}"));
                object.insert("route_config".into(), config.clone());
            }
            object.values_mut().for_each(|v| inline_rds(v, routes));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline_rds(v, routes)),
        _ => {}
    }
}

/// Envoy's verdict on a bootstrap: `Err` with its output if it rejects it.
fn envoy_validates(envoy: &Path, bootstrap: &Value) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What a freshly started cutover serves for `text`, its PEM files loaded as `serve` loads them.
fn compile(text: &str) -> Result<Resources, cutover::spec::SpecError> {
    use cutover::spec;
    let parsed = spec::parse("generated.yaml", text)?;
    let read =
        cutover::watch::read_pem_files(Path::new("generated.yaml"), &spec::pem_paths(&parsed));
    let (parsed, _) = spec::load_pem_files(
        parsed,
        "generated.yaml",
        &read,
        std::time::SystemTime::now(),
    )?;
    Ok(cutover::translate::translate(&cutover::app::fresh_plan(
        &parsed,
    )))
}

/// Looked for once: the skip message (or the failure on CI) is said once.
static ENVOY: LazyLock<Option<PathBuf>> = LazyLock::new(testing::envoy_binary);

/// Files Envoy checks; each `envoy --mode validate` takes about half a second.
const ENVOY_CASES: u32 = 16;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: ENVOY_CASES,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_valid_file_translates_into_resources_envoy_accepts(file in file()) {
        let text = file.yaml();
        let resources = match compile(&text) {
            Ok(resources) => resources,
            // The generator aims at valid files; proptest fails if too many are not.
            Err(err) => return Err(TestCaseError::reject(err.to_string())),
        };
        let Some(envoy) = &*ENVOY else {
            return Ok(());
        };
        if let Err(rejected) = envoy_validates(envoy, &bootstrap(&resources)) {
            prop_assert!(false, "Envoy rejects what this valid file becomes:\n{rejected}\n--- file:\n{text}");
        }
    }
}
