//! `cutover diff OLD NEW`: what Envoy would see change between two deployment files.
//!
//! Both files are compiled as a freshly started cutover would serve them
//! ([`crate::app::fresh_plan`]); resources are then compared by type and name in their
//! Envoy JSON form. Clusters and listeners show the fields that changed; endpoints are compared
//! per address (added, removed, weight or drain changed); routes are compared per match, in
//! order, and show where each match sends requests (cluster, weights, mirror). With node
//! groups, [`Diff::with_groups`] adds which groups' Envoys see a change at all.
//!
//! Not modelled: what a running server adds over time: endpoints and versions taken out of the
//! file are kept `DRAINING` for `--drain-period`, and a red-black service keeps its previous
//! version for its grace period. The diff shows where those end up.
//!
//! TCP listeners and secrets are read from their typed form (the `typed` module): where new
//! connections go, and which certificates changed, never their content.

mod typed;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use super::output::{complain, read_spec, say};
use super::style::{Painter, Style, percent};
use crate::app;
use crate::node::GroupId;
use crate::reconcile::Plan;
use crate::render::{self, RenderError};
use crate::snapshot::Snapshot;
use crate::translate::{Resources, translate, translate_groups};

/// One side of a diff: a file's label (as given on the command line) and what it compiles to.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub label: &'a str,
    pub resources: &'a Resources,
}

/// Everything that differs between two sets of resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    old: (String, String),
    new: (String, String),
    /// Per type, in make-before-break order, only the types with a change.
    types: Vec<(&'static str, Vec<Change>)>,
    /// Per node group of either file (when either has `groups`), whether its Envoys would see
    /// a change: `changed`, `unchanged`, `added` or `removed`.
    groups: Vec<(String, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Removed,
    Changed,
}

impl Kind {
    fn sign(self) -> &'static str {
        match self {
            Kind::Added => "+",
            Kind::Removed => "-",
            Kind::Changed => "~",
        }
    }

    fn style(self) -> Style {
        match self {
            Kind::Added => Style::Green,
            Kind::Removed => Style::Red,
            Kind::Changed => Style::Yellow,
        }
    }
}

/// A resource added, removed or changed, with what changed inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    kind: Kind,
    /// The resource's name, and a short summary after it.
    title: String,
    details: Vec<Detail>,
}

/// One line under a changed resource: a field, an endpoint or a route. `None` is a field
/// change (`path: old → new`), shown without a sign.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Detail {
    kind: Option<Kind>,
    text: String,
    /// Field changes inside a changed route.
    more: Vec<String>,
}

impl Detail {
    fn field(text: String) -> Detail {
        Detail {
            kind: None,
            text,
            more: Vec::new(),
        }
    }

    fn sign(kind: Kind, text: String) -> Detail {
        Detail {
            kind: Some(kind),
            text,
            more: Vec::new(),
        }
    }
}

/// Compares what two deployment files compile to.
pub fn diff(old: Side<'_>, new: Side<'_>) -> Result<Diff, RenderError> {
    let old_json = resources_json(old.resources)?;
    let new_json = resources_json(new.resources)?;
    let mut types = Vec::new();
    for (key, (o, n)) in ["clusters", "endpoints", "listeners", "routes"]
        .into_iter()
        .zip(old_json.into_iter().zip(new_json))
    {
        let mut changes = diff_type(key, &o, &n);
        if key == "listeners" {
            tcp_listeners(&mut changes, old.resources, new.resources);
        }
        if !changes.is_empty() {
            types.push((key, changes));
        }
        if key == "endpoints" {
            // Secrets go before the listeners that name them.
            let changes = secrets(old.resources, new.resources);
            if !changes.is_empty() {
                types.push(("secrets", changes));
            }
        }
    }
    let version = |r: &Resources| Snapshot::new(r).version;
    Ok(Diff {
        old: (old.label.to_owned(), version(old.resources)),
        new: (new.label.to_owned(), version(new.resources)),
        types,
        groups: Vec::new(),
    })
}

