//! The reducer and `plan`, driven by event sequences with explicit times: no sockets, no clock.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::spec::parse;

const PERIOD: Duration = Duration::from_secs(5);

/// A cutover without I/O: the file in effect, the runtime state and the time.
struct World {
    spec: Option<Spec>,
    state: RuntimeState,
    now: Timestamp,
    drain_period: Duration,
}

impl World {
    fn new() -> World {
        World::with_state(RuntimeState::default())
    }

    fn with_state(state: RuntimeState) -> World {
        World {
            spec: None,
            state,
            now: Timestamp::from_millis(1_800_000_000_000),
            drain_period: PERIOD,
        }
    }

    fn load(&mut self, text: &str) -> &mut World {
        let spec = parse("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        let previous = self.spec.take();
        let previous = previous.as_ref().map_or(Previous::Start, Previous::File);
        self.state.reduce(
            &spec,
            Event::FileLoaded {
                previous,
                drain_period: self.drain_period,
            },
            self.now,
        );
        self.spec = Some(spec);
        self
    }

    /// Every Envoy has answered the current config.
    fn answered(&mut self) -> &mut World {
        let spec = self.spec.as_ref().unwrap();
        let services: BTreeSet<String> = spec.services.keys().cloned().collect();
        self.state.reduce(
            spec,
            Event::Answered {
                services: &services,
            },
            self.now,
        );
        self
    }

    fn wait(&mut self, d: Duration) -> &mut World {
        self.now = self.now + d;
        self.state
            .reduce(self.spec.as_ref().unwrap(), Event::Tick, self.now);
        self
    }

    fn plan(&self) -> Plan {
        plan(self.spec.as_ref().unwrap(), &self.state, self.now)
    }

    fn clusters(&self) -> Vec<String> {
        let plan = self.plan();
        let mut out: Vec<String> = plan
            .services
            .iter()
            .flat_map(|(s, p)| {
                let versions = p
                    .versions
                    .keys()
                    .map(move |v| ClusterId::new(s, v).to_string());
                let fallbacks = p.fallbacks.keys().map(ToString::to_string);
                versions.chain(fallbacks).collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    fn endpoints(&self, cluster: &str) -> Vec<(String, Health)> {
        let (s, v) = cluster.split_once('/').unwrap();
        self.plan().services[s].versions[v]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.health))
            .collect()
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.state.next_deadline(self.spec.as_ref().unwrap())
    }

    fn at(&self, secs: u64) -> Timestamp {
        self.now + Duration::from_secs(secs)
    }
}

fn red_black(active: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      red: {{ endpoints: [127.0.0.1:8081] }}\n      black: {{ endpoints: [127.0.0.1:8082] }}\n      new: {{ endpoints: [127.0.0.1:8083] }}\n    strategy:\n      red-black: {{ active: {active}, grace: 30s }}\n"
    )
}

fn blue_green(versions: &str, active: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n{versions}    active: {active}\n"
    )
}

fn canary(weight: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      v1: {{ endpoints: [127.0.0.1:8081] }}\n      v2: {{ endpoints: [127.0.0.1:8082] }}\n    strategy:\n      canary: {{ stable: v1, canary: v2, weight: {weight} }}\n"
    )
}

const TWO: &str = "      a: { endpoints: [127.0.0.1:8081, 127.0.0.1:8082] }\n";
const ONE: &str = "      a: { endpoints: [127.0.0.1:8081] }\n";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn removed_until(t: Timestamp) -> Health {
    Health::Removed { until: t }
}

// ---------------------------------------------------------------------------------------------
// Red-black retirement

#[test]
fn first_load_keeps_only_the_active_version() {
    let mut w = World::new();
    w.load(&red_black("red"));
    assert_eq!(w.clusters(), ["s/red"]);
}

#[test]
fn a_switch_keeps_the_old_version_until_answered_and_grace_passed() {
    let mut w = World::new();
    w.load(&red_black("red")).load(&red_black("black"));
    assert_eq!(
        w.clusters(),
        ["s/black", "s/red"],
        "red is kept for rollback"
    );
    assert_eq!(
        w.plan().services["s"].versions["red"].role,
        Role::Retiring { deadline: None }
    );
    assert!(w.state.awaiting_answers());
    w.wait(secs(3600));
    assert_eq!(
        w.clusters(),
        ["s/black", "s/red"],
        "nothing retires before every Envoy answered"
    );

    w.answered();
    let answered_at = w.now;
    assert_eq!(w.next_deadline(), Some(answered_at + secs(30)));
    w.wait(secs(29));
    assert_eq!(w.clusters(), ["s/black", "s/red"]);
    w.wait(secs(1));
    assert_eq!(w.clusters(), ["s/black"]);
    assert_eq!(w.next_deadline(), None);
    assert!(w.state.retiring.is_empty(), "expired entries are forgotten");
}

#[test]
fn a_rollback_within_grace_cancels_the_retirement() {
    let mut w = World::new();
    w.load(&red_black("red"))
        .load(&red_black("black"))
        .answered()
        .load(&red_black("red"));
    // Back on red: black is now the old version, waiting for its own answers and grace.
    assert_eq!(w.clusters(), ["s/black", "s/red"]);
    assert_eq!(
        w.state.retiring.keys().collect::<Vec<_>>(),
        [&ClusterId::new("s", "black")]
    );
    assert_eq!(
        w.plan().services["s"].versions["black"].role,
        Role::Retiring { deadline: None }
    );
}

#[test]
fn an_unrelated_edit_does_not_restart_the_timer() {
    let mut w = World::new();
    w.load(&red_black("red"))
        .load(&red_black("black"))
        .answered();
    let deadline = w.at(30);
    w.wait(secs(20));
    w.load(&red_black("black").replace("8083", "8084"));
    w.answered();
    assert_eq!(w.next_deadline(), Some(deadline));
}

#[test]
fn answers_for_another_service_do_not_start_the_grace() {
    let mut w = World::new();
    w.load(&red_black("red")).load(&red_black("black"));
    let spec = w.spec.clone().unwrap();
    let other = BTreeSet::from(["other".to_owned()]);
    w.state
        .reduce(&spec, Event::Answered { services: &other }, w.now);
    assert!(w.state.awaiting_answers());
}

#[test]
fn a_lost_runtime_state_keeps_every_version_the_file_lists() {
    let mut w = World::new();
    let spec = parse("t.yaml", &red_black("black")).unwrap();
    w.state.reduce(
        &spec,
        Event::FileLoaded {
            previous: Previous::StartUnknown,
            drain_period: PERIOD,
        },
        w.now,
    );
    w.spec = Some(spec);
    assert_eq!(w.clusters(), ["s/black", "s/new", "s/red"]);
    w.answered().wait(secs(30));
    assert_eq!(w.clusters(), ["s/black"]);
}

// ---------------------------------------------------------------------------------------------
// Drains

#[test]
fn a_removed_endpoint_drains_for_the_period_then_goes() {
    let mut w = World::new();
    w.load(&blue_green(TWO, "a")).load(&blue_green(ONE, "a"));
    let until = w.at(5);
    assert_eq!(
        w.endpoints("s/a"),
        [
            ("127.0.0.1:8081".into(), Health::Active),
            ("127.0.0.1:8082".into(), removed_until(until)),
        ]
    );
    assert_eq!(w.next_deadline(), Some(until));
    // An unrelated reload inside the period keeps it draining, without restarting the clock.
    w.wait(secs(4)).load(&blue_green(ONE, "a"));
    assert_eq!(w.endpoints("s/a").len(), 2);
    w.wait(secs(1));
    assert_eq!(
        w.endpoints("s/a"),
        [("127.0.0.1:8081".into(), Health::Active)]
    );
    assert_eq!(w.next_deadline(), None);
}

