//! Automated rollouts: a canary raised step by step with a check at each step, and a
//! blue-green or red-black switch watched for a while; both roll back on a failed analysis.
//!
//! A [`Rollout`] is runtime state (saved with the rest, so a restarted cutover resumes at the
//! same step and weight). The reducer advances it on four events: every Envoy holding the
//! service answered the current weight or switch (the time at a step counts from there), time
//! passed (a step's time is up), a check's figures arrived ([`Observation`], read by the
//! controller from what Envoy reports to cutover), or an operator's [`RolloutCommand`]. `plan` reads
//! it through [`effective`]: the service as the file says it, with the rollout's weight, or
//! switched back.
//!
//! Rules, each documented in the README:
//! - A canary rollout is keyed by its (stable, canary) pair: a new canary version starts a new
//!   rollout at the first step; an edited step list continues from the current weight; removing
//!   `steps` (or the strategy) ends it.
//! - A step ends when its time has passed since every Envoy answered its weight *and* the last
//!   check passed; a check with too few requests waits (neither passes nor fails), and
//!   `max_wait` turns a long wait into a failure. After the last step the canary gets 100%:
//!   promoted. The promoted (or rolled back) state stays until the file changes the canary
//!   version or the strategy.
//! - `failure_limit` failed checks roll back at once, whatever the step's time: a canary to 0%,
//!   a switch back to the previous version.
//! - A switch (a new `active` with an `analysis`) is watched for `window` from every Envoy's
//!   answer; it passes once the window is over and the last check passed. With
//!   `before_switch` (blue-green with a preview route), the old version stays active while the
//!   new one's preview traffic is checked for that long; only then is it switched (and watched
//!   for `window`). A failed pre-switch analysis leaves the old version active.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Timestamp, compare};
use crate::api::{CommandError, RolloutCommand, RolloutState};
use crate::spec::{Analysis, BaselineLimits, Mirror, Percent, Rule, Service, StepKind, Strategy};

/// How many history entries a rollout keeps.
const HISTORY: usize = 50;
/// How many checks a rollout keeps for its chart.
pub const CHECKS_KEPT: usize = 120;

/// One check, as the rollout's chart draws it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckPoint {
    pub at: Timestamp,
    /// The canary's weight then, in parts per million (0 for a switch).
    pub weight: u32,
    pub requests: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Pass, wait or fail.
    pub verdict: char,
}

/// What a check counts of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// HTTP requests: answered ones, 5xx (Envoy's own after a reset, a connect failure or a
    /// timeout included) as errors, and their latency.
    Requests,
    /// gRPC calls: finished ones, from the load reports, those whose `grpc-status` maps to a
    /// 5xx as errors (the HTTP status of a failed call is 200), and their latency.
    Calls,
    /// Behind a TCP listener, connections: those the endpoints were asked for, and the
    /// connect failures among them as errors. No latency.
    Connections,
}

impl Counted {
    /// What `service` of `spec` counts: connections behind a TCP listener, calls for a gRPC
    /// service, else requests.
    pub fn of(spec: &crate::spec::Spec, service: &str) -> Counted {
        if spec.tcp_fronting(service).next().is_some() {
            Counted::Connections
        } else if spec.services.get(service).map(|s| s.policy.protocol)
            == Some(crate::spec::Protocol::Grpc)
        {
            Counted::Calls
        } else {
            Counted::Requests
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Counted::Requests => "requests",
            Counted::Calls => "calls",
            Counted::Connections => "connections",
        }
    }

    /// The inverse of [`Counted::as_str`].
    pub fn parse(text: &str) -> Option<Counted> {
        [Counted::Requests, Counted::Calls, Counted::Connections]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// One version's figures over a check's window, as Envoy reported them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    /// 5xx responses, resets, connect failures and timeouts.
    pub errors: u64,
    /// 99th percentile of upstream latency, in milliseconds, if any request was timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Where the window begins: the later of its usual start (10 s before the figures were
    /// read) and the moment every Envoy holding the service answered what is judged, so no
    /// request from before a step, a resume or a switch is counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Timestamp>,
}

impl Figures {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What the controller observed for a check: the figures of the version under test, the
/// webhooks' answers (`Err` with the first failure) and, when the analysis compares, the
/// baseline's figures over the same window.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub figures: Figures,
    pub webhooks: Result<(), String>,
    pub baseline: Option<Baseline>,
}

/// The baseline (stable) over the same window as the version under test, from the same Envoys.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub version: String,
    pub figures: Figures,
    /// Requests per latency bucket (Envoy's bounds, the same for both): the baseline's, then
    /// the version under test's.
    pub latency: [Vec<f64>; 2],
}

