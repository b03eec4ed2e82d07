//! What a replica's controller knows of the cluster in cluster mode (`serve --etcd`): its
//! role, the record every replica serves, and what the Envoys of the other replicas answered.
//!
//! No etcd here: `cluster::replica` does that I/O and talks to the controller through a
//! [`Link`], so the controller's rules (serve the record; only the leader decides; a
//! retirement waits for the Envoys of every replica) do not depend on how the record travels.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::node::GroupId;
use crate::reconcile::RuntimeState;
use crate::snapshot::Published;
use crate::xds::clients::Clients;

/// How a replica takes part (`serve --etcd`).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// Every key of this cluster is under it.
    pub prefix: String,
    /// This replica's name, unique in the cluster.
    pub name: String,
    /// Where the other replicas reach this one's admin API (operator commands are forwarded
    /// to the leader's).
    pub admin_url: String,
    /// The lease's time to live: how long a replica that died (or was paused) keeps leading.
    pub lease_ttl: Duration,
    /// etcd over TLS (`https://` URLs).
    pub tls: Option<EtcdTls>,
}

/// How a replica reaches etcd over TLS: the CA that signed etcd's certificate and, for etcd's
/// `--client-cert-auth`, this replica's certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How many of the files the cluster served a record remembers (by hash): a replica with an
/// older copy of the file that becomes leader recognizes it and does not roll back to it.
pub const FILES_REMEMBERED: usize = 32;

/// What the leader decided for the whole cluster, as every replica serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The deployment file's text.
    pub file: Arc<str>,
    pub state: RuntimeState,
    /// Hashes ([`file_hash`]) of the files the cluster served before this one, oldest first.
    pub earlier_files: Vec<String>,
    /// The etcd revision it was written at (0 before it was written).
    pub revision: i64,
    /// The replica that wrote it (set as it is written).
    pub leader: String,
}

impl Recorded {
    /// Whether `text` is a file the cluster served before this record's (an older copy).
    pub fn is_earlier_file(&self, text: &[u8]) -> bool {
        let hash = file_hash(text);
        self.earlier_files.contains(&hash)
    }

    /// The record that follows this one when the leader serves `file`: the hash of this
    /// record's file is remembered if it changes.
    pub fn next(previous: Option<&Recorded>, file: Arc<str>, state: RuntimeState) -> Recorded {
        let mut earlier_files = previous
            .map(|p| p.earlier_files.clone())
            .unwrap_or_default();
        if let Some(p) = previous.filter(|p| p.file != file) {
            let hash = file_hash(p.file.as_bytes());
            earlier_files.retain(|h| *h != hash);
            earlier_files.push(hash);
            let excess = earlier_files.len().saturating_sub(FILES_REMEMBERED);
            earlier_files.drain(..excess);
        }
        // The file served now is not an earlier one (a file put back is current again).
        let current = file_hash(file.as_bytes());
        earlier_files.retain(|h| *h != current);
        Recorded {
            file,
            state,
            earlier_files,
            revision: 0,
            leader: String::new(),
        }
    }
}

/// The hex SHA-256 of a deployment file's text.
pub fn file_hash(text: &[u8]) -> String {
    format!("{:x}", Sha256::digest(text))
}

/// A replica's part in the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Role {
    /// etcd has not answered yet, or this replica lost its lease: it serves the last record it
    /// has and decides nothing.
    #[default]
    Unknown,
    /// Another replica leads: this one serves the record.
    Follower,
    /// This replica decides, starting from the record the cluster held when it was elected
    /// (`None` for a cluster that has none yet). `term` tells elections apart.
    Leader {
        term: i64,
        record: Option<Arc<Recorded>>,
    },
}

impl Role {
    pub fn leads(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Follower => "follower",
            Role::Leader { .. } => "leader",
        }
    }
}

/// What one replica's Envoys hold, group by group: published under the replica's lease so that
/// the leader's gates count Envoys on every replica (and a replica that dies takes it along).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers {
    pub groups: BTreeMap<String, GroupAnswers>,
    /// Where the replica's admin API is: the leader asks it for what its Envoys reported.
    #[serde(default)]
    pub admin: String,
}

/// One group on one replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAnswers {
    /// The config version this replica serves the group.
    pub version: String,
    /// Its Envoys of the group.
    pub envoys: usize,
    /// Whether every one of them has answered `version` (ACK or NACK, nothing pending).
    pub answered: bool,
}

impl Answers {
    /// What `clients` answered to what `published` serves.
    pub fn of(published: &Published, clients: &Clients) -> Answers {
        let groups = published
            .groups()
            .map(|(group, s)| {
                let version = s.snapshot.version.clone();
                let answer = GroupAnswers {
                    envoys: clients.envoys_of(group),
                    answered: clients.answered(group, &version),
                    version,
                };
                (group.as_str().to_owned(), answer)
            })
            .collect();
        Answers {
            groups,
            admin: String::new(),
        }
    }

