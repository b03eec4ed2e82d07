//! The delta protocol machine, fed requests directly: no sockets, no clock. Tests named after a
//! report reproduce what that report found wrong in another control plane (or what Envoy does
//! that a server must tolerate). The fake client and the fixtures are the test kit's
//! (`crate::testing`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::testing::fixtures::{
    a_cluster_redefined, blue_green, blue_moved, deployment, only_blue, only_green, three_versions,
};
use crate::testing::xds::in_process::{self, converge, names, only, push, types};
use crate::testing::xds::{
    FakeEnvoy, Request, delta_ack as ack, delta_nack as nack, delta_request as request, node,
    with_node,
};
use crate::xds::clients::SyncState;

const C: ResourceType = ResourceType::Cluster;
const E: ResourceType = ResourceType::Endpoint;
const L: ResourceType = ResourceType::Listener;
const R: ResourceType = ResourceType::Route;

/// An ADS stream serving `snapshot` with a fake Envoy brought up on it.
fn connected(snapshot: Arc<Snapshot>) -> (Stream, FakeEnvoy) {
    in_process::connected(snapshot)
}

/// A new stream from `envoy` (a reconnect) to a server serving `snapshot`: the responses to its
/// first requests, each delivered to it, then everything converged.
fn reconnect(envoy: &mut FakeEnvoy, snapshot: Arc<Snapshot>) -> (Stream, Vec<Response>) {
    in_process::reconnect(envoy, snapshot)
}

#[test]
fn initial_connection_sends_clusters_and_endpoints_before_listeners_and_routes() {
    let (s, envoy) = connected(blue_green("blue"));
    assert_eq!(envoy.log, [C, E, L, R]);
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/blue".to_owned()])
    );
    assert_eq!(s.node().unwrap().id, "edge-1");
}

#[test]
fn versions_are_the_state_of_the_world_type_versions() {
    // Status, CSDS and the gates read both protocols alike.
    let snap = blue_green("blue");
    let (s, _envoy) = connected(snap.clone());
    // No TLS in the file: no listener names a secret, so none is asked for.
    for ty in ResourceType::ALL
        .into_iter()
        .filter(|&ty| ty != ResourceType::Secret)
    {
        assert_eq!(
            s.status(ty).acked.as_deref(),
            Some(snap.type_version(ty)),
            "{ty}"
        );
    }
    assert_eq!(s.sync_state(), SyncState::InSync);
    assert_eq!(s.snapshot_version(), Some(snap.version.as_str()));
}

#[test]
fn go_control_plane_800_a_new_version_and_the_switch_to_it_in_one_edit_is_make_before_break() {
    let (mut s, mut envoy) = connected(only_blue());
    envoy.log.clear();
    // FakeEnvoy asserts after every response that routes only target held clusters.
    let next = only_green();
    push(&mut s, &mut envoy, next.clone());
    assert_eq!(
        envoy.log,
        [
            C, // green added, blue kept
            E, // green's endpoints
            R, // to green
            C, // blue removed, once the routes to green are ACKed
            E, // and its endpoints
        ]
    );
    assert!(envoy.holds_exactly(&next));
    assert!(s.in_sync());
}

#[test]
fn istio_34949_a_change_sends_only_what_changed_and_is_not_the_full_state() {
    let (mut s, mut envoy) = connected(blue_green("blue"));
    envoy.log.clear();
    let out = s.on_snapshot(blue_green("green"));
    let r = only(&out);
    assert_eq!((r.ty, names(r), r.removed.len()), (R, vec!["public"], 0));
    let next = envoy.receive(r);
    converge(&mut s, &mut envoy, next);
    // Clusters, endpoints and listeners are untouched by a response that does not name them.
    assert!(envoy.holds_exactly(&blue_green("green")));
    assert!(s.in_sync());
}

