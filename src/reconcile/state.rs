//! Runtime state: what decides what Envoy gets besides the file, as plain data advanced by a
//! pure reducer ([`RuntimeState::reduce`]).
//!
//! - Endpoints and versions that left the file keep being served for the drain period: an
//!   endpoint as `DRAINING` (no new requests, requests in flight finish), a version (and an
//!   aggregate cluster nothing routes to any more) unchanged, because the routes that moved its
//!   traffic away already keep new requests from it.
//! - A red-black service's previous version is kept after a switch until every Envoy holding
//!   the service has answered the switch and the service's grace period has passed (and while
//!   a switch analysis may still switch back to it).
//! - Automated rollouts: the canary's current weight and its checks, or a switch being watched
//!   ([`super::rollout`]).
//!
//! Deadlines are wall-clock [`Timestamp`]s, so a restarted cutover that loads this state (see
//! [`crate::store`]) keeps serving what was draining or retiring until the original deadline.
//! The reducer never looks at a clock: every event comes with its `now`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::rollout::{self, Gate, Kind, Observation, Rollout, Status};
use super::{deployed_versions, fallbacks};
use crate::api::{CommandError, RolloutCommand};
use crate::ids::{ClusterId, FallbackId};
use crate::spec::{Endpoint, EndpointAddress, Policy, Service, Spec, Strategy};

/// A wall-clock instant with millisecond precision, written as RFC 3339 in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    pub fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp::from)
            .map_err(|e| serde::de::Error::custom(format!("invalid time {text:?}: {e}")))
    }
}

/// An endpoint removed from the file, served `DRAINING` until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingEndpoint {
    pub until: Timestamp,
    /// Its load-balancing weight when it left (kept so the load assignment changes only in
    /// health status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A version removed from the file, served unchanged until `until`. It carries its own
/// definition: the file no longer has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedVersion {
    pub until: Timestamp,
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    /// The node groups whose listeners routed to its service when it left: their Envoys keep
    /// it while it drains. Empty: the file had no groups (every Envoy held it).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub groups: BTreeSet<String>,
}

/// A red-black version kept after traffic moved away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    /// When the switch away from it was loaded.
    pub since: Timestamp,
    /// When every Envoy holding the service had answered the switch; the grace period runs
    /// from here. `None`: still waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<Timestamp>,
}

impl Retiring {
    /// When the version goes, once known.
    pub fn deadline(&self, grace: Duration) -> Option<Timestamp> {
        self.answered.map(|t| t + grace)
    }
}

/// Everything that decides what Envoy gets besides the file. See the module docs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeState {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retiring: BTreeMap<ClusterId, Retiring>,
    /// By cluster, then by address (an IP address or a name, written as in the file).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub draining: BTreeMap<ClusterId, BTreeMap<EndpointAddress, DrainingEndpoint>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<ClusterId, RemovedVersion>,
    /// Aggregate clusters no route sends to any more, kept until the deadline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallbacks: BTreeMap<FallbackId, Timestamp>,
    /// Automated rollouts, by service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, Rollout>,
    /// The last [`PAST_ROLLOUTS`] rollouts of each service of the file that a new one replaced
    /// or the file ended, oldest first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub past_rollouts: BTreeMap<String, VecDeque<Rollout>>,
    /// The drain period of the last file loaded (a setting of `cutover serve`, not state).
    #[serde(skip)]
    drain_period: Duration,
}

/// Equal when the state is: the drain period is a setting, not state.
impl PartialEq for RuntimeState {
    fn eq(&self, other: &Self) -> bool {
        self.retiring == other.retiring
            && self.draining == other.draining
            && self.removed == other.removed
            && self.fallbacks == other.fallbacks
            && self.rollouts == other.rollouts
            && self.past_rollouts == other.past_rollouts
    }
}

/// How many ended rollouts each service keeps.
pub const PAST_ROLLOUTS: usize = 10;

/// What the file replaced when a valid one is loaded.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    /// The first file since cutover started, with a runtime state that is known: what Envoy
    /// holds is this state applied to the file.
    Start,
    /// The first file since cutover started, and the runtime state was lost (a corrupt state
    /// file): keep every version the file lists, as if each red-black service had just switched.
    StartUnknown,
    /// The file that was served until now.
    File(&'a Spec),
}

/// Something that happened. Each comes with the file in effect after it and the time.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A valid file was loaded; what left it starts draining for `drain_period`.
    FileLoaded {
        previous: Previous<'a>,
        drain_period: Duration,
    },
    /// Every Envoy that holds these services has answered the current config: ACKed it, or
    /// rejected it (an Envoy that rejects a switch keeps the old version's cluster itself for as
    /// long as its routes use it, so it does not hold the others' retirement).
    Answered { services: &'a BTreeSet<String> },
    /// Time passed: rollout steps end, what expired is forgotten.
    Tick,
    /// A rollout check's figures for `service`.
    Observed {
        service: &'a str,
        observation: &'a Observation,
    },
    /// The webhooks of the gate `service`'s rollout waits at answered (`Ok`: all 2xx).
    GateAnswered {
        service: &'a str,
        gate: Gate,
        answer: &'a Result<(), String>,
    },
}

