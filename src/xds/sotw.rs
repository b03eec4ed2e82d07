//! The state-of-the-world xDS protocol for one stream, as a pure state machine.
//!
//! [`Stream`] is fed plain `DiscoveryRequest`s and new snapshots and answers with the responses
//! to send; it does no I/O and knows no clock, so every protocol rule is tested without sockets.
//!
//! Rules it implements (xDS protocol spec, "ACK/NACK and resource type instance version"):
//! - Each response carries a fresh nonce. A request whose `response_nonce` is not the latest one
//!   sent for its type is stale and ignored entirely.
//! - A request answering the latest nonce is a NACK when it has `error_detail`, else an ACK. A
//!   NACKed version is recorded and never sent again; the next change produces a new version.
//! - Versions are content hashes of what one response holds, so a client that reconnects holding
//!   exactly the current resources (same `version_info`) is sent nothing it would apply. It is
//!   sent one message all the same, the same content again: Envoy resets its reconnect
//!   backoff only when a message arrives on the stream, so without one every restart of cutover
//!   would make the next reconnect slower (see `Stream::greet`).
//! - New subscriptions are answered even if nothing changed; names that do not exist yet are
//!   sent when they appear.
//! - After clusters change, endpoints are sent again so that re-created clusters finish warming.
//!
//! What both protocols keep and do alike (the subscription and what the client holds per
//! type, the request prologue, nonces, the greeting, the make-before-break questions of
//! [`super::order`] on an aggregated (ADS) stream, the reports for [`super::clients`]) is the
//! stream core, [`super::stream`]; this machine adds what state of the world alone needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::ResourceType;
use super::clients::{Held, ResourceMap, SentSets};
use super::order::Holdings as _;
use super::stream::{Core, Machine, Pushed, SettledOn, Subscription, TypeState};
pub use super::{Event, Mode};
use crate::snapshot::{ByType, Resource, Snapshot, set_version};

/// A response to send: the resources are shared, pre-encoded bytes (and a response of a whole
/// type shares its very list with every other stream's).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub ty: ResourceType,
    pub version: String,
    pub nonce: String,
    pub resources: Arc<[Resource]>,
}

/// What happened on one input: responses to send (in order) and events to record.
pub type Output = super::Output<Response>;

/// What a request subscribes to (xDS spec, "How the client specifies what resources to
/// return"). For clusters and listeners, the types that have wildcard subscriptions: `"*"` among
/// the names is the explicit wildcard, with or without other names; an empty list is the legacy
/// wildcard on the first request of the type, and keeps a wildcard subscription wildcard, but
/// after a subscription to names it unsubscribes from everything. For endpoints and routes every
/// name is a name.
fn subscription(
    ty: ResourceType,
    names: &[String],
    current: Option<&Subscription>,
) -> Subscription {
    if ty.is_full_state() {
        let legacy_wildcard = names.is_empty() && current.is_none_or(|c| c.wildcard);
        if legacy_wildcard || names.iter().any(|n| n == "*") {
            return Subscription {
                wildcard: true,
                names: BTreeSet::new(),
            };
        }
    }
    Subscription {
        wildcard: false,
        names: names.iter().cloned().collect(),
    }
}

/// Whether `names` subscribe to exactly the names `current` does: an ACK restates its
/// subscription (Envoy lists every endpoints name again each time), and telling so costs one
/// vector of references, not the set of owned names [`subscription`] builds.
fn restates(ty: ResourceType, names: &[String], current: &Subscription) -> bool {
    if current.wildcard || (ty.is_full_state() && names.iter().any(|n| n == "*")) {
        // Wildcards hold no names: building one is cheap.
        return false;
    }
    if names.len() < current.names.len() {
        return false;
    }
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.len() == current.names.len() && sorted.iter().zip(&current.names).all(|(a, b)| a == b)
}

/// What state of the world keeps of one type besides the [`TypeState`] both protocols keep.
#[derive(Debug, Clone, Default)]
struct Sending {
    /// The nonce of the latest response of this type: requests answering any other are stale.
    last_nonce: Option<String>,
    /// A rejected version that must not be sent again; cleared by the next ACK.
    rejected: Option<String>,
    /// Send even if the content is unchanged (endpoints of clusters that were re-created).
    force: bool,
    /// What the client held was up to date for this key: while the key is the same, the
    /// (per config version, not per stream) work of recomputing it is skipped.
    settled: Option<SettledOn>,
    /// When settled: the subscription covers every resource of the type in the snapshot (a
    /// client that has not asked for some of them yet is settled on what it asked, but not in
    /// sync).
    settled_complete: bool,
    /// Whether the subscription covers every resource of the type, for the snapshot's names
    /// ([`Snapshot::names_version`]) and the subscription's generation it was computed on.
    covers: Option<(String, u64, bool)>,
}

