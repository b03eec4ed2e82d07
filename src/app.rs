//! Wires the stages together: the controller (file → spec → plan → resources → snapshots), the
//! xDS server and the admin API. Returns the addresses it actually bound so tests can ask for
//! port 0. Also the pure compile path the CLI commands share with the server: from a file's
//! text ([`compile`], [`compile_plan`]) or, for a file already parsed, from its [`Spec`]
//! ([`fresh_plan`], [`plan_at`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;

use crate::access::Access;
use crate::admin::{self, AdminState};
use crate::controller::{self, Inputs, Outputs, Settings, Store};
use crate::dashboard::Feed;
use crate::metrics::Metrics;
use crate::node::{GroupId, NodeInfo};
use crate::reconcile::{self, Event, Plan, Previous, RuntimeState, Timestamp};
use crate::replica::ClusterOptions;
use crate::snapshot::{Published, Snapshot};
use crate::spec::{self, Spec, SpecError};
use crate::status::Status;
use crate::store::StateFile;
use crate::telemetry::Telemetry;
use crate::tls::{Tls, TlsFiles};
use crate::translate::{Resources, translate};
use crate::xds::clients::Clients;
use crate::xds::limits::{ClientLimits, NoiseLog, StreamSlots};
use crate::xds::server::{Ads, Cds, DiscoveryService, Eds, Lds, NodeAllowList, Rds, Shared};

/// Parses, validates and translates a deployment file's text into the snapshot a freshly
/// started server with no runtime state would serve (red-black services with only their active
/// version). Pure.
pub fn compile(file_label: &str, text: &str) -> Result<Snapshot, SpecError> {
    Ok(fresh_snapshot(&spec::parse(file_label, text)?))
}

/// The Envoy resources of [`compile`], before encoding.
pub fn compile_resources(file_label: &str, text: &str) -> Result<Resources, SpecError> {
    Ok(translate(&compile_plan(file_label, text)?))
}

/// The [`Plan`] of [`compile`].
pub fn compile_plan(file_label: &str, text: &str) -> Result<Plan, SpecError> {
    Ok(fresh_plan(&spec::parse(file_label, text)?))
}

/// The snapshot a freshly started server serves for a parsed file ([`compile`] without the
/// parse).
pub fn fresh_snapshot(spec: &Spec) -> Snapshot {
    Snapshot::new(&translate(&fresh_plan(spec)))
}

/// The [`Plan`] a freshly started server with no runtime state serves for a parsed file.
pub fn fresh_plan(spec: &Spec) -> Plan {
    plan_at(spec, RuntimeState::default(), Timestamp::now())
}

/// The [`Plan`] a server started on `spec` with runtime `state` serves at `now` (what
/// `cutover render --state` shows).
pub fn plan_at(spec: &Spec, mut state: RuntimeState, now: Timestamp) -> Plan {
    state.reduce(
        spec,
        Event::FileLoaded {
            previous: Previous::Start,
            drain_period: Duration::ZERO,
        },
        now,
    );
    reconcile::plan(spec, &state, now)
}

/// What an Envoy with `node` gets from `plan`: its group, and that group's resources (none
/// for a node no group matches).
pub fn resources_for_node(plan: &Plan, node: &NodeInfo) -> (GroupId, Resources) {
    let group = plan.node_groups.group_of(node);
    let resources = plan
        .groups
        .get(&group)
        .map(|g| crate::translate::translate_group(plan, g))
        .unwrap_or_default();
    (group, resources)
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
    /// The runtime state file; `None`: `<file>.state.json` beside the deployment file.
    pub state_file: Option<PathBuf>,
    /// Node ids (globs) that may get config; everyone when empty.
    pub allow_nodes: Vec<String>,
    /// Start without a valid deployment file and wait for one; else such a start fails.
    pub wait_for_file: bool,
    /// What clients may make cutover hold, and how fast dead peers are found.
    pub clients: ClientLimits,
    /// Load reports a second this cutover takes: beyond, Envoys are asked to report less often.
    pub load_reports_per_second: usize,
    /// Serve the xDS port over TLS (mutual TLS with a client CA); plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// Cluster mode: a replica of several on etcd; the state file is not used.
    pub cluster: Option<ClusterOptions>,
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
    /// What every Envoy reports over its stats sink and load reporting streams.
    pub telemetry: Telemetry,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Set to `true` (or dropped with the server): the controller saves its state and stops,
    /// streams end, servers stop accepting.
    shutdown: watch::Sender<bool>,
    controller_done: oneshot::Receiver<anyhow::Result<()>>,
}

