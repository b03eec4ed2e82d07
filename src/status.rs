//! The status read model: the last reload, the services as planned, and every connected client
//! with the versions its Envoy has ACKed, has pending and has rejected (read from
//! [`crate::xds::clients`]), assembled into the report `GET /status` and `cutover status` show.
//!
//! The controller writes what it loaded and planned; nothing here is an input to anything:
//! gates (red-black retirement) read [`Clients`] directly. [`StatusReport::with_telemetry`]
//! adds what the Envoys report (per version: the observed split, rates, errors, latency,
//! endpoint health; which Envoys report nothing) at the moment a report is read, so the planned
//! part and the live figures are one document for `/status`, `cutover status` and the dashboard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::api::{
    self, BaselineReport, CheckPointReport, CheckReport, ClusterReport, Counts, DrainReason,
    DrainReport, GateReport, GroupReport, HistoryReport, MirrorReport, NackStatus, NodeReport,
    ObservedReport, ObservedVersion, PastRolloutReport, ReloadStatus, RetiringReport, RolloutKind,
    RolloutReport, ServiceReport, StateFileReport, StatusReport, StreamsReport, TelemetryState,
    ThresholdsReport, TypeReport,
};
use crate::metrics::{Metrics, ResultLabel};
use crate::node::GroupId;
use crate::reconcile::rollout::{Counted, Entry, Kind, Rollout, Status as RolloutStatus, Verdict};
use crate::reconcile::{Health, Plan, Role, RuntimeState, ServicePlan, Timestamp};
use crate::snapshot::{Published, ResourceType};
use crate::spec::{Spec, StepKind, Strategy};
use crate::telemetry::report::round;
use crate::telemetry::{Telemetry, TelemetryReport};
use crate::wait;
use crate::xds::Mode;
use crate::xds::clients::{Client, Clients, SyncState, TypeStatus};
use crate::xds::limits::StreamSlots;

#[derive(Debug, Default)]
struct Inner {
    file: PathBuf,
    /// What is served now.
    served: Option<Served>,
    state_file: Option<StateFileReport>,
    last_reload: Option<ReloadStatus>,
    slots: Option<Arc<StreamSlots>>,
    cluster: Option<ClusterReport>,
}

/// What is served now, and what it was made from: the services report is built from it when
/// asked (so its countdowns are right at that moment), not on every change.
#[derive(Debug, Clone)]
pub struct Served {
    pub spec: Arc<Spec>,
    pub plan: Arc<Plan>,
    pub state: Arc<RuntimeState>,
}

/// Shared, thread-safe status of the whole server.
#[derive(Debug)]
pub struct Status {
    inner: Mutex<Inner>,
    clients: Arc<Clients>,
    published: watch::Receiver<Option<Arc<Published>>>,
    pub metrics: Arc<Metrics>,
}

