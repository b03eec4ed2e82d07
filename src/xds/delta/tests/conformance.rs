//! The incremental (delta) xDS protocol, sentence by sentence: each test is named after a
//! requirement on the server in Envoy's "xDS REST and gRPC protocol" (docs/root/api-docs/
//! xds_protocol.rst, "Incremental xDS" and the sections that apply to every variant) and quotes
//! it. docs/conformance.md maps each sentence to its test. No sockets: the machine is fed
//! requests.

use super::*;

fn with_nonce(req: DeltaDiscoveryRequest, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: nonce.to_owned(),
        ..req
    }
}

fn without_node(req: DeltaDiscoveryRequest) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { node: None, ..req }
}

/// A per-type stream of `ty` serving `snapshot`.
fn single(ty: ResourceType, snapshot: Arc<Snapshot>) -> Stream {
    in_process::single(ty, snapshot)
}

/// "Incremental xDS": "In the delta xDS wire protocol, the nonce field is required and used to
/// pair a DeltaDiscoveryResponse to a DeltaDiscoveryRequest ACK or NACK."
#[test]
fn the_nonce_field_is_required_in_every_response() {
    let (mut stream, mut envoy) = connected(blue_green("blue"));
    let out = stream.on_snapshot(three_versions());
    let mut nonces: Vec<String> = out.responses.iter().map(|r| r.nonce.clone()).collect();
    for r in &out.responses {
        envoy.receive(r);
    }
    let (_, first) = reconnect(&mut envoy, blue_green("blue"));
    nonces.extend(first.iter().map(|r| r.nonce.clone()));
    assert!(
        !nonces.is_empty() && nonces.iter().all(|n| !n.is_empty()),
        "{nonces:?}"
    );
}

/// "Basic Protocol Overview": "Only the first request on a stream is guaranteed to carry the
/// node identifier."
#[test]
fn only_the_first_request_is_guaranteed_to_carry_the_node_identifier() {
    let mut s = single(C, blue_green("blue"));
    let first = with_node(request(C, &[], &[]), node("edge-1")).into_delta();
    let r = only(&s.on_request(&first)).clone();
    let out = s.on_request(&without_node(ack(C, &r.nonce)));
    assert!(out.events.iter().any(|e| matches!(e, Event::Ack { .. })));
    assert_eq!(s.node().unwrap().id, "edge-1");
    assert_eq!(only(&s.on_snapshot(three_versions())).resources.len(), 1);
}

/// "ACK or NACK is determined by the absence or presence of error_detail."
#[test]
fn ack_or_nack_is_determined_by_error_detail() {
    let mut s = single(C, blue_green("blue"));
    let r = only(&s.on_request(&request(C, &[], &[]))).clone();
    let out = s.on_request(&nack(C, &r.nonce, "bad cluster"));
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, Event::Nack { error, .. } if error == "bad cluster"))
    );
    let r = only(&s.on_snapshot(three_versions())).clone();
    let out = s.on_request(&ack(C, &r.nonce));
    assert!(out.events.iter().any(|e| matches!(e, Event::Ack { .. })));
}

/// "Spontaneous DeltaDiscoveryRequests from the client. This can be done to dynamically add or
/// remove elements from the tracked resource_names set. In this case response_nonce must be
/// omitted." — and "the server must honor changes to the subscription state even if the nonce
/// is stale".
#[test]
fn subscription_changes_are_honoured_even_with_a_stale_nonce() {
    let mut s = single(E, blue_green("blue"));
    let first = only(&s.on_request(&request(E, &["checkout/blue"], &[]))).clone();
    s.on_request(&ack(E, &first.nonce));
    let moved = blue_moved();
    let newer = only(&s.on_snapshot(moved)).clone();
    assert_ne!(newer.nonce, first.nonce);
    // Stale nonce, new name: the subscription counts (green follows the response in flight).
    let mut sent = s
        .on_request(&with_nonce(
            request(E, &["checkout/green"], &[]),
            &first.nonce,
        ))
        .responses;
    sent.extend(s.on_request(&ack(E, &newer.nonce)).responses);
    assert!(
        sent.iter()
            .any(|r| r.resources.iter().any(|x| x.name == "checkout/green")),
        "{sent:?}"
    );
    for r in &sent {
        s.on_request(&ack(E, &r.nonce));
    }
    // Stale nonce, unsubscription: it counts too.
    s.on_request(&with_nonce(
        request(E, &[], &["checkout/blue"]),
        &first.nonce,
    ));
    let blue_moved_again = deployment(
        &[("blue", "127.0.0.1:7777"), ("green", "127.0.0.1:8082")],
        "blue",
    );
    assert!(
        s.on_snapshot(blue_moved_again).responses.is_empty(),
        "blue was unsubscribed"
    );
    // Spontaneous (no nonce at all): counted the same.
    let out = s.on_request(&request(E, &["checkout/blue"], &[]));
    assert_eq!(names(only(&out)), ["checkout/blue"]);
}