impl Server {
    /// Runs until a task or the controller fails (an error) or they all end.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.run_until(std::future::pending(), Duration::ZERO).await
    }

    /// Runs until a task or the controller fails, or `signal` completes; then the controller
    /// saves the runtime state and stops (waited for at most `grace`).
    pub async fn run_until(
        mut self,
        signal: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let controller = async |done: &mut oneshot::Receiver<anyhow::Result<()>>| {
            done.await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the controller thread ended")))
        };
        tokio::select! {
            res = async {
                while let Some(done) = self.tasks.join_next().await {
                    done.context("a server task panicked")??;
                }
                anyhow::Ok(())
            } => return res,
            res = controller(&mut self.controller_done) => return res,
            () = signal => {}
        }
        self.shutdown.send_replace(true);
        let stopped = async {
            let saved = controller(&mut self.controller_done).await;
            while let Some(done) = self.tasks.join_next().await {
                done.context("a server task panicked")??;
            }
            saved
        };
        match tokio::time::timeout(grace, stopped).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("not everything stopped within {grace:?}; exiting anyway");
                Ok(())
            }
        }
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "the wiring, stage by stage in the order they must start"
)]
pub async fn start(opts: ServeOptions) -> anyhow::Result<Server> {
    let metrics = Arc::new(Metrics::new());
    // Telemetry streams are bounded by --max-streams with every other gRPC stream (an Envoy
    // opens up to three); a lower cap of their own would refuse a fleet's reports, and a
    // refused load reporting stream comes back every 5 s with Envoy's whole node (60 KB).
    let telemetry = Telemetry::new(crate::telemetry::Limits {
        load_reports_per_second: opts.load_reports_per_second,
        max_streams: opts.clients.max_streams,
        ..crate::telemetry::Limits::default()
    });
    let clients = Arc::new(Clients::new(metrics.clone()));
    let slots = Arc::new(StreamSlots::new(opts.clients.max_streams, &metrics));
    let (published_tx, published) = watch::channel(None);
    let status = Arc::new(Status::new(
        opts.file.clone(),
        clients.clone(),
        published.clone(),
        metrics.clone(),
    ));
    status.set_stream_slots(slots.clone());

    // Loaded before anything starts: TLS that was asked for and cannot be used stops the start.
    let tls = match &opts.tls {
        Some(files) => Some(Tls::load(files.clone()).context("cannot serve TLS")?),
        None => None,
    };
    let ads_listener = TcpListener::bind(opts.ads).await.with_context(|| {
        format!(
            "cannot bind the ADS address {}; is another cutover running? choose another with --ads",
            opts.ads
        )
    })?;
    check_admin_access(opts.admin, opts.admin_token.as_deref())?;
    let admin_listener = TcpListener::bind(opts.admin).await.with_context(|| {
        format!(
            "cannot bind the admin address {}; choose another with --admin",
            opts.admin
        )
    })?;
    let ads_addr = ads_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (access_tx, access) = watch::channel(Arc::new(Access::default()));
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (commands_tx, commands_rx) = mpsc::channel(8);
    // Set once, when cutover shuts down: the controller saves its state and stops, xDS and
    // telemetry streams end, the servers stop accepting.
    let (shutdown, shutdown_rx) = watch::channel(false);
    let closing_rx = shutdown_rx.clone();
    let store = match &opts.cluster {
        None => Store::File(
            opts.state_file
                .clone()
                .map_or_else(|| StateFile::beside(&opts.file), StateFile::new),
        ),
        Some(cluster) => {
            let mut cluster = cluster.clone();
            if cluster.admin_url.is_empty() {
                cluster.admin_url = format!("http://{admin_addr}");
            }
            Store::Cluster(
                join_cluster(cluster, &status, &clients, &published, &shutdown_rx).await?,
            )
        }
    };
    let controller_done = controller::spawn(
        Settings {
            file: opts.file.clone(),
            store,
            drain_period: opts.drain_period,
        },
        Outputs {
            published: published_tx,
            status: status.clone(),
            clients: clients.clone(),
            metrics,
            observer: Arc::new(controller::TelemetryObserver(telemetry.clone())),
            access: access_tx,
        },
        Inputs {
            reload: reload_rx,
            commands: commands_rx,
            shutdown: shutdown_rx,
        },
    )
    .await?;
    // A replica serves the cluster's record, which a leader may write any moment.
    if !opts.wait_for_file && opts.cluster.is_none() && !status.ready() {
        let why = status
            .report()
            .last_reload
            .and_then(|r| r.error)
            .unwrap_or_else(|| "no valid config".to_owned());
        anyhow::bail!(
            "{why}\ncannot start without a valid deployment file: fix it, or start with --wait-for-file to serve as soon as it is valid"
        );
    }

    let shared = Shared {
        published: published.clone(),
        clients: clients.clone(),
        allowed: Arc::new(NodeAllowList::new(&opts.allow_nodes).map_err(anyhow::Error::msg)?),
        closing: closing_rx.clone(),
        limits: opts.clients,
        slots: slots.clone(),
        noise: Arc::new(NoiseLog::default()),
        access: access.clone(),
        sent: Arc::default(),
    };
    let mutual_tls = tls.as_ref().is_some_and(|t| t.mutual());
    if !mutual_tls && !access.borrow().rules.is_empty() {
        tracing::warn!(
            "the deployment file has `access:` rules, but they are only enforced with mutual TLS \
             (--tls-client-ca); any client may use any node id"
        );
    }
    let max_message = opts.clients.max_message_bytes;
    // HTTP/2 PINGs find a peer that vanished without a FIN (a host powered off, a NAT or
    // firewall that forgot the connection): its streams end and it leaves /status.
    let mut builder = tonic::transport::Server::builder();
    if let Some(age) = opts.clients.max_stream_age.filter(|a| !a.is_zero()) {
        // GOAWAY at `age`; the xDS stream ends a little later (`ClientLimits::stream_age`)
        // and the telemetry streams at the grace's end: each reconnects on a new connection.
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(age / 5);
    }
    let grpc = builder
        .http2_keepalive_interval(Some(opts.clients.keepalive_interval))
        .http2_keepalive_timeout(Some(opts.clients.keepalive_timeout))
        .add_service(DiscoveryService::<Ads>::new(shared.clone()))
        .add_service(DiscoveryService::<Cds>::new(shared.clone()))
        .add_service(DiscoveryService::<Eds>::new(shared.clone()))
        .add_service(DiscoveryService::<Lds>::new(shared.clone()))
        .add_service(DiscoveryService::<Rds>::new(shared))
        .add_service(crate::xds::csds::server(clients.clone(), access.clone()))
        .add_service(telemetry.metrics_service(slots.clone(), access.clone(), max_message))
        .add_service(telemetry.load_reporting_service(slots, access, max_message));
    let (dashboard, sampler) = Feed::new(status.clone(), telemetry.clone());
    let admin_router = admin::router(AdminState {
        status: status.clone(),
        published: published.clone(),
        reload: reload_tx,
        commands: commands_tx,
        token: opts.admin_token.clone(),
        telemetry: telemetry.clone(),
        dashboard,
    });

    let closed = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|closing| *closing).await;
    };
    let mut tasks = JoinSet::new();
    // TCP keepalive as well: it also covers a connection whose HTTP/2 is not yet up.
    let incoming = TcpIncoming::from(ads_listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(opts.clients.dead_peer_after()));
    match tls {
        Some(tls) => {
            tasks.spawn({
                let tls = tls.clone();
                let closing = closing_rx.clone();
                async move {
                    tls.watch(closing).await;
                    Ok(())
                }
            });
            let incoming = crate::tls::incoming(incoming, tls);
            let grpc_closed = closed(closing_rx.clone());
            tasks.spawn(async move {
                grpc.serve_with_incoming_shutdown(incoming, grpc_closed)
                    .await
                    .context("the xDS server stopped")
            });
        }
        None => {
            tasks.spawn(grpc_task(grpc, incoming, closed(closing_rx.clone())));
        }
    }
    // The sampler stops on closing, which ends every dashboard's event stream: the admin
    // server's graceful shutdown waits for open connections, and those would never end.
    let sampler_closed = closed(closing_rx.clone());
    tasks.spawn(async move {
        sampler.run(sampler_closed).await;
        Ok(())
    });
    let admin_closed = closed(closing_rx.clone());
    tasks.spawn(async move {
        axum::serve(
            admin_listener,
            admin_router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(admin_closed)
        .await
        .context("the admin server stopped")
    });
    let telemetry_closing = telemetry.clone();
    let mut telemetry_closed = closing_rx;
    tasks.spawn(async move {
        let _ = telemetry_closed.wait_for(|closing| *closing).await;
        telemetry_closing.close_streams();
        Ok(())
    });

    tracing::info!(ads = %ads_addr, admin = %admin_addr, file = %opts.file.display(), "cutover serving");
    Ok(Server {
        ads_addr,
        admin_addr,
        clients,
        status,
        published,
        telemetry,
        tasks,
        shutdown,
        controller_done,
    })
}

