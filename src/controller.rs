//! The controller: the reconcile loop and all of its I/O.
//!
//! Events come in (the file changed, a reload was asked for, Envoys answered, a deadline
//! passed); each is applied to the runtime state by the pure reducer, then the plan is made,
//! translated, encoded and published if it changed, the status read model is updated, and the
//! runtime state is saved if it changed (after publishing, so saving never delays a push).
//!
//! It runs on a thread of its own with a single-threaded runtime: reading, parsing, planning,
//! translating and hashing a large file never occupy the runtime that serves the xDS streams.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::access::Access;
use crate::api::{CommandError, RolloutCommand, StateFileReport};
use crate::http_client;
use crate::metrics::Metrics;
use crate::node::GroupId;
use crate::reconcile::rollout::{
    self, Baseline, Counted, Figures, Gate, Kind, Observation, Rollout, Status,
};
use crate::reconcile::{self, Event, Plan, Previous, RuntimeState, Timestamp};
use crate::replica::{Link, Recorded, Role};
use crate::snapshot::Published;
use crate::spec::{self, Spec, Strategy, Webhook, WebhookFormat};
use crate::status::{Served, Status as StatusModel};
use crate::store::{Loaded, StateFile};
use crate::telemetry::Telemetry;
use crate::telemetry::report::Histogram;
use crate::watch::FileWatcher;
use crate::xds::clients::Clients;

/// What the controller is told at start.
#[derive(Debug)]
pub struct Settings {
    pub file: PathBuf,
    pub store: Store,
    /// How long removed endpoints and versions stay in Envoy as `DRAINING`.
    pub drain_period: Duration,
}

/// Where the runtime state is kept.
#[derive(Debug)]
pub enum Store {
    /// One cutover: a file on this machine's disk, written after each change is served.
    File(StateFile),
    /// A replica of a cluster: the leader writes one record (file and state) to etcd and every
    /// replica serves what is recorded, the leader included.
    Cluster(Link),
}

/// Where rollout checks read a version's figures: what Envoys reported to cutover over the
/// last 10 s, and only of the time since `since` (when every Envoy holding the service had
/// what is judged).
pub trait Observer: Send + Sync + 'static {
    /// The figures, and the latency histogram (requests per bucket of Envoy's bounds) that
    /// comparisons with a baseline rank.
    fn figures(
        &self,
        service: &str,
        version: &str,
        counted: Counted,
        since: Timestamp,
    ) -> (Figures, Vec<f64>);
}

/// Rollout checks read what Envoys reported for the version under test over the last 10 s,
/// and only of the time since they all had what is judged.
pub struct TelemetryObserver(pub Telemetry);

impl Observer for TelemetryObserver {
    fn figures(
        &self,
        service: &str,
        version: &str,
        counted: Counted,
        since: Timestamp,
    ) -> (Figures, Vec<f64>) {
        let now = Timestamp::now();
        let short = crate::telemetry::window::Window::Short.length();
        let from = since
            .max(Timestamp::from_millis(now.as_millis().saturating_sub(
                u64::try_from(short.as_millis()).unwrap_or(u64::MAX),
            )));
        let id = crate::ids::ClusterId::new(service, version);
        let (w, latency) = self
            .0
            .recent_figures(&id, now.since(from), std::time::Instant::now());
        if counted == Counted::Connections {
            let figures = Figures {
                requests: w.attempts,
                errors: w.errors.connect_failures.min(w.attempts),
                p99_ms: None,
                from: Some(from),
            };
            return (figures, Vec::new());
        }
        if counted == Counted::Calls {
            let (ok, failed) = self
                .0
                .recent_calls(&id, now.since(from), std::time::Instant::now());
            let figures = Figures {
                requests: ok.saturating_add(failed),
                errors: failed,
                p99_ms: w.latency_ms.map(|q| q.p99),
                from: Some(from),
            };
            return (figures, latency.0.to_vec());
        }
        let figures = Figures {
            requests: w.requests,
            // Answered 5xx: from the upstream, or Envoy's own after a reset, a connect
            // failure or a timeout.
            errors: crate::telemetry::report::count(
                w.error_rate.unwrap_or(0.0) * w.requests as f64,
            ),
            p99_ms: w.latency_ms.map(|q| q.p99),
            from: Some(from),
        };
        (figures, latency.0.to_vec())
    }
}

/// A replica's figures of one version (`GET /figures/{service}/{version}`), which the leader
/// adds to its own: each Envoy reports to the replica it is connected to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaFigures {
    pub figures: Figures,
    /// Requests per latency bucket (Envoy's bounds).
    pub latency: Vec<f64>,
}

/// `a` and `b` together: counts added, latency histograms added and the 99th percentile read
/// from their sum (without histograms, the larger of the two).
pub fn merge_figures(a: (Figures, Vec<f64>), b: (Figures, Vec<f64>)) -> (Figures, Vec<f64>) {
    let (fa, la) = a;
    let (fb, lb) = b;
    let latency = match (la.is_empty(), lb.is_empty()) {
        (true, _) => lb,
        (_, true) => la,
        _ => la.iter().zip(&lb).map(|(x, y)| x + y).collect(),
    };
    let mut histogram = Histogram::default();
    for (h, n) in histogram.0.iter_mut().zip(&latency) {
        *h = *n;
    }
    let p99_ms = if latency.is_empty() {
        fa.p99_ms.into_iter().chain(fb.p99_ms).reduce(f64::max)
    } else {
        histogram
            .quantile(0.99)
            .map(|p| crate::telemetry::report::round(p, 1))
    };
    let figures = Figures {
        requests: fa.requests.saturating_add(fb.requests),
        errors: fa.errors.saturating_add(fb.errors),
        p99_ms,
        from: fa.from.max(fb.from),
    };
    (figures, latency)
}

