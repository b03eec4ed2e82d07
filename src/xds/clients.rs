//! One view of every connected client, whatever protocol it speaks: what it holds of each type
//! (ACKed, pending, rejected with Envoy's text), which group's config it converges to and how
//! far it got.
//!
//! Protocol machines describe their client with a [`ClientView`] and a [`SyncState`]; the
//! server's stream tasks write them here after every step. Status, CSDS, metrics and the
//! controller's gates (red-black retirement waits for [`Clients::answered`]) read it. Waiters
//! subscribe to [`Clients::changes`] instead of polling.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::limits::gauge;
use super::{Event, Mode, ResourceType};
use crate::metrics::Metrics;
use crate::node::{GroupId, NodeInfo};
use crate::snapshot::{ByType, Resource};

/// Resources shared (not copied) between a protocol machine and this view.
pub type ResourceMap = Arc<BTreeMap<String, Resource>>;

/// Resources a client holds or was sent, under one version.
#[derive(Debug, Clone)]
pub struct Held {
    pub version: String,
    pub resources: ResourceMap,
}

/// Sets recently sent to any client, by type and version (state of the world: clusters). A
/// state-of-the-world client that reconnects says only the version it holds of each type; this
/// tells what that was, so that the clusters its routes may still use are kept until it has
/// routes without them (make-before-break across a reconnect, including the clusters kept for
/// routes it rejected).
/// Shared by every stream of one cutover, bounded (the oldest go first), gone after a restart.
#[derive(Debug, Default)]
pub struct SentSets {
    inner: Mutex<SentInner>,
}

#[derive(Debug, Default)]
struct SentInner {
    sets: std::collections::HashMap<(ResourceType, String), ResourceMap>,
    order: std::collections::VecDeque<(ResourceType, String)>,
}

impl SentSets {
    /// Sets remembered: enough for every version and kept set of a few dozen config versions.
    pub const KEPT: usize = 256;

    /// Remembers that `resources` were sent as `version` of `ty` (shared, not copied).
    pub fn record(&self, ty: ResourceType, version: &str, resources: &ResourceMap) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (ty, version.to_owned());
        if inner.sets.contains_key(&key) {
            return;
        }
        inner.sets.insert(key.clone(), resources.clone());
        inner.order.push_back(key);
        while inner.order.len() > Self::KEPT {
            if let Some(oldest) = inner.order.pop_front() {
                inner.sets.remove(&oldest);
            }
        }
    }

    /// What was sent as `version` of `ty`, if it is still remembered.
    pub fn get(&self, ty: ResourceType, version: &str) -> Option<ResourceMap> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.sets.get(&(ty, version.to_owned())).cloned()
    }
}

/// A rejected version and Envoy's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub error: String,
}

/// What a client holds of one type.
#[derive(Debug, Clone, Default)]
pub struct TypeView {
    pub acked: Option<Held>,
    /// Sent, not answered yet.
    pub pending: Option<Held>,
    /// The version the client said it held when it connected (a reconnect), before it ACKed
    /// anything on this stream.
    pub reported: Option<String>,
    /// The resources of the last rejected response.
    pub rejected: ResourceMap,
    pub last_nack: Option<Nack>,
}

/// What a client holds, per type.
#[derive(Debug, Clone, Default)]
pub struct ClientView {
    pub types: ByType<TypeView>,
}

/// One resource as a client holds it (CSDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    pub resource: Resource,
    pub client: ClientState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    Acked,
    /// Sent, not yet answered.
    Pending,
    /// Rejected, with Envoy's error text.
    Nacked(String),
}

/// What one client holds of one type, for status reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The version the client last ACKed (or reported holding when it connected).
    pub acked: Option<String>,
    /// A version sent and not yet answered.
    pub pending: Option<String>,
    pub last_nack: Option<Nack>,
}

impl ClientView {
    pub fn status(&self, ty: ResourceType) -> TypeStatus {
        let t = &self.types[ty];
        TypeStatus {
            acked: t
                .acked
                .as_ref()
                .map(|a| a.version.clone())
                .or_else(|| t.reported.clone()),
            pending: t.pending.as_ref().map(|p| p.version.clone()),
            last_nack: t.last_nack.clone(),
        }
    }