#[test]
fn a_removed_version_lingers_unchanged() {
    let mut w = World::new();
    let both =
        "      a: { endpoints: [127.0.0.1:8081] }\n      b: { endpoints: [127.0.0.1:8082] }\n";
    let only_b = "      b: { endpoints: [127.0.0.1:8082] }\n";
    w.load(&blue_green(both, "a"));
    let before = w.plan().services["s"].versions["a"].clone();
    w.load(&blue_green(only_b, "b"));
    assert_eq!(w.clusters(), ["s/a", "s/b"]);
    // Unchanged: routes may still point at it until Envoy has the new ones.
    let lingering = &w.plan().services["s"].versions["a"];
    assert_eq!(lingering.endpoints, before.endpoints);
    assert_eq!(lingering.policy, before.policy);
    assert_eq!(lingering.role, Role::Removed { until: w.at(5) });
    w.wait(secs(6));
    assert_eq!(w.clusters(), ["s/b"]);
}

#[test]
fn a_removed_service_lingers_without_routes() {
    let mut w = World::new();
    let two_services = format!(
        "{}  t:\n    versions:\n      x: {{ endpoints: [127.0.0.1:9001] }}\n    active: x\n",
        blue_green(ONE, "a")
    );
    w.load(&two_services).load(&blue_green(ONE, "a"));
    let plan = w.plan();
    assert!(!plan.services["t"].in_file);
    assert!(plan.services["t"].routes.is_empty());
    assert_eq!(w.clusters(), ["s/a", "t/x"]);
    w.wait(PERIOD);
    assert_eq!(w.clusters(), ["s/a"]);
}

#[test]
fn an_endpoint_put_back_stops_draining() {
    let mut w = World::new();
    w.load(&blue_green(TWO, "a")).load(&blue_green(ONE, "a"));
    w.wait(secs(1)).load(&blue_green(TWO, "a"));
    assert_eq!(
        w.endpoints("s/a"),
        [
            ("127.0.0.1:8081".into(), Health::Active),
            ("127.0.0.1:8082".into(), Health::Active)
        ]
    );
    assert_eq!(w.next_deadline(), None);
}

#[test]
fn zero_period_removes_at_once() {
    let mut w = World::new();
    w.drain_period = Duration::ZERO;
    w.load(&blue_green(TWO, "a")).load(&blue_green(ONE, "a"));
    assert_eq!(w.endpoints("s/a").len(), 1);
}