impl Diff {
    /// Adds, when either file has node groups, which groups' Envoys would see a change (an
    /// unchanged group's Envoys get no push at all).
    pub fn with_groups(mut self, old: &Plan, new: &Plan) -> Diff {
        if !old.node_groups.is_targeted() && !new.node_groups.is_targeted() {
            return self;
        }
        let versions = |plan: &Plan| -> BTreeMap<GroupId, String> {
            translate_groups(plan)
                .into_iter()
                .map(|(g, r)| (g, Snapshot::new(&r).version))
                .collect()
        };
        let (o, n) = (versions(old), versions(new));
        let names: BTreeSet<&GroupId> = o.keys().chain(n.keys()).collect();
        self.groups = names
            .into_iter()
            // Nodes no group matches always get nothing: worth naming only when that changes.
            .filter(|g| !g.is_unmatched() || o.get(*g) != n.get(*g))
            .map(|g| {
                let what = match (o.get(g), n.get(g)) {
                    (Some(a), Some(b)) if a == b => "unchanged",
                    (Some(_), Some(_)) => "changed",
                    (None, _) => "added",
                    (_, None) => "removed",
                };
                (g.to_string(), what)
            })
            .collect();
        self
    }

    /// Whether Envoy would see no difference at all.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// `diff -u`-like headers, then per type every added (`+`), removed (`-`) and changed (`~`)
    /// resource, then the counts.
    pub fn render(&self, color: bool) -> String {
        let p = Painter { color };
        let mut out = String::new();
        let header = |sign: &str, (label, version): &(String, String)| {
            p.paint(
                Style::Bold,
                &format!("{sign} {label} (config version {version})"),
            )
        };
        let _ = writeln!(out, "{}", header("---", &self.old));
        let _ = writeln!(out, "{}", header("+++", &self.new));
        if self.is_empty() {
            let _ = writeln!(out, "no difference");
            return out;
        }
        let mut counts = [0usize; 3];
        for (key, changes) in &self.types {
            let _ = writeln!(out, "{}", p.paint(Style::Bold, key));
            for c in changes {
                counts[c.kind as usize] += 1;
                let _ = writeln!(
                    out,
                    "  {} {}",
                    p.paint(c.kind.style(), c.kind.sign()),
                    c.title
                );
                for d in &c.details {
                    match d.kind {
                        None => {
                            let _ = writeln!(out, "      {}", d.text);
                        }
                        Some(kind) => {
                            let _ = writeln!(
                                out,
                                "      {} {}",
                                p.paint(kind.style(), kind.sign()),
                                d.text
                            );
                        }
                    }
                    for m in &d.more {
                        let _ = writeln!(out, "          {m}");
                    }
                }
            }
        }
        if !self.groups.is_empty() {
            let groups: Vec<String> = self
                .groups
                .iter()
                .map(|(g, what)| format!("{g} {what}"))
                .collect();
            let _ = writeln!(
                out,
                "{} {}",
                p.paint(Style::Bold, "node groups:"),
                groups.join(", ")
            );
        }
        let [added, removed, changed] = counts;
        let _ = writeln!(
            out,
            "{}",
            p.paint(
                Style::Dim,
                &format!("{added} added, {removed} removed, {changed} changed")
            )
        );
        out
    }
}

/// TCP listeners, from their typed form: where new connections go, and the chains that come and
/// go, instead of the matcher's JSON.
fn tcp_listeners(changes: &mut [Change], old: &Resources, new: &Resources) {
    let find = |r: &'_ Resources,
                name: &str|
     -> Option<envoy_types::pb::envoy::config::listener::v3::Listener> {
        r.listeners.iter().find(|l| l.name == name).cloned()
    };
    for c in changes.iter_mut().filter(|c| c.kind == Kind::Changed) {
        let (Some(o), Some(n)) = (find(old, &c.title), find(new, &c.title)) else {
            continue;
        };
        let (Some(from), Some(to)) = (typed::tcp_shares(&o), typed::tcp_shares(&n)) else {
            continue;
        };
        let mut details = Vec::new();
        if from != to {
            details.push(Detail::field(format!("new connections: {from} → {to}")));
        }
        let (was, is) = (typed::chains(&o), typed::chains(&n));
        for chain in is.iter().filter(|c| !was.contains(c)) {
            details.push(Detail::sign(Kind::Added, format!("filter chain {chain}")));
        }
        for chain in was.iter().filter(|c| !is.contains(c)) {
            details.push(Detail::sign(
                Kind::Removed,
                format!("filter chain {chain} (its connections drained by Envoy)"),
            ));
        }
        let mut o = o;
        let mut n = n;
        for l in [&mut o, &mut n] {
            l.filter_chains.clear();
            l.filter_chain_matcher = None;
        }
        if let (Ok(o), Ok(n)) = (render::to_json(&o), render::to_json(&n)) {
            details.extend(fields(&o, &n, &[]));
        }
        c.details = details;
    }
}

