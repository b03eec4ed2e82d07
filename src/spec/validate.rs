//! Turns a [`RawSpec`] into a [`Spec`], collecting every problem with its position.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::limits::{Count, Limit, Limits};
use super::raw::{
    Entries, RawAccessRule, RawAnalysis, RawCanary, RawCsdsScope, RawEndpoint, RawGroup,
    RawListener, RawNodeMatch, RawPreview, RawRule, RawRuleMatch, RawService, RawSpec, RawStep,
    RawStrategy, RawWebhook, Scalar,
};
use super::{
    AddressError, Analysis, BaselineLimits, Condition, Endpoint, EndpointAddress, Group, Listener,
    ListenerKind, Mirror, Percent, Preview, Problem, Rollout, Rule, Service, Spec, SpecError, Step,
    StepKind, Sticky, Strategy, Version, Webhook, WebhookFormat,
};
use crate::access::{self, Access, CsdsScope, Pattern};
use crate::node::Selector;

/// Parses and validates a deployment file read from disk: the one entry point from raw bytes.
/// `file` is only used in messages. Checked against the process's [`Limits::current`].
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Spec, SpecError> {
    parse_bytes_with(file, bytes, Limits::current())
}

/// [`parse_bytes`] against the given limits.
pub fn parse_bytes_with(file: &str, bytes: &[u8], limits: &Limits) -> Result<Spec, SpecError> {
    match text_of(bytes, limits) {
        Ok(text) => parse_with(file, text, limits),
        Err(problem) => Err(SpecError {
            file: file.to_owned(),
            problems: vec![problem],
        }),
    }
}

/// The text of a file read from disk, or why it cannot be read as one.
pub(super) fn text_of<'a>(bytes: &'a [u8], limits: &Limits) -> Result<&'a str, Problem> {
    // Before anything else looks at the bytes: a file over the limit is not read further.
    if let Some(problem) = too_large(bytes.len(), limits) {
        return Err(problem);
    }
    std::str::from_utf8(bytes).map_err(|err| not_utf8(bytes, &err))
}

/// Parses and validates a deployment file's text. `file` is only used in messages. Checked
/// against the process's [`Limits::current`].
pub fn parse(file: &str, text: &str) -> Result<Spec, SpecError> {
    parse_with(file, text, Limits::current())
}

/// [`parse`] against the given limits.
pub fn parse_with(file: &str, text: &str, limits: &Limits) -> Result<Spec, SpecError> {
    let error = |problems| SpecError {
        file: file.to_owned(),
        problems,
    };
    if let Some(problem) = too_large(text.len(), limits) {
        return Err(error(vec![problem]));
    }
    let raw = read_yaml(text, yaml_options(limits))
        .map_err(|err| error(vec![syntax_problem(&err, limits)]))?;
    validated(&raw, limits).map_err(error)
}

/// The YAML text read into the raw structs, checked against `options`' budget.
pub(super) fn read_yaml(
    text: &str,
    options: serde_saphyr::Options,
) -> Result<RawSpec, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options)
}

/// Validates what the YAML said: the spec, or every problem found, in file order.
pub(super) fn validated(raw: &RawSpec, limits: &Limits) -> Result<Spec, Vec<Problem>> {
    let mut v = Validator::default();
    v.limits(raw, limits);
    let spec = v.spec(raw);
    if v.problems.is_empty() {
        Ok(spec)
    } else {
        v.problems.sort_by_key(|p| (p.line, p.column));
        Err(v.problems)
    }
}

pub(super) fn too_large(len: usize, limits: &Limits) -> Option<Problem> {
    (len > limits.file_bytes).then(|| Problem {
        line: 1,
        column: 1,
        message: format!(
            "the file is larger than {}, the limit on deployment files, which keeps a file \
             from taking unbounded memory; if this file is legitimate, raise the limit with \
             {}=<MiB>",
            size(limits.file_bytes),
            Limit::FileSize.env_var(),
        ),
    })
}

/// Where the first byte that is not UTF-8 is: its line, and its column counted in characters
/// like every other column in messages.
fn not_utf8(bytes: &[u8], err: &std::str::Utf8Error) -> Problem {
    let good = &bytes[..err.valid_up_to()];
    let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = good[..line_start].iter().filter(|&&b| b == b'\n').count() + 1;
    // The prefix is valid UTF-8 by definition of `valid_up_to`.
    let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
    let bad = &bytes[err.valid_up_to()..];
    let shown: Vec<String> = bad
        .iter()
        .take(err.error_len().unwrap_or(bad.len()).min(4))
        .map(|b| format!("0x{b:02X}"))
        .collect();
    Problem {
        line: line as u64,
        column: column as u64,
        message: format!(
            "the file is not valid UTF-8 here (byte {}): deployment files are UTF-8 text; \
             re-save it as UTF-8 (it may be Latin-1 or Windows-1252)",
            shown.join(" ")
        ),
    }
}

/// The YAML parser's options: its resource budget follows `limits` (see [`super::limits`]).
pub(super) fn yaml_options(limits: &Limits) -> serde_saphyr::Options {
    let nodes = limits.yaml_nodes;
    // Events are about two per value (start and end of a collection) plus document markers;
    // aliases, anchors and merge keys each stand for at least one value. Counting values is
    // what bounds memory, so the other counts only back it up.
    let events = nodes.saturating_mul(3).saturating_add(16);
    let text = limits.file_bytes.saturating_mul(SCALAR_BYTES_PER_FILE_BYTE);
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = nodes;
    budget.max_events = events;
    budget.max_aliases = nodes;
    budget.max_anchors = nodes;
    budget.max_merge_keys = nodes;
    budget.max_recorded_anchor_events = events;
    budget.max_total_scalar_bytes = text;
    budget.max_recorded_anchor_bytes = text;
    budget.max_depth = MAX_YAML_DEPTH;
    // The scanner reads ahead of the depth count: it stops unclosed brackets at the same depth.
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    // The ratio heuristic refuses a large fleet that shares one anchored policy among
    // thousands of services; the value count above already stops any expansion.
    budget.enforce_alias_anchor_ratio = false;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = events;
    // Messages quote no source; they carry file:line:column.
    options.with_snippet = false;
    options
}

/// Scalar text after alias expansion, per byte of the file limit: aliases of short names and
/// policies are fine, a long string repeated thousands of times is not.
const SCALAR_BYTES_PER_FILE_BYTE: usize = 4;

/// Deployment files nest about ten levels; deeper is damage or an attack on the stack.
const MAX_YAML_DEPTH: usize = 64;

/// A YAML or schema error from the parser, worded for the person editing the file.
pub(super) fn syntax_problem(err: &serde_saphyr::Error, limits: &Limits) -> Problem {
    use serde_saphyr::Error as E;
    let at = |loc: Location| (loc.line().max(1), loc.column().max(1));
    // An error in a value that an alias (`*name`) repeats comes wrapped with where the alias
    // is; the original error says what is wrong and where it is written.
    let mut original = err;
    let mut alias_at = None;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = original {
        if let (None, Some(locs)) = (alias_at, original.locations()) {
            alias_at = Some(locs.reference_location).filter(|l| *l != Location::UNKNOWN);
        }
        original = error;
    }
    let here = original.location().or(err.location());
    let (message, loc) = match original {
        E::SerdeUnknownField {
            field, expected, ..
        } => (unknown_key(field, expected), here),
        E::DuplicateMappingKey { key: Some(key), .. } => (
            format!("duplicate key `{key}`: each key may appear only once in a mapping"),
            here,
        ),
        E::SerdeMissingField { field, .. } => (format!("missing key `{field}`"), here),
        E::Unexpected { expected, .. } => {
            let message = match *expected {
                "mapping start" => {
                    "expected a mapping here: `key: value` lines or `{ key: value }`".to_owned()
                }
                "sequence start" => "expected a list here: `- item` lines or `[a, b]`".to_owned(),
                "string scalar" => "expected a text value here, not a list or a mapping".to_owned(),
                other => format!("expected {other} here"),
            };
            (message, here)
        }
        E::NullIntoString { .. } => (
            "expected a text value here, but YAML reads this one as null (it is empty, `~` or \
             `null`)"
                .to_owned(),
            here,
        ),
        E::RecursiveReferencesRequireWeakTypes { .. } => (
            "an alias (`*name`) repeats a value that contains the alias itself; an alias can \
             only repeat a value that is complete before it"
                .to_owned(),
            here,
        ),
        // The file went over a limit while an alias was being expanded: the alias that did
        // it is the place to point at.
        E::Budget { breach, .. } => (budget_breach(breach, limits), alias_at.or(here)),
        E::AliasReplayLimitExceeded { .. } | E::AliasReplayCounterOverflow { .. } => {
            (too_many_values(limits), alias_at.or(here))
        }
        E::ExternalMessage { source, .. }
            if matches!(
                &**source,
                serde_saphyr::ExternalMessageSource::Parser(scan)
                    if matches!(scan.kind(), serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded)
            ) =>
        {
            (too_deep(), here)
        }
        E::AliasReplayStackDepthExceeded { .. } => (
            format!(
                "aliases (`*name`) are nested more than {MAX_YAML_DEPTH} deep; a deployment \
                 file needs far fewer, so the file is damaged or not a deployment file"
            ),
            alias_at.or(here),
        ),
        other => {
            let mut message = other.to_string();
            // The parser appends its own position; ours leads the line already.
            if let Some(idx) = message.rfind(" at line ") {
                message.truncate(idx);
            }
            if let Some(alias) = alias_at {
                message.push_str(&format!(
                    " (in the value the alias at line {}, column {} repeats)",
                    alias.line(),
                    alias.column()
                ));
            }
            (message, here)
        }
    };
    let (line, column) = loc.map_or((1, 1), at);
    Problem {
        line,
        column,
        message,
    }
}