#[test]
fn a_canary_going_to_zero_keeps_its_aggregate_cluster_for_the_drain_period() {
    // Per-type streams cannot order the aggregate's removal after the route change.
    let mut w = World::new();
    w.load(&canary("10"));
    assert_eq!(w.clusters(), ["s/v1", "s/v2", "s/v2~v1"]);
    w.load(&canary("0"));
    assert_eq!(w.clusters(), ["s/v1", "s/v2", "s/v2~v1"]);
    let plan = w.plan();
    let (_, presence) = plan.services["s"].fallbacks.iter().next().unwrap();
    assert_eq!(*presence, Presence::Lingering { until: w.at(5) });
    // Routes no longer use it.
    assert!(
        plan.services["s"]
            .routes
            .iter()
            .all(|r| r.target == Target::One(ClusterRef::Version(ClusterId::new("s", "v1"))))
    );
    w.wait(PERIOD);
    assert_eq!(w.clusters(), ["s/v1", "s/v2"]);
    // Back to a split inside the period: routed again, not lingering.
    let mut w = World::new();
    w.load(&canary("10")).load(&canary("0")).load(&canary("20"));
    assert!(w.state.fallbacks.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Restarts

#[test]
fn a_restart_from_the_saved_state_keeps_draining_and_retiring_until_their_deadlines() {
    let mut w = World::new();
    let with_extra = red_black("black").replace(
        "black: { endpoints: [127.0.0.1:8082] }",
        "black: { endpoints: [127.0.0.1:8082, 127.0.0.1:8092] }",
    );
    w.load(&red_black("red"))
        .load(&with_extra)
        .answered()
        .load(&red_black("black"));
    let before = w.plan();

    // The state file round trip, then a new process: the same file, loaded as the first one.
    let saved = serde_json::to_string(&w.state).unwrap();
    let state: RuntimeState = serde_json::from_str(&saved).unwrap();
    assert_eq!(state, w.state);
    let mut restarted = World::with_state(state);
    restarted.now = w.now + secs(2);
    restarted.load(&red_black("black"));
    assert_eq!(restarted.plan(), before, "nothing changes for Envoy");
    assert_eq!(
        restarted.endpoints("s/black")[1],
        ("127.0.0.1:8092".into(), removed_until(w.at(5)))
    );
    restarted.wait(secs(3));
    assert_eq!(restarted.endpoints("s/black").len(), 1);
    assert_eq!(restarted.clusters(), ["s/black", "s/red"]);
    restarted.wait(secs(25));
    assert_eq!(restarted.clusters(), ["s/black"]);
}

#[test]
fn the_state_file_format_is_readable_and_stable() {
    let mut w = World::new();
    w.load(&blue_green(TWO, "a")).load(&blue_green(ONE, "a"));
    let json = serde_json::to_value(&w.state).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "draining": {
                "s/a": { "127.0.0.1:8082": { "until": "2027-01-15T08:00:05.000Z" } }
            }
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Rollouts

use super::rollout::{Figures, Observation, Status};
use crate::api::{CommandError, RolloutCommand, RolloutState};

fn rollout(steps: &str, analysis: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      v1: {{ endpoints: [127.0.0.1:8081] }}\n      v2: {{ endpoints: [127.0.0.1:8082] }}\n      v3: {{ endpoints: [127.0.0.1:8083] }}\n    strategy:\n      canary:\n        stable: v1\n        canary: v2\n        steps: {steps}\n        interval: 60s\n{analysis}"
    )
}

const ANALYSIS: &str = "        analysis: { interval: 10s, max_error_rate: 1%, max_p99_latency: 500ms, min_requests: 20, failure_limit: 2 }\n";

fn good() -> Observation {
    Observation {
        figures: Figures {
            requests: 1000,
            errors: 2,
            p99_ms: Some(40.0),
            from: None,
        },
        webhooks: Ok(()),
        baseline: None,
    }
}

fn failing() -> Observation {
    Observation {
        figures: Figures {
            requests: 1000,
            errors: 200,
            p99_ms: Some(40.0),
            from: None,
        },
        webhooks: Ok(()),
        baseline: None,
    }
}

fn quiet() -> Observation {
    Observation {
        figures: Figures {
            requests: 3,
            errors: 0,
            p99_ms: Some(40.0),
            from: None,
        },
        webhooks: Ok(()),
        baseline: None,
    }
}

impl World {
    fn observe(&mut self, o: Observation) -> &mut World {
        let spec = self.spec.clone().unwrap();
        self.state.reduce(
            &spec,
            Event::Observed {
                service: "s",
                observation: &o,
            },
            self.now,
        );
        self
    }

    fn command(&mut self, c: RolloutCommand) -> Result<&'static str, CommandError> {
        let spec = self.spec.clone().unwrap();
        self.state.command(&spec, "s", c, "the operator", self.now)
    }

    /// The canary's share of requests as planned, in percent.
    fn canary_weight(&self) -> f64 {
        f64::from(
            self.plan().services["s"]
                .split
                .get("v2")
                .copied()
                .unwrap_or(0),
        ) / 10_000.0
    }

    fn status(&self) -> Status {
        self.state.rollouts["s"].status.clone()
    }

    /// What the rollout of `s` logged, in order.
    fn history(&self) -> Vec<&str> {
        self.state.rollouts["s"]
            .history
            .iter()
            .map(|e| e.what.as_str())
            .collect()
    }
}

#[test]
fn a_healthy_canary_is_promoted_step_by_step_each_step_timed_from_the_answers() {
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", ANALYSIS));
    assert_eq!(
        w.canary_weight(),
        10.0,
        "a rollout starts at its first step"
    );
    // Nothing counts until every Envoy has the weight.
    w.wait(secs(120));
    assert_eq!(w.canary_weight(), 10.0);
    assert!(w.state.awaiting_answers());
    w.answered();
    assert_eq!(w.next_deadline(), Some(w.at(10)), "the first check");
    for weight in [10.0, 50.0, 100.0] {
        assert_eq!(w.canary_weight(), weight);
        for _ in 0..6 {
            w.wait(secs(10)).observe(good());
        }
        w.wait(Duration::ZERO);
        if weight < 100.0 {
            assert!(
                w.state.awaiting_answers(),
                "the next weight waits for answers"
            );
            w.answered();
        }
    }
    assert_eq!(w.status(), Status::Promoted);
    assert_eq!(w.canary_weight(), 100.0);
    assert_eq!(
        w.history(),
        [
            "started: v2 at 10%",
            "v2 10% → 50% after 5 passed check(s) (last: 1000 requests, 0.20% errors, p99 40 ms)",
            "v2 50% → 100% after 5 passed check(s) (last: 1000 requests, 0.20% errors, p99 40 ms)",
            "promoted (every step passed)"
        ]
    );
    // Promoted stays promoted: an unrelated edit moves nothing.
    w.load(&rollout("[10, 50, 100]", ANALYSIS).replace("8083", "8084"));
    assert_eq!(w.canary_weight(), 100.0);
}

#[test]
fn a_failing_canary_rolls_back_at_once_without_waiting_for_the_step_to_end() {
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", ANALYSIS)).answered();
    w.wait(secs(10)).observe(good());
    w.wait(secs(10)).observe(failing());
    assert_eq!(
        w.canary_weight(),
        10.0,
        "one failed check of failure_limit 2"
    );
    w.wait(secs(10)).observe(failing());
    assert_eq!(w.canary_weight(), 0.0, "rolled back");
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert_eq!(
        reason,
        "error rate 20.0% (200 of 1000 requests) above max_error_rate 1%"
    );
    // Routes: everyone on stable, the aggregate cluster lingers for the drain period.
    assert!(
        w.plan().services["s"]
            .routes
            .iter()
            .all(|r| r.target == Target::One(ClusterRef::Version(ClusterId::new("s", "v1"))))
    );
    assert!(w.clusters().contains(&"s/v2~v1".to_owned()));
    w.wait(PERIOD);
    assert!(!w.clusters().contains(&"s/v2~v1".to_owned()));
    // It stays rolled back through time and unrelated edits.
    w.wait(secs(600))
        .load(&rollout("[10, 50, 100]", ANALYSIS).replace("8083", "8084"));
    assert_eq!(w.canary_weight(), 0.0);
    // A new canary version starts a new rollout.
    w.load(&rollout("[10, 50, 100]", ANALYSIS).replace("        canary: v2", "        canary: v3"));
    assert_eq!(w.state.rollouts["s"].status, Status::Progressing);
    let split = &w.plan().services["s"].split;
    assert_eq!(split.get("v3"), Some(&100_000));
}

#[test]
fn a_slow_canary_fails_max_p99_latency() {
    let mut w = World::new();
    w.load(&rollout("[10, 100]", ANALYSIS)).answered();
    let slow = Observation {
        figures: Figures {
            requests: 500,
            errors: 0,
            p99_ms: Some(640.0),
            from: None,
        },
        webhooks: Ok(()),
        baseline: None,
    };
    w.wait(secs(10)).observe(slow.clone());
    w.wait(secs(10)).observe(slow);
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert_eq!(reason, "p99 latency 640 ms above max_p99_latency 500ms");
}

#[test]
fn too_little_traffic_waits_then_passes_and_max_wait_fails() {
    let mut w = World::new();
    w.load(&rollout("[10, 100]", ANALYSIS)).answered();
    for _ in 0..12 {
        w.wait(secs(10)).observe(quiet());
    }
    assert_eq!(
        w.canary_weight(),
        10.0,
        "two minutes of waiting do not pass the step"
    );
    assert_eq!(w.status(), Status::Progressing, "nor fail it");
    w.wait(secs(10)).observe(good());
    w.wait(Duration::ZERO);
    assert_eq!(
        w.canary_weight(),
        100.0,
        "the first check with traffic passes it"
    );

    let with_max_wait = ANALYSIS.replace("failure_limit: 2", "failure_limit: 1, max_wait: 30s");
    let mut w = World::new();
    w.load(&rollout("[10, 100]", &with_max_wait)).answered();
    for _ in 0..3 {
        w.wait(secs(10)).observe(quiet());
    }
    assert_eq!(w.status(), Status::Progressing);
    w.wait(secs(10)).observe(quiet());
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert!(reason.starts_with("too little traffic for 30s"), "{reason}");
}

fn observed(requests: u64, errors: u64) -> Observation {
    Observation {
        figures: Figures {
            requests,
            errors,
            p99_ms: Some(40.0),
            from: None,
        },
        webhooks: Ok(()),
        baseline: None,
    }
}

#[test]
fn a_check_certain_to_fail_fails_before_min_requests_and_none_passes_before_it() {
    // max_error_rate 2% of min_requests 20: a single error is already certain to fail.
    let analysis = ANALYSIS
        .replace("max_error_rate: 1%", "max_error_rate: 2%")
        .replace("failure_limit: 2", "failure_limit: 1");
    let mut w = World::new();
    w.load(&rollout("[10, 100]", &analysis)).answered();
    w.wait(secs(10)).observe(observed(3, 0));
    assert_eq!(w.status(), Status::Progressing, "3 good of 20: waits");
    assert!(matches!(
        w.state.rollouts["s"].last_check.as_ref().unwrap().verdict,
        rollout::Verdict::Wait(_)
    ));
    w.wait(secs(10)).observe(observed(3, 3));
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert_eq!(
        reason,
        "3 errors in 3 request(s): above max_error_rate 2% even if the 17 more up to min_requests 20 all succeed"
    );
    assert_eq!(w.canary_weight(), 0.0, "rolled back");

    // At 10% of 20, two errors could still end at 10%: only the third is certain.
    let analysis = ANALYSIS
        .replace("max_error_rate: 1%", "max_error_rate: 10%")
        .replace("failure_limit: 2", "failure_limit: 1");
    let mut w = World::new();
    w.load(&rollout("[10, 100]", &analysis)).answered();
    w.wait(secs(10)).observe(observed(5, 2));
    assert_eq!(w.status(), Status::Progressing, "2 of 20 is exactly 10%");
    w.wait(secs(10)).observe(observed(19, 0));
    assert_eq!(w.status(), Status::Progressing, "19 good: still waits");
    assert_eq!(w.canary_weight(), 10.0, "never passes before min_requests");
    w.wait(secs(10)).observe(observed(6, 3));
    assert!(matches!(w.status(), Status::Failed(_)), "{:?}", w.status());
}

#[test]
fn the_errors_that_fail_a_check_early_are_the_fewest_above_the_limit_of_min_requests() {
    let spec = |rate: &str, min: u64| {
        let text = rollout(
            "[10, 100]",
            &format!("        analysis: {{ max_error_rate: {rate}, min_requests: {min} }}\n"),
        );
        let spec = parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        spec.services["s"].strategy.analysis().unwrap().clone()
    };
    for (rate, min, errors) in [
        ("2%", 20, 1),
        ("10%", 20, 3),
        ("5%", 100, 6),
        ("0.5%", 1000, 6),
        ("0%", 20, 1),
        ("100%", 20, 21),
    ] {
        assert_eq!(
            rollout::fails_early_at(&spec(rate, min)),
            errors,
            "{rate} of {min}"
        );
    }
    let mut without = spec("1%", 20);
    without.max_error_rate = None;
    assert_eq!(rollout::fails_early_at(&without), u64::MAX);
}

#[test]
fn a_check_reads_only_what_came_after_every_envoy_answered_the_state_it_judges() {
    let with_limit_1 = ANALYSIS.replace("failure_limit: 2", "failure_limit: 1");
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", &with_limit_1));
    w.wait(secs(3)).answered();
    let answered = w.now;
    w.wait(secs(10));
    assert_eq!(
        w.state.checks_due(w.now),
        [("s".to_owned(), "v2".to_owned(), answered)],
        "the window begins when every Envoy had the first step"
    );
    w.observe(failing());
    assert!(matches!(w.status(), Status::Failed(_)));
    assert_eq!(w.state.checks_due(w.at(60)), []);

    // Fixed, then resumed: the first step again, judged from the answers to it.
    w.wait(secs(30));
    w.command(RolloutCommand::Resume).unwrap();
    assert_eq!(w.state.checks_due(w.at(60)), [], "not before the answers");
    w.wait(secs(2)).answered();
    let resumed = w.now;
    w.wait(secs(10));
    assert_eq!(
        w.state.checks_due(w.now),
        [("s".to_owned(), "v2".to_owned(), resumed)]
    );

    // A pause and a resume: nothing changes in Envoy, so the window begins at the resume.
    w.command(RolloutCommand::Pause).unwrap();
    w.wait(secs(30));
    w.command(RolloutCommand::Resume).unwrap();
    let resumed = w.now;
    assert_eq!(
        w.state.checks_due(w.at(10)),
        [("s".to_owned(), "v2".to_owned(), resumed)]
    );

    // The next step: from the answers to its weight.
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO);
    assert_eq!(w.canary_weight(), 50.0);
    w.wait(secs(1)).answered();
    let stepped = w.now;
    assert_eq!(
        w.state.checks_due(w.at(10)),
        [("s".to_owned(), "v2".to_owned(), stepped)]
    );
}

