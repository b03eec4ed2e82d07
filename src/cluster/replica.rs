//! One replica of `cutover serve --etcd`: the etcd side of the controller's
//! [`Link`].
//!
//! Each replica holds one lease, kept alive while it runs. Under it, it publishes what its
//! Envoys answered (`<prefix>/replicas/<name>`) and campaigns to lead. Every replica follows
//! the record (`<prefix>/record`) and serves it; the leader also writes it, each write fenced
//! by its election key. When the lease is lost (etcd unreachable, no majority, the process was
//! paused), the replica goes on serving the last record it has and decides nothing until it
//! has a lease again.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{ClusterError, Etcd, Leadership, Lease};
use crate::replica::{Answers, ClusterOptions as Options, Fleet, Link, Recorded, Role};
use crate::snapshot::Published;
use crate::status::Status;
use crate::xds::clients::Clients;

/// What a replica campaigns with: who leads, for `/status`, and where commands are forwarded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub admin: String,
}

/// A replica writes what its Envoys answered at most this often.
const ANSWERS_EVERY: Duration = Duration::from_millis(100);

/// How long to wait before trying etcd again after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// Connects to etcd and starts the replica's tasks (they end when `closing` is set). An etcd
/// that cannot be reached at start is an error: nothing is served from an unknown record.
pub async fn start(
    opts: Options,
    status: Arc<Status>,
    clients: Arc<Clients>,
    published: watch::Receiver<Option<Arc<Published>>>,
    closing: watch::Receiver<bool>,
) -> Result<Link, ClusterError> {
    status.start_cluster(&opts.name);
    let etcd = Etcd::connect_tls(&opts.endpoints, &opts.prefix, opts.tls.as_ref()).await?;
    // Read once before serving: an unreachable etcd fails the start here, with its URLs.
    let first = match etcd.load().await {
        Ok(record) => record.map(Arc::new),
        Err(e @ (ClusterError::Timeout { .. } | ClusterError::Connect { .. })) => return Err(e),
        Err(e) => {
            tracing::error!("{e}");
            status.set_cluster(|r| r.etcd_problem = Some(e.to_string()));
            None
        }
    };
    let (role_tx, role) = watch::channel(Role::Unknown);
    let (records_tx, records) = watch::channel(first);
    let (save, saves) = watch::channel(None::<Arc<Recorded>>);
    let (fleet_tx, fleet) = watch::channel(Arc::new(Fleet::default()));
    let replica = Replica { etcd, opts, status };
    tokio::spawn(until_closing(
        closing.clone(),
        replica.clone().follow_records(records_tx),
    ));
    tokio::spawn(until_closing(
        closing.clone(),
        replica.clone().observe_leader(),
    ));
    tokio::spawn(until_closing(
        closing.clone(),
        replica.clone().follow_fleet(fleet_tx),
    ));
    tokio::spawn(replica.run(role_tx, saves, clients, published, closing));
    Ok(Link {
        role,
        records,
        save,
        fleet,
    })
}

async fn until_closing(mut closing: watch::Receiver<bool>, task: impl Future<Output = ()>) {
    tokio::select! {
        _ = closing.wait_for(|c| *c) => {}
        () = task => {}
    }
}

#[derive(Clone)]
struct Replica {
    etcd: Etcd,
    opts: Options,
    status: Arc<Status>,
}

impl Replica {
    /// Says what is wrong with etcd (or that nothing is), once per change.
    fn problem(&self, problem: Option<&ClusterError>) {
        let text = problem.map(ToString::to_string);
        if let Some(t) = &text {
            tracing::warn!("{t}");
        }
        self.status.set_cluster(|r| {
            if r.etcd_problem != text {
                r.etcd_problem = text;
            }
        });
    }