    /// Every resource of `ty` the client was sent, with what it did with it: ACKed (held),
    /// pending (sent, not answered) or NACKed (in the last rejected response).
    pub fn resource_states(&self, ty: ResourceType) -> Vec<ResourceState> {
        let v = &self.types[ty];
        let mut out: BTreeMap<&str, ResourceState> = BTreeMap::new();
        for r in v.acked.iter().flat_map(|h| h.resources.values()) {
            out.insert(
                &r.name,
                ResourceState {
                    resource: r.clone(),
                    client: ClientState::Acked,
                },
            );
        }
        let nack_error = v
            .last_nack
            .as_ref()
            .map(|n| n.error.as_str())
            .unwrap_or_default();
        let later = v
            .rejected
            .values()
            .map(|r| (r, ClientState::Nacked(nack_error.to_owned())))
            .chain(
                v.pending
                    .iter()
                    .flat_map(|h| h.resources.values())
                    .map(|r| (r, ClientState::Pending)),
            );
        for (r, client) in later {
            if out
                .get(r.name.as_str())
                .is_none_or(|held| held.resource != *r)
            {
                out.insert(
                    &r.name,
                    ResourceState {
                        resource: r.clone(),
                        client,
                    },
                );
            }
        }
        out.into_values().collect()
    }
}

/// How far a client is with its group's current config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Something is sent and not answered, or not sent yet (waiting for an ACK it depends on,
    /// or for the client to ask).
    Pending,
    /// It holds every resource of the current config it should hold, nothing pending.
    InSync,
    /// It answered the current config and rejected part of it; nothing more is sent until the
    /// config changes. It keeps what it held before.
    Rejected,
}

/// What a stream reports after a step of its protocol machine.
#[derive(Debug, Clone)]
pub struct ClientUpdate<'a> {
    pub node: Option<&'a NodeInfo>,
    pub group: Option<&'a GroupId>,
    /// The config version the client converges to.
    pub config_version: Option<&'a str>,
    /// When the change that produced `config_version` was seen.
    pub changed_at: Option<Instant>,
    pub sync: SyncState,
    pub view: ClientView,
    pub events: &'a [Event],
}

/// One connected client.
#[derive(Debug, Clone)]
pub struct Client {
    pub node: NodeInfo,
    pub group: Option<GroupId>,
    pub mode: Mode,
    pub peer: Option<SocketAddr>,
    pub connected_since: SystemTime,
    pub config_version: Option<String>,
    pub sync: SyncState,
    /// When it answered `config_version` (ACKed all of it or rejected part of it): what it
    /// sends from then on follows that config (`cutover wait` compares Envoy's reports with it).
    pub answered_at: Option<Instant>,
    pub view: ClientView,
    /// When each type's current `last_nack` was first seen.
    pub nack_seen: ByType<Option<SystemTime>>,
}

impl Client {
    pub fn in_sync(&self) -> bool {
        self.sync == SyncState::InSync
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    clients: BTreeMap<u64, Client>,
    /// Streams per node id (an Envoy may have several), kept as clients come, name themselves
    /// and go: counting distinct nodes by walking every client on each connect and disconnect
    /// made a reconnect storm of N Envoys cost N² (71 s at 10,000).
    streams_per_node: BTreeMap<String, usize>,
}

impl Inner {
    fn node_gone(&mut self, id: &str) {
        if id.is_empty() {
            return;
        }
        if let Some(n) = self.streams_per_node.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.streams_per_node.remove(id);
            }
        }
    }

    fn node_came(&mut self, id: &str) {
        if !id.is_empty() {
            *self.streams_per_node.entry(id.to_owned()).or_default() += 1;
        }
    }
}