impl Status {
    pub fn new(
        file: PathBuf,
        clients: Arc<Clients>,
        published: watch::Receiver<Option<Arc<Published>>>,
        metrics: Arc<Metrics>,
    ) -> Status {
        Status {
            inner: Mutex::new(Inner {
                file,
                ..Default::default()
            }),
            clients,
            published,
            metrics,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where the open streams are counted (set once, at start).
    pub fn set_stream_slots(&self, slots: Arc<StreamSlots>) {
        self.with(|i| i.slots = Some(slots));
    }

    /// Starts the report of replica `name` (cluster mode).
    pub fn start_cluster(&self, name: &str) {
        self.with(|i| {
            i.cluster = Some(ClusterReport {
                replica: name.to_owned(),
                role: "unknown".to_owned(),
                ..ClusterReport::default()
            });
        });
    }

    /// Changes this replica's part of the report (nothing for one cutover alone).
    /// Cluster mode: the other replicas' names and admin URLs (none alone).
    pub fn other_admins(&self) -> Vec<(String, String)> {
        self.with(|i| {
            i.cluster
                .as_ref()
                .map(|c| c.other_admins.clone().into_iter().collect())
                .unwrap_or_default()
        })
    }

    pub fn set_cluster(&self, change: impl FnOnce(&mut ClusterReport)) {
        self.with(|i| {
            if let Some(c) = i.cluster.as_mut() {
                change(c);
            }
        });
    }

    /// Cluster mode: why this replica decides nothing now (no lease: etcd unreachable or
    /// without a majority), if so.
    pub fn cluster_trouble(&self) -> Option<String> {
        self.with(|i| {
            let c = i.cluster.as_ref().filter(|c| c.role == "unknown")?;
            Some(
                c.etcd_problem
                    .clone()
                    .unwrap_or_else(|| "no etcd lease yet".to_owned()),
            )
        })
    }

    /// The replica that leads and where its admin API is (cluster mode).
    pub fn leader_admin(&self) -> Option<(Option<String>, String)> {
        self.with(|i| {
            let c = i.cluster.as_ref()?;
            Some((c.leader_admin.clone(), c.role.clone()))
        })
    }

    /// Records what is served now.
    pub fn set_served(&self, served: Served) {
        self.with(|i| i.served = Some(served));
    }

    /// What is served now, once a valid file was loaded.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.with(|i| i.served.as_ref().map(|s| s.plan.clone()))
    }

    /// Every connected Envoy that holds `service` (streams of one node id together) and when it
    /// answered its group's current config, for `cutover wait`. Envoys of groups whose config
    /// does not include the service are left out; one whose group is not known yet (it has
    /// sent nothing) is kept, since it may hold it.
    /// `now` is one reading of both clocks, to put the answers' instants on the wall clock.
    pub fn wait_envoys(
        &self,
        service: &str,
        now: (std::time::Instant, std::time::SystemTime),
    ) -> Vec<wait::Envoy> {
        let published = self.published.borrow().clone();
        let holders: BTreeSet<GroupId> = self
            .plan()
            .map(|p| p.holders(service).cloned().collect())
            .unwrap_or_default();
        let mut by_node: BTreeMap<String, wait::Envoy> = BTreeMap::new();
        for c in self.clients.list() {
            if c.group.as_ref().is_some_and(|g| !holders.contains(g)) {
                continue;
            }
            let current = match (&published, &c.group) {
                (Some(p), Some(g)) => p.group(g).map(|s| s.snapshot.version.clone()),
                _ => None,
            };
            let answered = (c.config_version.is_some() && c.config_version == current)
                .then_some(c.answered_at)
                .flatten()
                .map(|at| wait::Seen::local(at, now));
            let e = by_node
                .entry(c.node.id.clone())
                .or_insert_with(|| wait::Envoy {
                    node: c.node.id.clone(),
                    answered_at: answered,
                    rejected: false,
                });
            e.answered_at = e
                .answered_at
                .zip(answered)
                .map(|(a, b)| if b.at_us > a.at_us { b } else { a });
            e.rejected |= c.sync == SyncState::Rejected;
        }
        by_node.into_values().collect()
    }

    pub fn set_state_file(&self, report: StateFileReport) {
        self.with(|i| i.state_file = Some(report));
    }

    pub fn reloaded(&self) {
        self.metrics
            .reloads
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        self.with(|i| {
            i.last_reload = Some(ReloadStatus {
                ok: true,
                error: None,
                at: now(),
            });
        });
    }

    pub fn reload_failed(&self, error: String) {
        self.metrics
            .reloads
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
        self.with(|i| {
            i.last_reload = Some(ReloadStatus {
                ok: false,
                error: Some(error),
                at: now(),
            });
        });
    }

    /// Whether a valid file has been loaded and its config published.
    pub fn ready(&self) -> bool {
        self.published.borrow().is_some()
    }

    /// [`Status::report`] with what the Envoys report at `now`
    /// ([`StatusReport::with_telemetry`]), and the telemetry report it was made from (which
    /// lists the connected Envoys that send nothing).
    pub fn live(&self, telemetry: &Telemetry, now: Instant) -> (StatusReport, TelemetryReport) {
        let report = self.report();
        let t = telemetry
            .report(now)
            .with_connected(report.nodes.iter().map(|n| n.id.as_str()));
        (report.with_telemetry(&t), t)
    }

    pub fn report(&self) -> StatusReport {
        let published = self.published.borrow().clone();
        // The groups every client of which holds its group's current config.
        let synced: BTreeSet<GroupId> = published.as_ref().map_or_else(BTreeSet::new, |p| {
            p.groups()
                .filter(|(g, s)| self.clients.synced(g, &s.snapshot.version))
                .map(|(g, _)| g.clone())
                .collect()
        });
        let clients = self.clients.list();
        let nodes = clients.iter().map(node_report).collect();
        let mut nodes_without_group: Vec<String> = clients
            .iter()
            .filter(|c| c.group.as_ref().is_some_and(GroupId::is_unmatched))
            .map(|c| c.node.id.clone())
            .collect();
        nodes_without_group.sort();
        nodes_without_group.dedup();
        let groups = published
            .as_ref()
            .map(|p| group_reports(p, &clients))
            .unwrap_or_default();
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        StatusReport {
            file: i.file.display().to_string(),
            state_file: i.state_file.clone(),
            config_version: published.map(|p| p.version.clone()),
            last_reload: i.last_reload.clone(),
            services: i.served.as_ref().map_or_else(BTreeMap::new, |s| {
                service_reports(&s.spec, &s.plan, &s.state, &synced, Timestamp::now())
            }),
            nodes,
            nodes_without_telemetry: Vec::new(),
            nodes_without_group,
            groups,
            streams: i.slots.as_ref().map(|s| StreamsReport {
                open: s.open(),
                limit: s.max(),
            }),
            cluster: i.cluster.clone(),
        }
    }
}

fn node_report(c: &Client) -> NodeReport {
    let mut types = BTreeMap::new();
    for ty in ResourceType::ALL {
        let TypeStatus {
            acked,
            pending,
            last_nack,
        } = c.view.status(ty);
        if acked.is_none() && pending.is_none() && last_nack.is_none() {
            continue;
        }
        let seen = c.nack_seen[ty].unwrap_or_else(SystemTime::now);
        types.insert(
            ty.short().to_owned(),
            TypeReport {
                acked,
                pending,
                last_nack: last_nack.map(|n| NackStatus {
                    version: n.version,
                    error: n.error,
                    at: format_time(seen),
                }),
            },
        );
    }
    NodeReport {
        id: c.node.id.clone(),
        cluster: c.node.cluster.clone(),
        group: c.group.as_ref().map(|g| g.to_string()),
        address: c.peer.map(|p| p.to_string()),
        stream: match c.mode {
            Mode::Aggregated => "ads".to_owned(),
            Mode::Single(ty) => ty.short().to_owned(),
        },
        connected_since: format_time(c.connected_since),
        telemetry: TelemetryState::Absent,
        config_version: c.config_version.clone(),
        in_sync: c.in_sync(),
        types,
    }
}

/// Each of the file's groups with its version and Envoys; nothing for a file without groups
/// (its one group's version is `config_version`).
fn group_reports(published: &Published, clients: &[Client]) -> BTreeMap<String, GroupReport> {
    published
        .groups()
        .filter(|(g, _)| **g != GroupId::all())
        .map(|(g, s)| {
            let members = clients.iter().filter(|c| c.group.as_ref() == Some(g));
            let (envoys, in_sync) = members.fold((0, 0), |(n, synced), c| {
                let holds = c.in_sync() && c.config_version.as_deref() == Some(&s.snapshot.version);
                (n + 1, synced + usize::from(holds))
            });
            let report = GroupReport {
                config_version: s.snapshot.version.clone(),
                envoys,
                in_sync,
            };
            (g.to_string(), report)
        })
        .collect()
}

fn now() -> String {
    format_time(SystemTime::now())
}

fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What the file asks of each service and what the plan serves for it, for `/status`.
fn service_reports(
    spec: &Spec,
    plan: &Plan,
    state: &RuntimeState,
    synced: &BTreeSet<GroupId>,
    now: Timestamp,
) -> BTreeMap<String, ServiceReport> {
    plan.services
        .iter()
        .filter_map(|(name, planned)| Some((name, planned, spec.services.get(name)?)))
        .map(|(name, planned, service)| {
            let retiring = planned
                .versions
                .iter()
                .filter_map(|(version, v)| match v.role {
                    Role::Retiring { deadline } => Some(RetiringReport {
                        version: version.clone(),
                        awaiting_ack: deadline.is_none(),
                        retires_in_seconds: deadline.map(|t| t.since(now).as_secs_f64()),
                    }),
                    _ => None,
                })
                .collect();
            let report = ServiceReport {
                strategy: strategy(&service.strategy),
                counts: match Counted::of(spec, name) {
                    Counted::Requests => Counts::Requests,
                    Counted::Calls => Counts::Calls,
                    Counted::Connections => Counts::Connections,
                },
                split: planned
                    .split
                    .iter()
                    .map(|(v, ppm)| (v.clone(), f64::from(*ppm) / 10_000.0))
                    .collect(),
                mirror: service.mirror.as_ref().map(|m| MirrorReport {
                    version: m.version.clone(),
                    percent: m.percent.as_f64(),
                }),
                rules: service.rules.len(),
                deployed: planned
                    .versions
                    .iter()
                    .filter(|(_, v)| !matches!(v.role, Role::Removed { .. }))
                    .map(|(version, _)| version.clone())
                    .collect(),
                retiring,
                synced: plan.holders(name).all(|g| synced.contains(g)),
                rollout: state
                    .rollouts
                    .get(name)
                    .map(|r| rollout_report(r, &service.strategy, now)),
                past_rollouts: state
                    .past_rollouts
                    .get(name)
                    .into_iter()
                    .flatten()
                    .rev()
                    .map(past_rollout_report)
                    .collect(),
                draining: drains(planned, now),
                // The live figures are added when the report is read.
                observed: None,
            };
            (name.clone(), report)
        })
        .collect()
}

/// A strategy's name on the wire.
fn strategy(s: &Strategy) -> api::Strategy {
    match s {
        Strategy::BlueGreen { .. } => api::Strategy::BlueGreen,
        Strategy::RedBlack { .. } => api::Strategy::RedBlack,
        Strategy::Canary { .. } => api::Strategy::Canary,
        Strategy::Shadow { .. } => api::Strategy::Shadow,
    }
}

fn rollout_report(r: &Rollout, strategy: &Strategy, now: Timestamp) -> RolloutReport {
    let (kind, version, baseline) = match &r.kind {
        Kind::Canary { stable, canary } => (RolloutKind::Canary, canary.clone(), stable.clone()),
        Kind::Switch { from, to } => (RolloutKind::Switch, to.clone(), from.clone()),
    };
    let reason = match &r.status {
        RolloutStatus::Failed(reason) => Some(reason.clone()),
        RolloutStatus::Progressing | RolloutStatus::Paused | RolloutStatus::Promoted => None,
    };
    let cfg = match strategy {
        Strategy::Canary {
            rollout: Some(cfg), ..
        } if matches!(r.kind, Kind::Canary { .. }) => Some(cfg),
        _ => None,
    };
    let stage = r.stage.as_ref();
    let in_seconds = |t: Timestamp| t.since(now).as_secs_f64();
    let analysis = strategy.analysis();
    let advice = match (&r.kind, &r.status) {
        (Kind::Canary { stable, canary }, RolloutStatus::Promoted) => Some(format!(
            "promoted: make {canary} the service's version in the file (e.g. `active: {canary}`); until then {canary} keeps all requests and {stable} none, and that edit moves no traffic"
        )),
        (Kind::Canary { canary, .. }, RolloutStatus::Failed(_)) => Some(format!(
            "rolled back: {canary} gets no requests; save a new canary version to start again, or `cutover resume` to retry {canary} from the first step"
        )),
        (Kind::Switch { from, to }, RolloutStatus::Failed(_)) if r.previewing => Some(format!(
            "{to} failed its check before the switch: {from} stays active; fix {to} and `cutover resume` to check it again, or make `active: {from}` in the file"
        )),
        (Kind::Switch { from, to }, RolloutStatus::Failed(_)) => Some(format!(
            "switched back to {from}: make `active: {from}` in the file to accept it, or `cutover resume` to switch to {to} again"
        )),
        _ => None,
    };
    RolloutReport {
        kind,
        version,
        baseline,
        state: r.status.state(),
        reason,
        weight: matches!(r.kind, Kind::Canary { .. }).then(|| f64::from(r.weight) / 10_000.0),
        step: cfg.and_then(|c| c.position(&r.step())).map(|i| i + 1),
        steps: cfg.map(|c| c.steps.len()),
        mirror: match stage {
            Some(StepKind::Mirror(p)) => Some(p.as_f64()),
            _ => None,
        },
        matching: match stage {
            Some(m @ StepKind::Match(_)) => Some(m.to_string()),
            _ => None,
        },
        before_switch: r.previewing,
        awaiting_ack: r.is_active() && r.since.is_none(),
        step_ends_in_seconds: r.step_deadline(strategy).map(in_seconds),
        next_check_in_seconds: r.next_check.map(in_seconds),
        progress_deadline_in_seconds: r.progress_deadline(strategy).map(in_seconds),
        checks: check_points(r),
        gate: r.gate.map(|g| GateReport {
            kind: g.as_str().to_owned(),
            next: crate::reconcile::rollout::gate_next(r, strategy),
            refused: r.gate_refused.clone(),
            next_ask_in_seconds: r.next_ask.map(in_seconds),
        }),
        failed_checks: r.failed,
        last_check: r.last_check.as_ref().map(check_report),
        thresholds: analysis.map(thresholds_report),
        advice,
        history: history_reports(&r.history),
    }
}

/// A rollout's last checks, for its chart.
fn check_points(r: &Rollout) -> Vec<CheckPointReport> {
    r.checks
        .iter()
        .map(|c| CheckPointReport {
            at: c.at.to_string(),
            weight: matches!(r.kind, Kind::Canary { .. }).then(|| f64::from(c.weight) / 10_000.0),
            requests: c.requests,
            #[allow(clippy::cast_precision_loss, reason = "request counts of one window")]
            error_rate: (c.requests > 0)
                .then(|| (c.errors as f64 / c.requests as f64 * 100_000.0).round() / 1000.0),
            p99_ms: c.p99_ms,
            verdict: match c.verdict {
                'p' => api::Verdict::Pass,
                'f' => api::Verdict::Fail,
                _ => api::Verdict::Wait,
            },
        })
        .collect()
}

/// A rollout's history as the admin API says it.
fn history_reports(entries: &[Entry]) -> Vec<HistoryReport> {
    entries
        .iter()
        .map(|e| HistoryReport {
            at: e.at.to_string(),
            what: e.what.clone(),
        })
        .collect()
}

/// An ended rollout as the admin API says it.
fn past_rollout_report(r: &Rollout) -> PastRolloutReport {
    let (kind, version, baseline) = match &r.kind {
        Kind::Canary { stable, canary } => (RolloutKind::Canary, canary, stable),
        Kind::Switch { from, to } => (RolloutKind::Switch, to, from),
    };
    PastRolloutReport {
        kind,
        version: version.clone(),
        baseline: baseline.clone(),
        state: r.status.state(),
        reason: match &r.status {
            RolloutStatus::Failed(why) => Some(why.clone()),
            _ => None,
        },
        started: r.started.to_string(),
        history: history_reports(&r.history),
    }
}

/// A rollout check as the admin API says it.
fn check_report(c: &crate::reconcile::rollout::Check) -> CheckReport {
    let (verdict, reason) = match &c.verdict {
        Verdict::Pass => (api::Verdict::Pass, None),
        Verdict::Wait(why) => (api::Verdict::Wait, Some(why.clone())),
        Verdict::Fail(why) => (api::Verdict::Fail, Some(why.clone())),
    };
    CheckReport {
        at: c.at.to_string(),
        verdict,
        reason,
        requests: c.figures.requests,
        errors: c.figures.errors,
        error_rate: (c.figures.error_rate() * 100_000.0).round() / 1000.0,
        p99_ms: c.figures.p99_ms,
        window_from: c.figures.from.map(|t| t.to_string()),
        window_seconds: c.figures.from.map(|from| c.at.since(from).as_secs_f64()),
        baseline: c.baseline.as_ref().map(|b| BaselineReport {
            version: b.version.clone(),
            requests: b.figures.requests,
            errors: b.figures.errors,
            error_rate: (b.figures.error_rate() * 100_000.0).round() / 1000.0,
            p99_ms: b.figures.p99_ms,
            error_rate_p_value: b.error_rate.map(|t| t.p),
            latency_p_value: b.latency.map(|t| t.p),
        }),
    }
}

/// An analysis's limits as the admin API says them.
fn thresholds_report(a: &crate::spec::Analysis) -> ThresholdsReport {
    ThresholdsReport {
        max_error_rate: a.max_error_rate.map(|p| p.as_f64()),
        max_p99_ms: a.max_p99_latency.map(|d| d.as_secs_f64() * 1000.0),
        min_requests: a.min_requests,
        failure_limit: a.failure_limit,
        fails_early_at_errors: a
            .max_error_rate
            .map(|_| crate::reconcile::rollout::fails_early_at(a)),
        max_error_rate_increase: a
            .baseline
            .and_then(|b| b.max_error_rate_increase)
            .map(|p| p.as_f64()),
        max_p99_ratio: a
            .baseline
            .and_then(|b| b.max_p99_ratio_milli)
            .map(|r| f64::from(r) / 1000.0),
        confidence: a.baseline.map(|b| b.confidence.as_f64()),
    }
}

/// What drains in a planned service: endpoints marked `drain: true` or removed from the file,
/// and versions removed from the file (their endpoints are not listed one by one).
pub fn drains(planned: &ServicePlan, now: Timestamp) -> Vec<DrainReport> {
    let seconds = |until: Timestamp| Some(round(until.since(now).as_secs_f64(), 3));
    let mut out = Vec::new();
    for (version, v) in &planned.versions {
        if let Role::Removed { until } = v.role {
            out.push(DrainReport {
                version: version.clone(),
                endpoint: None,
                reason: DrainReason::Removed,
                removed_in_seconds: seconds(until),
                in_flight: None,
            });
            continue;
        }
        for e in &v.endpoints {
            let (reason, removed_in_seconds) = match e.health {
                Health::Active => continue,
                Health::Draining => (DrainReason::Marked, None),
                Health::Removed { until } => (DrainReason::Removed, seconds(until)),
            };
            out.push(DrainReport {
                version: version.clone(),
                endpoint: Some(e.address.to_string()),
                reason,
                removed_in_seconds,
                in_flight: None,
            });
        }
    }
    out
}

impl StatusReport {
    /// Adds what the Envoys report: per service the observed figures of every version it
    /// deploys or that Envoys report on, requests in flight to what drains, and per node
    /// whether it reports at all. Pure.
    pub fn with_telemetry(mut self, t: &TelemetryReport) -> StatusReport {
        let node_state = |id: &str| {
            let Some(n) = t.nodes.iter().find(|n| n.id == id) else {
                return TelemetryState::Absent;
            };
            let fresh = [&n.stats_sink, &n.load_reporting]
                .into_iter()
                .flatten()
                .any(|s| !s.stale);
            if fresh {
                TelemetryState::Reporting
            } else {
                TelemetryState::Stale
            }
        };
        for n in &mut self.nodes {
            n.telemetry = node_state(&n.id);
        }
        let mut without: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.telemetry == TelemetryState::Absent)
            .map(|n| n.id.clone())
            .collect();
        without.sort();
        without.dedup();
        self.nodes_without_telemetry = without;

