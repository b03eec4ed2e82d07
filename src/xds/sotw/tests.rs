//! The protocol state machine, fed requests directly: no sockets, no clock. The fake client
//! and the fixtures are the test kit's (`crate::testing`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::*;
use crate::testing::Protocol;
use crate::testing::fixtures::{
    a_cluster_redefined, blue_green, blue_moved, deployment, green_moved, only_blue, only_green,
    three_versions,
};
use crate::testing::xds::in_process::{self, converge, names, only, push, types};
use crate::testing::xds::{FakeEnvoy, node, sotw_nack as nack, sotw_request as request, with_node};
use crate::xds::clients::SyncState;

const C: ResourceType = ResourceType::Cluster;
const E: ResourceType = ResourceType::Endpoint;
const L: ResourceType = ResourceType::Listener;
const R: ResourceType = ResourceType::Route;

/// An ADS stream serving `snapshot` with a fake Envoy brought up on it.
fn connected(snapshot: Arc<Snapshot>) -> (Stream, FakeEnvoy) {
    in_process::connected(snapshot)
}

#[test]
fn initial_connection_sends_clusters_and_endpoints_before_listeners_and_routes() {
    let (stream, envoy) = connected(blue_green("blue"));
    assert_eq!(envoy.log, [C, E, L, R]);
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/blue".to_owned()])
    );
    assert_eq!(stream.node().unwrap().id, "edge-1");
}

#[test]
fn listeners_wait_for_acked_clusters_and_endpoints_when_the_client_may_be_routing() {
    // A reconnect: the client says it holds listeners (and so their routes) from before.
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let cds = s.on_request(&request(C, "", "", &[]));
    assert_eq!(types(&cds), [C]);
    let lds = s.on_request(&request(L, "old", "", &[]));
    assert!(
        lds.responses.is_empty(),
        "no listener before its clusters are ACKed"
    );
    let c = &cds.responses[0];
    let eds = s.on_request(&request(E, "", "", &["checkout/blue", "checkout/green"]));
    assert_eq!(types(&eds), [E]);
    assert_eq!(
        names(&eds.responses[0]),
        ["checkout/blue", "checkout/green"]
    );
    let ack = s.on_request(&request(C, &c.version, &c.nonce, &[]));
    assert!(ack.responses.is_empty(), "endpoints not ACKed yet");
    let e = &eds.responses[0];
    let ack = s.on_request(&request(
        E,
        &e.version,
        &e.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    assert_eq!(types(&ack), [L]);
}

/// A TCP listener names its clusters itself: a client that holds one routes without routes,
/// and a switch to a new cluster waits for that cluster and its endpoints.
#[test]
fn a_client_holding_a_tcp_listener_gets_a_switch_only_after_its_cluster() {
    let blue = crate::testing::fixtures::tcp(&[("blue", "127.0.0.1:5432")], "blue");
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue);
    let mut acked = BTreeMap::new();
    for (ty, names) in [(C, &[][..]), (E, &["postgres/blue"][..]), (L, &[][..])] {
        let out = s.on_request(&request(ty, "", "", names));
        assert_eq!(types(&out), [ty]);
        let r = &out.responses[0];
        s.on_request(&request(ty, &r.version, &r.nonce, names));
        acked.insert(ty, r.clone());
    }
    let green = crate::testing::fixtures::tcp(
        &[("blue", "127.0.0.1:5432"), ("green", "127.0.0.1:5433")],
        "green",
    );
    let out = s.on_snapshot(green);
    assert_eq!(types(&out), [C], "the listener waits for green's cluster");
    let c = &out.responses[0];
    let both = ["postgres/blue", "postgres/green"];
    let out = s.on_request(&request(C, &c.version, &c.nonce, &[]));
    assert!(out.responses.is_empty(), "{:?}", types(&out));
    let e = &acked[&E];
    let out = s.on_request(&request(E, &e.version, &e.nonce, &both));
    assert_eq!(types(&out), [E]);
    let e = &out.responses[0];
    let out = s.on_request(&request(E, &e.version, &e.nonce, &both));
    assert_eq!(
        types(&out),
        [L],
        "green's cluster and endpoints are in: the listener"
    );
}

/// Conformance (issue 11, item 2): a client that asks for listeners and routes before clusters
/// (gRPC's proxyless clients ask LDS → RDS → CDS → EDS) holds no routes, so nothing can break:
/// each request is answered at once.
#[test]
fn a_client_that_routes_nothing_yet_is_answered_at_once_in_any_order() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let lds = s.on_request(&request(L, "", "", &[]));
    let l = &lds.responses[0];
    assert_eq!((l.ty, names(l)), (L, vec!["public"]));
    s.on_request(&request(L, &l.version, &l.nonce, &[]));
    let rds = s.on_request(&request(R, "", "", &["public"]));
    let r = &rds.responses[0];
    assert_eq!((r.ty, names(r)), (R, vec!["public"]));
    s.on_request(&request(R, &r.version, &r.nonce, &["public"]));
    let cds = s.on_request(&request(C, "", "", &["checkout/blue"]));
    let c = &cds.responses[0];
    assert_eq!(names(c), ["checkout/blue"]);
    s.on_request(&request(C, &c.version, &c.nonce, &["checkout/blue"]));
    let eds = s.on_request(&request(E, "", "", &["checkout/blue"]));
    let e = &eds.responses[0];
    assert_eq!(names(e), ["checkout/blue"]);
    s.on_request(&request(E, &e.version, &e.nonce, &["checkout/blue"]));

    // From now on it routes: a switch to green waits for green's cluster and endpoints.
    let out = s.on_snapshot(blue_green("green"));
    assert!(out.responses.is_empty(), "{:?}", types(&out));
    let cds = s.on_request(&request(
        C,
        &c.version,
        &c.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    assert_eq!(types(&cds), [C]);
}

/// Conformance (issue 11, item 2): a client that ACKs clusters but never asks for endpoints
/// still gets its listeners and routes while it routes nothing.
#[test]
fn a_client_that_never_asks_for_endpoints_still_gets_listeners_and_routes() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let cds = s.on_request(&request(C, "", "", &[]));
    let c = &cds.responses[0];
    s.on_request(&request(C, &c.version, &c.nonce, &[]));
    let lds = s.on_request(&request(L, "", "", &[]));
    assert_eq!(types(&lds), [L]);
}

#[test]
fn a_switch_sends_only_routes() {
    let (mut s, mut envoy) = connected(blue_green("blue"));
    envoy.log.clear();
    push(&mut s, &mut envoy, blue_green("green"));
    assert_eq!(envoy.log, [R]);
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/green".to_owned()])
    );
    assert!(s.in_sync());
}