/// The canary's figures against stable's over the same window; latency as requests per
/// bucket (the bucket numbers stand for Envoy's bounds).
fn against_stable(
    (requests, errors, p99, latency): (u64, u64, f64, &[f64]),
    (stable_requests, stable_errors, stable_p99, stable_latency): (u64, u64, f64, &[f64]),
) -> Observation {
    let figures = |requests, errors, p99| Figures {
        requests,
        errors,
        p99_ms: Some(p99),
        from: None,
    };
    Observation {
        figures: figures(requests, errors, p99),
        webhooks: Ok(()),
        baseline: Some(rollout::Baseline {
            version: "v1".into(),
            figures: figures(stable_requests, stable_errors, stable_p99),
            latency: [stable_latency.to_vec(), latency.to_vec()],
        }),
    }
}

const COMPARED: &str = "        analysis: { interval: 10s, min_requests: 20, failure_limit: 1, max_error_rate_increase: 1%, max_p99_ratio: 1.5 }\n";

#[test]
fn a_canary_compared_with_stable_fails_only_on_a_significant_difference_over_a_limit() {
    let typical: &[f64] = &[0.0, 10.0, 60.0, 25.0, 5.0, 0.0, 0.0];
    let slow: &[f64] = &[0.0, 0.0, 0.0, 5.0, 20.0, 55.0, 20.0];

    // Both slow on a bad day, with the same error rate: passes.
    let mut w = World::new();
    w.load(&rollout("[10, 100]", COMPARED)).answered();
    w.wait(secs(10)).observe(against_stable(
        (100, 5, 400.0, slow),
        (900, 45, 390.0, slow),
    ));
    let check = w.state.rollouts["s"].last_check.clone().unwrap();
    assert_eq!(check.verdict, rollout::Verdict::Pass, "{check:?}");
    let c = check.baseline.unwrap();
    assert_eq!((c.version.as_str(), c.figures.requests), ("v1", 900));
    assert!(
        c.error_rate.unwrap().p > 0.4 && c.latency.unwrap().p > 0.4,
        "{c:?}"
    );

    // Three times stable's p99, and ranked slower beyond doubt: fails.
    let mut w = World::new();
    w.load(&rollout("[10, 100]", COMPARED)).answered();
    w.wait(secs(10)).observe(against_stable(
        (100, 0, 300.0, slow),
        (900, 0, 100.0, typical),
    ));
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert!(
        reason.starts_with("p99 latency 300 ms is 3.00 times v1's 100 ms, more than max_p99_ratio 1.5 (Mann-Whitney p = ")
            && reason.ends_with(", below 0.05 for confidence 95%)"),
        "{reason}"
    );

    // 3 points more errors than stable: significant at 1,000 requests each, fails ...
    let mut w = World::new();
    w.load(&rollout("[10, 100]", COMPARED)).answered();
    w.wait(secs(10)).observe(against_stable(
        (1000, 40, 50.0, typical),
        (1000, 10, 50.0, typical),
    ));
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert!(
        reason.starts_with("error rate 4.0% is 3.0 points above v1's 1.0%, more than max_error_rate_increase 1% (two-proportion test p = "),
        "{reason}"
    );
    // ... but not at 30 requests, where 2 errors against none can be chance.
    let mut w = World::new();
    w.load(&rollout("[10, 100]", COMPARED)).answered();
    w.wait(secs(10)).observe(against_stable(
        (30, 2, 50.0, typical),
        (30, 0, 50.0, typical),
    ));
    assert_eq!(w.status(), Status::Progressing);
    assert_eq!(
        w.state.rollouts["s"].last_check.as_ref().unwrap().verdict,
        rollout::Verdict::Pass
    );

    // Too little stable traffic to compare with: waits.
    let mut w = World::new();
    w.load(&rollout("[10, 100]", COMPARED)).answered();
    w.wait(secs(10)).observe(against_stable(
        (100, 0, 50.0, typical),
        (5, 0, 50.0, typical),
    ));
    let check = w.state.rollouts["s"].last_check.clone().unwrap();
    assert_eq!(
        check.verdict,
        rollout::Verdict::Wait("baseline v1 has 5 request(s), fewer than min_requests 20".into())
    );
}