        let fresh =
            |pick: fn(&crate::telemetry::report::NodeTelemetry) -> bool| t.nodes.iter().any(pick);
        let stats_sink = fresh(|n| n.stats_sink.as_ref().is_some_and(|s| !s.stale));
        let load_reports = fresh(|n| n.load_reporting.as_ref().is_some_and(|s| !s.stale));
        for (name, service) in &mut self.services {
            let reported = t.services.get(name);
            if stats_sink {
                service.observed = Some(observe(service, reported));
            }
            for d in &mut service.draining {
                let v = reported.and_then(|r| r.get(&d.version));
                d.in_flight = match &d.endpoint {
                    Some(address) if load_reports => Some(
                        v.and_then(|v| v.endpoints.get(address))
                            .map_or(0, |e| e.in_flight),
                    ),
                    None if stats_sink => v.map(|v| v.in_flight),
                    _ => None,
                };
            }
        }
        self
    }
}

/// A version's figures in what its service counts (see [`Counts`]).
struct Figures {
    last_10s: u64,
    last_1m: u64,
    per_second: f64,
    /// 0 to 1, over the last 10 s.
    error_rate: Option<f64>,
}

fn counted(counts: Counts, v: &crate::telemetry::report::VersionTelemetry) -> Figures {
    let rate = |errors: f64, of: u64| (of > 0).then(|| errors / of as f64);
    match counts {
        Counts::Connections => Figures {
            last_10s: v.last_10s.attempts,
            last_1m: v.last_1m.attempts,
            per_second: v.last_10s.attempts_per_second,
            error_rate: rate(
                v.last_10s.errors.connect_failures as f64,
                v.last_10s.attempts,
            ),
        },
        // From the load reports, where Envoy counts a call failed on its grpc-status.
        Counts::Calls => {
            let sum = |w: fn(&crate::telemetry::report::EndpointTelemetry) -> u64| -> u64 {
                v.endpoints.values().map(w).sum()
            };
            let failed: f64 = v
                .endpoints
                .values()
                .map(|e| e.last_10s.error_rate.unwrap_or(0.0) * e.last_10s.requests as f64)
                .sum();
            let last_10s = sum(|e| e.last_10s.requests);
            Figures {
                last_10s,
                last_1m: sum(|e| e.last_1m.requests),
                per_second: round(
                    v.endpoints
                        .values()
                        .map(|e| e.last_10s.requests_per_second)
                        .sum(),
                    2,
                ),
                error_rate: rate(failed, last_10s),
            }
        }
        Counts::Requests | Counts::Unknown => Figures {
            last_10s: v.last_10s.requests,
            last_1m: v.last_1m.requests,
            per_second: v.last_10s.requests_per_second,
            error_rate: v.last_10s.error_rate,
        },
    }
}