/// "On reconnect the Incremental xDS client may tell the server of its known resources to avoid
/// resending them over the network by sending them in initial_resource_versions."
#[test]
fn known_resources_in_initial_resource_versions_are_not_resent() {
    let (_, mut envoy) = connected(blue_green("blue"));
    let received = envoy.received;
    let (_, first) = reconnect(&mut envoy, blue_green("blue"));
    assert!(
        first
            .iter()
            .all(|r| r.resources.is_empty() && r.removed.is_empty()),
        "{first:?}"
    );
    assert_eq!(envoy.received, received, "nothing resent");
}

/// "Because no state is assumed to be preserved from the previous stream, the reconnecting
/// client must provide the server with all resource names it is interested in" — so the server
/// answers what changed meanwhile and removes what went, by the names and versions it is told.
#[test]
fn a_reconnect_gets_what_changed_and_loses_what_went() {
    let (_, mut envoy) = connected(three_versions());
    // The fake client deletes only what removed_resources names.
    reconnect(&mut envoy, blue_green("green"));
    assert!(
        envoy.holds_exactly(&blue_green("green")),
        "{:?}",
        envoy.held
    );
}

/// "Note that for "wildcard" subscriptions ... the request must either specify "*" in the
/// resource_names_subscribe field or (legacy behavior) the request must have no resources in
/// both resource_names_subscribe and resource_names_unsubscribe."
#[test]
fn a_wildcard_is_star_or_a_first_request_naming_nothing() {
    for subscribe in [vec![], vec!["*"]] {
        let mut s = single(C, blue_green("blue"));
        let out = s.on_request(&request(C, &subscribe, &[]));
        assert_eq!(
            names(only(&out)),
            ["checkout/blue", "checkout/green"],
            "{subscribe:?}"
        );
    }
}

/// The incremental example of "How the client specifies what resources to return": unset
/// subscribes to "*"; "A" continues it and adds "A"; unsubscribing "*" keeps "A"; unsubscribing
/// "A" leaves nothing — "it is not interpreted as a wildcard subscription".
#[test]
fn the_wildcard_follows_the_four_step_incremental_example() {
    let mut s = single(C, three_versions());
    let r = only(&s.on_request(&request(C, &[], &[]))).clone();
    assert_eq!(names(&r).len(), 3);
    let out = s.on_request(&with_nonce(request(C, &["checkout/blue"], &[]), &r.nonce));
    for r in &out.responses {
        assert!(r.removed.is_empty(), "nothing leaves: {out:?}");
    }
    for r in &out.responses {
        s.on_request(&ack(C, &r.nonce));
    }
    // Unsubscribing "*": only A is left ("a server does not need to send any response if a
    // request does nothing except unsubscribe"); a change to another cluster is not sent.
    let out = s.on_request(&request(C, &[], &["*"]));
    for r in &out.responses {
        assert!(r.resources.is_empty(), "{out:?}");
        s.on_request(&ack(C, &r.nonce));
    }
    let a_new_cluster = deployment(
        &[
            ("blue", "127.0.0.1:8081"),
            ("green", "127.0.0.1:8082"),
            ("red", "127.0.0.1:8083"),
            ("yellow", "127.0.0.1:8084"),
        ],
        "blue",
    );
    assert!(
        s.on_snapshot(a_new_cluster).responses.is_empty(),
        "only A is subscribed: a new cluster is not sent"
    );
    s.on_request(&request(C, &[], &["checkout/blue"]));
    assert!(
        s.on_snapshot(blue_green("blue")).responses.is_empty(),
        "no subscription is left, not even a wildcard"
    );
}

/// "Subscribing to Resources": "A resource_names_subscribe field may contain resource names that
/// the server believes the client is already subscribed to, and furthermore has the most recent
/// versions of. However, the server *must* still provide those resources in the response".
#[test]
fn names_subscribed_again_are_provided_even_if_the_client_has_them() {
    let mut s = single(E, blue_green("blue"));
    let r = only(&s.on_request(&request(E, &["checkout/blue"], &[]))).clone();
    s.on_request(&ack(E, &r.nonce));
    let out = s.on_request(&request(E, &["checkout/blue"], &[]));
    assert_eq!(names(only(&out)), ["checkout/blue"]);
}

/// "Unsubscribing from Resources": "A resource_names_unsubscribe field may contain superfluous
/// resource names, which the server thought the client was already not subscribed to. The
/// server must cleanly process such a request; it can simply ignore these phantom
/// unsubscriptions."
#[test]
fn phantom_unsubscriptions_are_processed_cleanly() {
    let mut s = single(E, blue_green("blue"));
    let r = only(&s.on_request(&request(E, &["checkout/blue"], &[]))).clone();
    s.on_request(&ack(E, &r.nonce));
    let out = s.on_request(&request(E, &[], &["checkout/green", "never/existed"]));
    assert!(out.responses.is_empty(), "{out:?}");
    let moved = blue_moved();
    assert_eq!(
        names(only(&s.on_snapshot(moved))),
        ["checkout/blue"],
        "the real subscription is intact"
    );
}

