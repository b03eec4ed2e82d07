//! Route configurations, typed: each route as what it matches and where it sends requests, the
//! file's conditions read back by [`crate::translate`] (the code that wrote them), compared per
//! match in order.

use std::fmt::Write as _;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RedirectAction, Route, RouteAction, RouteConfiguration, VirtualHost,
    redirect_action, route, route_action, route_match::PathSpecifier,
};

use super::{Detail, Kind, Step, field_changes, fields, lcs};
use crate::cli::style::percent;
use crate::render::{self, RenderError};
use crate::spec::Condition;
use crate::translate::{header_condition, query_condition};

/// One route as an operator reads it: what it matches, and where it sends requests.
#[derive(Debug, Clone)]
struct RouteLine<'a> {
    matcher: String,
    action: String,
    route: &'a Route,
}

impl RouteLine<'_> {
    fn line(&self) -> String {
        format!("{} → {}", self.matcher, self.action)
    }
}

/// An added route configuration, with every route it has.
pub(super) fn added(config: &RouteConfiguration) -> (String, Vec<Detail>) {
    let details = route_lines(config)
        .into_iter()
        .map(|r| Detail::sign(Kind::Added, r.line()))
        .collect();
    (config.name.clone(), details)
}

/// The routes added, removed and changed, in match order, then any other field.
pub(super) fn changed(
    old: &RouteConfiguration,
    new: &RouteConfiguration,
) -> Result<Vec<Detail>, RenderError> {
    let old_routes = route_lines(old);
    let new_routes = route_lines(new);
    let mut out = Vec::new();
    for step in lcs(
        &old_routes.iter().map(|r| &r.matcher).collect::<Vec<_>>(),
        &new_routes.iter().map(|r| &r.matcher).collect::<Vec<_>>(),
    ) {
        match step {
            Step::Old(i) => out.push(Detail::sign(Kind::Removed, old_routes[i].line())),
            Step::New(j) => out.push(Detail::sign(Kind::Added, new_routes[j].line())),
            Step::Both(i, j) => {
                let (o, n) = (&old_routes[i], &new_routes[j]);
                if o.route == n.route {
                    continue;
                }
                let mut text = o.matcher.clone();
                if o.action != n.action {
                    let _ = write!(text, ": {} → {}", o.action, n.action);
                }
                let more =
                    field_changes(&render::to_json(o.route)?, &render::to_json(n.route)?, "")
                        .into_iter()
                        .filter(|(path, _)| !summarized(path))
                        .map(|(_, line)| line)
                        .collect();
                out.push(Detail {
                    kind: Some(Kind::Changed),
                    text,
                    more,
                });
            }
        }
    }
    // Anything else in the route configuration or its virtual hosts (not their routes).
    let rest = |config: &RouteConfiguration| {
        let mut c = config.clone();
        c.virtual_hosts.iter_mut().for_each(|h| h.routes.clear());
        render::to_json(&c)
    };
    out.extend(fields(&rest(old)?, &rest(new)?));
    Ok(out)
}

/// The routes of every virtual host of a route configuration, in match order; those of a host
/// the file names (`hosts:`) start with its names.
fn route_lines(config: &RouteConfiguration) -> Vec<RouteLine<'_>> {
    let mut out = Vec::new();
    for host in &config.virtual_hosts {
        let prefix = host_prefix(host);
        for r in &host.routes {
            out.push(RouteLine {
                matcher: format!("{prefix}{}", route_match(r)),
                action: route_action(r),
                route: r,
            });
        }
    }
    out
}

/// `[names] ` for a virtual host of named hosts; nothing for the one that takes any host (or,
/// under a proxyless listener, its own name).
fn host_prefix(host: &VirtualHost) -> String {
    let catch_all = host.domains.iter().any(|d| d == "*") || host.domains == [host.name.clone()];
    if catch_all {
        String::new()
    } else {
        format!("[{}] ", host.domains.join(", "))
    }
}

fn route_match(r: &Route) -> String {
    let Some(m) = &r.r#match else {
        return "any path".to_owned();
    };
    let mut parts = vec![match &m.path_specifier {
        Some(PathSpecifier::Prefix(p) | PathSpecifier::PathSeparatedPrefix(p)) => {
            format!("prefix {p}")
        }
        Some(PathSpecifier::Path(p)) => format!("path {p}"),
        Some(PathSpecifier::SafeRegex(r)) => format!("path ~ {}", r.regex),
        _ => "any path".to_owned(),
    }];
    parts.extend(m.headers.iter().map(|h| match header_condition(h) {
        Some(c) => condition(&c),
        None => foreign_header(h),
    }));
    parts.extend(m.query_parameters.iter().map(|q| match query_condition(q) {
        Some(c) => condition(&c),
        None => format!("query {} {q:?}", q.name),
    }));
    parts.join(" & ")
}

