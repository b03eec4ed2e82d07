//! Which routes a service gets, in match order, and where each sends requests:
//!
//! 1. preview: `<preview header>: <version>` reaches that idle version (blue-green);
//! 2. rules: user groups (header, cookie, query parameter, path prefix) go to their version;
//! 3. sticky canary: a user's bucket (a random number from 0 to 4095, kept in a cookie) below
//!    the canary's share of 4096 goes to the canary, the others to stable; a first visit is
//!    bucketed by the random `x-request-id` Envoy gives it, which becomes the cookie. Raising
//!    the weight moves only the buckets it must, and nobody moves back;
//! 4. the strategy: one cluster, or weighted clusters for a canary.
//!
//! Traffic to a version besides the default one (a canary's share, a rule's group) goes through
//! its aggregate fallback cluster (see [`super::fallbacks`]).

use crate::ids::{ClusterId, ClusterRef, FallbackId};
use crate::spec::{BUCKETS, BucketFrom, Condition, Percent, Service, Strategy};

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
                set_cookie: None,
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
            set_cookie: None,
        });
    }

    let mut set_cookie = None;
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
                    let below = buckets_below(ppm);
                    let cookie = || BucketFrom::Cookie(sticky.cookie.clone());
                    for (from, below, target) in [
                        (cookie(), below, &canary_target),
                        (cookie(), BUCKETS, &version(stable)),
                        (BucketFrom::RequestId, below, &canary_target),
                    ] {
                        routes.push(RoutePlan {
                            conditions: vec![Condition::Bucket { from, below }],
                            target: Target::One(target.clone()),
                            set_cookie: None,
                        });
                    }
                    // A first visit gets its bucket as a cookie from both routes it can take.
                    let cookie = StickyCookie {
                        name: sticky.cookie.clone(),
                        ttl: sticky.ttl,
                    };
                    if let Some(first_visit) = routes.last_mut() {
                        first_visit.set_cookie = Some(cookie.clone());
                    }
                    set_cookie = Some(cookie);
                    Target::One(version(stable))
                } else {
                    Target::Weighted(vec![
                        WeightedTarget {
                            cluster: version(stable),
                            weight: Percent::MILLION - ppm,
                        },
                        WeightedTarget {
                            cluster: canary_target,
                            weight: ppm,
                        },
                    ])
                }
            }
        },
    };
    routes.push(RoutePlan {
        conditions: Vec::new(),
        target: main,
        set_cookie,
    });
    routes
}

/// The buckets a canary at `ppm` (above 0, below 100%) gets: its share of [`BUCKETS`],
/// rounded, and at least one and at most all but one, so both versions keep users.
fn buckets_below(ppm: u32) -> u16 {
    let exact = u64::from(ppm) * u64::from(BUCKETS);
    let rounded = (exact + u64::from(Percent::MILLION / 2)) / u64::from(Percent::MILLION);
    u16::try_from(rounded)
        .unwrap_or(BUCKETS)
        .clamp(1, BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::buckets_below;

    #[test]
    fn a_canary_gets_its_share_of_the_buckets() {
        assert_eq!(buckets_below(100_000), 410); // 10%: 409.6
        assert_eq!(buckets_below(500_000), 2048);
        assert_eq!(buckets_below(1), 1); // never none
        assert_eq!(buckets_below(999_999), 4095); // never all
        assert_eq!(buckets_below(250_000), 1024);
    }
}
