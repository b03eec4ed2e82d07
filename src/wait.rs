//! `cutover wait drained|healthy`: whether what a rolling deploy waits for has happened, judged
//! from the plan (what cutover serves), what every Envoy answered, and what every Envoy
//! reported afterwards. Pure; the admin API gathers the inputs (the Envoys that hold the
//! service: those of node groups whose config includes it) and `cutover wait` asks until it is
//! done.
//!
//! - **Drained**: the endpoints are draining (or removed) in what cutover serves, every
//!   connected Envoy has ACKed that config, and what each Envoy reported *after* its ACK shows no
//!   request in flight to them: its load report places none on them, and its stats account for
//!   every request in flight to their versions (load reports can leave out an endpoint whose
//!   requests are all still in progress, so the stats' per-version count is the check that
//!   nothing is missing). A report from before the ACK could miss requests that started in
//!   between, so it is not enough.
//! - **Healthy**: the endpoints are not draining, every connected Envoy has ACKed the config,
//!   and a stats flush each Envoy sent after its ACK counts every non-draining endpoint of the
//!   version healthy (health checks passed, not ejected). Envoy reports health per version, not
//!   per endpoint, so waiting for one endpoint waits for its whole version.

use std::time::Instant;

use crate::api::{WaitAnswer, WaitError};
use crate::ids::ClusterId;
use crate::reconcile::{EndpointPlan, Health, Plan};
use crate::telemetry::InFlight;
use crate::telemetry::report::NodeHealth;

/// One connected Envoy, as far as waiting goes.
#[derive(Debug, Clone)]
pub struct Envoy {
    pub node: String,
    /// When it answered the current config; `None`: not yet.
    pub answered_at: Option<Instant>,
    /// It answered by rejecting part of it.
    pub rejected: bool,
}

/// The endpoints `target` names in `service`: a version's, one endpoint (by the address as the
/// file writes it), or the whole service's.
fn endpoints<'a>(
    plan: &'a Plan,
    service: &str,
    target: Option<&str>,
) -> Result<Vec<(&'a str, &'a EndpointPlan)>, WaitError> {
    let planned = plan
        .services
        .get(service)
        .ok_or_else(|| WaitError::UnknownService(service.to_owned()))?;
    let all = planned
        .versions
        .iter()
        .flat_map(|(v, p)| p.endpoints.iter().map(move |e| (v.as_str(), e)));
    let out: Vec<_> = match target {
        None => all.collect(),
        Some(t) if planned.versions.contains_key(t) => all.filter(|(v, _)| *v == t).collect(),
        Some(t) => all.filter(|(_, e)| e.address.to_string() == t).collect(),
    };
    if out.is_empty() {
        return Err(match target {
            Some(t) => WaitError::UnknownTarget {
                service: service.to_owned(),
                target: t.to_owned(),
                versions: planned.versions.keys().cloned().collect(),
            },
            None => WaitError::NoEndpoint(service.to_owned()),
        });
    }
    Ok(out)
}

/// Waits common to both: Envoys that have not answered the current config.
fn unanswered(envoys: &[Envoy], out: &mut Vec<String>) {
    for e in envoys {
        match (e.answered_at, e.rejected) {
            (None, _) => out.push(format!(
                "Envoy {} has not ACKed the current config yet",
                e.node
            )),
            (Some(_), true) => out.push(format!(
                "Envoy {} rejected the current config (NACK) and keeps what it had: see `cutover status`",
                e.node
            )),
            _ => {}
        }
    }
}

