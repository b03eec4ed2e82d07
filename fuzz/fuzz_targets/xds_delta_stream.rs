//! The per-stream delta xDS state machine (`xds::delta::Stream`) fed what a hostile or broken
//! client can send: any sequence of `DeltaDiscoveryRequest`s (the four served type URLs, garbage
//! ones, subscriptions and unsubscriptions to known, unknown and wildcard names, initial
//! resource versions right or wrong, the latest nonce or stale and garbage ones, NACKs, nodes),
//! interleaved with new config versions compiled from the example files. It must never panic,
//! every response must carry a nonce never used before on the stream, a per-type stream must
//! only answer its own type, and no response may both bring and remove one name.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use cutover::snapshot::Snapshot;
use cutover::xds::delta::Stream;
use cutover::xds::stream::Machine as _;
use cutover::xds::{Mode, ResourceType};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use libfuzzer_sys::fuzz_target;

#[path = "shared/inputs.rs"]
mod inputs;
use inputs::{Checks, Echo, SNAPSHOTS, StreamMode, TypeUrl, nack, node};

#[derive(Debug, Arbitrary)]
enum Step {
    /// A new config version: an index into [`SNAPSHOTS`].
    Snapshot(u8),
    Request(Request),
}

#[derive(Debug, Arbitrary)]
struct Request {
    type_url: TypeUrl,
    subscribe: Vec<Name>,
    unsubscribe: Vec<Name>,
    /// Versions the client says it holds (a reconnect): right ones, or garbage.
    initial: Vec<(Name, Version)>,
    nonce: Echo,
    /// A NACK's error message.
    error: Option<String>,
    node: Option<(String, String)>,
}

#[derive(Debug, Arbitrary)]
enum Name {
    /// A resource of the current config version.
    Known(u8),
    Wildcard,
    Garbage(String),
}

#[derive(Debug, Arbitrary)]
enum Version {
    /// The resource's version in the current config.
    Current,
    Garbage(String),
}

fuzz_target!(|input: (StreamMode, Vec<Step>)| {
    let (mode, steps) = input;
    let snapshots = &*SNAPSHOTS;
    assert!(!snapshots.is_empty(), "the examples compile");
    let mode = mode.mode();
    let mut stream = Stream::new(mode);
    let mut current: Option<Arc<Snapshot>> = None;
    // Per type URL: the latest response's nonce, as a client would echo it.
    let mut latest: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut checks = Checks::default();
    for step in steps {
        let out = match step {
            Step::Snapshot(i) => {
                let snapshot = snapshots[usize::from(i) % snapshots.len()].clone();
                current = Some(snapshot.clone());
                stream.on_snapshot(snapshot)
            }
            Step::Request(r) => {
                let type_url = r.type_url.text();
                let ty = ResourceType::from_type_url(&type_url).or(match mode {
                    Mode::Single(only) if type_url.is_empty() => Some(only),
                    _ => None,
                });
                // A known name and its current version, if the type has resources.
                let known = |i: u8| {
                    let resources = current.as_ref()?.resources(ty?);
                    resources
                        .iter()
                        .nth(usize::from(i) % resources.len().max(1))
                        .map(|(name, r)| (name.clone(), r.version.clone()))
                };
                let name = |n: &Name| match n {
                    Name::Known(i) => known(*i).map(|(name, _)| name),
                    Name::Wildcard => Some("*".to_owned()),
                    Name::Garbage(s) => Some(s.clone()),
                };
                let request = DeltaDiscoveryRequest {
                    resource_names_subscribe: r.subscribe.iter().filter_map(name).collect(),
                    resource_names_unsubscribe: r.unsubscribe.iter().filter_map(name).collect(),
                    initial_resource_versions: r
                        .initial
                        .iter()
                        .filter_map(|(n, v)| {
                            let version = match (n, v) {
                                (Name::Known(i), Version::Current) => known(*i)?.1,
                                (_, Version::Garbage(s)) => s.clone(),
                                (_, Version::Current) => String::new(),
                            };
                            Some((name(n)?, version))
                        })
                        .collect(),
                    response_nonce: r.nonce.text(ty.and_then(|ty| latest.get(ty.type_url()))),
                    error_detail: nack(r.error),
                    node: node(r.node),
                    type_url,
                    ..Default::default()
                };
                stream.on_request(&request)
            }
        };
        for response in out.responses {
            checks.response(mode, response.ty, &response.nonce);
            let brought: BTreeSet<&str> =
                response.resources.iter().map(|r| r.name.as_str()).collect();
            assert!(
                response
                    .removed
                    .iter()
                    .all(|n| !brought.contains(n.as_str())),
                "a response both brings and removes a name: {response:?}"
            );
            latest.insert(response.ty.type_url(), response.nonce);
        }
        // What status reports and CSDS read from the stream.
        let _ = (stream.in_sync(), stream.sync_state(), stream.view());
        for ty in ResourceType::ALL {
            let _ = stream.status(ty);
        }
    }
});