/// Every connected client; shared and thread-safe.
#[derive(Debug)]
pub struct Clients {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl Clients {
    pub fn new(metrics: Arc<Metrics>) -> Clients {
        Clients {
            inner: Mutex::default(),
            changes: watch::Sender::new(0),
            metrics,
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

    fn read<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        f(&self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn connect(&self, mode: Mode, peer: Option<SocketAddr>) -> u64 {
        self.metrics.streams.inc();
        self.with(|i| {
            i.next_id += 1;
            let id = i.next_id;
            i.clients.insert(
                id,
                Client {
                    node: NodeInfo::default(),
                    group: None,
                    mode,
                    peer,
                    connected_since: SystemTime::now(),
                    config_version: None,
                    sync: SyncState::Pending,
                    answered_at: None,
                    view: ClientView::default(),
                    nack_seen: ByType::default(),
                },
            );
            id
        })
    }

    pub fn update(&self, id: u64, u: ClientUpdate<'_>) {
        for e in u.events {
            if let Event::Nack { ty, .. } = e {
                self.metrics.nacks.get_or_create(&(*ty).into()).inc();
            }
        }
        self.with(|i| {
            let Some(c) = i.clients.get_mut(&id) else {
                return;
            };
            let was_synced = c.in_sync() && c.config_version.as_deref() == u.config_version;
            let same_version = c.config_version.as_deref() == u.config_version;
            let mut renamed = None;
            if let Some(node) = u.node
                && c.node != *node
            {
                if c.node.id != node.id {
                    renamed = Some((c.node.id.clone(), node.id.clone()));
                }
                c.node = node.clone();
            }
            // Compared before copied: an update per message of every stream, rarely a change.
            if let Some(group) = u.group
                && c.group.as_ref() != Some(group)
            {
                c.group = Some(group.clone());
            }
            if u.sync == SyncState::Pending {
                c.answered_at = None;
            } else if c.answered_at.is_none() || !same_version || c.sync == SyncState::Pending {
                c.answered_at = Some(Instant::now());
            }
            if !same_version {
                c.config_version = u.config_version.map(str::to_owned);
            }
            c.sync = u.sync;
            if !was_synced
                && c.in_sync()
                && let Some(at) = u.changed_at
            {
                self.metrics
                    .save_to_ack_seconds
                    .observe(at.elapsed().as_secs_f64());
            }
            for ty in ResourceType::ALL {
                let old = c.view.types[ty].last_nack.as_ref();
                let new = u.view.types[ty].last_nack.as_ref();
                if new.is_none() {
                    c.nack_seen[ty] = None;
                } else if old != new {
                    c.nack_seen[ty] = Some(SystemTime::now());
                }
            }
            c.view = u.view;
            if let Some((old, new)) = renamed {
                i.node_gone(&old);
                i.node_came(&new);
                self.metrics.envoys.set(gauge(i.streams_per_node.len()));
            }
        });
    }

    pub fn pushed(&self, ty: ResourceType) {
        self.metrics.pushes.get_or_create(&ty.into()).inc();
    }

    pub fn disconnect(&self, id: u64) {
        self.metrics.streams.dec();
        self.with(|i| {
            if let Some(c) = i.clients.remove(&id) {
                i.node_gone(&c.node.id);
            }
            self.metrics.envoys.set(gauge(i.streams_per_node.len()));
        });
    }

    /// Every connected client, in connection order.
    pub fn list(&self) -> Vec<Client> {
        self.read(|i| i.clients.values().cloned().collect())
    }

    /// Whether every client of `group` has answered its config `version`: ACKed it, or
    /// rejected it and keeps what it held. True with no client. A client whose group is not
    /// known yet (it has sent nothing) may be of any group, so it counts as not answered.
    pub fn answered(&self, group: &GroupId, version: &str) -> bool {
        self.read(|i| {
            i.clients.values().all(|c| match &c.group {
                Some(g) if g != group => true,
                Some(_) => {
                    c.config_version.as_deref() == Some(version) && c.sync != SyncState::Pending
                }
                None => false,
            })
        })
    }

    /// How many clients are of `group`.
    pub fn envoys_of(&self, group: &GroupId) -> usize {
        self.read(|i| {
            i.clients
                .values()
                .filter(|c| c.group.as_ref() == Some(group))
                .count()
        })
    }

    /// Whether every client of `group` holds its config `version`, nothing pending. True with
    /// no client; a client whose group is not known yet counts as not in sync.
    pub fn synced(&self, group: &GroupId, version: &str) -> bool {
        self.read(|i| {
            i.clients.values().all(|c| match &c.group {
                Some(g) if g != group => true,
                Some(_) => c.in_sync() && c.config_version.as_deref() == Some(version),
                None => false,
            })
        })
    }

    /// (clients in sync with their group's current config, clients).
    pub fn in_sync_count(&self) -> (usize, usize) {
        self.read(|i| {
            let synced = i.clients.values().filter(|c| c.in_sync()).count();
            (synced, i.clients.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(clients: &Clients, id: u64, node: &str) {
        let node = NodeInfo {
            id: node.to_owned(),
            ..NodeInfo::default()
        };
        clients.update(
            id,
            ClientUpdate {
                node: Some(&node),
                group: None,
                config_version: None,
                changed_at: None,
                sync: SyncState::Pending,
                view: ClientView::default(),
                events: &[],
            },
        );
    }

    fn envoys(clients: &Clients) -> String {
        clients
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("cutover_connected_envoys "))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn distinct_envoys_are_counted_as_streams_come_name_themselves_and_go() {
        let clients = Clients::new(Arc::new(Metrics::new()));
        let a = clients.connect(Mode::Aggregated, None);
        let b = clients.connect(Mode::Aggregated, None);
        let c = clients.connect(Mode::Aggregated, None);
        assert_eq!(
            envoys(&clients),
            "cutover_connected_envoys 0",
            "no node named yet"
        );
        named(&clients, a, "edge-1");
        named(&clients, b, "edge-1"); // a second stream of the same Envoy
        named(&clients, c, "edge-2");
        assert_eq!(envoys(&clients), "cutover_connected_envoys 2");
        named(&clients, c, "edge-3"); // a stream whose node changed its id
        assert_eq!(envoys(&clients), "cutover_connected_envoys 2");
        clients.disconnect(a);
        assert_eq!(
            envoys(&clients),
            "cutover_connected_envoys 2",
            "edge-1 has b"
        );
        clients.disconnect(b);
        assert_eq!(envoys(&clients), "cutover_connected_envoys 1");
        clients.disconnect(c);
        assert_eq!(envoys(&clients), "cutover_connected_envoys 0");
    }
}