/// How long the leader waits for another replica's figures.
const REPLICA_FIGURES_TIMEOUT: Duration = Duration::from_secs(2);

/// `local` with what every replica at `admins` reported for the version; a replica that does
/// not answer is left out, and said.
async fn fleet_figures(
    http: &http_client::Client,
    admins: &[String],
    (service, version): (&str, &str),
    counted: Counted,
    since: Timestamp,
    local: (Figures, Vec<f64>),
) -> (Figures, Vec<f64>) {
    let mut all = local;
    for admin in admins {
        let url = format!(
            "{}/figures/{service}/{version}?counted={}&since={}",
            admin.trim_end_matches('/'),
            counted.as_str(),
            since.as_millis()
        );
        let got = http
            .send(http_client::Method::GET, &url, &[], REPLICA_FIGURES_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
            .and_then(|a| {
                if a.status.is_success() {
                    serde_json::from_slice::<ReplicaFigures>(&a.body).map_err(|e| e.to_string())
                } else {
                    Err(format!("answered {}", a.status))
                }
            });
        match got {
            Ok(r) => all = merge_figures(all, (r.figures, r.latency)),
            Err(e) => tracing::warn!(
                %url,
                "a replica's figures are left out of the check (its Envoys' requests are not counted): {e}"
            ),
        }
    }
    all
}

/// Where the controller publishes and reports, and what it observes.
pub struct Outputs {
    pub published: watch::Sender<Option<Arc<Published>>>,
    pub status: Arc<StatusModel>,
    pub clients: Arc<Clients>,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<dyn Observer>,
    /// The file's access rules, for the servers that check client certificates: sent before
    /// the config of the same file is published.
    pub access: watch::Sender<Arc<Access>>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs").finish_non_exhaustive()
    }
}

/// An operator's rollout command, and where its answer goes.
#[derive(Debug)]
pub struct CommandRequest {
    pub service: String,
    pub command: RolloutCommand,
    /// Who asked, as the rollout's history says it: "the operator at 127.0.0.1".
    pub by: String,
    /// What was done, or why nothing was.
    pub reply: oneshot::Sender<Result<&'static str, CommandError>>,
}

/// Asks a running controller to do something.
#[derive(Debug)]
pub struct Inputs {
    /// Read the file now, even if its content looks unchanged.
    pub reload: mpsc::Receiver<()>,
    pub commands: mpsc::Receiver<CommandRequest>,
    /// Set to `true` or closed (the sender dropped): save the state and stop.
    pub shutdown: watch::Receiver<bool>,
}

/// Starts the controller on its own thread. Returns once the file has been read for the first
/// time (valid or not), with a receiver for the controller's end.
pub async fn spawn(
    settings: Settings,
    outputs: Outputs,
    inputs: Inputs,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<()>>> {
    let (started_tx, started) = oneshot::channel::<anyhow::Result<()>>();
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("cutover-controller".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the controller's runtime")
                .and_then(|rt| {
                    rt.block_on(async move {
                        // Watch before the first read so that no change between the two is
                        // missed.
                        let watcher = match FileWatcher::new(&settings.file) {
                            Ok(w) => w,
                            Err(err) => {
                                let _ = started_tx.send(Err(err.into()));
                                return Ok(());
                            }
                        };
                        let mut controller = Controller::new(settings, outputs);
                        // A replica serves the cluster's record (if there is one yet); it
                        // reads its own file only once it leads.
                        if controller.cluster.is_some() {
                            controller.serve_record(false);
                        } else {
                            controller.reload();
                        }
                        let _ = started_tx.send(Ok(()));
                        controller.run(watcher, inputs).await
                    })
                });
            let _ = done_tx.send(result);
        })
        .context("cannot start the controller thread")?;
    started
        .await
        .context("the controller stopped while starting")??;
    Ok(done)
}

struct Controller {
    file: PathBuf,
    label: String,
    out: Outputs,
    /// The state file; `None` in cluster mode.
    state_file: Option<StateFile>,
    /// Cluster mode: the link to the other replicas and what this replica serves from it.
    cluster: Option<ClusterSide>,
    last_text: Option<Vec<u8>>,
    /// The text of `spec` (what the leader's record carries).
    spec_text: Option<Arc<str>>,
    /// What the PEM files the file names held when they were last read (polled for rotation).
    pem_read: spec::PemRead,
    /// Reads a save again only where it changed.
    reparser: spec::Reparser,
    /// Keeps the encoded resources of what a save did not change.
    builder: crate::snapshot::Builder,
    spec: Option<Arc<Spec>>,
    state: RuntimeState,
    /// What the state file holds (nothing is written while the state is unchanged).
    saved: Option<RuntimeState>,
    /// How the first valid file meets the runtime state.
    first: Previous<'static>,
    drain_period: Duration,
    /// When the change being applied was seen.
    changed_at: Instant,
    /// The plan last published. Kept here, not read back from the status read model: the
    /// controller's decisions come from its own inputs only.
    plan: Option<Arc<Plan>>,
    /// The state file's last problem, logged once until it changes or goes away.
    state_file_problem: Option<String>,
    /// Services whose rollout check or gate webhooks are being asked.
    checking: BTreeSet<String>,
    /// Checks come back on `checks_in` once their webhooks answered.
    checks_out: mpsc::UnboundedSender<(String, Observation)>,
    checks_in: mpsc::UnboundedReceiver<(String, Observation)>,
    /// Gates' webhooks' answers (`confirm`, `pre_rollout`).
    gates_out: mpsc::UnboundedSender<(String, Gate, Result<(), String>)>,
    gates_in: mpsc::UnboundedReceiver<(String, Gate, Result<(), String>)>,
    /// Rollout events for the services' `notify` webhooks, told in order by one task.
    notify: mpsc::Sender<Notice>,
    /// What asks the webhooks.
    http: http_client::Client,
}