/// What a check found comparing the version under test with its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub version: String,
    pub figures: Figures,
    /// Two-proportion test: is the error rate higher than the baseline's?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<compare::Test>,
    /// Mann-Whitney test: are the latencies higher than the baseline's?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<compare::Test>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Too little traffic to judge.
    Wait(String),
    Fail(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub at: Timestamp,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub figures: Figures,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A canary raised through its steps.
    Canary { stable: String, canary: String },
    /// A switch of the active version, watched for a window.
    Switch { from: String, to: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Status {
    Progressing,
    /// Stopped by the operator: no step advances, no check runs.
    Paused,
    /// The canary gets everything, or the switch passed its window.
    Promoted,
    /// Rolled back: the canary gets nothing, or the switch went back.
    Failed(String),
}

impl Status {
    /// As the admin API says it.
    pub fn state(&self) -> RolloutState {
        match self {
            Status::Progressing => RolloutState::Progressing,
            Status::Paused => RolloutState::Paused,
            Status::Promoted => RolloutState::Promoted,
            Status::Failed(_) => RolloutState::RolledBack,
        }
    }
}

/// Webhooks a canary rollout waits on before it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Before the canary gets any request (`pre_rollout`): a refusal fails the rollout.
    PreRollout,
    /// Before the next step or promotion (`confirm`): holds until every webhook answers 2xx.
    Confirm,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::PreRollout => "pre_rollout",
            Gate::Confirm => "confirm",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub what: String,
}

/// One service's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    #[serde(flatten)]
    pub kind: Kind,
    pub status: Status,
    pub started: Timestamp,
    /// A canary's weight now, in parts per million (0 at a mirror or match step).
    #[serde(default)]
    pub weight: u32,
    /// A canary at a mirror or match step (`None` at a weight: `weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StepKind>,
    /// When every Envoy holding the service answered the current weight or switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Checks passed at the current step.
    #[serde(default)]
    pub passed: u32,
    /// Checks failed during the rollout.
    #[serde(default)]
    pub failed: u32,
    /// Since when checks have been waiting for traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Check>,
    #[serde(default)]
    pub history: Vec<Entry>,
    /// A switch waiting for its pre-switch analysis (`before_switch`): the old version stays
    /// active, the new one gets its preview traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub previewing: bool,
    /// When the current step (weight, switch or check before it) began or was resumed: the
    /// progress deadline counts from here. `None` in state from before it was kept: `started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<Timestamp>,
    /// The webhooks it waits on, if any, when they are asked next, and why they last refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ask: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_refused: Option<String>,
    /// The `confirm` webhooks approved leaving the current step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirmed: bool,
    /// The last [`CHECKS_KEPT`] checks, oldest first.
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    pub checks: std::collections::VecDeque<CheckPoint>,
}

impl Rollout {
    fn new(kind: Kind, step: &StepKind, now: Timestamp, what: String) -> Rollout {
        let mut r = Rollout {
            kind,
            status: Status::Progressing,
            started: now,
            weight: 0,
            stage: None,
            since: None,
            passed: 0,
            failed: 0,
            waiting_since: None,
            next_check: None,
            last_check: None,
            history: vec![Entry { at: now, what }],
            previewing: false,
            step_started: Some(now),
            gate: None,
            next_ask: None,
            gate_refused: None,
            confirmed: false,
            checks: std::collections::VecDeque::new(),
        };
        r.set_step(step);
        r
    }

    /// A canary's current step.
    pub fn step(&self) -> StepKind {
        self.stage.clone().unwrap_or_else(|| {
            StepKind::Weight(Percent::from_ppm(self.weight).unwrap_or(Percent::ZERO))
        })
    }

