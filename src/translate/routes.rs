//! A service's planned routes as Envoy routes under one listener route: the listener route's
//! path match narrowed by each route's conditions, its target as a cluster or weighted
//! clusters, and the service's timeout, retry policy, hash policy and mirror on every route.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction,
    RouteMatch, WeightedCluster,
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
use crate::reconcile::{RoutePlan, RoutePolicy, Target};
use crate::spec::Retries;
use crate::spec::{
    BUCKETS, BucketFrom, Condition, HashOn, HeaderEdits, ListenerKind, PathMatch, Percent, Rewrite,
};

/// The Envoy routes of `service` under a listener route matching `path`, in match order. A
/// planned route whose conditions cannot hold inside `path` (a rule's prefix outside it) has
/// none. Under a proxyless listener, the retry policy keeps only what gRPC clients act on.
pub(super) fn service_routes(
    path: &PathMatch,
    (routes, policy): (&[RoutePlan], &RoutePolicy),
    kind: ListenerKind,
) -> Vec<Route> {
    let base = RouteBuilder { policy, path, kind };
    routes
        .iter()
        .filter_map(|r: &RoutePlan| Some(base.route(base.matcher(&r.conditions)?, r)))
        .collect()
}

struct RouteBuilder<'a> {
    policy: &'a RoutePolicy,
    path: &'a PathMatch,
    kind: ListenerKind,
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
            if let Some(h) = header_matcher(c) {
                m.headers.push(h);
                continue;
            }
            match c {
                Condition::Header { .. } | Condition::Cookie { .. } | Condition::Bucket { .. } => {}
                Condition::Query { name, value } => {
                    m.query_parameters.push(query_matcher(name, value))
                }
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

    fn route(&self, m: RouteMatch, plan: &RoutePlan) -> Route {
        let policy = self.policy;
        let cluster_specifier = match &plan.target {
            Target::One(c) => route_action::ClusterSpecifier::Cluster(c.to_string()),
            Target::Weighted(clusters) => {
                route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: clusters
                        .iter()
                        .map(|w| ClusterWeight {
                            name: w.cluster.to_string(),
                            weight: Some(UInt32Value { value: w.weight }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
            }
        };
        let hash_policy = policy.hash.iter().map(hash_policy).collect();
        let request_mirror_policies = policy
            .mirror
            .iter()
            .map(|(cluster, percent)| RequestMirrorPolicy {
                cluster: cluster.to_string(),
                runtime_fraction: (percent.ppm() < Percent::MILLION).then(|| {
                    RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: percent.ppm(),
                            denominator: DenominatorType::Million as i32,
                        }),
                        runtime_key: String::new(),
                    }
                }),
                ..Default::default()
            })
            .collect();
        let retry_policy = match self.kind {
            ListenerKind::Envoy(_) | ListenerKind::Tcp(_) => {
                policy.retries.as_ref().map(envoy_retry_policy)
            }
            ListenerKind::Proxyless => policy
                .retries
                .as_ref()
                .and_then(super::proxyless::retry_policy),
        };
        // The id Envoy gave the request (a random UUID unless a trusted client sent one) is the
        // user's bucket from now on; `%` starts Envoy's header formatter.
        let response_headers_to_add = plan
            .set_cookie
            .iter()
            .map(|c| HeaderValueOption {
                header: Some(HeaderValue {
                    key: "set-cookie".to_owned(),
                    value: format!(
                        "{}=%REQ({REQUEST_ID})%; Path=/; Max-Age={}; HttpOnly",
                        c.name,
                        c.ttl.as_secs()
                    ),
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect();
        Route {
            r#match: Some(m),
            response_headers_to_add,
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(cluster_specifier),
                timeout: policy.timeout.map(duration),
                retry_policy,
                hash_policy,
                request_mirror_policies,
                upgrade_configs: if policy.websocket {
                    vec![route_action::UpgradeConfig {
                        upgrade_type: "websocket".to_owned(),
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

/// Envoy retries on another endpoint than the one that failed.
fn envoy_retry_policy(retries: &Retries) -> RetryPolicy {
    RetryPolicy {
            retry_on: retries.on.join(","),
            num_retries: Some(UInt32Value {
                value: retries.attempts,
            }),
            per_try_timeout: retries.per_try_timeout.map(duration),
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
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())),
        ..Default::default()
    }
}

/// Route matching has no cookie matcher, so a cookie is matched as one `name=value` pair of the
/// Cookie header, bounded by `;` or the ends, never a substring of another cookie: `value` is a
/// regex, followed by `rest` (a regex) up to the end of the value.
fn cookie_matcher(name: &str, value: &str, rest: &str) -> HeaderMatcher {
    let regex = format!(
        r"(?:^|.*;\s*){}={value}{rest}(?:\s*;.*|\s*$)",
        regex_escape(name),
    );
    regex_matcher("cookie", regex)
}

/// The header Envoy gives every request a random id in (a UUID, lowercase hex).
const REQUEST_ID: &str = "x-request-id";

/// A regex for three lowercase hex digits (how Envoy writes its ids) whose value is below
/// `below` (1 to 4096). Kept short: Envoy refuses regexes over a program size of 100.
fn hex_below(below: u16) -> String {
    const ANY: &str = "[0-9a-f]";
    let hex = |d: u16| char::from_digit(u32::from(d), 16).unwrap_or('0');
    // Digits 0 to d-1.
    let lower = |d: u16| match d {
        1 => "0".to_owned(),
        2..=10 => format!("[0-{}]", hex(d - 1)),
        11 => "[0-9a]".to_owned(),
        _ => format!("[0-9a-{}]", hex(d - 1)),
    };
    if below >= BUCKETS {
        return format!("{ANY}{{3}}");
    }
    let digits = [below >> 8, (below >> 4) & 0xf, below & 0xf];
    let mut alternatives = Vec::new();
    for (i, &d) in digits.iter().enumerate() {
        if d > 0 {
            let prefix: String = digits[..i].iter().map(|&p| hex(p)).collect();
            let rest = match 2 - i {
                0 => String::new(),
                1 => ANY.to_owned(),
                n => format!("{ANY}{{{n}}}"),
            };
            alternatives.push(format!("{prefix}{}{rest}", lower(d)));
        }
    }
    format!("(?:{})", alternatives.join("|"))
}

/// The header matcher a condition is sent as; `None` for a condition on something else than a
/// header (a query parameter, the path).
fn header_matcher(c: &Condition) -> Option<HeaderMatcher> {
    Some(match c {
        Condition::Header { name, value } => HeaderMatcher {
            name: name.clone(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(value))),
            ..Default::default()
        },
        Condition::Cookie { name, value } => cookie_matcher(name, &regex_escape(value), ""),
        Condition::Bucket { from, below } => match from {
            // The rest of the value is the rest of the id.
            BucketFrom::Cookie(name) => cookie_matcher(name, &hex_below(*below), "[^;]*"),
            BucketFrom::RequestId => regex_matcher(REQUEST_ID, format!("{}.*", hex_below(*below))),
        },
        Condition::Query { .. } | Condition::Prefix(_) => return None,
    })
}

fn query_matcher(name: &str, value: &str) -> QueryParameterMatcher {
    QueryParameterMatcher {
        name: name.to_owned(),
        query_parameter_match_specifier: Some(
            envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(exact(value)),
        ),
    }
}

/// The file's condition a header matcher was sent for, read back (for `cutover diff`); `None`
/// for a matcher cutover does not write. A reading is kept only if the condition is sent as
/// exactly this matcher again, so it can never disagree with what Envoy holds.
pub fn header_condition(h: &HeaderMatcher) -> Option<Condition> {
    let Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(pattern),
        ..
    })) = &h.header_match_specifier
    else {
        return None;
    };
    let candidate = match pattern {
        string_matcher::MatchPattern::Exact(value) => Condition::Header {
            name: h.name.clone(),
            value: value.clone(),
        },
        string_matcher::MatchPattern::SafeRegex(r) => match bucket_condition(&h.name, &r.regex) {
            Some(bucket) => bucket,
            None if h.name == "cookie" => {
                let (name, value) = cookie_pair(&r.regex)?;
                Condition::Cookie { name, value }
            }
            None => return None,
        },
        _ => return None,
    };
    (header_matcher(&candidate).as_ref() == Some(h)).then_some(candidate)
}

/// The file's condition a query parameter matcher was sent for, read back like
/// [`header_condition`].
pub fn query_condition(q: &QueryParameterMatcher) -> Option<Condition> {
    use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
    let Some(QueryParameterMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value)),
        ..
    })) = &q.query_parameter_match_specifier
    else {
        return None;
    };
    (query_matcher(&q.name, value) == *q).then(|| Condition::Query {
        name: q.name.clone(),
        value: value.clone(),
    })
}