#[test]
fn a_new_version_and_the_switch_to_it_in_one_edit_is_make_before_break() {
    let (mut s, mut envoy) = connected(only_blue());
    envoy.log.clear();
    // FakeEnvoy asserts after every response that routes only target held clusters.
    push(&mut s, &mut envoy, only_green());
    assert_eq!(
        envoy.log,
        [
            C, // blue + green
            E, // green's endpoints
            R, // to green
            C, // blue removed, once the routes to green are ACKed
        ]
    );
    assert_eq!(envoy.clusters(), ["checkout/green"]);
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/green".to_owned()])
    );
    assert!(s.in_sync());
}

#[test]
fn rapid_edits_never_leave_a_route_without_its_cluster() {
    let (mut s, mut envoy) = connected(deployment(&[("v1", "127.0.0.1:8081")], "v1"));
    // Push several snapshots before Envoy answers anything.
    let mut pending = Vec::new();
    for i in 2..6 {
        let name = format!("v{i}");
        let addr = format!("127.0.0.1:80{i:02}");
        let out = s.on_snapshot(deployment(&[(name.as_str(), addr.as_str())], &name));
        for r in &out.responses {
            pending.extend(envoy.receive(r));
        }
    }
    converge(&mut s, &mut envoy, pending);
    assert_eq!(envoy.clusters(), ["checkout/v5"]);
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/v5".to_owned()])
    );
    assert!(s.in_sync());
}

