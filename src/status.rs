//! The status read model: the last reload, the services as planned, and every connected client
//! with the versions its Envoy has ACKed, has pending and has rejected (read from
//! [`crate::xds::clients`]), assembled into the report `GET /status` and `cutover status` show.
//!
//! The controller writes what it loaded and planned; nothing here is an input to anything:
//! gates (red-black retirement) read [`Clients`] directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{Metrics, ResultLabel};
use crate::reconcile::rollout::{Kind, Rollout, Status as RolloutStatus, Verdict};
use crate::reconcile::{Plan, Role, RuntimeState, Timestamp};
use crate::snapshot::{Published, ResourceType};
use crate::spec::{Spec, Strategy};
use crate::wait;
use crate::xds::Mode;
use crate::xds::clients::{Client, Clients, SyncState, TypeStatus};

/// The outcome of the latest attempt to load the deployment file.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    /// Every problem, one `file:line:column: message` per line, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NackStatus {
    pub version: String,
    pub error: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TypeReport {
    pub acked: Option<String>,
    pub pending: Option<String>,
    pub last_nack: Option<NackStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: String,
    pub cluster: String,
    pub address: Option<String>,
    /// `ads`, or the single type a per-type stream carries.
    pub stream: String,
    pub connected_since: String,
    /// The config version this stream is converging to.
    pub config_version: Option<String>,
    /// Every subscribed type ACKed at `config_version`, nothing pending.
    pub in_sync: bool,
    pub types: BTreeMap<&'static str, TypeReport>,
}

/// A kept idle version of a red-black service.
#[derive(Debug, Clone, Serialize)]
pub struct RetiringReport {
    pub version: String,
    /// Still waiting for every connected Envoy to ACK the switch.
    pub awaiting_ack: bool,
    /// Seconds until the cluster is removed, once the grace period runs.
    pub retires_in_seconds: Option<f64>,
}

/// What the file asks of one service, and what cutover serves for it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub strategy: &'static str,
    /// Percent of answered requests per version.
    pub split: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorReport>,
    pub rules: usize,
    /// Versions whose clusters are served (red-black services serve fewer than they list).
    pub deployed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringReport>,
    /// Every connected Envoy has ACKed the current config.
    pub synced: bool,
    /// An automated rollout or a switch being watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutReport>,
}

/// A rollout as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutReport {
    /// `canary` or `switch`.
    pub kind: &'static str,
    /// The version under test.
    pub version: String,
    /// The version it is compared with and goes back to.
    pub baseline: String,
    /// `progressing`, `paused`, `promoted` or `rolled_back`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A canary's share of requests now, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// A canary's step (1-based) and the number of steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// The step's (or switch window's) time has not started: not every Envoy has it yet.
    pub awaiting_ack: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_ends_in_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_check_in_seconds: Option<f64>,
    pub failed_checks: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<ThresholdsReport>,
    /// What the operator should do next, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    pub history: Vec<HistoryReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub at: String,
    /// `pass`, `wait` or `fail`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// Percent.
    pub error_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdsReport {
    /// Percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
    pub failure_limit: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    pub at: String,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MirrorReport {
    pub version: String,
    pub percent: f64,
}

/// The runtime state file: where it is and whether it can be used.
#[derive(Debug, Clone, Serialize)]
pub struct StateFileReport {
    pub path: String,
    /// Read (or absent) and written without trouble.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<StateFileReport>,
    pub config_version: Option<String>,
    pub last_reload: Option<ReloadStatus>,
    pub services: BTreeMap<String, ServiceReport>,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Default)]
struct Inner {
    file: PathBuf,
    /// What is served now.
    served: Option<Served>,
    state_file: Option<StateFileReport>,
    last_reload: Option<ReloadStatus>,
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

    /// Records what is served now.
    pub fn set_served(&self, served: Served) {
        self.with(|i| i.served = Some(served));
    }

