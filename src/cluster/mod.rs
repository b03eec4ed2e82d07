//! Cluster mode's footing on etcd v3: one leader at a time through etcd's election API on a
//! lease, and every write of the leader fenced by that leadership, so that a deposed or paused
//! leader can never overwrite what its successor wrote.
//!
//! The fence is etcd's own: a leader's election key (`<prefix>/leader/<lease>`) lives as long as
//! its lease, and each of its writes is one transaction that also checks that key still has the
//! create revision it had when this replica was elected. A leader whose lease expired (paused,
//! cut off from etcd) or who resigned has lost that key, so its writes are refused even if it
//! does not know yet; the successor's key has another revision. Nothing here is home-made
//! consensus: etcd decides who leads and what was written.
//!
//! What the leader decides is one [`Recorded`] (the deployment file it serves and the runtime
//! state), written fenced and followed by the other replicas in the order it was written. A
//! record this replica cannot use (corrupt, or of a newer format) is an error naming it, never
//! a panic nor a reason to change what is served.
//!
//! [`replica`] runs a replica of `cutover serve --etcd` on top of this.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, LeaderKey, ResignOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::reconcile::RuntimeState;
use crate::replica::{EtcdTls, Recorded, file_hash};

pub mod replica;

/// The record's format: a replica refuses a record of a newer one instead of misreading it.
/// Format 2 keeps the file's text under a key of its own (`<prefix>/files/<hash>`), written only when the
/// file changes: a rollout's step writes the state alone. Format 1 (the text in every record)
/// is still read.
pub const RECORD_FORMAT: u32 = 2;

#[derive(Serialize)]
struct RecordRef<'a> {
    format: u32,
    written_by: &'static str,
    /// The file's hash: its text is under `<prefix>/files/<hash>`.
    file_hash: &'a str,
    state: &'a RuntimeState,
    earlier_files: &'a [String],
    leader: &'a str,
}

#[derive(Deserialize)]
struct RecordRead {
    format: u32,
    /// Format 1: the text itself.
    #[serde(default)]
    file: serde_json::Value,
    #[serde(default)]
    file_hash: Option<String>,
    #[serde(default)]
    state: serde_json::Value,
    #[serde(default)]
    earlier_files: Vec<String>,
    #[serde(default)]
    leader: String,
}

fn encode(record: &Recorded, file_hash: &str) -> Vec<u8> {
    serde_json::to_vec(&RecordRef {
        format: RECORD_FORMAT,
        written_by: concat!("cutover ", env!("CARGO_PKG_VERSION")),
        file_hash,
        state: &record.state,
        earlier_files: &record.earlier_files,
        leader: &record.leader,
    })
    .expect("a record serializes")
}

/// Where a record's file is.
enum FileRef {
    Text(String),
    Hash(String),
}

/// The record in `bytes`, written at `revision`, with where its file is; or why it cannot be
/// used.
fn decode(bytes: &[u8], revision: i64) -> Result<(Recorded, FileRef), String> {
    let read: RecordRead =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not a cutover record: {e}"))?;
    if read.format > RECORD_FORMAT {
        return Err(format!(
            "it has format {}, written by a newer cutover; this one reads format {RECORD_FORMAT}",
            read.format
        ));
    }
    let file = match read.file_hash {
        Some(hash) => FileRef::Hash(hash),
        None => FileRef::Text(
            serde_json::from_value(read.file)
                .map_err(|e| format!("its deployment file is not text: {e}"))?,
        ),
    };
    let state =
        serde_json::from_value(read.state).map_err(|e| format!("its state is invalid: {e}"))?;
    let record = Recorded {
        file: std::sync::Arc::from(""),
        state,
        earlier_files: read.earlier_files,
        revision,
        leader: read.leader,
    };
    Ok((record, file))
}

/// The folder of the deployment file's text, one key per file by hash (only the one served is
/// kept).
const FILES: &str = "files";

/// The key the record lives under, below the prefix.
const RECORD: &str = "record";