#[test]
fn stale_nonces_are_ignored() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let first = s.on_request(&request(C, "", "", &[]));
    let first = &first.responses[0];
    s.on_request(&request(C, &first.version, &first.nonce, &[]));
    let second = s.on_snapshot(only_blue());
    let second = &second.responses[0];
    assert_ne!(first.nonce, second.nonce);
    // A request that crossed the second push on the wire still answers the first.
    let stale = s.on_request(&request(C, &first.version, &first.nonce, &[]));
    assert_eq!(stale, Output::default());
    assert_eq!(
        s.status(C).pending.as_deref(),
        Some(second.version.as_str())
    );
    let ack = s.on_request(&request(C, &second.version, &second.nonce, &[]));
    assert_eq!(
        ack.events,
        [Event::Ack {
            ty: C,
            version: second.version.clone()
        }]
    );
}

#[test]
fn a_nacked_version_is_recorded_and_not_sent_again() {
    let (mut s, mut envoy) = connected(blue_green("blue"));
    envoy.reject = Some(R);
    let events = push(&mut s, &mut envoy, blue_green("green"));
    let nacked = s.status(R).last_nack.expect("NACK recorded");
    assert_eq!(nacked.error, "rejected by test");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Nack { ty: R, .. }))
    );
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/blue".to_owned()])
    );
    assert!(!s.in_sync());

    // The same content again (another request for routes) is not resent.
    envoy.log.clear();
    let again = s.on_request(&request(R, &envoy.versions[&R], "", &["public"]));
    assert!(again.responses.is_empty());

    // Nor after other changes, while it is still the content to send.
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
    push(
        &mut s,
        &mut envoy,
        deployment(
            &[("blue", "127.0.0.1:8081"), ("teal", "127.0.0.1:8082")],
            "teal",
        ),
    );
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/teal".to_owned()])
    );
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
fn a_reconnect_holding_the_current_versions_gets_nothing_to_apply() {
    let snapshot = blue_green("blue");
    let (_old, mut envoy) = connected(snapshot.clone());
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(snapshot);
    // Every type again, each with the version it holds and the names it asks for.
    let mut sent = Vec::new();
    for req in envoy.reconnect() {
        sent.extend(s.on_request(&req.into_sotw()).responses);
    }
    // One message, so that Envoy resets its reconnect backoff: the routes it holds, again,
    // under the version it holds. Not an empty response under that version: a client that
    // trusts the version would believe it holds no routes.
    let [greeting] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(greeting.ty, R);
    assert_eq!(greeting.version, envoy.versions[&R]);
    let held_routes: Vec<String> = envoy.held[&R].keys().cloned().collect();
    assert!(!held_routes.is_empty());
    assert_eq!(names(greeting), held_routes, "the same content");
    let held = envoy.held.clone();
    let ack = envoy.receive(greeting);
    assert_eq!(envoy.held, held, "nothing changes for Envoy");
    assert!(!s.in_sync(), "until the greeting is answered");
    converge(&mut s, &mut envoy, ack);
    assert!(s.in_sync());
    assert_eq!(envoy.held, held);
}

#[test]
fn a_per_type_stream_reconnecting_to_cds_gets_the_same_set_again() {
    let snapshot = blue_green("blue");
    let (_old, envoy) = connected(snapshot.clone());
    let mut s = Stream::new(Mode::Single(C));
    s.on_snapshot(snapshot);
    let version = envoy.versions[&C].clone();
    let out = s.on_request(&request(C, &version, "", &[]));
    let [r] = &out.responses[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.version, version);
    assert_eq!(names(r), ["checkout/blue", "checkout/green"]);
    s.on_request(&request(C, &version, &r.nonce, &[]));
    assert!(s.in_sync());
    // Once per stream.
    let out = s.on_request(&request(C, &version, &r.nonce, &[]));
    assert!(out.responses.is_empty());
}

#[test]
fn a_reconnect_holding_older_versions_gets_the_difference() {
    let (_old, mut envoy) = connected(blue_green("blue"));
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("green"));
    envoy.log.clear();
    // Every type again, each with the version it holds and the names it asks for.
    let requests = envoy.reconnect();
    converge(&mut s, &mut envoy, requests);
    assert_eq!(envoy.log, [R]);
    assert_eq!(
        envoy.route_targets(),
        BTreeSet::from(["checkout/green".to_owned()])
    );
}

