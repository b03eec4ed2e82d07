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
use crate::snapshot::{Published, ResourceType, Snapshot};
use crate::spec::{self, Spec, Strategy, Webhook, WebhookFormat};
use crate::status::{Served, Status as StatusModel};
use crate::store::{Loaded, StateFile};
use crate::translate::{translate, translate_groups};
use crate::watch::FileWatcher;
use crate::xds::clients::Clients;

/// What the controller is told at start.
#[derive(Debug)]
pub struct Settings {
    pub file: PathBuf,
    pub state_file: StateFile,
    /// How long removed endpoints and versions stay in Envoy as `DRAINING`.
    pub drain_period: Duration,
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
                        controller.reload();
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
    state_file: StateFile,
    last_text: Option<Vec<u8>>,
    /// What the PEM files the file names held when they were last read (polled for rotation).
    pem_read: spec::PemRead,
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
        let path = settings.state_file.path().display().to_string();
        let (state, saved, first, problem) = match settings.state_file.load() {
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
        let (checks_out, checks_in) = mpsc::unbounded_channel();
        let (gates_out, gates_in) = mpsc::unbounded_channel();
        let (notify, notices) = mpsc::channel(NOTICES_QUEUED);
        let http = http_client::Client::new();
        tokio::spawn(tell_notices(http.clone(), notices));
        Controller {
            label: settings.file.display().to_string(),
            file: settings.file,
            out,
            state_file: settings.state_file,
            last_text: None,
            pem_read: spec::PemRead::new(),
            spec: None,
            state,
            saved,
            first,
            drain_period: settings.drain_period,
            changed_at: Instant::now(),
            plan: None,
            state_file_problem: problem,
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
            tokio::select! {
                changed = watcher.changed() => {
                    self.changed_at = changed?.into_std();
                    self.reload();
                }
                Some(()) = inputs.reload.recv() => {
                    self.changed_at = Instant::now();
                    // Asked for explicitly: read even if the content looks unchanged.
                    self.last_text = None;
                    self.reload();
                }
                Some(request) = inputs.commands.recv() => {
                    let answer = self.command(&request.service, request.command, &request.by);
                    let _ = request.reply.send(answer);
                }
                _ = pem_poll.tick(), if !self.pem_read.is_empty() => self.reload_if_pem_changed(),
                () = pem_changed(&mut pem_watch), if !self.pem_read.is_empty() => {
                    self.reload_if_pem_changed();
                }
                _ = client_changes.changed(), if self.state.awaiting_answers() => {
                    self.check_answered();
                }
                _ = sleep_until_opt(deadline) => {
                    self.changed_at = Instant::now();
                    self.reduce(Event::Tick);
                    self.start_checks();
                    self.start_gates();
                    self.publish();
                }
                Some((service, gate, answer)) = self.gates_in.recv() => {
                    self.checking.remove(&service);
                    self.changed_at = Instant::now();
                    self.reduce(Event::GateAnswered { service: &service, gate, answer: &answer });
                    self.publish();
                }
                Some((service, observation)) = self.checks_in.recv() => {
                    self.checking.remove(&service);
                    self.changed_at = Instant::now();
                    self.reduce(Event::Observed { service: &service, observation: &observation });
                    self.publish();
                }
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

    /// Reads the PEM files the file names again, and reloads if any changed (a rotation).
    fn reload_if_pem_changed(&mut self) {
        let paths = self.pem_read.keys().cloned().collect();
        if crate::watch::read_pem_files(&self.file, &paths) != self.pem_read {
            self.changed_at = Instant::now();
            self.last_text = None;
            self.reload();
        }
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
            let (figures, latency) = self
                .out
                .observer
                .figures(&service, &version, counted, since);
            let rollout = self.state.rollouts.get(&service).cloned();
            // The baseline over the same window, from the same reports.
            let baseline = rollout
                .as_ref()
                .and_then(Rollout::baseline)
                .filter(|_| analysis.baseline.is_some())
                .map(|stable| {
                    let (figures, baseline_latency) =
                        self.out.observer.figures(&service, stable, counted, since);
                    Baseline {
                        version: stable.to_owned(),
                        figures,
                        latency: [baseline_latency, latency],
                    }
                });
            let hooks = analysis.webhooks.clone();
            let tx = self.checks_out.clone();
            let http = self.http.clone();
            self.checking.insert(service.clone());
            tokio::spawn(async move {
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
        let parsed = spec::parse_bytes(&self.label, &text).and_then(|spec| {
            self.pem_read = crate::watch::read_pem_files(&self.file, &spec::pem_paths(&spec));
            let (spec, warnings) = spec::load_pem_files(
                spec,
                &self.label,
                &self.pem_read,
                std::time::SystemTime::now(),
            )?;
            for w in warnings {
                tracing::warn!("{}:{}:{}: {}", self.label, w.line, w.column, w.message);
            }
            Ok(spec)
        });
        self.last_text = Some(text);
        match parsed {
            Ok(spec) => {
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
                self.out.access.send_if_modified(|current| {
                    if **current == spec.access {
                        return false;
                    }
                    *current = Arc::new(spec.access.clone());
                    true
                });
                // A file can start, continue or end a rollout: logged and told like any step.
                self.rollout_events(&before);
                self.publish();
                self.out.status.reloaded();
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

    /// Plans and translates the current spec and publishes it if it differs from what is
    /// served.
    fn publish(&mut self) {
        let spec = self.spec.clone().expect("publish after a valid load");
        let started = Instant::now();
        let now = Timestamp::now();
        let plan = Arc::new(reconcile::plan(&spec, &self.state, now));
        // Every resource is encoded once, then each group's snapshot shares the bytes of its
        // part (a cluster two groups hold is encoded once for both and all of their streams).
        let everything = Snapshot::new(&translate(&plan));
        let encoded: usize = ResourceType::ALL
            .map(|ty| everything.resources(ty).len())
            .iter()
            .sum();
        let groups: BTreeMap<GroupId, Snapshot> = if plan.node_groups.is_targeted() {
            translate_groups(&plan)
                .into_iter()
                .map(|(group, resources)| (group, everything.select(&resources)))
                .collect()
        } else {
            BTreeMap::from([(GroupId::all(), everything)])
        };
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
            state: Arc::new(self.state.clone()),
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
        let Some(published) = self.out.published.borrow().clone() else {
            return;
        };
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let answered: BTreeSet<&GroupId> = published
            .groups()
            .filter(|(g, s)| self.out.clients.answered(g, &s.snapshot.version))
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
        if self.saved.as_ref() == Some(&self.state)
            || (self.saved.is_none() && self.state == RuntimeState::default())
        {
            return;
        }
        let path = self.state_file.path().display().to_string();
        match self.state_file.save(&self.state) {
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
