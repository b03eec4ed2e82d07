//! The incremental ("delta") xDS protocol for one stream, as a pure state machine.
//!
//! [`Stream`] is fed `DeltaDiscoveryRequest`s and new snapshots, the same group snapshots as
//! [`super::sotw::Stream`], and answers with the responses to send: per resource, only what its
//! client does not hold at the current version, and the names of what it holds that is gone. It
//! does no I/O and knows no clock.
//!
//! Rules it implements (xDS protocol spec, "Incremental xDS"; each is a test in `delta/tests.rs`
//! named after the report that found it missing elsewhere):
//! - Versions are per resource: the content hash each [`Resource`] carries. A resource is sent
//!   when the client does not hold it at that version; one the client holds that is no longer in
//!   the config is named in `removed_resources` (a change is never treated as the full state,
//!   istio #34949, #46882). A name the client never held is never named there
//!   (go-control-plane #488, #565): one that does not exist yet is sent when it appears.
//! - On (re)connect, the client lists what it holds in `initial_resource_versions`: what it holds
//!   at the current version is not sent again, what changed is, and what no longer exists is
//!   removed (java-control-plane #463, istio #41494). The names Envoy lists again in
//!   `resource_names_subscribe` of that first request restate its interest (Envoy #16063); they
//!   are not a request to resend.
//! - After the first request, every name in `resource_names_subscribe` is answered even if the
//!   client holds it at the current version: it may have forgotten it (spec, "Subscribing to
//!   Resources"; go-control-plane #1450, #583, Envoy #22418). `*` resends everything.
//! - Wildcard: `*` among the names subscribes to every resource of the type, with or without
//!   other names, and unsubscribing `*` ends it; for clusters and listeners a first request that
//!   names nothing is the legacy wildcard (Envoy #21416), which later requests naming nothing
//!   leave as it is. Unsubscribing a name the wildcard still covers is answered with the
//!   resource (spec, "Unsubscribing from Resources"); unsubscribing anything else needs no
//!   response. A subscription to a name that does not exist (a child asked for after its parent
//!   went, Envoy #17980) is remembered and answered when it appears.
//! - One response per type is in flight at a time; the next is computed from what the client
//!   ACKed. ACK and NACK are told apart by `error_detail`; a rejected response is recorded and the
//!   same updates and removals are not sent again until what would be sent changes.
//! - A nonce pairs an ACK or NACK with the response in flight. A request carrying any other
//!   nonce is stale as an answer and does not count as one, but its subscription changes are
//!   honoured: the spec says the server "must honor changes to the subscription state even if the
//!   nonce is stale".
//! - After clusters change, the endpoints of each redefined cluster are sent again: Envoy
//!   re-creates the cluster, which warms until it gets them, and does not ask again for a name
//!   it is subscribed to.
//!
//! What both protocols keep and do alike is the stream core, [`super::stream`]: on an
//! aggregated (ADS) stream every step follows the make-before-break policy of [`super::order`]
//! asked of the same state as state of the world, and what the client holds is reported alike
//! (type versions computed as state of the world computes them), so status, CSDS and the
//! controller's gates read both protocols alike. This machine adds what delta alone needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::clients::Held;
use super::order::Holdings as _;
use super::stream::{Core, Machine, Pushed, SettledOn, TypeState};
use super::{Event, Mode, ResourceType};
use crate::snapshot::{ByType, Resource, ResourceData, Snapshot, set_version};

/// A delta response: the resources to add or update (shared, pre-encoded bytes) and the names of
/// those the client must drop.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub ty: ResourceType,
    /// What the client holds of `ty` once it applies this response, as a type version
    /// ([`set_version`]); sent as `system_version_info`, which is for debugging only.
    pub version: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
}

/// What happened on one input: responses to send (in order) and events to record.
pub type Output = super::Output<Response>;

/// The name that subscribes to every resource of a type.
const WILDCARD: &str = "*";

static NOTHING: BTreeMap<String, Resource> = BTreeMap::new();

/// The updates and removals of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Diff {
    updates: BTreeMap<String, Resource>,
    removed: BTreeSet<String>,
}

/// A response sent and not answered yet (what it brings the client to is the core's
/// [`TypeState::pending`]).
#[derive(Debug, Clone)]
struct InFlight {
    nonce: String,
    diff: Diff,
}

