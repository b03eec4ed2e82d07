//! `cutover diff OLD NEW`: what Envoy would see change between two deployment files.
//!
//! Both files are compiled as a freshly started cutover would serve them
//! ([`crate::app::fresh_plan`]); the typed resources are then compared by type and name.
//! Endpoints are compared per address (added, removed, weight or drain changed); routes per
//! match, in order, showing where each match sends requests (cluster, weights, mirror, redirect,
//! fixed response), with the file's conditions read back by [`crate::translate`] itself;
//! TCP listeners by where new connections go; secrets by what changed, never their content.
//! Any other field that changed is shown as `path: old → new`, the path as in Envoy's JSON
//! (the names its docs and config dump use). With node groups, [`Diff::with_groups`] adds
//! which groups' Envoys see a change at all.
//!
//! Not modelled: what a running server adds over time: endpoints and versions taken out of the
//! file are kept `DRAINING` for `--drain-period`, and a red-black service keeps its previous
//! version for its grace period. The diff shows where those end up.

mod routes;
mod typed;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use serde_json::Value;

use super::output::{complain, read_spec, say};
use super::style::{Painter, Style};
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
    let (o, n) = (old.resources, new.resources);
    let mut types = Vec::new();
    let mut push = |key, changes: Vec<Change>| {
        if !changes.is_empty() {
            types.push((key, changes));
        }
    };
    push(
        "clusters",
        compare(
            &o.clusters,
            &n.clusters,
            |c| &c.name,
            |c| (c.name.clone(), Vec::new()),
            |a, b| Ok(fields(&render::to_json(a)?, &render::to_json(b)?)),
        )?,
    );
    push(
        "endpoints",
        compare(
            &o.endpoints,
            &n.endpoints,
            |e| &e.cluster_name,
            endpoints_title,
            endpoints_changed,
        )?,
    );
    // Secrets go before the listeners that name them.
    push(
        "secrets",
        compare(
            &o.secrets,
            &n.secrets,
            |s| &s.name,
            |s| (s.name.clone(), Vec::new()),
            |a, b| {
                Ok(typed::secret_changes(a, b)
                    .into_iter()
                    .map(Detail::field)
                    .collect())
            },
        )?,
    );
    push(
        "listeners",
        compare(
            &o.listeners,
            &n.listeners,
            |l| &l.name,
            listener_title,
            listener_changed,
        )?,
    );
    push(
        "routes",
        compare(
            &o.routes,
            &n.routes,
            |r| &r.name,
            routes::added,
            routes::changed,
        )?,
    );
    let version = |r: &Resources| Snapshot::new(r).version;
    Ok(Diff {
        old: (old.label.to_owned(), version(o)),
        new: (new.label.to_owned(), version(n)),
        types,
        groups: Vec::new(),
    })
}

/// The resources of one type added, removed or changed, by name: an added one titled by
/// `added` (its name and what it is, and lines under it), a changed one detailed by `changed`.
fn compare<M: PartialEq>(
    old: &[M],
    new: &[M],
    name: impl Fn(&M) -> &str,
    added: impl Fn(&M) -> (String, Vec<Detail>),
    changed: impl Fn(&M, &M) -> Result<Vec<Detail>, RenderError>,
) -> Result<Vec<Change>, RenderError> {
    let o: BTreeMap<&str, &M> = old.iter().map(|m| (name(m), m)).collect();
    let n: BTreeMap<&str, &M> = new.iter().map(|m| (name(m), m)).collect();
    let names: BTreeSet<&str> = o.keys().chain(n.keys()).copied().collect();
    let mut changes = Vec::new();
    for key in names {
        let change = match (o.get(key), n.get(key)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => {
                let details = changed(a, b)?;
                Change {
                    kind: Kind::Changed,
                    title: key.to_owned(),
                    details,
                }
            }
            (None, Some(b)) => {
                let (title, details) = added(b);
                Change {
                    kind: Kind::Added,
                    title,
                    details,
                }
            }
            (Some(_), None) => Change {
                kind: Kind::Removed,
                title: key.to_owned(),
                details: Vec::new(),
            },
            (None, None) => continue,
        };
        changes.push(change);
    }
    Ok(changes)
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

// --- listeners ---------------------------------------------------------------------------------

/// An added listener with its address.
fn listener_title(l: &Listener) -> (String, Vec<Detail>) {
    let title = match l.address.as_ref().and_then(socket_address) {
        Some(addr) => format!("{} on {addr}", l.name),
        None => l.name.clone(),
    };
    (title, Vec::new())
}

/// A changed listener's fields; a TCP listener's chains and matcher as where new connections
/// go, and the chains that come and go, instead of the matcher's fields.
fn listener_changed(o: &Listener, n: &Listener) -> Result<Vec<Detail>, RenderError> {
    let mut details = Vec::new();
    let (mut o, mut n) = (o.clone(), n.clone());
    if let (Some(from), Some(to)) = (typed::tcp_shares(&o), typed::tcp_shares(&n)) {
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
        for l in [&mut o, &mut n] {
            l.filter_chains.clear();
            l.filter_chain_matcher = None;
        }
    }
    details.extend(fields(&render::to_json(&o)?, &render::to_json(&n)?));
    Ok(details)
}

/// `ip:port` (`[ip]:port` for IPv6) of a socket address.
fn socket_address(address: &Address) -> Option<String> {
    let Some(address::Address::SocketAddress(sa)) = &address.address else {
        return None;
    };
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => p,
        _ => 0,
    };
    Some(if sa.address.contains(':') {
        format!("[{}]:{port}", sa.address)
    } else {
        format!("{}:{port}", sa.address)
    })
}

