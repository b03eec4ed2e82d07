//! The per-stream xDS state machine (`xds::sotw::Stream`) fed what a hostile or broken client
//! can send: any sequence of `DiscoveryRequest`s (the four served type URLs, garbage ones, known
//! and unknown resource names, the latest nonce or stale and garbage ones, versions, NACKs,
//! nodes), interleaved with new config versions compiled from the example files. It must never
//! panic, every response must carry a nonce never used before on the stream, and a per-type
//! stream must only answer its own type.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use cutover::snapshot::Snapshot;
use cutover::xds::ResourceType;
use cutover::xds::sotw::Stream;
use cutover::xds::stream::Machine as _;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
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
    names: Vec<Name>,
    nonce: Echo,
    version: Echo,
    /// A NACK's error message.
    error: Option<String>,
    node: Option<(String, String)>,
}

#[derive(Debug, Arbitrary)]
enum Name {
    /// A resource of the current config version.
    Known(u8),
    Garbage(String),
}

fuzz_target!(|input: (StreamMode, Vec<Step>)| {
    let (mode, steps) = input;
    let snapshots = &*SNAPSHOTS;
    assert!(!snapshots.is_empty(), "the examples compile");
    let mode = mode.mode();
    let mut stream = Stream::new(mode);
    let mut current: Option<Arc<Snapshot>> = None;
    // Per type URL: the latest response's (nonce, version), as a client would echo them.
    let mut latest: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
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
                let echoed =
                    ResourceType::from_type_url(&type_url).and_then(|ty| latest.get(ty.type_url()));
                let known = |i: u8| {
                    let ty = ResourceType::from_type_url(&type_url)?;
                    let names = current.as_ref()?.resources(ty);
                    names
                        .keys()
                        .nth(usize::from(i) % names.len().max(1))
                        .cloned()
                };
                let request = DiscoveryRequest {
                    version_info: r.version.text(echoed.map(|(_, v)| v)),
                    response_nonce: r.nonce.text(echoed.map(|(n, _)| n)),
                    resource_names: r
                        .names
                        .into_iter()
                        .filter_map(|n| match n {
                            Name::Known(i) => known(i),
                            Name::Garbage(s) => Some(s),
                        })
                        .collect(),
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
            latest.insert(response.ty.type_url(), (response.nonce, response.version));
        }
        // What status reports and CSDS read from the stream.
        let _ = (stream.in_sync(), stream.sync_state(), stream.view());
        for ty in ResourceType::ALL {
            let _ = stream.status(ty);
        }
    }
});