/// A replica's side of the cluster (cluster mode).
struct ClusterSide {
    link: Link,
    role: Role,
    /// The record served, with the spec read from it.
    served: Option<(Arc<Recorded>, Arc<Spec>)>,
    /// The leader sent a record to be written that has not come back yet: what is served is
    /// not what was decided, so no answer is counted against it.
    unrecorded: bool,
    /// Operator commands done, answered once they are recorded.
    waiting: Vec<(Reply, CommandAnswer)>,
}

/// What an operator command did, or why nothing was.
type CommandAnswer = Result<&'static str, CommandError>;
/// Where it goes.
type Reply = oneshot::Sender<CommandAnswer>;

/// What changed on the cluster's side.
enum ClusterEvent {
    Role,
    Record,
    Fleet,
}

impl ClusterSide {
    fn leads(&self) -> bool {
        self.role.leads()
    }
}

/// The next change the cluster's link brings; never, for one cutover.
async fn cluster_event(side: &mut Option<ClusterSide>) -> ClusterEvent {
    let Some(c) = side else {
        return std::future::pending().await;
    };
    let link = &mut c.link;
    tokio::select! {
        Ok(()) = link.role.changed() => ClusterEvent::Role,
        Ok(()) = link.records.changed() => ClusterEvent::Record,
        Ok(()) = link.fleet.changed() => ClusterEvent::Fleet,
        else => std::future::pending().await,
    }
}

/// One rollout event for a service's `notify` webhooks.
struct Notice {
    hooks: Vec<Webhook>,
    body: serde_json::Value,
    /// The event in one line, for chat webhooks (`format: slack`).
    text: String,
}

impl Notice {
    /// What `hook` is sent.
    fn payload(&self, hook: &Webhook) -> serde_json::Value {
        match hook.format {
            WebhookFormat::Json => self.body.clone(),
            WebhookFormat::Slack => serde_json::json!({ "text": self.text }),
        }
    }
}

/// How many events may wait for slow `notify` webhooks before new ones are dropped (and
/// logged): a webhook that hangs must not grow cutover's memory.
const NOTICES_QUEUED: usize = 256;

impl Controller {
    fn new(settings: Settings, out: Outputs) -> Controller {
        let state_file = match settings.store {
            Store::File(file) => file,
            Store::Cluster(link) => {
                return Controller::with_store(
                    settings.file,
                    settings.drain_period,
                    out,
                    None,
                    Some(ClusterSide {
                        link,
                        role: Role::Unknown,
                        served: None,
                        unrecorded: false,
                        waiting: Vec::new(),
                    }),
                );
            }
        };
        let path = state_file.path().display().to_string();
        let (state, saved, first, problem) = match state_file.load() {
            Loaded::Missing => (RuntimeState::default(), None, Previous::Start, None),
            Loaded::Ok(state) => {
                tracing::info!(state_file = %path, "runtime state loaded");
                (state.clone(), Some(state), Previous::Start, None)
            }
            Loaded::Unusable(reason) => {
                let msg = format!(
                    "{path}: cannot use the runtime state file: {reason}; starting without it: \
                     every version the deployment file lists is kept until Envoys have answered \
                     it, nothing drains early"
                );
                tracing::error!("{msg}");
                (
                    RuntimeState::default(),
                    None,
                    Previous::StartUnknown,
                    Some(msg),
                )
            }
        };
        out.status.set_state_file(StateFileReport {
            path,
            ok: problem.is_none(),
            error: problem.clone(),
        });
        let mut controller = Controller::with_store(
            settings.file,
            settings.drain_period,
            out,
            Some(state_file),
            None,
        );
        controller.state = state;
        controller.saved = saved;
        controller.first = first;
        controller.state_file_problem = problem;
        controller
    }

    fn with_store(
        file: PathBuf,
        drain_period: Duration,
        out: Outputs,
        state_file: Option<StateFile>,
        cluster: Option<ClusterSide>,
    ) -> Controller {
        let (checks_out, checks_in) = mpsc::unbounded_channel();
        let (gates_out, gates_in) = mpsc::unbounded_channel();
        let (notify, notices) = mpsc::channel(NOTICES_QUEUED);
        let http = http_client::Client::new();
        tokio::spawn(tell_notices(http.clone(), notices));
        Controller {
            label: file.display().to_string(),
            file,
            out,
            state_file,
            cluster,
            last_text: None,
            spec_text: None,
            pem_read: spec::PemRead::new(),
            reparser: spec::Reparser::default(),
            builder: crate::snapshot::Builder::default(),
            spec: None,
            state: RuntimeState::default(),
            saved: None,
            first: Previous::Start,
            drain_period,
            changed_at: Instant::now(),
            plan: None,
            state_file_problem: None,
            checking: BTreeSet::new(),
            checks_out,
            checks_in,
            gates_out,
            gates_in,
            notify,
            http,
        }
    }