/// One service's live figures: the versions it deploys or splits to, and any other version
/// Envoys still report (a removed version draining).
fn observe(
    service: &ServiceReport,
    reported: Option<&BTreeMap<String, crate::telemetry::report::VersionTelemetry>>,
) -> ObservedReport {
    let empty = BTreeMap::new();
    let reported = reported.unwrap_or(&empty);
    let names: std::collections::BTreeSet<&String> = service
        .deployed
        .iter()
        .chain(service.split.keys())
        .chain(reported.keys())
        .collect();
    // A mirror's requests are copies: Envoy counts them on the mirror's cluster, but nobody
    // got their answer, so they are no part of the split.
    let mirror = service.mirror.as_ref().map(|m| &m.version);
    let answering = |name: &String| Some(name) != mirror;
    let counted: BTreeMap<&String, Figures> = reported
        .iter()
        .map(|(name, v)| (name, counted(service.counts, v)))
        .collect();
    let total = |pick: fn(&Figures) -> u64| -> u64 {
        counted
            .iter()
            .filter(|(name, _)| answering(name))
            .map(|(_, c)| pick(c))
            .sum()
    };
    let (total_10s, total_1m) = (total(|c| c.last_10s), total(|c| c.last_1m));
    let share = |name: &String, n: u64, total: u64| {
        (answering(name) && total > 0).then(|| round(n as f64 * 100.0 / total as f64, 2))
    };
    let versions = names
        .into_iter()
        .map(|name| {
            let figures = match reported.get(name) {
                None => ObservedVersion {
                    share_10s: share(name, 0, total_10s),
                    share_1m: share(name, 0, total_1m),
                    ..Default::default()
                },
                Some(v) => ObservedVersion {
                    share_10s: share(name, counted[name].last_10s, total_10s),
                    share_1m: share(name, counted[name].last_1m, total_1m),
                    requests_per_second: counted[name].per_second,
                    error_rate: counted[name].error_rate.map(|r| round(r * 100.0, 3)),
                    p99_ms: v.last_10s.latency_ms.map(|q| q.p99),
                    in_flight: v.in_flight,
                    healthy: v.membership.map(|m| m.healthy),
                    endpoints: v.membership.map(|m| m.total),
                    ejected: v.ejections_active,
                    envoys: v.envoys,
                },
            };
            (name.clone(), figures)
        })
        .collect::<BTreeMap<_, _>>();
    ObservedReport {
        requests_per_second: round(
            versions
                .iter()
                .filter(|(name, _)| answering(name))
                .map(|(_, v)| v.requests_per_second)
                .sum(),
            2,
        ),
        versions,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::reconcile::{Event, Previous, RuntimeState};
    use crate::telemetry::report::{
        EndpointTelemetry, Membership, NodeTelemetry, Quantiles, StreamStatus, VersionTelemetry,
        WindowFigures,
    };

    const FILE: &str = "\
listeners:
  - { name: public, address: 127.0.0.1:10000, routes: [{ match: { prefix: / }, service: checkout }] }
services:
  checkout:
    versions:
      v1: { endpoints: [127.0.0.1:8081, { address: 127.0.0.1:8082, drain: true }, 127.0.0.1:8083] }
      v2: { endpoints: [127.0.0.1:8084] }
      old: { endpoints: [127.0.0.1:8085] }
    strategy: { canary: { stable: v1, canary: v2, weight: 10 } }
";

    #[test]
    fn drains_lists_marked_and_removed_endpoints_and_removed_versions() {
        let t0 = Timestamp::from_millis(1_800_000_000_000);
        let first = crate::spec::parse("t.yaml", FILE).unwrap();
        let second_text = FILE
            .replace(", 127.0.0.1:8083]", "]")
            .replace("      old: { endpoints: [127.0.0.1:8085] }\n", "");
        let second = crate::spec::parse("t.yaml", &second_text).unwrap();
        let mut state = RuntimeState::default();
        let load = |state: &mut RuntimeState, spec, previous| {
            state.reduce(
                spec,
                Event::FileLoaded {
                    previous,
                    drain_period: Duration::from_secs(5),
                },
                t0,
            );
        };
        load(&mut state, &first, Previous::Start);
        load(&mut state, &second, Previous::File(&first));
        let now = Timestamp::from_millis(1_800_000_002_000);
        let plan = crate::reconcile::plan(&second, &state, now);
        let drains = drains(&plan.services["checkout"], now);
        let seen: Vec<(&str, Option<&str>, DrainReason, Option<f64>)> = drains
            .iter()
            .map(|d| {
                (
                    d.version.as_str(),
                    d.endpoint.as_deref(),
                    d.reason,
                    d.removed_in_seconds,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("old", None, DrainReason::Removed, Some(3.0)),
                ("v1", Some("127.0.0.1:8082"), DrainReason::Marked, None),
                (
                    "v1",
                    Some("127.0.0.1:8083"),
                    DrainReason::Removed,
                    Some(3.0)
                ),
            ]
        );
    }

    fn window(requests: u64, error_rate: f64, p99: f64) -> WindowFigures {
        WindowFigures {
            requests,
            requests_per_second: requests as f64 / 10.0,
            success_rate: Some(1.0 - error_rate),
            error_rate: Some(error_rate),
            latency_ms: Some(Quantiles {
                p50: p99 / 2.0,
                p90: p99,
                p99,
            }),
            ..Default::default()
        }
    }

    fn stream(stale: bool) -> Option<StreamStatus> {
        Some(StreamStatus {
            streams: 1,
            connected_seconds: 60.0,
            last_message_seconds_ago: if stale { 30.0 } else { 0.5 },
            stale,
            messages: 60,
            bytes_per_second: 1000.0,
            metric_families_per_flush: None,
        })
    }

    fn node(id: &str) -> NodeReport {
        NodeReport {
            id: id.into(),
            cluster: "edge".into(),
            group: Some("all".into()),
            address: None,
            stream: "ads".into(),
            telemetry: TelemetryState::Absent,
            connected_since: "2026-01-02T03:00:00.000Z".into(),
            config_version: None,
            in_sync: true,
            types: BTreeMap::new(),
        }
    }

    fn telemetry() -> TelemetryReport {
        let v1 = VersionTelemetry {
            envoys: 1,
            last_10s: window(900, 0.01, 40.0),
            last_1m: window(5000, 0.02, 45.0),
            in_flight: 4,
            membership: Some(Membership {
                healthy: 2,
                total: 3,
            }),
            ejections_active: 1,
            endpoints: BTreeMap::from([(
                "127.0.0.1:8083".to_owned(),
                EndpointTelemetry {
                    in_flight: 2,
                    ..Default::default()
                },
            )]),
        };
        let v2 = VersionTelemetry {
            envoys: 1,
            last_10s: window(100, 0.0, 60.0),
            last_1m: window(0, 0.0, 0.0),
            ..Default::default()
        };
        let shadow = VersionTelemetry {
            envoys: 1,
            last_10s: window(1000, 0.5, 10.0),
            last_1m: window(5000, 0.5, 10.0),
            ..Default::default()
        };
        TelemetryReport {
            services: BTreeMap::from([(
                "checkout".to_owned(),
                BTreeMap::from([
                    ("v1".to_owned(), v1),
                    ("v2".to_owned(), v2),
                    ("copy".to_owned(), shadow),
                ]),
            )]),
            nodes: vec![
                NodeTelemetry {
                    id: "edge-1".into(),
                    cluster: "edge".into(),
                    stats_sink: stream(false),
                    load_reporting: stream(false),
                },
                NodeTelemetry {
                    id: "edge-3".into(),
                    cluster: "edge".into(),
                    stats_sink: stream(true),
                    load_reporting: None,
                },
            ],
            ..Default::default()
        }
    }

    fn report() -> StatusReport {
        let checkout = ServiceReport {
            counts: Counts::Requests,
            strategy: api::Strategy::Canary,
            split: BTreeMap::from([("v1".into(), 90.0), ("v2".into(), 10.0)]),
            mirror: Some(MirrorReport {
                version: "copy".into(),
                percent: 100.0,
            }),
            deployed: vec!["copy".into(), "idle".into(), "v1".into(), "v2".into()],
            draining: vec![
                DrainReport {
                    version: "v1".into(),
                    endpoint: Some("127.0.0.1:8083".into()),
                    reason: DrainReason::Removed,
                    removed_in_seconds: Some(3.0),
                    in_flight: None,
                },
                DrainReport {
                    version: "v1".into(),
                    endpoint: Some("127.0.0.1:8082".into()),
                    reason: DrainReason::Marked,
                    removed_in_seconds: None,
                    in_flight: None,
                },
                DrainReport {
                    version: "gone".into(),
                    endpoint: None,
                    reason: DrainReason::Removed,
                    removed_in_seconds: Some(1.0),
                    in_flight: None,
                },
            ],
            ..Default::default()
        };
        StatusReport {
            file: "deploy.yaml".into(),
            state_file: None,
            config_version: None,
            last_reload: None,
            services: BTreeMap::from([("checkout".to_owned(), checkout)]),
            nodes: vec![node("edge-1"), node("edge-2"), node("edge-3")],
            nodes_without_telemetry: Vec::new(),
            nodes_without_group: Vec::new(),
            groups: Default::default(),
            streams: None,
            cluster: None,
        }
    }

    #[test]
    fn observed_split_is_the_share_of_answered_requests_per_version() {
        let r = report().with_telemetry(&telemetry());
        let o = r.services["checkout"].observed.as_ref().unwrap();
        let v1 = &o.versions["v1"];
        assert_eq!(v1.share_10s, Some(90.0));
        assert_eq!(v1.share_1m, Some(100.0));
        assert_eq!(v1.requests_per_second, 90.0);
        assert_eq!(v1.error_rate, Some(1.0), "percent");
        assert_eq!(v1.p99_ms, Some(40.0));
        assert_eq!(
            (v1.healthy, v1.endpoints, v1.ejected),
            (Some(2), Some(3), 1)
        );
        assert_eq!(v1.in_flight, 4);
        let v2 = &o.versions["v2"];
        assert_eq!((v2.share_10s, v2.share_1m), (Some(10.0), Some(0.0)));
        // The mirror's copies are counted, but are no part of the split or the service's rate.
        let copy = &o.versions["copy"];
        assert_eq!((copy.share_10s, copy.requests_per_second), (None, 100.0));
        assert_eq!(o.requests_per_second, 100.0);
        // A deployed version nobody reports on is there, with no requests.
        let idle = &o.versions["idle"];
        assert_eq!(idle.share_10s, Some(0.0));
        assert_eq!((idle.requests_per_second, idle.envoys), (0.0, 0));
    }

    /// A TCP service counts connections (connect failures as errors), a gRPC service the
    /// calls the load reports count (failed on their grpc-status), not HTTP responses.
    #[test]
    fn observed_figures_count_what_the_service_counts() {
        let v = VersionTelemetry {
            last_10s: WindowFigures {
                requests: 50,
                requests_per_second: 5.0,
                error_rate: Some(0.0),
                attempts: 40,
                attempts_per_second: 4.0,
                errors: crate::telemetry::report::ErrorCounts {
                    connect_failures: 10,
                    ..Default::default()
                },
                ..Default::default()
            },
            endpoints: BTreeMap::from([(
                "127.0.0.1:9091".to_owned(),
                EndpointTelemetry {
                    last_10s: crate::telemetry::report::EndpointWindow {
                        requests: 20,
                        requests_per_second: 2.0,
                        error_rate: Some(0.25),
                    },
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let tcp = counted(Counts::Connections, &v);
        assert_eq!(
            (tcp.last_10s, tcp.per_second, tcp.error_rate),
            (40, 4.0, Some(0.25))
        );
        let grpc = counted(Counts::Calls, &v);
        assert_eq!(
            (grpc.last_10s, grpc.per_second, grpc.error_rate),
            (20, 2.0, Some(0.25))
        );
        let http = counted(Counts::Requests, &v);
        assert_eq!(
            (http.last_10s, http.per_second, http.error_rate),
            (50, 5.0, Some(0.0))
        );
    }

    #[test]
    fn envoys_without_telemetry_are_named_and_drains_get_their_requests_in_flight() {
        let r = report().with_telemetry(&telemetry());
        let states: Vec<(&str, TelemetryState)> = r
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.telemetry))
            .collect();
        assert_eq!(
            states,
            vec![
                ("edge-1", TelemetryState::Reporting),
                ("edge-2", TelemetryState::Absent),
                ("edge-3", TelemetryState::Stale)
            ]
        );
        assert_eq!(r.nodes_without_telemetry, vec!["edge-2".to_owned()]);
        let in_flight: Vec<Option<u64>> = r.services["checkout"]
            .draining
            .iter()
            .map(|d| d.in_flight)
            .collect();
        // Load reports name the endpoint with requests in progress; one they do not name has
        // none; a version nobody reports on is unknown.
        assert_eq!(in_flight, vec![Some(2), Some(0), None]);
    }

    #[test]
    fn without_any_telemetry_nothing_is_observed_and_nothing_reads_as_zero() {
        let r = report().with_telemetry(&TelemetryReport::default());
        let checkout = &r.services["checkout"];
        assert!(checkout.observed.is_none());
        assert!(checkout.draining.iter().all(|d| d.in_flight.is_none()));
        assert_eq!(r.nodes_without_telemetry.len(), 3);
        let json = serde_json::to_value(&r).unwrap();
        assert!(
            json["services"]["checkout"].get("observed").is_none(),
            "{json}"
        );
    }

    const EVERY_STATE: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - { match: { prefix: /cart }, service: cart }
      - { match: { prefix: /pay }, service: payments }
      - { match: { prefix: /search }, service: search }
      - { match: { prefix: /feed }, service: feed }
      - { match: { prefix: / }, service: checkout }
services:
  checkout:
    versions:
      v1: { endpoints: [127.0.0.1:8081, { address: 127.0.0.1:8082, drain: true }, 127.0.0.1:8083] }
      v2: { endpoints: [127.0.0.1:8084] }
      old: { endpoints: [127.0.0.1:8085] }
    strategy:
      canary:
        stable: v1
        canary: v2
        steps: [10, 50, 100]
        interval: 1m
        analysis: { interval: 10s, max_error_rate: 1%, max_p99_latency: 500ms, min_requests: 100, failure_limit: 2 }
  cart:
    versions:
      v1: { endpoints: [127.0.0.1:8091] }
      v2: { endpoints: [127.0.0.1:8092] }
    strategy:
      canary: { stable: v1, canary: v2, steps: [20, 100], interval: 1m, analysis: { interval: 10s, min_requests: 10 } }
  payments:
    versions:
      blue: { endpoints: [127.0.0.1:8101] }
      green: { endpoints: [127.0.0.1:8102] }
    strategy:
      blue-green: { active: ACTIVE_PAYMENTS, preview: {}, analysis: { before_switch: 2m, window: 5m, interval: 10s, max_error_rate: 1%, failure_limit: 1 } }
  search:
    versions:
      red: { endpoints: [127.0.0.1:8111] }
      black: { endpoints: [127.0.0.1:8112] }
    strategy:
      red-black: { active: ACTIVE_SEARCH, grace: 10m, analysis: { window: 1m, interval: 10s, max_error_rate: 1% } }
  feed:
    versions:
      v1: { endpoints: [127.0.0.1:8121] }
      v2: { endpoints: [127.0.0.1:8122] }
    strategy:
      shadow: { primary: v1, mirror: v2, percent: 25 }
";

    /// Every state `/status` can say, in one report built the way the server builds it: the
    /// JSON is pinned, so that a change of how it is made cannot change what clients read.
    #[test]
    #[allow(
        clippy::too_many_lines,
        reason = "one report holding every state /status can say"
    )]
    fn the_status_json_clients_read_is_pinned() {
        use crate::reconcile::compare::Test;
        use crate::reconcile::rollout::{Check, Comparison, Entry, Figures};
        let at = |s: u64| Timestamp::from_millis(1_800_000_000_000 + s * 1000);
        let file = |payments: &str, search: &str| {
            crate::spec::parse(
                "t.yaml",
                &EVERY_STATE
                    .replace("ACTIVE_PAYMENTS", payments)
                    .replace("ACTIVE_SEARCH", search),
            )
            .unwrap()
        };
        let first = file("blue", "red");
        let second_text = EVERY_STATE
            .replace(", 127.0.0.1:8083]", "]")
            .replace("      old: { endpoints: [127.0.0.1:8085] }\n", "")
            .replace("ACTIVE_PAYMENTS", "green")
            .replace("ACTIVE_SEARCH", "black");
        let second = crate::spec::parse("t.yaml", &second_text).unwrap();
        let mut state = RuntimeState::default();
        for (spec, previous) in [(&first, Previous::Start), (&second, Previous::File(&first))] {
            state.reduce(
                spec,
                Event::FileLoaded {
                    previous,
                    drain_period: Duration::from_secs(60),
                },
                at(0),
            );
        }
        let check = |verdict: Verdict, requests: u64, errors: u64| Check {
            at: at(20),
            verdict,
            figures: Figures {
                requests,
                errors,
                p99_ms: Some(41.5),
                // The whole usual window: 10 s before the check.
                from: Some(at(10)),
            },
            baseline: None,
        };
        let rollout = |kind: Kind, status: RolloutStatus| Rollout {
            kind,
            status,
            started: at(0),
            weight: 0,
            stage: None,
            since: None,
            passed: 0,
            failed: 0,
            waiting_since: None,
            next_check: None,
            last_check: None,
            history: vec![Entry {
                at: at(0),
                what: "started".into(),
            }],
            previewing: false,
            step_started: Some(at(0)),
            gate: None,
            next_ask: None,
            gate_refused: None,
            confirmed: false,
            checks: std::collections::VecDeque::new(),
        };
        let canary = |stable: &str, canary: &str| Kind::Canary {
            stable: stable.into(),
            canary: canary.into(),
        };
        let switch = |from: &str, to: &str| Kind::Switch {
            from: from.into(),
            to: to.into(),
        };
        state.rollouts = BTreeMap::from([
            (
                "checkout".to_owned(),
                Rollout {
                    weight: 500_000,
                    since: Some(at(10)),
                    passed: 1,
                    next_check: Some(at(30)),
                    last_check: Some(Check {
                        baseline: Some(Comparison {
                            version: "v1".into(),
                            figures: Figures {
                                requests: 16_506,
                                errors: 20,
                                p99_ms: Some(38.0),
                                from: Some(at(10)),
                            },
                            error_rate: Some(Test { z: 1.2, p: 0.115 }),
                            latency: Some(Test { z: 0.4, p: 0.345 }),
                        }),
                        ..check(Verdict::Pass, 1834, 3)
                    }),
                    ..rollout(canary("v1", "v2"), RolloutStatus::Progressing)
                },
            ),
            (
                "cart".to_owned(),
                Rollout {
                    weight: 200_000,
                    since: Some(at(10)),
                    last_check: Some(check(
                        Verdict::Wait("3 requests, fewer than 10".into()),
                        3,
                        0,
                    )),
                    ..rollout(canary("v1", "v2"), RolloutStatus::Paused)
                },
            ),
            (
                "payments".to_owned(),
                Rollout {
                    failed: 1,
                    previewing: true,
                    last_check: Some(check(Verdict::Fail("error rate 5% over 1%".into()), 100, 5)),
                    ..rollout(
                        switch("blue", "green"),
                        RolloutStatus::Failed("error rate 5% over 1%".into()),
                    )
                },
            ),
            (
                "search".to_owned(),
                rollout(switch("red", "black"), RolloutStatus::Promoted),
            ),
        ]);
        let now = at(25);
        let plan = crate::reconcile::plan(&second, &state, now);
        let synced = BTreeSet::from([GroupId::all()]);
        let mut nodes = vec![node("edge-1"), node("edge-2"), node("edge-3")];
        nodes[0].address = Some("127.0.0.1:50001".into());
        nodes[0].config_version = Some("0123456789abcdef".into());
        nodes[0].types = BTreeMap::from([
            (
                "cds".to_owned(),
                TypeReport {
                    acked: Some("a1a1a1a1a1a1a1a1".into()),
                    pending: Some("b2b2b2b2b2b2b2b2".into()),
                    last_nack: None,
                },
            ),
            (
                "lds".to_owned(),
                TypeReport {
                    acked: Some("c3c3c3c3c3c3c3c3".into()),
                    pending: None,
                    last_nack: Some(NackStatus {
                        version: "d4d4d4d4d4d4d4d4".into(),
                        error: "cannot bind '127.0.0.1:10000'".into(),
                        at: "2026-01-02T03:04:07.000Z".into(),
                    }),
                },
            ),
        ]);
        nodes[2].group = None;
        nodes[2].stream = "cds".into();
        let report = StatusReport {
            file: "deploy.yaml".into(),
            state_file: Some(StateFileReport {
                path: "deploy.yaml.state.json".into(),
                ok: false,
                error: Some("cannot write it: read-only file system".into()),
            }),
            config_version: Some("0123456789abcdef".into()),
            last_reload: Some(ReloadStatus {
                ok: false,
                error: Some("t.yaml:3:5: unknown key".into()),
                at: "2026-01-02T03:04:05.000Z".into(),
            }),
            services: service_reports(&second, &plan, &state, &synced, now),
            nodes,
            nodes_without_telemetry: Vec::new(),
            nodes_without_group: vec!["stray-1".into()],
            groups: BTreeMap::from([(
                "edge".to_owned(),
                GroupReport {
                    config_version: "fedcba9876543210".into(),
                    envoys: 3,
                    in_sync: 2,
                },
            )]),
            streams: Some(StreamsReport {
                open: 5,
                limit: 4096,
            }),
            cluster: None,
        }
        .with_telemetry(&telemetry());
        insta::assert_snapshot!(serde_json::to_string_pretty(&report).unwrap());
    }
}
