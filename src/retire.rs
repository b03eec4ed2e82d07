//! Red-black retirement: which idle versions of red-black services still exist in Envoy.
//!
//! In steady state a red-black service has only its active version's cluster. After a switch,
//! the versions that stopped getting traffic are kept, so that a rollback is instant, until
//! every connected Envoy has ACKed the switch *and* the service's grace period has passed; then
//! they are retired (left out of the translation, so their clusters are removed). Switching back
//! to a retired version re-creates its cluster first (make-before-break), so it is safe, only
//! not pre-warmed.
//!
//! After a restart nothing is known of earlier switches: idle versions start retired, which is
//! what Envoy already holds unless the restart fell inside a grace period.
//!
//! Pure: the caller supplies the time and says when every Envoy is in sync.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::spec::{Spec, Strategy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retiring {
    /// Kept until every connected Envoy has ACKed the config that moved traffic away.
    AwaitingAck,
    /// Kept until this instant.
    Until(Instant),
}

/// The idle versions of red-black services that are kept for now, by service.
#[derive(Debug, Default, Clone)]
pub struct RedBlack {
    kept: BTreeMap<String, BTreeMap<String, Retiring>>,
}

/// Versions of a service that get requests (answer, are mirrored to, or are a rule's target).
fn receiving(spec: &Spec, service: &str) -> BTreeSet<String> {
    let Some(s) = spec.services.get(service) else {
        return BTreeSet::new();
    };
    let mut out: BTreeSet<String> = s
        .strategy
        .serving_versions()
        .into_iter()
        .map(str::to_owned)
        .collect();
    out.extend(s.mirror.iter().map(|m| m.version.clone()));
    out.extend(s.rules.iter().map(|r| r.version.clone()));
    out
}

fn grace(spec: &Spec, service: &str) -> Option<Duration> {
    match spec.services.get(service).map(|s| &s.strategy) {
        Some(Strategy::RedBlack { grace, .. }) => Some(*grace),
        _ => None,
    }
}

impl RedBlack {
    /// A new valid file: versions that just stopped getting traffic start waiting; versions that
    /// get traffic again stop waiting. `previous` is `None` on the first load.
    pub fn on_spec(&mut self, previous: Option<&Spec>, spec: &Spec) {
        let mut kept = BTreeMap::new();
        for (name, service) in &spec.services {
            if !matches!(service.strategy, Strategy::RedBlack { .. }) {
                continue;
            }
            let now_receiving = receiving(spec, name);
            let mut versions = self.kept.remove(name).unwrap_or_default();
            if let Some(previous) = previous {
                for v in receiving(previous, name) {
                    if !now_receiving.contains(&v) && service.versions.contains_key(&v) {
                        versions.insert(v, Retiring::AwaitingAck);
                    }
                }
            }
            versions.retain(|v, _| !now_receiving.contains(v) && service.versions.contains_key(v));
            if !versions.is_empty() {
                kept.insert(name.clone(), versions);
            }
        }
        self.kept = kept;
    }

    /// Every connected Envoy has ACKed the current config: start the grace periods.
    pub fn on_synced(&mut self, spec: &Spec, now: Instant) {
        for (service, versions) in &mut self.kept {
            let Some(grace) = grace(spec, service) else {
                continue;
            };
            for state in versions.values_mut() {
                if *state == Retiring::AwaitingAck {
                    *state = Retiring::Until(now + grace);
                }
            }
        }
    }

