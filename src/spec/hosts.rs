//! A listener's virtual hosts (`hosts:`) and its redirect (`redirect: https`).

use std::collections::BTreeMap;

use serde_saphyr::Location;

use super::raw::{RawListener, RawSpec};
use super::validate::Validator;
use super::{Host, Redirect, Service};

impl Validator {
    /// The listener's hosts, or `None` (with the problems recorded) when one is wrong.
    pub(super) fn hosts(
        &mut self,
        raw: &RawListener,
        listener: &str,
        spec: &RawSpec,
        services: &BTreeMap<String, Service>,
        proxyless: bool,
    ) -> Option<Vec<Host>> {
        let before = self.problem_count();
        if proxyless && let Some(first) = raw.hosts.first() {
            let msg = format!(
                "listener \"{listener}\" is proxyless: gRPC clients pick the virtual host named \
                 by the target they dial (xds:///{listener}); remove `hosts` and give each host \
                 a proxyless listener of its own"
            );
            self.at(&first.referenced, msg);
        }
        let mut seen: BTreeMap<String, Location> = BTreeMap::new();
        let mut hosts = Vec::new();
        for h in &raw.hosts {
            if h.value.names.is_empty() {
                self.at(
                    &h.referenced,
                    "a host needs `names:`, the host names it answers (e.g. [shop.example.com])",
                );
            }
            if h.value.routes.is_empty() {
                self.at(
                    &h.referenced,
                    "a host needs `routes:`, at least one that names a service",
                );
            }
            let mut names = Vec::new();
            for n in &h.value.names {
                let Some(name) = self.server_name(n) else {
                    continue;
                };
                if let Some(first) = seen.get(&name) {
                    let msg = format!(
                        "host name \"{name}\" is on two hosts of listener \"{listener}\" (the \
                         first at line {}): Envoy refuses a route configuration that names a \
                         domain twice; keep it on one",
                        first.line()
                    );
                    self.at(&n.referenced, msg);
                    continue;
                }
                seen.insert(name.clone(), n.referenced);
                names.push(name);
            }
            let routes = self.routes(&h.value.routes, listener, spec, services);
            hosts.push(Host { names, routes });
        }
        (self.problem_count() == before).then_some(hosts)
    }

    /// The listener's redirect: only to HTTPS, only on a plain Envoy listener.
    pub(super) fn redirect(
        &mut self,
        raw: &RawListener,
        listener: &str,
        proxyless: bool,
    ) -> Option<Option<Redirect>> {
        let Some(r) = &raw.redirect else {
            return Some(None);
        };
        if r.value != "https" {
            let msg = format!(
                "unknown `redirect` \"{}\": write `redirect: https` (to the same host and path \
                 over HTTPS)",
                r.value
            );
            self.at(&r.referenced, msg);
            return None;
        }
        if proxyless {
            let msg = format!(
                "listener \"{listener}\" is proxyless: gRPC clients do not follow redirects; \
                 remove `redirect`"
            );
            self.at(&r.referenced, msg);
            return None;
        }
        if raw.tls.is_some() {
            let msg = format!(
                "listener \"{listener}\" is already HTTPS (`tls`): a redirect to HTTPS would \
                 send clients back to it for ever; put `redirect: https` on a plain listener"
            );
            self.at(&r.referenced, msg);
            return None;
        }
        Some(Some(Redirect::Https))
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::tests::problems;
    use crate::spec::{Host, Redirect, parse};

    const SERVICES: &str = "services:
  shop:
    versions:
      v1: { endpoints: [127.0.0.1:8081] }
    active: v1
";

    #[test]
    fn hosts_and_a_redirect_parse() {
        let text = format!(
            "listeners:
  - name: public
    address: 127.0.0.1:10443
    hosts:
      - names: [Shop.example.com, \"*.shop.example.com\"]
        routes:
          - match: {{ prefix: / }}
            service: shop
  - name: plain
    address: 127.0.0.1:10080
    redirect: https
{SERVICES}"
        );
        let spec = parse("deploy.yaml", &text).unwrap();
        let public = &spec.listeners[0];
        assert!(public.routes.is_empty());
        assert_eq!(
            public.hosts,
            [Host {
                names: vec!["shop.example.com".into(), "*.shop.example.com".into()],
                routes: public.hosts[0].routes.clone(),
            }]
        );
        assert_eq!(public.all_routes().count(), 1);
        assert_eq!(spec.routed_by("public").collect::<Vec<_>>(), ["shop"]);
        assert_eq!(spec.listeners[1].redirect, Some(Redirect::Https));
    }

    #[test]
    fn every_mistake_in_hosts_and_redirects_is_reported_where_it_is() {
        let text = format!(
            "listeners:
  - name: public
    address: 127.0.0.1:10443
    tls: {{ certificates: [{{ cert: a.pem, key: a-key.pem }}] }}
    redirect: https
    hosts:
      - names: [shop.example.com]
        routes:
          - match: {{ prefix: / }}
            service: shops
      - names: [SHOP.example.com, \"bad name\"]
      - routes:
          - match: {{ prefix: / }}
            service: shop
  - name: plain
    address: 127.0.0.1:10080
    redirect: http
{SERVICES}"
        );
        assert_eq!(
            problems(&text),
            [
                "deploy.yaml:5:15: listener \"public\" is already HTTPS (`tls`): a redirect to HTTPS would send clients back to it for ever; put `redirect: https` on a plain listener",
                "deploy.yaml:10:22: unknown service \"shops\" in route of listener \"public\" (services are: shop); did you mean \"shop\"?",
                "deploy.yaml:11:9: a host needs `routes:`, at least one that names a service",
                "deploy.yaml:11:17: host name \"shop.example.com\" is on two hosts of listener \"public\" (the first at line 7): Envoy refuses a route configuration that names a domain twice; keep it on one",
                "deploy.yaml:11:35: invalid server name \"bad name\": write a host name (shop.example.com) or a wildcard for one label under a domain (*.example.com)",
                "deploy.yaml:12:9: a host needs `names:`, the host names it answers (e.g. [shop.example.com])",
                "deploy.yaml:17:15: unknown `redirect` \"http\": write `redirect: https` (to the same host and path over HTTPS)",
            ]
        );
    }
}