impl RuntimeState {
    /// Advances the state by one event. `spec` is the file in effect after the event.
    pub fn reduce(&mut self, spec: &Spec, event: Event<'_>, now: Timestamp) {
        let before = match event {
            Event::FileLoaded {
                previous: Previous::File(old),
                ..
            } => self.routed_fallbacks(old),
            Event::FileLoaded { .. } => BTreeSet::new(),
            _ => self.routed_fallbacks(spec),
        };
        match event {
            Event::FileLoaded {
                previous,
                drain_period,
            } => {
                self.drain_period = drain_period;
                self.file_loaded(spec, previous, now);
            }
            Event::Answered { services } => {
                for (id, r) in &mut self.retiring {
                    if r.answered.is_none() && services.contains(&id.service) {
                        r.answered = Some(now);
                    }
                }
                for (name, r) in &mut self.rollouts {
                    if services.contains(name)
                        && let Some(service) = spec.services.get(name)
                    {
                        rollout::on_answered(r, service.strategy.analysis(), now);
                    }
                }
            }
            Event::Tick => {
                for (name, r) in &mut self.rollouts {
                    if let Some(service) = spec.services.get(name) {
                        rollout::on_tick(r, &service.strategy, now);
                    }
                }
            }
            Event::Observed {
                service,
                observation,
            } => {
                if let (Some(r), Some(analysis)) = (
                    self.rollouts.get_mut(service),
                    spec.services
                        .get(service)
                        .and_then(|s| s.strategy.analysis()),
                ) {
                    rollout::on_observed(r, analysis, observation, now);
                }
            }
            Event::GateAnswered {
                service,
                gate,
                answer,
            } => {
                if let (Some(r), Some(s)) =
                    (self.rollouts.get_mut(service), spec.services.get(service))
                {
                    rollout::on_gate(r, &s.strategy, gate, answer, now);
                }
            }
        }
        self.settle(spec, before, now);
    }