/// Secrets by name: which came, went or changed, and what in them (never their content).
fn secrets(old: &Resources, new: &Resources) -> Vec<Change> {
    let by_name = |r: &Resources| -> BTreeMap<
        String,
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
    > {
        r.secrets
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let (o, n) = (by_name(old), by_name(new));
    let names: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (kind, details) = match (o.get(name), n.get(name)) {
                (Some(a), Some(b)) => {
                    let what = typed::secret_changes(a, b);
                    if what.is_empty() {
                        return None;
                    }
                    (Kind::Changed, what.into_iter().map(Detail::field).collect())
                }
                (None, Some(_)) => (Kind::Added, Vec::new()),
                (Some(_), None) => (Kind::Removed, Vec::new()),
                (None, None) => return None,
            };
            Some(Change {
                kind,
                title: name.clone(),
                details,
            })
        })
        .collect()
}

/// Each type's resources as Envoy JSON, by name.
fn resources_json(r: &Resources) -> Result<[BTreeMap<String, Value>; 4], RenderError> {
    fn by_name<M: prost::Name>(
        items: &[M],
        name: impl Fn(&M) -> &str,
    ) -> Result<BTreeMap<String, Value>, RenderError> {
        items
            .iter()
            .map(|m| Ok((name(m).to_owned(), render::to_json(m)?)))
            .collect()
    }
    Ok([
        by_name(&r.clusters, |c| &c.name)?,
        by_name(&r.endpoints, |e| &e.cluster_name)?,
        by_name(&r.listeners, |l| &l.name)?,
        by_name(&r.routes, |r| &r.name)?,
    ])
}

fn diff_type(
    key: &str,
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> Vec<Change> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for name in names {
        let change = match (old.get(name), new.get(name)) {
            (Some(o), Some(n)) if o == n => continue,
            (Some(o), Some(n)) => Change {
                kind: Kind::Changed,
                title: name.clone(),
                details: match key {
                    "endpoints" => endpoints_changed(o, n),
                    "routes" => routes_changed(o, n),
                    _ => fields(o, n, &[]),
                },
            },
            (None, Some(n)) => Change {
                kind: Kind::Added,
                title: added_title(key, name, n),
                details: match key {
                    "routes" => route_lines(n)
                        .into_iter()
                        .map(|r| Detail::sign(Kind::Added, r.line()))
                        .collect(),
                    _ => Vec::new(),
                },
            },
            (Some(_), None) => Change {
                kind: Kind::Removed,
                title: name.clone(),
                details: Vec::new(),
            },
            (None, None) => continue,
        };
        changes.push(change);
    }
    changes
}

/// An added resource's name with what it is: a listener's address, a load assignment's
/// endpoints.
fn added_title(key: &str, name: &str, value: &Value) -> String {
    match key {
        "listeners" => match socket_address(&value["address"]) {
            Some(addr) => format!("{name} on {addr}"),
            None => name.to_owned(),
        },
        "endpoints" => {
            let endpoints: Vec<String> = lb_endpoints(value)
                .iter()
                .map(|(addr, e)| match e.describe() {
                    Some(d) => format!("{addr} ({d})"),
                    None => addr.clone(),
                })
                .collect();
            if endpoints.is_empty() {
                format!("{name}: no endpoints")
            } else {
                format!("{name}: {}", endpoints.join(", "))
            }
        }
        _ => name.to_owned(),
    }
}