/// What talking to etcd can fail with; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot reach etcd at {endpoints}: {source}; check the URLs and that a majority of the members is up"
    )]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "etcd: {0}; the write or read was not done, and is tried again from the state etcd holds"
    )]
    Etcd(#[from] etcd_client::Error),
    #[error(
        "etcd at {endpoints} took longer than {after:?} to answer; is a majority of its members up?"
    )]
    Timeout { endpoints: String, after: Duration },
    #[error(
        "this replica no longer leads (its lease ended or another replica was elected): the write was refused"
    )]
    Deposed,
    #[error(
        "cannot read {}: {source}; check --etcd-ca, --etcd-cert and --etcd-key",
        path.display()
    )]
    TlsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd elected this replica without saying under which key")]
    NoLeaderKey,
    #[error(
        "the cluster's record at {key} (revision {revision}) cannot be used: {reason}; this replica \
         goes on serving what it has and writes nothing over it"
    )]
    Record {
        key: String,
        revision: i64,
        reason: String,
    },
    #[error("the watch on {key} ended: {reason}; follow it again from the last revision seen")]
    WatchEnded { key: String, reason: String },
    #[error(
        "the deployment file ({kib} KiB) does not fit in one etcd request ({source}): nothing \
         of it is served until etcd's --max-request-bytes (1.5 MiB by default) is raised on \
         every member"
    )]
    TooLarge {
        kib: usize,
        #[source]
        source: etcd_client::Error,
    },
}

/// How long one request to etcd may take, tries included: longer means no majority answers.
/// Not the client's own timeout, which would also end a campaign waiting for its turn.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one try of a request that may be repeated waits: a member killed while it held
/// the request never answers, and another may.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to an etcd cluster, every key under one prefix.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    /// As given, for messages.
    endpoints: String,
    /// The file this replica wrote under `files/`, and in which leadership (the election
    /// key's revision): within one leadership nobody else writes, so a record of the same file
    /// needs no second copy of its text.
    file_written: std::sync::Arc<std::sync::Mutex<Option<(i64, String)>>>,
}

