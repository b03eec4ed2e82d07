//! Wires the stages together: file → spec → resources → snapshot → xDS streams, plus the admin
//! API. Returns the addresses it actually bound so tests can ask for port 0.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::drain::Drainer;
use crate::retire::{RedBlack, Retiring};
use crate::snapshot::Snapshot;
use crate::spec::{self, Spec, SpecError, Strategy};
use crate::status::{MirrorReport, Registry, RetiringReport, ServiceReport};
use crate::translate::{Resources, translate_with};
use crate::watch::FileWatcher;
use crate::xds::server::{Ads, Cds, DiscoveryService, Eds, Lds, Rds, Shared};

/// Parses, validates and translates a deployment file's text into the snapshot a freshly
/// started server would serve (red-black services with only their active version). Pure.
pub fn compile(file_label: &str, text: &str) -> Result<Snapshot, SpecError> {
    Ok(Snapshot::new(&compile_resources(file_label, text)?))
}

/// The Envoy resources of [`compile`], before encoding.
pub fn compile_resources(file_label: &str, text: &str) -> Result<Resources, SpecError> {
    let spec = spec::parse(file_label, text)?;
    let mut red_black = RedBlack::default();
    red_black.on_spec(None, &spec);
    Ok(translate_with(&spec, &red_black.retired(&spec)))
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
    pub registry: Arc<Registry>,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
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
    let registry = Arc::new(Registry::new(opts.file.clone()));
    let (snapshot_tx, snapshots) = watch::channel(None);

    // Watch before the first read so that no change between the two is missed.
    let watcher = FileWatcher::new(&opts.file)?;
    let mut loader = Loader::new(
        opts.file.clone(),
        snapshot_tx,
        registry.clone(),
        Drainer::new(opts.drain_period),
    );
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
        snapshots: snapshots.clone(),
        registry: registry.clone(),
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
        .add_service(crate::xds::csds::server(registry.clone()));
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let admin_router = admin::router(AdminState {
        registry: registry.clone(),
        snapshots: snapshots.clone(),
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
        registry,
        snapshots,
        tasks,
    })
}

/// Reads the deployment file when it may have changed and publishes a snapshot when its content
/// did, or when a red-black retirement is due. A file that cannot be read or is invalid leaves
/// the last good snapshot in place.
struct Loader {
    file: PathBuf,
    label: String,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    registry: Arc<Registry>,
    last_text: Option<Vec<u8>>,
    spec: Option<Spec>,
    red_black: RedBlack,
    drainer: Drainer,
    /// When the change being applied was seen.
    changed_at: Instant,
}

impl Loader {
    fn new(
        file: PathBuf,
        snapshots: watch::Sender<Option<Arc<Snapshot>>>,
        registry: Arc<Registry>,
        drainer: Drainer,
    ) -> Loader {
        Loader {
            label: file.display().to_string(),
            file,
            snapshots,
            registry,
            last_text: None,
            spec: None,
            red_black: RedBlack::default(),
            drainer,
            changed_at: Instant::now(),
        }
    }