/// Whether the client already holds `desired` (asked only with nothing in flight). For EDS and
/// RDS, where a response need not repeat every name, a client that merely dropped names holds a
/// superset that is narrowed here without a response.
fn holds(st: &mut TypeState, ty: ResourceType, desired: &ResourceMap, version: &str) -> bool {
    if let Some(held) = &mut st.acked {
        // Versions are content hashes of the set: the same version is the same content, and a
        // different one different content.
        if held.version == version {
            return true;
        }
        // Only a smaller set can be narrowed to (walking a type's whole set per stream for an
        // edit of one resource cost most of a change's time).
        let subset = !ty.is_full_state()
            && desired.len() < held.resources.len()
            && desired
                .iter()
                .all(|(name, r)| held.resources.get(name) == Some(r));
        if subset {
            Arc::make_mut(&mut held.resources).retain(|name, _| desired.contains_key(name));
            // The version stays the hash of what is held (`order` compares it).
            held.version = set_version(held.resources.values());
        }
        return subset;
    }
    if st.reported.as_deref() == Some(version) {
        // Reconnected holding exactly this.
        st.acked = Some(Held {
            version: version.to_owned(),
            resources: desired.clone(),
        });
        return true;
    }
    false
}

/// The protocol state of one xDS stream.
#[derive(Debug)]
pub struct Stream {
    core: Core,
    types: ByType<Sending>,
    /// What this cutover sent to any client, to know what a reconnecting client holds.
    sent: Option<Arc<SentSets>>,
}

impl Machine for Stream {
    type Request = DiscoveryRequest;
    type Response = Response;

    fn new(mode: Mode) -> Stream {
        Stream {
            core: Core::new(mode),
            types: ByType::default(),
            sent: None,
        }
    }

    /// Records every set it sends in `sent`, and reads there what a reconnecting client holds.
    fn remembering(mut self, sent: Arc<SentSets>) -> Stream {
        self.sent = Some(sent);
        self
    }

    fn request_node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn request_type(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }

    fn request_names(req: &DiscoveryRequest) -> impl Iterator<Item = &str> {
        req.resource_names.iter().map(String::as_str)
    }

