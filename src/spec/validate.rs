//! Turns a [`RawSpec`] into a [`Spec`], collecting every problem with its position.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde_saphyr::{Location, Spanned};

use super::raw::{Entries, RawListener, RawService, RawSpec};
use super::{
    Endpoint, Listener, PathMatch, Problem, Route, Service, Spec, SpecError, Strategy, Version,
};

/// Parses and validates a deployment file. `file` is only used in messages.
pub fn parse(file: &str, text: &str) -> Result<Spec, SpecError> {
    let raw: RawSpec = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            return Err(SpecError {
                file: file.to_owned(),
                problems: vec![syntax_problem(&err)],
            });
        }
    };
    let mut v = Validator::default();
    let spec = v.spec(&raw);
    if v.problems.is_empty() {
        Ok(spec)
    } else {
        v.problems.sort_by_key(|p| (p.line, p.column));
        Err(SpecError {
            file: file.to_owned(),
            problems: v.problems,
        })
    }
}

/// A YAML or schema error from the parser, worded for the person editing the file.
fn syntax_problem(err: &serde_saphyr::Error) -> Problem {
    let (line, column) = err
        .location()
        .map(|l| (l.line().max(1), l.column().max(1)))
        .unwrap_or((1, 1));
    let message = match err.without_snippet() {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => unknown_key(field, expected),
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key `{key}`: each key may appear only once in a mapping")
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            format!("missing key `{field}`")
        }
        other => {
            let mut message = other.to_string();
            // The parser appends its own position; ours leads the line already.
            if let Some(idx) = message.rfind(" at line ") {
                message.truncate(idx);
            }
            message
        }
    };
    Problem {
        line,
        column,
        message,
    }
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
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn at(&mut self, loc: &Location, message: impl Into<String>) {
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
                for (addr, loc, other) in &binds {
                    if clashes(addr, &listener.address) {
                        let msg = format!(
                            "listener \"{}\" binds {} which clashes with listener \"{}\" ({} at line {}); give each listener its own port",
                            listener.name,
                            listener.address,
                            other,
                            addr,
                            loc.line()
                        );
                        self.at(&l.value.address.referenced, msg);
                    }
                }
                binds.push((
                    listener.address,
                    l.value.address.referenced,
                    &l.value.name.value,
                ));
                listeners.push(listener);
            }
        }
        Spec {
            listeners,
            services,
        }
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
        }
    }

    fn listener(
        &mut self,
        raw: &RawListener,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
    ) -> Option<Listener> {
        let name = &raw.name.value;
        let address = match raw.address.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let msg = format!(
                    "invalid address \"{}\" for listener \"{name}\": write IP:PORT, e.g. 127.0.0.1:10000 or [::1]:10000",
                    raw.address.value
                );
                self.at(&raw.address.referenced, msg);
                None
            }
        };
        if raw.routes.is_empty() {
            let msg = format!(
                "listener \"{name}\" has no routes: add one under `routes:` that names a service"
            );
            self.at(&raw.name.referenced, msg);
        }
        let mut routes = Vec::new();
        for r in &raw.routes {
            let m = &r.value.matcher;
            let matcher = match (&m.value.prefix, &m.value.path) {
                (Some(p), None) => self.path(p, "prefix").map(PathMatch::Prefix),
                (None, Some(p)) => self.path(p, "path").map(PathMatch::Exact),
                (Some(_), Some(_)) => {
                    self.at(
                        &m.referenced,
                        "a route matches on either `prefix` or `path`, not both",
                    );
                    None
                }
                (None, None) => {
                    self.at(
                        &m.referenced,
                        "a route needs a `prefix` (e.g. `prefix: /`) or an exact `path`",
                    );
                    None
                }
            };
            let service = &r.value.service;
            let known = services.contains_key(&service.value)
                || spec
                    .services
                    .0
                    .iter()
                    .any(|(k, _)| k.value == service.value);
            if !known {
                let names: Vec<&str> = spec
                    .services
                    .0
                    .iter()
                    .map(|(k, _)| k.value.as_str())
                    .collect();
                let mut msg = format!(
                    "unknown service \"{}\" in route of listener \"{name}\" (services are: {})",
                    service.value,
                    list_or_none(&names)
                );
                if let Some(best) = closest(&service.value, names.iter().copied()) {
                    msg.push_str(&format!("; did you mean \"{best}\"?"));
                }
                self.at(&service.referenced, msg);
            }
            if let Some(matcher) = matcher {
                routes.push(Route {
                    matcher,
                    service: service.value.clone(),
                });
            }
        }
        Some(Listener {
            name: name.clone(),
            address: address?,
            routes,
        })
    }

    fn path(&mut self, p: &Spanned<String>, key: &str) -> Option<String> {
        if p.value.starts_with('/') {
            Some(p.value.clone())
        } else {
            let msg = format!("`{key}` must start with '/', got \"{}\"", p.value);
            self.at(&p.referenced, msg);
            None
        }
    }

    fn services(&mut self, raw: &Entries<Spanned<RawService>>) -> BTreeMap<String, Service> {
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
            let mut endpoints = Vec::new();
            let mut seen = BTreeSet::new();
            for e in &v.value.endpoints {
                match e.value.parse::<SocketAddr>() {
                    Ok(address) if address.port() == 0 => {
                        let msg = format!(
                            "endpoint \"{}\" has port 0: give the port the version listens on",
                            e.value
                        );
                        self.at(&e.referenced, msg);
                    }
                    Ok(address) => {
                        if !seen.insert(address) {
                            let msg = format!(
                                "endpoint {address} is listed twice in services.{name}.versions.{}",
                                vname.value
                            );
                            self.at(&e.referenced, msg);
                        }
                        endpoints.push(Endpoint { address });
                    }
                    Err(_) => {
                        let msg = format!(
                            "invalid endpoint \"{}\" in services.{name}.versions.{}: write IP:PORT, e.g. 127.0.0.1:8081",
                            e.value, vname.value
                        );
                        self.at(&e.referenced, msg);
                    }
                }
            }
            versions.insert(vname.value.clone(), Version { endpoints });
        }
        let names: Vec<&str> = raw_versions
            .value
            .0
            .iter()
            .map(|(k, _)| k.value.as_str())
            .collect();
        let strategy = match &raw.active {
            None => {
                let msg = format!(
                    "service \"{name}\" does not say which version gets traffic: add `active: <version>` (versions are: {})",
                    list_or_none(&names)
                );
                self.at(name_loc, msg);
                return None;
            }
            Some(active) => {
                if !names.contains(&active.value.as_str()) {
                    let mut msg = format!(
                        "unknown version \"{}\" in services.{name}.active (versions are: {})",
                        active.value,
                        list_or_none(&names)
                    );
                    if let Some(best) = closest(&active.value, names.iter().copied()) {
                        msg.push_str(&format!("; did you mean \"{best}\"?"));
                    }
                    self.at(&active.referenced, msg);
                    return None;
                }
                Strategy::Active {
                    version: active.value.clone(),
                }
            }
        };
        for serving in strategy.serving_versions() {
            if versions
                .get(serving)
                .is_some_and(|v: &Version| v.endpoints.is_empty())
            {
                let loc = raw
                    .active
                    .as_ref()
                    .map(|a| a.referenced)
                    .unwrap_or(*name_loc);
                let msg = format!(
                    "version \"{serving}\" of service \"{name}\" gets traffic but has no endpoints: add endpoints or send traffic to another version"
                );
                self.at(&loc, msg);
            }
        }
        Some(Service { versions, strategy })
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Whether two listener addresses cannot both be bound: same port and the same IP, or one of
/// them is the unspecified address of the same family.
fn clashes(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