impl Etcd {
    /// Connects to any of `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Etcd, ClusterError> {
        Etcd::connect_tls(endpoints, prefix, None).await
    }

    /// [`Etcd::connect`], over TLS with `tls` (`https://` endpoints).
    pub async fn connect_tls(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Etcd, ClusterError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`)
            // by closing the connection, which ends every watch and lease stream on it.
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3));
        if let Some(tls) = tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| ClusterError::TlsFile {
                    path: path.to_owned(),
                    source,
                })
            };
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| ClusterError::Connect {
                endpoints: endpoints.join(","),
                source,
            })?;
        Ok(Etcd {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            endpoints: endpoints.join(","),
            file_written: std::sync::Arc::default(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    fn election(&self) -> String {
        self.key("leader")
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1) and keeps it alive in the
    /// background: what is written under it lives as long as this replica does.
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, ClusterError> {
        let mut client = self.client.clone();
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let id = bounded(&self.endpoints, client.lease_grant(ttl_secs, None))
            .await?
            .id();
        let (lost_tx, lost) = watch::channel(false);
        let keepalive = tokio::spawn(keep_alive(client, id, ttl, lost_tx));
        Ok(Lease {
            id,
            lost,
            keepalive,
        })
    }

    /// Campaigns to lead with `value` (what [`Etcd::leader`] tells the others) on `lease`;
    /// returns once this replica leads, however long another leads before it, or fails when
    /// the lease is lost first.
    pub async fn campaign(&self, lease: &Lease, value: &str) -> Result<Leadership, ClusterError> {
        let mut client = self.client.clone();
        let mut lost = lease.lost.clone();
        let elected = tokio::select! {
            elected = client.campaign(self.election(), value, lease.id) => elected?,
            _ = lost.wait_for(|lost| *lost) => return Err(ClusterError::Deposed),
        };
        let key = elected.leader().cloned().ok_or(ClusterError::NoLeaderKey)?;
        Ok(Leadership {
            endpoints: self.endpoints.clone(),
            key,
            lease: lease.id,
            lost: lease.lost.clone(),
            owned: None,
            client,
        })
    }

    /// Campaigns to lead as `id` on a lease of its own (see [`Etcd::grant`] and
    /// [`Etcd::campaign`]).
    pub async fn lead(&self, id: &str, ttl: Duration) -> Result<Leadership, ClusterError> {
        let lease = self.grant(ttl).await?;
        let mut leadership = self.campaign(&lease, id).await?;
        leadership.owned = Some(lease);
        Ok(leadership)
    }

    /// Ends `lease` now: what was written under it goes (a replica that stops hands over at
    /// once instead of after the lease's TTL).
    pub async fn revoke(&self, lease: &Lease) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        bounded(&self.endpoints, client.lease_revoke(lease.id)).await?;
        Ok(())
    }

    /// Writes `value` under `name` for as long as `lease` lives.
    pub async fn put_leased(
        &self,
        lease: &Lease,
        name: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ClusterError> {
        let (key, value) = (self.key(name), value.into());
        retrying(&self.endpoints, || {
            let (mut client, key, value) = (self.client.clone(), key.clone(), value.clone());
            let options = etcd_client::PutOptions::new().with_lease(lease.id);
            async move { client.put(key, value, Some(options)).await }
        })
        .await?;
        Ok(())
    }

    /// Every value under the folder `dir` (by the rest of its key), and the revision read at.
    pub async fn list(&self, dir: &str) -> Result<(Vec<(String, Vec<u8>)>, i64), ClusterError> {
        let prefix = format!("{}/", self.key(dir));
        let got = retrying(&self.endpoints, || {
            let (mut client, prefix) = (self.client.clone(), prefix.clone());
            let options = etcd_client::GetOptions::new().with_prefix();
            async move { client.get(prefix, Some(options)).await }
        })
        .await?;
        let revision = got.header().map_or(0, |h| h.revision());
        let values = got
            .kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                (name, kv.value().to_vec())
            })
            .collect();
        Ok((values, revision))
    }

    /// The keys under the folder `dir`, without their values.
    async fn keys_under(&self, dir: &str) -> Result<Vec<Vec<u8>>, ClusterError> {
        let prefix = format!("{}/", self.key(dir));
        let got = retrying(&self.endpoints, || {
            let (mut client, prefix) = (self.client.clone(), prefix.clone());
            let options = etcd_client::GetOptions::new()
                .with_prefix()
                .with_keys_only();
            async move { client.get(prefix, Some(options)).await }
        })
        .await?;
        Ok(got.kvs().iter().map(|kv| kv.key().to_vec()).collect())
    }

    /// Every change under the folder `dir` after revision `after`, in order.
    pub async fn watch_dir(&self, dir: &str, after: i64) -> Result<Changes, ClusterError> {
        let prefix = format!("{}/", self.key(dir));
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut client = self.client.clone();
        let stream = bounded(&self.endpoints, client.watch(prefix.clone(), Some(options))).await?;
        Ok(Changes { prefix, stream })
    }

    /// Who leads, each time it changes (the value it campaigned with).
    pub async fn observe(&self) -> Result<etcd_client::ObserveStream, ClusterError> {
        let mut client = self.client.clone();
        bounded(&self.endpoints, client.observe(self.election())).await
    }

    /// The id of the replica that leads now, if one does.
    pub async fn leader(&self) -> Result<Option<String>, ClusterError> {
        let election = self.election();
        let asked = retrying(&self.endpoints, || {
            let (mut client, election) = (self.client.clone(), election.clone());
            async move { client.leader(election).await }
        });
        match asked.await {
            Ok(r) => Ok(r
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            // etcd answers "election: no leader" as an error.
            Err(ClusterError::Etcd(e)) if e.to_string().contains("no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` under `name` if `leadership` still leads, in one transaction; the
    /// revision of the write. [`ClusterError::Deposed`] if another replica leads or none does:
    /// nothing was written.
    pub async fn put_fenced(
        &self,
        leadership: &Leadership,
        name: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<i64, ClusterError> {
        self.txn_fenced(leadership, vec![TxnOp::put(self.key(name), value, None)])
            .await
    }

    /// Does `ops` in one transaction if `leadership` still leads (see [`Etcd::put_fenced`]).
    async fn txn_fenced(
        &self,
        leadership: &Leadership,
        ops: Vec<TxnOp>,
    ) -> Result<i64, ClusterError> {
        let fence =
            Compare::create_revision(leadership.key.key(), CompareOp::Equal, leadership.key.rev());
        let txn = Txn::new().when([fence]).and_then(ops);
        let done = retrying(&self.endpoints, || {
            let (mut client, txn) = (self.client.clone(), txn.clone());
            async move { client.txn(txn).await }
        })
        .await?;
        if !done.succeeded() {
            return Err(ClusterError::Deposed);
        }
        Ok(done.header().map_or(0, |h| h.revision()))
    }

    /// Writes the cluster's record if `leadership` still leads (see [`Etcd::put_fenced`]). The
    /// file's text goes under `files/<hash>` in the same transaction when this leadership has not
    /// written it yet, and the other files' keys are deleted: a record whose file is unchanged
    /// (a rollout's step) is the state alone.
    pub async fn save(
        &self,
        leadership: &Leadership,
        record: &Recorded,
    ) -> Result<i64, ClusterError> {
        let hash = file_hash(record.file.as_bytes());
        let this = (leadership.key.rev(), hash.clone());
        let written = self.file_written.lock().expect("not poisoned").clone();
        let mut ops = Vec::new();
        if written.as_ref() != Some(&this) {
            let this_file = self.key(&format!("{FILES}/{hash}"));
            for key in self.keys_under(FILES).await? {
                if key != this_file.as_bytes() {
                    ops.push(TxnOp::delete(key, None));
                }
            }
            ops.push(TxnOp::put(this_file, record.file.as_bytes(), None));
        }
        ops.push(TxnOp::put(self.key(RECORD), encode(record, &hash), None));
        let revision = match self.txn_fenced(leadership, ops).await {
            Err(ClusterError::Etcd(source)) if source.to_string().contains("too large") => {
                let kib = record.file.len().div_ceil(1024);
                return Err(ClusterError::TooLarge { kib, source });
            }
            written => written?,
        };
        *self.file_written.lock().expect("not poisoned") = Some(this);
        Ok(revision)
    }

    /// The cluster's record (with the revision it was written at); `None` before the first.
    pub async fn load(&self) -> Result<Option<Recorded>, ClusterError> {
        let Some((bytes, revision)) = self.get(RECORD).await? else {
            return Ok(None);
        };
        Ok(Some(self.read_record(&bytes, revision, None).await?.0))
    }

    /// The record in `bytes` (written at `revision`) with its file's text, and the file's hash:
    /// the text is `known`'s when the hash is the same (a file read before), else read as it
    /// was at that revision.
    async fn read_record(
        &self,
        bytes: &[u8],
        revision: i64,
        known: Option<&(String, std::sync::Arc<str>)>,
    ) -> Result<(Recorded, String), ClusterError> {
        let unusable = |reason: String| ClusterError::Record {
            key: self.key(RECORD),
            revision,
            reason,
        };
        let (mut record, file) = decode(bytes, revision).map_err(unusable)?;
        let hash = match file {
            FileRef::Text(text) => {
                let hash = file_hash(text.as_bytes());
                record.file = text.into();
                hash
            }
            FileRef::Hash(hash) => {
                record.file = match known.filter(|(h, _)| *h == hash) {
                    Some((_, text)) => text.clone(),
                    None => self.file_at(&hash, revision).await?.ok_or_else(|| {
                        unusable(format!(
                            "its deployment file ({FILES}/{hash}) is not in etcd: a newer record replaced it"
                        ))
                    })?,
                };
                hash
            }
        };
        Ok((record, hash))
    }

    /// The text under `files/<hash>` as of `revision` (or now, if etcd compacted that
    /// revision away).
    async fn file_at(
        &self,
        hash: &str,
        revision: i64,
    ) -> Result<Option<std::sync::Arc<str>>, ClusterError> {
        let key = self.key(&format!("{FILES}/{hash}"));
        let at = |revision: i64| {
            let key = key.clone();
            retrying(&self.endpoints, move || {
                let (mut client, key) = (self.client.clone(), key.clone());
                let options = etcd_client::GetOptions::new().with_revision(revision);
                async move { client.get(key, Some(options)).await }
            })
        };
        let got = match at(revision).await {
            Err(ClusterError::Etcd(e)) if e.to_string().contains("compacted") => at(0).await?,
            got => got?,
        };
        let Some(kv) = got.kvs().first() else {
            return Ok(None);
        };
        let text = std::str::from_utf8(kv.value()).map_err(|e| ClusterError::Record {
            key: key.clone(),
            revision,
            reason: format!("its deployment file is not UTF-8 text: {e}"),
        })?;
        Ok(Some(text.into()))
    }

    /// Every record written after revision `after`, in order: what a follower serves.
    pub async fn follow(&self, after: i64) -> Result<Records, ClusterError> {
        let key = self.key(RECORD);
        let options = WatchOptions::new().with_start_revision(after + 1);
        let mut client = self.client.clone();
        let stream = bounded(&self.endpoints, client.watch(key.clone(), Some(options))).await?;
        Ok(Records {
            etcd: self.clone(),
            key,
            stream,
            pending: std::collections::VecDeque::new(),
            last: None,
        })
    }

    /// What is under `name`, with the revision it was last written at.
    pub async fn get(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, ClusterError> {
        let key = self.key(name);
        let got = retrying(&self.endpoints, || {
            let (mut client, key) = (self.client.clone(), key.clone());
            async move { client.get(key, None).await }
        })
        .await?;
        Ok(got
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }
}

/// `request`, given at most [`REQUEST_TIMEOUT`] to answer.
async fn bounded<T>(
    endpoints: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(timeout(endpoints)),
    }
}

fn timeout(endpoints: &str) -> ClusterError {
    ClusterError::Timeout {
        endpoints: endpoints.to_owned(),
        after: REQUEST_TIMEOUT,
    }
}

/// `request` made again while etcd is unavailable (the client may pick a member that is down:
/// another answers the next try), for at most [`REQUEST_TIMEOUT`] in all. Only for requests
/// that may be repeated: reads, and fenced writes of a whole value.
async fn retrying<T, F>(endpoints: &str, mut request: impl FnMut() -> F) -> Result<T, ClusterError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        let attempt = (tokio::time::Instant::now() + ATTEMPT_TIMEOUT).min(deadline);
        match tokio::time::timeout_at(attempt, request()).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) if !unavailable(&e) => return Err(e.into()),
            // Unavailable, or no answer to this try: another try while time is left.
            Ok(Err(_)) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // No member answered in time.
            Ok(Err(_)) | Err(_) => return Err(timeout(endpoints)),
        }
    }
}

