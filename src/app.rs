//! Wires the stages together: file → spec → resources → snapshot → xDS streams, plus the admin
//! API. Returns the addresses it actually bound so tests can ask for port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminState};
use crate::metrics::Metrics;
use crate::node::GroupId;
use crate::reconcile::{self, Event, Plan, Previous, Role, RuntimeState, Timestamp};
use crate::snapshot::{Published, Snapshot};
use crate::spec::{self, Spec, SpecError};
use crate::status::{MirrorReport, RetiringReport, ServiceReport, Status};
use crate::translate::{Resources, translate};
use crate::watch::FileWatcher;
use crate::xds::clients::Clients;
use crate::xds::server::{Ads, Cds, DiscoveryService, Eds, Lds, Rds, Shared};

/// Parses, validates and translates a deployment file's text into the snapshot a freshly
/// started server with no runtime state would serve (red-black services with only their active
/// version). Pure.
pub fn compile(file_label: &str, text: &str) -> Result<Snapshot, SpecError> {
    Ok(Snapshot::new(&compile_resources(file_label, text)?))
}

/// The Envoy resources of [`compile`], before encoding.
pub fn compile_resources(file_label: &str, text: &str) -> Result<Resources, SpecError> {
    Ok(translate(&compile_plan(file_label, text)?))
}

/// The [`Plan`] of [`compile`].
pub fn compile_plan(file_label: &str, text: &str) -> Result<Plan, SpecError> {
    let spec = spec::parse(file_label, text)?;
    let now = Timestamp::now();
    let mut state = RuntimeState::default();
    state.reduce(
        &spec,
        Event::FileLoaded {
            previous: Previous::Start,
            drain_period: Duration::ZERO,
        },
        now,
    );
    Ok(reconcile::plan(&spec, &state, now))
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub file: PathBuf,
    pub ads: SocketAddr,
    pub admin: SocketAddr,
    /// How long removed endpoints and versions stay in Envoy as `DRAINING`.
    pub drain_period: Duration,
    /// Bearer token for mutating admin calls from other hosts than loopback.
    pub admin_token: Option<String>,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub ads_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// What every connected client holds.
    pub clients: Arc<Clients>,
    /// The status read model (`GET /status`).
    pub status: Arc<Status>,
    /// What the xDS streams converge to.
    pub published: watch::Receiver<Option<Arc<Published>>>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Server {
    /// Runs until a task fails (an error) or all of them end.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            done.context("a server task panicked")??;
        }
        Ok(())
    }
}

