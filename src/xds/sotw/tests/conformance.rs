//! The state-of-the-world xDS protocol, sentence by sentence: each test is named after a
//! requirement on the server in Envoy's "xDS REST and gRPC protocol" (docs/root/api-docs/
//! xds_protocol.rst) and quotes it. Together with `delta::tests::conformance` they cover every
//! server-side MUST (and the SHOULDs a client relies on) of the streaming gRPC variants;
//! docs/conformance.md maps each sentence to its test. No sockets: the machine is fed requests.

use super::*;

use crate::testing::xds::in_process::only as one;

fn without_node(req: DiscoveryRequest) -> DiscoveryRequest {
    DiscoveryRequest { node: None, ..req }
}

/// A per-type stream of `ty` serving `snapshot`.
fn single(ty: ResourceType, snapshot: Arc<Snapshot>) -> Stream {
    in_process::single(ty, snapshot)
}

/// "Basic Protocol Overview": "All server responses will contain a nonce, and all subsequent
/// requests from the client must set the response_nonce field to the most recent nonce received
/// from the server on that stream."
#[test]
fn all_server_responses_will_contain_a_nonce() {
    let mut stream = Stream::new(Mode::Aggregated);
    let mut envoy = FakeEnvoy::new(Protocol::Sotw);
    stream.on_snapshot(blue_green("blue"));
    let start = envoy.start();
    converge(&mut stream, &mut envoy, start);
    let out = stream.on_snapshot(blue_green("green"));
    let mut nonces: Vec<String> = out.responses.iter().map(|r| r.nonce.clone()).collect();
    nonces.extend(envoy.nonces.values().cloned());
    assert!(nonces.iter().all(|n| !n.is_empty()), "{nonces:?}");
    let distinct: BTreeSet<&String> = nonces.iter().collect();
    assert_eq!(
        distinct.len(),
        nonces.len(),
        "every nonce is new: {nonces:?}"
    );
}

/// "Only the first request on a stream is guaranteed to carry the node identifier. The
/// subsequent discovery requests on the same stream may carry an empty node identifier."
#[test]
fn only_the_first_request_is_guaranteed_to_carry_the_node_identifier() {
    let mut s = single(C, blue_green("blue"));
    let first = with_node(request(C, "", "", &[]), node("edge-1")).into_sotw();
    let r = one(&s.on_request(&first)).clone();
    let out = s.on_request(&without_node(request(C, &r.version, &r.nonce, &[])));
    assert!(out.responses.is_empty(), "an ACK without a node is an ACK");
    assert_eq!(
        s.node().unwrap().id,
        "edge-1",
        "the first request's node is kept"
    );
    let out = s.on_snapshot(three_versions());
    assert_eq!(one(&out).resources.len(), 3, "still served");
}

/// "ACK/NACK and resource type instance version": "Every xDS resource type has a version string
/// that indicates the version for that resource type. Whenever one resource of that type
/// changes, the version is changed."
#[test]
fn whenever_one_resource_of_that_type_changes_the_version_is_changed() {
    let mut s = single(E, blue_green("blue"));
    let all = ["checkout/blue", "checkout/green"];
    let first = one(&s.on_request(&request(E, "", "", &all))).clone();
    s.on_request(&request(E, &first.version, &first.nonce, &all));
    let moved = green_moved();
    let next = one(&s.on_snapshot(moved)).clone();
    assert_ne!(next.version, first.version);
}

/// "The resource type instance version is separate for each resource type. When using the
/// aggregated protocol variants, each resource type has its own version even though all
/// resource types are being sent on the same stream."
#[test]
fn each_resource_type_has_its_own_version_on_an_aggregated_stream() {
    let (mut stream, mut envoy) = connected(blue_green("blue"));
    let before = envoy.versions.clone();
    push(&mut stream, &mut envoy, blue_green("green"));
    assert_ne!(envoy.versions[&R], before[&R], "the routes changed");
    for ty in [C, E, L] {
        assert_eq!(envoy.versions[&ty], before[&ty], "{ty} did not change");
    }
}

