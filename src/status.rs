//! What cutover knows about itself and its clients: the last reload and every connected stream
//! with the versions its Envoy has ACKed, has pending and has rejected.
//!
//! Streams report here after each step; the admin API and tests read it. Waiters can subscribe
//! to [`Registry::changes`] instead of polling.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{Metrics, ResultLabel};
use crate::xds::ResourceType;
use crate::xds::sotw::{Event, Mode, NodeInfo, Stream, StreamView, TypeStatus};

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
}

#[derive(Debug, Clone, Serialize)]
pub struct MirrorReport {
    pub version: String,
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub file: String,
    pub config_version: Option<String>,
    pub last_reload: Option<ReloadStatus>,
    pub services: BTreeMap<String, ServiceReport>,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Default)]
struct Inner {
    file: PathBuf,
    config_version: Option<String>,
    /// When the change that produced `config_version` was seen (the file event).
    changed_at: Option<Instant>,
    last_reload: Option<ReloadStatus>,
    services: BTreeMap<String, ServiceReport>,
    next_id: u64,
    streams: BTreeMap<u64, NodeReport>,
    /// What each stream's Envoy holds, resource by resource (for CSDS).
    held: BTreeMap<u64, StreamResources>,
}

/// The resources one stream's Envoy holds, for CSDS (shared with the stream, listed on demand).
#[derive(Debug, Clone, Default)]
pub struct StreamResources {
    pub node: NodeInfo,
    pub view: StreamView,
}

/// Shared, thread-safe status of the whole server.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    pub metrics: Metrics,
}

impl Registry {
    pub fn new(file: PathBuf) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                file,
                ..Default::default()
            }),
            changes: watch::Sender::new(0),
            metrics: Metrics::new(),
        }
    }

    /// Bumped on every change; `changed().await` on a receiver wakes after one.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let r = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut inner)
        };
        self.changes.send_modify(|n| *n += 1);
        r
    }

    pub fn set_services(&self, services: BTreeMap<String, ServiceReport>) {
        self.with(|i| i.services = services);
    }

    /// Whether every connected Envoy has ACKed everything of `version` (true with none).
    pub fn all_synced_to(&self, version: &str) -> bool {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.streams
            .values()
            .all(|s| s.in_sync && s.config_version.as_deref() == Some(version))
    }

    /// Records the config version now served (a reload or a retirement), caused by a change
    /// seen at `changed_at`, and its encoded size.
    pub fn serving(&self, version: &str, changed_at: Instant, bytes: usize) {
        self.metrics.snapshot_bytes.set(bytes as i64);
        self.with(|i| {
            if i.config_version.as_deref() != Some(version) {
                i.config_version = Some(version.to_owned());
                i.changed_at = Some(changed_at);
            }
        });
    }

    pub fn reloaded(&self, version: &str) {
        self.metrics
            .reloads
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        self.with(|i| {
            i.config_version = Some(version.to_owned());
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

    pub fn connect(&self, mode: Mode, peer: Option<SocketAddr>) -> u64 {
        self.with(|i| {
            i.next_id += 1;
            let id = i.next_id;
            self.metrics.streams.inc();
            i.streams.insert(
                id,
                NodeReport {
                    id: String::new(),
                    cluster: String::new(),
                    address: peer.map(|p| p.to_string()),
                    stream: match mode {
                        Mode::Aggregated => "ads".to_owned(),
                        Mode::Single(ty) => ty.short().to_owned(),
                    },
                    connected_since: now(),
                    config_version: None,
                    in_sync: false,
                    types: BTreeMap::new(),
                },
            );
            id
        })
    }

    pub fn update(&self, id: u64, stream: &Stream, events: &[Event]) {
        self.with(|i| {
            for e in events {
                if let Event::Nack { ty, .. } = e {
                    self.metrics.nacks.get_or_create(&(*ty).into()).inc();
                }
            }
            i.held.insert(
                id,
                StreamResources {
                    node: stream.node().cloned().unwrap_or_default(),
                    view: stream.view(),
                },
            );
            let (config_version, changed_at) = (i.config_version.clone(), i.changed_at);
            let Some(report) = i.streams.get_mut(&id) else {
                return;
            };
            let was_synced = report.in_sync && report.config_version == config_version;
            let mut new_node = false;
            if let Some(node) = stream.node()
                && report.id != node.id
            {
                report.id.clone_from(&node.id);
                report.cluster.clone_from(&node.cluster);
                new_node = true;
            }
            report.in_sync = stream.in_sync();
            report.config_version = stream.snapshot_version().map(str::to_owned);
            if !was_synced
                && report.in_sync
                && report.config_version == config_version
                && let Some(at) = changed_at
            {
                self.metrics
                    .save_to_ack_seconds
                    .observe(at.elapsed().as_secs_f64());
            }
            for ty in ResourceType::ALL {
                let TypeStatus {
                    acked,
                    pending,
                    last_nack,
                } = stream.status(ty);
                if acked.is_none() && pending.is_none() && last_nack.is_none() {
                    continue;
                }
                let previous = report
                    .types
                    .get(ty.short())
                    .and_then(|t| t.last_nack.clone());
                let last_nack = last_nack.map(|n| match previous {
                    Some(p) if p.version == n.version && p.error == n.error => p,
                    _ => NackStatus {
                        version: n.version,
                        error: n.error,
                        at: now(),
                    },
                });
                report.types.insert(
                    ty.short(),
                    TypeReport {
                        acked,
                        pending,
                        last_nack,
                    },
                );
            }
            // Counting distinct nodes walks every stream: only when a node is first known.
            if new_node {
                self.count_envoys(i);
            }
        });
    }

    pub fn pushed(&self, ty: ResourceType) {
        self.metrics.pushes.get_or_create(&ty.into()).inc();
    }

    pub fn disconnect(&self, id: u64) {
        self.metrics.streams.dec();
        self.with(|i| {
            i.streams.remove(&id);
            i.held.remove(&id);
            self.count_envoys(i);
        });
    }

    fn count_envoys(&self, i: &Inner) {
        let nodes: std::collections::BTreeSet<&str> = i
            .streams
            .values()
            .filter(|s| !s.id.is_empty())
            .map(|s| s.id.as_str())
            .collect();
        self.metrics.envoys.set(nodes.len() as i64);
    }

    /// What every connected Envoy holds, resource by resource.
    pub fn held_resources(&self) -> Vec<StreamResources> {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.held.values().cloned().collect()
    }

    pub fn report(&self) -> StatusReport {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        StatusReport {
            file: i.file.display().to_string(),
            config_version: i.config_version.clone(),
            last_reload: i.last_reload.clone(),
            services: {
                let synced = all_synced(&i);
                let mut services = i.services.clone();
                for s in services.values_mut() {
                    s.synced = synced;
                }
                services
            },
            nodes: i.streams.values().cloned().collect(),
        }
    }

    /// Number of connected streams whose Envoy is in sync with the current config version.
    pub fn in_sync_count(&self) -> (usize, usize) {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let synced = i.streams.values().filter(|s| s.in_sync).count();
        (synced, i.streams.len())
    }
}

fn all_synced(i: &Inner) -> bool {
    i.streams
        .values()
        .all(|s| s.in_sync && s.config_version == i.config_version)
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