    fn set_step(&mut self, step: &StepKind) {
        self.weight = step.weight_ppm();
        self.stage = match step {
            StepKind::Weight(_) => None,
            StepKind::Mirror(_) | StepKind::Match(_) => Some(step.clone()),
        };
    }

    /// At 0% (before the first step, or rolled back) or at 100% (promoted).
    fn set_weight(&mut self, ppm: u32) {
        self.weight = ppm;
        self.stage = None;
    }

    fn log(&mut self, at: Timestamp, what: String) {
        self.history.push(Entry { at, what });
        if self.history.len() > HISTORY {
            self.history.drain(..self.history.len() - HISTORY);
        }
    }

    /// Whether it still changes by itself (waits for answers, time or checks).
    pub fn is_active(&self) -> bool {
        self.status == Status::Progressing
    }

    /// The version the version under test is compared with: a canary's stable, while it gets
    /// requests (not at a 100% step).
    pub fn baseline(&self) -> Option<&str> {
        match &self.kind {
            Kind::Canary { stable, .. } if self.weight < Percent::MILLION => Some(stable),
            Kind::Canary { .. } | Kind::Switch { .. } => None,
        }
    }

    /// The version the analysis watches.
    pub fn version_under_test(&self) -> &str {
        match &self.kind {
            Kind::Canary { canary, .. } => canary,
            Kind::Switch { to, .. } => to,
        }
    }

    /// A new weight or switch is being served: its time starts once every Envoy answered.
    fn restart_step(&mut self, now: Timestamp) {
        self.step_started = Some(now);
        self.confirmed = false;
        self.clear_gate();
        self.since = None;
        self.passed = 0;
        self.waiting_since = None;
        self.next_check = None;
    }

    fn clear_gate(&mut self) {
        self.gate = None;
        self.next_ask = None;
        self.gate_refused = None;
    }

    /// Waits at `gate`, asking its webhooks now: the canary at 0% before `pre_rollout`.
    fn wait_at(&mut self, gate: Gate, now: Timestamp) {
        if gate == Gate::PreRollout {
            self.set_weight(0);
        }
        self.gate = Some(gate);
        self.next_ask = Some(now);
        self.gate_refused = None;
    }

    /// Whether its gate's webhooks are due at `now`: the gate, and what comes after it.
    pub fn gate_due(&self, now: Timestamp) -> Option<Gate> {
        self.gate
            .filter(|_| self.is_active() && self.next_ask.is_some_and(|t| t <= now))
    }

    fn roll_back(&mut self, now: Timestamp, reason: String) {
        self.clear_gate();
        if let Kind::Canary { .. } = self.kind {
            self.set_weight(0);
        }
        self.log(now, format!("rolled back: {reason}"));
        self.status = Status::Failed(reason);
        self.next_check = None;
    }

    fn promote(&mut self, now: Timestamp, why: &str) {
        self.clear_gate();
        if let Kind::Canary { .. } = self.kind {
            self.set_weight(Percent::MILLION);
        }
        self.log(now, format!("promoted ({why})"));
        self.status = Status::Promoted;
        self.previewing = false;
        self.next_check = None;
    }

    /// The last check allows the step to end (or there is no analysis).
    fn checks_allow(&self, analysis: Option<&Analysis>) -> bool {
        analysis.is_none()
            || (self.passed > 0
                && self
                    .last_check
                    .as_ref()
                    .is_some_and(|c| c.verdict == Verdict::Pass))
    }