    /// A request from the client.
    fn on_request(&mut self, req: &DiscoveryRequest) -> Output {
        let mut out = Output::default();
        let Some(ty) = self
            .core
            .request_type(req.node.as_ref(), &req.type_url, &mut out.events)
        else {
            return out;
        };
        let st = &mut self.core.types[ty];
        let own = &mut self.types[ty];
        if req.response_nonce.is_empty() {
            // The first request for this type on this stream: the client may hold a version
            // from an earlier stream (a reconnect).
            if st.subscription.is_none() && !req.version_info.is_empty() {
                st.reported = Some(req.version_info.clone());
                // Clusters this cutover sent (to this client on an earlier stream, or to
                // another): the client holds exactly them (a cluster response is the whole
                // set), as if it had ACKed them here, so those its routes may still use are
                // kept until routes without them are ACKed (make-before-break across a
                // reconnect). Endpoints and routes are not: a client drops the endpoints of a
                // cluster it removes whatever version it last ACKed, and what a response leaves
                // out of those types is kept anyway.
                let current = self.core.snapshot.as_ref().map(|s| s.type_version(ty));
                let earlier = self
                    .sent
                    .as_ref()
                    .filter(|_| ty == ResourceType::Cluster)
                    .filter(|_| current != Some(req.version_info.as_str()))
                    .and_then(|sent| sent.get(ty, &req.version_info));
                if let Some(resources) = earlier {
                    st.acked = Some(Held {
                        version: req.version_info.clone(),
                        resources,
                    });
                }
            }
        } else if own.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            // Stale: it answers a response that a newer one has replaced.
            return out;
        } else if let Some(sent) = st.pending.take() {
            own.settled = None;
            match &req.error_detail {
                Some(status) => {
                    own.rejected = Some(sent.version.clone());
                    st.reject(
                        ty,
                        sent.version,
                        sent.resources,
                        &status.message,
                        &mut out.events,
                    );
                }
                None => {
                    own.rejected = None;
                    st.accept(ty, sent, &mut out.events);
                }
            }
        }
        // Else: the latest response was answered already; the client only changes what it
        // subscribes to (Envoy keeps sending the last nonce it received).
        let restated = st
            .subscription
            .as_ref()
            .is_some_and(|current| restates(ty, &req.resource_names, current));
        if !restated {
            st.subscribe(subscription(
                ty,
                &req.resource_names,
                st.subscription.as_ref(),
            ));
        }
        self.step(&mut out);
        if self.core.sent_nothing() && self.in_sync() {
            self.greet(self.core.greeting_type(ty), &mut out);
        }
        out
    }

    /// A new config version to converge to.
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Output {
        self.core.snapshot = Some(snapshot);
        let mut out = Output::default();
        self.step(&mut out);
        out
    }

    /// A type the client has not asked for (or asked for only some names of) is not in sync
    /// unless the snapshot has nothing of it, except for a client that names its listeners (see
    /// [`crate::xds::order::Holdings::names_its_listeners`]). O(1): it reads what the last
    /// step settled on.
    fn in_sync(&self) -> bool {
        let asks_what_it_uses = self.core.names_its_listeners();
        self.core.in_sync_where(|ty, st, snap| {
            let own = &self.types[ty];
            st.pending.is_none()
                && (own.settled_complete || asks_what_it_uses)
                && own
                    .settled
                    .as_ref()
                    .is_some_and(|k| k.is_final(st, ty, snap))
        })
    }

    fn describe(r: &Response) -> Pushed<'_> {
        Pushed {
            ty: r.ty,
            version: &r.version,
            resources: r.resources.len(),
            removed: 0,
        }
    }

    fn core(&self) -> &Core {
        &self.core
    }
}

impl Stream {
    /// The first message on a stream whose client reconnected holding exactly what it should
    /// (it is in sync before anything was sent): what it holds of `ty` again, the same content
    /// under the same version, which Envoy compares and leaves as it is. Never an empty
    /// response under that version: the spec allows nothing or the same content, and a client
    /// that trusts the version would believe it holds nothing. On an ADS stream only routes or
    /// endpoints greet (a few resources; clusters and listeners would be the whole set).
    fn greet(&mut self, ty: ResourceType, out: &mut Output) {
        let st = &self.core.types[ty];
        let held = match (&st.pending, &st.reported, &st.acked) {
            (None, Some(_), Some(held)) => held.clone(),
            _ => return,
        };
        let resources = match (ty.is_full_state(), self.core.mode) {
            (false, _) | (true, Mode::Single(_)) => held.resources.values().cloned().collect(),
            (true, Mode::Aggregated) => return,
        };
        let nonce = self.core.next_nonce();
        self.types[ty].last_nonce = Some(nonce.clone());
        out.responses.push(Response {
            ty,
            version: held.version.clone(),
            nonce,
            resources,
        });
        // The client holds the same after it as before.
        self.core.types[ty].pending = Some(held);
    }

    /// Sends, in make-before-break order, every type whose desired content differs from what the
    /// client holds.
    fn step(&mut self, out: &mut Output) {
        // A reconnecting client found to hold a later type (routes) as they are may let an
        // earlier one (clusters kept for its old routes) change: once more, then.
        if self.step_once(out) {
            self.step_once(out);
        }
    }