/// What delta keeps of one type besides the [`TypeState`] both protocols keep.
#[derive(Debug, Clone, Default)]
struct Sending {
    in_flight: Option<InFlight>,
    /// Names to send even if the client holds them at the current version.
    resend: BTreeSet<String>,
    /// Names the client subscribed to and has not been told about yet: one that does not exist
    /// is named in `removed_resources`, so the client need not wait for a timeout to know (it
    /// stays subscribed, and gets the resource if it appears).
    announce: BTreeSet<String>,
    /// The updates and removals of the last rejected response: not sent again. Cleared by the
    /// next ACK.
    rejected: Option<Diff>,
    /// What was settled on, and the version of what the client held then: comparing every
    /// resource is skipped while both are the same.
    settled: Option<(SettledOn, String)>,
}

/// The version of what the client holds; empty when it holds nothing.
fn acked_version(st: &TypeState) -> &str {
    st.acked
        .as_ref()
        .map(|h| h.version.as_str())
        .unwrap_or_default()
}

fn held_resources(st: &TypeState) -> &BTreeMap<String, Resource> {
    st.acked_resources().unwrap_or(&NOTHING)
}

/// Drops what the client no longer asks for: it forgets a resource it unsubscribes from.
fn forget_unwanted(st: &mut TypeState) {
    let Some(sub) = &st.subscription else {
        return;
    };
    if let Some(held) = &st.acked
        && held.resources.keys().any(|n| !sub.wants(n))
    {
        let kept = held
            .resources
            .iter()
            .filter(|(n, _)| sub.wants(n))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        st.acked = Some(held_from(kept));
    }
}

fn held_from(resources: BTreeMap<String, Resource>) -> Held {
    Held {
        version: set_version(resources.values()),
        resources: Arc::new(resources),
    }
}

/// The protocol state of one delta xDS stream.
#[derive(Debug)]
pub struct Stream {
    core: Core,
    types: ByType<Sending>,
}

impl Machine for Stream {
    type Request = DeltaDiscoveryRequest;
    type Response = Response;

    fn new(mode: Mode) -> Stream {
        Stream {
            core: Core::new(mode),
            types: ByType::default(),
        }
    }

    fn request_node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn request_type(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn request_names(req: &DeltaDiscoveryRequest) -> impl Iterator<Item = &str> {
        req.resource_names_subscribe
            .iter()
            .chain(req.resource_names_unsubscribe.iter())
            .chain(req.initial_resource_versions.keys())
            .map(String::as_str)
    }

    /// A request from the client.
    fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Output {
        let mut out = Output::default();
        let Some(ty) = self
            .core
            .request_type(req.node.as_ref(), &req.type_url, &mut out.events)
        else {
            return out;
        };
        if !req.response_nonce.is_empty() {
            self.answer(ty, req, &mut out.events);
        }
        self.subscribe(ty, req);
        self.step(&mut out);
        if self.core.sent_nothing() && self.in_sync() {
            self.greet(self.core.greeting_type(ty), &mut out);
        }
        out
    }

    /// A new config version to converge to.
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output {
        for ty in ResourceType::ALL {
            resolve_reported(&mut self.core.types[ty], ty, &snapshot);
        }
        self.core.snapshot = Some(snapshot);
        let mut out = Output::default();
        self.step(&mut out);
        out
    }

    /// Holding means at the snapshot's version and nothing else: nothing in flight, nothing
    /// kept for old routes. A type the client has not asked for (or asked for only some names
    /// of) is not in sync unless the snapshot has nothing of it, except for a client that names
    /// its listeners (as for state of the world): what it asked for is all it uses, so it is in
    /// sync once it holds that. O(1): type versions are computed once.
    fn in_sync(&self) -> bool {
        let asks_what_it_uses = self.core.names_its_listeners();
        self.core.in_sync_where(|ty, st, snap| {
            let own = &self.types[ty];
            let holds_what_it_asked = || {
                own.settled.as_ref().is_some_and(|(k, held_version)| {
                    k.is_final(st, ty, snap) && held_version == acked_version(st)
                })
            };
            st.pending.is_none()
                && own.resend.is_empty()
                && own.announce.is_empty()
                && (st.acked.as_ref().map_or_else(
                    || snap.resources(ty).is_empty(),
                    |h| h.version == snap.type_version(ty),
                ) || (asks_what_it_uses && holds_what_it_asked()))
        })
    }

    fn describe(r: &Response) -> Pushed<'_> {
        Pushed {
            ty: r.ty,
            version: &r.version,
            resources: r.resources.len(),
            removed: r.removed.len(),
        }
    }

    fn core(&self) -> &Core {
        &self.core
    }
}