// --- endpoints ---------------------------------------------------------------------------------

/// What Envoy knows of one endpoint besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndpointState {
    weight: u64,
    /// Envoy's `health_status`, `None` when not set (health comes from checks).
    health: Option<String>,
}

impl EndpointState {
    fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.weight != 1 {
            parts.push(format!("weight {}", self.weight));
        }
        match self.health.as_deref() {
            None => {}
            Some("DRAINING") => parts.push("draining".to_owned()),
            Some(other) => parts.push(format!("health {other}")),
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Every endpoint of a load assignment (all localities), by address, in file order.
fn lb_endpoints(cla: &Value) -> Vec<(String, EndpointState)> {
    let mut out = Vec::new();
    for locality in cla["endpoints"].as_array().into_iter().flatten() {
        for e in locality["lb_endpoints"].as_array().into_iter().flatten() {
            let addr = socket_address(&e["endpoint"]["address"])
                .unwrap_or_else(|| compact(&e["endpoint"]));
            out.push((
                addr,
                EndpointState {
                    weight: e["load_balancing_weight"].as_u64().unwrap_or(1),
                    health: e["health_status"].as_str().map(str::to_owned),
                },
            ));
        }
    }
    out
}

fn endpoints_changed(old: &Value, new: &Value) -> Vec<Detail> {
    let old_eps = lb_endpoints(old);
    let new_eps = lb_endpoints(new);
    let old_by: BTreeMap<&str, &EndpointState> =
        old_eps.iter().map(|(a, s)| (a.as_str(), s)).collect();
    let new_by: BTreeMap<&str, &EndpointState> =
        new_eps.iter().map(|(a, s)| (a.as_str(), s)).collect();
    let mut out = Vec::new();
    for (addr, o) in &old_eps {
        match new_by.get(addr.as_str()) {
            None => out.push(Detail::sign(Kind::Removed, addr.clone())),
            Some(n) if *n != o => {
                let mut what = Vec::new();
                if o.weight != n.weight {
                    what.push(format!("weight {} → {}", o.weight, n.weight));
                }
                if o.health != n.health {
                    what.push(match (o.health.as_deref(), n.health.as_deref()) {
                        (None, Some("DRAINING")) => "draining".to_owned(),
                        (Some("DRAINING"), None) => "no longer draining".to_owned(),
                        (a, b) => format!(
                            "health {} → {}",
                            a.unwrap_or("(unset)"),
                            b.unwrap_or("(unset)")
                        ),
                    });
                }
                out.push(Detail::sign(
                    Kind::Changed,
                    format!("{addr}: {}", what.join(", ")),
                ));
            }
            Some(_) => {}
        }
    }
    for (addr, n) in &new_eps {
        if !old_by.contains_key(addr.as_str()) {
            out.push(Detail::sign(
                Kind::Added,
                match n.describe() {
                    Some(d) => format!("{addr} ({d})"),
                    None => addr.clone(),
                },
            ));
        }
    }
    out.extend(fields(old, new, &["endpoints"]));
    out
}

fn socket_address(address: &Value) -> Option<String> {
    let sa = &address["socket_address"];
    let ip = sa["address"].as_str()?;
    let port = sa["port_value"].as_u64().unwrap_or(0);
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

// --- routes ------------------------------------------------------------------------------------

/// One route as an operator reads it: what it matches, and where it sends requests.
#[derive(Debug, Clone)]
struct RouteLine {
    matcher: String,
    action: String,
    json: Value,
}

impl RouteLine {
    fn line(&self) -> String {
        format!("{} → {}", self.matcher, self.action)
    }
}

/// The routes of every virtual host of a route configuration, in match order; routes of any
/// virtual host but the first (cutover makes one) are prefixed with its name.
fn route_lines(config: &Value) -> Vec<RouteLine> {
    let mut out = Vec::new();
    let hosts = config["virtual_hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, host) in hosts.iter().enumerate() {
        for r in host["routes"].as_array().into_iter().flatten() {
            let mut matcher = route_match(&r["match"]);
            if i > 0 {
                let name = host["name"].as_str().unwrap_or("?");
                matcher = format!("[{name}] {matcher}");
            }
            out.push(RouteLine {
                matcher,
                action: route_action(r),
                json: r.clone(),
            });
        }
    }
    out
}

fn routes_changed(old: &Value, new: &Value) -> Vec<Detail> {
    let old_routes = route_lines(old);
    let new_routes = route_lines(new);
    let mut out = Vec::new();
    for step in lcs(
        &old_routes.iter().map(|r| &r.matcher).collect::<Vec<_>>(),
        &new_routes.iter().map(|r| &r.matcher).collect::<Vec<_>>(),
    ) {
        match step {
            Step::Old(i) => out.push(Detail::sign(Kind::Removed, old_routes[i].line())),
            Step::New(j) => out.push(Detail::sign(Kind::Added, new_routes[j].line())),
            Step::Both(i, j) => {
                let (o, n) = (&old_routes[i], &new_routes[j]);
                if o.json == n.json {
                    continue;
                }
                let mut text = o.matcher.clone();
                if o.action != n.action {
                    let _ = write!(text, ": {} → {}", o.action, n.action);
                }
                let more = field_changes(&o.json, &n.json, "")
                    .into_iter()
                    .filter(|(path, _)| !summarized(path))
                    .map(|(_, line)| line)
                    .collect();
                out.push(Detail {
                    kind: Some(Kind::Changed),
                    text,
                    more,
                });
            }
        }
    }
    // Anything else in the route configuration or its virtual hosts (not their routes).
    let strip = |config: &Value| {
        let mut c = config.clone();
        for host in c["virtual_hosts"].as_array_mut().into_iter().flatten() {
            if let Some(h) = host.as_object_mut() {
                h.remove("routes");
            }
        }
        c
    };
    out.extend(fields(&strip(old), &strip(new), &[]));
    out
}

/// Fields a route's action summary already shows.
fn summarized(path: &str) -> bool {
    path == "route.cluster"
        || path == "route.weighted_clusters"
        || path == "route.weighted_clusters.clusters"
        || path.starts_with("route.request_mirror_policies")
        || (path.starts_with("route.weighted_clusters.clusters[")
            && (path.ends_with("].name") || path.ends_with("].weight")))
}

fn route_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(p) = m["prefix"].as_str() {
        parts.push(format!("prefix {p}"));
    } else if let Some(p) = m["path"].as_str() {
        parts.push(format!("path {p}"));
    } else if let Some(p) = m["path_separated_prefix"].as_str() {
        parts.push(format!("prefix {p}"));
    } else if let Some(r) = m["safe_regex"]["regex"].as_str() {
        parts.push(format!("path ~ {r}"));
    } else {
        parts.push("any path".to_owned());
    }
    for h in m["headers"].as_array().into_iter().flatten() {
        parts.push(header_condition(h));
    }
    for q in m["query_parameters"].as_array().into_iter().flatten() {
        let name = q["name"].as_str().unwrap_or("?");
        parts.push(match string_match(&q["string_match"]) {
            Some(cond) => format!("query {name}{cond}"),
            None => format!("query {name}"),
        });
    }
    parts.join(" & ")
}

fn header_condition(h: &Value) -> String {
    let name = h["name"].as_str().unwrap_or("?");
    if let Some(regex) = h["string_match"]["safe_regex"]["regex"].as_str()
        && let Some(bucket) = crate::translate::bucket_condition(name, regex)
    {
        return bucket.to_string();
    }
    if name == "cookie"
        && let Some(regex) = h["string_match"]["safe_regex"]["regex"].as_str()
        && let Some((cookie, value)) = cookie_from_regex(regex)
    {
        return format!("cookie {cookie}={value}");
    }
    match string_match(&h["string_match"]) {
        Some(cond) => format!("header {name}{cond}"),
        None if h["present_match"].as_bool() == Some(true) => format!("header {name} present"),
        None => format!("header {name} {}", compact(h)),
    }
}

/// `=value`, ` ~ regex` or ` prefix p`, for a `StringMatcher`.
fn string_match(m: &Value) -> Option<String> {
    if let Some(v) = m["exact"].as_str() {
        Some(format!("={v}"))
    } else if let Some(v) = m["safe_regex"]["regex"].as_str() {
        Some(format!(" ~ {v}"))
    } else if let Some(v) = m["prefix"].as_str() {
        Some(format!(" prefix {v}"))
    } else {
        m["suffix"].as_str().map(|v| format!(" suffix {v}"))
    }
}

/// The cookie name and value of the regex cutover matches a cookie with
/// (`(?:^|.*;\s*)NAME=VALUE(?:\s*;.*|\s*$)`, see `translate::routes`); `None` for any other.
fn cookie_from_regex(regex: &str) -> Option<(String, String)> {
    let pair = regex
        .strip_prefix(r"(?:^|.*;\s*)")?
        .strip_suffix(r"(?:\s*;.*|\s*$)")?;
    let mut unescaped = String::new();
    let mut chars = pair.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => unescaped.push(chars.next()?),
            // An unescaped metacharacter: not a literal pair.
            c if r".+*?()|[]{}^$".contains(c) => return None,
            c => unescaped.push(c),
        }
    }
    let (name, value) = unescaped.split_once('=')?;
    Some((name.to_owned(), value.to_owned()))
}