    async fn run(mut self, mut watcher: FileWatcher, mut inputs: Inputs) -> anyhow::Result<()> {
        let mut client_changes = self.out.clients.changes();
        let mut pem_poll = tokio::time::interval(crate::watch::PEM_POLL);
        pem_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pem_watch = crate::watch::PemWatcher::new()
            .inspect_err(|err| {
                tracing::warn!(%err, "cannot watch certificate files; they are read every second instead");
            })
            .ok();
        loop {
            if let Some(w) = &mut pem_watch {
                w.watch(&self.file, self.pem_read.keys());
            }
            let deadline = self
                .spec
                .as_ref()
                .and_then(|spec| self.state.next_deadline_except(spec, &self.checking))
                .map(|t| Instant::now() + t.since(Timestamp::now()));
            let deciding = self.deciding();
            tokio::select! {
                changed = watcher.changed() => {
                    let changed_at = changed?.into_std();
                    // A follower serves the leader's record, whatever its own copy says.
                    if deciding {
                        self.changed_at = changed_at;
                        self.reload();
                    }
                }
                Some(()) = inputs.reload.recv() => {
                    if deciding {
                        self.changed_at = Instant::now();
                        // Asked for explicitly: read even if the content looks unchanged.
                        self.last_text = None;
                        self.reload();
                    }
                }
                Some(request) = inputs.commands.recv() => {
                    let answer = if deciding {
                        self.command(&request.service, request.command, &request.by)
                    } else {
                        Err(CommandError::NotLeading { why: None })
                    };
                    match &mut self.cluster {
                        // Answered once etcd holds it: a command answered is a command done.
                        Some(c) if c.unrecorded && answer.is_ok() => {
                            c.waiting.push((request.reply, answer));
                        }
                        _ => {
                            let _ = request.reply.send(answer);
                        }
                    }
                }
                _ = pem_poll.tick(), if !self.pem_read.is_empty() => self.reload_if_pem_changed(),
                () = pem_changed(&mut pem_watch), if !self.pem_read.is_empty() => {
                    self.reload_if_pem_changed();
                }
                _ = client_changes.changed(), if deciding && self.state.awaiting_answers() => {
                    self.check_answered();
                }
                _ = sleep_until_opt(deadline) => {
                    self.changed_at = Instant::now();
                    if deciding {
                        self.reduce(Event::Tick);
                        self.start_checks();
                        self.start_gates();
                        self.publish();
                    }
                    // What is served depends on the time too (a drain ends at its deadline).
                    self.serve_record(false);
                }
                Some((service, gate, answer)) = self.gates_in.recv() => {
                    self.checking.remove(&service);
                    if deciding {
                        self.changed_at = Instant::now();
                        self.reduce(Event::GateAnswered { service: &service, gate, answer: &answer });
                        self.publish();
                    }
                }
                Some((service, observation)) = self.checks_in.recv() => {
                    self.checking.remove(&service);
                    if deciding {
                        self.changed_at = Instant::now();
                        self.reduce(Event::Observed { service: &service, observation: &observation });
                        self.publish();
                    }
                }
                event = cluster_event(&mut self.cluster) => match event {
                    ClusterEvent::Role => self.role_changed(),
                    ClusterEvent::Record => {
                        self.changed_at = Instant::now();
                        self.serve_record(false);
                    }
                    ClusterEvent::Fleet => {}
                },
                _ = inputs.shutdown.changed() => {
                    self.save();
                    return Ok(());
                }
            }
            // What just happened may need no Envoy to answer (none is connected, or the change
            // left their configs as they were): waiting for their next change would wait forever.
            self.check_answered();
            self.save();
        }
    }

    /// Reads the PEM files the file names again, and reloads if any changed (a rotation). In
    /// cluster mode every replica reads its own copies of them: the record is served again.
    fn reload_if_pem_changed(&mut self) {
        let paths = self.pem_read.keys().cloned().collect();
        if crate::watch::read_pem_files(&self.file, &paths) != self.pem_read {
            self.changed_at = Instant::now();
            if self.deciding() {
                self.last_text = None;
                self.reload();
            }
            self.serve_record(true);
        }
    }

    /// Whether this cutover decides: one on its own always does, a replica while it leads.
    fn deciding(&self) -> bool {
        self.cluster.as_ref().is_none_or(ClusterSide::leads)
    }

    /// Reads a deployment file's text (the file's, or a record's) and the PEM files it names.
    fn parse(&mut self, label: &str, text: &[u8]) -> Result<Spec, spec::SpecError> {
        let spec = self.reparser.parse_bytes(label, text)?;
        let read = self.reparser.last();
        tracing::debug!(
            services = read.services,
            kept = read.kept,
            "{label}: read, the services unchanged since the last read kept as they were"
        );
        self.pem_read = crate::watch::read_pem_files(&self.file, &spec::pem_paths(&spec));
        let (spec, warnings) =
            spec::load_pem_files(spec, label, &self.pem_read, std::time::SystemTime::now())?;
        for w in warnings {
            tracing::warn!("{label}:{}:{}: {}", w.line, w.column, w.message);
        }
        Ok(spec)
    }

