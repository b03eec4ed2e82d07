//! Listeners (an HTTP connection manager that takes its routes over RDS) and their routes.
//!
//! A proxyless listener is the same connection manager as an xDS API listener with no address
//! (gRFC A27): gRPC clients dialling `xds:///<name>` ask for the listener `<name>`, take its
//! routes over RDS on the same ADS stream (`config_source.ads`), pick the virtual host whose
//! domain is that name, and require the router to be the last HTTP filter (gRFC A39).

use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, Listener, filter,
};

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
use super::{ads_config_source, any, routes};
use crate::reconcile::{ListenerPlan, Plan};
use crate::spec::{ListenerKind, Redirect, RouteTarget};

/// The RDS name of a listener's routes: the listener's own name, so the two read together.
pub(crate) fn route_config_name(listener: &str) -> String {
    listener.to_owned()
}

pub(super) fn listener(l: &ListenerPlan) -> Listener {
    let hcm = HttpConnectionManager {
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
    };
    let Some(address) = l.kind.address() else {
        return Listener {
            name: l.name.clone(),
            api_listener: Some(ApiListener {
                api_listener: Some(any(&hcm)),
            }),
            ..Default::default()
        };
    };
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

pub(super) fn route_configuration(l: &ListenerPlan, plan: &Plan) -> RouteConfiguration {
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
            domains: match l.kind {
                ListenerKind::Envoy(_) | ListenerKind::Tcp(_) => vec!["*".to_owned()],
                // gRPC matches the domains against the target's authority, the listener name.
                ListenerKind::Proxyless => vec![l.name.clone()],
            },
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