fn route_action(r: &Value) -> String {
    let a = &r["route"];
    if a.is_null() {
        return if !r["redirect"].is_null() {
            format!("redirect {}", compact(&r["redirect"]))
        } else if !r["direct_response"].is_null() {
            format!("direct response {}", compact(&r["direct_response"]))
        } else {
            "no action".to_owned()
        };
    }
    let mut text = if let Some(c) = a["cluster"].as_str() {
        c.to_owned()
    } else if let Some(clusters) = a["weighted_clusters"]["clusters"].as_array() {
        let weight = |c: &Value| c["weight"].as_u64().unwrap_or(0);
        let total: u64 = clusters.iter().map(weight).sum();
        clusters
            .iter()
            .map(|c| {
                let share = if total == 0 {
                    0.0
                } else {
                    weight(c) as f64 * 100.0 / total as f64
                };
                format!("{} {}", c["name"].as_str().unwrap_or("?"), percent(share))
            })
            .collect::<Vec<_>>()
            .join(" / ")
    } else {
        compact(a)
    };
    for m in a["request_mirror_policies"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let cluster = m["cluster"].as_str().unwrap_or("?");
        let share = fractional_percent(&m["runtime_fraction"]["default_value"]);
        let _ = write!(text, ", mirror {cluster} {}", percent(share));
    }
    text
}