    /// What is served now, once a valid file was loaded.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.with(|i| i.served.as_ref().map(|s| s.plan.clone()))
    }

    /// Every connected Envoy (streams of one node id together) and when it answered its group's
    /// current config, for `cutover wait`.
    pub fn wait_envoys(&self) -> Vec<wait::Envoy> {
        let published = self.published.borrow().clone();
        let mut by_node: BTreeMap<String, wait::Envoy> = BTreeMap::new();
        for c in self.clients.list() {
            let current = match (&published, &c.group) {
                (Some(p), Some(g)) => p.group(g).map(|s| s.snapshot.version.clone()),
                _ => None,
            };
            let answered = (c.config_version.is_some() && c.config_version == current)
                .then_some(c.answered_at)
                .flatten();
            let e = by_node
                .entry(c.node.id.clone())
                .or_insert_with(|| wait::Envoy {
                    node: c.node.id.clone(),
                    answered_at: answered,
                    rejected: false,
                });
            e.answered_at = e.answered_at.zip(answered).map(|(a, b)| a.max(b));
            e.rejected |= c.sync == SyncState::Rejected;
        }
        by_node.into_values().collect()
    }

    pub fn set_state_file(&self, report: StateFileReport) {
        self.with(|i| i.state_file = Some(report));
    }

    pub fn state_file(&self) -> Option<StateFileReport> {
        self.with(|i| i.state_file.clone())
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

    pub fn report(&self) -> StatusReport {
        let published = self.published.borrow().clone();
        // Every client of every group holds its group's current config.
        let synced = published.as_ref().is_some_and(|p| {
            p.groups()
                .all(|(g, s)| self.clients.synced(g, &s.snapshot.version))
        });
        let nodes = self.clients.list().iter().map(node_report).collect();
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        StatusReport {
            file: i.file.display().to_string(),
            state_file: i.state_file.clone(),
            config_version: published.map(|p| p.version.clone()),
            last_reload: i.last_reload.clone(),
            services: i.served.as_ref().map_or_else(BTreeMap::new, |s| {
                service_reports(&s.spec, &s.plan, &s.state, synced, Timestamp::now())
            }),
            nodes,
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
        let seen = c.nack_seen[ty.index()].unwrap_or_else(SystemTime::now);
        types.insert(
            ty.short(),
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
        address: c.peer.map(|p| p.to_string()),
        stream: match c.mode {
            Mode::Aggregated => "ads".to_owned(),
            Mode::Single(ty) => ty.short().to_owned(),
        },
        connected_since: format_time(c.connected_since),
        config_version: c.config_version.clone(),
        in_sync: c.in_sync(),
        types,
    }
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
    synced: bool,
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
                strategy: service.strategy.name(),
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
                synced,
                rollout: state
                    .rollouts
                    .get(name)
                    .map(|r| rollout_report(r, &service.strategy, now)),
            };
            (name.clone(), report)
        })
        .collect()
}

fn rollout_report(r: &Rollout, strategy: &Strategy, now: Timestamp) -> RolloutReport {
    let (kind, version, baseline) = match &r.kind {
        Kind::Canary { stable, canary } => ("canary", canary.clone(), stable.clone()),
        Kind::Switch { from, to } => ("switch", to.clone(), from.clone()),
    };
    let (state, reason) = match &r.status {
        RolloutStatus::Progressing => ("progressing", None),
        RolloutStatus::Paused => ("paused", None),
        RolloutStatus::Promoted => ("promoted", None),
        RolloutStatus::Failed(reason) => ("rolled_back", Some(reason.clone())),
    };
    let steps = match strategy {
        Strategy::Canary {
            rollout: Some(cfg), ..
        } if matches!(r.kind, Kind::Canary { .. }) => Some(&cfg.steps),
        _ => None,
    };
    let in_seconds = |t: Timestamp| t.since(now).as_secs_f64();
    let analysis = strategy.analysis();
    let advice = match (&r.kind, &r.status) {
        (Kind::Canary { stable, canary }, RolloutStatus::Promoted) => Some(format!(
            "promoted: make {canary} the service's version in the file (e.g. `active: {canary}`); until then {canary} keeps all requests and {stable} none, and that edit moves no traffic"
        )),
        (Kind::Canary { canary, .. }, RolloutStatus::Failed(_)) => Some(format!(
            "rolled back: {canary} gets no requests; save a new canary version to start again, or `cutover resume` to retry {canary} from the first step"
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
        state,
        reason,
        weight: matches!(r.kind, Kind::Canary { .. }).then(|| f64::from(r.weight) / 10_000.0),
        step: steps.and_then(|s| {
            s.iter()
                .position(|s| s.weight.ppm() == r.weight)
                .map(|i| i + 1)
        }),
        steps: steps.map(Vec::len),
        awaiting_ack: r.is_active() && r.since.is_none(),
        step_ends_in_seconds: r.step_deadline(strategy).map(in_seconds),
        next_check_in_seconds: r.next_check.map(in_seconds),
        failed_checks: r.failed,
        last_check: r.last_check.as_ref().map(|c| {
            let (verdict, reason) = match &c.verdict {
                Verdict::Pass => ("pass", None),
                Verdict::Wait(why) => ("wait", Some(why.clone())),
                Verdict::Fail(why) => ("fail", Some(why.clone())),
            };
            CheckReport {
                at: c.at.to_string(),
                verdict,
                reason,
                requests: c.figures.requests,
                errors: c.figures.errors,
                error_rate: (c.figures.error_rate() * 100_000.0).round() / 1000.0,
                p99_ms: c.figures.p99_ms,
            }
        }),
        thresholds: analysis.map(|a| ThresholdsReport {
            max_error_rate: a.max_error_rate.map(|p| p.as_f64()),
            max_p99_ms: a.max_p99_latency.map(|d| d.as_secs_f64() * 1000.0),
            min_requests: a.min_requests,
            failure_limit: a.failure_limit,
        }),
        advice,
        history: r
            .history
            .iter()
            .map(|e| HistoryReport {
                at: e.at.to_string(),
                what: e.what.clone(),
            })
            .collect(),
    }
}
