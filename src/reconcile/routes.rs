//! Which routes a service gets, in match order, and where each sends requests:
//!
//! 1. preview: `<preview header>: <version>` reaches that idle version (blue-green);
//! 2. rules: user groups (header, cookie, query parameter, path prefix) go to their version;
//! 3. sticky canary: a request carrying the canary cookie stays on the version it names;
//! 4. the strategy: one cluster, or weighted clusters for a canary (each setting the sticky
//!    cookie for the version that answered).
//!
//! Traffic to a version besides the default one (a canary's share, a rule's group) goes through
//! its aggregate fallback cluster (see [`super::fallbacks`]).

use crate::ids::{ClusterId, ClusterRef, FallbackId};
use crate::spec::{Condition, Percent, Service, Strategy};

use super::{RoutePlan, StickyCookie, Target, WeightedTarget};

/// The routes of `service`; `deployed` says which versions have a cluster (a retired red-black
/// version gets no preview route).
pub(super) fn service_routes(
    name: &str,
    service: &Service,
    deployed: impl Fn(&str) -> bool,
) -> Vec<RoutePlan> {
    let version = |v: &str| ClusterRef::Version(ClusterId::new(name, v));
    let default = service.default_version();
    let fallback = |v: &str| {
        ClusterRef::Fallback(FallbackId {
            service: name.to_owned(),
            version: v.to_owned(),
            fallback: default.to_owned(),
        })
    };
    let mut routes = Vec::new();

    if let Some(preview) = service.strategy.preview() {
        let serving = service.strategy.serving_versions();
        for v in service.versions.keys() {
            if serving.contains(&v.as_str()) || !deployed(v) {
                continue;
            }
            routes.push(RoutePlan {
                conditions: vec![Condition::Header {
                    name: preview.header.clone(),
                    value: v.clone(),
                }],
                target: Target::One(version(v)),
            });
        }
    }

    for rule in &service.rules {
        let target = if rule.version == default {
            version(&rule.version)
        } else {
            fallback(&rule.version)
        };
        routes.push(RoutePlan {
            conditions: rule.conditions.clone(),
            target: Target::One(target),
        });
    }

    let main = match &service.strategy {
        Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. } => {
            Target::One(version(active))
        }
        Strategy::Shadow { primary } => Target::One(version(primary)),
        Strategy::Canary {
            stable,
            canary,
            weight,
            sticky,
            ..
        } => match weight.ppm() {
            0 => Target::One(version(stable)),
            Percent::MILLION => Target::One(version(canary)),
            ppm => {
                // Canary requests go to the canary while it has a healthy endpoint, else to stable.
                let canary_target = fallback(canary);
                if let Some(sticky) = sticky {
                    for (v, target) in [(canary, &canary_target), (stable, &version(stable))] {
                        routes.push(RoutePlan {
                            conditions: vec![Condition::Cookie {
                                name: sticky.cookie.clone(),
                                value: v.clone(),
                            }],
                            target: Target::One(target.clone()),
                        });
                    }
                }
                let set_cookie = |v: &str| {
                    sticky.as_ref().map(|s| StickyCookie {
                        name: s.cookie.clone(),
                        value: v.to_owned(),
                        ttl: s.ttl,
                    })
                };
                Target::Weighted(vec![
                    WeightedTarget {
                        cluster: version(stable),
                        weight: Percent::MILLION - ppm,
                        set_cookie: set_cookie(stable),
                    },
                    WeightedTarget {
                        cluster: canary_target,
                        weight: ppm,
                        set_cookie: set_cookie(canary),
                    },
                ])
            }
        },
    };
    routes.push(RoutePlan {
        conditions: Vec::new(),
        target: main,
    });
    routes
}
