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
//!
//! In cluster mode an Envoy's xDS stream, load reports and stats may reach three different
//! replicas: the replica asked merges every replica's [`Facts`], whose times are wall-clock
//! ([`Seen`]); across two replicas, "after" needs a margin of [`CLOCK_SKEW`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::{WaitAnswer, WaitError};
use crate::ids::ClusterId;
use crate::reconcile::{EndpointPlan, Health, Plan};
use crate::telemetry::report::EndpointInFlight;

/// How far apart the clocks of two replicas may be (NTP keeps them within milliseconds): a
/// report one replica received counts as sent after an ACK another replica saw only when it is
/// later by more than this. On one replica, any later instant counts.
pub const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// When a replica saw something (an ACK, a report arrive), by its wall clock: what several
/// replicas saw is put together, and compared, in these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Microseconds since the Unix epoch.
    pub at_us: u64,
    /// Whose clock: 0 for the replica asked, others numbered as their facts are gathered.
    #[serde(skip)]
    pub replica: usize,
}

impl Seen {
    /// An instant of this process on its wall clock, from one reading of both clocks (so that
    /// instants keep their order exactly).
    pub fn local(at: Instant, now: (Instant, SystemTime)) -> Seen {
        let wall = now
            .1
            .checked_sub(now.0.saturating_duration_since(at))
            .unwrap_or(UNIX_EPOCH);
        let at_us = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Seen { at_us, replica: 0 }
    }

    /// Whether this certainly came after `earlier`: on one replica's clock, or by more than
    /// [`CLOCK_SKEW`] across two.
    pub fn after(self, earlier: Seen) -> bool {
        let margin = if self.replica == earlier.replica {
            0
        } else {
            u64::try_from(CLOCK_SKEW.as_micros()).unwrap_or(u64::MAX)
        };
        self.at_us > earlier.at_us.saturating_add(margin)
    }

    fn latest(a: Seen, b: Seen) -> Seen {
        if b.at_us > a.at_us { b } else { a }
    }
}

/// One connected Envoy, as far as waiting goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envoy {
    pub node: String,
    /// When it answered the current config; `None`: not yet.
    pub answered_at: Option<Seen>,
    /// It answered by rejecting part of it.
    pub rejected: bool,
}

/// An Envoy's latest load report: the requests it has in progress, endpoint by endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub reported_at: Option<Seen>,
    /// Endpoints with requests in progress (none listed: nothing in flight).
    pub endpoints: Vec<EndpointInFlight>,
}

/// What an Envoy's latest stats flush says of one version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReport {
    pub node: String,
    pub reported_at: Seen,
    /// Endpoints it counts healthy (health checks passed, not ejected, not draining).
    pub healthy: u64,
    pub total: u64,
    /// Requests sent to the version's endpoints and not answered yet, plus those waiting for a
    /// connection: all of them, where load reports list only some.
    pub in_flight: u64,
}

/// Everything a wait on one service is judged from: what the Envoys that hold it answered and
/// reported. One replica gathers its own; in cluster mode the replica asked adds every other
/// replica's (`GET /wait-facts`), since an Envoy's xDS stream, its load reports and its stats
/// may each be on another replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Facts {
    pub envoys: Vec<Envoy>,
    /// By node id: the Envoys that send load reports.
    pub load: BTreeMap<String, LoadReport>,
    /// By version of the service: each Envoy's stats about it.
    pub stats: BTreeMap<String, Vec<StatsReport>>,
    /// Replicas that did not say what their Envoys hold: until they do (or leave the cluster),
    /// nothing is done.
    #[serde(skip)]
    pub unheard: Vec<String>,
}

impl Facts {
    /// Facts another replica sent: its times are by its clock, numbered `replica`.
    #[must_use]
    pub fn from_replica(mut self, replica: usize) -> Facts {
        let mut mark = |s: &mut Seen| s.replica = replica;
        for e in &mut self.envoys {
            e.answered_at.as_mut().map(&mut mark);
        }
        for l in self.load.values_mut() {
            l.reported_at.as_mut().map(&mut mark);
        }
        for r in self.stats.values_mut().flatten() {
            mark(&mut r.reported_at);
        }
        self
    }