    /// Serves the newest record etcd holds (cluster mode), again if `force` (the PEM files it
    /// names changed) or at a deadline; a record that cannot be read leaves what is served.
    fn serve_record(&mut self, force: bool) {
        let Some(c) = &mut self.cluster else { return };
        let Some(record) = c.link.records.borrow_and_update().clone() else {
            return;
        };
        let same = c
            .served
            .as_ref()
            .is_some_and(|(r, _)| r.revision == record.revision);
        if same && !force {
            // Nothing new: planned again at this time.
            let (record, spec) = c.served.clone().expect("served");
            self.serve(&spec, &record.state);
            return;
        }
        let label = format!(
            "{} (the cluster's record, revision {})",
            self.label, record.revision
        );
        let spec = match self.parse(&label, record.file.as_bytes()) {
            Ok(spec) => Arc::new(spec),
            Err(err) => {
                tracing::error!(
                    "cannot serve the cluster's record, still serving what was:\n{err}"
                );
                self.out.status.reload_failed(err.to_string());
                return;
            }
        };
        let c = self.cluster.as_mut().expect("cluster mode");
        let sent = c.link.save.borrow().clone();
        if sent.is_some_and(|s| s.file == record.file && s.state == record.state) {
            c.unrecorded = false;
            for (reply, answer) in c.waiting.drain(..) {
                let _ = reply.send(answer);
            }
            self.out.status.set_cluster(|r| r.unrecorded = None);
        }
        c.served = Some((record.clone(), spec.clone()));
        if !c.leads() {
            // A follower mirrors the record: it is what it would decide from if elected.
            self.spec = Some(spec.clone());
            self.spec_text = Some(record.file.clone());
            self.state = record.state.clone();
        }
        self.out
            .status
            .set_cluster(|r| r.revision = record.revision);
        self.out
            .metrics
            .cluster_record_revision
            .set(record.revision);
        self.send_access(&spec);
        self.serve(&spec, &record.state);
        self.out.status.reloaded();
    }

    /// This replica was elected, lost its lease or learned that another leads.
    fn role_changed(&mut self) {
        let Some(c) = &mut self.cluster else { return };
        let role = c.link.role.borrow_and_update().clone();
        if role == c.role {
            return;
        }
        tracing::info!(role = role.as_str(), "cluster role");
        self.out.metrics.cluster_leader.set(i64::from(role.leads()));
        c.role = role.clone();
        // What the previous term wanted written is not this one's business.
        c.link.save.send_replace(None);
        c.unrecorded = false;
        for (reply, _) in c.waiting.drain(..) {
            let why = "this replica stopped leading before etcd recorded the command; see /status and ask again";
            let _ = reply.send(Err(CommandError::NotLeading {
                why: Some(why.to_owned()),
            }));
        }
        self.out.status.set_cluster(|r| {
            r.role = role.as_str().to_owned();
            r.unrecorded = None;
        });
        let Role::Leader { record, .. } = role else {
            // Decide nothing; mirror what is served.
            if let Some((record, spec)) = c.served.clone() {
                self.spec = Some(spec);
                self.spec_text = Some(record.file.clone());
                self.state = record.state.clone();
            }
            return;
        };
        self.changed_at = Instant::now();
        self.take_over(record.as_deref());
    }

    /// A new leader decides from what the cluster holds, not from what it thought, and takes
    /// its own copy of the file only if it is not one the cluster served before (an older
    /// copy, a ConfigMap not yet updated here, must never roll traffic back).
    fn take_over(&mut self, record: Option<&Recorded>) {
        self.last_text = None;
        let Some(record) = record else {
            // A new cluster: the file as on a first start.
            self.spec = None;
            self.spec_text = None;
            self.state = RuntimeState::default();
            self.first = Previous::Start;
            self.reload();
            return;
        };
        let label = format!("{} (the cluster's record)", self.label);
        match self.parse(&label, record.file.as_bytes()) {
            Ok(spec) => {
                self.spec = Some(Arc::new(spec));
                self.spec_text = Some(record.file.clone());
                self.state = record.state.clone();
            }
            Err(err) => {
                tracing::error!(
                    "cannot read the cluster's record; deciding from this replica's file:\n{err}"
                );
                self.spec = None;
                self.spec_text = None;
                self.state = record.state.clone();
                self.first = Previous::StartUnknown;
            }
        }
        let local = match crate::watch::read_file(&self.file) {
            Ok(text) => text,
            Err(err) => {
                tracing::warn!(
                    "{}: cannot read the file: {err}; serving the cluster's",
                    self.label
                );
                self.publish();
                return;
            }
        };
        if self.spec.is_some() && local.as_slice() == record.file.as_bytes() {
            self.last_text = Some(local);
            self.publish();
            return;
        }
        if self.spec.is_some() && record.is_earlier_file(&local) {
            let msg = format!(
                "{}: this replica's copy is a file the cluster served before the one it serves \
                 now; it leads with the cluster's until its copy changes",
                self.label
            );
            tracing::warn!("{msg}");
            self.out.status.set_cluster(|r| r.local_file = Some(msg));
            self.last_text = Some(local);
            self.publish();
            return;
        }
        self.reload();
    }