#[test]
fn a_step_that_makes_no_progress_by_its_deadline_rolls_back_and_says_why() {
    let with_deadline = ANALYSIS.replace(
        "failure_limit: 2",
        "failure_limit: 2, progress_deadline: 5m",
    );
    // An Envoy never answers the first step.
    let mut w = World::new();
    w.load(&rollout("[10, 100]", &with_deadline));
    assert_eq!(
        w.next_deadline(),
        Some(w.at(300)),
        "the deadline wakes the controller"
    );
    w.wait(secs(299));
    assert_eq!(w.status(), Status::Progressing);
    w.wait(secs(1));
    assert_eq!(
        w.status(),
        Status::Failed(
            "no progress for 5m (progress_deadline): not every Envoy holding the service has answered the step".into()
        )
    );
    assert_eq!(w.canary_weight(), 0.0);

    // Checks that keep waiting for traffic (no max_wait): the deadline ends it, counted from
    // the step, and a pause does not count.
    let mut w = World::new();
    w.load(&rollout("[10, 100]", &with_deadline)).answered();
    for _ in 0..10 {
        w.wait(secs(10)).observe(quiet());
    }
    w.command(RolloutCommand::Pause).unwrap();
    w.wait(secs(600));
    assert_eq!(w.status(), Status::Paused, "paused: no deadline");
    w.command(RolloutCommand::Resume).unwrap();
    for _ in 0..29 {
        w.wait(secs(10)).observe(quiet());
    }
    assert_eq!(w.status(), Status::Progressing, "290 s since the resume");
    w.wait(secs(10));
    let Status::Failed(reason) = w.status() else {
        panic!("{:?}", w.status())
    };
    assert_eq!(
        reason,
        "no progress for 5m (progress_deadline): its checks wait: 3 request(s), fewer than min_requests 20"
    );

    // A step that advances in time never meets it.
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", &with_deadline)).answered();
    for _ in 0..2 {
        for _ in 0..6 {
            w.wait(secs(10)).observe(good());
        }
        w.wait(Duration::ZERO).answered();
    }
    assert_eq!(w.status(), Status::Progressing);
    assert_eq!(w.canary_weight(), 100.0);
    assert_eq!(
        w.state.rollouts["s"].progress_deadline(&w.spec.as_ref().unwrap().services["s"].strategy),
        Some(w.at(300)),
        "counted from the last step"
    );
}

impl World {
    fn gate_answered(&mut self, gate: rollout::Gate, answer: Result<(), String>) -> &mut World {
        let spec = self.spec.clone().unwrap();
        self.state.reduce(
            &spec,
            Event::GateAnswered {
                service: "s",
                gate,
                answer: &answer,
            },
            self.now,
        );
        self
    }
}

#[test]
fn gates_hold_the_canary_at_0_before_pre_rollout_and_each_step_until_confirmed() {
    use rollout::Gate;
    let gated = |hooks: &str| {
        rollout("[10, 100]", ANALYSIS).replace(
            "        interval: 60s\n",
            &format!("        interval: 60s\n{hooks}"),
        )
    };
    let both = gated(
        "        pre_rollout: [ { url: http://127.0.0.1:9/smoke } ]\n        confirm: [ { url: http://127.0.0.1:9/ok } ]\n",
    );
    let mut w = World::new();
    w.load(&both).answered();
    assert_eq!(w.canary_weight(), 0.0, "no request before the smoke test");
    assert_eq!(
        w.state.gates_due(w.now),
        [("s".to_owned(), Gate::PreRollout)]
    );
    assert_eq!(w.state.checks_due(w.at(60)), [], "no checks at 0%");
    w.gate_answered(Gate::PreRollout, Ok(())).answered();
    assert_eq!(w.canary_weight(), 10.0);
    assert_eq!(w.state.gates_due(w.now), []);
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    assert_eq!(w.canary_weight(), 10.0, "held for confirm");
    assert_eq!(w.state.gates_due(w.now), [("s".to_owned(), Gate::Confirm)]);
    w.gate_answered(Gate::Confirm, Err("answered 403".into()));
    assert_eq!(
        w.state.gates_due(w.now),
        [],
        "asked again after the interval"
    );
    assert_eq!(
        w.state.gates_due(w.at(10)),
        [("s".to_owned(), Gate::Confirm)]
    );
    w.wait(secs(30));
    assert_eq!(w.canary_weight(), 10.0);
    w.gate_answered(Gate::Confirm, Ok(()));
    assert_eq!(w.canary_weight(), 100.0, "confirmed: on at once");

    // Failed and resumed: the smoke test again, at 0%.
    let mut w = World::new();
    w.load(&both).answered();
    w.gate_answered(Gate::PreRollout, Err("answered 500".into()));
    assert_eq!(
        w.status(),
        Status::Failed("pre_rollout: answered 500".into())
    );
    w.command(RolloutCommand::Resume).unwrap();
    assert_eq!(w.canary_weight(), 0.0);
    assert_eq!(
        w.state.gates_due(w.now),
        [("s".to_owned(), Gate::PreRollout)]
    );

    // Removing confirm from the file lets a held step go on.
    let mut w = World::new();
    w.load(&gated(
        "        confirm: [ { url: http://127.0.0.1:9/ok } ]\n",
    ))
    .answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    assert_eq!(w.canary_weight(), 10.0);
    w.load(&gated("")).wait(Duration::ZERO);
    assert_eq!(w.canary_weight(), 100.0);
}

#[test]
fn ended_rollouts_are_kept_per_service_bounded_with_who_did_what() {
    let mut w = World::new();
    w.load(&rollout("[10, 100]", ANALYSIS)).answered();
    w.wait(secs(10)).observe(good());
    assert_eq!(w.state.rollouts["s"].checks.len(), 1);
    w.state
        .command(
            w.spec.as_ref().unwrap(),
            "s",
            RolloutCommand::Abort,
            "the operator at 127.0.0.1",
            w.now,
        )
        .unwrap();
    // A new canary version: the aborted rollout goes to history, the new one starts.
    w.wait(secs(5));
    w.load(&rollout("[10, 100]", ANALYSIS).replace("        canary: v2", "        canary: v3"));
    let past = &w.state.past_rollouts["s"];
    assert_eq!(past.len(), 1);
    assert!(
        past[0].checks.is_empty(),
        "no chart points kept for ended rollouts"
    );
    assert_eq!(
        past[0].status,
        Status::Failed("aborted by the operator at 127.0.0.1".into())
    );
    assert_eq!(
        past[0].history.last().unwrap().what,
        "rolled back: aborted by the operator at 127.0.0.1"
    );
    // An unrelated edit keeps the current rollout where it is.
    w.load(
        &rollout("[10, 100]", ANALYSIS)
            .replace("        canary: v2", "        canary: v3")
            .replace("8081", "8091"),
    );
    assert_eq!(w.state.past_rollouts["s"].len(), 1);
    // Bounded: the newest PAST_ROLLOUTS stay.
    for i in 0..15 {
        let canary = if i % 2 == 0 { "v2" } else { "v3" };
        w.wait(secs(1));
        w.load(
            &rollout("[10, 100]", ANALYSIS)
                .replace("        canary: v2", &format!("        canary: {canary}")),
        );
    }
    let past = &w.state.past_rollouts["s"];
    assert_eq!(past.len(), super::state::PAST_ROLLOUTS);
    assert!(past.back().unwrap().started > past.front().unwrap().started);
    // Kept in the state file.
    let saved = serde_json::to_string(&w.state).unwrap();
    let restored: RuntimeState = serde_json::from_str(&saved).unwrap();
    assert_eq!(restored.past_rollouts, w.state.past_rollouts);
}