#[test]
fn istio_46882_what_is_gone_is_removed() {
    let (mut s, mut envoy) = connected(three_versions());
    let out = s.on_snapshot(blue_green("blue"));
    assert_eq!(types(&out), [C, E]);
    for r in &out.responses {
        assert_eq!(
            (r.resources.len(), r.removed.clone()),
            (0, vec!["checkout/red".to_owned()])
        );
    }
    let mut next = Vec::new();
    for r in &out.responses {
        next.extend(envoy.receive(r));
    }
    converge(&mut s, &mut envoy, next);
    assert!(envoy.holds_exactly(&blue_green("blue")));
    assert!(s.in_sync());
}

#[test]
fn envoy_16063_a_reconnect_holding_the_current_versions_gets_nothing_to_apply() {
    let snap = blue_green("blue");
    let (_old, mut envoy) = connected(snap.clone());
    let before = envoy.held.clone();
    let (s, first) = reconnect(&mut envoy, snap);
    // One message all the same, so that Envoy resets its reconnect backoff: a response that
    // changes nothing.
    let [greeting] = &first[..] else {
        panic!("{first:?}")
    };
    assert!(greeting.resources.is_empty() && greeting.removed.is_empty());
    assert_eq!(envoy.held, before, "nothing changes for Envoy");
    assert!(s.in_sync());
}

#[test]
fn java_control_plane_463_istio_41494_a_reconnect_removes_what_is_gone_and_sends_what_changed() {
    let (_old, mut envoy) = connected(blue_green("blue"));
    envoy.log.clear();
    // While the client was away, green went and blue's endpoint moved.
    let next = deployment(&[("blue", "127.0.0.1:9091")], "blue");
    let (s, first) = reconnect(&mut envoy, next.clone());
    let c = first.iter().find(|r| r.ty == C).expect("a CDS response");
    assert_eq!(
        (c.resources.len(), c.removed.clone()),
        (0, vec!["checkout/green".to_owned()])
    );
    let e = first.iter().find(|r| r.ty == E).expect("an EDS response");
    assert_eq!(names(e), ["checkout/blue"]);
    assert!(!first.iter().any(|r| r.ty == L || r.ty == R), "{first:?}");
    assert!(envoy.holds_exactly(&next));
    assert!(s.in_sync());
}

#[test]
fn a_reconnect_to_a_switched_config_is_make_before_break() {
    let (_old, mut envoy) = connected(only_blue());
    envoy.log.clear();
    // Checked by the fake after every response: no route to a cluster it does not hold.
    let next = only_green();
    let (s, _) = reconnect(&mut envoy, next.clone());
    assert_eq!(envoy.log, [C, E, R, C, E]);
    assert!(envoy.holds_exactly(&next));
    assert!(s.in_sync());
}

#[test]
fn go_control_plane_1450_names_subscribed_again_are_answered_even_if_held() {
    let (mut s, _envoy) = connected(blue_green("blue"));
    let out = s.on_request(&request(E, &["checkout/blue"], &[]));
    let r = only(&out);
    assert_eq!((r.ty, names(r)), (E, vec!["checkout/blue"]));
    s.on_request(&ack(E, &r.nonce));
    // `*` too: everything again.
    let out = s.on_request(&request(C, &["*"], &[]));
    assert_eq!(names(only(&out)), ["checkout/blue", "checkout/green"]);
}

#[test]
fn go_control_plane_583_unsubscribe_then_resubscribe_is_sent_again() {
    let (mut s, _envoy) = connected(blue_green("blue"));
    let out = s.on_request(&request(E, &[], &["checkout/green"]));
    assert!(
        out.responses.is_empty(),
        "an unsubscription needs no answer"
    );
    let out = s.on_request(&request(E, &["checkout/green"], &[]));
    assert_eq!(names(only(&out)), ["checkout/green"]);
}

#[test]
fn envoy_22418_a_resource_forgotten_after_a_reconnect_is_sent_when_asked_again() {
    let snap = blue_green("blue");
    let (_old, mut envoy) = connected(snap.clone());
    let (mut s, _) = reconnect(&mut envoy, snap);
    // Listed as held on reconnect, then asked for: the client forgot it.
    let out = s.on_request(&request(R, &["public"], &[]));
    assert_eq!(names(only(&out)), ["public"]);
}