/// The YAML parser's resource budget, in words: which limit, why, and how to raise it.
fn budget_breach(breach: &serde_saphyr::budget::BudgetBreach, limits: &Limits) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Nodes { .. }
        | B::Events { .. }
        | B::Aliases { .. }
        | B::Anchors { .. }
        | B::MergeKeys { .. }
        | B::RecordedAnchorEvents { .. } => too_many_values(limits),
        B::ScalarBytes { .. } | B::RecordedAnchorBytes { .. } => format!(
            "the file's text expands to more than {} (each string an alias `*name` repeats \
             counts again); cutover stops reading there so that a small file cannot take \
             unbounded memory; this limit is {SCALAR_BYTES_PER_FILE_BYTE} times the file size \
             limit: if the file is legitimate, raise that with {}=<MiB>",
            size(limits.file_bytes.saturating_mul(SCALAR_BYTES_PER_FILE_BYTE)),
            Limit::FileSize.env_var(),
        ),
        B::Depth { .. } => too_deep(),
        B::Documents { .. } => {
            "the file holds too many YAML documents (`---`); a deployment file is one document"
                .to_owned()
        }
        other => format!(
            "the file exceeds a limit of the YAML parser ({other:?}); cutover stops reading \
             there so that a file cannot take unbounded memory or time"
        ),
    }
}

/// A size as a limit is set: in MiB (or in bytes, below one).
fn size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", Count(bytes / MIB))
    } else {
        format!("{} bytes", Count(bytes))
    }
}

fn too_deep() -> String {
    format!(
        "values are nested more than {MAX_YAML_DEPTH} levels deep; a deployment file needs \
         about ten, so the file is damaged or not a deployment file"
    )
}

fn too_many_values(limits: &Limits) -> String {
    format!(
        "the file expands to more than {} YAML values (mappings, lists and scalars, each \
         value an alias `*name` repeats counted again); cutover stops reading there so that a \
         small file cannot take unbounded memory (an \"alias bomb\"); if the file is \
         legitimate, raise the limit with {}=<values>",
        Count(limits.yaml_nodes),
        Limit::YamlNodes.env_var(),
    )
}

/// An unknown key, with the closest valid key and the list of valid ones.
fn unknown_key(unknown: &str, expected: &[&str]) -> String {
    let mut out = format!("unknown key `{unknown}`");
    if let Some(best) = closest(unknown, expected.iter().copied()) {
        out.push_str(&format!(" (did you mean `{best}`?)"));
    }
    if expected.is_empty() {
        out.push_str("; no keys are allowed here");
    } else {
        let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        out.push_str(&format!("; valid keys here: {}", list.join(", ")));
    }
    out
}

