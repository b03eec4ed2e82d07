//! The per-stream xDS state machine (`xds::sotw::Stream`) fed what a hostile or broken client
//! can send: any sequence of `DiscoveryRequest`s (the four served type URLs, garbage ones, known
//! and unknown resource names, the latest nonce or stale and garbage ones, versions, NACKs,
//! nodes), interleaved with new config versions compiled from the example files. It must never
//! panic, every response must carry a nonce never used before on the stream, and a per-type
//! stream must only answer its own type.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use cutover::snapshot::Snapshot;
use cutover::xds::ResourceType;
use cutover::xds::sotw::{Mode, Stream};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use libfuzzer_sys::fuzz_target;

#[path = "shared/snapshots.rs"]
mod snapshots;
use snapshots::SNAPSHOTS;

#[derive(Debug, Arbitrary)]
enum StreamMode {
    Ads,
    Cds,
    Eds,
    Lds,
    Rds,
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// A new config version: an index into [`SNAPSHOTS`].
    Snapshot(u8),
    Request(Request),
}

#[derive(Debug, Arbitrary)]
struct Request {
    type_url: TypeUrl,
    names: Vec<Name>,
    nonce: Echo,
    version: Echo,
    /// A NACK's error message.
    error: Option<String>,
    node: Option<(String, String)>,
}

#[derive(Debug, Arbitrary)]
enum TypeUrl {
    Served(u8),
    Empty,
    Garbage(String),
}

#[derive(Debug, Arbitrary)]
enum Name {
    /// A resource of the current config version.
    Known(u8),
    Garbage(String),
}

/// What a request repeats of the latest response of its type.
#[derive(Debug, Arbitrary)]
enum Echo {
    Latest,
    Empty,
    Garbage(String),
}

fuzz_target!(|input: (StreamMode, Vec<Step>)| {
    let (mode, steps) = input;
    let snapshots = &*SNAPSHOTS;
    assert!(!snapshots.is_empty(), "the examples compile");
    let mode = match mode {
        StreamMode::Ads => Mode::Aggregated,
        StreamMode::Cds => Mode::Single(ResourceType::Cluster),
        StreamMode::Eds => Mode::Single(ResourceType::Endpoint),
        StreamMode::Lds => Mode::Single(ResourceType::Listener),
        StreamMode::Rds => Mode::Single(ResourceType::Route),
    };
    let mut stream = Stream::new(mode);
    let mut current: Option<Arc<Snapshot>> = None;
    // Per type URL: the latest response's (nonce, version), as a client would echo them.
    let mut latest: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
    let mut nonces = BTreeSet::new();
    for step in steps {
        let out = match step {
            Step::Snapshot(i) => {
                let snapshot = snapshots[usize::from(i) % snapshots.len()].clone();
                current = Some(snapshot.clone());
                stream.on_snapshot(snapshot)
            }
            Step::Request(r) => {
                let type_url = match r.type_url {
                    TypeUrl::Served(i) => {
                        ResourceType::ALL[usize::from(i) % 4].type_url().to_owned()
                    }
                    TypeUrl::Empty => String::new(),
                    TypeUrl::Garbage(url) => url,
                };
                let echoed =
                    ResourceType::from_type_url(&type_url).and_then(|ty| latest.get(ty.type_url()));
                let echo = |e: Echo, pick: fn(&(String, String)) -> &String| match e {
                    Echo::Latest => echoed.map(pick).cloned().unwrap_or_default(),
                    Echo::Empty => String::new(),
                    Echo::Garbage(s) => s,
                };
                let known = |i: u8| {
                    let ty = ResourceType::from_type_url(&type_url)?;
                    let names = current.as_ref()?.resources(ty);
                    names
                        .keys()
                        .nth(usize::from(i) % names.len().max(1))
                        .cloned()
                };
                let request = DiscoveryRequest {
                    version_info: echo(r.version, |(_, v)| v),
                    response_nonce: echo(r.nonce, |(n, _)| n),
                    resource_names: r
                        .names
                        .into_iter()
                        .filter_map(|n| match n {
                            Name::Known(i) => known(i),
                            Name::Garbage(s) => Some(s),
                        })
                        .collect(),
                    error_detail: r.error.map(|message| Status {
                        code: 13,
                        message,
                        details: Vec::new(),
                    }),
                    node: r.node.map(|(id, cluster)| Node {
                        id,
                        cluster,
                        ..Default::default()
                    }),
                    type_url,
                    ..Default::default()
                };
                stream.on_request(&request)
            }
        };
        for response in out.responses {
            assert!(
                nonces.insert(response.nonce.clone()),
                "nonce {:?} sent twice",
                response.nonce
            );
            if let Mode::Single(only) = mode {
                assert_eq!(response.ty, only, "a per-type stream answered another type");
            }
            latest.insert(response.ty.type_url(), (response.nonce, response.version));
        }
        // What status reports and CSDS read from the stream.
        let _ = (stream.in_sync(), stream.sync_state(), stream.view());
        for ty in ResourceType::ALL {
            let _ = stream.status(ty);
        }
    }
});