pub async fn start(opts: ServeOptions) -> anyhow::Result<Server> {
    let metrics = Arc::new(Metrics::new());
    let clients = Arc::new(Clients::new(metrics.clone()));
    let (published_tx, published) = watch::channel(None);
    let status = Arc::new(Status::new(
        opts.file.clone(),
        clients.clone(),
        published.clone(),
        metrics.clone(),
    ));

    // Watch before the first read so that no change between the two is missed.
    let watcher = FileWatcher::new(&opts.file)?;
    let mut loader = Loader {
        label: opts.file.display().to_string(),
        file: opts.file.clone(),
        published: published_tx,
        status: status.clone(),
        clients: clients.clone(),
        metrics,
        last_text: None,
        spec: None,
        state: RuntimeState::default(),
        drain_period: opts.drain_period,
        changed_at: Instant::now(),
    };
    loader.reload();

    let ads_listener = TcpListener::bind(opts.ads).await.with_context(|| {
        format!(
            "cannot bind the ADS address {}; is another cutover running? choose another with --ads",
            opts.ads
        )
    })?;
    let admin_listener = TcpListener::bind(opts.admin).await.with_context(|| {
        format!(
            "cannot bind the admin address {}; choose another with --admin",
            opts.admin
        )
    })?;
    let ads_addr = ads_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let shared = Shared {
        published: published.clone(),
        clients: clients.clone(),
    };
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(DiscoveryService::<Ads>::new(shared.clone()))
        .add_service(DiscoveryService::<Cds>::new(shared.clone()))
        .add_service(DiscoveryService::<Eds>::new(shared.clone()))
        .add_service(DiscoveryService::<Lds>::new(shared.clone()))
        .add_service(DiscoveryService::<Rds>::new(shared))
        .add_service(crate::xds::csds::server(clients.clone()));
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let admin_router = admin::router(AdminState {
        status: status.clone(),
        published: published.clone(),
        reload: reload_tx,
        token: opts.admin_token.clone(),
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        grpc.serve_with_incoming(TcpListenerStream::new(ads_listener))
            .await
            .context("the xDS server stopped")
    });
    tasks.spawn(async move {
        axum::serve(
            admin_listener,
            admin_router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .context("the admin server stopped")
    });
    tasks.spawn(loader.run(watcher, reload_rx));
    tracing::info!(ads = %ads_addr, admin = %admin_addr, file = %opts.file.display(), "cutover serving");
    Ok(Server {
        ads_addr,
        admin_addr,
        clients,
        status,
        published,
        tasks,
    })
}

/// Reads the deployment file when it may have changed and publishes a snapshot when its content
/// did, or when a deadline of the runtime state passed. A file that cannot be read or is invalid
/// leaves the last good snapshot in place.
struct Loader {
    file: PathBuf,
    label: String,
    published: watch::Sender<Option<Arc<Published>>>,
    status: Arc<Status>,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
    last_text: Option<String>,
    spec: Option<Spec>,
    state: RuntimeState,
    drain_period: Duration,
    /// When the change being applied was seen.
    changed_at: Instant,
}

impl Loader {
    async fn run(
        mut self,
        mut watcher: FileWatcher,
        mut reload_requests: mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        let mut client_changes = self.clients.changes();
        loop {
            let deadline = self
                .spec
                .as_ref()
                .and_then(|spec| self.state.next_deadline(spec))
                .map(|t| Instant::now() + t.since(Timestamp::now()));
            tokio::select! {
                changed = watcher.changed() => {
                    self.changed_at = changed?.into_std();
                    self.reload();
                }
                Some(()) = reload_requests.recv() => {
                    self.changed_at = Instant::now();
                    // Asked for explicitly: read even if the content looks unchanged.
                    self.last_text = None;
                    self.reload();
                }
                _ = client_changes.changed(), if self.state.awaiting_answers() => {
                    self.check_answered();
                }
                _ = sleep_until_opt(deadline) => {
                    self.changed_at = Instant::now();
                    self.reduce(Event::Tick);
                    self.publish();
                }
            }
        }
    }

    fn reduce(&mut self, event: Event<'_>) {
        if let Some(spec) = &self.spec {
            self.state.reduce(spec, event, Timestamp::now());
        }
    }

    fn reload(&mut self) {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(err) => {
                let msg = format!(
                    "{}: cannot read the file: {err}; still serving the last good config",
                    self.label
                );
                tracing::error!("{msg}");
                self.status.reload_failed(msg);
                self.last_text = None;
                return;
            }
        };
        if self.last_text.as_deref() == Some(text.as_str()) {
            return;
        }
        let parsed = spec::parse(&self.label, &text);
        self.last_text = Some(text);
        match parsed {
            Ok(spec) => {
                let previous = self.spec.replace(spec);
                let spec = self.spec.as_ref().expect("just set");
                self.state.reduce(
                    spec,
                    Event::FileLoaded {
                        previous: previous.as_ref().map_or(Previous::Start, Previous::File),
                        drain_period: self.drain_period,
                    },
                    Timestamp::now(),
                );
                self.publish();
                self.status.reloaded();
                // With no Envoy connected, nothing needs to ACK.
                self.check_answered();
            }
            Err(err) => {
                tracing::error!(
                    "invalid deployment file, still serving the last good config:\n{err}"
                );
                self.status.reload_failed(err.to_string());
            }
        }
    }

    /// Plans and translates the current spec and publishes it if it differs from what is
    /// served.
    fn publish(&mut self) {
        let spec = self.spec.as_ref().expect("publish after a valid load");
        let started = std::time::Instant::now();
        let now = Timestamp::now();
        let plan = reconcile::plan(spec, &self.state, now);
        let snapshot = Snapshot::new(&translate(&plan));
        let groups = std::collections::BTreeMap::from([(GroupId::all(), snapshot)]);
        let previous = self.published.borrow().clone();
        let next = Published::new(groups, self.changed_at, previous.as_deref());
        self.metrics.snapshot_bytes.set(next.encoded_len() as i64);
        let version = next.version.clone();
        let changed = self.published.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.version == version) {
                return false;
            }
            *current = Some(Arc::new(next));
            true
        });
        if changed {
            tracing::info!(
                version,
                elapsed_us = started.elapsed().as_micros() as u64,
                "config published"
            );
        }
        self.report_services(spec, &plan, now);
    }

    /// Red-black retirements wait until every Envoy has answered the current config.
    fn check_answered(&mut self) {
        if !self.state.awaiting_answers() {
            return;
        }
        let Some(published) = self.published.borrow().clone() else {
            return;
        };
        let answered = published
            .groups()
            .all(|(g, s)| self.clients.answered(g, &s.snapshot.version));
        let Some(spec) = &self.spec else { return };
        if answered {
            let services: std::collections::BTreeSet<String> =
                spec.services.keys().cloned().collect();
            self.state.reduce(
                spec,
                Event::Answered {
                    services: &services,
                },
                Timestamp::now(),
            );
            self.publish();
        }
    }

    fn report_services(&self, spec: &Spec, plan: &Plan, now: Timestamp) {
        let services = plan
            .services
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
                    synced: false,
                };
                (name.clone(), report)
            })
            .collect();
        self.status.set_services(services);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