    /// One pass over the types; true when it found that the client holds a type it reported
    /// on reconnecting.
    fn step_once(&mut self, out: &mut Output) -> bool {
        let Some(snap) = self.core.snapshot.clone() else {
            return false;
        };
        let mut adopted = false;
        for &ty in self.core.mode.types() {
            // One response of a type in flight at a time: what changes meanwhile goes out as
            // one response, the latest, once the client answered (a burst of saves costs a
            // slow client one response, not one per save).
            if self.core.types[ty].pending.is_some() {
                continue;
            }
            let kept = self.core.kept(ty, &snap);
            let st = &self.core.types[ty];
            let own = &self.types[ty];
            if !own.force
                && own
                    .settled
                    .as_ref()
                    .is_some_and(|k| k.is_now(st, ty, &snap, &kept))
            {
                continue;
            }
            let key = SettledOn::new(st, ty, &snap, kept);
            let wants_all = self.wants_all(ty, &snap);
            let Some((desired, version)) = self.desired(ty, &snap, key.kept(), wants_all) else {
                continue;
            };
            let st = &mut self.core.types[ty];
            let own = &mut self.types[ty];
            let acked_before = st.acked.is_some();
            if !own.force && holds(st, ty, &desired, &version) {
                adopted |= !acked_before && st.acked.is_some();
                st.blocked = None;
                own.settled_complete = wants_all;
                own.settled = Some(key);
                continue;
            }
            own.settled = None;
            if own.rejected.as_deref() == Some(version.as_str()) {
                // Rejected before; wait for the next change.
                st.blocked = Some(key.into_type_version());
                continue;
            }
            own.force = false;
            st.blocked = None;
            let nonce = self.core.next_nonce();
            self.types[ty].last_nonce = Some(nonce.clone());
            out.responses.push(Response {
                ty,
                version: version.clone(),
                nonce,
                resources: if Arc::ptr_eq(&desired, snap.shared(ty)) {
                    snap.list(ty).clone()
                } else {
                    desired.values().cloned().collect()
                },
            });
            let resources = desired;
            if let Some(sent) = self.sent.as_ref().filter(|_| ty == ResourceType::Cluster) {
                sent.record(ty, &version, &resources);
            }
            let held = Held { version, resources };
            if ty == ResourceType::Cluster {
                self.refresh_endpoints_of_changed_clusters(&held);
            }
            self.core.types[ty].pending = Some(held);
        }
        adopted
    }

    /// Envoy re-creates a cluster whose definition changed, and the new one warms until it gets
    /// its endpoints; Envoy does not ask again for names it already has, so they are sent again,
    /// right behind the clusters (`now`, being sent): Envoy ACKs the clusters only once they
    /// have warmed, so waiting for that ACK would leave them warming until Envoy's initial
    /// fetch timeout (15 s). (New cluster names need nothing: Envoy subscribes to them.)
    fn refresh_endpoints_of_changed_clusters(&mut self, now: &Held) {
        let before = self.core.types[ResourceType::Cluster].acked_resources();
        let changed = before.is_some_and(|before| {
            now.resources
                .iter()
                .any(|(name, r)| before.get(name).is_some_and(|old| old != r))
        });
        if changed && self.core.subscribed(ResourceType::Endpoint) {
            self.types[ResourceType::Endpoint].force = true;
        }
    }

    /// The resources this client should hold for `ty` now and their version, or `None` when
    /// the type must wait (routes whose clusters are not ready yet). A client that gets every
    /// resource of the type (the usual case) shares the snapshot's set and its version, both
    /// computed once per config version: nothing is copied or hashed per stream.
    fn desired(
        &self,
        ty: ResourceType,
        snap: &Snapshot,
        kept: &[String],
        wants_all: bool,
    ) -> Option<(ResourceMap, String)> {
        if !self.core.subscribed(ty) || self.core.held_back(ty, snap) {
            return None;
        }
        if wants_all && kept.is_empty() {
            return Some((snap.shared(ty).clone(), snap.type_version(ty).to_owned()));
        }
        let mut desired: BTreeMap<String, Resource> = self.core.wanted(ty, snap);
        self.core.keep(ty, &mut desired, kept);
        let version = set_version(desired.values());
        Some((Arc::new(desired), version))
    }

    /// Whether the client asks for every resource of `ty` in `snap`: remembered while the
    /// snapshot's names and the subscription stay the same (a change of content only, the usual
    /// edit, costs no walk over the names).
    fn wants_all(&mut self, ty: ResourceType, snap: &Snapshot) -> bool {
        let st = &self.core.types[ty];
        let own = &mut self.types[ty];
        let names_version = snap.names_version(ty);
        if let Some((v, generation, covers)) = &own.covers
            && v == names_version
            && *generation == st.generation
        {
            return *covers;
        }
        let covers = match &st.subscription {
            Some(s) if s.wildcard => true,
            Some(s) => snap.resources(ty).keys().all(|n| s.names.contains(n)),
            None => false,
        };
        own.covers = Some((names_version.to_owned(), st.generation, covers));
        covers
    }
}

#[cfg(test)]
mod tests;