#[test]
fn each_check_is_kept_for_the_chart_with_its_final_verdict_and_bounded() {
    let with_max_wait = ANALYSIS.replace("failure_limit: 2", "failure_limit: 3, max_wait: 15s");
    let mut w = World::new();
    // A step long enough for every check below.
    let long_step = rollout("[10, 100]", &with_max_wait).replace("interval: 60s", "interval: 1h");
    w.load(&long_step).answered();
    w.wait(secs(10)).observe(good());
    w.wait(secs(10)).observe(quiet());
    w.wait(secs(10)).observe(quiet());
    w.wait(secs(10)).observe(quiet());
    let checks = &w.state.rollouts["s"].checks;
    let seen: Vec<(u32, u64, char)> = checks
        .iter()
        .map(|c| (c.weight, c.requests, c.verdict))
        .collect();
    assert_eq!(
        seen,
        [
            (100_000, 1000, 'p'),
            (100_000, 3, 'w'),
            (100_000, 3, 'w'),
            (100_000, 3, 'f')
        ],
        "the wait that max_wait turned into a failure is charted as one"
    );
    for _ in 0..200 {
        w.wait(secs(10)).observe(good());
    }
    assert_eq!(w.state.rollouts["s"].checks.len(), rollout::CHECKS_KEPT);
}

#[test]
fn a_restart_resumes_the_rollout_at_the_same_step_and_weight() {
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", ANALYSIS)).answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO).answered();
    w.wait(secs(20)).observe(good());
    assert_eq!(w.canary_weight(), 50.0);
    let before = w.plan();
    let saved = serde_json::to_string(&w.state).unwrap();
    let mut restarted = World::with_state(serde_json::from_str(&saved).unwrap());
    restarted.now = w.now + secs(5);
    restarted.load(&rollout("[10, 50, 100]", ANALYSIS));
    assert_eq!(
        restarted.plan(),
        before,
        "the same weight, no extra route change"
    );
    // The step's time still counts from the answers before the restart.
    assert_eq!(
        restarted.state.rollouts["s"].since,
        w.state.rollouts["s"].since
    );
    for _ in 0..4 {
        restarted.wait(secs(10)).observe(good());
    }
    restarted.wait(Duration::ZERO);
    assert_eq!(restarted.canary_weight(), 100.0);
}

#[test]
fn an_edited_step_list_continues_from_the_current_weight() {
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", ANALYSIS)).answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO);
    assert_eq!(w.canary_weight(), 50.0);
    w.load(&rollout("[5, 25, 75, 100]", ANALYSIS));
    assert_eq!(w.canary_weight(), 50.0, "an edit does not move traffic");
    w.answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO);
    assert_eq!(w.canary_weight(), 75.0, "the next step above 50%");
    // Removing the steps ends the rollout: the file's manual weight is what it says.
    let manual =
        rollout("[10]", "").replace("steps: [10]\n        interval: 60s\n", "weight: 20\n");
    w.load(&manual);
    assert!(w.state.rollouts.is_empty());
    assert_eq!(w.canary_weight(), 20.0);
}

#[test]
fn operators_pause_resume_promote_and_abort() {
    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", ANALYSIS)).answered();
    assert_eq!(w.command(RolloutCommand::Pause).unwrap(), "paused");
    w.wait(secs(600)).observe(good());
    assert_eq!(w.canary_weight(), 10.0, "paused: nothing advances");
    assert_eq!(
        w.command(RolloutCommand::Pause),
        Err(CommandError::NotNow {
            command: RolloutCommand::Pause,
            state: RolloutState::Paused
        })
    );
    assert_eq!(w.command(RolloutCommand::Resume).unwrap(), "resumed");
    assert_eq!(
        w.state.rollouts["s"].since,
        Some(w.now),
        "the step's time starts again"
    );
    assert_eq!(w.command(RolloutCommand::Promote).unwrap(), "promoted");
    assert_eq!(w.canary_weight(), 100.0);
    assert_eq!(
        w.command(RolloutCommand::Abort),
        Err(CommandError::NotNow {
            command: RolloutCommand::Abort,
            state: RolloutState::Promoted
        }),
        "promoted is final"
    );

    let mut w = World::new();
    w.load(&rollout("[10, 50, 100]", ANALYSIS)).answered();
    assert_eq!(w.command(RolloutCommand::Abort).unwrap(), "rolled back");
    assert_eq!(w.canary_weight(), 0.0);
    assert_eq!(
        w.command(RolloutCommand::Resume).unwrap(),
        "started again from the first step"
    );
    assert_eq!(w.canary_weight(), 10.0);
    let err = w.state.command(
        w.spec.as_ref().unwrap(),
        "nope",
        RolloutCommand::Pause,
        "the operator",
        w.now,
    );
    let err = err.unwrap_err();
    assert_eq!(err, CommandError::UnknownService("nope".into()));
    assert!(err.to_string().contains("no service \"nope\""), "{err}");
}

fn switch(active: &str, strategy: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:8081] }}\n      green: {{ endpoints: [127.0.0.1:8082] }}\n    strategy:\n      {strategy}:\n        active: {active}\n{extra}        analysis: {{ window: 30s, interval: 10s, max_error_rate: 1%, failure_limit: 1 }}\n"
    )
}

fn serving(w: &World) -> Vec<String> {
    let plan = w.plan();
    plan.services["s"].split.keys().cloned().collect()
}

#[test]
fn a_blue_green_switch_that_fails_its_window_switches_back() {
    let mut w = World::new();
    w.load(&switch("blue", "blue-green", ""));
    assert!(w.state.rollouts.is_empty(), "the first file is no switch");
    w.load(&switch("green", "blue-green", "")).answered();
    assert_eq!(serving(&w), ["green"]);
    w.wait(secs(10)).observe(failing());
    assert_eq!(serving(&w), ["blue"], "switched back");
    // An unrelated edit keeps it switched back; making blue active again ends the rollout.
    w.load(&switch("green", "blue-green", "").replace("8082", "8092"));
    assert_eq!(serving(&w), ["blue"]);
    w.load(&switch("blue", "blue-green", ""));
    assert!(w.state.rollouts.is_empty());
    assert_eq!(serving(&w), ["blue"]);
}

#[test]
fn a_switch_that_passes_its_window_is_promoted() {
    let mut w = World::new();
    w.load(&switch("blue", "blue-green", ""))
        .load(&switch("green", "blue-green", ""))
        .answered();
    w.wait(secs(10)).observe(good());
    w.wait(secs(10)).observe(good());
    w.wait(secs(10)).observe(good());
    assert_eq!(w.status(), Status::Promoted);
    assert_eq!(serving(&w), ["green"]);
}