/// A condition as the file writes it.
fn condition(c: &Condition) -> String {
    match c {
        Condition::Header { name, value } => format!("header {name}={value}"),
        other => other.to_string(),
    }
}

/// A header matcher cutover did not write (none today): its fields as they are.
fn foreign_header(h: &HeaderMatcher) -> String {
    match render::to_json(h) {
        Ok(json) => format!("header {json}"),
        Err(_) => format!("header {}", h.name),
    }
}

/// Where a route sends requests: a cluster or weights, mirrors, or what Envoy answers itself.
fn route_action(r: &Route) -> String {
    match &r.action {
        Some(route::Action::Route(a)) => forward(a),
        Some(route::Action::Redirect(a)) => redirect(a),
        Some(route::Action::DirectResponse(d)) => {
            let body = d.body.as_ref().and_then(|b| match &b.specifier {
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                _ => None,
            });
            match body {
                Some(body) => format!("respond {} {}", d.status, quoted(&body)),
                None => format!("respond {}", d.status),
            }
        }
        _ => "no action".to_owned(),
    }
}

fn forward(a: &RouteAction) -> String {
    let mut text = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let weights: Vec<u32> = w
                .clusters
                .iter()
                .map(|c| c.weight.map_or(0, |w| w.value))
                .collect();
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            w.clusters
                .iter()
                .zip(&weights)
                .map(|(c, weight)| {
                    let share = if total == 0 {
                        0.0
                    } else {
                        f64::from(*weight) * 100.0 / total as f64
                    };
                    format!("{} {}", c.name, percent(share))
                })
                .collect::<Vec<_>>()
                .join(" / ")
        }
        other => format!("{other:?}"),
    };
    for m in &a.request_mirror_policies {
        let share = m
            .runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value)
            .map_or(100.0, |f| {
                use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
                let per = match DenominatorType::try_from(f.denominator) {
                    Ok(DenominatorType::TenThousand) => 10_000.0,
                    Ok(DenominatorType::Million) => 1_000_000.0,
                    _ => 100.0,
                };
                f64::from(f.numerator) * 100.0 / per
            });
        let _ = write!(text, ", mirror {} {}", m.cluster, percent(share));
    }
    text
}

/// `redirect to https`, or the parts a redirect rewrites.
fn redirect(a: &RedirectAction) -> String {
    let mut parts = Vec::new();
    match &a.scheme_rewrite_specifier {
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => {
            parts.push("to https".to_owned());
        }
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => {
            parts.push(format!("to {s}"));
        }
        _ => {}
    }
    if !a.host_redirect.is_empty() {
        parts.push(format!("host {}", a.host_redirect));
    }
    match &a.path_rewrite_specifier {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => {
            parts.push(format!("path {p}"));
        }
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) => {
            parts.push(format!("prefix {p}"));
        }
        _ => {}
    }
    // 0 is Envoy's default, 301.
    if a.response_code != 0 {
        let code = redirect_action::RedirectResponseCode::try_from(a.response_code).map_or_else(
            |_| a.response_code.to_string(),
            |c| c.as_str_name().to_owned(),
        );
        parts.push(code);
    }
    format!("redirect {}", parts.join(", "))
        .trim_end()
        .to_owned()
}

/// A fixed response's body, quoted and cut short.
fn quoted(body: &str) -> String {
    const MAX: usize = 40;
    let one_line = body.replace('\n', "\\n");
    if one_line.chars().count() > MAX {
        let cut: String = one_line.chars().take(MAX - 1).collect();
        format!("{cut:?}…")
    } else {
        format!("{one_line:?}")
    }
}

/// Fields a route's action summary already shows.
fn summarized(path: &str) -> bool {
    path == "route"
        || path == "route.cluster"
        || path == "route.weighted_clusters"
        || path == "route.weighted_clusters.clusters"
        || path.starts_with("route.request_mirror_policies")
        || (path.starts_with("route.weighted_clusters.clusters[")
            && (path.ends_with("].name") || path.ends_with("].weight")))
        || path.starts_with("redirect")
        || path.starts_with("direct_response")
}