/// The candidate most like `word`, if any is close enough to be what the user meant.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[derive(Default)]
pub(super) struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    pub(super) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    pub(super) fn at(&mut self, loc: &Location, message: impl Into<String>) {
        self.problems.push(Problem {
            line: loc.line().max(1),
            column: loc.column().max(1),
            message: message.into(),
        });
    }

    fn spec(&mut self, raw: &RawSpec) -> Spec {
        let services = self.services(&raw.services);
        let mut listeners = Vec::new();
        let mut names: BTreeMap<&str, Location> = BTreeMap::new();
        let mut binds: Vec<(SocketAddr, Location, &str)> = Vec::new();
        if raw.listeners.is_empty() {
            self.at(
                &Location::UNKNOWN,
                "no listeners: add at least one under `listeners:` so Envoy has a port to serve",
            );
        }
        for l in &raw.listeners {
            let name = &l.value.name;
            if let Some(first) = names.get(name.value.as_str()) {
                let msg = format!(
                    "duplicate listener name \"{}\" (first defined at line {}); listener names must be unique",
                    name.value,
                    first.line()
                );
                self.at(&name.referenced, msg);
            } else {
                names.insert(&name.value, name.referenced);
            }
            self.check_name(&name.value, &name.referenced, "listener");
            if let Some(listener) = self.listener(&l.value, raw, &services) {
                if let (Some(address), Some(raw_address)) =
                    (listener.kind.address(), &l.value.address)
                {
                    for (addr, loc, other) in &binds {
                        if clashes(addr, &address) {
                            let msg = format!(
                                "listener \"{}\" binds {} which clashes with listener \"{}\" ({} at line {}); give each listener its own port",
                                listener.name,
                                address,
                                other,
                                addr,
                                loc.line()
                            );
                            self.at(&raw_address.referenced, msg);
                        }
                    }
                    binds.push((address, raw_address.referenced, &l.value.name.value));
                }
                listeners.push(listener);
            }
        }
        let groups = match &raw.groups {
            Some(groups) => self.groups(groups, &raw.listeners),
            None => Vec::new(),
        };
        let access = match &raw.access {
            Some(rules) => self.access(rules, &groups),
            None => Access::default(),
        };
        let spec = Spec {
            listeners,
            services,
            groups,
            access,
            pem_files: BTreeMap::new(),
        };
        self.proxyless(raw, &spec);
        self.tcp_services(raw, &spec);
        spec
    }

    /// The `access:` section: patterns that parse, node patterns that use only what their
    /// identity captures, groups that exist.
    fn access(&mut self, raw: &Spanned<Vec<Spanned<RawAccessRule>>>, groups: &[Group]) -> Access {
        if raw.value.is_empty() {
            self.at(
                &raw.referenced,
                "`access` is empty, which would refuse every client certificate; list at least \
                 one rule, or remove `access` so that a node id must equal one of its \
                 certificate's names",
            );
            return Access::default();
        }
        let group_names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let mut rules = Vec::new();
        for r in &raw.value {
            let r = &r.value;
            let mut pattern = |field: &str, p: &Spanned<String>| match Pattern::parse(&p.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.at(
                        &p.referenced,
                        format!("invalid access `{field}` pattern {:?}: {e}", p.value),
                    );
                    None
                }
            };
            let identity = pattern("identity", &r.identity);
            let node = pattern("node", &r.node);
            if let (Some(identity), Some(node)) = (&identity, &node) {
                let captured: Vec<&str> = identity.captures().collect();
                for name in node.captures() {
                    if !captured.contains(&name) {
                        let msg = format!(
                            "the node pattern {:?} uses {{{name}}}, which its identity pattern {:?} does not capture{}",
                            node.as_str(),
                            identity.as_str(),
                            if captured.is_empty() {
                                "; capture it there, e.g. `spiffe://corp.example/{name}`".to_owned()
                            } else {
                                format!(" (it captures: {})", captured.join(", "))
                            }
                        );
                        self.at(&r.node.referenced, msg);
                    }
                }
            }
            let allowed_groups = r.groups.as_ref().map(|gs| {
                if group_names.is_empty() {
                    self.at(
                        &gs.referenced,
                        "this access rule names groups, but the file has no `groups:`; every \
                         Envoy is in one group, so remove `groups` from the rule",
                    );
                }
                let mut out = Vec::new();
                for g in &gs.value {
                    if group_names.contains(&g.value.as_str()) {
                        out.push(g.value.clone());
                    } else if !group_names.is_empty() {
                        let mut msg = format!(
                            "unknown group \"{}\" in an access rule (groups are: {})",
                            g.value,
                            list_or_none(&group_names)
                        );
                        if let Some(best) = closest(&g.value, group_names.iter().copied()) {
                            msg.push_str(&format!("; did you mean \"{best}\"?"));
                        }
                        self.at(&g.referenced, msg);
                    }
                }
                out
            });
            let csds = match r.csds.as_ref().map(|c| c.value) {
                None | Some(RawCsdsScope::Own) => CsdsScope::Own,
                Some(RawCsdsScope::All) => CsdsScope::All,
            };
            if let (Some(identity), Some(node)) = (identity, node) {
                rules.push(access::Rule {
                    identity,
                    node,
                    groups: allowed_groups,
                    csds,
                });
            }
        }
        Access { rules }
    }

    /// The `groups:` section: names, selectors that can match a node no earlier group takes,
    /// listeners that exist, and every listener in some group.
    fn groups(
        &mut self,
        raw: &Spanned<Vec<Spanned<RawGroup>>>,
        listeners: &[Spanned<RawListener>],
    ) -> Vec<Group> {
        if raw.value.is_empty() {
            self.at(
                &raw.referenced,
                "`groups` is empty: no Envoy would get any listener; list at least one group, or \
                 remove `groups` so that every Envoy gets every listener",
            );
            return Vec::new();
        }
        let listener_names: Vec<&str> = listeners
            .iter()
            .map(|l| l.value.name.value.as_str())
            .collect();
        let mut out: Vec<Group> = Vec::new();
        // Every group's selector with where it is written, valid or not, for the shadow check.
        let mut earlier: Vec<(&str, Selector, Location)> = Vec::new();
        let mut names: BTreeMap<&str, Location> = BTreeMap::new();
        let mut grouped: BTreeSet<&str> = BTreeSet::new();
        for g in &raw.value {
            let g = &g.value;
            let name = &g.name;
            self.check_name(&name.value, &name.referenced, "group");
            if let Some(first) = names.get(name.value.as_str()) {
                let msg = format!(
                    "duplicate group name \"{}\" (first defined at line {}); group names must be unique",
                    name.value,
                    first.line()
                );
                self.at(&name.referenced, msg);
            } else {
                names.insert(&name.value, name.referenced);
            }
            let selector = self.selector(&name.value, &g.matcher);
            if let Some(selector) = &selector {
                if let Some((first, _, at)) = earlier.iter().find(|(_, s, _)| s.covers(selector)) {
                    let msg = format!(
                        "group \"{}\" can never get an Envoy: group \"{first}\" (line {}) comes \
                         first and matches every node this one matches (the first matching group \
                         wins); put the narrower group first, or make this match narrower",
                        name.value,
                        at.line()
                    );
                    self.at(&g.matcher.referenced, msg);
                }
                earlier.push((&name.value, selector.clone(), g.matcher.referenced));
            }
            let mut chosen: Vec<String> = Vec::new();
            if g.listeners.value.is_empty() {
                let msg = format!(
                    "group \"{}\" gets no listener: its Envoys would get an empty config, as \
                     Envoys no group matches do; name at least one listener",
                    name.value
                );
                self.at(&g.listeners.referenced, msg);
            }
            for l in &g.listeners.value {
                if chosen.contains(&l.value) {
                    let msg = format!(
                        "listener \"{}\" is named twice in group \"{}\"",
                        l.value, name.value
                    );
                    self.at(&l.referenced, msg);
                } else if let Some(known) = listener_names.iter().find(|n| **n == l.value) {
                    grouped.insert(known);
                    chosen.push(l.value.clone());
                } else {
                    let mut msg = format!(
                        "unknown listener \"{}\" in group \"{}\" (listeners are: {})",
                        l.value,
                        name.value,
                        list_or_none(&listener_names)
                    );
                    if let Some(best) = closest(&l.value, listener_names.iter().copied()) {
                        msg.push_str(&format!("; did you mean \"{best}\"?"));
                    }
                    self.at(&l.referenced, msg);
                }
            }
            if let Some(selector) = selector {
                out.push(Group {
                    name: name.value.clone(),
                    selector,
                    listeners: chosen,
                });
            }
        }
        for l in listeners {
            let name = &l.value.name;
            if !grouped.contains(name.value.as_str()) {
                let msg = format!(
                    "listener \"{}\" is in no group, so no Envoy gets it; add it to a group's \
                     `listeners` or remove it",
                    name.value
                );
                self.at(&name.referenced, msg);
            }
        }
        out
    }

    /// A group's `match`, if it is valid and can match a node.
    fn selector(&mut self, group: &str, raw: &Spanned<RawNodeMatch>) -> Option<Selector> {
        let m = &raw.value;
        let metadata_given = m.metadata.as_ref().is_some_and(|e| !e.value.0.is_empty());
        if m.id.is_none() && m.cluster.is_none() && !metadata_given {
            let msg = format!(
                "the match of group \"{group}\" has no condition; give `id` (a glob), `cluster` \
                 or `metadata`; to take every remaining Envoy, write `match: {{ id: \"*\" }}`"
            );
            self.at(&raw.referenced, msg);
            return None;
        }
        let mut ok = true;
        let id = match &m.id {
            None => None,
            Some(id) if id.value.is_empty() => {
                self.at(
                    &id.referenced,
                    "an empty `id` matches only Envoys with no node id; write a glob such as \
                     `edge-*`, or `*` for every node",
                );
                ok = false;
                None
            }
            Some(id) => match glob::Pattern::new(&id.value) {
                Ok(p) => Some(p),
                Err(e) => {
                    let msg = format!("invalid glob \"{}\" in `id`: {e}", id.value);
                    self.at(&id.referenced, msg);
                    ok = false;
                    None
                }
            },
        };
        let cluster = match &m.cluster {
            Some(c) if c.value.is_empty() => {
                self.at(
                    &c.referenced,
                    "an empty `cluster` matches only Envoys with no node cluster; name a cluster, \
                     or leave `cluster` out",
                );
                ok = false;
                None
            }
            other => other.as_ref().map(|c| c.value.clone()),
        };
        let mut metadata = BTreeMap::new();
        for (key, value) in m.metadata.iter().flat_map(|e| &e.value.0) {
            if key.value.is_empty() {
                self.at(&key.referenced, "an empty metadata key matches nothing");
                ok = false;
            }
            metadata.insert(key.value.clone(), value.value.0.clone());
        }
        ok.then_some(Selector {
            id,
            cluster,
            metadata,
        })
    }

    fn check_name(&mut self, name: &str, loc: &Location, what: &str) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            let msg = format!(
                "invalid {what} name \"{name}\": use 1 to 64 letters, digits, '-', '_' or '.'"
            );
            self.at(loc, msg);
        } else if let Some(kind) = yaml_non_string(name) {
            let instead = match kind {
                "a number" => format!("use e.g. \"v{name}\""),
                _ => "use another name".to_owned(),
            };
            let msg = format!(
                "invalid {what} name \"{name}\": YAML may read it as {kind}, not as text, and \
                 tools that rewrite YAML may change such values (1.10 becomes 1.1, on becomes \
                 true); a name must not look like a YAML number, boolean or null (YAML 1.1 or \
                 1.2), even quoted: {instead}"
            );
            self.at(loc, msg);
        }
    }

    /// Problems for every limit of [`Limits`] the file goes over, each at the first item
    /// beyond it. (The file size and YAML values were checked while parsing.)
    fn limits(&mut self, raw: &RawSpec, limits: &Limits) {
        if let Some(first_over) = raw.listeners.get(limits.listeners) {
            self.over(
                Limit::Listeners,
                limits,
                raw.listeners.len(),
                "listeners",
                &first_over.referenced,
            );
        }
        let services = &raw.services.0;
        if let Some((name, _)) = services.get(limits.services) {
            self.over(
                Limit::Services,
                limits,
                services.len(),
                "services",
                &name.referenced,
            );
        }
        let versions = services.iter().flat_map(|(_, s)| &s.value.versions.value.0);
        let version_locs = versions.clone().map(|(name, _)| &name.referenced);
        self.over_total(
            Limit::Versions,
            limits,
            "versions",
            version_locs.map(|l| (l, 1)),
        );
        let endpoints = versions.flat_map(|(_, v)| &v.value.endpoints);
        self.over_total(
            Limit::Endpoints,
            limits,
            "endpoints",
            endpoints.map(|e| (&e.referenced, 1)),
        );
        // A listener route becomes one Envoy route per rule, per preview version, a sticky
        // canary's three and one for the strategy: at most `1 + rules + versions`, one more
        // for a sticky canary (two versions, three routes) or a rollout's match step (a rule).
        let per_route: BTreeMap<&str, usize> = services
            .iter()
            .map(|(name, s)| {
                let s = &s.value;
                (
                    name.value.as_str(),
                    1 + s.rules.len() + s.versions.value.0.len() + canary_extra(s),
                )
            })
            .collect();
        let routes = raw
            .listeners
            .iter()
            .flat_map(|l| {
                l.value
                    .routes
                    .iter()
                    .chain(l.value.hosts.iter().flat_map(|h| &h.value.routes))
            })
            .map(|r| {
                let service = r.value.service.as_ref().map(|s| s.value.as_str());
                let weight = service.and_then(|s| per_route.get(s).copied());
                (&r.referenced, weight.unwrap_or(1))
            });
        self.over_total(Limit::Routes, limits, "Envoy routes", routes);
    }

    /// Counts `items` (each with its weight) and reports the one that goes over `limit`.
    fn over_total<'a>(
        &mut self,
        limit: Limit,
        limits: &Limits,
        what: &str,
        items: impl Iterator<Item = (&'a Location, usize)>,
    ) {
        let max = limit.get(limits);
        let mut total = 0usize;
        let mut first_over = None;
        for (loc, weight) in items {
            total = total.saturating_add(weight);
            if total > max && first_over.is_none() {
                first_over = Some(*loc);
            }
        }
        if let Some(loc) = first_over {
            self.over(limit, limits, total, what, &loc);
        }
    }

    fn over(&mut self, limit: Limit, limits: &Limits, total: usize, what: &str, loc: &Location) {
        let max = limit.get(limits);
        let counted = match limit {
            Limit::Routes => format!(
                "the listeners' routes become up to {} {what} (one per rule, per version and \
                 for the strategy of the service each names)",
                Count(total)
            ),
            _ => format!("the file has {} {what}", Count(total)),
        };
        let msg = format!(
            "too many {what}: {counted}, more than the limit of {}, which keeps cutover's and \
             every Envoy's memory bounded; from here on the file is over it. If this deployment \
             is legitimate, raise the limit with {}={total}",
            Count(max),
            limit.env_var(),
        );
        self.at(loc, msg);
    }

    fn listener(
        &mut self,
        raw: &RawListener,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
    ) -> Option<Listener> {
        let name = &raw.name.value;
        let proxyless = raw.proxyless.as_ref().filter(|p| p.value);
        let kind = match (&raw.address, proxyless) {
            (Some(address), None) => match address.value.parse::<SocketAddr>() {
                Ok(a) => Some(ListenerKind::Envoy(a)),
                Err(_) => {
                    let msg = format!(
                        "invalid address \"{}\" for listener \"{name}\": write IP:PORT, e.g. 127.0.0.1:10000 or [::1]:10000",
                        address.value
                    );
                    self.at(&address.referenced, msg);
                    None
                }
            },
            (None, Some(_)) => Some(ListenerKind::Proxyless),
            (Some(address), Some(_)) => {
                let msg = format!(
                    "listener \"{name}\" has both `address` and `proxyless: true`: an Envoy listener binds an address, a proxyless one is dialled by gRPC clients as xds:///{name}; keep one"
                );
                self.at(&address.referenced, msg);
                None
            }
            (None, None) => {
                let msg = format!(
                    "listener \"{name}\" needs an `address` (IP:PORT Envoy listens on, e.g. 127.0.0.1:10000), or `proxyless: true` for gRPC clients that dial xds:///{name}"
                );
                self.at(&raw.name.referenced, msg);
                None
            }
        };
        if let Some(service) = &raw.tcp {
            let routes = self.tcp_listener(raw, service, spec, services);
            return Some(Listener {
                name: name.clone(),
                kind: ListenerKind::Tcp(kind?.address()?),
                routes: routes?,
                hosts: Vec::new(),
                redirect: None,
                tls: None,
            });
        }
        if raw.routes.is_empty() && raw.hosts.is_empty() && raw.redirect.is_none() {
            let msg = format!(
                "listener \"{name}\" has no routes: add one under `routes:` that names a service \
                 (or give it `hosts:` with theirs, or `redirect: https`)"
            );
            self.at(&raw.name.referenced, msg);
        }
        let routes = self.routes(&raw.routes, name, spec, services);
        if proxyless.is_some() {
            self.proxyless_routes(&raw.routes, name);
        }
        let hosts = self.hosts(raw, name, spec, services, proxyless.is_some());
        let redirect = self.redirect(raw, name, proxyless.is_some());
        let tls = match &raw.tls {
            Some(tls) => Some(self.listener_tls(tls, name, proxyless.is_some())?),
            None => None,
        };
        Some(Listener {
            name: name.clone(),
            kind: kind?,
            routes,
            hosts: hosts?,
            redirect: redirect?,
            tls,
        })
    }

    pub(super) fn path(&mut self, p: &Spanned<String>, key: &str) -> Option<String> {
        if p.value.starts_with('/') {
            Some(p.value.clone())
        } else {
            let msg = format!("`{key}` must start with '/', got \"{}\"", p.value);
            self.at(&p.referenced, msg);
            None
        }
    }

    fn services(&mut self, raw: &Entries<Box<Spanned<RawService>>>) -> BTreeMap<String, Service> {
        let mut out = BTreeMap::new();
        for (name, svc) in &raw.0 {
            self.check_name(&name.value, &name.referenced, "service");
            if out.contains_key(&name.value) {
                let msg = format!(
                    "duplicate service \"{}\"; service names must be unique",
                    name.value
                );
                self.at(&name.referenced, msg);
                continue;
            }
            if let Some(s) = self.service(&name.value, &name.referenced, &svc.value) {
                out.insert(name.value.clone(), s);
            }
        }
        out
    }

    fn service(&mut self, name: &str, name_loc: &Location, raw: &RawService) -> Option<Service> {
        let mut versions = BTreeMap::new();
        let raw_versions = &raw.versions;
        if raw_versions.value.0.is_empty() {
            let msg = format!(
                "service \"{name}\" has no versions: add one under `versions:` with its endpoints"
            );
            self.at(&raw_versions.referenced, msg);
        }
        for (vname, v) in &raw_versions.value.0 {
            self.check_name(&vname.value, &vname.referenced, "version");
            if versions.contains_key(&vname.value) {
                let msg = format!(
                    "duplicate version \"{}\" in service \"{name}\"",
                    vname.value
                );
                self.at(&vname.referenced, msg);
                continue;
            }
            let endpoints = self.endpoints(name, &vname.value, &v.value.endpoints);
            versions.insert(vname.value.clone(), Version { endpoints });
        }
        let names: Vec<&str> = raw_versions
            .value
            .0
            .iter()
            .map(|(k, _)| k.value.as_str())
            .collect();
        let refs = VersionRefs {
            service: name,
            names: &names,
        };

        let (strategy, shadow_mirror) = self.strategy(name, name_loc, raw, &refs)?;
        let mirror = self.service_mirror(name, raw, shadow_mirror, &strategy, &refs)?;

        let mut rules = Vec::new();
        for r in &raw.rules {
            if let Some(rule) = self.rule(&r.value, &refs) {
                rules.push((rule, r.value.version.referenced));
            }
        }

        // Every version that gets requests needs somewhere to send them.
        let mut receiving: Vec<(&str, Location, &str)> = strategy
            .serving_versions()
            .into_iter()
            .map(|v| (v, self.strategy_loc(raw, name_loc), "gets traffic"))
            .collect();
        if let Some((m, loc)) = &mirror {
            receiving.push((m.version.as_str(), *loc, "receives mirrored traffic"));
        }
        // A rollout starting with a mirror or match step gives its canary no weight yet.
        if let Strategy::Canary {
            canary,
            rollout: Some(_),
            ..
        } = &strategy
            && !strategy.serving_versions().contains(&canary.as_str())
        {
            receiving.push((
                canary.as_str(),
                self.strategy_loc(raw, name_loc),
                "is rolled out",
            ));
        }
        for (rule, loc) in &rules {
            receiving.push((rule.version.as_str(), *loc, "gets traffic from a rule"));
        }
        for (v, loc, what) in receiving {
            let Some(version) = versions.get(v) else {
                continue;
            };
            if version.endpoints.is_empty() {
                let msg = format!(
                    "version \"{v}\" of service \"{name}\" {what} but has no endpoints: add endpoints or send the traffic to another version"
                );
                self.at(&loc, msg);
            } else if version.endpoints.iter().all(|e| e.drain) {
                let msg = format!(
                    "version \"{v}\" of service \"{name}\" {what} but every endpoint is draining: add an endpoint that is not draining first, or move the traffic"
                );
                self.at(&loc, msg);
            }
        }

        let policy = self.policy(name, raw)?;
        let notify = self.notify(raw, &strategy)?;
        Some(Service {
            versions,
            strategy,
            mirror: mirror.map(|(m, _)| m),
            rules: rules.into_iter().map(|(r, _)| r).collect(),
            policy,
            notify,
        })
    }

    /// The service's mirror (its own, or its shadow strategy's) and where the file names it.
    fn service_mirror(
        &mut self,
        name: &str,
        raw: &RawService,
        shadow_mirror: Option<(Mirror, Location)>,
        strategy: &Strategy,
        refs: &VersionRefs<'_>,
    ) -> Option<Option<(Mirror, Location)>> {
        let mirror = match (&raw.mirror, shadow_mirror) {
            (Some(m), Some(_)) => {
                self.at(&m.referenced, format!("service \"{name}\" already mirrors with its shadow strategy: remove `mirror`"));
                return None;
            }
            (Some(m), None) => {
                let version = self.version_ref(&m.value.version, "mirror.version", refs)?;
                let percent = self.percent_or(
                    m.value.percent.as_ref(),
                    "mirror.percent",
                    Percent::from_ppm(Percent::MILLION),
                )?;
                Some((Mirror { version, percent }, m.value.version.referenced))
            }
            (None, shadow) => shadow,
        };
        if let Some((m, loc)) = &mirror
            && strategy.serving_versions().contains(&m.version.as_str())
        {
            let msg = format!(
                "version \"{}\" of service \"{name}\" answers requests and cannot also be their mirror: mirror a version that gets no traffic",
                m.version
            );
            self.at(loc, msg);
        }

        if let (
            Some((_, loc)),
            Strategy::Canary {
                rollout: Some(r), ..
            },
        ) = (&mirror, strategy)
            && r.steps
                .iter()
                .any(|s| matches!(s.kind, StepKind::Mirror(_)))
        {
            let msg = format!(
                "service \"{name}\" mirrors to \"{}\" already, and its rollout has a mirror step: Envoy routes get one mirror from cutover; remove the service's `mirror` during the rollout, or the mirror step",
                mirror.as_ref().map_or("", |(m, _)| m.version.as_str())
            );
            self.at(loc, msg);
        }

        Some(mirror)
    }

    /// The strategy's `notify` webhooks; only a rollout has events to tell.
    fn notify(&mut self, raw: &RawService, strategy: &Strategy) -> Option<Vec<Webhook>> {
        let hooks = match raw.strategy.as_ref().map(|s| &s.value) {
            Some(RawStrategy::BlueGreen(bg)) => &bg.notify,
            Some(RawStrategy::RedBlack(rb)) => &rb.notify,
            Some(RawStrategy::Canary(c)) => &c.notify,
            _ => return Some(Vec::new()),
        };
        let rollout = match strategy {
            Strategy::BlueGreen { analysis, .. } | Strategy::RedBlack { analysis, .. } => {
                analysis.is_some()
            }
            Strategy::Canary { rollout, .. } => rollout.is_some(),
            Strategy::Shadow { .. } => false,
        };
        if let Some(first) = hooks.first()
            && !rollout
        {
            self.at(
                &first.referenced,
                "`notify` tells of a rollout's steps, promotion and rollback, and this service has no rollout: add `steps` (canary) or `analysis` (blue-green, red-black), or remove `notify`",
            );
            return None;
        }
        self.webhooks(hooks, true)
    }

    fn strategy_loc(&self, raw: &RawService, name_loc: &Location) -> Location {
        raw.strategy
            .as_ref()
            .map(|s| s.referenced)
            .or(raw.active.as_ref().map(|a| a.referenced))
            .unwrap_or(*name_loc)
    }

    /// The strategy, and the mirror a shadow strategy brings with it.
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per strategy, each a few checks; read as the strategy table of the README"
    )]
    fn strategy(
        &mut self,
        name: &str,
        name_loc: &Location,
        raw: &RawService,
        refs: &VersionRefs<'_>,
    ) -> Option<(Strategy, Option<(Mirror, Location)>)> {
        let raw_strategy = match (&raw.active, &raw.strategy) {
            (Some(active), None) => {
                let active = self.version_ref(active, "active", refs)?;
                return Some((
                    Strategy::BlueGreen {
                        active,
                        preview: None,
                        analysis: None,
                    },
                    None,
                ));
            }
            (None, Some(s)) => s,
            (Some(active), Some(_)) => {
                let msg = format!(
                    "service \"{name}\" has both `active` and `strategy`: `active: v` is short for `strategy: {{ blue-green: {{ active: v }} }}`; keep one"
                );
                self.at(&active.referenced, msg);
                return None;
            }
            (None, None) => {
                let msg = format!(
                    "service \"{name}\" does not say which version gets traffic: add `active: <version>` or a `strategy` (versions are: {})",
                    list_or_none(refs.names)
                );
                self.at(name_loc, msg);
                return None;
            }
        };
        let strategy = match &raw_strategy.value {
            RawStrategy::BlueGreen(bg) => {
                let active = self.version_ref(&bg.active, "strategy.blue-green.active", refs);
                let preview = self.preview(bg.preview.as_ref());
                let analysis = self.analysis(bg.analysis.as_ref(), Some(DEFAULT_WINDOW));
                if let Some(b) = before_switch(bg.analysis.as_ref())
                    && bg.preview.is_none()
                {
                    self.at(
                        b,
                        "`before_switch` watches the new version's preview traffic: add `preview: {}` to the blue-green strategy (requests with `x-cutover-preview: <version>` reach it), or remove `before_switch`",
                    );
                    return None;
                }
                Strategy::BlueGreen {
                    active: active?,
                    preview,
                    analysis: analysis?,
                }
            }
            RawStrategy::RedBlack(rb) => {
                let active = self.version_ref(&rb.active, "strategy.red-black.active", refs);
                let grace = self.duration_or(rb.grace.as_ref(), "grace", DEFAULT_GRACE);
                let analysis = self.analysis(rb.analysis.as_ref(), Some(DEFAULT_WINDOW));
                if let Some(b) = before_switch(rb.analysis.as_ref()) {
                    self.at(
                        b,
                        "`before_switch` is for blue-green with `preview`: red-black deploys only the active version, so a new one has no traffic to watch before the switch",
                    );
                    return None;
                }
                Strategy::RedBlack {
                    active: active?,
                    grace: grace?,
                    analysis: analysis?,
                }
            }
            RawStrategy::Canary(c) => {
                let stable = self.version_ref(&c.stable, "strategy.canary.stable", refs);
                let canary = self.version_ref(&c.canary, "strategy.canary.canary", refs);
                let rollout = self.rollout(c, &raw_strategy.referenced);
                let sticky = match &c.sticky {
                    None => None,
                    Some(s) => Some(Sticky {
                        cookie: match &s.value.cookie {
                            Some(cookie) => self.token(cookie, "cookie")?,
                            None => format!("cutover-{name}"),
                        },
                        ttl: self.duration_or(s.value.ttl.as_ref(), "ttl", DEFAULT_STICKY_TTL)?,
                    }),
                };
                let (stable, canary, (weight, rollout)) = (stable?, canary?, rollout?);
                if stable == canary {
                    let msg = format!(
                        "the canary of service \"{name}\" is its stable version \"{stable}\": name two different versions"
                    );
                    self.at(&c.canary.referenced, msg);
                    return None;
                }
                Strategy::Canary {
                    stable,
                    canary,
                    weight,
                    sticky,
                    rollout,
                }
            }
            RawStrategy::Shadow(sh) => {
                let primary = self.version_ref(&sh.primary, "strategy.shadow.primary", refs)?;
                let version = self.version_ref(&sh.mirror, "strategy.shadow.mirror", refs)?;
                let percent = self.percent_or(
                    sh.percent.as_ref(),
                    "strategy.shadow.percent",
                    Percent::from_ppm(Percent::MILLION),
                )?;
                return Some((
                    Strategy::Shadow { primary },
                    Some((Mirror { version, percent }, sh.mirror.referenced)),
                ));
            }
        };
        Some((strategy, None))
    }

    /// A canary's weight: a manual `weight`, or the first of `steps` with the rollout.
    #[allow(
        clippy::too_many_lines,
        reason = "the rollout keys in the order the README documents them"
    )]
    fn rollout(
        &mut self,
        c: &RawCanary,
        strategy_loc: &Location,
    ) -> Option<(Percent, Option<Rollout>)> {
        let steps = match (&c.weight, &c.steps) {
            (Some(weight), None) => {
                for (key, loc) in [
                    ("interval", c.interval.as_ref().map(|i| &i.referenced)),
                    ("analysis", c.analysis.as_ref().map(|a| &a.referenced)),
                    ("confirm", c.confirm.first().map(|w| &w.referenced)),
                    ("pre_rollout", c.pre_rollout.first().map(|w| &w.referenced)),
                ] {
                    if let Some(loc) = loc {
                        let msg = format!(
                            "`{key}` belongs to an automated rollout: give `steps` instead of `weight`, or remove `{key}`"
                        );
                        self.at(loc, msg);
                    }
                }
                let weight = self.percent(weight, "strategy.canary.weight")?;
                return Some((weight, None));
            }
            (None, Some(steps)) => steps,
            (Some(_), Some(steps)) => {
                self.at(
                    &steps.referenced,
                    "give either `weight` (a manual canary) or `steps` (an automated rollout), not both",
                );
                return None;
            }
            (None, None) => {
                self.at(
                    strategy_loc,
                    "the canary needs `weight` (a manual canary, e.g. `weight: 10`) or `steps` (an automated rollout, e.g. `steps: [5, 25, 50, 100]`)",
                );
                return None;
            }
        };
        let interval = self.duration_or(c.interval.as_ref(), "interval", DEFAULT_STEP_INTERVAL);
        let analysis = self.analysis(c.analysis.as_ref(), None);
        if let Some(b) = before_switch(c.analysis.as_ref()) {
            self.at(
                b,
                "`before_switch` is for blue-green with `preview`; a canary's first step is its check before more traffic",
            );
            return None;
        }
        if steps.value.is_empty() {
            self.at(&steps.referenced, "`steps` needs at least one step");
            return None;
        }
        if steps.value.len() > MAX_STEPS {
            let msg = format!("at most {MAX_STEPS} steps, found {}", steps.value.len());
            self.at(&steps.referenced, msg);
            return None;
        }
        let mut out: Vec<Step> = Vec::new();
        let mut ok = true;
        for step in &steps.value {
            let Some((kind, pause)) = self.step(step, interval) else {
                ok = false;
                continue;
            };
            let previous = out.last().map(|s| &s.kind);
            match (&kind, previous) {
                (StepKind::Weight(w), _) if w.ppm() == 0 => {
                    self.at(
                        &step.referenced,
                        "a step's weight must be above 0 (a rollout starts at its first step)",
                    );
                    ok = false;
                }
                (StepKind::Mirror(w), _) if w.ppm() == 0 => {
                    self.at(
                        &step.referenced,
                        "a mirror step copies more than 0% of the requests to the canary",
                    );
                    ok = false;
                }
                (StepKind::Weight(weight), Some(StepKind::Weight(previous)))
                    if previous >= weight =>
                {
                    let msg = format!("steps must rise: {weight} comes after {previous}");
                    self.at(&step.referenced, msg);
                    ok = false;
                }
                (StepKind::Mirror(_) | StepKind::Match(_), Some(StepKind::Weight(previous))) => {
                    let msg = format!(
                        "a {} step comes after the weight {previous}: mirror and match steps come first, before any user gets the canary's answers by weight",
                        if matches!(kind, StepKind::Mirror(_)) {
                            "mirror"
                        } else {
                            "match"
                        }
                    );
                    self.at(&step.referenced, msg);
                    ok = false;
                }
                (_, _) if out.iter().any(|s| s.kind == kind) => {
                    let msg = format!("the step {kind} is listed twice");
                    self.at(&step.referenced, msg);
                    ok = false;
                }
                _ => {}
            }
            match pause {
                Some(pause) => out.push(Step { kind, pause }),
                None => ok = false,
            }
        }
        let analysis = analysis?;
        // Every step must be able to take its time before the deadline.
        if let (Some(deadline), Some(raw)) = (
            analysis.as_ref().and_then(|a| a.progress_deadline),
            c.analysis
                .as_ref()
                .and_then(|a| a.value.progress_deadline.as_ref()),
        ) && let Some(step) = out.iter().find(|s| s.pause >= deadline)
        {
            let msg = format!(
                "`progress_deadline` {} is not longer than the step at {} ({}): that step would always roll back; make it longer",
                humantime::format_duration(deadline),
                step.kind,
                humantime::format_duration(step.pause)
            );
            self.at(&raw.referenced, msg);
            ok = false;
        }
        if !ok {
            return None;
        }
        let confirm = self.webhooks(&c.confirm, false);
        let pre_rollout = self.webhooks(&c.pre_rollout, false);
        let (confirm, pre_rollout) = (confirm?, pre_rollout?);
        Some((
            Percent::from_ppm(out[0].kind.weight_ppm()).expect("a step's weight is a percent"),
            Some(Rollout {
                steps: out,
                interval: interval?,
                analysis,
                confirm,
                pre_rollout,
            }),
        ))
    }

    /// An analysis; `window` is `Some(default)` for blue-green and red-black, where it applies,
    /// and `None` for a canary, where it does not. `Some(None)` when absent.
    fn analysis(
        &mut self,
        raw: Option<&Spanned<RawAnalysis>>,
        window: Option<Duration>,
    ) -> Option<Option<Analysis>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let a = &raw.value;
        let canary = window.is_none();
        let interval = self.duration_or(
            a.interval.as_ref(),
            "analysis.interval",
            DEFAULT_CHECK_INTERVAL,
        );
        let max_error_rate = match &a.max_error_rate {
            Some(p) => self.percent(p, "analysis.max_error_rate").map(Some),
            None => Some(None),
        };
        let max_p99_latency = match &a.max_p99_latency {
            Some(d) => self.duration(d, "analysis.max_p99_latency").map(Some),
            None => Some(None),
        };
        let max_wait = match &a.max_wait {
            Some(d) => self.duration(d, "analysis.max_wait").map(Some),
            None => Some(None),
        };
        let failure_limit = match &a.failure_limit {
            Some(n) if n.value == 0 => {
                self.at(&n.referenced, "`failure_limit` must be at least 1");
                None
            }
            Some(n) => Some(n.value),
            None => Some(DEFAULT_FAILURE_LIMIT),
        };
        let window = match (window, &a.window) {
            (Some(default), w) => self.duration_or(w.as_ref(), "analysis.window", default),
            (None, Some(w)) => {
                self.at(
                    &w.referenced,
                    "`window` is for blue-green and red-black analysis (how long a new version is watched); a canary's analysis runs through its steps",
                );
                None
            }
            (None, None) => Some(Duration::ZERO),
        };
        let webhooks = self.webhooks(&a.webhooks, false);
        let before_switch = match &a.before_switch {
            Some(d) => self.duration(d, "analysis.before_switch").map(Some),
            None => Some(None),
        };
        let baseline = self.baseline_limits(a, canary);
        let progress_deadline = match &a.progress_deadline {
            Some(d) => self.duration(d, "analysis.progress_deadline").map(Some),
            None => Some(None),
        };
        // A switch's time is its window (and its check before the switch): the deadline must
        // leave room for it. A canary's steps are checked where they are read.
        if let (Some(Some(deadline)), Some(w), Some(d)) =
            (progress_deadline, window, &a.progress_deadline)
            && !canary
        {
            let longest = w.max(before_switch.flatten().unwrap_or(Duration::ZERO));
            if deadline <= longest {
                let msg = format!(
                    "`progress_deadline` {} is not longer than the switch's {} watch: every switch would roll back; make it longer",
                    humantime::format_duration(deadline),
                    humantime::format_duration(longest)
                );
                self.at(&d.referenced, msg);
            }
        }
        let analysis = Analysis {
            interval: interval?,
            max_error_rate: max_error_rate?,
            max_p99_latency: max_p99_latency?,
            min_requests: a
                .min_requests
                .as_ref()
                .map_or(DEFAULT_MIN_REQUESTS, |n| n.value),
            failure_limit: failure_limit?,
            max_wait: max_wait?,
            window: window?,
            before_switch: before_switch?,
            baseline: baseline?,
            progress_deadline: progress_deadline?,
            webhooks: webhooks?,
        };
        Some(Some(analysis))
    }

    /// `max_error_rate_increase`, `max_p99_ratio` and `confidence`, which compare a canary with
    /// stable: `Some(None)` when absent.
    fn baseline_limits(&mut self, a: &RawAnalysis, canary: bool) -> Option<Option<BaselineLimits>> {
        let keys = [
            (
                "max_error_rate_increase",
                a.max_error_rate_increase.as_ref(),
            ),
            ("max_p99_ratio", a.max_p99_ratio.as_ref()),
            ("confidence", a.confidence.as_ref()),
        ];
        let given: Vec<(&str, &Spanned<Scalar>)> = keys
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let Some((first, at)) = given.first().copied() else {
            return Some(None);
        };
        if !canary {
            let msg = format!(
                "`{first}` compares a canary with stable in the same window: it is for a canary's analysis (after a blue-green or red-black switch the old version gets no requests to compare with)"
            );
            self.at(&at.referenced, msg);
            return None;
        }
        let max_error_rate_increase = match &a.max_error_rate_increase {
            Some(p) => self
                .percent(p, "analysis.max_error_rate_increase")
                .map(Some),
            None => Some(None),
        };
        let max_p99_ratio_milli = match &a.max_p99_ratio {
            Some(r) => match r.value.0.trim().parse::<f64>() {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "within 1..=1000 here"
                )]
                Ok(x) if (1.0..=1000.0).contains(&x) => Some(Some((x * 1000.0).round() as u32)),
                _ => {
                    let msg = format!(
                        "invalid `max_p99_ratio` \"{}\": write how many times stable's p99 the canary's may reach, a number from 1 to 1000, e.g. 1.5",
                        r.value.0
                    );
                    self.at(&r.referenced, msg);
                    None
                }
            },
            None => Some(None),
        };
        let confidence = match &a.confidence {
            Some(c) => match self.percent(c, "analysis.confidence") {
                Some(p) if p.as_f64() >= 50.0 && p.as_f64() < 100.0 => Some(p),
                Some(p) => {
                    let msg = format!(
                        "`confidence` {p} is out of range: write at least 50% and below 100%, e.g. 95% or 99%"
                    );
                    self.at(&c.referenced, msg);
                    None
                }
                None => None,
            },
            None => Percent::parse("95"),
        };
        let (max_error_rate_increase, max_p99_ratio_milli, confidence) =
            (max_error_rate_increase?, max_p99_ratio_milli?, confidence?);
        if max_error_rate_increase.is_none() && max_p99_ratio_milli.is_none() {
            self.at(
                &at.referenced,
                "`confidence` applies to `max_error_rate_increase` and `max_p99_ratio`: give one of them, or remove `confidence`",
            );
            return None;
        }
        Some(Some(BaselineLimits {
            max_error_rate_increase,
            max_p99_ratio_milli,
            confidence,
        }))
    }

    /// Webhooks (`analysis.webhooks`, `notify`): `http://` URLs with a timeout each; a format
    /// only where they are told (`notify`), not asked.
    fn webhooks(&mut self, raw: &[Spanned<RawWebhook>], notify: bool) -> Option<Vec<Webhook>> {
        let mut webhooks = Vec::new();
        let mut ok = true;
        for w in raw {
            let url = w.value.url.value.trim();
            let valid = url
                .parse::<http::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
            if !valid {
                let msg = format!(
                    "invalid webhook URL \"{url}\": write an http:// URL, e.g. http://127.0.0.1:9000/check"
                );
                self.at(&w.value.url.referenced, msg);
                ok = false;
                continue;
            }
            let format = match &w.value.format {
                None => Some(WebhookFormat::Json),
                Some(f) if !notify => {
                    self.at(
                        &f.referenced,
                        "`format` is for `notify` webhooks: a webhook that is asked (a check's, `confirm`, `pre_rollout`) gets the JSON description and answers it",
                    );
                    None
                }
                Some(f) => match f.value.trim() {
                    "json" => Some(WebhookFormat::Json),
                    "slack" => Some(WebhookFormat::Slack),
                    other => {
                        let msg = format!(
                            "unknown webhook format \"{other}\": write `json` (the event as JSON) or `slack` (a text line for Slack or Mattermost)"
                        );
                        self.at(&f.referenced, msg);
                        None
                    }
                },
            };
            match (
                self.duration_or(w.value.timeout.as_ref(), "timeout", DEFAULT_WEBHOOK_TIMEOUT),
                format,
            ) {
                (Some(timeout), Some(format)) => webhooks.push(Webhook {
                    url: url.to_owned(),
                    timeout,
                    format,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(webhooks)
    }

    fn preview(&mut self, raw: Option<&Spanned<RawPreview>>) -> Option<Preview> {
        let raw = raw?;
        let header = match &raw.value.header {
            Some(h) => self.token(h, "header")?.to_ascii_lowercase(),
            None => DEFAULT_PREVIEW_HEADER.to_owned(),
        };
        Some(Preview { header })
    }

    /// One rollout step and its time (`None` when the time is invalid, already reported).
    fn step(
        &mut self,
        step: &Spanned<RawStep>,
        interval: Option<Duration>,
    ) -> Option<(StepKind, Option<Duration>)> {
        match &step.value {
            RawStep::Weight(w) => {
                let at = Spanned {
                    value: w.clone(),
                    referenced: step.referenced,
                    defined: step.defined,
                };
                Some((StepKind::Weight(self.percent(&at, "steps")?), interval))
            }
            RawStep::WithPause(m) => {
                let pause = match &m.pause {
                    Some(p) => self.duration(p, "steps[].pause"),
                    None => interval,
                };
                let kind = match (&m.weight, &m.mirror, &m.matcher) {
                    (Some(w), None, None) => StepKind::Weight(self.percent(w, "steps[].weight")?),
                    (None, Some(p), None) => StepKind::Mirror(self.percent(p, "steps[].mirror")?),
                    (None, None, Some(c)) => StepKind::Match(self.conditions(c, "a match step")?),
                    _ => {
                        self.at(
                            &step.referenced,
                            "a step gives exactly one of `weight` (a share of requests), `mirror` (a share copied to the canary) or `match` (only matching requests, e.g. `match: { header: { x-tester: \"1\" } }`)",
                        );
                        return None;
                    }
                };
                Some((kind, pause))
            }
        }
    }

    fn rule(&mut self, raw: &RawRule, refs: &VersionRefs<'_>) -> Option<Rule> {
        let version = self.version_ref(&raw.version, "rules[].version", refs);
        let conditions = self.conditions(&raw.matcher, "a rule");
        Some(Rule {
            conditions: conditions?,
            version: version?,
        })
    }

    /// Conditions that must all hold: at least one.
    fn conditions(&mut self, raw: &Spanned<RawRuleMatch>, what: &str) -> Option<Vec<Condition>> {
        let m = &raw.value;
        let mut conditions = Vec::new();
        for (k, v) in &m.header.0 {
            let name = self.token(k, "header")?.to_ascii_lowercase();
            conditions.push(Condition::Header {
                name,
                value: v.value.0.clone(),
            });
        }
        for (k, v) in &m.cookie.0 {
            let name = self.token(k, "cookie")?;
            conditions.push(Condition::Cookie {
                name,
                value: v.value.0.clone(),
            });
        }
        for (k, v) in &m.query.0 {
            conditions.push(Condition::Query {
                name: k.value.clone(),
                value: v.value.0.clone(),
            });
        }
        if let Some(p) = &m.prefix {
            conditions.push(Condition::Prefix(self.path(p, "prefix")?));
        }
        if conditions.is_empty() {
            let msg = format!(
                "{what} needs at least one `header`, `cookie`, `query` or `prefix` to match"
            );
            self.at(&raw.referenced, msg);
            return None;
        }
        Some(conditions)
    }

    fn endpoints(
        &mut self,
        service: &str,
        version: &str,
        raw: &[Spanned<RawEndpoint>],
    ) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        let mut seen = BTreeSet::new();
        for e in raw {
            let text = &e.value.address;
            match text.parse::<EndpointAddress>() {
                Ok(address) => {
                    if !seen.insert(address.clone()) {
                        let msg = format!(
                            "endpoint {address} is listed twice in services.{service}.versions.{version}"
                        );
                        self.at(&e.referenced, msg);
                    }
                    if e.value.weight == Some(0) {
                        let msg = format!(
                            "endpoint {address} has weight 0: weights start at 1 (use `drain: true` to stop new requests)"
                        );
                        self.at(&e.referenced, msg);
                    }
                    endpoints.push(Endpoint {
                        address,
                        weight: e.value.weight,
                        drain: e.value.drain,
                    });
                }
                Err(AddressError::PortZero) => {
                    let msg = format!(
                        "endpoint \"{text}\" has port 0: give the port the version listens on"
                    );
                    self.at(&e.referenced, msg);
                }
                Err(err) => {
                    let msg = format!(
                        "invalid endpoint \"{text}\" in services.{service}.versions.{version}: {err}"
                    );
                    self.at(&e.referenced, msg);
                }
            }
        }
        endpoints
    }

    /// A reference to a version of the service.
    fn version_ref(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        refs: &VersionRefs<'_>,
    ) -> Option<String> {
        if refs.names.contains(&v.value.as_str()) {
            return Some(v.value.clone());
        }
        let mut msg = format!(
            "unknown version \"{}\" in services.{}.{key} (versions are: {})",
            v.value,
            refs.service,
            list_or_none(refs.names)
        );
        if let Some(best) = closest(&v.value, refs.names.iter().copied()) {
            msg.push_str(&format!("; did you mean \"{best}\"?"));
        }
        self.at(&v.referenced, msg);
        None
    }

    pub(super) fn duration(&mut self, d: &Spanned<String>, key: &str) -> Option<Duration> {
        match humantime::parse_duration(d.value.trim()) {
            Ok(v) if !v.is_zero() => Some(v),
            Ok(_) => {
                self.at(&d.referenced, format!("`{key}` must be longer than 0"));
                None
            }
            Err(_) => {
                let msg = format!(
                    "invalid duration \"{}\" for `{key}`: write e.g. 500ms, 5s, 2m or 1h",
                    d.value
                );
                self.at(&d.referenced, msg);
                None
            }
        }
    }

    pub(super) fn duration_or(
        &mut self,
        d: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        match d {
            Some(d) => self.duration(d, key),
            None => Some(default),
        }
    }

    fn percent(&mut self, p: &Spanned<Scalar>, key: &str) -> Option<Percent> {
        let parsed = Percent::parse(&p.value.0);
        if parsed.is_none() {
            let msg = format!(
                "invalid percentage \"{}\" for `{key}`: write a number from 0 to 100 with at most 4 decimals, e.g. 10, 0.5 or 25%",
                p.value.0
            );
            self.at(&p.referenced, msg);
        }
        parsed
    }

    pub(super) fn percent_or(
        &mut self,
        p: Option<&Spanned<Scalar>>,
        key: &str,
        default: Option<Percent>,
    ) -> Option<Percent> {
        match p {
            Some(p) => self.percent(p, key),
            None => default,
        }
    }

    /// An HTTP token (header or cookie name).
    pub(super) fn token(&mut self, t: &Spanned<String>, what: &str) -> Option<String> {
        let valid = !t.value.is_empty()
            && t.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if valid {
            Some(t.value.clone())
        } else {
            let msg = format!(
                "invalid {what} name \"{}\": use letters, digits and - _ . only",
                t.value
            );
            self.at(&t.referenced, msg);
            None
        }
    }
}

/// The Envoy route a canary may have beyond one per version: a sticky canary's third, or a
/// match step's.
fn canary_extra(s: &RawService) -> usize {
    match s.strategy.as_ref().map(|s| &s.value) {
        Some(RawStrategy::Canary(c)) => usize::from(
            c.sticky.is_some()
                || c.steps
                    .iter()
                    .flat_map(|s| &s.value)
                    .any(|s| matches!(&s.value, RawStep::WithPause(m) if m.matcher.is_some())),
        ),
        _ => 0,
    }
}

/// The versions a service's strategy, mirror and rules may refer to.
struct VersionRefs<'a> {
    service: &'a str,
    names: &'a [&'a str],
}