    /// When this rollout changes by itself next (its step ends) or a check is due, given its
    /// service's strategy.
    pub fn next_deadline(&self, strategy: &Strategy) -> Option<Timestamp> {
        if !self.is_active() {
            return None;
        }
        [
            self.step_deadline(strategy),
            self.next_check,
            self.progress_deadline(strategy),
            self.next_ask,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the current step rolls back if it has not ended (`progress_deadline`).
    pub fn progress_deadline(&self, strategy: &Strategy) -> Option<Timestamp> {
        let deadline = strategy.analysis()?.progress_deadline?;
        self.is_active()
            .then(|| self.step_started.unwrap_or(self.started) + deadline)
    }

    /// What the current step waits for, to say why it made no progress.
    fn stalled_on(&self) -> String {
        if let Some(gate) = self.gate {
            return match &self.gate_refused {
                Some(why) => format!("its {} webhooks refuse: {why}", gate.as_str()),
                None => format!("its {} webhooks have not answered", gate.as_str()),
            };
        }
        if self.since.is_none() {
            return "not every Envoy holding the service has answered the step".to_owned();
        }
        match self.last_check.as_ref().map(|c| &c.verdict) {
            Some(Verdict::Wait(why)) => format!("its checks wait: {why}"),
            Some(Verdict::Fail(why)) => format!("its last check failed: {why}"),
            Some(Verdict::Pass) | None => "its checks have not passed".to_owned(),
        }
    }

    /// When the current step's time (or a switch's window) is up, once it runs.
    pub fn step_deadline(&self, strategy: &Strategy) -> Option<Timestamp> {
        if !self.is_active() {
            return None;
        }
        let since = self.since?;
        match (&self.kind, strategy) {
            (
                Kind::Canary { .. },
                Strategy::Canary {
                    rollout: Some(r), ..
                },
            ) => Some(since + r.pause_at(&self.step(), r.interval)),
            (Kind::Switch { .. }, s) => Some(since + switch_time(self.previewing, s.analysis())),
            _ => None,
        }
    }
}

/// The rollout the file asks for in `service`, if any, given the service as it was served
/// before (`previous`, effective) and the rollout in progress.
pub(super) fn on_file(
    existing: Option<Rollout>,
    previous_default: Option<&str>,
    service: &Service,
    now: Timestamp,
) -> Option<Rollout> {
    match &service.strategy {
        Strategy::Canary {
            stable,
            canary,
            rollout: Some(r),
            ..
        } => {
            let kind = Kind::Canary {
                stable: stable.clone(),
                canary: canary.clone(),
            };
            match existing {
                // An edited step list continues from the current weight.
                Some(mut existing) if existing.kind == kind => {
                    let step = existing.step();
                    if existing.is_active()
                        && r.next_step(&step).is_none()
                        && r.position(&step).is_none()
                    {
                        // The steps now end below the current weight: the rollout is done.
                        existing.promote(now, "the steps end below the current weight");
                    }
                    Some(existing)
                }
                _ if !r.pre_rollout.is_empty() => {
                    let mut rollout = Rollout::new(
                        kind,
                        &StepKind::Weight(Percent::ZERO),
                        now,
                        format!(
                            "started: asking the pre_rollout webhooks before {canary} gets a request"
                        ),
                    );
                    rollout.wait_at(Gate::PreRollout, now);
                    Some(rollout)
                }
                _ => {
                    let first = &r.steps[0].kind;
                    Some(Rollout::new(
                        kind,
                        first,
                        now,
                        format!("started: {canary} at {first}"),
                    ))
                }
            }
        }
        Strategy::BlueGreen {
            active,
            analysis: Some(_),
            ..
        }
        | Strategy::RedBlack {
            active,
            analysis: Some(_),
            ..
        } => match existing {
            Some(e) if matches!(&e.kind, Kind::Switch { to, .. } if to == active) => Some(e),
            _ => match previous_default {
                Some(from) if from != active && service.versions.contains_key(from) => {
                    let kind = Kind::Switch {
                        from: from.to_owned(),
                        to: active.clone(),
                    };
                    Some(
                        match service.strategy.analysis().and_then(|a| a.before_switch) {
                            Some(before) => {
                                let mut r = Rollout::new(
                                    kind,
                                    &StepKind::Weight(Percent::ZERO),
                                    now,
                                    format!(
                                        "asked to switch from {from} to {active}: watching {active}'s preview traffic for {} first",
                                        humantime::format_duration(before)
                                    ),
                                );
                                r.previewing = true;
                                r
                            }
                            None => Rollout::new(
                                kind,
                                &StepKind::Weight(Percent::ZERO),
                                now,
                                format!("switched from {from} to {active}: watching {active}"),
                            ),
                        },
                    )
                }
                _ => None,
            },
        },
        _ => None,
    }
}

/// Every Envoy holding the service answered what is served: the step's time starts.
pub(super) fn on_answered(r: &mut Rollout, analysis: Option<&Analysis>, now: Timestamp) {
    if r.is_active() && r.since.is_none() && r.gate != Some(Gate::PreRollout) {
        r.since = Some(now);
        r.next_check = analysis.map(|a| now + a.interval);
    }
}

/// Time passed: a step whose time is up (and whose checks allow it) ends.
pub(super) fn on_tick(r: &mut Rollout, strategy: &Strategy, now: Timestamp) {
    if !r.is_active() {
        return;
    }
    if let Some(deadline) = r.progress_deadline(strategy).filter(|t| now >= *t) {
        let began = r.step_started.unwrap_or(r.started);
        let reason = format!(
            "no progress for {} (progress_deadline): {}",
            humantime::format_duration(deadline.since(began)),
            r.stalled_on()
        );
        r.roll_back(now, reason);
        return;
    }
    let Some(since) = r.since else { return };
    let analysis = strategy.analysis();
    match (&r.kind, strategy) {
        (
            Kind::Canary { canary, .. },
            Strategy::Canary {
                rollout: Some(cfg), ..
            },
        ) => {
            let step = r.step();
            if now < since + cfg.pause_at(&step, cfg.interval) || !r.checks_allow(analysis) {
                return;
            }
            let canary = canary.clone();
            if !cfg.confirm.is_empty() && !r.confirmed {
                if r.gate.is_none() {
                    let next = cfg
                        .next_step(&step)
                        .map_or("promotion".to_owned(), ToString::to_string);
                    r.log(
                        now,
                        format!(
                            "{canary} at {step} passed: asking the confirm webhooks before {next}"
                        ),
                    );
                    r.wait_at(Gate::Confirm, now);
                }
                return;
            }
            match cfg.next_step(&step).cloned() {
                Some(next) => {
                    let passed = r.passed;
                    r.log(
                        now,
                        format!(
                            "{canary} {step} → {next}{}",
                            match (analysis, r.last_check.as_ref()) {
                                (Some(_), Some(c)) => format!(
                                    " after {passed} passed check(s) (last: {})",
                                    figures_text(&c.figures)
                                ),
                                (Some(_), None) => format!(" after {passed} passed check(s)"),
                                (None, _) => String::new(),
                            }
                        ),
                    );
                    r.set_step(&next);
                    r.restart_step(now);
                }
                None => r.promote(now, "every step passed"),
            }
        }
        (Kind::Switch { from, to }, _) => {
            if now < since + switch_time(r.previewing, analysis) || !r.checks_allow(analysis) {
                return;
            }
            if r.previewing {
                let what = format!(
                    "{to} passed its pre-switch analysis: switched from {from} to {to}, watching {to}"
                );
                r.previewing = false;
                r.failed = 0;
                r.last_check = None;
                r.restart_step(now);
                r.log(now, what);
            } else {
                r.promote(now, "the new version passed its window");
            }
        }
        _ => {}
    }
}

/// How long a refused `confirm` waits before it is asked again.
const CONFIRM_AGAIN: Duration = Duration::from_secs(10);

/// A gate's webhooks answered: `Ok` when every one answered 2xx in time.
pub(super) fn on_gate(
    r: &mut Rollout,
    strategy: &Strategy,
    gate: Gate,
    answer: &Result<(), String>,
    now: Timestamp,
) {
    if !r.is_active() || r.gate != Some(gate) {
        return;
    }
    let Strategy::Canary {
        canary,
        rollout: Some(cfg),
        ..
    } = strategy
    else {
        return;
    };
    match (gate, answer) {
        (Gate::PreRollout, Ok(())) => {
            let first = &cfg.steps[0].kind;
            r.set_step(first);
            r.restart_step(now);
            r.log(
                now,
                format!("pre_rollout webhooks passed: {canary} at {first}"),
            );
        }
        (Gate::PreRollout, Err(e)) => r.roll_back(now, format!("pre_rollout: {e}")),
        (Gate::Confirm, Ok(())) => {
            r.clear_gate();
            r.confirmed = true;
            on_tick(r, strategy, now);
        }
        (Gate::Confirm, Err(e)) => {
            r.gate_refused = Some(e.clone());
            let again = cfg.analysis.as_ref().map_or(CONFIRM_AGAIN, |a| a.interval);
            r.next_ask = Some(now + again);
        }
    }
}

/// What the gate's webhooks are asked about: the weight that comes next, or promotion.
pub fn gate_next(r: &Rollout, strategy: &Strategy) -> String {
    match (r.gate, strategy) {
        (
            Some(Gate::PreRollout),
            Strategy::Canary {
                rollout: Some(cfg), ..
            },
        ) => cfg.steps[0].kind.to_string(),
        (
            _,
            Strategy::Canary {
                rollout: Some(cfg), ..
            },
        ) => cfg
            .next_step(&r.step())
            .map_or("promotion".to_owned(), ToString::to_string),
        _ => String::new(),
    }
}

/// A check's figures arrived.
pub(super) fn on_observed(
    r: &mut Rollout,
    analysis: &Analysis,
    observed: &Observation,
    now: Timestamp,
) {
    if !r.is_active() || r.since.is_none() {
        return;
    }
    let f = observed.figures;
    let (verdict, comparison) = judge(analysis, observed);
    let verdict = match verdict {
        Verdict::Wait(why) => {
            let waiting = *r.waiting_since.get_or_insert(now);
            match analysis.max_wait {
                Some(max) if now.since(waiting) >= max => Verdict::Fail(format!(
                    "too little traffic for {}: {why}",
                    humantime::format_duration(max)
                )),
                _ => Verdict::Wait(why),
            }
        }
        v => {
            r.waiting_since = None;
            v
        }
    };
    r.checks.push_back(CheckPoint {
        at: now,
        weight: r.weight,
        requests: f.requests,
        errors: f.errors,
        p99_ms: f.p99_ms,
        verdict: match &verdict {
            Verdict::Pass => 'p',
            Verdict::Wait(_) => 'w',
            Verdict::Fail(_) => 'f',
        },
    });
    if r.checks.len() > CHECKS_KEPT {
        r.checks.pop_front();
    }
    match &verdict {
        Verdict::Pass => r.passed += 1,
        Verdict::Wait(_) => {}
        Verdict::Fail(reason) => {
            r.failed += 1;
            let reason = reason.clone();
            r.log(
                now,
                format!(
                    "check failed ({} of {}): {reason}",
                    r.failed, analysis.failure_limit
                ),
            );
            if r.failed >= analysis.failure_limit {
                r.last_check = Some(Check {
                    at: now,
                    verdict,
                    figures: f,
                    baseline: comparison,
                });
                r.roll_back(now, reason);
                return;
            }
        }
    }
    r.last_check = Some(Check {
        at: now,
        verdict,
        figures: f,
        baseline: comparison,
    });
    r.next_check = Some(now + analysis.interval);
}

/// A check's verdict on what was observed, and the comparison with the baseline if any.
fn judge(analysis: &Analysis, observed: &Observation) -> (Verdict, Option<Comparison>) {
    let f = observed.figures;
    let comparison = observed.baseline.as_ref().map(|b| compared(b, &f));
    let verdict = if let Err(e) = &observed.webhooks {
        Verdict::Fail(e.clone())
    } else if let Some(max) = analysis
        .max_error_rate
        .filter(|_| f.requests < analysis.min_requests && f.errors >= fails_early_at(analysis))
    {
        // Certain already: even if every request missing up to min_requests succeeded, the
        // error rate would stay above the limit.
        Verdict::Fail(format!(
            "{} errors in {} request(s): above max_error_rate {max} even if the {} more up to min_requests {} all succeed",
            f.errors,
            f.requests,
            analysis.min_requests - f.requests,
            analysis.min_requests
        ))
    } else if f.requests < analysis.min_requests {
        Verdict::Wait(format!(
            "{} request(s), fewer than min_requests {}",
            f.requests, analysis.min_requests
        ))
    } else if let Some(max) = analysis
        .max_error_rate
        .filter(|m| f.error_rate() * 100.0 > m.as_f64())
    {
        Verdict::Fail(format!(
            "error rate {:.1}% ({} of {} requests) above max_error_rate {max}",
            f.error_rate() * 100.0,
            f.errors,
            f.requests
        ))
    } else if let Some((p99, max)) = f
        .p99_ms
        .zip(analysis.max_p99_latency)
        .filter(|(p99, max)| *p99 > max.as_secs_f64() * 1000.0)
    {
        Verdict::Fail(format!(
            "p99 latency {p99:.0} ms above max_p99_latency {}",
            humantime::format_duration(max)
        ))
    } else if let Some(why) = analysis
        .baseline
        .zip(observed.baseline.as_ref())
        .and_then(|(_, b)| baseline_wait(analysis, b))
    {
        Verdict::Wait(why)
    } else if let Some(why) = analysis
        .baseline
        .zip(comparison.as_ref())
        .and_then(|(limits, c)| worse_than_baseline(&limits, &f, c))
    {
        Verdict::Fail(why)
    } else {
        Verdict::Pass
    };
    (verdict, comparison)
}

/// The baseline's figures beside the tested version's, with both tests.
fn compared(b: &Baseline, tested: &Figures) -> Comparison {
    let [baseline_latency, tested_latency] = &b.latency;
    #[allow(
        clippy::cast_precision_loss,
        reason = "request counts far below 2^52 in a 10 s window"
    )]
    let error_rate = compare::error_rate_higher(
        tested.errors as f64,
        tested.requests as f64,
        b.figures.errors as f64,
        b.figures.requests as f64,
    );
    Comparison {
        version: b.version.clone(),
        figures: b.figures,
        error_rate,
        latency: compare::latency_higher(tested_latency, baseline_latency),
    }
}

