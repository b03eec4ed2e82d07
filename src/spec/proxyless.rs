//! What a service routed by a proxyless listener may ask for: only what gRPC's own xDS
//! clients do with the resources cutover sends (gRFC A27, A28, A37, A39, A44, A50).
//!
//! gRPC clients ignore most fields they do not implement instead of rejecting them, so a file
//! that asks for such a thing would be served and silently do nothing for those clients. This
//! check refuses it instead, each problem at the key that asks for it. It reads the raw file
//! (for positions) and the validated listeners (to know which services proxyless clients use).

use serde_saphyr::Location;

use super::raw::{
    RawLoadBalancing, RawProtocol, RawRuleMatch, RawService, RawSpec, RawStep, RawStrategy,
};
use super::validate::{Refusals, Validator};
use super::{EndpointAddress, ListenerKind, Spec};

/// The `retry_on` conditions gRPC clients act on (gRFC A44); they ignore the others.
pub const GRPC_RETRY_ON: &[&str] = &[
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl Validator {
    /// Every service that a proxyless listener routes to, checked against what gRPC clients do;
    /// and no client gets listeners of both kinds.
    pub(super) fn proxyless(&mut self, raw: &RawSpec, spec: &Spec) {
        self.kinds_apart(raw, spec);
        for (name, service) in &raw.services.0 {
            let Some(listener) = spec.proxyless_routing(&name.value).next() else {
                continue;
            };
            let mut check = Refusals {
                v: self,
                service: &name.value,
                behind: format!("is used by gRPC clients (proxyless listener \"{listener}\")"),
            };
            check.proxyless_service(&service.value);
        }
    }
}

impl Validator {
    /// Envoy ignores an API listener it gets over LDS (it takes one only from its bootstrap)
    /// and so never holds its routes, and a gRPC client asks only for its target's listener:
    /// each client gets listeners of one kind, through `groups` when the file has both.
    fn kinds_apart(&mut self, raw: &RawSpec, spec: &Spec) {
        let kind = |name: &str| {
            spec.listeners
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.kind == ListenerKind::Proxyless)
        };
        let Some(groups) = &raw.groups else {
            let proxyless = spec
                .listeners
                .iter()
                .find(|l| l.kind == ListenerKind::Proxyless);
            let envoy = spec
                .listeners
                .iter()
                .find(|l| l.kind != ListenerKind::Proxyless);
            let (Some(p), Some(e)) = (proxyless, envoy) else {
                return;
            };
            let loc = raw
                .listeners
                .iter()
                .find(|l| l.value.name.value == p.name)
                .map_or(Location::UNKNOWN, |l| l.value.name.referenced);
            let msg = format!(
                "listener \"{}\" is for gRPC clients and \"{}\" for Envoy, and without `groups` every client gets both, which neither can use (Envoy ignores an API listener from xDS); add `groups`: one matching your Envoys with the Envoy listeners, one matching the gRPC clients' node ids with the proxyless ones",
                p.name, e.name
            );
            self.at(&loc, msg);
            return;
        };
        for g in &groups.value {
            let listeners = &g.value.listeners.value;
            let proxyless = listeners.iter().find(|l| kind(&l.value) == Some(true));
            let envoy = listeners.iter().find(|l| kind(&l.value) == Some(false));
            if let (Some(p), Some(e)) = (proxyless, envoy) {
                let msg = format!(
                    "group \"{}\" gets the proxyless listener \"{}\" and the Envoy listener \"{}\": a client uses listeners of one kind only (Envoy ignores an API listener from xDS); put them in separate groups",
                    g.value.name.value, p.value, e.value
                );
                self.at(&g.value.listeners.referenced, msg);
            }
        }
    }
}