/// Starts this replica's part of the cluster.
#[cfg(feature = "cluster")]
async fn join_cluster(
    options: ClusterOptions,
    status: &Arc<Status>,
    clients: &Arc<Clients>,
    published: &watch::Receiver<Option<Arc<Published>>>,
    closing: &watch::Receiver<bool>,
) -> anyhow::Result<crate::replica::Link> {
    crate::cluster::replica::start(
        options,
        status.clone(),
        clients.clone(),
        published.clone(),
        closing.clone(),
    )
    .await
    .context("cannot join the cluster")
}

#[cfg(not(feature = "cluster"))]
async fn join_cluster(
    _: ClusterOptions,
    _: &Arc<Status>,
    _: &Arc<Clients>,
    _: &watch::Receiver<Option<Arc<Published>>>,
    _: &watch::Receiver<bool>,
) -> anyhow::Result<crate::replica::Link> {
    anyhow::bail!(
        "this cutover was built without cluster mode (--etcd): build it with `cargo build --release --features cluster` (needs protoc)"
    )
}

/// Refuses an admin API that other hosts can reach without a token. Such a bind is meant to be
/// used from them, and without a token every change from there (`/reload`, a rollback) would
/// be refused, found out only when it is needed; the token makes who may change what explicit.
fn check_admin_access(admin: SocketAddr, token: Option<&str>) -> anyhow::Result<()> {
    if admin.ip().is_loopback() || token.is_some_and(|t| !t.trim().is_empty()) {
        return Ok(());
    }
    anyhow::bail!(
        "the admin API would listen on {admin}, which other hosts can reach, without a token: \
         set --admin-token (or CUTOVER_ADMIN_TOKEN) to a secret that callers from other hosts \
         must present to /reload and /rollouts, or bind --admin to loopback (127.0.0.1:19000)"
    )
}

/// The xDS server until `closed`: then it stops accepting and waits for its connections to end
/// (every stream is ended by the same signal).
async fn grpc_task(
    grpc: tonic::transport::server::Router,
    incoming: TcpIncoming,
    closed: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    grpc.serve_with_incoming_shutdown(incoming, closed)
        .await
        .context("the xDS server stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_api_beyond_loopback_needs_a_token() {
        let any: SocketAddr = "0.0.0.0:19000".parse().unwrap();
        let err = check_admin_access(any, None).unwrap_err().to_string();
        assert!(
            err.contains("0.0.0.0:19000")
                && err.contains("--admin-token")
                && err.contains("CUTOVER_ADMIN_TOKEN"),
            "{err}"
        );
        assert!(
            check_admin_access(any, Some("  ")).is_err(),
            "a blank token is none"
        );
        assert!(check_admin_access(any, Some("s3cret")).is_ok());
        assert!(check_admin_access("192.0.2.7:19000".parse().unwrap(), None).is_err());
        assert!(check_admin_access("127.0.0.1:19000".parse().unwrap(), None).is_ok());
        assert!(check_admin_access("[::1]:19000".parse().unwrap(), None).is_ok());
    }
}