    /// An operator's command for `service`'s rollout. Pure, like [`RuntimeState::reduce`];
    /// returns what it did, or why it did nothing.
    pub fn command(
        &mut self,
        spec: &Spec,
        service: &str,
        command: RolloutCommand,
        by: &str,
        now: Timestamp,
    ) -> Result<&'static str, CommandError> {
        let strategy = &spec
            .services
            .get(service)
            .ok_or_else(|| CommandError::UnknownService(service.to_owned()))?
            .strategy;
        let before = self.routed_fallbacks(spec);
        let r = self
            .rollouts
            .get_mut(service)
            .ok_or_else(|| CommandError::NoRollout(service.to_owned()))?;
        let done = rollout::on_command(r, strategy, command, by, now)?;
        self.settle(spec, before, now);
        Ok(done)
    }

    /// After any event: aggregate clusters routes stopped using linger for the drain period,
    /// red-black bookkeeping follows what is served, what expired is forgotten.
    fn settle(&mut self, spec: &Spec, routed_before: BTreeSet<FallbackId>, now: Timestamp) {
        let routed = self.routed_fallbacks(spec);
        if !self.drain_period.is_zero() {
            for f in routed_before.difference(&routed) {
                self.fallbacks
                    .entry(f.clone())
                    .or_insert(now + self.drain_period);
            }
        }
        self.fallbacks.retain(|f, _| !routed.contains(f));
        // A switch that went back: the version it went to retires like any previous version.
        for (name, r) in &self.rollouts {
            if let (Kind::Switch { to, .. }, Status::Failed(_), Some(service)) =
                (&r.kind, &r.status, spec.services.get(name))
                && matches!(service.strategy, Strategy::RedBlack { .. })
            {
                self.retiring
                    .entry(ClusterId::new(name, to))
                    .or_insert(Retiring {
                        since: now,
                        answered: None,
                    });
            }
        }
        // Versions that get traffic again do not retire.
        let rollouts = &self.rollouts;
        self.retiring.retain(|id, _| {
            spec.services.get(&id.service).is_some_and(|s| {
                !rollout::effective(s, rollouts.get(&id.service))
                    .receiving_versions()
                    .contains(id.version.as_str())
            })
        });
        self.expire(spec, now);
    }

    /// The aggregate clusters routes use when `spec` is served with this state.
    fn routed_fallbacks(&self, spec: &Spec) -> BTreeSet<FallbackId> {
        spec.services
            .iter()
            .flat_map(|(name, s)| fallbacks(name, &self.effective(name, s)))
            .collect()
    }

    /// `service` as served: with its rollout's weight, or switched back.
    pub fn effective<'a>(&self, name: &str, service: &'a Service) -> std::borrow::Cow<'a, Service> {
        rollout::effective(service, self.rollouts.get(name))
    }

    #[allow(
        clippy::too_many_lines,
        reason = "what a new file changes, in the order the rules apply"
    )]
    fn file_loaded(&mut self, spec: &Spec, previous: Previous<'_>, now: Timestamp) {
        let drain_period = self.drain_period;
        // What Envoy holds from the previous file, before this event changes the state.
        let before: Vec<(ClusterId, Vec<Endpoint>, Policy)> = match previous {
            Previous::File(old) => deployed_versions(old, self, now)
                .map(|(id, version, policy)| (id, version.endpoints.clone(), policy.clone()))
                .collect(),
            Previous::Start | Previous::StartUnknown => Vec::new(),
        };

        // What each service served before, as served (with its rollout).
        let served_before: BTreeMap<&str, (String, BTreeSet<String>)> = match previous {
            Previous::File(old) => old
                .services
                .iter()
                .map(|(name, s)| {
                    let s = self.effective(name, s);
                    let receiving = s.receiving_versions().into_iter().map(str::to_owned);
                    (
                        name.as_str(),
                        (s.default_version().to_owned(), receiving.collect()),
                    )
                })
                .collect(),
            Previous::Start | Previous::StartUnknown => BTreeMap::new(),
        };

        // Rollouts: a new canary version or a switch starts one; removing it ends it.
        let mut rollouts = BTreeMap::new();
        for (name, service) in &spec.services {
            let previous_default = served_before.get(name.as_str()).map(|(d, _)| d.as_str());
            let existing = self.rollouts.remove(name);
            let r = rollout::on_file(existing.clone(), previous_default, service, now);
            // One the file replaced (a new canary, a new switch) or ended goes to history.
            if let Some(mut old) = existing
                && r.as_ref()
                    .is_none_or(|r| r.kind != old.kind || r.started != old.started)
            {
                // Its history stays; its chart points would only grow the state file, which
                // is written at every check.
                old.checks.clear();
                let past = self.past_rollouts.entry(name.clone()).or_default();
                past.push_back(old);
                while past.len() > PAST_ROLLOUTS {
                    past.pop_front();
                }
            }
            if let Some(r) = r {
                rollouts.insert(name.clone(), r);
            }
        }
        self.rollouts = rollouts;
        self.past_rollouts
            .retain(|name, _| spec.services.contains_key(name));

        // Red-black: versions traffic just moved away from start retiring.
        let mut retiring = BTreeMap::new();
        for (name, service) in &spec.services {
            if !matches!(service.strategy, Strategy::RedBlack { .. }) {
                continue;
            }
            let service = self.effective(name, service);
            let receiving = service.receiving_versions();
            let was_receiving: BTreeSet<&str> = match previous {
                Previous::File(_) => served_before
                    .get(name.as_str())
                    .map(|(_, r)| r.iter().map(String::as_str).collect())
                    .unwrap_or_default(),
                // Unknown history: any version may still be in Envoy.
                Previous::StartUnknown => service.versions.keys().map(String::as_str).collect(),
                Previous::Start => BTreeSet::new(),
            };
            for version in service.versions.keys() {
                if receiving.contains(version.as_str()) {
                    continue;
                }
                let id = ClusterId::new(name, version);
                let kept = if was_receiving.contains(version.as_str()) {
                    Some(Retiring {
                        since: now,
                        answered: None,
                    })
                } else {
                    self.retiring.get(&id).copied()
                };
                if let Some(r) = kept {
                    retiring.insert(id, r);
                }
            }
        }
        self.retiring = retiring;

        // Drains: what left the file lingers for the drain period.
        if let Previous::File(old) = previous
            && !drain_period.is_zero()
        {
            let until = now + drain_period;
            for (id, endpoints, policy) in before {
                match spec
                    .services
                    .get(&id.service)
                    .and_then(|s| s.versions.get(&id.version))
                {
                    None => {
                        let groups = old.groups_routing(&id.service);
                        self.removed.entry(id).or_insert(RemovedVersion {
                            until,
                            endpoints,
                            policy,
                            groups,
                        });
                    }
                    Some(version) => {
                        let present: BTreeSet<&EndpointAddress> =
                            version.endpoints.iter().map(|e| &e.address).collect();
                        for e in endpoints {
                            if !present.contains(&e.address) {
                                self.draining
                                    .entry(id.clone())
                                    .or_default()
                                    .entry(e.address)
                                    .or_insert(DrainingEndpoint {
                                        until,
                                        weight: e.weight,
                                    });
                            }
                        }
                    }
                }
            }
        }

        // Back in the file: no longer lingering.
        let in_file = |id: &ClusterId| {
            spec.services
                .get(&id.service)
                .and_then(|s| s.versions.get(&id.version))
        };
        self.removed.retain(|id, _| in_file(id).is_none());
        self.draining.retain(|id, endpoints| {
            if let Some(version) = in_file(id) {
                let present: BTreeSet<&EndpointAddress> =
                    version.endpoints.iter().map(|e| &e.address).collect();
                endpoints.retain(|addr, _| !present.contains(addr));
            } else if !self.removed.contains_key(id) {
                endpoints.clear();
            }
            !endpoints.is_empty()
        });
    }

    /// Forgets what is past its deadline.
    fn expire(&mut self, spec: &Spec, now: Timestamp) {
        let rollouts = &self.rollouts;
        self.retiring.retain(|id, r| {
            watched_switch_from(rollouts, id)
                || grace(spec, &id.service)
                    .and_then(|g| r.deadline(g))
                    .is_none_or(|t| t > now)
        });
        for endpoints in self.draining.values_mut() {
            endpoints.retain(|_, e| e.until > now);
        }
        self.draining.retain(|_, e| !e.is_empty());
        self.removed.retain(|_, r| r.until > now);
        self.fallbacks.retain(|_, until| *until > now);
    }

    /// The next time the plan changes by itself (something lingering or retiring goes, a
    /// rollout step ends) or a rollout check is due.
    pub fn next_deadline(&self, spec: &Spec) -> Option<Timestamp> {
        self.next_deadline_except(spec, &BTreeSet::new())
    }

    /// [`RuntimeState::next_deadline`], leaving out the checks of `checking` (being made).
    pub fn next_deadline_except(
        &self,
        spec: &Spec,
        checking: &BTreeSet<String>,
    ) -> Option<Timestamp> {
        let retiring = self
            .retiring
            .iter()
            .filter(|(id, _)| !watched_switch_from(&self.rollouts, id))
            .filter_map(|(id, r)| r.deadline(grace(spec, &id.service)?));
        let rollouts = self.rollouts.iter().filter_map(|(name, r)| {
            let strategy = &spec.services.get(name)?.strategy;
            if checking.contains(name) {
                r.step_deadline(strategy)
            } else {
                r.next_deadline(strategy)
            }
        });
        let draining = self
            .draining
            .values()
            .flat_map(|m| m.values().map(|e| e.until));
        let removed = self.removed.values().map(|r| r.until);
        let fallbacks = self.fallbacks.values().copied();
        retiring
            .chain(draining)
            .chain(removed)
            .chain(fallbacks)
            .chain(rollouts)
            .min()
    }

    /// Whether a retirement or a rollout step waits for Envoys to answer (see
    /// [`Event::Answered`]).
    pub fn awaiting_answers(&self) -> bool {
        !self.services_awaiting_answers().is_empty()
    }

    /// The services whose retirement or rollout step waits for Envoys to answer.
    pub fn services_awaiting_answers(&self) -> BTreeSet<&str> {
        let retiring = self
            .retiring
            .iter()
            .filter(|(_, r)| r.answered.is_none())
            .map(|(id, _)| id.service.as_str());
        let rollouts = self
            .rollouts
            .iter()
            .filter(|(_, r)| r.is_active() && r.since.is_none())
            .map(|(name, _)| name.as_str());
        retiring.chain(rollouts).collect()
    }

    /// Services whose rollout waits at a gate whose webhooks are due at `now`.
    pub fn gates_due(&self, now: Timestamp) -> Vec<(String, Gate)> {
        self.rollouts
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), r.gate_due(now)?)))
            .collect()
    }

    /// Services whose rollout check is due at `now`, with the version it watches and since
    /// when every Envoy holding the service has what is judged (the check reads nothing older).
    pub fn checks_due(&self, now: Timestamp) -> Vec<(String, String, Timestamp)> {
        self.rollouts
            .iter()
            .filter(|(_, r)| r.is_active() && r.next_check.is_some_and(|t| t <= now))
            .filter_map(|(name, r)| {
                Some((name.clone(), r.version_under_test().to_owned(), r.since?))
            })
            .collect()
    }
}

/// Whether a switch analysis may still go back to this version (it stays until then).
pub(super) fn watched_switch_from(rollouts: &BTreeMap<String, Rollout>, id: &ClusterId) -> bool {
    rollouts.get(&id.service).is_some_and(|r| {
        matches!(r.status, Status::Progressing | Status::Paused)
            && matches!(&r.kind, Kind::Switch { from, .. } if *from == id.version)
    })
}

/// A red-black service's grace period.
pub(super) fn grace(spec: &Spec, service: &str) -> Option<Duration> {
    match spec.services.get(service).map(|s| &s.strategy) {
        Some(Strategy::RedBlack { grace, .. }) => Some(*grace),
        _ => None,
    }
}
