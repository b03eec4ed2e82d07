//! TCP listeners: `tcp: <service>` on a listener makes it a TCP proxy in front of that service.
//!
//! What a TCP proxy does with a connection is pick a cluster once and copy bytes: it has no
//! requests, headers or responses. So a listener with `tcp` has nothing of HTTP's (routes,
//! hosts, a redirect, TLS termination), and the service behind it uses only what works per
//! connection: blue-green, red-black and canary weights, endpoints and their drains, health
//! checks (`tcp: true`), outlier detection (connect failures count) and analyses that count
//! connections and connect failures (no latency). This check refuses the rest, each problem at the key that asks for it. It reads the raw file (for positions) and
//! the validated listeners (to know which services TCP listeners front).

use serde_saphyr::Spanned;

use super::raw::{
    RawAnalysis, RawHashOn, RawListener, RawLoadBalancing, RawService, RawSpec, RawStep,
    RawStrategy,
};
use super::validate::{Refusals, Validator};
use super::{PathMatch, Route, RouteTarget, Service, Spec};
use std::collections::BTreeMap;

impl Validator {
    /// A listener with `tcp`: only its address and its service. Its one route names the
    /// service (see [`super::Listener::routes`]).
    pub(super) fn tcp_listener(
        &mut self,
        raw: &RawListener,
        service: &Spanned<String>,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
    ) -> Option<Vec<Route>> {
        let name = &raw.name.value;
        let http_only = [
            ("routes", raw.routes.first().map(|r| r.referenced)),
            ("hosts", raw.hosts.first().map(|h| h.referenced)),
            ("redirect", raw.redirect.as_ref().map(|r| r.referenced)),
            ("tls", raw.tls.as_ref().map(|t| t.referenced)),
        ];
        let mut fine = true;
        for (key, at) in http_only {
            if let Some(at) = at {
                let msg = format!(
                    "listener \"{name}\" is a TCP proxy (`tcp: {}`), which reads no HTTP: `{key}` \
                     needs an HTTP listener; remove `{key}`, or `tcp` and route to the service",
                    service.value
                );
                self.at(&at, msg);
                fine = false;
            }
        }
        if let Some(p) = raw.proxyless.as_ref().filter(|p| p.value) {
            let msg = format!(
                "listener \"{name}\" is a TCP proxy (`tcp`) and proxyless: gRPC clients dial \
                 HTTP/2 listeners; keep one"
            );
            self.at(&p.referenced, msg);
            fine = false;
        }
        // Reported if unknown; a known service that has problems of its own still gets the
        // checks below, so that every problem is reported at once.
        self.known_service(service, name, spec, services);
        fine.then(|| {
            vec![Route {
                matcher: PathMatch::Prefix("/".to_owned()),
                target: RouteTarget::Service {
                    name: service.value.clone(),
                    rewrite: super::Rewrite::default(),
                },
                headers: super::HeaderEdits::default(),
            }]
        })
    }

    /// Every service a TCP listener fronts, checked against what a TCP proxy does.
    pub(super) fn tcp_services(&mut self, raw: &RawSpec, spec: &Spec) {
        for (name, service) in &raw.services.0 {
            let Some(listener) = spec.tcp_fronting(&name.value).next() else {
                continue;
            };
            let mut check = Refusals {
                v: self,
                service: &name.value,
                behind: format!("is behind the TCP listener \"{listener}\""),
            };
            check.tcp_service(&service.value);
            let http = spec
                .listeners
                .iter()
                .filter(|l| !matches!(l.kind, super::ListenerKind::Tcp(_)))
                .find(|l| l.all_routes().any(|r| r.service() == Some(&name.value)));
            if let Some(http) = http {
                let msg = format!(
                    "service \"{}\" is behind the TCP listener \"{listener}\" and routed by the \
                     HTTP listener \"{}\": a service speaks one or the other; give each its own \
                     service (the same endpoints may be in both)",
                    name.value, http.name
                );
                self.at(&name.referenced, msg);
            }
        }
    }
}