/// go-control-plane #565: a client subscribing to a name that does not exist is told so in
/// `removed_resources` (it need not wait for a timeout); #488: and it stays subscribed, so the
/// resource is sent when it appears.
#[test]
fn go_control_plane_488_565_a_name_that_does_not_exist_is_removed_and_sent_when_it_appears() {
    let (mut s, _envoy) = connected(blue_green("blue"));
    let out = s.on_request(&request(E, &["checkout/red"], &[]));
    let r = only(&out).clone();
    assert!(r.resources.is_empty());
    assert_eq!(r.removed, ["checkout/red"]);
    s.on_request(&ack(E, &r.nonce));
    assert!(s.in_sync(), "red is not in the config");
    let out = s.on_snapshot(three_versions());
    let eds: Vec<&Response> = out.responses.iter().filter(|r| r.ty == E).collect();
    assert_eq!(names(eds[0]), ["checkout/red"]);
    assert!(eds[0].removed.is_empty());
}

#[test]
fn envoy_21416_the_legacy_wildcard_is_a_first_request_naming_nothing() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(C, &[], &[]));
    let r = only(&out).clone();
    assert_eq!(names(&r), ["checkout/blue", "checkout/green"]);
    // Later requests naming nothing (ACKs) leave it wildcard, and so does subscribing to a name.
    s.on_request(&ack(C, &r.nonce));
    let out = s.on_request(&request(C, &["checkout/blue"], &[]));
    let r = only(&out).clone();
    s.on_request(&ack(C, &r.nonce));
    let out = s.on_snapshot(three_versions());
    assert_eq!(names(&out.responses[0]), ["checkout/red"]);
}

#[test]
fn conformance_1_the_explicit_wildcard_with_or_without_names() {
    for subscribe in [vec!["*"], vec!["*", "checkout/blue"]] {
        let mut s = Stream::new(Mode::Aggregated);
        s.on_snapshot(blue_green("blue"));
        let out = s.on_request(&request(C, &subscribe, &[]));
        assert_eq!(
            names(only(&out)),
            ["checkout/blue", "checkout/green"],
            "{subscribe:?}"
        );
    }
    let mut s = Stream::new(Mode::Single(L));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(L, &["*"], &[]));
    assert_eq!(names(only(&out)), ["public"]);
}

#[test]
fn unsubscribing_a_name_the_wildcard_covers_is_answered_with_the_resource() {
    let mut s = Stream::new(Mode::Single(C));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(C, &["*", "checkout/blue"], &[]));
    let r = only(&out).clone();
    s.on_request(&ack(C, &r.nonce));
    let out = s.on_request(&request(C, &[], &["checkout/blue"]));
    let r = only(&out);
    assert_eq!((names(r), r.removed.len()), (vec!["checkout/blue"], 0));
}

#[test]
fn unsubscribing_the_wildcard_keeps_only_the_names() {
    let mut s = Stream::new(Mode::Single(C));
    s.on_snapshot(blue_green("blue"));
    let r = only(&s.on_request(&request(C, &["*", "checkout/blue"], &[]))).clone();
    s.on_request(&ack(C, &r.nonce));
    let out = s.on_request(&request(C, &[], &["*"]));
    assert!(out.responses.is_empty(), "the client drops what it forgets");
    assert_eq!(
        s.view().types[C]
            .acked
            .as_ref()
            .unwrap()
            .resources
            .keys()
            .collect::<Vec<_>>(),
        ["checkout/blue"]
    );
    // Green changes: nothing for this client.
    let out = s.on_snapshot(deployment(
        &[("blue", "127.0.0.1:8081"), ("green", "127.0.0.1:8099")],
        "blue",
    ));
    assert!(out.responses.is_empty(), "{out:?}");
}

