//! Drain before remove: what leaves the file lingers in Envoy as `DRAINING` for a while.
//!
//! An endpoint removed from a version stays in its load assignment with health status
//! `DRAINING` (no new requests; requests in flight finish), and a version removed from the file
//! stays a cluster, for the drain period; then they are removed.
//!
//! A removed version's endpoints are *not* marked draining: its endpoints update would reach
//! Envoy together with the new clusters, before the routes that move traffic away from it
//! (make-before-break), and would leave those routes with no healthy host for a moment. Once
//! the routes moved, no new request reaches the cluster anyway; it lingers only so that requests
//! in flight finish. This
//! works on translated resources, after the pure translation, and is itself pure: the caller
//! supplies the time. State is not kept across restarts (a restart inside a drain period
//! removes what was draining at once).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use prost::Message;

use crate::translate::Resources;

#[derive(Debug, Clone)]
struct LingeringCluster {
    until: Instant,
    cluster: Cluster,
    endpoints: ClusterLoadAssignment,
}

#[derive(Debug, Clone)]
struct LingeringEndpoint {
    until: Instant,
    endpoint: LbEndpoint,
}

/// Remembers what was served and keeps what disappears, draining, for `period`.
#[derive(Debug)]
pub struct Drainer {
    period: Duration,
    last: Option<Resources>,
    clusters: BTreeMap<String, LingeringCluster>,
    /// By cluster name, then by the endpoint's encoded address.
    endpoints: BTreeMap<String, BTreeMap<Vec<u8>, LingeringEndpoint>>,
}

