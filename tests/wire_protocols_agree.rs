//! State of the world and delta, driven by the same random histories: config versions published
//! (delivered, or lost with the connection), reconnects, and responses of a type rejected for a
//! while. At no point may routes reach a client before the clusters (and endpoints) they send to:
//! the kit's fake client checks that on every message it applies. Until a client rejects
//! something, a client of each protocol holds the same resources after every step; and once
//! nothing is rejected, both end up holding exactly what is served.

use std::sync::{Arc, LazyLock};

use cutover::snapshot::Snapshot;
use cutover::testing::xds::in_process::{Machine, converge, push};
use cutover::testing::xds::{CDS, EDS, FakeEnvoy, LDS, RDS};
use cutover::xds::clients::SentSets;
use cutover::xds::{Mode, ResourceType, delta, sotw};
use proptest::prelude::*;

/// Config versions: the examples that deploy `checkout`, and edits that switch colours, move
/// weights, add and remove endpoints, versions and routes.
static SNAPSHOTS: LazyLock<Vec<Arc<Snapshot>>> = LazyLock::new(|| {
    let examples = [
        include_str!("../examples/blue-green.yaml"),
        include_str!("../examples/red-black.yaml"),
        include_str!("../examples/canary.yaml"),
        include_str!("../examples/rolling.yaml"),
        include_str!("../examples/ab-testing.yaml"),
    ];
    let edits = [
        ("active: blue", "active: green"),
        ("weight: 10", "weight: 100"),
        ("weight: 10", "weight: 0"),
        (", 127.0.0.1:8082]", "]"),
        ("127.0.0.1:8081", "127.0.0.1:9081"),
        ("prefix: /", "prefix: /v2"),
    ];
    let mut texts: Vec<String> = examples.iter().map(ToString::to_string).collect();
    for example in examples {
        for (from, to) in edits {
            if example.contains(from) {
                texts.push(example.replacen(from, to, 1));
            }
        }
    }
    let snapshots: Vec<Arc<Snapshot>> = texts
        .iter()
        .map(|text| {
            Arc::new(cutover::app::compile("deploy.yaml", text).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect();
    assert!(snapshots.len() > 10, "{}", snapshots.len());
    snapshots
});

#[derive(Debug, Clone)]
enum Op {
    /// Publish a config version and deliver everything it leads to.
    Publish(usize),
    /// Publish a config version whose responses are lost with the connection: a reconnect.
    PublishThenReconnect(usize),
    /// Reconnect holding what the client holds.
    Reconnect,
    /// Reject (NACK) every response of a type from now on, or nothing.
    Reject(Option<ResourceType>),
}

fn op() -> impl Strategy<Value = Op> {
    let ty = prop_oneof![Just(CDS), Just(EDS), Just(LDS), Just(RDS)];
    prop_oneof![
        4 => any::<usize>().prop_map(Op::Publish),
        2 => any::<usize>().prop_map(Op::PublishThenReconnect),
        1 => Just(Op::Reconnect),
        2 => proptest::option::of(ty).prop_map(Op::Reject),
    ]
}

/// One client of protocol `M`, the server's stream for it, and what the server's streams sent
/// (state of the world reads there what a reconnecting client holds).
struct Side<M: Machine> {
    stream: M,
    envoy: FakeEnvoy,
    serving: Arc<Snapshot>,
    sent: Arc<SentSets>,
}

impl<M: Machine> Side<M> {
    fn new(first: Arc<Snapshot>) -> Side<M> {
        let sent = Arc::new(SentSets::default());
        let mut stream = M::new(Mode::Aggregated).remembering(sent.clone());
        let mut envoy = FakeEnvoy::new(M::PROTOCOL);
        let _ = stream.publish(first.clone());
        let start = envoy.start();
        converge(&mut stream, &mut envoy, start);
        assert!(envoy.holds_exactly(&first));
        Side {
            stream,
            envoy,
            serving: first,
            sent,
        }
    }

    fn reconnect(&mut self) {
        self.stream = M::new(Mode::Aggregated).remembering(self.sent.clone());
        let _ = self.stream.publish(self.serving.clone());
        let requests = self.envoy.reconnect();
        converge(&mut self.stream, &mut self.envoy, requests);
    }

    fn apply(&mut self, op: &Op) {
        let pick = |i: usize| SNAPSHOTS[i % SNAPSHOTS.len()].clone();
        match op {
            Op::Publish(i) => {
                self.serving = pick(*i);
                push(&mut self.stream, &mut self.envoy, self.serving.clone());
            }
            Op::PublishThenReconnect(i) => {
                self.serving = pick(*i);
                let _lost = self.stream.publish(self.serving.clone());
                self.reconnect();
            }
            Op::Reconnect => self.reconnect(),
            Op::Reject(ty) => self.envoy.reject = *ty,
        }
    }
}

/// What a client holds, by type: each resource's name and version.
fn held(envoy: &FakeEnvoy) -> Vec<(ResourceType, Vec<(String, String)>)> {
    envoy
        .held
        .iter()
        .map(|(ty, set)| {
            let resources = set
                .values()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            (*ty, resources)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn both_protocols_hold_the_same_resources_after_every_step(
        first in any::<usize>(),
        ops in proptest::collection::vec(op(), 1..24),
        last in any::<usize>(),
    ) {
        let first = SNAPSHOTS[first % SNAPSHOTS.len()].clone();
        let mut sotw = Side::<sotw::Stream>::new(first.clone());
        let mut delta = Side::<delta::Stream>::new(first);
        let mut rejected = false;
        for (i, op) in ops.iter().enumerate() {
            sotw.apply(op);
            delta.apply(op);
            // A client rejecting a type may be left holding more with one protocol (state of
            // the world keeps the endpoints of clusters it still holds): both are safe, and
            // they meet again below, once nothing is rejected.
            rejected |= matches!(op, Op::Reject(Some(_)));
            if rejected {
                continue;
            }
            prop_assert_eq!(
                held(&sotw.envoy),
                held(&delta.envoy),
                "after step {} of {:?}",
                i,
                ops
            );
        }
        // Nothing rejected any more, and a last version (content the rejections never saw,
        // so neither machine holds it back): both hold exactly what is served.
        for side in [&mut sotw.envoy, &mut delta.envoy] {
            side.reject = None;
        }
        for op in [Op::Reconnect, Op::Publish(last)] {
            sotw.apply(&op);
            delta.apply(&op);
        }
        prop_assert!(sotw.envoy.holds_exactly(&sotw.serving), "state of the world after {:?}", ops);
        prop_assert!(delta.envoy.holds_exactly(&delta.serving), "delta after {:?}", ops);
    }
}

/// The first history the test above found: a client whose stream is lost with a switch to a
/// version without its clusters reconnects, saying only the version of clusters it holds.
/// Those its routes use are kept until its routes move (state of the world reads what it holds
/// from what cutover sent; a delta client names it).
#[test]
fn a_reconnect_to_a_version_without_the_clients_clusters_keeps_them_until_its_routes_move() {
    let clusters = |s: &Snapshot| s.resources(CDS).keys().cloned().collect::<Vec<_>>();
    let position = |names: &[&str]| {
        SNAPSHOTS
            .iter()
            .position(|s| clusters(s) == names)
            .unwrap_or_else(|| panic!("a snapshot with clusters {names:?}"))
    };
    let (from, to) = (
        position(&["checkout/blue", "checkout/green"]),
        position(&["checkout/black"]),
    );
    let mut sotw = Side::<sotw::Stream>::new(SNAPSHOTS[from].clone());
    let mut delta = Side::<delta::Stream>::new(SNAPSHOTS[from].clone());
    sotw.apply(&Op::PublishThenReconnect(to));
    delta.apply(&Op::PublishThenReconnect(to));
    assert!(sotw.envoy.holds_exactly(&SNAPSHOTS[to]));
    assert!(delta.envoy.holds_exactly(&SNAPSHOTS[to]));
}