// --- endpoints ---------------------------------------------------------------------------------

/// What Envoy knows of one endpoint besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndpointState {
    weight: u32,
    /// Envoy's `health_status`, `None` when not set (health comes from checks).
    health: Option<&'static str>,
}

impl EndpointState {
    fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.weight != 1 {
            parts.push(format!("weight {}", self.weight));
        }
        match self.health {
            None => {}
            Some("DRAINING") => parts.push("draining".to_owned()),
            Some(other) => parts.push(format!("health {other}")),
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    fn line(&self, addr: &str) -> String {
        match self.describe() {
            Some(d) => format!("{addr} ({d})"),
            None => addr.to_owned(),
        }
    }
}

/// Every endpoint of a load assignment (all localities), by address, in file order.
fn lb_endpoints(cla: &ClusterLoadAssignment) -> Vec<(String, EndpointState)> {
    let mut out = Vec::new();
    for locality in &cla.endpoints {
        for e in &locality.lb_endpoints {
            let addr = match &e.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref().and_then(socket_address),
                _ => None,
            };
            let health = (e.health_status != HealthStatus::Unknown as i32).then(|| {
                HealthStatus::try_from(e.health_status).map_or("(unknown)", |h| h.as_str_name())
            });
            out.push((
                addr.unwrap_or_else(|| format!("{:?}", e.host_identifier)),
                EndpointState {
                    weight: e.load_balancing_weight.map_or(1, |w| w.value),
                    health,
                },
            ));
        }
    }
    out
}

/// An added load assignment with its endpoints.
fn endpoints_title(cla: &ClusterLoadAssignment) -> (String, Vec<Detail>) {
    let endpoints: Vec<String> = lb_endpoints(cla)
        .iter()
        .map(|(addr, e)| e.line(addr))
        .collect();
    let name = &cla.cluster_name;
    let title = if endpoints.is_empty() {
        format!("{name}: no endpoints")
    } else {
        format!("{name}: {}", endpoints.join(", "))
    };
    (title, Vec::new())
}

fn endpoints_changed(
    old: &ClusterLoadAssignment,
    new: &ClusterLoadAssignment,
) -> Result<Vec<Detail>, RenderError> {
    let old_eps = lb_endpoints(old);
    let new_eps = lb_endpoints(new);
    let new_by: BTreeMap<&str, &EndpointState> =
        new_eps.iter().map(|(a, s)| (a.as_str(), s)).collect();
    let old_by: BTreeMap<&str, &EndpointState> =
        old_eps.iter().map(|(a, s)| (a.as_str(), s)).collect();
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
                    what.push(match (o.health, n.health) {
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
            out.push(Detail::sign(Kind::Added, n.line(addr)));
        }
    }
    // Anything else: the policy, named endpoints.
    let rest = |cla: &ClusterLoadAssignment| {
        let mut cla = cla.clone();
        cla.endpoints.clear();
        render::to_json(&cla)
    };
    out.extend(fields(&rest(old)?, &rest(new)?));
    Ok(out)
}

// --- generic field changes ---------------------------------------------------------------------

/// The leaf fields that differ between two resources, as `path: old → new`.
fn fields(old: &Value, new: &Value) -> Vec<Detail> {
    field_changes(old, new, "")
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