#[test]
fn envoy_17980_a_child_asked_for_after_its_parent_went_is_tolerated() {
    let snap = blue_green("blue");
    let (_old, mut envoy) = connected(snap.clone());
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(snap.clone());
    let mut requests = envoy.reconnect();
    for req in &mut requests {
        let req = req.delta_mut();
        if req.type_url == R.type_url() {
            // A route configuration whose listener went while the control plane was away:
            // still held at an old version, and one asked for but never received.
            req.resource_names_subscribe
                .extend(["gone".to_owned(), "never".to_owned()]);
            req.initial_resource_versions
                .insert("gone".into(), "0123456789abcdef".into());
        }
    }
    let mut sent = Vec::new();
    for req in requests {
        sent.extend(s.on_request(&req.into_delta()).responses);
    }
    let r = sent.iter().find(|r| r.ty == R).expect("an RDS response");
    // Both are gone: the one it held, and the one it asked for and never got (a name that
    // does not exist is named in removed_resources, as the spec says).
    assert_eq!(
        (r.resources.len(), r.removed.clone()),
        (0, vec!["gone".to_owned(), "never".to_owned()])
    );
    s.on_request(&ack(R, &r.nonce));
    assert!(s.in_sync());
}

#[test]
fn a_stale_nonce_is_not_an_answer_but_its_subscription_changes_count() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let e = only(&s.on_request(&request(E, &["checkout/blue"], &[]))).clone();
    // Not the nonce in flight: no ACK, but green is subscribed to (and answered once blue's
    // response is).
    let mut stale = request(E, &["checkout/green"], &[]);
    stale.response_nonce = "99".into();
    let out = s.on_request(&stale);
    assert_eq!(out, Output::default());
    assert_eq!(
        s.status(E).pending.as_deref(),
        Some(e.version.as_str()),
        "still in flight"
    );
    let out = s.on_request(&ack(E, &e.nonce));
    assert!(matches!(out.events[..], [Event::Ack { ty: E, .. }]));
    assert_eq!(names(only(&out)), ["checkout/green"]);
}

#[test]
fn a_nacked_response_is_recorded_and_not_sent_again() {
    let (mut s, mut envoy) = connected(blue_green("blue"));
    envoy.reject = Some(R);
    let events = push(&mut s, &mut envoy, blue_green("green"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Nack { ty: R, .. }))
    );
    let nacked = s.status(R).last_nack.expect("NACK recorded");
    assert_eq!(nacked.error, "rejected by test");
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/blue".to_owned()])
    );
    assert_eq!(s.sync_state(), SyncState::Rejected);

    // Not sent again on other requests, nor after changes that leave it the same.
    envoy.log.clear();
    let out = s.on_request(&request(E, &[], &[]));
    assert!(out.responses.is_empty());
    push(
        &mut s,
        &mut envoy,
        deployment(
            &[("blue", "127.0.0.1:8081"), ("green", "127.0.0.1:8099")],
            "green",
        ),
    );
    assert!(!envoy.log.contains(&R), "{:?}", envoy.log);

    // The next change of the routes is sent, and accepted.
    envoy.reject = None;
    let next = deployment(
        &[("blue", "127.0.0.1:8081"), ("teal", "127.0.0.1:8082")],
        "teal",
    );
    push(&mut s, &mut envoy, next.clone());
    assert!(envoy.holds_exactly(&next));
    assert!(s.in_sync());
}

#[test]
fn a_nacked_cluster_holds_back_the_routes_that_need_it() {
    let (mut s, mut envoy) = connected(only_blue());
    envoy.reject = Some(C);
    envoy.log.clear();
    push(&mut s, &mut envoy, only_green());
    assert_eq!(envoy.log, [C], "routes must not follow a rejected cluster");
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/blue".to_owned()])
    );
}

#[test]
fn rapid_edits_never_leave_a_route_without_its_cluster() {
    let (mut s, mut envoy) = connected(deployment(&[("v1", "127.0.0.1:8081")], "v1"));
    let mut pending = Vec::new();
    let mut last = None;
    for i in 2..7 {
        let name = format!("v{i}");
        let addr = format!("127.0.0.1:80{i:02}");
        let snap = deployment(&[(name.as_str(), addr.as_str())], &name);
        let out = s.on_snapshot(snap.clone());
        for r in &out.responses {
            pending.extend(envoy.receive(r));
        }
        last = Some(snap);
    }
    converge(&mut s, &mut envoy, pending);
    assert!(envoy.holds_exactly(&last.unwrap()));
    assert!(s.in_sync());
}