/// See the module docs. Every blocker still true is listed, requests in flight first, and
/// each request once: a request a load report places on an endpoint is not counted again
/// among those the stats see in flight to its version.
pub fn drained(
    plan: &Plan,
    service: &str,
    target: Option<&str>,
    envoys: &[Envoy],
    in_flight: &InFlight,
    stats: impl Fn(&ClusterId) -> Vec<NodeHealth>,
) -> Result<WaitAnswer, WaitError> {
    let endpoints = endpoints(plan, service, target)?;
    // Requests in flight come first: they are what a drain waits for.
    let mut requests = Vec::new();
    let mut waiting = Vec::new();
    for (version, e) in &endpoints {
        if e.health == Health::Active {
            waiting.push(format!(
                "{} of {service}/{version} is not draining: give it `drain: true` (or remove it) in the file",
                e.address
            ));
        }
        if e.address.is_name() {
            return Err(WaitError::ByName(e.address.to_string()));
        }
    }
    unanswered(envoys, &mut waiting);
    let targets: Vec<(&str, String)> = endpoints
        .iter()
        .map(|(v, ep)| (*v, ep.address.to_string()))
        .collect();
    for e in envoys {
        let Some(answered) = e.answered_at else {
            continue;
        };
        let node = in_flight.nodes.get(&e.node).filter(|n| n.load_reporting);
        let Some(node) = node else {
            waiting.push(format!(
                "Envoy {} sends no load reports, so its requests in flight are unknown (start it from a bootstrap `cutover bootstrap` prints)",
                e.node
            ));
            continue;
        };
        // What the latest report places on the targets holds even if it came before the ACK
        // (the config may have changed again since): those requests have not ended.
        let placed = |version: &str, address: Option<&str>| -> u64 {
            node.endpoints
                .iter()
                .filter(|x| x.service == service && x.version == version)
                .filter(|x| address.is_none_or(|a| x.address == a))
                .map(|x| x.requests)
                .sum()
        };
        for (version, address) in &targets {
            let n = placed(version, Some(address));
            if n > 0 {
                requests.push(format!(
                    "{n} request(s) in flight to {address} ({service}/{version}) from Envoy {}",
                    e.node
                ));
            }
        }
        if node.reported_at.is_none_or(|t| t <= answered) {
            waiting.push(format!(
                "a load report from Envoy {} sent after it ACKed the current config",
                e.node
            ));
            continue;
        }
        let mut versions: Vec<&str> = targets.iter().map(|(v, _)| *v).collect();
        versions.dedup();
        for version in versions {
            let id = ClusterId::new(service, version);
            let latest = stats(&id)
                .into_iter()
                .filter(|r| r.node == e.node)
                .max_by_key(|r| r.reported_at);
            let Some(latest) = latest.filter(|r| r.reported_at > answered) else {
                waiting.push(format!(
                    "stats from Envoy {} sent after it ACKed the current config (to count every request in flight to {id})",
                    e.node
                ));
                continue;
            };
            // In flight to the version by the stats, less every request the load report
            // places on one of its endpoints (targets included: those are listed above).
            let unplaced = latest.in_flight.saturating_sub(placed(version, None));
            if unplaced > 0 {
                requests.push(format!(
                    "{unplaced} request(s) in flight to {id} from Envoy {} that its load report does not place yet",
                    e.node
                ));
            }
        }
    }
    requests.append(&mut waiting);
    Ok(WaitAnswer::of(requests))
}