    /// Retires what is due; returns whether anything was retired.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for versions in self.kept.values_mut() {
            let before = versions.len();
            versions.retain(|_, state| !matches!(state, Retiring::Until(t) if *t <= now));
            changed |= versions.len() != before;
        }
        self.kept.retain(|_, v| !v.is_empty());
        changed
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.kept
            .values()
            .flat_map(|v| v.values())
            .filter_map(|s| match s {
                Retiring::Until(t) => Some(*t),
                Retiring::AwaitingAck => None,
            })
            .min()
    }

    pub fn awaiting_ack(&self) -> bool {
        self.kept
            .values()
            .flat_map(|v| v.values())
            .any(|s| *s == Retiring::AwaitingAck)
    }

    /// Cluster names to leave out of the translation.
    pub fn retired(&self, spec: &Spec) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (name, service) in &spec.services {
            if !matches!(service.strategy, Strategy::RedBlack { .. }) {
                continue;
            }
            let receiving = receiving(spec, name);
            let kept = self.kept.get(name);
            for v in service.versions.keys() {
                if !receiving.contains(v) && !kept.is_some_and(|k| k.contains_key(v)) {
                    out.insert(Spec::cluster_name(name, v));
                }
            }
        }
        out
    }

    /// The kept versions of a service and their state.
    pub fn kept(&self, service: &str) -> Option<&BTreeMap<String, Retiring>> {
        self.kept.get(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    fn spec(active: &str) -> Spec {
        let text = format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: / }}\n        service: s\nservices:\n  s:\n    versions:\n      red: {{ endpoints: [127.0.0.1:8081] }}\n      black: {{ endpoints: [127.0.0.1:8082] }}\n      new: {{ endpoints: [127.0.0.1:8083] }}\n    strategy:\n      red-black: {{ active: {active}, grace: 30s }}\n"
        );
        parse("t.yaml", &text).unwrap()
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn first_load_keeps_only_the_active_version() {
        let mut rb = RedBlack::default();
        let s = spec("red");
        rb.on_spec(None, &s);
        assert_eq!(names(&rb.retired(&s)), ["s/black", "s/new"]);
    }

    #[test]
    fn a_switch_keeps_the_old_version_until_acked_and_grace_passed() {
        let mut rb = RedBlack::default();
        let t0 = Instant::now();
        let red = spec("red");
        rb.on_spec(None, &red);
        let black = spec("black");
        rb.on_spec(Some(&red), &black);
        assert_eq!(
            names(&rb.retired(&black)),
            ["s/new"],
            "red is kept for rollback"
        );
        assert!(rb.awaiting_ack());
        assert!(
            !rb.on_tick(t0 + Duration::from_secs(3600)),
            "nothing retires before the ACK"
        );

        rb.on_synced(&black, t0);
        assert_eq!(rb.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert!(!rb.on_tick(t0 + Duration::from_secs(29)));
        assert!(rb.on_tick(t0 + Duration::from_secs(30)));
        assert_eq!(names(&rb.retired(&black)), ["s/new", "s/red"]);
        assert_eq!(rb.next_deadline(), None);
    }

    #[test]
    fn a_rollback_within_grace_cancels_the_retirement() {
        let mut rb = RedBlack::default();
        let t0 = Instant::now();
        let (red, black) = (spec("red"), spec("black"));
        rb.on_spec(None, &red);
        rb.on_spec(Some(&red), &black);
        rb.on_synced(&black, t0);
        rb.on_spec(Some(&black), &red);
        // Back on red: black is now the old version, waiting for its own ACK and grace.
        assert_eq!(names(&rb.retired(&red)), ["s/new"]);
        assert!(rb.kept("s").unwrap().get("red").is_none());
        assert_eq!(rb.kept("s").unwrap()["black"], Retiring::AwaitingAck);
    }

    #[test]
    fn an_unrelated_edit_does_not_restart_the_timer() {
        let mut rb = RedBlack::default();
        let t0 = Instant::now();
        let (red, black) = (spec("red"), spec("black"));
        rb.on_spec(None, &red);
        rb.on_spec(Some(&red), &black);
        rb.on_synced(&black, t0);
        rb.on_spec(Some(&black), &black);
        rb.on_synced(&black, t0 + Duration::from_secs(20));
        assert_eq!(rb.next_deadline(), Some(t0 + Duration::from_secs(30)));
    }
}