/// "The preferred mechanism for a server to detect a NACK is to look for the presence of the
/// error_detail field in the request sent by the client." And, for a request without it:
/// "Envoy may later issue additional DiscoveryRequests at a given version_info to update the
/// management server with new resource hints" (not a rejection).
#[test]
fn a_nack_is_detected_by_the_presence_of_error_detail() {
    let mut s = single(E, blue_green("blue"));
    let r = one(&s.on_request(&request(E, "", "", &["checkout/blue"]))).clone();
    // A resource hint at an older version, no error_detail: not a NACK.
    let out = s.on_request(&request(
        E,
        "",
        &r.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    assert!(
        !out.events.iter().any(|e| matches!(e, Event::Nack { .. })),
        "{out:?}"
    );
    let r = one(&out).clone();
    // error_detail with the version just sent (a new resource was invalid): a NACK.
    let out = s.on_request(&nack(
        E,
        &r.version,
        &r.nonce,
        &["checkout/blue", "checkout/green"],
        "invalid",
    ));
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, Event::Nack { error, .. } if error == "invalid")),
        "{out:?}"
    );
}

/// "When to send an update": "The management server should only send updates to the Envoy
/// client when the resources in the DiscoveryResponse have changed."
#[test]
fn updates_are_sent_only_when_resources_have_changed() {
    let (mut stream, mut envoy) = connected(blue_green("blue"));
    assert!(stream.on_snapshot(blue_green("blue")).responses.is_empty());
    // Only an endpoint moves: only endpoints are sent.
    let moved = blue_moved();
    envoy.log.clear();
    push(&mut stream, &mut envoy, moved);
    assert_eq!(envoy.log, [E]);
}

/// "How the client specifies what resources to return": "The management server must supply the
/// requested resources if they exist." And "management servers should be capable of handling
/// one or more resource_names for a given resource type in each request".
#[test]
fn the_server_must_supply_the_requested_resources_if_they_exist() {
    let mut s = single(E, three_versions());
    let r = one(&s.on_request(&request(
        E,
        "",
        "",
        &["checkout/blue", "checkout/red", "nowhere/none"],
    )))
    .clone();
    assert_eq!(names(&r), ["checkout/blue", "checkout/red"]);
}

/// "When the client sends a new request that changes the set of resources being requested, the
/// server must resend any newly requested resources, even if it previously sent those resources
/// without having been asked for them and the resources have not changed since that time."
#[test]
fn newly_requested_resources_are_resent_even_if_sent_before_and_unchanged() {
    let mut s = single(E, blue_green("blue"));
    let both = ["checkout/blue", "checkout/green"];
    let r = one(&s.on_request(&request(E, "", "", &both))).clone();
    let out = s.on_request(&request(E, &r.version, &r.nonce, &["checkout/blue"]));
    let (version, nonce) = match out.responses.first() {
        Some(r) => (r.version.clone(), r.nonce.clone()),
        None => (r.version.clone(), r.nonce.clone()),
    };
    let again = s.on_request(&request(E, &version, &nonce, &both));
    assert!(
        one(&again)
            .resources
            .iter()
            .any(|r| r.name == "checkout/green"),
        "green is sent again: {again:?}"
    );
}

/// "If the list of resource names becomes empty, that means that the client is no longer
/// interested in any resources of the specified type."
#[test]
fn an_empty_list_of_names_means_no_interest_in_the_type() {
    let mut s = single(E, blue_green("blue"));
    let r = one(&s.on_request(&request(E, "", "", &["checkout/blue"]))).clone();
    let out = s.on_request(&request(E, &r.version, &r.nonce, &[]));
    for r in &out.responses {
        assert!(r.resources.is_empty(), "{out:?}");
    }
    let moved = blue_moved();
    assert!(
        s.on_snapshot(moved).responses.is_empty(),
        "no interest, no update"
    );
}

/// "For Listener and Cluster resource types, there is also a "wildcard" subscription, which is
/// triggered when subscribing to the special name "*"", and the example that follows it: unset
/// names subscribe to "*"; "*" and "A" continue it and add "A"; "A" alone unsubscribes from
/// "*"; unset names then unsubscribe from "A" ("it is not interpreted as a wildcard
/// subscription").
#[test]
fn the_wildcard_follows_the_four_step_example() {
    let mut s = single(C, three_versions());
    let all = ["checkout/blue", "checkout/green", "checkout/red"];
    let r = one(&s.on_request(&request(C, "", "", &[]))).clone();
    assert_eq!(names(&r), all, "unset: a subscription to \"*\"");
    let out = s.on_request(&request(C, &r.version, &r.nonce, &["*", "checkout/blue"]));
    let (mut version, mut nonce) = (r.version.clone(), r.nonce.clone());
    if let Some(r) = out.responses.first() {
        assert_eq!(names(r), all, "\"*\" and A: still everything");
        (version, nonce) = (r.version.clone(), r.nonce.clone());
    }
    let r = one(&s.on_request(&request(C, &version, &nonce, &["checkout/blue"]))).clone();
    assert_eq!(names(&r), ["checkout/blue"], "A alone: no more \"*\"");
    let r = one(&s.on_request(&request(C, &r.version, &r.nonce, &[]))).clone();
    assert!(
        r.resources.is_empty(),
        "unset again: unsubscribed from everything, not a wildcard"
    );
}