#[test]
fn endpoints_are_resent_when_a_cluster_is_redefined() {
    let (basic, changed, name) = a_cluster_redefined();
    let (mut s, mut envoy) = connected(basic);
    envoy.log.clear();
    let out = s.on_snapshot(changed);
    // The cluster, and right behind it (not after its ACK: Envoy ACKs a redefined cluster only
    // once it has warmed, which needs them) its endpoints again.
    assert_eq!(types(&out), [C, E]);
    assert_eq!(
        names(&out.responses[0]),
        [name.as_str()],
        "only the redefined cluster"
    );
    assert_eq!(names(&out.responses[1]), [name.as_str()]);
    let mut sent = Vec::new();
    for r in &out.responses {
        for req in envoy.receive(r) {
            let more = s.on_request(&req.into_delta());
            for r in &more.responses {
                envoy.receive(r);
            }
            sent.extend(more.responses);
        }
    }
    assert!(sent.iter().all(|r| r.ty != E), "sent once: {sent:?}");
    assert!(s.in_sync());
}

#[test]
fn an_unchanged_snapshot_sends_nothing() {
    let (mut s, _envoy) = connected(blue_green("blue"));
    assert_eq!(s.on_snapshot(blue_green("blue")), Output::default());
}

#[test]
fn per_type_streams_send_their_type_without_waiting() {
    let mut s = Stream::new(Mode::Single(R));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&DeltaDiscoveryRequest {
        type_url: String::new(),
        ..request(R, &["public"], &[])
    });
    assert_eq!(types(&out), [R]);
    let other = s.on_request(&request(C, &[], &[]));
    assert!(other.responses.is_empty());
    assert!(matches!(other.events[..], [Event::UnknownType { .. }]));
}

#[test]
fn conformance_2_a_client_that_routes_nothing_yet_is_answered_at_once_in_any_order() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let l = only(&s.on_request(&request(L, &[], &[]))).clone();
    assert_eq!(names(&l), ["public"]);
    s.on_request(&ack(L, &l.nonce));
    let r = only(&s.on_request(&request(R, &["public"], &[]))).clone();
    assert_eq!(names(&r), ["public"]);
    s.on_request(&ack(R, &r.nonce));
    let c = only(&s.on_request(&request(C, &["checkout/blue"], &[]))).clone();
    assert_eq!(names(&c), ["checkout/blue"]);
    s.on_request(&ack(C, &c.nonce));
    let e = only(&s.on_request(&request(E, &["checkout/blue"], &[]))).clone();
    assert_eq!(names(&e), ["checkout/blue"]);
    s.on_request(&ack(E, &e.nonce));
    // Now it routes: a switch to green waits for green's cluster and endpoints.
    let out = s.on_snapshot(blue_green("green"));
    assert!(out.responses.is_empty(), "{out:?}");
}

#[test]
fn a_reconnect_that_reports_routes_waits_for_clusters() {
    let (_old, mut envoy) = connected(only_blue());
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(only_green());
    // Routes and listeners first: held back, the client routes with what it holds.
    let mut requests = envoy.reconnect();
    requests.sort_by_key(|r| std::cmp::Reverse(ResourceType::from_type_url(r.type_url())));
    let mut requests = requests.into_iter().map(Request::into_delta);
    let first = s.on_request(&requests.next().unwrap());
    assert!(first.responses.is_empty(), "{first:?}");
    let second = s.on_request(&requests.next().unwrap());
    assert!(second.responses.is_empty(), "{second:?}");
}

/// A small deterministic generator (xorshift64) for the randomised tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n, a usize")
    }
}