/// Too little baseline traffic to compare with: the check waits, as for the tested version.
fn baseline_wait(analysis: &Analysis, b: &Baseline) -> Option<String> {
    (b.figures.requests < analysis.min_requests).then(|| {
        format!(
            "baseline {} has {} request(s), fewer than min_requests {}",
            b.version, b.figures.requests, analysis.min_requests
        )
    })
}

/// Why the tested version is worse than its baseline beyond a limit, with the test's
/// confidence, if it is.
fn worse_than_baseline(limits: &BaselineLimits, f: &Figures, c: &Comparison) -> Option<String> {
    let significance = limits.significance();
    let confidence = limits.confidence;
    if let (Some(max), Some(test)) = (limits.max_error_rate_increase, c.error_rate) {
        let increase = (f.error_rate() - c.figures.error_rate()) * 100.0;
        if increase > max.as_f64() && test.p < significance {
            return Some(format!(
                "error rate {:.1}% is {increase:.1} points above {}'s {:.1}%, more than max_error_rate_increase {max} (two-proportion test p = {:.2e}, below {:.2} for confidence {confidence})",
                f.error_rate() * 100.0,
                c.version,
                c.figures.error_rate() * 100.0,
                test.p,
                significance
            ));
        }
    }
    if let (Some(max), Some(test), Some(p99), Some(base)) = (
        limits.max_p99_ratio_milli,
        c.latency,
        f.p99_ms,
        c.figures.p99_ms,
    ) {
        let max = f64::from(max) / 1000.0;
        let ratio = p99 / base.max(f64::MIN_POSITIVE);
        if ratio > max && test.p < significance {
            return Some(format!(
                "p99 latency {p99:.0} ms is {ratio:.2} times {}'s {base:.0} ms, more than max_p99_ratio {max} (Mann-Whitney p = {:.2e}, below {:.2} for confidence {confidence})",
                c.version, test.p, significance
            ));
        }
    }
    None
}

