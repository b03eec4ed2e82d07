//! Wires the stages together: file → spec → resources → snapshot → xDS streams, plus the admin
//! API. Returns the addresses it actually bound so tests can ask for port 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminState};
use crate::snapshot::Snapshot;
use crate::spec::{self, SpecError};
use crate::status::Registry;
use crate::translate::translate;
use crate::watch::FileWatcher;
use crate::xds::server::{Ads, Cds, DiscoveryService, Eds, Lds, Rds, Shared};

/// Parses, validates and translates a deployment file's text into a snapshot. Pure.
pub fn compile(file_label: &str, text: &str) -> Result<Snapshot, SpecError> {
    let spec = spec::parse(file_label, text)?;
    Ok(Snapshot::new(&translate(&spec)))
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub file: PathBuf,
    pub ads: SocketAddr,
    pub admin: SocketAddr,
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
    let mut loader = Loader::new(opts.file.clone(), snapshot_tx, registry.clone());
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
        .add_service(DiscoveryService::<Rds>::new(shared));
    let admin_router = admin::router(AdminState {
        registry: registry.clone(),
        snapshots: snapshots.clone(),
    });

    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        grpc.serve_with_incoming(TcpListenerStream::new(ads_listener))
            .await
            .context("the xDS server stopped")
    });
    tasks.spawn(async move {
        axum::serve(admin_listener, admin_router)
            .await
            .context("the admin server stopped")
    });
    tasks.spawn(loader.run(watcher));
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
/// did. A file that cannot be read or is invalid leaves the last good snapshot in place.
struct Loader {
    file: PathBuf,
    label: String,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    registry: Arc<Registry>,
    last_text: Option<String>,
}

impl Loader {
    fn new(
        file: PathBuf,
        snapshots: watch::Sender<Option<Arc<Snapshot>>>,
        registry: Arc<Registry>,
    ) -> Loader {
        Loader {
            label: file.display().to_string(),
            file,
            snapshots,
            registry,
            last_text: None,
        }
    }

    async fn run(mut self, mut watcher: FileWatcher) -> anyhow::Result<()> {
        loop {
            watcher.changed().await?;
            self.reload();
        }
    }

    fn reload(&mut self) {
        let text = match read(&self.file) {
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
        if self.last_text.as_deref() == Some(text.as_str()) {
            return;
        }
        let started = std::time::Instant::now();
        let result = compile(&self.label, &text);
        self.last_text = Some(text);
        match result {
            Ok(snapshot) => {
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
                        "config loaded"
                    );
                }
                self.registry.reloaded(&version);
            }
            Err(err) => {
                tracing::error!(
                    "invalid deployment file, still serving the last good config:\n{err}"
                );
                self.registry.reload_failed(err.to_string());
            }
        }
    }
}

fn read(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}
