//! HTTP listeners: an HTTP connection manager on an address (TLS chosen by SNI when the file gives
//! certificates) that takes its routes over RDS, and those routes, grouped by host. The
//! connection manager and the route configuration are shared with proxyless listeners
//! ([`super::proxyless`]); what differs is said there.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};

use envoy_types::pb::envoy::config::route::v3::{
    RedirectAction, Route, RouteConfiguration, RouteMatch, VirtualHost, redirect_action, route,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_connection_manager::StripPortMode, http_filter,
};

use super::cluster::socket_address;
use super::{Resources, ads_config_source, any, routes};
use bytes::Bytes;
use prost::Message;

use crate::reconcile::{ListenerPlan, Plan, RoutePlan, RoutePolicy};
use crate::spec::{ListenerKind, Redirect, RouteTarget};

/// The RDS name of a listener's routes: the listener's own name, so the two read together.
pub(crate) fn route_config_name(listener: &str) -> String {
    listener.to_owned()
}

/// The resources of an HTTP listener besides its routes: itself, and the certificates it serves.
pub(super) fn resources(l: &ListenerPlan, address: SocketAddr, plan: &Plan, out: &mut Resources) {
    out.listeners.push(listener(l, address));
    if let Some(t) = &l.tls {
        out.secrets
            .extend(super::tls::secrets(&l.name, t, &plan.pem_files));
    }
}

/// The connection manager of an HTTP or proxyless listener: routes over RDS on the ADS stream,
/// and the router as the last (and only) HTTP filter, as gRPC requires (gRFC A39).
pub(super) fn connection_manager(l: &ListenerPlan) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: l.name.clone(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config_name(&l.name),
        })),
        // Hosts match the name without its port (`shop.example.com:8443`).
        strip_port_mode: (!l.hosts.is_empty()).then_some(StripPortMode::StripAnyHostPort(true)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(l: &ListenerPlan, address: SocketAddr) -> Listener {
    let hcm = connection_manager(l);
    let filter = Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
    };
    let Some(tls) = &l.tls else {
        return Listener {
            name: l.name.clone(),
            address: Some(socket_address(address)),
            filter_chains: vec![FilterChain {
                filters: vec![filter],
                ..Default::default()
            }],
            ..Default::default()
        };
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(address)),
        listener_filters: vec![super::tls::tls_inspector()],
        filter_chains: super::tls::filter_chains(&l.name, tls, &filter),
        ..Default::default()
    }
}

/// A listener's routes: those of the file's routes (under the virtual host named after the
/// listener, matching `default_domains`) and of each of its hosts.
pub(super) fn route_configuration(
    l: &ListenerPlan,
    plan: &Plan,
    default_domains: Vec<String>,
) -> RouteConfiguration {
    let virtual_hosts = virtual_hosts(l, default_domains)
        .into_iter()
        .map(|h| VirtualHost {
            routes: h
                .listed
                .iter()
                .flat_map(|r| listener_routes(RouteInputs::of(l, r, plan)))
                .chain(h.https_redirect.then(https_redirect))
                .collect(),
            ..h.host
        })
        .collect();
    RouteConfiguration {
        name: route_config_name(&l.name),
        virtual_hosts,
        ..Default::default()
    }
}

/// [`route_configuration`], encoded, with the Envoy routes under each listener route as
/// `encoded_routes` gives them (given the list and position of the listener route, see
/// [`listed_routes`]): each a `routes` field of the virtual host, encoded as
/// [`encode_listener_routes`] does. The same bytes as encoding [`route_configuration`]: the
/// virtual hosts and the configuration set no field after `routes` and `virtual_hosts`, and
/// prost writes fields in that order.
pub(super) fn route_configuration_encoded(
    l: &ListenerPlan,
    plan: &Plan,
    default_domains: Vec<String>,
    mut encoded_routes: impl FnMut(usize, usize, RouteInputs<'_>) -> Bytes,
) -> Vec<u8> {
    let mut out = RouteConfiguration {
        name: route_config_name(&l.name),
        ..Default::default()
    }
    .encode_to_vec();
    for h in virtual_hosts(l, default_domains) {
        let mut host = h.host.encode_to_vec();
        for (i, r) in h.listed.iter().enumerate() {
            host.extend_from_slice(&encoded_routes(h.list, i, RouteInputs::of(l, r, plan)));
        }
        if h.https_redirect {
            host.extend_from_slice(&encode_listener_routes(&[https_redirect()]));
        }
        // Field 2 of RouteConfiguration: virtual_hosts.
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(host.len() as u64, &mut out);
        out.extend_from_slice(&host);
    }
    out
}

/// Envoy routes as they are written in a virtual host: each its field 3 (`routes`).
pub(super) fn encode_listener_routes(routes: &[Route]) -> Bytes {
    let mut out = Vec::new();
    for r in routes {
        prost::encoding::message::encode(3, r, &mut out);
    }
    Bytes::from(out)
}

/// A virtual host before its routes: which of the listener's route lists it holds.
struct HostParts<'a> {
    /// The virtual host with everything but its routes.
    host: VirtualHost,
    /// 0: the listener's own routes; k + 1: its k-th host's.
    list: usize,
    listed: &'a [crate::spec::Route],
    https_redirect: bool,
}

