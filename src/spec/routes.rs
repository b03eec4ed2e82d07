//! A listener's (or host's) routes: the path match, who answers (a service or Envoy itself),
//! rewrites and header edits.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::raw::{RawHeaderEdits, RawRoute, RawSpec};
use super::validate::{Validator, closest, list_or_none};
use super::{HeaderEdits, PathMatch, Rewrite, Route, RouteTarget, Service};

/// The largest body of a `respond` route: a maintenance page, not a site.
const MAX_BODY: usize = 4096;

impl Validator {
    /// Routes of a listener or one of its hosts, in match order.
    pub(super) fn routes(
        &mut self,
        raw: &[Spanned<RawRoute>],
        listener: &str,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        for r in raw {
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
            let target = self.target(&r.value, r, listener, spec, services);
            let headers = self.header_edits(&r.value);
            if let (Some(matcher), Some(target), Some(headers)) = (matcher, target, headers) {
                routes.push(Route {
                    matcher,
                    target,
                    headers,
                });
            }
        }
        routes
    }

    /// gRPC's proxyless clients forward every call to a cluster: they neither answer
    /// themselves nor rewrite or edit headers on the way.
    pub(super) fn proxyless_routes(&mut self, raw: &[Spanned<RawRoute>], listener: &str) {
        for r in raw {
            let keys = [
                ("respond", r.value.respond.as_ref().map(|k| k.referenced)),
                ("rewrite", r.value.rewrite.as_ref().map(|k| k.referenced)),
                (
                    "request_headers",
                    r.value.request_headers.as_ref().map(|k| k.referenced),
                ),
                (
                    "response_headers",
                    r.value.response_headers.as_ref().map(|k| k.referenced),
                ),
            ];
            for (key, at) in keys {
                if let Some(at) = at {
                    let msg = format!(
                        "listener \"{listener}\" is proxyless: gRPC clients send every call to a \
                         service as it is; remove `{key}` (or serve this route from an Envoy \
                         listener)"
                    );
                    self.at(&at, msg);
                }
            }
        }
    }

    fn target(
        &mut self,
        raw: &RawRoute,
        at: &Spanned<RawRoute>,
        listener: &str,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
    ) -> Option<RouteTarget> {
        match (&raw.service, &raw.respond) {
            (Some(service), None) => {
                self.known_service(service, listener, spec, services);
                let rewrite = self.rewrite(raw)?;
                Some(RouteTarget::Service {
                    name: service.value.clone(),
                    rewrite,
                })
            }
            (None, Some(respond)) => {
                if let Some(rw) = &raw.rewrite {
                    self.at(
                        &rw.referenced,
                        "`rewrite` changes what a service gets; a `respond` route sends nothing \
                         on: remove one of them",
                    );
                }
                let status = respond.value.status.value;
                if !(200..=599).contains(&status) {
                    let msg =
                        format!("`respond.status` {status} is not an HTTP status: 200 to 599");
                    self.at(&respond.value.status.referenced, msg);
                    return None;
                }
                let body = respond.value.body.as_ref().map(|b| b.value.clone());
                if let Some(b) = respond
                    .value
                    .body
                    .as_ref()
                    .filter(|b| b.value.len() > MAX_BODY)
                {
                    let msg = format!(
                        "`respond.body` is {} bytes, over {MAX_BODY}: serve a larger page from \
                         a service",
                        b.value.len()
                    );
                    self.at(&b.referenced, msg);
                    return None;
                }
                Some(RouteTarget::Respond {
                    status: u16::try_from(status).ok()?,
                    body: body.unwrap_or_default(),
                })
            }
            (Some(service), Some(_)) => {
                self.at(
                    &service.referenced,
                    "a route is answered by a `service` or by `respond`, not both",
                );
                None
            }
            (None, None) => {
                self.at(
                    &at.referenced,
                    "a route needs a `service` to answer it (or `respond: { status, body }`)",
                );
                None
            }
        }
    }

    pub(super) fn known_service(
        &mut self,
        service: &Spanned<String>,
        listener: &str,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
    ) {
        let known = services.contains_key(&service.value)
            || spec
                .services
                .0
                .iter()
                .any(|(k, _)| k.value == service.value);
        if known {
            return;
        }
        let names: Vec<&str> = spec
            .services
            .0
            .iter()
            .map(|(k, _)| k.value.as_str())
            .collect();
        let mut msg = format!(
            "unknown service \"{}\" in route of listener \"{listener}\" (services are: {})",
            service.value,
            list_or_none(&names)
        );
        if let Some(best) = closest(&service.value, names.iter().copied()) {
            msg.push_str(&format!("; did you mean \"{best}\"?"));
        }
        self.at(&service.referenced, msg);
    }

    fn rewrite(&mut self, raw: &RawRoute) -> Option<Rewrite> {
        let Some(rw) = &raw.rewrite else {
            return Some(Rewrite::default());
        };
        let prefix = match &rw.value.prefix {
            Some(p) if raw.matcher.value.prefix.is_none() => {
                self.at(
                    &p.referenced,
                    "`rewrite.prefix` replaces the route's `prefix`: use it on a `prefix` route",
                );
                return None;
            }
            Some(p) => Some(self.path(p, "rewrite.prefix")?),
            None => None,
        };
        let host = match &rw.value.host {
            Some(h) => Some(self.server_name(h)?),
            None => None,
        };
        Some(Rewrite { prefix, host })
    }