/// "Grouping Resources into Responses": "Listener and Cluster resource types are handled
/// differently: the server must include the complete state of the world, meaning that all
/// resources of the relevant type that are needed by the client must be included, even if they
/// did not change since the last response."
#[test]
fn listener_and_cluster_responses_include_the_complete_state_of_the_world() {
    let mut s = single(C, blue_green("blue"));
    let r = one(&s.on_request(&request(C, "", "", &[]))).clone();
    s.on_request(&request(C, &r.version, &r.nonce, &[]));
    let out = s.on_snapshot(three_versions());
    assert_eq!(
        names(one(&out)),
        ["checkout/blue", "checkout/green", "checkout/red"],
        "the unchanged clusters are sent with the new one"
    );
    let mut l = single(L, blue_green("blue"));
    let r = one(&l.on_request(&request(L, "", "", &["*"]))).clone();
    assert_eq!(names(&r), ["public"]);
}

/// "Duplicate Resource Names": "It is an error for a server to send a single response that
/// contains the same resource name twice."
#[test]
fn a_response_never_contains_the_same_resource_name_twice() {
    let mut s = single(E, blue_green("blue"));
    let r = one(&s.on_request(&request(
        E,
        "",
        "",
        &["checkout/blue", "checkout/blue", "checkout/green"],
    )))
    .clone();
    assert_eq!(names(&r), ["checkout/blue", "checkout/green"]);
    let mut c = single(C, blue_green("blue"));
    let r = one(&c.on_request(&request(C, "", "", &["*", "checkout/blue", "*"]))).clone();
    assert_eq!(names(&r), ["checkout/blue", "checkout/green"]);
}

/// "Deleting Resources": "For Listener and Cluster resource types, if a previously seen resource
/// is not present in a new response, that indicates that the resource has been removed, and the
/// client must delete it" — so a cluster still in use is never left out, and one that is gone
/// is left out.
#[test]
fn a_cluster_left_out_of_a_response_is_one_that_is_gone() {
    let (mut stream, mut envoy) = connected(three_versions());
    push(&mut stream, &mut envoy, blue_green("blue"));
    assert_eq!(envoy.clusters(), ["checkout/blue", "checkout/green"]);
}

/// "Knowing When a Requested Resource Does Not Exist": "Management servers must remember the
/// set of resources being requested by the client, and if one of those resources springs into
/// existence later, the server must send an update to the client informing it of the new
/// resource."
#[test]
fn a_requested_resource_that_springs_into_existence_later_is_sent() {
    let mut s = single(E, blue_green("blue"));
    let names_asked = ["checkout/blue", "checkout/red"];
    let r = one(&s.on_request(&request(E, "", "", &names_asked))).clone();
    assert_eq!(names(&r), ["checkout/blue"]);
    s.on_request(&request(E, &r.version, &r.nonce, &names_asked));
    let out = s.on_snapshot(three_versions());
    assert!(
        one(&out).resources.iter().any(|r| r.name == "checkout/red"),
        "{out:?}"
    );
}

/// "Unsubscribing From Resources": "if the client had previously been subscribed to resources A
/// and B but wishes to unsubscribe from B, it must send a new request containing only resource
/// A" — after which B's changes are not sent.
#[test]
fn a_name_left_out_of_a_request_is_unsubscribed() {
    let mut s = single(E, blue_green("blue"));
    let both = ["checkout/blue", "checkout/green"];
    let r = one(&s.on_request(&request(E, "", "", &both))).clone();
    let out = s.on_request(&request(E, &r.version, &r.nonce, &["checkout/blue"]));
    assert!(out.responses.iter().all(|r| r.resources.len() <= 1));
    let green_moved = green_moved();
    assert!(
        s.on_snapshot(green_moved).responses.is_empty(),
        "green is no longer asked for"
    );
}