    /// Adds what another replica saw. An Envoy with streams on both (it moved, and the old
    /// stream has not ended yet) has answered once it answered on both; its requests in flight
    /// are what either report places (counted twice rather than missed).
    pub fn merge(&mut self, other: Facts) {
        for e in other.envoys {
            match self.envoys.iter_mut().find(|x| x.node == e.node) {
                Some(x) => {
                    x.answered_at = x
                        .answered_at
                        .zip(e.answered_at)
                        .map(|(a, b)| Seen::latest(a, b));
                    x.rejected |= e.rejected;
                }
                None => self.envoys.push(e),
            }
        }
        for (node, l) in other.load {
            let mine = self.load.entry(node).or_default();
            mine.reported_at = match (mine.reported_at, l.reported_at) {
                (Some(a), Some(b)) => Some(Seen::latest(a, b)),
                (a, b) => a.or(b),
            };
            mine.endpoints.extend(l.endpoints);
        }
        for (version, reports) in other.stats {
            self.stats.entry(version).or_default().extend(reports);
        }
        self.unheard.extend(other.unheard);
    }

    /// The latest stats `node` sent about `version`.
    fn latest_stats(&self, version: &str, node: &str) -> Option<&StatsReport> {
        self.stats
            .get(version)?
            .iter()
            .filter(|r| r.node == node)
            .max_by_key(|r| r.reported_at.at_us)
    }
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

/// Waits common to both: replicas not heard from, Envoys that have not answered the current
/// config.
fn unanswered(facts: &Facts, out: &mut Vec<String>) {
    for r in &facts.unheard {
        out.push(format!(
            "replica {r} to say what its Envoys hold and report (it did not answer; a replica that stops leaves the cluster with its lease)"
        ));
    }
    for e in &facts.envoys {
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
    facts: &Facts,
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
    unanswered(facts, &mut waiting);
    let targets: Vec<(&str, String)> = endpoints
        .iter()
        .map(|(v, ep)| (*v, ep.address.to_string()))
        .collect();
    for e in &facts.envoys {
        let Some(answered) = e.answered_at else {
            continue;
        };
        let Some(node) = facts.load.get(&e.node) else {
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
        if node.reported_at.is_none_or(|t| !t.after(answered)) {
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
            let latest = facts.latest_stats(version, &e.node);
            let Some(latest) = latest.filter(|r| r.reported_at.after(answered)) else {
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

/// See the module docs.
pub fn healthy(
    plan: &Plan,
    service: &str,
    target: Option<&str>,
    facts: &Facts,
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
    unanswered(facts, &mut waiting);
    let mut versions: Vec<&str> = endpoints.iter().map(|(v, _)| *v).collect();
    versions.dedup();
    for version in versions {
        let id = ClusterId::new(service, version);
        let active = plan.services[service].versions[version]
            .endpoints
            .iter()
            .filter(|e| e.health == Health::Active)
            .count() as u64;
        for e in &facts.envoys {
            let Some(answered) = e.answered_at else {
                continue;
            };
            match facts.latest_stats(version, &e.node) {
                None => waiting.push(format!(
                    "Envoy {} reports no stats for {id}, so its view of their health is unknown (start it from a bootstrap `cutover bootstrap` prints)",
                    e.node
                )),
                Some(r) if !r.reported_at.after(answered) => waiting.push(format!(
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
    use super::*;

    fn plan(endpoints: &str) -> Plan {
        let text = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      v1: {{ endpoints: [{endpoints}] }}\n    active: v1\n"
        );
        crate::app::compile_plan("t.yaml", &text).unwrap()
    }

    /// `ms` milliseconds into the test, on replica 0's clock.
    fn at(ms: u64) -> Seen {
        Seen {
            at_us: ms * 1_000,
            replica: 0,
        }
    }

    fn envoy(answered: Option<Seen>) -> Envoy {
        Envoy {
            node: "edge-1".into(),
            answered_at: answered,
            rejected: false,
        }
    }

    /// edge-1 answered at `answered`; its load report at `load.0` places `load.1` requests on
    /// 127.0.0.1:8081 and its stats at `stats.0` count `stats.1` in flight to v1 (one of two
    /// endpoints healthy).
    fn facts(answered: Option<Seen>, load: Option<(Seen, u64)>, stats: (Seen, u64)) -> Facts {
        let mut f = Facts {
            envoys: vec![envoy(answered)],
            ..Facts::default()
        };
        if let Some((reported_at, requests)) = load {
            let endpoints = (requests > 0)
                .then(|| EndpointInFlight {
                    service: "s".into(),
                    version: "v1".into(),
                    address: "127.0.0.1:8081".into(),
                    requests,
                })
                .into_iter()
                .collect();
            let report = LoadReport {
                reported_at: Some(reported_at),
                endpoints,
            };
            f.load.insert("edge-1".into(), report);
        }
        f.stats.insert(
            "v1".into(),
            vec![StatsReport {
                node: "edge-1".into(),
                reported_at: stats.0,
                healthy: 1,
                total: 2,
                in_flight: stats.1,
            }],
        );
        f
    }

    const DRAINING: &str = "{ address: 127.0.0.1:8081, drain: true }, 127.0.0.1:8082";

    #[test]
    fn drained_needs_the_drain_acked_and_a_later_report_with_nothing_in_flight() {
        let (t0, later) = (at(0), at(1_000));
        let target = Some("127.0.0.1:8081");
        let wait = |p: &Plan, answered, load| {
            drained(p, "s", target, &facts(answered, load, (later, 0))).unwrap()
        };

        let not_draining = wait(
            &plan("127.0.0.1:8081, 127.0.0.1:8082"),
            Some(t0),
            Some((later, 0)),
        );
        assert!(!not_draining.done);
        assert!(not_draining.waiting_for[0].contains("is not draining"));

        let p = plan(DRAINING);
        let unanswered = wait(&p, None, Some((later, 0)));
        assert_eq!(
            unanswered.waiting_for,
            ["Envoy edge-1 has not ACKed the current config yet"]
        );
        // A report from before the ACK does not count, even with nothing in flight.
        let stale = wait(&p, Some(later), Some((t0, 0)));
        assert!(!stale.done, "{stale:?}");
        let busy = wait(&p, Some(t0), Some((later, 3)));
        assert_eq!(
            busy.waiting_for,
            ["3 request(s) in flight to 127.0.0.1:8081 (s/v1) from Envoy edge-1"]
        );
        let done = wait(&p, Some(t0), Some((later, 0)));
        assert!(done.done, "{done:?}");
        // The stats count requests in flight the load report left out: not drained.
        let unplaced = drained(
            &p,
            "s",
            target,
            &facts(Some(t0), Some((later, 0)), (later, 2)),
        )
        .unwrap();
        assert_eq!(
            unplaced.waiting_for,
            [
                "2 request(s) in flight to s/v1 from Envoy edge-1 that its load report does not place yet"
            ]
        );
        let silent = wait(&p, Some(t0), None);
        assert!(silent.waiting_for[0].contains("sends no load reports"));
        // No Envoy at all: nothing can send it requests.
        assert!(drained(&p, "s", target, &Facts::default()).unwrap().done);
        let unknown = drained(&p, "s", Some("10.0.0.1:1"), &Facts::default()).unwrap_err();
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
        let (t0, later) = (at(0), at(1_000));
        let target = Some("127.0.0.1:8081");
        let p = plan(DRAINING);
        // One request, placed by the load report and counted by the stats: listed once.
        let once = drained(
            &p,
            "s",
            target,
            &facts(Some(t0), Some((later, 1)), (later, 1)),
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
            &facts(Some(at(2_000)), Some((later, 1)), (later, 1)),
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
        let (t0, later) = (at(0), at(1_000));
        let p = plan(DRAINING);
        let on = |target, stats_at, healthy_count| {
            let mut f = facts(Some(t0), None, (stats_at, 0));
            f.stats.get_mut("v1").unwrap()[0].healthy = healthy_count;
            healthy(&p, "s", Some(target), &f).unwrap()
        };
        assert!(on("127.0.0.1:8082", later, 1).done);
        assert!(!on("127.0.0.1:8082", t0, 1).done, "stale stats");
        assert_eq!(
            on("127.0.0.1:8082", later, 0).waiting_for,
            ["Envoy edge-1 counts 0 of the 1 serving endpoint(s) of s/v1 healthy"]
        );
        assert!(on("127.0.0.1:8081", later, 1).waiting_for[0].contains("is draining"));
    }

    /// Cluster mode: the ACK seen by one replica, the reports received by another.
    #[test]
    fn facts_of_several_replicas_are_merged_and_compared_across_clocks_with_a_margin() {
        let p = plan(DRAINING);
        let target = Some("127.0.0.1:8081");
        // Replica 0 holds the Envoy's xDS stream; replica 1 its load reports and stats.
        let split = |report_ms: u64, requests: u64| {
            let mut mine = facts(Some(at(10_000)), None, (at(0), 0));
            mine.stats.clear();
            let theirs = Facts {
                envoys: Vec::new(),
                ..facts(None, Some((at(report_ms), requests)), (at(report_ms), 0))
            };
            mine.merge(theirs.from_replica(1));
            mine
        };
        // Half a second after the ACK by another clock: maybe before it. Not enough.
        let close = drained(&p, "s", target, &split(10_500, 0)).unwrap();
        assert_eq!(
            close.waiting_for,
            ["a load report from Envoy edge-1 sent after it ACKed the current config"]
        );
        assert!(drained(&p, "s", target, &split(11_500, 0)).unwrap().done);
        let busy = drained(&p, "s", target, &split(11_500, 2)).unwrap();
        assert_eq!(
            busy.waiting_for,
            ["2 request(s) in flight to 127.0.0.1:8081 (s/v1) from Envoy edge-1"]
        );
        // On one replica's clock, any later instant is after.
        assert!(
            Seen {
                at_us: 10_000_001,
                replica: 0
            }
            .after(at(10_000))
        );
        assert!(!at(10_000).after(at(10_000)));

        // An Envoy with a stream on two replicas has answered only once it answered on both;
        // a replica that did not answer holds the wait.
        let mut both = facts(Some(at(1_000)), Some((at(5_000), 0)), (at(5_000), 0));
        let mut other = Facts {
            envoys: vec![envoy(None)],
            ..Facts::default()
        };
        other.unheard.push("c".into());
        both.merge(other.from_replica(2));
        assert_eq!(
            drained(&p, "s", target, &both).unwrap().waiting_for,
            [
                "replica c to say what its Envoys hold and report (it did not answer; a replica that stops leaves the cluster with its lease)",
                "Envoy edge-1 has not ACKed the current config yet"
            ]
        );
    }

    #[test]
    fn facts_travel_between_replicas_as_json_and_local_instants_keep_their_order() {
        let f = facts(Some(at(1_000)), Some((at(2_000), 1)), (at(2_000), 1));
        let back: Facts = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back.envoys[0].answered_at, Some(at(1_000)));
        assert_eq!(back.load["edge-1"].endpoints, f.load["edge-1"].endpoints);
        let now = (Instant::now(), SystemTime::now());
        let a = Seen::local(now.0 - Duration::from_micros(3), now);
        let b = Seen::local(now.0, now);
        assert!(b.after(a) && !a.after(b));
        assert_eq!(b.at_us - a.at_us, 3);
    }
}