#[test]
fn new_names_are_answered_and_unknown_names_sent_when_they_appear() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(E, "", "", &["checkout/blue"]));
    let first = &out.responses[0];
    assert_eq!(names(first), ["checkout/blue"]);
    // Adding a name that exists: answered even though no content changed.
    let out = s.on_request(&request(
        E,
        &first.version,
        &first.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    let second = &out.responses[0];
    assert_eq!(names(second), ["checkout/blue", "checkout/green"]);
    // A name that does not exist yet: nothing to send now...
    let out = s.on_request(&request(
        E,
        &second.version,
        &second.nonce,
        &["checkout/blue", "checkout/green", "checkout/red"],
    ));
    assert!(out.responses.is_empty());
    // ...and sent when it appears.
    let out = s.on_snapshot(three_versions());
    let eds: Vec<&Response> = out.responses.iter().filter(|r| r.ty == E).collect();
    assert_eq!(
        names(eds[0]),
        ["checkout/blue", "checkout/green", "checkout/red"]
    );
}

#[test]
fn new_clusters_get_their_endpoints() {
    let (mut s, mut envoy) = connected(only_blue());
    envoy.log.clear();
    push(&mut s, &mut envoy, blue_green("blue"));
    assert_eq!(envoy.log, [C, E]);
    assert_eq!(
        envoy.held[&E].keys().collect::<Vec<_>>(),
        ["checkout/blue", "checkout/green"]
    );
}

#[test]
fn endpoints_are_resent_when_a_cluster_is_redefined() {
    // Same names and endpoints, one cluster definition changed: Envoy re-creates that cluster,
    // which warms until it receives its endpoints again.
    // They go right behind the cluster, not after its ACK: Envoy ACKs a redefined cluster only
    // once it has warmed, so it would wait for its initial fetch timeout (15 s).
    let (basic, changed, _) = a_cluster_redefined();
    let (mut s, mut envoy) = connected(basic);
    envoy.log.clear();
    let out = s.on_snapshot(changed);
    assert_eq!(types(&out), [C, E]);
    for r in &out.responses {
        for req in envoy.receive(r) {
            let more = s.on_request(&req.into_sotw());
            assert!(more.responses.is_empty(), "sent once: {more:?}");
        }
    }
    assert_eq!(envoy.log, [C, E]);
    assert!(s.in_sync());
}

#[test]
fn dropped_names_need_no_response() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let both = ["checkout/blue", "checkout/green"];
    let out = s.on_request(&request(E, "", "", &both));
    let r = &out.responses[0];
    let out = s.on_request(&request(E, &r.version, &r.nonce, &["checkout/blue"]));
    assert!(out.responses.is_empty());
    // Asking again for the dropped name is a new subscription: it is answered.
    let out = s.on_request(&request(E, &r.version, "", &both));
    assert_eq!(names(&out.responses[0]), both);
}

#[test]
fn an_ack_restating_its_names_in_any_order_changes_nothing_and_a_repeated_name_drops_another() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let both = ["checkout/blue", "checkout/green"];
    let out = s.on_request(&request(E, "", "", &both));
    let r = out.responses[0].clone();
    let ack = s.on_request(&request(E, &r.version, &r.nonce, &both));
    assert!(ack.responses.is_empty());
    let reordered = ["checkout/green", "checkout/blue", "checkout/green"];
    let again = s.on_request(&request(E, &r.version, &r.nonce, &reordered));
    assert!(
        again.responses.is_empty(),
        "the same names: no new subscription"
    );
    // As many names as before, one of them twice: green only, so blue is no longer held.
    let narrowed = s.on_request(&request(
        E,
        &r.version,
        &r.nonce,
        &["checkout/green", "checkout/green"],
    ));
    assert!(
        narrowed.responses.is_empty(),
        "dropped names need no response"
    );
    assert_eq!(
        s.view().types[E]
            .acked
            .as_ref()
            .map(|h| h.resources.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["checkout/green".to_owned()])
    );
    let back = s.on_request(&request(E, &r.version, &r.nonce, &both));
    assert_eq!(
        names(&back.responses[0]),
        both,
        "blue asked for again: sent"
    );
}