    fn command(
        &mut self,
        service: &str,
        command: RolloutCommand,
        by: &str,
    ) -> Result<&'static str, CommandError> {
        let Some(spec) = &self.spec else {
            return Err(CommandError::NotLoaded);
        };
        let before = self.state.rollouts.clone();
        let done = self
            .state
            .command(spec, service, command, by, Timestamp::now())?;
        tracing::info!(service, %command, by, done, "operator command");
        self.rollout_events(&before);
        self.changed_at = Instant::now();
        self.publish();
        Ok(done)
    }

    fn reduce(&mut self, event: Event<'_>) {
        if let Some(spec) = &self.spec {
            let before = self.state.rollouts.clone();
            self.state.reduce(spec, event, Timestamp::now());
            self.rollout_events(&before);
        }
    }

    /// Logs and counts what rollouts did since `before`: every new history entry, steps,
    /// promotions and rollbacks.
    fn rollout_events(&self, before: &BTreeMap<String, Rollout>) {
        for (service, r) in &self.state.rollouts {
            let old = before.get(service);
            let seen = old.map_or(0, |o| {
                r.history
                    .iter()
                    .position(|e| Some(e) == o.history.last())
                    .map_or(0, |i| i + 1)
            });
            let hooks = self
                .spec
                .as_ref()
                .and_then(|spec| spec.services.get(service))
                .map_or(&[][..], |s| s.notify.as_slice());
            for e in &r.history[seen..] {
                tracing::info!(service, rollout = %e.what, "rollout");
                if hooks.is_empty() {
                    continue;
                }
                let notice = Notice {
                    hooks: hooks.to_vec(),
                    text: format!(
                        "cutover: {service} ({} {}): {}",
                        match r.kind {
                            Kind::Canary { .. } => "canary",
                            Kind::Switch { .. } => "switch to",
                        },
                        r.version_under_test(),
                        e.what
                    ),
                    body: serde_json::json!({
                        "service": service,
                        "version": r.version_under_test(),
                        "event": e.what,
                        "at": e.at,
                        "rollout": r,
                    }),
                };
                if self.notify.try_send(notice).is_err() {
                    tracing::warn!(
                        service,
                        event = %e.what,
                        "notify webhooks are {NOTICES_QUEUED} events behind: this event is not told"
                    );
                }
            }
            let Some(old) = old.filter(|o| o.kind == r.kind) else {
                continue;
            };
            let m = &self.out.metrics;
            if old.step() != r.step() && r.status == Status::Progressing {
                m.rollout_steps.inc();
            }
            if old.status != r.status {
                match r.status {
                    Status::Promoted => {
                        m.rollout_promotions.inc();
                    }
                    Status::Failed(_) => {
                        m.rollout_rollbacks.inc();
                    }
                    _ => {}
                }
            }
        }
    }

    /// Starts the rollout checks that are due: each reads the version's figures now and, if
    /// the analysis has webhooks, asks them off this loop; the result comes back on
    /// `self.checks_in`.
    fn start_checks(&mut self) {
        let Some(spec) = &self.spec else { return };
        for (service, version, since) in self.state.checks_due(Timestamp::now()) {
            if self.checking.contains(&service) {
                continue;
            }
            let Some(analysis) = spec
                .services
                .get(&service)
                .and_then(|s| s.strategy.analysis())
            else {
                continue;
            };
            let counted = Counted::of(spec, &service);
            let local = self
                .out
                .observer
                .figures(&service, &version, counted, since);
            let rollout = self.state.rollouts.get(&service).cloned();
            // The baseline over the same window, from the same reports.
            let stable = rollout
                .as_ref()
                .and_then(Rollout::baseline)
                .filter(|_| analysis.baseline.is_some())
                .map(|stable| {
                    let figures = self.out.observer.figures(&service, stable, counted, since);
                    (stable.to_owned(), figures)
                });
            // Cluster mode: every replica's Envoys' reports, not only this one's.
            let admins = self
                .cluster
                .as_ref()
                .map(|c| c.link.fleet.borrow().admins())
                .unwrap_or_default();
            let hooks = analysis.webhooks.clone();
            let tx = self.checks_out.clone();
            let http = self.http.clone();
            self.checking.insert(service.clone());
            tokio::spawn(async move {
                let (figures, latency) =
                    fleet_figures(&http, &admins, (&service, &version), counted, since, local)
                        .await;
                let mut baseline = None;
                if let Some((stable, local)) = stable {
                    let (figures, baseline_latency) =
                        fleet_figures(&http, &admins, (&service, &stable), counted, since, local)
                            .await;
                    baseline = Some(Baseline {
                        version: stable,
                        figures,
                        latency: [baseline_latency, latency],
                    });
                }
                let body = serde_json::json!({
                    "service": service,
                    "version": version,
                    "rollout": rollout,
                    "figures": figures,
                    "baseline": baseline.as_ref().map(|b| serde_json::json!({
                        "version": b.version,
                        "figures": b.figures,
                    })),
                });
                let webhooks = ask_webhooks(&http, &hooks, &body).await;
                let observation = Observation {
                    figures,
                    webhooks,
                    baseline,
                };
                let _ = tx.send((service, observation));
            });
        }
    }

    /// Asks the webhooks of the gates rollouts wait at, off this loop; the answers come back on
    /// `self.gates_in`.
    fn start_gates(&mut self) {
        let Some(spec) = &self.spec else { return };
        for (service, gate) in self.state.gates_due(Timestamp::now()) {
            let (Some(s), Some(r)) = (
                spec.services.get(&service),
                self.state.rollouts.get(&service),
            ) else {
                continue;
            };
            let Strategy::Canary {
                rollout: Some(cfg), ..
            } = &s.strategy
            else {
                continue;
            };
            if self.checking.contains(&service) {
                continue;
            }
            let hooks = match gate {
                Gate::PreRollout => cfg.pre_rollout.clone(),
                Gate::Confirm => cfg.confirm.clone(),
            };
            let body = serde_json::json!({
                "service": service,
                "version": r.version_under_test(),
                "gate": gate.as_str(),
                "next": rollout::gate_next(r, &s.strategy),
                "rollout": r,
            });
            let (tx, http) = (self.gates_out.clone(), self.http.clone());
            self.checking.insert(service.clone());
            tokio::spawn(async move {
                let answer = ask_webhooks(&http, &hooks, &body).await;
                let _ = tx.send((service, gate, answer));
            });
        }
    }

    fn reload(&mut self) {
        let text = match crate::watch::read_file(&self.file) {
            Ok(text) => text,
            Err(err) => {
                let msg = format!(
                    "{}: cannot read the file: {err}; still serving the last good config",
                    self.label
                );
                tracing::error!("{msg}");
                self.out.status.reload_failed(msg);
                self.last_text = None;
                return;
            }
        };
        if self.last_text.as_deref() == Some(text.as_slice()) {
            return;
        }
        let label = self.label.clone();
        let parsed = self.parse(&label, &text);
        self.last_text = Some(text);
        match parsed {
            Ok(spec) => {
                self.spec_text = Some(
                    String::from_utf8_lossy(self.last_text.as_deref().unwrap_or_default()).into(),
                );
                self.out.status.set_cluster(|r| r.local_file = None);
                let previous = self.spec.replace(Arc::new(spec));
                let spec = self.spec.as_ref().expect("just set");
                let before = self.state.rollouts.clone();
                self.state.reduce(
                    spec,
                    Event::FileLoaded {
                        previous: previous.as_deref().map_or(self.first, Previous::File),
                        drain_period: self.drain_period,
                    },
                    Timestamp::now(),
                );
                if self.cluster.is_none() {
                    let spec = spec.clone();
                    self.send_access(&spec);
                }
                // A file can start, continue or end a rollout: logged and told like any step.
                self.rollout_events(&before);
                self.publish();
                if self.cluster.is_none() {
                    self.out.status.reloaded();
                }
                // With no Envoy connected, nothing needs to ACK.
                self.check_answered();
            }
            Err(err) => {
                tracing::error!(
                    "invalid deployment file, still serving the last good config:\n{err}"
                );
                self.out.status.reload_failed(err.to_string());
            }
        }
    }

    /// The file's access rules, for the servers that check client certificates: before the
    /// config of the same file is published.
    fn send_access(&self, spec: &Spec) {
        self.out.access.send_if_modified(|current| {
            if **current == spec.access {
                return false;
            }
            *current = Arc::new(spec.access.clone());
            true
        });
    }

    /// What was decided is served: by one cutover at once; in cluster mode the leader records
    /// it and every replica (the leader too) serves it when etcd has it.
    fn publish(&mut self) {
        let Some(c) = &mut self.cluster else {
            let spec = self.spec.clone().expect("publish after a valid load");
            let state = self.state.clone();
            self.serve(&spec, &state);
            return;
        };
        let Some(text) = self.spec_text.clone().filter(|_| c.leads()) else {
            return;
        };
        let previous = c
            .link
            .save
            .borrow()
            .clone()
            .or_else(|| c.served.as_ref().map(|(r, _)| r.clone()));
        if previous
            .as_ref()
            .is_some_and(|p| p.file == text && p.state == self.state)
        {
            return;
        }
        let next = Recorded::next(previous.as_deref(), text, self.state.clone());
        c.unrecorded = true;
        c.link.save.send_replace(Some(Arc::new(next)));
        self.out.status.set_cluster(|r| {
            r.unrecorded =
                Some("decided, not applied yet: waiting for etcd to record it".to_owned());
        });
    }

    /// Plans and translates `spec` with `state` and publishes it if it differs from what is
    /// served.
    fn serve(&mut self, spec: &Arc<Spec>, state: &RuntimeState) {
        let spec = spec.clone();
        let started = Instant::now();
        let now = Timestamp::now();
        let plan = Arc::new(reconcile::plan(&spec, state, now));
        // Every resource is encoded once (what the last save encoded the same way is kept),
        // then each group's snapshot shares the bytes of its part (a cluster two groups hold is
        // encoded once for both and all of their streams).
        let (groups, built) = self.builder.build_groups(&plan);
        let encoded = built.encoded;
        let previous = self.out.published.borrow().clone();
        let next = Published::new(
            groups,
            plan.node_groups.clone(),
            self.changed_at,
            previous.as_deref(),
        );
        self.out
            .metrics
            .snapshot_bytes
            .set(i64::try_from(next.encoded_len()).unwrap_or(i64::MAX));
        // Before the push: a client that has the new config finds /status saying so.
        self.plan = Some(plan.clone());
        self.out.status.set_served(Served {
            spec: spec.clone(),
            plan,
            state: Arc::new(state.clone()),
        });
        let version = next.version.clone();
        let changed = self.out.published.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.version == version) {
                return false;
            }
            *current = Some(Arc::new(next));
            true
        });
        if changed {
            self.out.metrics.snapshots.inc();
            self.out.metrics.resources_encoded.inc_by(encoded as u64);
            tracing::info!(
                version,
                encoded,
                kept = built.kept,
                elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "config published"
            );
        }
    }

    /// Red-black retirements wait until every Envoy holding the service has answered the
    /// current config.
    fn check_answered(&mut self) {
        if !self.state.awaiting_answers() {
            return;
        }
        // In cluster mode: only the leader, only once what it decided is what is served, and
        // counting the Envoys of every replica.
        let fleet = match &self.cluster {
            None => None,
            Some(c) if c.leads() && !c.unrecorded => Some(c.link.fleet.borrow().clone()),
            Some(_) => return,
        };
        let Some(published) = self.out.published.borrow().clone() else {
            return;
        };
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let answered: BTreeSet<&GroupId> = published
            .groups()
            .filter(|(g, s)| {
                let version = &s.snapshot.version;
                self.out.clients.answered(g, version)
                    && fleet.as_ref().is_none_or(|f| f.answered(g, version))
            })
            .map(|(g, _)| g)
            .collect();
        // A service is answered once every group whose config includes it has: an Envoy of
        // another group never holds it, so it does not hold the service's retirement.
        let services: BTreeSet<String> = self
            .state
            .services_awaiting_answers()
            .into_iter()
            .filter(|s| plan.holders(s).all(|g| answered.contains(g)))
            .map(str::to_owned)
            .collect();
        if !services.is_empty() {
            self.reduce(Event::Answered {
                services: &services,
            });
            self.publish();
        }
    }

    /// Saves the runtime state if it changed since the last save.
    fn save(&mut self) {
        let Some(state_file) = &self.state_file else {
            // Cluster mode: recorded before it is served.
            return;
        };
        if self.saved.as_ref() == Some(&self.state)
            || (self.saved.is_none() && self.state == RuntimeState::default())
        {
            return;
        }
        let path = state_file.path().display().to_string();
        match state_file.save(&self.state) {
            Ok(()) => {
                self.saved = Some(self.state.clone());
                self.state_file_problem = None;
                self.out.status.set_state_file(StateFileReport {
                    path,
                    ok: true,
                    error: None,
                });
            }
            Err(err) => {
                let msg = err.to_string();
                // Once per distinct problem, not on every change.
                if self.state_file_problem.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}");
                }
                self.state_file_problem = Some(msg.clone());
                self.out.status.set_state_file(StateFileReport {
                    path,
                    ok: false,
                    error: Some(msg),
                });
            }
        }
    }
}