impl Refusals<'_> {
    fn tcp_service(&mut self, raw: &RawService) {
        if let Some(s) = &raw.strategy {
            self.tcp_strategy(s);
        }
        self.tcp_per_request(raw);
    }

    fn tcp_strategy(&mut self, s: &Spanned<RawStrategy>) {
        match &s.value {
            RawStrategy::Shadow(_) => self.refuse(
                &s.referenced,
                "cannot copy a connection to a second version (no mirroring in a TCP proxy)",
                "use blue-green, red-black or canary",
            ),
            RawStrategy::BlueGreen(b) => {
                if let Some(p) = &b.preview {
                    self.refuse(
                        &p.referenced,
                        "reads no header to pick a preview by",
                        "remove `preview`; give the idle version a listener of its own to try it",
                    );
                }
                if let Some(a) = &b.analysis {
                    self.tcp_analysis(&a.value);
                }
            }
            RawStrategy::RedBlack(r) => {
                if let Some(a) = &r.analysis {
                    self.tcp_analysis(&a.value);
                }
            }
            RawStrategy::Canary(c) => {
                if let Some(sticky) = &c.sticky {
                    self.refuse(
                        &sticky.referenced,
                        "sets no cookie (a connection stays on its version until it closes)",
                        "remove `sticky`",
                    );
                }
                if let Some(a) = &c.analysis {
                    self.tcp_analysis(&a.value);
                }
                for step in c.steps.iter().flat_map(|s| &s.value) {
                    let RawStep::WithPause(m) = &step.value else {
                        continue;
                    };
                    if let Some(p) = &m.mirror {
                        self.refuse(
                            &p.referenced,
                            "cannot copy connections (no mirroring in a TCP proxy)",
                            "remove the mirror step",
                        );
                    }
                    if let Some(m) = &m.matcher {
                        self.refuse(
                            &m.referenced,
                            "reads no header, cookie or query to match",
                            "remove the match step",
                        );
                    }
                }
            }
        }
    }

    /// What applies to HTTP requests only.
    fn tcp_per_request(&mut self, raw: &RawService) {
        let per_request = "sees connections, not requests";
        if let Some(m) = &raw.mirror {
            self.refuse(
                &m.referenced,
                "cannot copy connections (no mirroring in a TCP proxy)",
                "remove `mirror`",
            );
        }
        if let Some(r) = raw.rules.first() {
            self.refuse(
                &r.referenced,
                "reads no header, cookie or query to match a rule",
                "remove `rules`",
            );
        }
        let keys = [
            ("timeout", raw.timeout.as_ref().map(|t| t.referenced)),
            ("retries", raw.retries.as_ref().map(|t| t.referenced)),
            ("protocol", raw.protocol.as_ref().map(|t| t.referenced)),
            (
                "websocket",
                raw.websocket
                    .as_ref()
                    .filter(|w| w.value)
                    .map(|t| t.referenced),
            ),
        ];
        for (key, at) in keys {
            if let Some(at) = at {
                let what = format!("{per_request}: `{key}` is for HTTP");
                self.refuse(&at, &what, &format!("remove `{key}`"));
            }
        }
        if let Some(lb) = &raw.load_balancing
            && let RawLoadBalancing::RingHash(on) | RawLoadBalancing::Maglev(on) = &lb.value
            && !matches!(on, RawHashOn::SourceIp)
        {
            self.refuse(
                &lb.referenced,
                "reads no header or cookie to hash",
                "hash on the client's IP: `{ ring_hash: source_ip }` (or `maglev`)",
            );
        }
        if let Some(h) = &raw.health_check
            && h.value.tcp != Some(true)
        {
            let at = (h.value.path.as_ref().map(|p| p.referenced))
                .or(h.value.grpc.as_ref().map(|g| g.referenced))
                .unwrap_or(h.referenced);
            self.refuse(
                &at,
                "cannot expect an HTTP or gRPC health check to be answered",
                "check that endpoints accept connections: `health_check: { tcp: true }`",
            );
        }
    }

    /// Rollout checks count connections and connect failures here: there is no latency.
    fn tcp_analysis(&mut self, raw: &RawAnalysis) {
        let latency = [
            (
                "max_p99_latency",
                raw.max_p99_latency.as_ref().map(|l| l.referenced),
            ),
            (
                "max_p99_ratio",
                raw.max_p99_ratio.as_ref().map(|l| l.referenced),
            ),
        ];
        for (key, at) in latency {
            if let Some(at) = at {
                self.refuse(
                    &at,
                    "times no requests (its checks count connections and connect failures)",
                    &format!("remove `{key}`; `max_error_rate` limits connect failures"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::tests::problems;
    use crate::spec::{ListenerKind, parse};

    fn file(listener_extra: &str, service_extra: &str) -> String {
        format!(
            "listeners:
  - name: db
    address: 127.0.0.1:15432
    tcp: postgres
{listener_extra}services:
  postgres:
    versions:
      blue:  {{ endpoints: [127.0.0.1:5432] }}
      green: {{ endpoints: [127.0.0.1:5433] }}
{service_extra}"
        )
    }

    #[test]
    fn a_tcp_listener_fronts_one_service() {
        let spec = parse("deploy.yaml", &file("", "    active: blue\n")).unwrap();
        let l = &spec.listeners[0];
        assert_eq!(
            l.kind,
            ListenerKind::Tcp("127.0.0.1:15432".parse().unwrap())
        );
        assert_eq!(spec.tcp_fronting("postgres").collect::<Vec<_>>(), ["db"]);
        assert_eq!(spec.routed_by("db").collect::<Vec<_>>(), ["postgres"]);
        let canary =
            "    strategy: { canary: { stable: blue, canary: green, steps: [10, 50, 100] } }
    health_check: { tcp: true }
    outlier_detection: { consecutive_5xx: 3 }
    load_balancing: least_request
    connect_timeout: 2s
";
        parse("deploy.yaml", &file("", canary)).unwrap();
        let sticky_ip = "    active: blue\n    load_balancing: { maglev: source_ip }\n";
        parse("deploy.yaml", &file("", sticky_ip)).unwrap();
    }

    #[test]
    fn what_needs_http_is_refused_on_a_tcp_listener_where_it_is_written() {
        let extra = "    routes: [{ match: { prefix: / }, service: postgres }]
    redirect: https
    proxyless: true
";
        let p = problems(&file(extra, "    active: blue\n"));
        let at: Vec<&str> = p.iter().map(|p| &p[..p.find(": ").unwrap()]).collect();
        assert_eq!(
            at,
            [
                "deploy.yaml:3:14",
                "deploy.yaml:5:14",
                "deploy.yaml:6:15",
                "deploy.yaml:7:16"
            ],
            "{p:#?}"
        );
        assert!(p[1].contains("listener \"db\" is a TCP proxy (`tcp: postgres`), which reads no HTTP: `routes` needs an HTTP listener"), "{}", p[1]);

        let unknown = file("", "    active: blue\n").replace("tcp: postgres", "tcp: mysql");
        let p = problems(&unknown);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("deploy.yaml:4:10: unknown service \"mysql\""),
            "{}",
            p[0]
        );
    }

    #[test]
    fn what_a_tcp_proxy_cannot_do_is_refused_where_it_is_asked_for() {
        let extra = "    strategy:
      canary: { stable: blue, canary: green, sticky: {}, steps: [{ mirror: 10 }, { match: { header: { x: \"1\" } } }, 100], analysis: { max_p99_latency: 1s } }
    rules: [{ match: { header: { x: \"1\" } }, version: green }]
    timeout: 5s
    retries: { attempts: 2 }
    websocket: true
    health_check: { path: /health }
";
        let p = problems(&file("", extra));
        let at: Vec<&str> = p.iter().map(|p| &p[..p.find(": ").unwrap()]).collect();
        assert_eq!(
            at,
            [
                "deploy.yaml:11:54",  // sticky
                "deploy.yaml:11:76",  // mirror step
                "deploy.yaml:11:91",  // match step
                "deploy.yaml:11:152", // max_p99_latency
                "deploy.yaml:12:13",  // rules
                "deploy.yaml:13:14",  // timeout
                "deploy.yaml:14:14",  // retries
                "deploy.yaml:15:16",  // websocket
                "deploy.yaml:16:27",  // health_check path
            ],
            "{p:#?}"
        );
        assert!(
            p[0].starts_with("deploy.yaml:11:54: service \"postgres\" is behind the TCP listener \"db\", which sets no cookie"),
            "{}",
            p[0]
        );
        assert!(p[8].contains("`health_check: { tcp: true }`"), "{}", p[8]);

        let more = "    active: blue\n    mirror: { version: green }\n    protocol: http2\n    load_balancing: { ring_hash: { header: x-user } }\n";
        let p = problems(&file("", more));
        let at: Vec<&str> = p.iter().map(|p| &p[..p.find(": ").unwrap()]).collect();
        assert_eq!(
            at,
            [
                "deploy.yaml:11:13",
                "deploy.yaml:12:15",
                "deploy.yaml:13:21"
            ],
            "{p:#?}"
        );
        assert!(
            p[2].contains("reads no header or cookie to hash; hash on the client's IP"),
            "{}",
            p[2]
        );

        let shadow = "    strategy: { shadow: { primary: blue, mirror: green } }\n";
        let p = problems(&file("", shadow));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].contains("cannot copy a connection to a second version"),
            "{}",
            p[0]
        );
        let preview =
            "    strategy: { blue-green: { active: blue, preview: { header: x-preview } } }\n";
        let p = problems(&file("", preview));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].contains("reads no header to pick a preview by"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn a_service_is_behind_a_tcp_listener_or_routed_by_http_not_both() {
        let http = "  - name: web
    address: 127.0.0.1:10000
    routes: [{ match: { prefix: / }, service: postgres }]
";
        let p = problems(&file(http, "    active: blue\n"));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("deploy.yaml:9:3: service \"postgres\" is behind the TCP listener \"db\" and routed by the HTTP listener \"web\""),
            "{}",
            p[0]
        );
    }
}