impl Stream {
    /// An ACK or NACK of the response in flight; anything else is stale as an answer.
    fn answer(&mut self, ty: ResourceType, req: &DeltaDiscoveryRequest, events: &mut Vec<Event>) {
        let st = &mut self.core.types[ty];
        let own = &mut self.types[ty];
        if own
            .in_flight
            .as_ref()
            .is_none_or(|f| f.nonce != req.response_nonce)
        {
            return;
        }
        let (Some(sent), Some(after)) = (own.in_flight.take(), st.pending.take()) else {
            return;
        };
        own.settled = None;
        if let Some(status) = &req.error_detail {
            let resources = Arc::new(sent.diff.updates.clone());
            st.reject(ty, after.version, resources, &status.message, events);
            own.rejected = Some(sent.diff);
            return;
        }
        own.rejected = None;
        st.accept(ty, after, events);
        // It may have unsubscribed from some of it meanwhile.
        forget_unwanted(st);
    }

    /// Envoy re-creates a cluster whose definition changed, and the new one warms until it gets
    /// its endpoints; Envoy does not ask again for a name it is subscribed to, so they are sent
    /// again, right behind the clusters: Envoy ACKs the clusters only once they have warmed,
    /// so waiting for that ACK would leave them warming until Envoy's initial fetch timeout
    /// (15 s). (New cluster names need nothing: Envoy subscribes to them.)
    fn resend_endpoints_of_redefined_clusters(&mut self, updates: &BTreeMap<String, Resource>) {
        let held = held_resources(&self.core.types[ResourceType::Cluster]);
        let redefined = updates
            .iter()
            .filter(|(name, r)| held.get(*name).is_some_and(|old| old != *r))
            .map(|(name, _)| name);
        let eds = &self.core.types[ResourceType::Endpoint];
        if let Some(sub) = &eds.subscription {
            let wanted = redefined.filter(|n| sub.wants(n)).cloned();
            self.types[ResourceType::Endpoint].resend.extend(wanted);
        }
    }