/// Tells each rollout event to its webhooks, one event after the other so that they arrive in
/// order; a webhook that fails or does not answer in time is logged and the next event goes on.
async fn tell_notices(http: http_client::Client, mut notices: mpsc::Receiver<Notice>) {
    while let Some(notice) = notices.recv().await {
        for hook in &notice.hooks {
            let problem = match ask(&http, hook, &notice.payload(hook)).await {
                Ok(()) => continue,
                Err(Refused::Status(status)) => format!("answered {status}"),
                Err(Refused::Error(e)) => e.to_string(),
                Err(Refused::Late) => format!(
                    "did not answer within {}",
                    humantime::format_duration(hook.timeout)
                ),
            };
            tracing::warn!(url = %hook.url, event = %notice.body["event"], "notify webhook {problem}");
        }
    }
}

/// Asks every webhook (HTTP POST, JSON body) in turn; the first that does not answer 2xx in
/// time fails the check.
async fn ask_webhooks(
    http: &http_client::Client,
    hooks: &[Webhook],
    body: &serde_json::Value,
) -> Result<(), String> {
    for hook in hooks {
        match ask(http, hook, body).await {
            Ok(()) => {}
            Err(Refused::Status(status)) => {
                return Err(format!("webhook {} answered {status}", hook.url));
            }
            Err(Refused::Error(e)) => return Err(format!("webhook {}: {e}", hook.url)),
            Err(Refused::Late) => {
                return Err(format!(
                    "webhook {} did not answer within {}",
                    hook.url,
                    humantime::format_duration(hook.timeout)
                ));
            }
        }
    }
    Ok(())
}

/// How a webhook did not answer 2xx in time.
enum Refused {
    /// Its status code.
    Status(u16),
    Error(http_client::Error),
    Late,
}

/// One POST of `body` to the webhook.
async fn ask(
    http: &http_client::Client,
    hook: &Webhook,
    body: &serde_json::Value,
) -> Result<(), Refused> {
    match http.post_json(&hook.url, body, hook.timeout).await {
        Ok(status) if status.is_success() => Ok(()),
        Ok(status) => Err(Refused::Status(status.as_u16())),
        Err(http_client::Error::Timeout(_)) => Err(Refused::Late),
        Err(e) => Err(Refused::Error(e)),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The next change [`crate::watch::PemWatcher`] sees; never, without one.
async fn pem_changed(watch: &mut Option<crate::watch::PemWatcher>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}