#[test]
fn red_black_keeps_the_previous_version_until_the_switch_window_ends() {
    // A grace shorter than the window: the rollback target must not go first.
    let grace = "        grace: 5s\n";
    let mut w = World::new();
    w.load(&switch("blue", "red-black", grace))
        .load(&switch("green", "red-black", grace))
        .answered();
    w.wait(secs(10)).observe(good());
    w.wait(secs(10)).observe(good());
    assert_eq!(
        w.clusters(),
        ["s/blue", "s/green"],
        "blue stays during the window"
    );
    w.wait(secs(10)).observe(good());
    assert_eq!(w.status(), Status::Promoted);
    w.wait(secs(5));
    assert_eq!(w.clusters(), ["s/green"], "then retires after its grace");

    // Failing: back on blue at once, green retires after every Envoy answered and the grace.
    let mut w = World::new();
    w.load(&switch("blue", "red-black", grace))
        .load(&switch("green", "red-black", grace))
        .answered();
    w.wait(secs(10)).observe(failing());
    assert_eq!(serving(&w), ["blue"]);
    assert_eq!(w.clusters(), ["s/blue", "s/green"]);
    w.answered().wait(secs(5));
    assert_eq!(w.clusters(), ["s/blue"]);
}

/// A name that leaves the file drains like an IP address, in the DNS cluster's own endpoints;
/// the version is a DNS cluster while any of its endpoints (draining ones included) is a name,
/// and an EDS cluster again once only IP addresses are left. The state file keeps the name as
/// written.
#[test]
fn a_name_removed_from_the_file_drains_and_the_version_stays_dns_until_it_is_gone() {
    let mut w = World::new();
    w.load(&blue_green(
        "      a: { endpoints: [a-1:8080, 127.0.0.1:8082] }\n",
        "a",
    ));
    assert_eq!(
        w.plan().services["s"].versions["a"].discovery,
        Discovery::Dns
    );

    w.wait(Duration::from_secs(1)).load(&blue_green(
        "      a: { endpoints: [127.0.0.1:8082] }\n",
        "a",
    ));
    let until = w.at(5);
    assert_eq!(
        w.endpoints("s/a"),
        [
            ("127.0.0.1:8082".to_owned(), Health::Active),
            ("a-1:8080".to_owned(), Health::Removed { until }),
        ]
    );
    assert_eq!(
        w.plan().services["s"].versions["a"].discovery,
        Discovery::Dns
    );
    let saved = serde_json::to_value(&w.state).unwrap();
    assert_eq!(
        saved["draining"]["s/a"]["a-1:8080"]["until"],
        until.to_string()
    );
    assert_eq!(
        serde_json::from_value::<RuntimeState>(saved).unwrap(),
        w.state
    );

    w.wait(PERIOD);
    assert_eq!(
        w.endpoints("s/a"),
        [("127.0.0.1:8082".to_owned(), Health::Active)]
    );
    assert_eq!(
        w.plan().services["s"].versions["a"].discovery,
        Discovery::Eds
    );
}

/// Blue-green with a preview route, checked for 20 s before a switch.
fn checked_switch(active: &str) -> String {
    switch(active, "blue-green", "        preview: {}\n").replace(
        "analysis: { window: 30s,",
        "analysis: { before_switch: 20s, window: 30s,",
    )
}

/// Who reaches the service through a preview route.
fn previewed(w: &World) -> Vec<String> {
    w.plan().services["s"]
        .routes
        .iter()
        .filter(|r| !r.conditions.is_empty())
        .map(|r| format!("{:?}", r.target))
        .collect()
}

#[test]
fn a_switch_checked_before_it_happens_keeps_the_old_version_until_the_preview_passes() {
    let mut w = World::new();
    w.load(&checked_switch("blue"))
        .load(&checked_switch("green"))
        .answered();
    assert_eq!(serving(&w), ["blue"], "not switched before the check");
    assert!(w.state.rollouts["s"].previewing);
    assert!(
        previewed(&w).iter().any(|t| t.contains("green")),
        "green keeps its preview route: {:?}",
        previewed(&w)
    );
    w.wait(secs(10)).observe(good());
    assert_eq!(serving(&w), ["blue"], "10 s of 20");
    w.wait(secs(10));
    assert_eq!(serving(&w), ["green"], "switched once the preview passed");
    assert!(!w.state.rollouts["s"].previewing);
    assert_eq!(
        w.status(),
        Status::Progressing,
        "now watched for its window"
    );
    // The window counts from every Envoy's answer to the switch, as without a preview.
    w.wait(secs(40));
    assert_eq!(
        w.status(),
        Status::Progressing,
        "no Envoy answered the switch yet"
    );
    w.answered();
    w.wait(secs(10)).observe(good());
    w.wait(secs(10)).observe(good());
    w.wait(secs(10));
    assert_eq!(w.status(), Status::Promoted);
    assert_eq!(serving(&w), ["green"]);
}

#[test]
fn a_switch_failing_its_check_before_it_happens_never_switches() {
    let mut w = World::new();
    w.load(&checked_switch("blue"))
        .load(&checked_switch("green"))
        .answered();
    w.wait(secs(10)).observe(failing());
    assert!(matches!(w.status(), Status::Failed(_)));
    assert_eq!(serving(&w), ["blue"], "green never got the requests");
    w.wait(secs(60));
    assert_eq!(serving(&w), ["blue"]);
    // Resumed, green is checked again before any switch.
    assert_eq!(
        w.command(RolloutCommand::Resume).unwrap(),
        "started again from the first step"
    );
    assert!(w.state.rollouts["s"].previewing);
    assert_eq!(serving(&w), ["blue"]);
    // Promoting switches at once.
    assert_eq!(w.command(RolloutCommand::Promote).unwrap(), "promoted");
    assert_eq!(serving(&w), ["green"]);
}

// --- node groups ---------------------------------------------------------------------------

