//! TCP listeners: a `tcp_proxy` per cluster of the service, and a matcher that picks one per
//! connection.
//!
//! Envoy identifies a listener's filter chains by their whole content. When an update changes
//! only the filter chains (and the matcher that picks them), Envoy applies it in place: chains
//! it already has keep their connections, only chains that left are drained, and after its
//! drain time (`--drain-time-s`, 600 s by default) their connections are closed. So each
//! cluster of the service gets a chain that never changes while the cluster exists (a
//! `tcp_proxy` to it, named after it), and a switch or a canary step changes only the
//! `filter_chain_matcher`: new connections go to the new target, and every open connection
//! stays on the chain it came in on until it closes. A chain goes with its version (removed
//! from the file, after its drain); one naming a cluster that is gone is never picked.
//!
//! Weights pick a chain by a hash of the connection's source port (Envoy's `runtime_fraction`
//! input matcher, `hash % 10^6 < threshold`), one cumulative threshold per version on the same
//! hash, so the shares add up exactly and no runtime key is involved.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::matching::common_inputs::network::v3::SourcePortInput;
use envoy_types::pb::envoy::extensions::matching::input_matchers::runtime_fraction::v3::RuntimeFraction;
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HashPolicy, fractional_percent::DenominatorType, hash_policy,
};
use envoy_types::pb::google::protobuf::StringValue;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::Matcher;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{
    MatcherList, MatcherType, OnMatch, matcher_list, on_match,
};

use super::cluster::socket_address;
use super::{Resources, any};
use crate::ids::{ClusterId, ClusterRef, FallbackId};
use crate::reconcile::{ListenerPlan, Plan, Target};
use crate::spec::HashOn;

/// The resources of a TCP listener: the listener alone (it holds what routes would), if the
/// plan has something for it to proxy to.
pub(super) fn resources(l: &ListenerPlan, address: SocketAddr, plan: &Plan, out: &mut Resources) {
    out.listeners.extend(listener(l, address, plan));
}

fn listener(l: &ListenerPlan, address: SocketAddr, plan: &Plan) -> Option<Listener> {
    let name = l.routes.first()?.service()?;
    let service = plan.services.get(name)?;
    // Every version's cluster, and every aggregate one version could fall back to another
    // through, whether it exists now or not: a canary's `green~blue` lingers only for the drain
    // period after the canary ends, and its chain must outlive it for the connections on it.
    let versions = || service.versions.keys();
    let mut clusters: BTreeSet<ClusterRef> = versions()
        .map(|v| ClusterRef::Version(ClusterId::new(name, v)))
        .chain(service.fallbacks.keys().cloned().map(ClusterRef::Fallback))
        .collect();
    for primary in versions() {
        for fallback in versions().filter(|f| *f != primary) {
            clusters.insert(ClusterRef::Fallback(FallbackId {
                service: name.to_owned(),
                version: primary.clone(),
                fallback: fallback.clone(),
            }));
        }
    }
    let target = service
        .routes
        .iter()
        .find(|r| r.conditions.is_empty())
        .map(|r| &r.target);
    // Shares in parts per million, those of nothing dropped; the last takes what is left.
    let shares: Vec<(String, u32)> = match target {
        Some(Target::One(c)) => vec![(c.to_string(), crate::spec::Percent::MILLION)],
        Some(Target::Weighted(w)) => w
            .iter()
            .filter(|w| w.weight > 0)
            .map(|w| (w.cluster.to_string(), w.weight))
            .collect(),
        None => Vec::new(),
    };
    let (last, before) = shares.split_last()?;
    let mut threshold = 0u64;
    let matchers = before
        .iter()
        .map(|(cluster, weight)| {
            threshold += u64::from(*weight);
            matcher_list::FieldMatcher {
                predicate: Some(source_port_below(threshold)),
                on_match: Some(chain(cluster)),
            }
        })
        .collect::<Vec<_>>();
    Some(Listener {
        name: l.name.clone(),
        address: Some(socket_address(address)),
        filter_chains: clusters
            .iter()
            .map(|c| tcp_proxy_chain(&l.name, &c.to_string(), service.route_policy.hash.as_ref()))
            .collect(),
        filter_chain_matcher: Some(Matcher {
            matcher_type: (!matchers.is_empty())
                .then_some(MatcherType::MatcherList(MatcherList { matchers })),
            on_no_match: Some(Box::new(chain(&last.0))),
        }),
        ..Default::default()
    })
}

/// Whether a listener names its clusters itself (a TCP listener's chains) rather than taking
/// routes over RDS.
pub fn names_clusters(l: &Listener) -> bool {
    l.filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .any(|f| f.name == TCP_PROXY)
}

const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// The chain of one cluster: its name and content depend on nothing else (but the service's
/// hash policy), so that it is the same chain, with the same connections, whatever the weights.
fn tcp_proxy_chain(listener: &str, cluster: &str, hash: Option<&HashOn>) -> FilterChain {
    // Validation leaves a TCP service only the client's IP to hash on.
    let hash_policy = match hash {
        Some(HashOn::SourceIp) => vec![HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::SourceIp(
                hash_policy::SourceIp {},
            )),
        }],
        _ => Vec::new(),
    };
    let proxy = TcpProxy {
        stat_prefix: listener.to_owned(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
        hash_policy,
        ..Default::default()
    };
    FilterChain {
        name: cluster.to_owned(),
        filters: vec![Filter {
            name: TCP_PROXY.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
        }],
        ..Default::default()
    }
}

/// Picks the chain named `cluster`.
fn chain(cluster: &str) -> OnMatch {
    OnMatch {
        keep_matching: false,
        on_match: Some(on_match::OnMatch::Action(TypedExtensionConfig {
            name: cluster.to_owned(),
            typed_config: Some(any(&StringValue {
                value: cluster.to_owned(),
            })),
        })),
    }
}

/// True for the connections whose source port hashes below `threshold` parts per million.
fn source_port_below(threshold: u64) -> matcher_list::Predicate {
    use matcher_list::predicate::{MatchType, SinglePredicate, single_predicate};
    let fraction = RuntimeFraction {
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: u32::try_from(threshold).unwrap_or(u32::MAX),
                denominator: DenominatorType::Million as i32,
            }),
            runtime_key: String::new(),
        }),
        seed: 0,
    };
    matcher_list::Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(TypedExtensionConfig {
                name: "source_port".to_owned(),
                typed_config: Some(any(&SourcePortInput {})),
            }),
            matcher: Some(single_predicate::Matcher::CustomMatch(
                TypedExtensionConfig {
                    name: "share".to_owned(),
                    typed_config: Some(any(&fraction)),
                },
            )),
        })),
    }
}