/// "When a client has a wildcard subscription ("*") *and* a subscription to another specific
/// resource name ... if the client unsubscribes from that specific resource name ... the server
/// must send a response that includes the specific resource in either the removed_resources
/// field (if it is not included in the wildcard) or in the resources field (if it *is* included
/// in the wildcard)."
#[test]
fn unsubscribing_a_name_under_a_wildcard_is_answered_with_the_resource_or_its_removal() {
    let mut s = single(C, blue_green("blue"));
    let r = only(&s.on_request(&request(C, &["*", "checkout/blue"], &[]))).clone();
    s.on_request(&ack(C, &r.nonce));
    let out = s.on_request(&request(C, &[], &["checkout/blue"]));
    assert_eq!(
        names(only(&out)),
        ["checkout/blue"],
        "still under the wildcard: sent, so the client keeps it"
    );
}

/// "Knowing When a Requested Resource Does Not Exist": "When a resource subscribed to by a
/// client does not exist, the server will send a DeltaDiscoveryResponse message that contains
/// that resource's name in the removed_resources field."
#[test]
fn a_subscribed_resource_that_does_not_exist_is_named_in_removed_resources() {
    let mut s = single(E, blue_green("blue"));
    let out = s.on_request(&request(E, &["checkout/blue", "checkout/red"], &[]));
    let r = only(&out);
    assert_eq!(names(r), ["checkout/blue"]);
    assert_eq!(r.removed, ["checkout/red"]);
}

/// "Knowing When a Requested Resource Does Not Exist" (every variant): "if one of those resources
/// springs into existence later, the server must send an update to the client informing it of
/// the new resource."
#[test]
fn a_subscribed_resource_that_springs_into_existence_later_is_sent() {
    let mut s = single(E, blue_green("blue"));
    let r = only(&s.on_request(&request(E, &["checkout/red"], &[]))).clone();
    s.on_request(&ack(E, &r.nonce));
    assert_eq!(
        names(only(&s.on_snapshot(three_versions()))),
        ["checkout/red"]
    );
}

/// "Grouping Resources into Responses": "if the server has previously sent 100 resources and
/// only one of them has changed, it may send a response containing only the changed resource
/// ... and the client must not delete the unchanged resources" — so a response is never the
/// full state, and nothing unchanged is removed.
#[test]
fn a_change_sends_only_the_changed_resource_and_removes_nothing_unchanged() {
    let (mut stream, mut envoy) = connected(blue_green("blue"));
    let out = stream.on_snapshot(blue_moved());
    let r = only(&out);
    assert_eq!(r.ty, E);
    assert_eq!(names(r), ["checkout/blue"]);
    assert!(r.removed.is_empty());
    envoy.receive(r);
}

/// "Deleting Resources": "In the incremental protocol variants, the server signals the client
/// that a resource should be deleted via the removed_resources field of the response."
#[test]
fn a_deleted_resource_is_signalled_in_removed_resources() {
    let (mut stream, mut envoy) = connected(three_versions());
    push(&mut stream, &mut envoy, blue_green("blue"));
    assert!(
        envoy.holds_exactly(&blue_green("blue")),
        "red went from every type"
    );
}

/// "Duplicate Resource Names": "It is an error for a server to send a single response that
/// contains the same resource name twice." (The fake client asserts it on every response.)
#[test]
fn a_response_never_names_a_resource_twice() {
    let mut s = single(E, blue_green("blue"));
    let out = s.on_request(&request(
        E,
        &[
            "checkout/blue",
            "checkout/blue",
            "checkout/red",
            "checkout/red",
        ],
        &[],
    ));
    let r = only(&out);
    assert_eq!(names(r), ["checkout/blue"]);
    assert_eq!(r.removed, ["checkout/red"]);
}

/// "Eventual consistency considerations" (every variant): CDS first, EDS after the clusters,
/// LDS after CDS/EDS, RDS after LDS; stale clusters removed last.
#[test]
fn updates_are_sequenced_make_before_break() {
    let (_, envoy) = connected(blue_green("blue"));
    assert_eq!(envoy.log, [C, E, L, R]);
    let (mut stream, mut envoy) = connected(three_versions());
    envoy.log.clear();
    // The fake Envoy checks after every response that each route's cluster is held.
    push(&mut stream, &mut envoy, only_green());
    let route_at = envoy.log.iter().position(|t| *t == R).expect("routes sent");
    let last_cluster = envoy
        .log
        .iter()
        .rposition(|t| *t == C)
        .expect("clusters sent");
    assert!(
        route_at < last_cluster,
        "removals after the routes: {:?}",
        envoy.log
    );
}