/// The cookie name and value in a `cookie_matcher` regex of a literal value, unescaped.
fn cookie_pair(regex: &str) -> Option<(String, String)> {
    let pair = regex
        .strip_prefix(r"(?:^|.*;\s*)")?
        .strip_suffix(r"(?:\s*;.*|\s*$)")?;
    let mut unescaped = String::new();
    let mut chars = pair.chars();
    while let Some(c) = chars.next() {
        unescaped.push(if c == '\\' { chars.next()? } else { c });
    }
    // A cookie name is an HTTP token: never `=`.
    let (name, value) = unescaped.split_once('=')?;
    Some((name.to_owned(), value.to_owned()))
}

/// The sticky-bucket condition a header matcher of `hex_below`'s form renders, read back;
/// `None` for any other matcher.
fn bucket_condition(header: &str, regex: &str) -> Option<Condition> {
    let (from, range) = match header {
        "cookie" => {
            let pair = regex
                .strip_prefix(r"(?:^|.*;\s*)")?
                .strip_suffix(r"[^;]*(?:\s*;.*|\s*$)")?;
            let (name, range) = pair.split_once('=')?;
            let name: String = name.chars().filter(|c| *c != '\\').collect();
            (BucketFrom::Cookie(name), range)
        }
        REQUEST_ID => (BucketFrom::RequestId, regex.strip_suffix(".*")?),
        _ => return None,
    };
    let below = (1..=BUCKETS).find(|b| hex_below(*b) == range)?;
    Some(Condition::Bucket { from, below })
}