    /// Whether this replica's Envoys of `group` all answered `version`. Only a report about
    /// `version` itself counts, even with no Envoy: one made before this replica served it
    /// (or before it served anything) may not count an Envoy that connected since and still
    /// holds the config before. So a replica that cannot serve the record holds retirements
    /// and step timers until it can, or until it stops (its report goes with its lease).
    pub fn answered(&self, group: &GroupId, version: &str) -> bool {
        self.groups
            .get(group.as_str())
            .is_some_and(|g| g.version == version && (g.envoys == 0 || g.answered))
    }
}

/// The other replicas' [`Answers`], by replica name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    pub replicas: BTreeMap<String, Answers>,
}

impl Fleet {
    /// Whether the Envoys of `group` on every other replica answered `version`.
    pub fn answered(&self, group: &GroupId, version: &str) -> bool {
        self.replicas.values().all(|a| a.answered(group, version))
    }

    /// The other replicas' admin URLs.
    pub fn admins(&self) -> Vec<String> {
        self.replicas
            .values()
            .map(|a| a.admin.clone())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// Envoys on the other replicas.
    pub fn envoys(&self) -> usize {
        self.replicas
            .values()
            .flat_map(|a| a.groups.values())
            .map(|g| g.envoys)
            .sum()
    }
}

/// The controller's side of the cluster.
#[derive(Debug)]
pub struct Link {
    pub role: watch::Receiver<Role>,
    /// The newest record etcd holds: what this replica serves.
    pub records: watch::Receiver<Option<Arc<Recorded>>>,
    /// What the leader wants written (the newest wins; written fenced by its leadership).
    pub save: watch::Sender<Option<Arc<Recorded>>>,
    /// The other replicas' answers.
    pub fleet: watch::Receiver<Arc<Fleet>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(previous: Option<&Recorded>, file: &str) -> Recorded {
        Recorded::next(previous, Arc::from(file), RuntimeState::default())
    }

    #[test]
    fn a_record_remembers_the_files_served_before_it_and_forgets_the_oldest() {
        let a = rec(None, "a");
        assert!(a.earlier_files.is_empty());
        let b = rec(Some(&a), "b");
        assert!(b.is_earlier_file(b"a"));
        assert!(!b.is_earlier_file(b"b"));
        assert!(!b.is_earlier_file(b"c"), "a newer file is not earlier");
        // Same file, new state: nothing new remembered.
        assert_eq!(rec(Some(&b), "b").earlier_files, b.earlier_files);
        // A file put back is current again, not earlier.
        let a2 = rec(Some(&b), "a");
        assert!(!a2.is_earlier_file(b"a"));
        assert!(a2.is_earlier_file(b"b"));
        let mut last = a2;
        for i in 0..FILES_REMEMBERED + 5 {
            last = rec(Some(&last), &format!("file {i}"));
        }
        assert_eq!(last.earlier_files.len(), FILES_REMEMBERED);
        assert!(!last.is_earlier_file(b"b"), "the oldest are forgotten");
        assert!(last.is_earlier_file(format!("file {}", FILES_REMEMBERED + 3).as_bytes()));
    }

    #[test]
    fn a_group_is_answered_when_every_replica_with_envoys_in_it_answered_that_version() {
        let group = GroupId::all();
        let answers = |version: &str, envoys, answered| Answers {
            admin: String::new(),
            groups: BTreeMap::from([(
                "all".to_owned(),
                GroupAnswers {
                    version: version.to_owned(),
                    envoys,
                    answered,
                },
            )]),
        };
        let mut fleet = Fleet::default();
        assert!(fleet.answered(&group, "v2"), "no other replica");
        fleet.replicas.insert("b".into(), answers("v2", 2, true));
        fleet.replicas.insert("c".into(), answers("v2", 0, false));
        assert!(
            fleet.answered(&group, "v2"),
            "c serves v2 to no Envoy of the group"
        );
        fleet.replicas.insert("c".into(), answers("v1", 0, true));
        assert!(
            !fleet.answered(&group, "v2"),
            "c's report is from before it served v2: an Envoy may have connected since"
        );
        fleet.replicas.insert("c".into(), Answers::default());
        assert!(
            !fleet.answered(&group, "v2"),
            "c's report is from before it served anything"
        );
        fleet.replicas.insert("c".into(), answers("v1", 1, true));
        assert!(!fleet.answered(&group, "v2"), "c serves an older version");
        fleet.replicas.insert("c".into(), answers("v2", 1, false));
        assert!(!fleet.answered(&group, "v2"), "c's Envoy has not answered");
        fleet.replicas.insert("c".into(), answers("v2", 1, true));
        assert!(fleet.answered(&group, "v2"));
        assert_eq!(fleet.envoys(), 3);
        assert!(
            !fleet.answered(&GroupId::unmatched(), "x"),
            "b and c serve other groups: their reports are not about x"
        );
    }
}