#[test]
fn an_unchanged_snapshot_sends_nothing() {
    let (mut s, _envoy) = connected(blue_green("blue"));
    assert_eq!(s.on_snapshot(blue_green("blue")), Output::default());
}

#[test]
fn per_type_streams_send_their_type_without_waiting() {
    let mut s = Stream::new(Mode::Single(L));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(L, "", "", &[]));
    assert_eq!(types(&out), [L]);
    let other = s.on_request(&request(C, "", "", &[]));
    assert!(other.responses.is_empty());
    assert!(matches!(other.events[..], [Event::UnknownType { .. }]));
}

#[test]
fn types_are_not_sent_unasked() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(C, "", "", &[]));
    assert_eq!(types(&out), [C]);
}

#[test]
fn a_subscription_change_with_the_acked_nonce_is_answered() {
    // Envoy sends every request of a type with the last nonce it received for that type, so
    // after an ACK a request adding names carries that (answered) nonce: it is not stale.
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(E, "", "", &["checkout/blue"]));
    let r = out.responses[0].clone();
    let ack = s.on_request(&request(E, &r.version, &r.nonce, &["checkout/blue"]));
    assert!(ack.responses.is_empty());
    let more = s.on_request(&request(
        E,
        &r.version,
        &r.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    assert_eq!(
        names(&more.responses[0]),
        ["checkout/blue", "checkout/green"]
    );
    assert!(more.events.is_empty(), "not a second ACK");
}

#[test]
fn a_type_not_asked_for_yet_is_not_in_sync() {
    // Envoy asks for routes after its listeners are ACKed: until then it holds no route, so
    // it is not in sync (status, save-to-ACK and the retirement gate rely on this).
    let mut s = Stream::new(Mode::Aggregated);
    let mut envoy = FakeEnvoy::new(Protocol::Sotw);
    s.on_snapshot(blue_green("blue"));
    let mut requests = envoy.start();
    let mut seen_lds_ack = false;
    for _ in 0..100 {
        let Some(req) = (!requests.is_empty()).then(|| requests.remove(0)) else {
            break;
        };
        if req.type_url() == R.type_url() {
            // Held back: the route subscription has not arrived yet.
            continue;
        }
        let out = s.on_request(&req.into_sotw());
        seen_lds_ack |= out
            .events
            .iter()
            .any(|e| matches!(e, Event::Ack { ty: L, .. }));
        for r in &out.responses {
            requests.extend(envoy.receive(r));
        }
    }
    assert!(seen_lds_ack);
    assert!(!s.in_sync(), "no route subscribed, none held");
    assert_eq!(s.sync_state(), SyncState::Pending);
    let out = s.on_request(&request(R, "", "", &["public"]));
    let r = &out.responses[0];
    s.on_request(&request(R, &r.version, &r.nonce, &["public"]));
    assert!(s.in_sync());
}

/// gRPC's proxyless clients name their listener and then ask only for what it leads to: the
/// idle colour's cluster is never asked for, and such a client is still in sync (so it
/// answers switches and does not hold back retirements or rollouts).
#[test]
fn a_client_that_names_its_listener_is_in_sync_with_what_it_uses() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let mut last = BTreeMap::new();
    for (ty, name) in [
        (L, "public"),
        (R, "public"),
        (C, "checkout/blue"),
        (E, "checkout/blue"),
    ] {
        assert!(!s.in_sync(), "{ty:?} not asked for yet");
        let out = s.on_request(&request(ty, "", "", &[name]));
        let r = &out.responses[0];
        assert_eq!(names(r), [name]);
        s.on_request(&request(ty, &r.version, &r.nonce, &[name]));
        last.insert(ty, (r.version.clone(), r.nonce.clone()));
    }
    assert!(s.in_sync(), "checkout/green is idle: never asked for");
    assert_eq!(s.sync_state(), SyncState::InSync);

    // A switch: the route comes first, at once (the client asks for green's cluster only once
    // a route names it); until green's cluster and endpoints are held, it is not in sync.
    let out = s.on_snapshot(blue_green("green"));
    assert_eq!(types(&out), [R]);
    let r = &out.responses[0];
    s.on_request(&request(R, &r.version, &r.nonce, &["public"]));
    let both = ["checkout/blue", "checkout/green"];
    for ty in [C, E] {
        let (version, nonce) = &last[&ty];
        let out = s.on_request(&request(ty, version, nonce, &both));
        assert!(!s.in_sync(), "green's {ty:?} is on its way");
        let r = &out.responses[0];
        assert_eq!(names(r), both);
        s.on_request(&request(ty, &r.version, &r.nonce, &both));
    }
    assert!(s.in_sync());
}