    async fn run(
        mut self,
        mut watcher: FileWatcher,
        mut reload_requests: mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        let mut registry_changes = self.registry.changes();
        loop {
            let deadline = [self.red_black.next_deadline(), self.drainer.next_deadline()]
                .into_iter()
                .flatten()
                .min();
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
                _ = registry_changes.changed(), if self.red_black.awaiting_ack() => {
                    self.check_synced();
                }
                _ = sleep_until_opt(deadline) => {
                    self.changed_at = Instant::now();
                    self.red_black.on_tick(self.changed_at);
                    self.publish();
                }
            }
        }
    }

    fn reload(&mut self) {
        let text = match std::fs::read(&self.file) {
            Ok(text) => text,
            Err(err) => {
                let msg = format!(
                    "{}: cannot read the file: {err}; still serving the last good config",
                    self.label
                );
                tracing::error!("{msg}");
                self.registry.reload_failed(msg);
                self.last_text = None;
                return;
            }
        };
        if self.last_text.as_deref() == Some(text.as_slice()) {
            return;
        }
        let parsed = spec::parse_bytes(&self.label, &text);
        self.last_text = Some(text);
        match parsed {
            Ok(spec) => {
                self.red_black.on_spec(self.spec.as_ref(), &spec);
                self.spec = Some(spec);
                let version = self.publish();
                self.registry.reloaded(&version);
                // With no Envoy connected, nothing needs to ACK.
                self.check_synced();
            }
            Err(err) => {
                tracing::error!(
                    "invalid deployment file, still serving the last good config:\n{err}"
                );
                self.registry.reload_failed(err.to_string());
            }
        }
    }

    /// Translates the current spec without the retired versions and publishes it if it differs
    /// from what is served. Returns the version served.
    fn publish(&mut self) -> String {
        let spec = self.spec.as_ref().expect("publish after a valid load");
        let started = std::time::Instant::now();
        let retired = self.red_black.retired(spec);
        let resources =
            self.drainer
                .apply(translate_with(spec, &retired), &retired, Instant::now());
        let snapshot = Snapshot::new(&resources);
        let snapshot_bytes = snapshot.encoded_len();
        let version = snapshot.version.clone();
        let changed = self.snapshots.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.version == version) {
                return false;
            }
            *current = Some(Arc::new(snapshot));
            true
        });
        if changed {
            tracing::info!(
                version,
                elapsed_us = started.elapsed().as_micros() as u64,
                retired = retired.len(),
                "config published"
            );
        }
        self.registry
            .serving(&version, self.changed_at, snapshot_bytes);
        self.report_services(&retired);
        version
    }

    fn check_synced(&mut self) {
        if !self.red_black.awaiting_ack() {
            return;
        }
        let (Some(spec), Some(version)) = (
            self.spec.as_ref(),
            self.snapshots.borrow().as_ref().map(|s| s.version.clone()),
        ) else {
            return;
        };
        if self.registry.all_synced_to(&version) {
            self.red_black.on_synced(spec, Instant::now());
            let retired = self.red_black.retired(spec);
            self.report_services(&retired);
        }
    }

    fn report_services(&self, retired: &BTreeSet<String>) {
        let Some(spec) = &self.spec else { return };
        let now = Instant::now();
        let services = spec
            .services
            .iter()
            .map(|(name, service)| {
                let retiring = self
                    .red_black
                    .kept(name)
                    .into_iter()
                    .flatten()
                    .map(|(version, state)| RetiringReport {
                        version: version.clone(),
                        awaiting_ack: *state == Retiring::AwaitingAck,
                        retires_in_seconds: match state {
                            Retiring::Until(t) => {
                                Some(t.saturating_duration_since(now).as_secs_f64())
                            }
                            Retiring::AwaitingAck => None,
                        },
                    })
                    .collect();
                let report = ServiceReport {
                    strategy: service.strategy.name(),
                    split: split(&service.strategy),
                    mirror: service.mirror.as_ref().map(|m| MirrorReport {
                        version: m.version.clone(),
                        percent: m.percent.as_f64(),
                    }),
                    rules: service.rules.len(),
                    deployed: service
                        .versions
                        .keys()
                        .filter(|v| !retired.contains(&Spec::cluster_name(name, v)))
                        .cloned()
                        .collect(),
                    retiring,
                    synced: false,
                };
                (name.clone(), report)
            })
            .collect();
        self.registry.set_services(services);
    }
}

/// Percent of answered requests per version.
fn split(strategy: &Strategy) -> BTreeMap<String, f64> {
    match strategy {
        Strategy::Canary {
            stable,
            canary,
            weight,
            ..
        } => BTreeMap::from([
            (stable.clone(), 100.0 - weight.as_f64()),
            (canary.clone(), weight.as_f64()),
        ]),
        other => other
            .serving_versions()
            .into_iter()
            .map(|v| (v.to_owned(), 100.0))
            .collect(),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