    /// Applies the request's subscription changes, and on the first request of the type what
    /// the client says it holds.
    fn subscribe(&mut self, ty: ResourceType, req: &DeltaDiscoveryRequest) {
        let snapshot = self.core.snapshot.clone();
        let st = &mut self.core.types[ty];
        let own = &mut self.types[ty];
        let first = st.subscription.is_none();
        let mut sub = st.subscription.clone().unwrap_or_default();
        if first
            && ty.is_full_state()
            && req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty()
        {
            // The legacy wildcard.
            sub.wildcard = true;
        }
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                sub.wildcard = true;
                if !first {
                    own.resend.extend(held_resources(st).keys().cloned());
                }
            } else {
                sub.names.insert(name.clone());
                own.announce.insert(name.clone());
                if !first {
                    own.resend.insert(name.clone());
                }
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
                if sub.wildcard {
                    // Still covered by the wildcard: the client cannot tell whether to keep it
                    // until it is told.
                    own.resend.insert(name.clone());
                }
            }
        }
        if first && !req.initial_resource_versions.is_empty() {
            let held: BTreeMap<String, Resource> = req
                .initial_resource_versions
                .iter()
                .filter(|(name, _)| sub.wants(name))
                .map(|(name, version)| {
                    let known = snapshot
                        .as_ref()
                        .and_then(|s| s.get(ty, name))
                        .filter(|r| r.version == *version);
                    let r = known.cloned().unwrap_or_else(|| {
                        Resource::from(ResourceData {
                            name: name.clone(),
                            version: version.clone(),
                            // Content this config does not have: sent as nothing, only compared.
                            encoded: Bytes::new(),
                            names_clusters: false,
                        })
                    });
                    (name.clone(), r)
                })
                .collect();
            let held = held_from(held);
            st.reported = Some(held.version.clone());
            st.acked = Some(held);
        }
        if st.subscribe(sub) {
            forget_unwanted(st);
        }
    }

    /// The first message on a stream whose client reconnected holding exactly what it should
    /// (it is in sync before anything was sent): a response that changes nothing, because Envoy
    /// resets its reconnect backoff only when a message arrives. Endpoints or routes on ADS, as
    /// state-of-the-world does.
    fn greet(&mut self, ty: ResourceType, out: &mut Output) {
        let st = &self.core.types[ty];
        let Some(held) = st.acked.clone().filter(|_| st.reported.is_some()) else {
            return;
        };
        let nonce = self.core.next_nonce();
        out.responses.push(Response {
            ty,
            version: held.version.clone(),
            nonce: nonce.clone(),
            resources: Vec::new(),
            removed: Vec::new(),
        });
        self.types[ty].in_flight = Some(InFlight {
            nonce,
            diff: Diff {
                updates: BTreeMap::new(),
                removed: BTreeSet::new(),
            },
        });
        self.core.types[ty].pending = Some(held);
    }

    /// Sends, in make-before-break order, every type for which the client lacks something or
    /// holds something gone, unless a response of that type is in flight.
    fn step(&mut self, out: &mut Output) {
        let Some(snap) = self.core.snapshot.clone() else {
            return;
        };
        for &ty in self.core.mode.types() {
            let st = &self.core.types[ty];
            let own = &self.types[ty];
            if st.subscription.is_none() || own.in_flight.is_some() {
                continue;
            }
            let kept = self.core.kept(ty, &snap);
            if own.resend.is_empty()
                && own.announce.is_empty()
                && own.settled.as_ref().is_some_and(|(k, held)| {
                    k.is_now(st, ty, &snap, &kept) && held == acked_version(st)
                })
            {
                continue;
            }
            let key = (
                SettledOn::new(st, ty, &snap, kept),
                acked_version(st).to_owned(),
            );
            let Some(desired) = self.desired(ty, &snap, key.0.kept()) else {
                continue;
            };
            let st = &mut self.core.types[ty];
            let own = &mut self.types[ty];
            let held = held_resources(st);
            let updates: BTreeMap<String, Resource> = desired
                .iter()
                .filter(|(name, r)| held.get(*name) != Some(*r) || own.resend.contains(*name))
                .map(|(name, r)| (name.clone(), r.clone()))
                .collect();
            let removed: BTreeSet<String> = held
                .keys()
                .filter(|name| !desired.contains_key(*name))
                .chain(
                    own.announce
                        .iter()
                        .filter(|name| !desired.contains_key(*name) && !held.contains_key(*name))
                        // Unsubscribed since: nothing to tell.
                        .filter(|name| st.subscription.as_ref().is_some_and(|s| s.wants(name))),
                )
                .cloned()
                .collect();
            if updates.is_empty() && removed.is_empty() {
                own.resend.clear();
                own.announce.clear();
                st.blocked = None;
                own.settled = Some(key);
                continue;
            }
            let diff = Diff { updates, removed };
            if own.rejected.as_ref() == Some(&diff) {
                // Rejected before; wait for the next change.
                st.blocked = Some(key.0.into_type_version());
                continue;
            }
            st.blocked = None;
            own.settled = None;
            own.resend.clear();
            own.announce.clear();
            if ty == ResourceType::Cluster {
                self.resend_endpoints_of_redefined_clusters(&diff.updates);
            }
            // Applying the response gives the client exactly what it should hold.
            let after = held_from(desired);
            let nonce = self.core.next_nonce();
            out.responses.push(Response {
                ty,
                version: after.version.clone(),
                nonce: nonce.clone(),
                resources: diff.updates.values().cloned().collect(),
                removed: diff.removed.iter().cloned().collect(),
            });
            self.types[ty].in_flight = Some(InFlight { nonce, diff });
            self.core.types[ty].pending = Some(after);
        }
    }

    /// The resources this client should hold for `ty` now, or `None` when the type must wait
    /// (listeners and routes whose clusters are not ready yet, for a client that may be routing).
    fn desired(
        &self,
        ty: ResourceType,
        snap: &Snapshot,
        kept: &[String],
    ) -> Option<BTreeMap<String, Resource>> {
        if self.core.held_back(ty, snap) {
            return None;
        }
        let mut desired = self.core.wanted(ty, snap);
        self.core.keep(ty, &mut desired, kept);
        Some(desired)
    }
}

/// A resource the client listed on reconnect at a version this stream had no content for gets
/// the content once a snapshot has it at that version (for CSDS; equality is by version).
fn resolve_reported(st: &mut TypeState, ty: ResourceType, snap: &Snapshot) {
    let Some(held) = &st.acked else {
        return;
    };
    let unresolved = |(name, r): (&String, &Resource)| {
        r.encoded.is_empty() && snap.get(ty, name).is_some_and(|s| s == r)
    };
    if !held.resources.iter().any(unresolved) {
        return;
    }
    let resources = held
        .resources
        .iter()
        .map(|(name, r)| {
            let r = snap.get(ty, name).filter(|s| *s == r).unwrap_or(r);
            (name.clone(), r.clone())
        })
        .collect();
    st.acked = Some(Held {
        version: held.version.clone(),
        resources: Arc::new(resources),
    });
}

#[cfg(test)]
mod tests;
