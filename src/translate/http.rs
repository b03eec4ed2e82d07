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
use crate::reconcile::{ListenerPlan, Plan};
use crate::spec::{Redirect, RouteTarget};

/// The RDS name of a listener's routes: the listener's own name, so the two read together.
pub(crate) fn route_config_name(listener: &str) -> String {
    listener.to_owned()
}

/// The resources of an HTTP listener: itself, its routes, and the certificates it serves.
pub(super) fn resources(l: &ListenerPlan, address: SocketAddr, plan: &Plan, out: &mut Resources) {
    out.listeners.push(listener(l, address));
    out.routes
        .push(route_configuration(l, plan, vec!["*".to_owned()]));
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
    let routes = |listed: &[crate::spec::Route]| -> Vec<Route> {
        let mut out: Vec<Route> = listed
            .iter()
            .flat_map(|r| {
                let mut out = match &r.target {
                    RouteTarget::Service { name, rewrite } => {
                        let Some(service) = plan.services.get(name) else {
                            return Vec::new();
                        };
                        let mut out = routes::service_routes(&r.matcher, service, l.kind);
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
            })
            .collect();
        if let Some(Redirect::Https) = l.redirect {
            out.push(https_redirect());
        }
        out
    };
    let mut virtual_hosts = Vec::new();
    // Any other host: with hosts, only if the file gives it routes (else Envoy answers 404).
    if l.hosts.is_empty() || !l.routes.is_empty() || l.redirect.is_some() {
        virtual_hosts.push(VirtualHost {
            name: l.name.clone(),
            domains: default_domains,
            routes: routes(&l.routes),
            ..Default::default()
        });
    }
    for h in &l.hosts {
        virtual_hosts.push(VirtualHost {
            name: format!("{}/{}", l.name, h.names.first().map_or("", String::as_str)),
            domains: h.names.clone(),
            routes: routes(&h.routes),
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: route_config_name(&l.name),
        virtual_hosts,
        ..Default::default()
    }
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
