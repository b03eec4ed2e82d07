//! Cluster mode's footing on real etcd members (`cutover::cluster`): one leader at a time,
//! failover within the lease's TTL, and writes fenced by leadership, so that a leader that was
//! paused past its lease can never write over its successor. Three members on loopback ports,
//! started by the test (`cutover::testing::etcd`).

use std::time::{Duration, Instant};

use cutover::cluster::{ClusterError, Etcd};
use cutover::testing::etcd::EtcdCluster;

const PREFIX: &str = "/cutover/test";
const TTL: Duration = Duration::from_secs(2);

async fn replica(cluster: &EtcdCluster) -> Etcd {
    Etcd::connect(&cluster.endpoints(), PREFIX)
        .await
        .expect("connect to etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_within_its_ttl_and_cannot_write_after() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let (a, b) = (replica(&cluster).await, replica(&cluster).await);
    let mut leading_a = a.lead("a", TTL).await.unwrap();
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("a"));
    a.put_fenced(&leading_a, "state", "from a").await.unwrap();

    // B campaigns, and waits while A leads.
    let campaign = tokio::spawn({
        let b = b.clone();
        async move { b.lead("b", TTL).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!campaign.is_finished(), "B must not lead while A does");

    // A stops renewing its lease, as a paused process would: B leads within the TTL and a
    // second, A learns it lost, and A's writes are refused whether it knows yet or not.
    leading_a.stop_renewing();
    let paused = Instant::now();
    let leading_b = tokio::time::timeout(TTL + Duration::from_secs(3), campaign)
        .await
        .expect("B leads once A's lease expired")
        .unwrap()
        .unwrap();
    let failover = paused.elapsed();
    assert!(
        failover <= TTL + Duration::from_secs(1),
        "B led {failover:?} after A stopped renewing (lease {TTL:?})"
    );
    eprintln!("failover: B leads {failover:?} after A's last renewal (lease {TTL:?})");
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("b"));
    let written = a.get("state").await.unwrap().unwrap();
    match a.put_fenced(&leading_a, "state", "late from a").await {
        Err(ClusterError::Deposed) => {}
        other => panic!("a deposed leader's write: {other:?}"),
    }
    assert_eq!(
        a.get("state").await.unwrap().unwrap(),
        written,
        "nothing of A's landed"
    );
    tokio::time::timeout(TTL + Duration::from_secs(1), leading_a.lost())
        .await
        .expect("A learns it no longer leads");

    b.put_fenced(&leading_b, "state", "from b").await.unwrap();
    assert_eq!(a.get("state").await.unwrap().unwrap().0, b"from b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_resigns_hands_over_at_once() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let (a, b) = (replica(&cluster).await, replica(&cluster).await);
    let leading_a = a.lead("a", Duration::from_secs(30)).await.unwrap();
    let campaign = tokio::spawn({
        let b = b.clone();
        async move { b.lead("b", Duration::from_secs(30)).await }
    });
    // Longer than any request may take: a campaign waits for its turn however long.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !campaign.is_finished(),
        "B must not lead (nor give up) while A leads"
    );
    let resigned = Instant::now();
    leading_a.resign().await.unwrap();
    let leading_b = tokio::time::timeout(Duration::from_secs(2), campaign)
        .await
        .expect("B leads at once")
        .unwrap()
        .unwrap();
    eprintln!("handover after a resignation: {:?}", resigned.elapsed());
    b.put_fenced(&leading_b, "state", "b").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_changes_nothing_and_without_a_majority_nothing_is_written() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let a = replica(&cluster).await;
    let leading = a.lead("a", Duration::from_secs(30)).await.unwrap();
    a.put_fenced(&leading, "state", "1").await.unwrap();

    cluster.kill(2);
    a.put_fenced(&leading, "state", "2").await.unwrap();
    assert_eq!(a.get("state").await.unwrap().unwrap().0, b"2");

    // Two of three down: no majority, so nothing is written, and the answer comes in bounded
    // time (an error, never a hang).
    cluster.kill(1);
    let asked = Instant::now();
    let without_quorum = a.put_fenced(&leading, "state", "3").await;
    assert!(without_quorum.is_err(), "{without_quorum:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );

    // A majority again: writes go through. (The refused write may still be applied when the
    // majority returns, etcd having taken it before it timed out: still behind its fence.)
    cluster.restart(1).await;
    let mut last = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        match a.put_fenced(&leading, "state", "4").await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.is_none(),
        "no write after the majority came back: {last:?}"
    );
    assert_eq!(a.get("state").await.unwrap().unwrap().0, b"4");
}

/// The leader's record (the file it serves and the runtime state) is read back whole, followed
/// by another replica in the order it was written, and a record this cutover cannot use (of a
/// newer format, or corrupt) is refused by name, the follower going on with the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_followed_in_order_and_a_bad_one_is_refused_by_name() {
    use cutover::reconcile::{RuntimeState, Timestamp};
    use cutover::replica::Recorded;
    let Some(cluster) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (replica(&cluster).await, replica(&cluster).await);
    assert!(
        b.load().await.unwrap().is_none(),
        "no record before the first"
    );
    let leading = a.lead("a", Duration::from_secs(30)).await.unwrap();
    let mut follower = b.follow(0).await.unwrap();
    let record = |i: u64| {
        let mut state = RuntimeState::default();
        state.fallbacks.insert(
            cutover::ids::FallbackId {
                service: "shop".into(),
                version: format!("v{i}"),
                fallback: "v0".into(),
            },
            Timestamp::from_millis(1_800_000_000_000 + i),
        );
        Recorded {
            file: format!("# version {i}\n").into(),
            state,
            earlier_files: Vec::new(),
            revision: 0,
            leader: "a".to_owned(),
        }
    };
    let json = |r: &Recorded| serde_json::to_value(&r.state).unwrap();
    let mut revisions = Vec::new();
    for i in 1..=3 {
        revisions.push(a.save(&leading, &record(i)).await.unwrap());
    }
    for (i, written) in (1..=3).zip(&revisions) {
        let got = follower.next().await.unwrap();
        let revision = got.revision;
        assert_eq!(got.file, record(i).file);
        assert_eq!(json(&got), json(&record(i)));
        assert_eq!(revision, *written);
    }
    let loaded = b.load().await.unwrap().unwrap();
    assert_eq!(
        (&*loaded.file, loaded.revision),
        ("# version 3\n", revisions[2])
    );

    for (bytes, says) in [
        (
            &br#"{"format": 99, "file": "", "state": {}}"#[..],
            "written by a newer cutover",
        ),
        (&b"not json"[..], "not a cutover record"),
    ] {
        a.put_fenced(&leading, "record", bytes).await.unwrap();
        for err in [
            b.load().await.map(|_| ()),
            follower.next().await.map(|_| ()),
        ] {
            let text = err.unwrap_err().to_string();
            assert!(
                text.contains(says) && text.contains("/cutover/test/record"),
                "{text}"
            );
        }
    }
    a.save(&leading, &record(4)).await.unwrap();
    assert_eq!(&*follower.next().await.unwrap().file, "# version 4\n");
}