/// An Envoy `FractionalPercent` as a percentage; absent is 100%.
fn fractional_percent(v: &Value) -> f64 {
    if v.is_null() {
        return 100.0;
    }
    let numerator = v["numerator"].as_u64().unwrap_or(0) as f64;
    let per = match v["denominator"].as_str() {
        Some("TEN_THOUSAND") => 10_000.0,
        Some("MILLION") => 1_000_000.0,
        _ => 100.0,
    };
    numerator * 100.0 / per
}

// --- generic field changes ---------------------------------------------------------------------

/// The leaf fields that differ between two resources, as `path: old → new`, leaving out the
/// top-level keys in `skip`.
fn fields(old: &Value, new: &Value, skip: &[&str]) -> Vec<Detail> {
    let without = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            for k in skip {
                map.remove(*k);
            }
        }
        v
    };
    field_changes(&without(old), &without(new), "")
        .into_iter()
        .map(|(_, line)| Detail::field(line))
        .collect()
}

/// (path, `path: old → new`) for every differing leaf. Objects are compared key by key, arrays
/// of the same length item by item; anything else is one leaf.
fn field_changes(old: &Value, new: &Value, path: &str) -> Vec<(String, String)> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        _ if old == new => Vec::new(),
        (Value::Object(o), Value::Object(n)) => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    field_changes(
                        o.get(k).unwrap_or(&Value::Null),
                        n.get(k).unwrap_or(&Value::Null),
                        &join(k),
                    )
                })
                .collect()
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => o
            .iter()
            .zip(n)
            .enumerate()
            .flat_map(|(i, (o, n))| field_changes(o, n, &format!("{path}[{i}]")))
            .collect(),
        _ => {
            let shown = if path.is_empty() { "(resource)" } else { path };
            vec![(
                path.to_owned(),
                format!("{shown}: {} → {}", leaf(old), leaf(new)),
            )]
        }
    }
}