    fn header_edits(&mut self, raw: &RawRoute) -> Option<HeaderEdits> {
        let mut ok = true;
        let mut edits = |e: &Option<Spanned<RawHeaderEdits>>| {
            let mut add = Vec::new();
            let mut remove = Vec::new();
            let Some(e) = e else {
                return (add, remove);
            };
            for (name, value) in &e.value.add.0 {
                match self.edited_header(name) {
                    Some(n) => add.push((n, value.value.0.clone())),
                    None => ok = false,
                }
            }
            for name in &e.value.remove {
                match self.edited_header(name) {
                    Some(n) => remove.push(n),
                    None => ok = false,
                }
            }
            (add, remove)
        };
        let (request_add, request_remove) = edits(&raw.request_headers);
        let (response_add, response_remove) = edits(&raw.response_headers);
        ok.then_some(HeaderEdits {
            request_add,
            request_remove,
            response_add,
            response_remove,
        })
    }

    /// A header name a route may set or remove: a token, lowercase, not a pseudo-header nor
    /// `host` (Envoy refuses to edit those; `rewrite.host` sets the host).
    fn edited_header(&mut self, name: &Spanned<String>) -> Option<String> {
        let lower = name.value.to_ascii_lowercase();
        if lower == "host" || lower.starts_with(':') {
            let msg = format!(
                "header \"{}\" cannot be edited here: Envoy refuses edits of `host` and \
                 pseudo-headers; use `rewrite.host` for the host",
                name.value
            );
            self.at(&name.referenced, msg);
            return None;
        }
        self.token(name, "header").map(|_| lower)
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::tests::problems;
    use crate::spec::{HeaderEdits, Rewrite, RouteTarget, parse};

    fn file(routes: &str) -> String {
        format!(
            "listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
{routes}services:
  api:
    versions:
      v1: {{ endpoints: [127.0.0.1:8081] }}
    active: v1
"
        )
    }

    #[test]
    fn a_route_answers_itself_or_rewrites_and_edits_headers() {
        let spec = parse(
            "deploy.yaml",
            &file(
                "      - match: { path: /down }
        respond: { status: 503, body: Soon }
      - match: { prefix: /api/ }
        service: api
        rewrite: { prefix: /, host: Backend.internal }
        request_headers: { add: { X-Edge: 1 }, remove: [Cookie] }
        response_headers: { remove: [server] }
",
            ),
        )
        .unwrap();
        let routes = &spec.listeners[0].routes;
        assert_eq!(
            routes[0].target,
            RouteTarget::Respond {
                status: 503,
                body: "Soon".into()
            }
        );
        assert_eq!(routes[0].service(), None);
        assert_eq!(
            routes[1].target,
            RouteTarget::Service {
                name: "api".into(),
                rewrite: Rewrite {
                    prefix: Some("/".into()),
                    host: Some("backend.internal".into()),
                },
            }
        );
        assert_eq!(
            routes[1].headers,
            HeaderEdits {
                request_add: vec![("x-edge".into(), "1".into())],
                request_remove: vec!["cookie".into()],
                response_add: vec![],
                response_remove: vec!["server".into()],
            }
        );
        assert_eq!(spec.routed_by("public").collect::<Vec<_>>(), ["api"]);
    }

    #[test]
    fn every_mistake_in_a_route_is_reported_where_it_is() {
        assert_eq!(
            problems(&file(
                "      - match: { path: /a }
        respond: { status: 99 }
      - match: { path: /b }
        service: api
        respond: { status: 503 }
      - match: { path: /c }
      - match: { path: /d }
        service: api
        rewrite: { prefix: / }
      - match: { prefix: /e }
        respond: { status: 200 }
        rewrite: { host: x.internal }
      - match: { prefix: /f }
        service: api
        request_headers: { add: { host: x, \"bad name\": y }, remove: [\":path\"] }
"
            )),
            [
                "deploy.yaml:6:28: `respond.status` 99 is not an HTTP status: 200 to 599",
                "deploy.yaml:8:18: a route is answered by a `service` or by `respond`, not both",
                "deploy.yaml:10:9: a route needs a `service` to answer it (or `respond: { status, body }`)",
                "deploy.yaml:13:28: `rewrite.prefix` replaces the route's `prefix`: use it on a `prefix` route",
                "deploy.yaml:16:18: `rewrite` changes what a service gets; a `respond` route sends nothing on: remove one of them",
                "deploy.yaml:19:35: header \"host\" cannot be edited here: Envoy refuses edits of `host` and pseudo-headers; use `rewrite.host` for the host",
                "deploy.yaml:19:44: invalid header name \"bad name\": use letters, digits and - _ . only",
                "deploy.yaml:19:70: header \":path\" cannot be edited here: Envoy refuses edits of `host` and pseudo-headers; use `rewrite.host` for the host",
            ]
        );
    }
}