/// The file's text has a key of its own, written once per file and leadership: a record of the
/// same file (a rollout's step) is the state alone, the folder keeps only the file served, a
/// leader that comes back after another wrote its file again, and a record of the first format
/// (the text inside) is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_written_once_per_change_and_a_step_writes_the_state_alone() {
    use cutover::reconcile::RuntimeState;
    use cutover::replica::{Recorded, file_hash};
    let Some(cluster) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b, c) = (
        replica(&cluster).await,
        replica(&cluster).await,
        replica(&cluster).await,
    );
    let big = "# a file of some size\n".repeat(1_000);
    let record = |file: &str| Recorded {
        file: file.into(),
        state: RuntimeState::default(),
        earlier_files: Vec::new(),
        revision: 0,
        leader: "a".to_owned(),
    };
    let files = async |etcd: &Etcd| -> Vec<String> {
        etcd.list("files")
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    let leading = a.lead("a", TTL).await.unwrap();
    let mut follower = b.follow(0).await.unwrap();
    a.save(&leading, &record(&big)).await.unwrap();
    let key = format!("files/{}", file_hash(big.as_bytes()));
    let (text, written_at) = b.get(&key).await.unwrap().expect("the file's key");
    assert_eq!(text, big.as_bytes());
    // Two steps: the record alone, small.
    for _ in 0..2 {
        a.save(&leading, &record(&big)).await.unwrap();
        let (value, _) = b.get("record").await.unwrap().unwrap();
        assert!(
            value.len() < 1_000,
            "the record carries {} bytes",
            value.len()
        );
    }
    assert_eq!(
        b.get(&key).await.unwrap().unwrap().1,
        written_at,
        "written again"
    );
    for _ in 0..3 {
        assert_eq!(&*follower.next().await.unwrap().file, big);
    }
    a.save(&leading, &record("# the next file\n"))
        .await
        .unwrap();
    assert_eq!(&*follower.next().await.unwrap().file, "# the next file\n");
    assert_eq!(files(&b).await, [file_hash(b"# the next file\n")]);

    // Another leader writes another file (the first one's key goes); when the first leads
    // again, its record of its file has the text beside it again.
    leading.resign().await.unwrap();
    let leading_c = c.lead("c", TTL).await.unwrap();
    c.save(&leading_c, &record("# c's file\n")).await.unwrap();
    leading_c.resign().await.unwrap();
    let leading = a.lead("a", TTL).await.unwrap();
    a.save(&leading, &record("# the next file\n"))
        .await
        .unwrap();
    assert_eq!(&*b.load().await.unwrap().unwrap().file, "# the next file\n");
    assert_eq!(files(&b).await, [file_hash(b"# the next file\n")]);

    // A file larger than etcd takes in one request (1.5 MiB by default): refused, saying
    // what to raise; what was recorded stays.
    let huge = "# a line of a very large file\n".repeat(64 * 1024);
    let refused = a
        .save(&leading, &record(&huge))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("1920 KiB") && refused.contains("--max-request-bytes"),
        "{refused}"
    );
    assert_eq!(&*b.load().await.unwrap().unwrap().file, "# the next file\n");

    // A record as the first format wrote it: the text inside.
    a.put_fenced(
        &leading,
        "record",
        br##"{"format": 1, "file": "# format 1\n", "state": {}}"##.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(&*b.load().await.unwrap().unwrap().file, "# format 1\n");
}