#[test]
fn endpoints_of_only_some_clusters_are_not_in_sync() {
    let mut s = Stream::new(Mode::Single(E));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(E, "", "", &["checkout/blue"]));
    let r = &out.responses[0];
    s.on_request(&request(E, &r.version, &r.nonce, &["checkout/blue"]));
    assert!(!s.in_sync(), "checkout/green's endpoints are not held");
}

#[test]
fn a_client_that_rejected_the_current_config_has_answered_it() {
    let (mut s, mut envoy) = connected(blue_green("blue"));
    envoy.reject = Some(R);
    push(&mut s, &mut envoy, blue_green("green"));
    assert!(!s.in_sync());
    assert_eq!(s.sync_state(), SyncState::Rejected);
    // The next change is sent and pending again.
    envoy.reject = None;
    let out = s.on_snapshot(deployment(
        &[("blue", "127.0.0.1:8081"), ("green", "127.0.0.1:8083")],
        "green",
    ));
    assert!(!out.responses.is_empty());
    assert_eq!(s.sync_state(), SyncState::Pending);
}

#[test]
fn the_explicit_wildcard_subscribes_to_every_cluster_and_listener() {
    for names in [vec!["*"], vec!["*", "checkout/blue"]] {
        let mut s = Stream::new(Mode::Aggregated);
        s.on_snapshot(blue_green("blue"));
        let out = s.on_request(&request(C, "", "", &names));
        assert_eq!(
            names_of(&out),
            ["checkout/blue", "checkout/green"],
            "CDS {names:?}"
        );
    }
    // LDS ["*"]: every listener, never an empty set (which in state-of-the-world xDS tells the
    // client to delete every listener it holds).
    let mut s = Stream::new(Mode::Single(L));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(L, "", "", &["*"]));
    assert_eq!(names_of(&out), ["public"]);
}

#[test]
fn an_empty_list_after_names_unsubscribes_and_star_resubscribes() {
    let mut s = Stream::new(Mode::Single(C));
    s.on_snapshot(blue_green("blue"));
    let out = s.on_request(&request(C, "", "", &["checkout/blue"]));
    let r = out.responses[0].clone();
    assert_eq!(names(&r), ["checkout/blue"]);
    let out = s.on_request(&request(C, &r.version, &r.nonce, &[]));
    assert_eq!(
        names_of(&out),
        Vec::<&str>::new(),
        "unsubscribed from everything"
    );
    let r = out.responses[0].clone();
    let out = s.on_request(&request(C, &r.version, &r.nonce, &["*"]));
    assert_eq!(names_of(&out), ["checkout/blue", "checkout/green"]);
}

/// The resource names of the one response in `out`.
fn names_of(out: &Output) -> Vec<&str> {
    names(only(out))
}

mod conformance;

/// A burst of changes while a response is unanswered costs the client one response, the
/// latest, once it answers: not one per change.
#[test]
fn changes_while_a_response_is_in_flight_go_out_as_one_response_once_it_is_answered() {
    let mut s = Stream::new(Mode::Single(C));
    s.on_snapshot(blue_green("blue"));
    let first = s.on_request(&request(C, "", "", &[]));
    let first = &first.responses[0];
    for snapshot in [only_blue(), only_green(), three_versions()] {
        assert_eq!(s.on_snapshot(snapshot), Output::default(), "held back");
    }
    let out = s.on_request(&request(C, &first.version, &first.nonce, &[]));
    let [latest] = &out.responses[..] else {
        panic!("{out:?}")
    };
    let all: Vec<String> = three_versions().resources(C).keys().cloned().collect();
    assert_eq!(names(latest), all, "the latest content");
    s.on_request(&request(C, &latest.version, &latest.nonce, &[]));
    assert!(s.in_sync());
}