/// See the module docs. `health` gives, per version, what each Envoy's latest stats flush said.
pub fn healthy(
    plan: &Plan,
    service: &str,
    target: Option<&str>,
    envoys: &[Envoy],
    health: impl Fn(&ClusterId) -> Vec<NodeHealth>,
) -> Result<WaitAnswer, WaitError> {
    let endpoints = endpoints(plan, service, target)?;
    let mut waiting = Vec::new();
    for (version, e) in &endpoints {
        if e.health != Health::Active {
            waiting.push(format!(
                "{} of {service}/{version} is draining: it gets requests again once the file no longer drains it",
                e.address
            ));
        }
    }
    unanswered(envoys, &mut waiting);
    let mut versions: Vec<&str> = endpoints.iter().map(|(v, _)| *v).collect();
    versions.dedup();
    for version in versions {
        let id = ClusterId::new(service, version);
        let active = plan.services[service].versions[version]
            .endpoints
            .iter()
            .filter(|e| e.health == Health::Active)
            .count() as u64;
        let reports = health(&id);
        for e in envoys {
            let Some(answered) = e.answered_at else {
                continue;
            };
            let latest = reports
                .iter()
                .filter(|r| r.node == e.node)
                .max_by_key(|r| r.reported_at);
            match latest {
                None => waiting.push(format!(
                    "Envoy {} reports no stats for {id}, so its view of their health is unknown (start it from a bootstrap `cutover bootstrap` prints)",
                    e.node
                )),
                Some(r) if r.reported_at <= answered => waiting.push(format!(
                    "stats from Envoy {} sent after it ACKed the current config",
                    e.node
                )),
                Some(r) if r.healthy < active => waiting.push(format!(
                    "Envoy {} counts {} of the {active} serving endpoint(s) of {id} healthy",
                    e.node, r.healthy
                )),
                Some(_) => {}
            }
        }
    }
    Ok(WaitAnswer::of(waiting))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry::report::{EndpointInFlight, NodeInFlight};

    fn plan(endpoints: &str) -> Plan {
        let text = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      v1: {{ endpoints: [{endpoints}] }}\n    active: v1\n"
        );
        crate::app::compile_plan("t.yaml", &text).unwrap()
    }

    fn envoy(answered: Option<Instant>) -> Envoy {
        Envoy {
            node: "edge-1".into(),
            answered_at: answered,
            rejected: false,
        }
    }

    fn in_flight(reported_at: Instant, requests: u64) -> InFlight {
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(
            "edge-1".to_owned(),
            NodeInFlight {
                load_reporting: true,
                reported_at: Some(reported_at),
                endpoints: (requests > 0)
                    .then(|| EndpointInFlight {
                        service: "s".into(),
                        version: "v1".into(),
                        address: "127.0.0.1:8081".into(),
                        requests,
                    })
                    .into_iter()
                    .collect(),
            },
        );
        InFlight { nodes }
    }

    /// Stats edge-1 sent at `reported_at`, counting `in_flight` requests to the version.
    fn stats_at(reported_at: Instant, in_flight: u64) -> impl Fn(&ClusterId) -> Vec<NodeHealth> {
        move |_: &ClusterId| {
            vec![NodeHealth {
                node: "edge-1".into(),
                reported_at,
                healthy: 1,
                total: 2,
                in_flight,
            }]
        }
    }

    const DRAINING: &str = "{ address: 127.0.0.1:8081, drain: true }, 127.0.0.1:8082";

    #[test]
    fn drained_needs_the_drain_acked_and_a_later_report_with_nothing_in_flight() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let target = Some("127.0.0.1:8081");
        let stats = |in_flight: u64| stats_at(later, in_flight);
        let wait =
            |p: &Plan, e: Envoy, f: &InFlight| drained(p, "s", target, &[e], f, stats(0)).unwrap();

        let not_draining = wait(
            &plan("127.0.0.1:8081, 127.0.0.1:8082"),
            envoy(Some(t0)),
            &in_flight(later, 0),
        );
        assert!(!not_draining.done);
        assert!(not_draining.waiting_for[0].contains("is not draining"));

        let p = plan(DRAINING);
        let unanswered = wait(&p, envoy(None), &in_flight(later, 0));
        assert_eq!(
            unanswered.waiting_for,
            ["Envoy edge-1 has not ACKed the current config yet"]
        );
        // A report from before the ACK does not count, even with nothing in flight.
        let stale = wait(&p, envoy(Some(later)), &in_flight(t0, 0));
        assert!(!stale.done, "{stale:?}");
        let busy = wait(&p, envoy(Some(t0)), &in_flight(later, 3));
        assert_eq!(
            busy.waiting_for,
            ["3 request(s) in flight to 127.0.0.1:8081 (s/v1) from Envoy edge-1"]
        );
        let done = wait(&p, envoy(Some(t0)), &in_flight(later, 0));
        assert!(done.done, "{done:?}");
        // The stats count requests in flight the load report left out: not drained.
        let unplaced = drained(
            &p,
            "s",
            target,
            &[envoy(Some(t0))],
            &in_flight(later, 0),
            stats(2),
        )
        .unwrap();
        assert_eq!(
            unplaced.waiting_for,
            [
                "2 request(s) in flight to s/v1 from Envoy edge-1 that its load report does not place yet"
            ]
        );
        let silent = wait(&p, envoy(Some(t0)), &InFlight::default());
        assert!(silent.waiting_for[0].contains("sends no load reports"));
        // No Envoy at all: nothing can send it requests.
        assert!(
            drained(&p, "s", target, &[], &InFlight::default(), stats(0))
                .unwrap()
                .done
        );
        let unknown = drained(
            &p,
            "s",
            Some("10.0.0.1:1"),
            &[],
            &InFlight::default(),
            stats(0),
        )
        .unwrap_err();
        assert!(
            matches!(&unknown, WaitError::UnknownTarget { target, .. } if target == "10.0.0.1:1"),
            "{unknown:?}"
        );
        assert!(
            unknown
                .to_string()
                .contains("neither a version nor an endpoint"),
            "{unknown}"
        );
    }

    #[test]
    fn drained_names_each_request_once_and_first_even_after_a_later_ack() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let target = Some("127.0.0.1:8081");
        let p = plan(DRAINING);
        let stats = |in_flight: u64| stats_at(later, in_flight);
        // One request, placed by the load report and counted by the stats: listed once.
        let once = drained(
            &p,
            "s",
            target,
            &[envoy(Some(t0))],
            &in_flight(later, 1),
            stats(1),
        )
        .unwrap();
        assert_eq!(
            once.waiting_for,
            ["1 request(s) in flight to 127.0.0.1:8081 (s/v1) from Envoy edge-1"]
        );
        // The config changed again (another endpoint's drain ended) and the Envoy ACKed it
        // after its latest report: the request that report placed is still named, first.
        let reacked = drained(
            &p,
            "s",
            target,
            &[envoy(Some(later + Duration::from_secs(1)))],
            &in_flight(later, 1),
            stats(1),
        )
        .unwrap();
        assert_eq!(
            reacked.waiting_for,
            [
                "1 request(s) in flight to 127.0.0.1:8081 (s/v1) from Envoy edge-1",
                "a load report from Envoy edge-1 sent after it ACKed the current config"
            ]
        );
    }

    #[test]
    fn healthy_counts_every_serving_endpoint_of_the_version_after_the_ack() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let p = plan(DRAINING);
        let report = |at, healthy| {
            move |_: &ClusterId| {
                vec![NodeHealth {
                    node: "edge-1".into(),
                    reported_at: at,
                    healthy,
                    total: 2,
                    in_flight: 0,
                }]
            }
        };
        let on = |target, r| healthy(&p, "s", Some(target), &[envoy(Some(t0))], r).unwrap();
        assert!(on("127.0.0.1:8082", report(later, 1)).done);
        assert!(!on("127.0.0.1:8082", report(t0, 1)).done, "stale stats");
        assert_eq!(
            on("127.0.0.1:8082", report(later, 0)).waiting_for,
            ["Envoy edge-1 counts 0 of the 1 serving endpoint(s) of s/v1 healthy"]
        );
        assert!(on("127.0.0.1:8081", report(later, 1)).waiting_for[0].contains("is draining"));
    }
}