/// An etcd nobody answers at, or a URL that is no URL: an error that names what was asked, in
/// bounded time, never a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_wrong_etcd_url_is_a_clear_error() {
    let closed = cutover::testing::free_port();
    let url = format!("http://{closed}");
    let asked = Instant::now();
    let unreachable = match Etcd::connect(std::slice::from_ref(&url), PREFIX).await {
        Err(e) => e.to_string(),
        Ok(etcd) => etcd
            .get("state")
            .await
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|e| e.to_string()),
    };
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(unreachable.contains(&url), "{unreachable}");
    let wrong = Etcd::connect(&["http://[not a url".to_owned()], PREFIX).await;
    let text = wrong.err().expect("a URL that is no URL").to_string();
    assert!(text.contains("[not a url"), "{text}");
}

/// A leadership lasts while etcd is up: its lease is renewed and a watch stays open over a
/// quarter of a minute (longer than etcd's minimum ping interval, which it enforces by closing
/// connections that ping more often, three times over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leadership_lasts_while_etcd_is_up() {
    let Some(cluster) = EtcdCluster::start(1).await else {
        return;
    };
    let etcd = replica(&cluster).await;
    let mut leading = etcd.lead("a", TTL).await.unwrap();
    let mut records = etcd.follow(0).await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(15), leading.lost()).await;
    assert!(held.is_err(), "the leadership ended with etcd up");
    let wrote = etcd.put_fenced(
        &leading,
        "record",
        br#"{"format": 1, "file": "", "state": {}}"#.to_vec(),
    );
    let revision = wrote.await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), records.next()).await;
    assert_eq!(
        next.expect("the watch still delivers").unwrap().revision,
        revision
    );
}

/// etcd with mutual TLS (`--client-cert-auth`): a client with a certificate of the CA etcd
/// trusts leads and writes; one without a certificate gets nothing; a certificate file that
/// is not there is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_mutual_tls_serves_a_client_with_a_certificate_only() {
    use cutover::replica::EtcdTls;
    use cutover::testing::pki::Ca;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("etcd CA");
    let server = ca.write(dir.path(), "etcd", &ca.server(&["127.0.0.1"]));
    let client = ca.write(dir.path(), "client", &ca.client(&["cutover"]));
    let Some(cluster) = EtcdCluster::start_tls(1, server).await else {
        return;
    };
    let with_cert = EtcdTls {
        ca: client.ca.clone(),
        identity: Some((client.cert.clone(), client.key.clone())),
    };
    let etcd = Etcd::connect_tls(&cluster.endpoints(), PREFIX, Some(&with_cert))
        .await
        .unwrap();
    let leading = etcd.lead("a", TTL).await.unwrap();
    etcd.put_fenced(&leading, "state", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(etcd.get("state").await.unwrap().unwrap().0, b"1");

    let without = EtcdTls {
        ca: client.ca.clone(),
        identity: None,
    };
    let refused = async {
        let etcd = Etcd::connect_tls(&cluster.endpoints(), PREFIX, Some(&without)).await?;
        etcd.get("state").await
    };
    assert!(
        refused.await.is_err(),
        "a client without a certificate read etcd"
    );

    let missing = EtcdTls {
        ca: dir.path().join("nowhere.pem"),
        identity: None,
    };
    let err = Etcd::connect_tls(&cluster.endpoints(), PREFIX, Some(&missing))
        .await
        .err()
        .expect("a missing CA file is an error")
        .to_string();
    assert!(
        err.contains("nowhere.pem") && err.contains("--etcd-ca"),
        "{err}"
    );
}