/// A check's figures in a few words, for the rollout's history.
fn figures_text(f: &Figures) -> String {
    let p99 = f
        .p99_ms
        .map(|p| format!(", p99 {p:.0} ms"))
        .unwrap_or_default();
    format!(
        "{} requests, {:.2}% errors{p99}",
        f.requests,
        f.error_rate() * 100.0
    )
}

/// How many errors fail a check before it has `min_requests` (with a `max_error_rate`): the
/// fewest whose share of `min_requests` is above the limit, so no later success could bring
/// the error rate under it.
pub fn fails_early_at(analysis: &Analysis) -> u64 {
    let Some(max) = analysis.max_error_rate else {
        return u64::MAX;
    };
    // Parts per million, exact: errors / min_requests > ppm / 10^6.
    let allowed = u128::from(analysis.min_requests) * u128::from(max.ppm()) / 1_000_000;
    u64::try_from(allowed + 1).unwrap_or(u64::MAX)
}

/// An operator's command, `by` whom (e.g. "the operator at 127.0.0.1"); returns what it
/// did, or why it did nothing.
pub(super) fn on_command(
    r: &mut Rollout,
    strategy: &Strategy,
    command: RolloutCommand,
    by: &str,
    now: Timestamp,
) -> Result<&'static str, CommandError> {
    let done = match (command, &r.status) {
        (RolloutCommand::Promote, Status::Progressing | Status::Paused) => {
            r.promote(now, &format!("by {by}"));
            "promoted"
        }
        (RolloutCommand::Abort, Status::Progressing | Status::Paused) => {
            r.roll_back(now, format!("aborted by {by}"));
            "rolled back"
        }
        (RolloutCommand::Pause, Status::Progressing) => {
            r.status = Status::Paused;
            r.next_check = None;
            r.log(now, format!("paused by {by}"));
            "paused"
        }
        (RolloutCommand::Resume, Status::Paused) => {
            r.status = Status::Progressing;
            // Nor does it count toward the progress deadline.
            r.step_started = Some(now);
            // The step's time starts again, from now: the pause did not count.
            r.since = Some(now);
            r.next_check = strategy.analysis().map(|a| now + a.interval);
            r.log(now, format!("resumed by {by}"));
            "resumed"
        }
        (RolloutCommand::Resume, Status::Failed(_)) => {
            if let (
                Kind::Canary { .. },
                Strategy::Canary {
                    rollout: Some(cfg), ..
                },
            ) = (&r.kind, strategy)
            {
                r.set_step(&cfg.steps[0].kind);
            }
            let pre_rollout = matches!(
                strategy,
                Strategy::Canary { rollout: Some(cfg), .. } if !cfg.pre_rollout.is_empty()
            );
            if let Kind::Switch { .. } = r.kind {
                r.previewing = strategy
                    .analysis()
                    .is_some_and(|a| a.before_switch.is_some());
            }
            r.status = Status::Progressing;
            r.failed = 0;
            r.restart_step(now);
            if pre_rollout {
                r.wait_at(Gate::PreRollout, now);
            }
            r.log(now, format!("started again by {by}"));
            "started again from the first step"
        }
        (_, status) => {
            return Err(CommandError::NotNow {
                command,
                state: status.state(),
            });
        }
    };
    Ok(done)
}