fn virtual_hosts(l: &ListenerPlan, default_domains: Vec<String>) -> Vec<HostParts<'_>> {
    let https_redirect = matches!(l.redirect, Some(Redirect::Https));
    let mut virtual_hosts = Vec::new();
    // Any other host: with hosts, only if the file gives it routes (else Envoy answers 404).
    if l.hosts.is_empty() || !l.routes.is_empty() || l.redirect.is_some() {
        virtual_hosts.push(HostParts {
            host: VirtualHost {
                name: l.name.clone(),
                domains: default_domains,
                ..Default::default()
            },
            list: 0,
            listed: &l.routes,
            https_redirect,
        });
    }
    for (k, h) in l.hosts.iter().enumerate() {
        virtual_hosts.push(HostParts {
            host: VirtualHost {
                name: format!("{}/{}", l.name, h.names.first().map_or("", String::as_str)),
                domains: h.names.clone(),
                ..Default::default()
            },
            list: k + 1,
            listed: &h.routes,
            https_redirect,
        });
    }
    virtual_hosts
}

/// The listener routes of list `list` of `l` (see [`route_configuration_encoded`]).
pub(super) fn listed_routes(l: &ListenerPlan, list: usize) -> Option<&[crate::spec::Route]> {
    match list {
        0 => Some(&l.routes),
        k => l.hosts.get(k - 1).map(|h| &h.routes[..]),
    }
}

/// Everything the Envoy routes under one listener route are made of: building them
/// ([`super::encoded_listener_routes`]) reads nothing else, so equal inputs give equal routes (what lets
/// [`crate::snapshot::Builder`] keep their encoded bytes from one save to the next).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteInputs<'a> {
    pub route: &'a crate::spec::Route,
    pub kind: ListenerKind,
    /// The routes and route policy of the service the route names, if the plan has it.
    pub service: Option<(&'a [RoutePlan], &'a RoutePolicy)>,
}

impl<'a> RouteInputs<'a> {
    pub fn of(l: &ListenerPlan, route: &'a crate::spec::Route, plan: &'a Plan) -> RouteInputs<'a> {
        let service = match &route.target {
            RouteTarget::Service { name, .. } => plan
                .services
                .get(name)
                .map(|s| (&s.routes[..], &s.route_policy)),
            RouteTarget::Respond { .. } => None,
        };
        RouteInputs {
            route,
            kind: l.kind,
            service,
        }
    }
}

/// The Envoy routes under one listener route, in match order.
pub(super) fn listener_routes(inputs: RouteInputs<'_>) -> Vec<Route> {
    let r = inputs.route;
    let mut out = match &r.target {
        RouteTarget::Service { rewrite, .. } => {
            let Some(service) = inputs.service else {
                return Vec::new();
            };
            let mut out = routes::service_routes(&r.matcher, service, inputs.kind);
            out.iter_mut().for_each(|o| routes::rewrite(o, rewrite));
            out
        }
        RouteTarget::Respond { status, body } => {
            vec![routes::respond(&r.matcher, *status, body)]
        }
    };
    out.iter_mut()
        .for_each(|o| routes::edit_headers(o, &r.headers));
    out
}

/// Every request to the same host and path over HTTPS, 301.
fn https_redirect() -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}