    /// The newest record, followed in write order; read again whole after a failure.
    async fn follow_records(self, records: watch::Sender<Option<Arc<Recorded>>>) {
        let newer = |record: Recorded| {
            records.send_if_modified(|current| {
                if current
                    .as_ref()
                    .is_some_and(|c| c.revision >= record.revision)
                {
                    return false;
                }
                *current = Some(Arc::new(record));
                true
            });
        };
        loop {
            let after = records.borrow().as_ref().map_or(0, |r| r.revision);
            let followed = async {
                if let Some(record) = self.etcd.load().await? {
                    newer(record);
                }
                let after = records.borrow().as_ref().map_or(after, |r| r.revision);
                let mut stream = self.etcd.follow(after).await?;
                loop {
                    match stream.next().await {
                        Ok(record) => newer(record),
                        // A record this replica cannot use: said, and the next one awaited.
                        Err(e @ ClusterError::Record { .. }) => self.problem(Some(&e)),
                        Err(e) => return Err::<(), _>(e),
                    }
                }
            };
            if let Err(e) = followed.await {
                self.problem(Some(&e));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Who leads, for `/status` and for forwarding commands.
    async fn observe_leader(self) {
        loop {
            let observed = async {
                let mut stream = self.etcd.observe().await?;
                while let Some(answer) = stream.message().await? {
                    let candidate = answer
                        .kv()
                        .and_then(|kv| serde_json::from_slice::<Candidate>(kv.value()).ok());
                    self.status.set_cluster(|r| {
                        r.leader = candidate.as_ref().map(|c| c.name.clone());
                        r.leader_admin = candidate.map(|c| c.admin);
                    });
                }
                Ok::<(), ClusterError>(())
            };
            if let Err(e) = observed.await {
                tracing::debug!("observing the leader: {e}");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The other replicas' answers: read whole, then followed; a replica whose lease ended
    /// leaves.
    async fn follow_fleet(self, fleet: watch::Sender<Arc<Fleet>>) {
        loop {
            let Err(e) = self.fleet_once(&fleet).await;
            self.problem(Some(&e));
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn fleet_once(
        &self,
        fleet: &watch::Sender<Arc<Fleet>>,
    ) -> Result<Infallible, ClusterError> {
        let (values, revision) = self.etcd.list(REPLICAS).await?;
        let mut replicas: BTreeMap<String, Answers> = BTreeMap::new();
        for (name, value) in values {
            self.take(&mut replicas, name, Some(value));
        }
        self.tell_fleet(fleet, &replicas);
        let mut changes = self.etcd.watch_dir(REPLICAS, revision).await?;
        loop {
            for (name, value) in changes.next().await? {
                self.take(&mut replicas, name, value);
            }
            self.tell_fleet(fleet, &replicas);
        }
    }

    fn take(&self, replicas: &mut BTreeMap<String, Answers>, name: String, value: Option<Vec<u8>>) {
        if name == self.opts.name {
            return;
        }
        match value.map(|v| serde_json::from_slice::<Answers>(&v)) {
            Some(Ok(answers)) => {
                replicas.insert(name, answers);
            }
            Some(Err(e)) => {
                tracing::warn!(replica = name, "cannot read what its Envoys answered: {e}");
                replicas.remove(&name);
            }
            None => {
                replicas.remove(&name);
            }
        }
    }

    fn tell_fleet(&self, fleet: &watch::Sender<Arc<Fleet>>, replicas: &BTreeMap<String, Answers>) {
        let next = Fleet {
            replicas: replicas.clone(),
        };
        self.status.set_cluster(|r| {
            r.other_replicas = next.replicas.len();
            r.other_envoys = next.envoys();
            r.other_admins = next
                .replicas
                .iter()
                .filter(|(_, a)| !a.admin.is_empty())
                .map(|(name, a)| (name.clone(), a.admin.clone()))
                .collect();
        });
        fleet.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            true
        });
    }

    /// One lease after the other: under each, this replica publishes its answers and
    /// campaigns; when it is lost, the replica decides nothing until it has another.
    async fn run(
        self,
        role: watch::Sender<Role>,
        mut saves: watch::Receiver<Option<Arc<Recorded>>>,
        clients: Arc<Clients>,
        mut published: watch::Receiver<Option<Arc<Published>>>,
        mut closing: watch::Receiver<bool>,
    ) {
        loop {
            let lease = match self.etcd.grant(self.opts.lease_ttl).await {
                Ok(lease) => lease,
                Err(e) => {
                    self.problem(Some(&e));
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        _ = closing.wait_for(|c| *c) => return,
                    }
                }
            };
            self.problem(None);
            let mut leadership = None;
            let mut stop = false;
            tokio::select! {
                () = lease.lost() => {
                    tracing::warn!("this replica's etcd lease ended: deciding nothing until it has another");
                }
                () = self.publish_answers(&lease, &clients, &mut published) => {}
                () = self.lead(&lease, &role, &mut saves, &mut leadership) => {}
                _ = closing.wait_for(|c| *c) => stop = true,
            }
            role.send_replace(Role::Unknown);
            if stop {
                // Hands over at once instead of after the lease's TTL.
                if let Some(l) = leadership.take() {
                    let _ = l.resign().await;
                }
                let _ = self.etcd.revoke(&lease).await;
                return;
            }
        }
    }

    /// Writes what this replica's Envoys answered whenever it changes.
    async fn publish_answers(
        &self,
        lease: &Lease,
        clients: &Clients,
        published: &mut watch::Receiver<Option<Arc<Published>>>,
    ) {
        let mut changes = clients.changes();
        let mut written: Option<Answers> = None;
        loop {
            let mut answers = published
                .borrow()
                .as_ref()
                .map(|p| Answers::of(p, clients))
                .unwrap_or_default();
            answers.admin.clone_from(&self.opts.admin_url);
            if written.as_ref() != Some(&answers) {
                let json = serde_json::to_vec(&answers).expect("answers serialize");
                let name = format!("{REPLICAS}/{}", self.opts.name);
                match self.etcd.put_leased(lease, &name, json).await {
                    Ok(()) => {
                        written = Some(answers);
                        // Changes within the next moment are written together: etcd's writes
                        // grow with replicas, not with Envoys (a reconnect storm of thousands
                        // is a handful of writes).
                        tokio::time::sleep(ANSWERS_EVERY).await;
                    }
                    Err(e) => {
                        self.problem(Some(&e));
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = published.changed() => {}
            }
        }
    }

    /// Campaigns; once elected, writes what the controller decides, fenced, until the
    /// leadership is lost.
    async fn lead(
        &self,
        lease: &Lease,
        role: &watch::Sender<Role>,
        saves: &mut watch::Receiver<Option<Arc<Recorded>>>,
        leadership: &mut Option<Leadership>,
    ) {
        let candidate = serde_json::to_string(&Candidate {
            name: self.opts.name.clone(),
            admin: self.opts.admin_url.clone(),
        })
        .expect("a candidate serializes");
        role.send_replace(Role::Follower);
        let elected = loop {
            match self.etcd.campaign(lease, &candidate).await {
                Ok(l) => break l,
                Err(ClusterError::Deposed) => return,
                Err(e) => {
                    self.problem(Some(&e));
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        // What the cluster holds now, read after the election: no earlier leader can write
        // any more, so this is what the successor decides from.
        let record = loop {
            match self.etcd.load().await {
                Ok(r) => break r,
                Err(e) => {
                    self.problem(Some(&e));
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        tracing::info!(term = elected.term(), "this replica leads");
        let l = leadership.insert(elected);
        // Only what this term decides is written.
        saves.borrow_and_update();
        role.send_replace(Role::Leader {
            term: l.term(),
            record: record.map(Arc::new),
        });
        loop {
            tokio::select! {
                () = l.lost() => return,
                changed = saves.changed() => if changed.is_err() { return },
            }
            let wanted = saves.borrow_and_update().clone();
            if let Some(mut record) = wanted {
                Arc::make_mut(&mut record)
                    .leader
                    .clone_from(&self.opts.name);
                // Written until etcd takes it or the leadership ends (the lease's end stops
                // the whole term).
                loop {
                    match self.etcd.save(l, &record).await {
                        Ok(_) => {
                            self.problem(None);
                            break;
                        }
                        Err(ClusterError::Deposed) => {
                            tracing::warn!("a write was refused: another replica leads");
                            return;
                        }
                        Err(e) => {
                            self.problem(Some(&e));
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                    // A newer decision replaces this one.
                    if saves.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
    }
}

/// The folder of the replicas' answers, below the prefix.
const REPLICAS: &str = "replicas";