/// The service as served: the file's, with the rollout's canary weight, or still on the old
/// version while a switch is checked before it happens, or switched back after a failed switch.
pub fn effective<'a>(service: &'a Service, rollout: Option<&Rollout>) -> Cow<'a, Service> {
    let Some(r) = rollout else {
        return Cow::Borrowed(service);
    };
    match (&r.kind, &service.strategy) {
        (
            Kind::Canary { stable, canary },
            Strategy::Canary {
                stable: s,
                canary: c,
                weight,
                ..
            },
        ) if stable == s && canary == c && (weight.ppm() != r.weight || r.stage.is_some()) => {
            let mut out = service.clone();
            if let Strategy::Canary { weight, .. } = &mut out.strategy {
                *weight = Percent::from_ppm(r.weight).unwrap_or(*weight);
            }
            // Validation refuses mirror steps on a service that mirrors already.
            match &r.stage {
                Some(StepKind::Mirror(percent)) => {
                    out.mirror = Some(Mirror {
                        version: canary.clone(),
                        percent: *percent,
                    });
                }
                // After the file's own rules, which keep their groups where they are.
                Some(StepKind::Match(conditions)) => out.rules.push(Rule {
                    conditions: conditions.clone(),
                    version: canary.clone(),
                }),
                Some(StepKind::Weight(_)) | None => {}
            }
            Cow::Owned(out)
        }
        (
            Kind::Switch { from, to },
            Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. },
        ) if (matches!(r.status, Status::Failed(_)) || r.previewing)
            && active == to
            && service.versions.contains_key(from) =>
        {
            let mut out = service.clone();
            if let Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. } =
                &mut out.strategy
            {
                active.clone_from(from);
            }
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(service),
    }
}

/// How long a switch is watched: its pre-switch analysis, or its window after the switch.
fn switch_time(previewing: bool, analysis: Option<&Analysis>) -> Duration {
    match analysis {
        Some(a) if previewing => a.before_switch.unwrap_or(Duration::ZERO),
        Some(a) => a.window,
        None => Duration::ZERO,
    }
}