fn regex_matcher(header: &str, regex: String) -> HeaderMatcher {
    HeaderMatcher {
        name: header.to_owned(),
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

/// A route Envoy answers itself.
pub(super) fn respond(path: &PathMatch, status: u16, body: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(match path {
                PathMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
                PathMatch::Exact(p) => PathSpecifier::Path(p.clone()),
            }),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: u32::from(status),
            body: (!body.is_empty()).then(|| DataSource {
                specifier: Some(data_source::Specifier::InlineString(body.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The file's rewrite on a route to a service.
pub(super) fn rewrite(route: &mut Route, rewrite: &Rewrite) {
    let Some(route::Action::Route(action)) = &mut route.action else {
        return;
    };
    if let Some(prefix) = &rewrite.prefix {
        action.prefix_rewrite.clone_from(prefix);
    }
    if let Some(host) = &rewrite.host {
        action.host_rewrite_specifier = Some(
            route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()),
        );
    }
}

/// The file's header edits on a route, after what cutover itself adds (a sticky canary's
/// cookie).
pub(super) fn edit_headers(route: &mut Route, edits: &HeaderEdits) {
    let set = |(key, value): &(String, String)| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.clone(),
            // Envoy reads `%…%` in a value as a command: the file's text is taken as it is.
            value: value.replace('%', "%%"),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    route
        .request_headers_to_add
        .extend(edits.request_add.iter().map(set));
    route
        .request_headers_to_remove
        .extend(edits.request_remove.iter().cloned());
    route
        .response_headers_to_add
        .extend(edits.response_add.iter().map(set));
    route
        .response_headers_to_remove
        .extend(edits.response_remove.iter().cloned());
}

#[cfg(test)]
mod bucket_tests {
    use super::hex_below;

    /// What `cutover diff` reads back from a route is the condition it was sent for, for every
    /// kind of condition the file can hold, whatever its characters.
    #[test]
    fn every_condition_is_read_back_from_its_matcher() {
        use super::{
            BucketFrom, Condition, header_condition, header_matcher, query_condition, query_matcher,
        };
        use proptest::prelude::*;
        let token = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}";
        let value = "[ -~]{0,16}";
        let condition = prop_oneof![
            (token, value).prop_map(|(name, value)| Condition::Header { name, value }),
            (token, value).prop_map(|(name, value)| Condition::Cookie { name, value }),
            (token, 1u16..=4096).prop_map(|(name, below)| Condition::Bucket {
                from: BucketFrom::Cookie(name),
                below
            }),
            (1u16..=4096).prop_map(|below| Condition::Bucket {
                from: BucketFrom::RequestId,
                below
            }),
            (token, value).prop_map(|(name, value)| Condition::Query { name, value }),
        ];
        proptest!(|(c in condition)| {
            let read = match &c {
                Condition::Query { name, value } => query_condition(&query_matcher(name, value)),
                other => header_condition(&header_matcher(other).expect("a header condition")),
            };
            prop_assert_eq!(read, Some(c));
        });
    }

    /// A matcher cutover would not write is not read as one of its conditions.
    #[test]
    fn a_foreign_matcher_is_not_read_as_a_condition() {
        use super::{cookie_matcher, header_condition, regex_matcher};
        // A regex that is not a literal pair: the re-rendered matcher escapes the dot.
        let loose = regex_matcher("cookie", r"(?:^|.*;\s*)a=v.1(?:\s*;.*|\s*$)".to_owned());
        assert_eq!(header_condition(&loose), None);
        assert_eq!(
            header_condition(&regex_matcher("x-other", "abc".into())),
            None
        );
        let near_bucket = cookie_matcher("s", "[0-9a-f]{2}", "[^;]*");
        assert_eq!(header_condition(&near_bucket), None);
    }

    /// Every three-digit hex value is matched exactly when it is below the bound.
    #[test]
    fn hex_below_matches_exactly_the_lower_buckets() {
        for below in (1u16..=4096)
            .step_by(7)
            .chain([2, 11, 12, 16, 17, 256, 410, 4095, 4096])
        {
            let re = regex::Regex::new(&format!("^{}$", hex_below(below))).unwrap();
            for v in 0..4096u16 {
                let text = format!("{v:03x}");
                assert_eq!(
                    re.is_match(&text),
                    v < below,
                    "{text} against below {below}"
                );
            }
        }
    }
}