fn address_key(e: &LbEndpoint) -> Vec<u8> {
    match &e.host_identifier {
        Some(
            envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep),
        ) => ep
            .address
            .as_ref()
            .map(|a| a.encode_to_vec())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn draining(mut e: LbEndpoint) -> LbEndpoint {
    e.health_status = HealthStatus::Draining as i32;
    e
}

impl Drainer {
    pub fn new(period: Duration) -> Drainer {
        Drainer {
            period,
            last: None,
            clusters: BTreeMap::new(),
            endpoints: BTreeMap::new(),
        }
    }

    /// `new` plus whatever left since the last call and is still within its drain period.
    /// Clusters named in `retired` leave at once: they had no traffic to drain.
    pub fn apply(
        &mut self,
        mut new: Resources,
        retired: &BTreeSet<String>,
        now: Instant,
    ) -> Resources {
        if self.period.is_zero() {
            return new;
        }
        let until = now + self.period;
        if let Some(prev) = self.last.take() {
            for c in &prev.clusters {
                if new.clusters.iter().any(|n| n.name == c.name)
                    || self.clusters.contains_key(&c.name)
                    || retired.contains(&c.name)
                {
                    continue;
                }
                let Some(cla) = prev.endpoints.iter().find(|e| e.cluster_name == c.name) else {
                    continue;
                };
                self.clusters.insert(
                    c.name.clone(),
                    LingeringCluster {
                        until,
                        cluster: c.clone(),
                        endpoints: cla.clone(),
                    },
                );
            }
            for old in &prev.endpoints {
                let Some(current) = new
                    .endpoints
                    .iter()
                    .find(|n| n.cluster_name == old.cluster_name)
                else {
                    continue;
                };
                let present: Vec<Vec<u8>> = current
                    .endpoints
                    .iter()
                    .flat_map(|l| l.lb_endpoints.iter().map(address_key))
                    .collect();
                for e in old.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
                    let key = address_key(e);
                    if present.contains(&key) {
                        continue;
                    }
                    self.endpoints
                        .entry(old.cluster_name.clone())
                        .or_default()
                        .entry(key)
                        .or_insert_with(|| LingeringEndpoint {
                            until,
                            endpoint: draining(e.clone()),
                        });
                }
            }
        }

        // Expired, or back in the file: no longer lingering.
        self.clusters
            .retain(|name, l| l.until > now && !new.clusters.iter().any(|c| &c.name == name));
        for (cluster, lingering) in &mut self.endpoints {
            let present: Vec<Vec<u8>> = new
                .endpoints
                .iter()
                .filter(|c| &c.cluster_name == cluster)
                .flat_map(|c| {
                    c.endpoints
                        .iter()
                        .flat_map(|l| l.lb_endpoints.iter().map(address_key))
                })
                .collect();
            lingering.retain(|key, l| l.until > now && !present.contains(key));
        }
        self.endpoints.retain(|cluster, l| {
            !l.is_empty() && new.endpoints.iter().any(|c| &c.cluster_name == cluster)
        });

        for l in self.clusters.values() {
            new.clusters.push(l.cluster.clone());
            new.endpoints.push(l.endpoints.clone());
        }
        for (cluster, lingering) in &self.endpoints {
            if let Some(cla) = new
                .endpoints
                .iter_mut()
                .find(|c| &c.cluster_name == cluster)
            {
                if cla.endpoints.is_empty() {
                    cla.endpoints.push(LocalityLbEndpoints::default());
                }
                cla.endpoints[0]
                    .lb_endpoints
                    .extend(lingering.values().map(|l| l.endpoint.clone()));
            }
        }
        new.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        new.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        self.last = Some(new.clone());
        new
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let clusters = self.clusters.values().map(|l| l.until);
        let endpoints = self
            .endpoints
            .values()
            .flat_map(|m| m.values().map(|l| l.until));
        clusters.chain(endpoints).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::compile_resources;

    fn resources(versions: &str, active: &str) -> Resources {
        let text = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n{versions}    active: {active}\n"
        );
        compile_resources("t.yaml", &text).unwrap()
    }

    fn endpoints(r: &Resources, cluster: &str) -> Vec<(String, i32)> {
        let cla = r
            .endpoints
            .iter()
            .find(|c| c.cluster_name == cluster)
            .unwrap();
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!() };
                let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else { panic!() };
                let Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else { panic!() };
                (format!("{}:{p}", sa.address), e.health_status)
            })
            .collect()
    }

    impl Drainer {
        fn apply_t(&mut self, r: Resources, now: Instant) -> Resources {
            self.apply(r, &BTreeSet::new(), now)
        }
    }

    const DRAINING: i32 = HealthStatus::Draining as i32;
    const UNKNOWN: i32 = HealthStatus::Unknown as i32;

    #[test]
    fn a_removed_endpoint_drains_for_the_period_then_goes() {
        let t0 = Instant::now();
        let mut d = Drainer::new(Duration::from_secs(5));
        let two = "      a: { endpoints: [127.0.0.1:8081, 127.0.0.1:8082] }\n";
        let one = "      a: { endpoints: [127.0.0.1:8081] }\n";
        d.apply_t(resources(two, "a"), t0);
        let r = d.apply_t(resources(one, "a"), t0);
        assert_eq!(
            endpoints(&r, "s/a"),
            [
                ("127.0.0.1:8081".into(), UNKNOWN),
                ("127.0.0.1:8082".into(), DRAINING)
            ]
        );
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_secs(5)));
        // An unrelated reload inside the period keeps it draining, without restarting the clock.
        let r = d.apply_t(resources(one, "a"), t0 + Duration::from_secs(4));
        assert_eq!(endpoints(&r, "s/a").len(), 2);
        let r = d.apply_t(resources(one, "a"), t0 + Duration::from_secs(5));
        assert_eq!(endpoints(&r, "s/a"), [("127.0.0.1:8081".into(), UNKNOWN)]);
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn a_removed_version_lingers_unchanged() {
        let t0 = Instant::now();
        let mut d = Drainer::new(Duration::from_secs(5));
        d.apply_t(resources("      a: { endpoints: [127.0.0.1:8081] }\n      b: { endpoints: [127.0.0.1:8082] }\n", "a"), t0);
        let r = d.apply_t(
            resources("      b: { endpoints: [127.0.0.1:8082] }\n", "b"),
            t0,
        );
        let names: Vec<&str> = r.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["s/a", "s/b"]);
        // Unchanged: routes may still point at it until Envoy has the new ones.
        assert_eq!(endpoints(&r, "s/a"), [("127.0.0.1:8081".into(), UNKNOWN)]);
        let r = d.apply_t(
            resources("      b: { endpoints: [127.0.0.1:8082] }\n", "b"),
            t0 + Duration::from_secs(6),
        );
        assert_eq!(r.clusters.len(), 1);
    }

    #[test]
    fn an_endpoint_put_back_stops_draining() {
        let t0 = Instant::now();
        let mut d = Drainer::new(Duration::from_secs(5));
        let two = "      a: { endpoints: [127.0.0.1:8081, 127.0.0.1:8082] }\n";
        d.apply_t(resources(two, "a"), t0);
        d.apply_t(
            resources("      a: { endpoints: [127.0.0.1:8081] }\n", "a"),
            t0,
        );
        let r = d.apply_t(resources(two, "a"), t0 + Duration::from_secs(1));
        assert_eq!(
            endpoints(&r, "s/a"),
            [
                ("127.0.0.1:8081".into(), UNKNOWN),
                ("127.0.0.1:8082".into(), UNKNOWN)
            ]
        );
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn zero_period_removes_at_once() {
        let t0 = Instant::now();
        let mut d = Drainer::new(Duration::ZERO);
        d.apply_t(
            resources(
                "      a: { endpoints: [127.0.0.1:8081, 127.0.0.1:8082] }\n",
                "a",
            ),
            t0,
        );
        let r = d.apply_t(
            resources("      a: { endpoints: [127.0.0.1:8081] }\n", "a"),
            t0,
        );
        assert_eq!(endpoints(&r, "s/a").len(), 1);
    }
}