/// "Resource updates": "The management server should not send a DiscoveryResponse for any
/// DiscoveryRequest that has a stale nonce. A nonce becomes stale following a newer nonce being
/// presented to Envoy in a DiscoveryResponse."
#[test]
fn a_request_with_a_stale_nonce_gets_no_response() {
    let mut s = single(E, blue_green("blue"));
    let first = one(&s.on_request(&request(E, "", "", &["checkout/blue"]))).clone();
    s.on_request(&request(
        E,
        &first.version,
        &first.nonce,
        &["checkout/blue"],
    ));
    let moved = blue_moved();
    let newer = one(&s.on_snapshot(moved)).clone();
    assert_ne!(newer.nonce, first.nonce);
    let out = s.on_request(&request(
        E,
        &first.version,
        &first.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    assert!(out.responses.is_empty(), "stale: {out:?}");
    let out = s.on_request(&request(
        E,
        &newer.version,
        &newer.nonce,
        &["checkout/blue", "checkout/green"],
    ));
    assert_eq!(names(one(&out)), ["checkout/blue", "checkout/green"]);
}

/// "Eventual consistency considerations": "CDS updates (if any) must always be pushed first.
/// EDS updates (if any) must arrive after CDS updates for the respective clusters. LDS updates
/// must arrive after corresponding CDS/EDS updates. RDS updates related to the newly added
/// listeners must arrive after CDS/EDS/LDS updates."
#[test]
fn updates_are_sequenced_cds_then_eds_then_lds_then_rds() {
    let (_, envoy) = connected(blue_green("blue"));
    assert_eq!(envoy.log, [C, E, L, R]);
    // A new version and the switch to it in one save: its cluster and endpoints before the
    // routes that use it (the fake Envoy checks every route's cluster after each response).
    let (mut stream, mut envoy) = connected(blue_green("blue"));
    envoy.log.clear();
    push(
        &mut stream,
        &mut envoy,
        deployment(
            &[
                ("blue", "127.0.0.1:8081"),
                ("green", "127.0.0.1:8082"),
                ("red", "127.0.0.1:8083"),
            ],
            "red",
        ),
    );
    let route_at = envoy.log.iter().position(|t| *t == R).expect("routes sent");
    let cluster_at = envoy
        .log
        .iter()
        .position(|t| *t == C)
        .expect("clusters sent");
    let endpoints_at = envoy
        .log
        .iter()
        .position(|t| *t == E)
        .expect("endpoints sent");
    assert!(
        cluster_at < endpoints_at && endpoints_at < route_at,
        "{:?}",
        envoy.log
    );
}

/// "Stale CDS clusters and related EDS endpoints (ones no longer being referenced) can then be
/// removed" — only after the routes that used them are gone from the client.
#[test]
fn stale_clusters_are_removed_after_the_routes_that_used_them() {
    let (mut stream, mut envoy) = connected(three_versions());
    // Red is removed in the same save that routes away from it.
    let red_active = deployment(
        &[
            ("blue", "127.0.0.1:8081"),
            ("green", "127.0.0.1:8082"),
            ("red", "127.0.0.1:8083"),
        ],
        "red",
    );
    push(&mut stream, &mut envoy, red_active);
    envoy.log.clear();
    push(&mut stream, &mut envoy, blue_green("blue"));
    let route_at = envoy.log.iter().position(|t| *t == R).expect("routes sent");
    let cluster_at = envoy
        .log
        .iter()
        .rposition(|t| *t == C)
        .expect("clusters sent");
    assert!(route_at < cluster_at, "routes away first: {:?}", envoy.log);
    assert_eq!(envoy.clusters(), ["checkout/blue", "checkout/green"]);
}

/// "Aggregated Discovery Service": "With ADS, a single stream is used with multiple independent
/// DiscoveryRequest/DiscoveryResponse sequences multiplexed via the type URL. For any given
/// type URL, the above sequencing of DiscoveryRequest and DiscoveryResponse messages applies."
/// An ACK of one type is not an answer for another.
#[test]
fn each_type_url_is_its_own_sequence_on_an_aggregated_stream() {
    let mut s = Stream::new(Mode::Aggregated);
    s.on_snapshot(blue_green("blue"));
    let cds = one(&s.on_request(&request(C, "", "", &[]))).clone();
    let eds = s.on_request(&request(E, "", "", &["checkout/blue", "checkout/green"]));
    let eds = one(&eds).clone();
    // A CDS ACK carrying EDS's nonce is not an ACK of either.
    let out = s.on_request(&request(C, &cds.version, &eds.nonce, &[]));
    assert!(
        !out.events.iter().any(|e| matches!(e, Event::Ack { .. })),
        "{out:?}"
    );
    let out = s.on_request(&request(C, &cds.version, &cds.nonce, &[]));
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, Event::Ack { ty, .. } if *ty == C)),
        "{out:?}"
    );
}