impl Refusals<'_> {
    /// A rule's or a match step's conditions: gRPC clients match headers (metadata) and paths.
    fn proxyless_conditions(&mut self, m: &RawRuleMatch) {
        if let Some((k, _)) = m.cookie.0.first() {
            self.refuse(
                &k.referenced,
                "send no cookies",
                "match a header (gRPC metadata) instead: `header: { name: value }`",
            );
        }
        if let Some((k, _)) = m.query.0.first() {
            self.refuse(
                &k.referenced,
                "have no query string (and skip routes that match one)",
                "match a header (gRPC metadata) instead: `header: { name: value }`",
            );
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one refusal per feature gRPC clients lack, in the README's order"
    )]
    fn proxyless_service(&mut self, raw: &RawService) {
        if let Some(p) = &raw.protocol
            && !matches!(p.value, RawProtocol::Grpc)
        {
            self.refuse(
                &p.referenced,
                "speak gRPC to the endpoints themselves",
                "remove `protocol` or write `protocol: grpc`",
            );
        }
        if let Some(w) = raw.websocket.as_ref().filter(|w| w.value) {
            self.refuse(
                &w.referenced,
                "make gRPC calls, not WebSocket upgrades",
                "remove `websocket`",
            );
        }
        if let Some(t) = &raw.tls {
            self.refuse(
                &t.referenced,
                "take the TLS to endpoints from their own channel credentials, not from the \
                 cluster (they ignore its `transport_socket`)",
                "remove `tls`",
            );
        }
        let mirror = "use an Envoy listener for this service, or another strategy";
        if let Some(s) = &raw.strategy {
            match &s.value {
                RawStrategy::Shadow(_) => self.refuse(
                    &s.referenced,
                    "do not mirror requests (they ignore `request_mirror_policies`)",
                    mirror,
                ),
                RawStrategy::Canary(c) => {
                    if let Some(sticky) = &c.sticky {
                        self.refuse(
                            &sticky.referenced,
                            "keep no cookies (a sticky canary's `set-cookie` would be ignored)",
                            "remove `sticky`; a rule on a header can pin a group of callers",
                        );
                    }
                    let steps = c.steps.iter().flat_map(|s| &s.value);
                    for step in steps {
                        let RawStep::WithPause(m) = &step.value else {
                            continue;
                        };
                        if let Some(p) = &m.mirror {
                            self.refuse(
                                &p.referenced,
                                "do not mirror requests (they ignore `request_mirror_policies`)",
                                "remove the mirror step; a match step on a header can try the canary on a group of callers first",
                            );
                        }
                        if let Some(m) = &m.matcher {
                            self.proxyless_conditions(&m.value);
                        }
                    }
                }
                RawStrategy::BlueGreen(_) | RawStrategy::RedBlack(_) => {}
            }
        }
        if let Some(m) = &raw.mirror {
            self.refuse(
                &m.referenced,
                "do not mirror requests (they ignore `request_mirror_policies`)",
                "remove `mirror`, or use an Envoy listener for this service",
            );
        }
        for rule in &raw.rules {
            self.proxyless_conditions(&rule.value.matcher.value);
        }
        for (version, v) in &raw.versions.value.0 {
            for e in &v.value.endpoints {
                if e.value
                    .address
                    .parse::<EndpointAddress>()
                    .is_ok_and(|a| a.is_name())
                {
                    let msg = format!(
                        "resolve no names in a STRICT_DNS cluster (version \"{}\" has {})",
                        version.value, e.value.address
                    );
                    self.refuse(&e.referenced, &msg, "list the endpoints' IP addresses");
                }
            }
        }
        if let Some(lb) = &raw.load_balancing
            && !matches!(lb.value, RawLoadBalancing::RoundRobin)
        {
            self.refuse(
                &lb.referenced,
                "are served `round_robin` only here (the only policy tested with them)",
                "remove `load_balancing`",
            );
        }
        if let Some(h) = &raw.health_check {
            self.refuse(
                &h.referenced,
                "send no active health checks (they ignore `health_checks`)",
                "use `outlier_detection` with `success_rate` or `failure_percentage`",
            );
        }
        if let Some(o) = &raw.outlier_detection {
            let passive = "use `success_rate` or `failure_percentage` (gRFC A50)";
            if let Some(n) = &o.value.consecutive_5xx {
                self.refuse(&n.referenced, "ignore `consecutive_5xx`", passive);
            }
            if let Some(n) = &o.value.consecutive_gateway_errors {
                self.refuse(
                    &n.referenced,
                    "ignore `consecutive_gateway_errors`",
                    passive,
                );
            }
        }
        if let Some(s) = &raw.slow_start {
            self.refuse(&s.referenced, "have no slow start", "remove `slow_start`");
        }
        if let Some(t) = &raw.timeout {
            self.refuse(
                &t.referenced,
                "ignore a route's `timeout` (a call's deadline is the caller's)",
                "set a deadline on the calls, and remove `timeout`",
            );
        }
        if let Some(t) = &raw.connect_timeout {
            self.refuse(
                &t.referenced,
                "ignore a cluster's `connect_timeout`",
                "remove `connect_timeout`",
            );
        }
        if let Some(p) = &raw.panic_threshold {
            self.refuse(
                &p.referenced,
                "have no panic mode (they never send to a draining or ejected endpoint)",
                "remove `panic_threshold`",
            );
        }
        if let Some(r) = &raw.retries {
            for on in r.value.on.iter().flatten() {
                if !GRPC_RETRY_ON.contains(&on.value.as_str()) {
                    let what = format!("retry only on gRPC status codes, not on \"{}\"", on.value);
                    let instead = format!("use {}", GRPC_RETRY_ON.join(", "));
                    self.refuse(&on.referenced, &what, &instead);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{ListenerKind, parse};

    const SERVICE: &str = "\
services:
  checkout:
    versions:
      blue:  { endpoints: [127.0.0.1:8081] }
      green: { endpoints: [127.0.0.1:8082] }
      grey:  { endpoints: [127.0.0.1:8083] }
";

    fn file(listeners: &str, service_extra: &str) -> String {
        format!("listeners:\n{listeners}{SERVICE}{service_extra}")
    }

    const PROXYLESS: &str = "  - name: checkout
    proxyless: true
    routes: [{ match: { prefix: / }, service: checkout }]
";

    fn problems(text: &str) -> Vec<String> {
        match parse("deploy.yaml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn a_proxyless_listener_has_no_address() {
        let spec = parse("deploy.yaml", &file(PROXYLESS, "    active: blue\n")).unwrap();
        assert_eq!(spec.listeners[0].kind, ListenerKind::Proxyless);
        assert_eq!(
            spec.proxyless_routing("checkout").collect::<Vec<_>>(),
            ["checkout"]
        );
        let example = include_str!("../../examples/proxyless.yaml");
        parse("examples/proxyless.yaml", example).unwrap();
    }

    #[test]
    fn a_listener_is_either_an_address_or_proxyless() {
        let both = "  - name: checkout\n    address: 127.0.0.1:10000\n    proxyless: true\n    routes: [{ match: { prefix: / }, service: checkout }]\n";
        assert_eq!(
            problems(&file(both, "    active: blue\n")),
            [
                "deploy.yaml:3:14: listener \"checkout\" has both `address` and `proxyless: true`: an Envoy listener binds an address, a proxyless one is dialled by gRPC clients as xds:///checkout; keep one"
            ]
        );
        let neither = "  - name: checkout\n    proxyless: false\n    routes: [{ match: { prefix: / }, service: checkout }]\n";
        assert_eq!(
            problems(&file(neither, "    active: blue\n")),
            [
                "deploy.yaml:2:11: listener \"checkout\" needs an `address` (IP:PORT Envoy listens on, e.g. 127.0.0.1:10000), or `proxyless: true` for gRPC clients that dial xds:///checkout"
            ]
        );
    }

    #[test]
    fn what_grpc_clients_ignore_is_refused_where_it_is_asked_for() {
        let extra = "    strategy:
      canary: { stable: blue, canary: green, weight: 10, sticky: {} }
    mirror: { version: grey }
    rules:
      - match: { cookie: { beta: \"1\" } }
        version: green
      - match: { query: { beta: \"1\" } }
        version: green
    health_check: { tcp: true }
    outlier_detection: { consecutive_5xx: 3 }
    load_balancing: least_request
    timeout: 5s
    retries: { on: [unavailable, 5xx] }
";
        let p = problems(&file(PROXYLESS, extra));
        let at: Vec<&str> = p.iter().map(|p| &p[..p.find(": ").unwrap()]).collect();
        assert_eq!(
            at,
            [
                "deploy.yaml:12:66", // sticky
                "deploy.yaml:13:13", // mirror
                "deploy.yaml:15:28", // cookie
                "deploy.yaml:17:27", // query
                "deploy.yaml:19:19", // health_check
                "deploy.yaml:20:43", // consecutive_5xx
                "deploy.yaml:21:21", // load_balancing
                "deploy.yaml:22:14", // timeout
                "deploy.yaml:23:34", // 5xx
            ],
            "{p:#?}"
        );
        assert!(
            p[0].contains(
                "service \"checkout\" is used by gRPC clients (proxyless listener \"checkout\"), which keep no cookies"
            ),
            "{}",
            p[0]
        );
        assert!(p[5].contains("use `success_rate` or `failure_percentage` (gRFC A50)"));
        assert!(p[8].contains("not on \"5xx\"; use cancelled, deadline-exceeded"));

        // A rollout's mirror step and a match step on a cookie, likewise.
        let steps = "    strategy:
      canary:
        stable: blue
        canary: green
        steps: [{ mirror: 10 }, { match: { cookie: { beta: \"1\" } } }, { match: { header: { x-beta: \"1\" } } }, 100]
";
        let p = problems(&file(PROXYLESS, steps));
        let at: Vec<&str> = p.iter().map(|p| &p[..p.find(": ").unwrap()]).collect();
        assert_eq!(at, ["deploy.yaml:15:27", "deploy.yaml:15:54"], "{p:#?}");
        assert!(p[0].contains("which do not mirror requests"), "{}", p[0]);
        assert!(p[1].contains("which send no cookies"), "{}", p[1]);
    }

    #[test]
    fn shadowing_and_names_are_refused_for_grpc_clients_but_not_for_envoy() {
        let extra = "    strategy: { shadow: { primary: blue, mirror: green } }\n";
        let p = problems(&file(PROXYLESS, extra));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("deploy.yaml:11:15: service \"checkout\" is used by gRPC clients (proxyless listener \"checkout\"), which do not mirror requests"),
            "{}",
            p[0]
        );
        let envoy = "  - name: public\n    address: 127.0.0.1:10000\n    routes: [{ match: { prefix: / }, service: checkout }]\n";
        assert_eq!(problems(&file(envoy, extra)), Vec::<String>::new());

        let named =
            file(PROXYLESS, "    active: blue\n").replace("127.0.0.1:8082", "green.internal:8082");
        let p = problems(&named);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("resolve no names in a STRICT_DNS cluster (version \"green\" has green.internal:8082)"), "{}", p[0]);
    }

    #[test]
    fn envoy_and_grpc_clients_get_their_listeners_through_separate_groups() {
        let both = format!(
            "{PROXYLESS}  - name: public\n    address: 127.0.0.1:10000\n    routes: [{{ match: {{ prefix: / }}, service: checkout }}]\n"
        );
        let p = problems(&file(&both, "    active: blue\n"));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("deploy.yaml:2:11: listener \"checkout\" is for gRPC clients and \"public\" for Envoy, and without `groups` every client gets both"),
            "{}",
            p[0]
        );
        let apart = "groups:
  - { name: edge, match: { id: \"edge-*\" }, listeners: [public] }
  - { name: grpc, match: { id: \"grpc-*\" }, listeners: [checkout] }
";
        let text = format!("{}{apart}", file(&both, "    active: blue\n"));
        assert_eq!(problems(&text), Vec::<String>::new());
        let mixed = "groups:
  - { name: all, match: { id: \"*\" }, listeners: [public, checkout] }
";
        let text = format!("{}{mixed}", file(&both, "    active: blue\n"));
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].contains("group \"all\" gets the proxyless listener \"checkout\" and the Envoy listener \"public\""),
            "{}",
            p[0]
        );
    }
}
