//! The routes of one service under one listener route, in match order:
//!
//! 1. preview: `<preview header>: <version>` reaches that version (blue-green, red-black);
//! 2. rules: user groups (header, cookie, query parameter, path prefix) go to their version;
//! 3. sticky canary: a request carrying the canary cookie stays on the version it names;
//! 4. the strategy: one cluster, or weighted clusters for a canary (each setting the sticky
//!    cookie for the version that answered).
//!
//! Every route gets the service's timeout, retry policy, hash policy and mirror.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction, RouteMatch,
    WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    retry_policy::RetryHostPredicate,
    route, route_action,
    route_action::{HashPolicy, RequestMirrorPolicy, hash_policy},
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{any, duration};
use crate::spec::{Condition, HashOn, LoadBalancing, PathMatch, Percent, Service, Spec, Strategy};

/// The version a service's requests go to when nothing else applies: the active version, the
/// primary, or a canary's stable version.
fn default_version(service: &Service) -> &str {
    match &service.strategy {
        Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. } => active,
        Strategy::Shadow { primary } => primary,
        Strategy::Canary { stable, .. } => stable,
    }
}

/// Traffic sent to a version *besides* the service's default (a split canary's share, an A/B
/// rule's group) falls back to the default version when that version has no healthy endpoint,
/// rather than keep its share and fail it: the `(version, fallback)` pairs, sorted, each made
/// an aggregate cluster.
pub(super) fn fallbacks(service: &Service) -> Vec<(&str, &str)> {
    let default = default_version(service);
    let mut out: Vec<(&str, &str)> = Vec::new();
    if let Strategy::Canary { canary, weight, .. } = &service.strategy
        && weight.ppm() > 0
        && weight.ppm() < Percent::MILLION
    {
        out.push((canary, default));
    }
    for rule in &service.rules {
        if rule.version != default {
            out.push((&rule.version, default));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

pub(super) fn service_routes(
    path: &PathMatch,
    service_name: &str,
    service: &Service,
    retired: &BTreeSet<String>,
) -> Vec<Route> {
    let cluster = |version: &str| Spec::cluster_name(service_name, version);
    let base = RouteBuilder {
        service_name,
        service,
        path,
    };
    let mut routes = Vec::new();

    if let Some(preview) = service.strategy.preview() {
        let serving = service.strategy.serving_versions();
        for version in service.versions.keys() {
            if serving.contains(&version.as_str()) || retired.contains(&cluster(version)) {
                continue;
            }
            let condition = Condition::Header {
                name: preview.header.clone(),
                value: version.clone(),
            };
            if let Some(m) = base.matcher(std::slice::from_ref(&condition)) {
                routes.push(base.route(m, Target::One(cluster(version))));
            }
        }
    }

    let default = default_version(service);
    for rule in &service.rules {
        if let Some(m) = base.matcher(&rule.conditions) {
            let target = if rule.version == default {
                cluster(&rule.version)
            } else {
                super::fallback_cluster_name(service_name, &rule.version, default)
            };
            routes.push(base.route(m, Target::One(target)));
        }
    }

    let main = match &service.strategy {
        Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. } => {
            Target::One(cluster(active))
        }
        Strategy::Shadow { primary } => Target::One(cluster(primary)),
        Strategy::Canary {
            stable,
            canary,
            weight,
            sticky,
        } => match weight.ppm() {
            0 => Target::One(cluster(stable)),
            Percent::MILLION => Target::One(cluster(canary)),
            ppm => {
                // Canary requests go to the canary while it has a healthy endpoint, else to stable.
                let canary_cluster = super::fallback_cluster_name(service_name, canary, stable);
                if let Some(sticky) = sticky {
                    // The cookie names the version, so that after a promotion (the canary becomes
                    // stable) its users stay where they are.
                    for version in [canary, stable] {
                        let condition = Condition::Cookie {
                            name: sticky.cookie.clone(),
                            value: version.clone(),
                        };
                        if let Some(m) = base.matcher(std::slice::from_ref(&condition)) {
                            let target = if version == canary {
                                canary_cluster.clone()
                            } else {
                                cluster(version)
                            };
                            routes.push(base.route(m, Target::One(target)));
                        }
                    }
                }
                let set_cookie = |version: &str| {
                    sticky.as_ref().map(|s| {
                        format!(
                            "{}={version}; Path=/; Max-Age={}; HttpOnly",
                            s.cookie,
                            s.ttl.as_secs()
                        )
                    })
                };
                Target::Weighted(vec![
                    (cluster(stable), Percent::MILLION - ppm, set_cookie(stable)),
                    (canary_cluster, ppm, set_cookie(canary)),
                ])
            }
        },
    };
    if let Some(m) = base.matcher(&[]) {
        routes.push(base.route(m, main));
    }
    routes
}

enum Target {
    One(String),
    /// (cluster, weight in parts per million, Set-Cookie value for sticky canaries)
    Weighted(Vec<(String, u32, Option<String>)>),
}

struct RouteBuilder<'a> {
    service_name: &'a str,
    service: &'a Service,
    path: &'a PathMatch,
}

impl RouteBuilder<'_> {
    /// The listener route's path match narrowed by `conditions`, or `None` if they cannot both
    /// hold (a rule's prefix outside the listener route's path).
    fn matcher(&self, conditions: &[Condition]) -> Option<RouteMatch> {
        let mut path_specifier = match self.path {
            PathMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
            PathMatch::Exact(p) => PathSpecifier::Path(p.clone()),
        };
        let mut m = RouteMatch::default();
        for c in conditions {
            match c {
                Condition::Header { name, value } => m.headers.push(HeaderMatcher {
                    name: name.clone(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(value))),
                    ..Default::default()
                }),
                Condition::Cookie { name, value } => m.headers.push(cookie_matcher(name, value)),
                Condition::Query { name, value } => m.query_parameters.push(QueryParameterMatcher {
                    name: name.clone(),
                    query_parameter_match_specifier: Some(
                        envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(exact(value)),
                    ),
                }),
                Condition::Prefix(prefix) => {
                    path_specifier = match self.path {
                        PathMatch::Prefix(p) if prefix.starts_with(p.as_str()) => {
                            PathSpecifier::Prefix(prefix.clone())
                        }
                        PathMatch::Prefix(p) if p.starts_with(prefix.as_str()) => {
                            PathSpecifier::Prefix(p.clone())
                        }
                        PathMatch::Exact(p) if p.starts_with(prefix.as_str()) => {
                            PathSpecifier::Path(p.clone())
                        }
                        _ => return None,
                    }
                }
            }
        }
        m.path_specifier = Some(path_specifier);
        Some(m)
    }

    fn route(&self, m: RouteMatch, target: Target) -> Route {
        let policy = &self.service.policy;
        let cluster_specifier = match target {
            Target::One(c) => route_action::ClusterSpecifier::Cluster(c),
            Target::Weighted(clusters) => {
                route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: clusters
                        .into_iter()
                        .map(|(name, weight, set_cookie)| ClusterWeight {
                            name,
                            weight: Some(UInt32Value { value: weight }),
                            response_headers_to_add: set_cookie
                                .map(|value| HeaderValueOption {
                                    header: Some(HeaderValue {
                                        key: "set-cookie".to_owned(),
                                        value,
                                        ..Default::default()
                                    }),
                                    append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
                                    ..Default::default()
                                })
                                .into_iter()
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
            }
        };
        let hash_policy = match &policy.load_balancing {
            LoadBalancing::RingHash(on) | LoadBalancing::Maglev(on) => vec![hash_policy(on)],
            _ => Vec::new(),
        };
        let request_mirror_policies = self
            .service
            .mirror
            .iter()
            .map(|m| RequestMirrorPolicy {
                cluster: Spec::cluster_name(self.service_name, &m.version),
                runtime_fraction: (m.percent.ppm() < Percent::MILLION).then(|| {
                    RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: m.percent.ppm(),
                            denominator: DenominatorType::Million as i32,
                        }),
                        runtime_key: String::new(),
                    }
                }),
                ..Default::default()
            })
            .collect();
        let retry_policy = (policy.retries.attempts > 0 && !policy.retries.on.is_empty()).then(|| {
            RetryPolicy {
                retry_on: policy.retries.on.join(","),
                num_retries: Some(UInt32Value {
                    value: policy.retries.attempts,
                }),
                per_try_timeout: policy.retries.per_try_timeout.map(duration),
                // Retry on another endpoint than the one that failed.
                retry_host_predicate: vec![RetryHostPredicate {
                    name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
                    config_type: Some(
                        envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                            any(&PreviousHostsPredicate {}),
                        ),
                    ),
                }],
                host_selection_retry_max_attempts: 3,
                ..Default::default()
            }
        });
        Route {
            r#match: Some(m),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(cluster_specifier),
                timeout: policy.timeout.map(duration),
                retry_policy,
                hash_policy,
                request_mirror_policies,
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())),
        ..Default::default()
    }
}

/// Route matching has no cookie matcher, so a cookie is matched as one `name=value` pair of the
/// Cookie header, bounded by `;` or the ends, never a substring of another cookie.
fn cookie_matcher(name: &str, value: &str) -> HeaderMatcher {
    let regex = format!(
        r"(?:^|.*;\s*){}={}(?:\s*;.*|\s*$)",
        regex_escape(name),
        regex_escape(value)
    );
    HeaderMatcher {
        name: "cookie".to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex,
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hash_policy(on: &HashOn) -> HashPolicy {
    let policy_specifier =
        match on {
            HashOn::Header(name) => hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: name.clone(),
                ..Default::default()
            }),
            HashOn::Cookie(name) => hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
                name: name.clone(),
                ..Default::default()
            }),
            HashOn::SourceIp => hash_policy::PolicySpecifier::ConnectionProperties(
                hash_policy::ConnectionProperties { source_ip: true },
            ),
        };
    HashPolicy {
        policy_specifier: Some(policy_specifier),
        ..Default::default()
    }
}