/// A random deployment: one to three versions out of five, each with a random endpoint, one of
/// them active.
fn random_deployment(rng: &mut Rng) -> Arc<Snapshot> {
    let all = ["v1", "v2", "v3", "v4", "v5"];
    let count = 1 + rng.below(3);
    let start = rng.below(5);
    let chosen: Vec<&str> = (0..count).map(|i| all[(start + i) % 5]).collect();
    let addrs: Vec<String> = chosen
        .iter()
        .map(|_| format!("127.0.0.1:{}", 8000 + rng.below(3)))
        .collect();
    let versions: Vec<(&str, &str)> = chosen
        .iter()
        .zip(&addrs)
        .map(|(v, a)| (*v, a.as_str()))
        .collect();
    let active = chosen[rng.below(count)];
    deployment(&versions, active)
}

/// Hundreds of random histories: edits pushed while earlier ones are still being answered,
/// reconnects to a server that moved on meanwhile, rejected responses. After every response the
/// fake checks make-before-break and that only held names are removed; at the end the client
/// holds exactly the last config and the machine says it is in sync.
#[test]
fn random_histories_keep_routes_on_held_clusters_and_converge() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut snap = random_deployment(&mut rng);
        let (mut s, mut envoy) = connected(snap.clone());
        let mut queued = Vec::new();
        for _ in 0..8 {
            match rng.below(5) {
                0 => {
                    // Deliver some of the queued requests before the next edit.
                    let n = rng.below(queued.len() + 1);
                    for req in queued.drain(..n).collect::<Vec<Request>>() {
                        for r in s.on_request(&req.into_delta()).responses {
                            queued.extend(envoy.receive(&r));
                        }
                    }
                }
                1 => {
                    // The stream breaks; the client reconnects to a server serving a new config.
                    converge(&mut s, &mut envoy, std::mem::take(&mut queued));
                    snap = random_deployment(&mut rng);
                    s = reconnect(&mut envoy, snap.clone()).0;
                }
                2 => {
                    envoy.reject = [None, Some(C), Some(R)][rng.below(3)];
                }
                _ => {
                    snap = random_deployment(&mut rng);
                    for r in s.on_snapshot(snap.clone()).responses {
                        queued.extend(envoy.receive(&r));
                    }
                }
            }
        }
        envoy.reject = None;
        converge(&mut s, &mut envoy, queued);
        // A last edit after any rejection, so that nothing is held back.
        let last = deployment(&[("final", "127.0.0.1:9999")], "final");
        push(&mut s, &mut envoy, last.clone());
        assert!(envoy.holds_exactly(&last), "seed {seed}: {:?}", envoy.held);
        assert!(s.in_sync(), "seed {seed}");
    }
}

mod conformance;

/// The ordering rule for clients that name their listeners is `order`'s, for both protocols: a
/// delta client that names its listener (as gRPC's proxyless clients do) gets a switch's route
/// at once, since it asks for a cluster only once a route names it; and it is in sync with what
/// it uses, as a state-of-the-world one is.
#[test]
fn a_client_that_names_its_listener_gets_a_switch_route_at_once_and_is_in_sync_with_what_it_uses() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    for (ty, name) in [
        (L, "public"),
        (R, "public"),
        (C, "checkout/blue"),
        (E, "checkout/blue"),
    ] {
        let out = s.on_request(&request(ty, &[name], &[]));
        let r = only(&out);
        assert_eq!(names(r), [name]);
        s.on_request(&ack(ty, &r.nonce));
    }
    assert!(s.in_sync(), "checkout/green is idle: never asked for");
    let out = s.on_snapshot(blue_green("green"));
    assert_eq!(
        types(&out),
        [R],
        "the route first, without waiting for green's cluster"
    );
    assert!(!s.in_sync(), "the route is on its way");
    s.on_request(&ack(R, &only(&out).nonce));
    for ty in [C, E] {
        let out = s.on_request(&request(ty, &["checkout/green"], &[]));
        assert!(!s.in_sync(), "green's {ty:?} is on its way");
        let r = only(&out);
        assert_eq!(names(r), ["checkout/green"]);
        s.on_request(&ack(ty, &r.nonce));
    }
    assert!(s.in_sync());
}