fn leaf(v: &Value) -> String {
    const MAX: usize = 100;
    let text = match v {
        Value::Null => "(unset)".to_owned(),
        Value::String(s) => s.clone(),
        other => compact(other),
    };
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

// --- longest common subsequence ------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Old(usize),
    New(usize),
    Both(usize, usize),
}

/// An edit script from `a` to `b` keeping a longest common subsequence; removals come before
/// the additions that replace them.
fn lcs<T: PartialEq>(a: &[T], b: &[T]) -> Vec<Step> {
    let (n, m) = (a.len(), b.len());
    // table[i][j]: length of the LCS of a[i..] and b[j..].
    let mut table = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            table[i][j] = if a[i] == b[j] {
                table[i + 1][j + 1] + 1
            } else {
                table[i + 1][j].max(table[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut steps = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            steps.push(Step::Both(i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || table[i + 1][j] >= table[i][j + 1]) {
            steps.push(Step::Old(i));
            i += 1;
        } else {
            steps.push(Step::New(j));
            j += 1;
        }
    }
    steps
}

/// `cutover diff`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The deployment file as it is (e.g. the one being served).
    old: PathBuf,
    /// The deployment file as it would be.
    new: PathBuf,
}

/// Exit 0 same, 1 different, 2 trouble (like diff(1)).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    const TROUBLE: u8 = 2;
    let mut compiled = Vec::new();
    let mut failed = false;
    for file in [&args.old, &args.new] {
        match read_spec(file) {
            Ok(spec) => compiled.push((file.display().to_string(), app::fresh_plan(&spec))),
            Err(failure) => {
                failure.report()?;
                failed = true;
            }
        }
    }
    let [(old_label, old), (new_label, new)] = match <[_; 2]>::try_from(compiled) {
        Ok(both) if !failed => both,
        _ => return Ok(ExitCode::from(TROUBLE)),
    };
    let (old_resources, new_resources) = (translate(&old), translate(&new));
    let side = |label, resources| Side { label, resources };
    match diff(
        side(&old_label, &old_resources),
        side(&new_label, &new_resources),
    ) {
        Ok(d) => {
            let d = d.with_groups(&old, &new);
            say(format_args!("{}", d.render(super::color_for_stdout())))?;
            Ok(if d.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(err) => {
            complain(format_args!("error: {err}\n"))?;
            Ok(ExitCode::from(TROUBLE))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_keeps_common_items_in_order() {
        let steps = lcs(&["a", "b", "c"], &["x", "b", "c", "d"]);
        assert_eq!(
            steps,
            vec![
                Step::Old(0),
                Step::New(0),
                Step::Both(1, 1),
                Step::Both(2, 2),
                Step::New(3)
            ]
        );
    }

    #[test]
    fn cookie_regex_is_read_back() {
        assert_eq!(
            cookie_from_regex(r"(?:^|.*;\s*)cutover\-checkout=v2(?:\s*;.*|\s*$)"),
            Some(("cutover-checkout".into(), "v2".into()))
        );
        assert_eq!(cookie_from_regex(r"(?:^|.*;\s*)a.b=v(?:\s*;.*|\s*$)"), None);
        assert_eq!(cookie_from_regex("x=y"), None);
    }

    #[test]
    fn field_changes_name_the_leaf() {
        let old = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        let new = serde_json::json!({"a": {"b": 2, "c": [1, 3]}, "e": true});
        let lines: Vec<String> = field_changes(&old, &new, "")
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            lines,
            vec![
                "a.b: 1 → 2",
                "a.c[1]: 2 → 3",
                "d: x → (unset)",
                "e: (unset) → true"
            ]
        );
    }
}