const DEFAULT_PREVIEW_HEADER: &str = "x-cutover-preview";
const DEFAULT_GRACE: Duration = Duration::from_secs(300);
const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_STEP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_MIN_REQUESTS: u64 = 20;
const DEFAULT_FAILURE_LIMIT: u32 = 2;
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// More would be a typo more often than a plan.
const MAX_STEPS: usize = 50;

pub(super) fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Whether some YAML reader takes `name`, unquoted, for something other than text:
/// `Some("a number")`, `Some("a boolean")` or `Some("null")`. It covers YAML 1.2's core schema
/// (editors), YAML 1.1 (`yes`, `on`, `1_000`, `0b101`, as cutover's own parser and many tools
/// read untyped values) and the case variants some readers accept, so a name that passes is
/// text to all of them. The schema's `Name` (in [`super::raw`]) refuses the same names with a
/// pattern; a test checks that they agree.
pub(super) fn yaml_non_string(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" => return Some("a boolean"),
        "null" | "~" => return Some("null"),
        _ => {}
    }
    let unsigned = lower.strip_prefix(['-', '+']).unwrap_or(&lower);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let digits_ = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    // 0x1F, 0o17, 0b101, with underscores anywhere after the prefix.
    let radix = || {
        ["0x", "0o", "0b"].iter().any(|p| {
            unsigned.strip_prefix(p).is_some_and(|d| {
                !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_')
            })
        })
    };
    // 12, 1_000, 1.5, 1., .5, 1e3, 1.5e-3.
    let decimal = || {
        let (mantissa, exponent) = match unsigned.split_once('e') {
            Some((m, e)) => (m, Some(e)),
            None => (unsigned, None),
        };
        let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
        let mantissa_ok = match mantissa.split_once('.') {
            None => mantissa.starts_with(|c: char| c.is_ascii_digit()) && digits_(mantissa),
            Some(("", frac)) => frac.starts_with(|c: char| c.is_ascii_digit()) && digits_(frac),
            Some((int, frac)) => {
                int.starts_with(|c: char| c.is_ascii_digit()) && digits_(int) && digits_(frac)
            }
        };
        exponent_ok && mantissa_ok
    };
    let special = matches!(unsigned, ".inf" | ".nan");
    (special || radix() || decimal()).then_some("a number")
}

/// Whether two listener addresses cannot both be bound: same port and the same IP, or one of
/// them is the unspecified address of the same family.
fn clashes(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Where an analysis sets `before_switch`, if it does.
fn before_switch(analysis: Option<&Spanned<RawAnalysis>>) -> Option<&Location> {
    analysis?
        .value
        .before_switch
        .as_ref()
        .map(|b| &b.referenced)
}

/// What a service asks for that the listeners it is behind cannot do, refused at the key that
/// asks for it: `service "<name>" <behind>, which <what>; <instead>`.
pub(super) struct Refusals<'a> {
    pub(super) v: &'a mut Validator,
    pub(super) service: &'a str,
    /// Who serves the service, e.g. `is behind the TCP listener "db"`.
    pub(super) behind: String,
}

impl Refusals<'_> {
    pub(super) fn refuse(&mut self, loc: &Location, what: &str, instead: &str) {
        let msg = format!(
            "service \"{}\" {}, which {what}; {instead}",
            self.service, self.behind
        );
        self.v.at(loc, msg);
    }
}