/// An edge with `public` (checkout) and sidecars with `outbound` (payments).
fn grouped(payments_versions: &str) -> String {
    format!(
        "listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: {{ prefix: / }}
        service: checkout
  - name: outbound
    address: 127.0.0.1:15001
    routes:
      - match: {{ prefix: / }}
        service: payments
services:
  checkout:
    versions:
      blue: {{ endpoints: [127.0.0.1:8081] }}
    active: blue
  payments:
    versions:
{payments_versions}    active: v1
groups:
  - name: edge
    match: {{ id: \"edge-*\" }}
    listeners: [public]
  - name: sidecars
    match: {{ cluster: sidecars }}
    listeners: [outbound]
"
    )
}

fn group_services(plan: &Plan, group: &str) -> Vec<String> {
    plan.groups[&GroupId::named(group)]
        .services
        .iter()
        .cloned()
        .collect()
}

#[test]
fn without_groups_every_node_gets_everything_in_one_group() {
    let mut w = World::new();
    w.load(&red_black("red"));
    let plan = w.plan();
    assert_eq!(plan.groups.keys().collect::<Vec<_>>(), [&GroupId::all()]);
    let all = &plan.groups[&GroupId::all()];
    assert_eq!(all.listeners, ["l"]);
    assert_eq!(all.services, plan.services.keys().cloned().collect());
    assert!(!plan.node_groups.is_targeted());
}

#[test]
fn each_group_gets_the_services_its_listeners_route_and_unmatched_nodes_nothing() {
    let mut w = World::new();
    w.load(&grouped("      v1: { endpoints: [127.0.0.1:8083] }\n"));
    let plan = w.plan();
    assert_eq!(group_services(&plan, "edge"), ["checkout"]);
    assert_eq!(group_services(&plan, "sidecars"), ["payments"]);
    assert_eq!(plan.groups[&GroupId::named("edge")].listeners, ["public"]);
    assert_eq!(plan.groups[&GroupId::unmatched()], GroupPlan::default());
    assert_eq!(
        plan.holders("payments").collect::<Vec<_>>(),
        [&GroupId::named("sidecars")]
    );
}

#[test]
fn a_removed_version_drains_only_in_the_groups_that_routed_its_service() {
    let mut w = World::new();
    w.load(&grouped(
        "      v1: { endpoints: [127.0.0.1:8083] }\n      v0: { endpoints: [127.0.0.1:8084] }\n",
    ));
    w.load(&grouped("      v1: { endpoints: [127.0.0.1:8083] }\n"));
    let removed = &w.state.removed[&ClusterId::new("payments", "v0")];
    assert_eq!(removed.groups, BTreeSet::from(["sidecars".to_owned()]));
    let plan = w.plan();
    assert!(plan.services["payments"].versions.contains_key("v0"));
    assert_eq!(group_services(&plan, "edge"), ["checkout"]);

    // A whole service removed from the file drains where it was routed, not everywhere.
    let without_payments = grouped("      v1: { endpoints: [127.0.0.1:8083] }\n")
        .replace("  - name: outbound\n    address: 127.0.0.1:15001\n    routes:\n      - match: { prefix: / }\n        service: payments\n", "  - name: outbound\n    address: 127.0.0.1:15001\n    routes:\n      - match: { prefix: / }\n        service: checkout\n")
        .replace("  payments:\n    versions:\n      v1: { endpoints: [127.0.0.1:8083] }\n    active: v1\n", "");
    w.load(&without_payments);
    let plan = w.plan();
    assert!(!plan.services["payments"].in_file);
    assert_eq!(group_services(&plan, "sidecars"), ["checkout", "payments"]);
    assert_eq!(group_services(&plan, "edge"), ["checkout"]);
    w.wait(PERIOD);
    assert_eq!(group_services(&w.plan(), "sidecars"), ["checkout"]);
}

#[test]
fn a_service_removed_with_no_record_of_its_groups_drains_in_every_group() {
    let mut w = World::new();
    w.load(&grouped("      v1: { endpoints: [127.0.0.1:8083] }\n"));
    w.state.removed.insert(
        ClusterId::new("gone", "v1"),
        state::RemovedVersion {
            until: w.at(5),
            endpoints: Vec::new(),
            policy: w.spec.as_ref().unwrap().services["checkout"].policy.clone(),
            groups: BTreeSet::new(),
        },
    );
    let plan = w.plan();
    assert_eq!(group_services(&plan, "edge"), ["checkout", "gone"]);
    assert_eq!(group_services(&plan, "sidecars"), ["gone", "payments"]);
    assert!(plan.groups[&GroupId::unmatched()].services.is_empty());
}

const MIRROR_THEN_TESTERS: &str =
    "[{ mirror: 50 }, { match: { header: { x-tester: \"1\" } }, pause: 30s }, 10, 100]";

/// The routes of `s` as (conditions, target) text.
fn route_targets(w: &World) -> Vec<String> {
    w.plan().services["s"]
        .routes
        .iter()
        .map(|r| {
            let conditions: Vec<String> = r.conditions.iter().map(ToString::to_string).collect();
            let target = match &r.target {
                Target::One(c) => c.to_string(),
                Target::Weighted(ws) => ws
                    .iter()
                    .map(|w| format!("{} {}", w.cluster, w.weight))
                    .collect::<Vec<_>>()
                    .join(" + "),
            };
            format!("[{}] {target}", conditions.join(", "))
        })
        .collect()
}

fn mirrored(w: &World) -> Option<String> {
    w.plan().services["s"]
        .route_policy
        .mirror
        .as_ref()
        .map(|(c, p)| format!("{c} {p}"))
}

#[test]
fn a_rollout_mirrors_then_serves_testers_then_raises_its_weight() {
    let mut w = World::new();
    w.load(&rollout(MIRROR_THEN_TESTERS, ANALYSIS));
    // Mirror step: stable answers every request, the canary gets copies of half of them.
    assert_eq!(w.canary_weight(), 0.0);
    assert_eq!(mirrored(&w).as_deref(), Some("s/v2 50%"));
    assert_eq!(route_targets(&w), ["[] s/v1"]);
    assert!(w.clusters().contains(&"s/v2".to_owned()));
    w.answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO);
    // Match step: only the testers' requests reach the canary (falling back to stable).
    assert_eq!(mirrored(&w), None);
    assert_eq!(w.canary_weight(), 0.0);
    assert_eq!(
        route_targets(&w),
        ["[header x-tester: 1] s/v2~v1", "[] s/v1"]
    );
    assert!(w.state.awaiting_answers());
    w.answered();
    // Its own pause: 30 s.
    for _ in 0..3 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO);
    assert_eq!(w.canary_weight(), 10.0);
    assert_eq!(route_targets(&w), ["[] s/v1 900000 + s/v2~v1 100000"]);
    w.answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO).answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO);
    assert_eq!(w.status(), Status::Promoted);
    assert_eq!(
        w.history(),
        [
            "started: v2 at a mirror of 50%",
            "v2 a mirror of 50% → requests with header x-tester: 1 after 5 passed check(s) (last: 1000 requests, 0.20% errors, p99 40 ms)",
            "v2 requests with header x-tester: 1 → 10% after 2 passed check(s) (last: 1000 requests, 0.20% errors, p99 40 ms)",
            "v2 10% → 100% after 5 passed check(s) (last: 1000 requests, 0.20% errors, p99 40 ms)",
            "promoted (every step passed)"
        ]
    );
}

#[test]
fn a_canary_failing_its_mirror_step_rolls_back_and_no_user_ever_reached_it() {
    let mut w = World::new();
    w.load(&rollout(MIRROR_THEN_TESTERS, ANALYSIS)).answered();
    w.wait(secs(10)).observe(failing());
    w.wait(secs(10)).observe(failing());
    assert!(matches!(w.status(), Status::Failed(_)), "{:?}", w.status());
    assert_eq!(mirrored(&w), None, "no more copies");
    assert_eq!(route_targets(&w), ["[] s/v1"]);
    // Resume starts again at the mirror.
    w.command(RolloutCommand::Resume).unwrap();
    assert_eq!(mirrored(&w).as_deref(), Some("s/v2 50%"));
}

#[test]
fn a_restart_resumes_a_match_step_and_an_edit_that_drops_it_moves_on_to_the_weights() {
    let mut w = World::new();
    w.load(&rollout(MIRROR_THEN_TESTERS, ANALYSIS)).answered();
    for _ in 0..6 {
        w.wait(secs(10)).observe(good());
    }
    w.wait(Duration::ZERO).answered();
    let before = w.plan();
    let saved = serde_json::to_string(&w.state).unwrap();
    let mut restarted = World::with_state(serde_json::from_str(&saved).unwrap());
    restarted.now = w.now + secs(5);
    restarted.load(&rollout(MIRROR_THEN_TESTERS, ANALYSIS));
    assert_eq!(
        restarted.plan(),
        before,
        "the same match step, no route change"
    );
    // The steps no longer have the match step: it is held for the interval, then the first
    // weight follows.
    restarted.load(&rollout("[{ mirror: 50 }, 20, 100]", ANALYSIS));
    assert_eq!(
        route_targets(&restarted),
        ["[header x-tester: 1] s/v2~v1", "[] s/v1"],
        "an edit does not move traffic"
    );
    for _ in 0..6 {
        restarted.wait(secs(10)).observe(good());
    }
    restarted.wait(Duration::ZERO);
    assert_eq!(restarted.canary_weight(), 20.0);
}