/// Whether a request failed for want of a member to answer it.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // Cancelled: the member the request went to closed its connection (it was stopped)
        // before answering.
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
        }
        _ => false,
    }
}

/// Renews the lease three times per `ttl`; says the leadership is lost when etcd answers that
/// the lease is gone, or when `ttl` passed since the last renewal etcd confirmed (from then on
/// etcd may have elected another replica). A renewal that fails (a member restarted, a
/// connection reset) is tried again on a new stream meanwhile.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 3;
    let mut confirmed = tokio::time::Instant::now();
    let mut stream = None;
    loop {
        if stream.is_none() {
            stream = tokio::time::timeout(every, client.lease_keep_alive(lease))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some((keeper, answers)) = &mut stream {
            let renewed = async {
                keeper.keep_alive().await.ok()?;
                answers.message().await.ok()?.map(|a| a.ttl())
            };
            match tokio::time::timeout(every.max(Duration::from_millis(100)), renewed).await {
                Ok(Some(left)) if left > 0 => confirmed = tokio::time::Instant::now(),
                // etcd says the lease is gone.
                Ok(Some(_)) => {
                    let _ = lost.send(true);
                    return;
                }
                // The stream failed: a new one next time.
                Ok(None) => stream = None,
                Err(_) => {}
            }
        }
        if confirmed.elapsed() >= ttl {
            let _ = lost.send(true);
            return;
        }
        let next = if stream.is_some() {
            every
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(next).await;
    }
}

/// A lease renewed in the background until it is dropped (or etcd refuses it).
pub struct Lease {
    id: i64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Lease {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Resolves once the lease may have ended (see [`Leadership::lost`]).
    pub async fn lost(&self) {
        let _ = self.lost.clone().wait_for(|lost| *lost).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// This replica leads: until [`Leadership::lost`] says otherwise, or it resigns.
pub struct Leadership {
    endpoints: String,
    key: LeaderKey,
    lease: i64,
    lost: watch::Receiver<bool>,
    /// The lease, when the leadership has one of its own ([`Etcd::lead`]).
    owned: Option<Lease>,
    client: Client,
}

impl Leadership {
    /// The lease the leadership lives on.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The create revision of the election key: tells one election from the next.
    pub fn term(&self) -> i64 {
        self.key.rev()
    }

    /// Resolves once this replica may no longer lead (its lease could not be renewed for its
    /// TTL, or etcd says it is gone): it must stop deciding. Its writes are refused from the
    /// moment etcd expires the lease whether it has noticed or not.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops renewing its own lease, as a paused or cut-off process would: etcd ends the
    /// leadership when the lease's TTL runs out.
    pub fn stop_renewing(&self) {
        if let Some(lease) = &self.owned {
            lease.keepalive.abort();
        }
    }

    /// Hands leadership over now: the election key (and the lease, if its own) is deleted, so
    /// another replica's campaign wins at once.
    pub async fn resign(mut self) -> Result<(), ClusterError> {
        let options = ResignOptions::new().with_leader(self.key.clone());
        bounded(&self.endpoints, self.client.resign(Some(options))).await?;
        if let Some(lease) = self.owned.take() {
            lease.keepalive.abort();
            bounded(&self.endpoints, self.client.lease_revoke(lease.id)).await?;
        }
        Ok(())
    }
}

/// Changes under a folder ([`Etcd::watch_dir`]).
pub struct Changes {
    prefix: String,
    stream: WatchStream,
}

impl Changes {
    /// The next changes: each key (below the folder) with its new value, or `None` where it
    /// was deleted (or its lease ended).
    pub async fn next(&mut self) -> Result<Vec<(String, Option<Vec<u8>>)>, ClusterError> {
        let answer = next_answer(&mut self.stream, &self.prefix).await?;
        Ok(answer
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                let name = String::from_utf8_lossy(kv.key().get(self.prefix.len()..)?).into_owned();
                let value = (event.event_type() == EventType::Put).then(|| kv.value().to_vec());
                Some((name, value))
            })
            .collect())
    }
}

/// The next answer of the watch on `key`; an error naming it when the watch ended.
async fn next_answer(
    stream: &mut WatchStream,
    key: &str,
) -> Result<etcd_client::WatchResponse, ClusterError> {
    let ended = |reason: String| ClusterError::WatchEnded {
        key: key.to_owned(),
        reason,
    };
    let answer = match stream.message().await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(ended("etcd closed it".to_owned())),
        Err(e) => return Err(ended(e.to_string())),
    };
    if answer.canceled() {
        return Err(ended(format!(
            "etcd canceled it: {}",
            answer.cancel_reason()
        )));
    }
    Ok(answer)
}

/// The records a follower receives, in the order they were written.
pub struct Records {
    etcd: Etcd,
    key: String,
    stream: WatchStream,
    pending: std::collections::VecDeque<(Vec<u8>, i64)>,
    /// The last record's file (hash and text): the next one of the same file needs no read.
    last: Option<(String, std::sync::Arc<str>)>,
}

impl Records {
    /// The next record. A record that cannot be used is an error for that
    /// record only: the next call goes on with the one after it.
    pub async fn next(&mut self) -> Result<Recorded, ClusterError> {
        loop {
            if let Some((bytes, revision)) = self.pending.pop_front() {
                let (record, hash) = self
                    .etcd
                    .read_record(&bytes, revision, self.last.as_ref())
                    .await?;
                self.last = Some((hash, record.file.clone()));
                return Ok(record);
            }
            let answer = next_answer(&mut self.stream, &self.key).await?;
            for event in answer.events() {
                if let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                    self.pending
                        .push_back((kv.value().to_vec(), kv.mod_revision()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_closed_its_connection_mid_request_is_tried_again_elsewhere() {
        // What the client said when a member was stopped under a write (seen on CI).
        let closed =
            etcd_client::Error::GRpcStatus(tonic::Status::cancelled("operation was canceled"));
        assert!(unavailable(&closed));
        let down = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no member"));
        assert!(unavailable(&down));
        // etcd's own refusals are answers, not tried again.
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("too large"));
        assert!(!unavailable(&refused));
    }
}
