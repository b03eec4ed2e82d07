//! The in-process transport: a [`FakeEnvoy`] and a protocol machine (`xds::sotw::Stream` or
//! `xds::delta::Stream`, the pure state machines the server runs per stream), messages delivered
//! one at a time in the order one gRPC stream would carry them. No sockets, no clock.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{FakeEnvoy, Request, Response};
use crate::snapshot::{Resource, Snapshot};
use crate::testing::Protocol;
use crate::xds::clients::SyncState;
use crate::xds::stream::Machine as ServerMachine;
use crate::xds::{Event, Mode, Output, ResourceType, delta, sotw};

/// A protocol machine the fake client can talk to.
pub trait Machine: ServerMachine {
    const PROTOCOL: Protocol;

    /// `req` as this machine takes it; panics on the other protocol's.
    fn request(req: Request) -> Self::Request;

    fn response(r: &Self::Response) -> Response;

    /// Feeds `req` in: the responses, as the client gets them, and the events.
    fn send(&mut self, req: Request) -> (Vec<Response>, Vec<Event>) {
        let out = self.on_request(&Self::request(req));
        (
            out.responses.iter().map(Self::response).collect(),
            out.events,
        )
    }

    /// Publishes `snapshot`: the responses and the events.
    fn publish(&mut self, snapshot: Arc<Snapshot>) -> (Vec<Response>, Vec<Event>) {
        let out = self.on_snapshot(snapshot);
        (
            out.responses.iter().map(Self::response).collect(),
            out.events,
        )
    }
}

/// `Machine` for a protocol's stream: its protocol and its request's variant.
macro_rules! machine {
    ($($stream:ty: $protocol:ident, $into:ident;)*) => {$(
        impl Machine for $stream {
            const PROTOCOL: Protocol = Protocol::$protocol;

            fn request(req: Request) -> Self::Request {
                req.$into()
            }

            fn response(r: &Self::Response) -> Response {
                r.into()
            }
        }
    )*};
}

machine! {
    sotw::Stream: Sotw, into_sotw;
    delta::Stream: Delta, into_delta;
}

/// Delivers `requests`, and everything they lead to, between `stream` and `envoy` until both
/// are quiet; the events on the way. Panics if they are never quiet.
pub fn converge<M: Machine>(
    stream: &mut M,
    envoy: &mut FakeEnvoy,
    requests: Vec<Request>,
) -> Vec<Event> {
    exchange(stream, envoy, Vec::new(), requests, |_| {})
}

/// Publishes `snapshot` on `stream` and converges; the events.
pub fn push<M: Machine>(
    stream: &mut M,
    envoy: &mut FakeEnvoy,
    snapshot: Arc<Snapshot>,
) -> Vec<Event> {
    let out = stream.on_snapshot(snapshot);
    let mut events = out.events;
    events.extend(exchange(stream, envoy, out.responses, Vec::new(), |_| {}));
    events
}

/// Delivers `responses` (already made, by a publish) to `envoy`, then `requests` and everything
/// they lead to, one message at a time in the order one gRPC stream carries them, until both
/// are quiet. `observe` sees every response as the machine made it (a bench counts its bytes).
/// The events on the way; panics if they are never quiet.
pub fn exchange<M: Machine>(
    stream: &mut M,
    envoy: &mut FakeEnvoy,
    responses: Vec<M::Response>,
    requests: Vec<Request>,
    mut observe: impl FnMut(&M::Response),
) -> Vec<Event> {
    let mut requests = VecDeque::from(requests);
    let mut deliver = |responses: &[M::Response], requests: &mut VecDeque<Request>| {
        for r in responses {
            observe(r);
            requests.extend(envoy.receive(M::response(r)));
        }
    };
    deliver(&responses, &mut requests);
    let mut events = Vec::new();
    for _ in 0..1000 {
        let Some(req) = requests.pop_front() else {
            return events;
        };
        let out = stream.on_request(&M::request(req));
        events.extend(out.events);
        deliver(&out.responses, &mut requests);
    }
    panic!("did not converge");
}

/// An ADS stream serving `snapshot` and a fake Envoy brought up on it: nothing is sent before
/// it asks, and then it is in sync and holds exactly the snapshot.
pub fn connected<M: Machine>(snapshot: Arc<Snapshot>) -> (M, FakeEnvoy) {
    let mut stream = M::new(Mode::Aggregated);
    let mut envoy = FakeEnvoy::new(M::PROTOCOL);
    assert_eq!(
        stream.publish(snapshot.clone()),
        (Vec::new(), Vec::new()),
        "nothing is sent unasked"
    );
    let start = envoy.start();
    converge(&mut stream, &mut envoy, start);
    assert_eq!(
        stream.sync_state(),
        SyncState::InSync,
        "in sync once converged"
    );
    assert!(
        envoy.holds_exactly(&snapshot),
        "holds what is served: {:?}",
        envoy.held
    );
    (stream, envoy)
}

/// A new ADS stream from `envoy` (a reconnect) to a server serving `snapshot`: the responses to
/// its first requests, each delivered to it as it comes, and then everything converged.
pub fn reconnect<M: Machine>(envoy: &mut FakeEnvoy, snapshot: Arc<Snapshot>) -> (M, Vec<Response>) {
    let mut stream = M::new(Mode::Aggregated);
    stream.publish(snapshot);
    let mut first = Vec::new();
    let mut later = Vec::new();
    for req in envoy.reconnect() {
        let (responses, _) = stream.send(req);
        for r in &responses {
            later.extend(envoy.receive(r));
        }
        first.extend(responses);
    }
    converge(&mut stream, envoy, later);
    (stream, first)
}

/// What a test reads of a protocol machine's own response, either protocol.
pub trait Sent: std::fmt::Debug {
    fn ty(&self) -> ResourceType;
    fn resources(&self) -> &[Resource];
}

/// `Sent` for the machines' responses, which read alike.
macro_rules! sent {
    ($($response:ty),*) => {$(
        impl Sent for $response {
            fn ty(&self) -> ResourceType {
                self.ty
            }
            fn resources(&self) -> &[Resource] {
                &self.resources
            }
        }
    )*};
}

sent!(sotw::Response, delta::Response);

/// The names of the resources a response carries, in order.
pub fn names(r: &impl Sent) -> Vec<&str> {
    r.resources().iter().map(|r| r.name.as_str()).collect()
}

/// The types of the responses, in order.
pub fn types<R: Sent>(out: &Output<R>) -> Vec<ResourceType> {
    out.responses.iter().map(Sent::ty).collect()
}

/// The one response in `out`; panics if there is not exactly one.
pub fn only<R: Sent>(out: &Output<R>) -> &R {
    let [r] = &out.responses[..] else {
        panic!("one response expected: {out:?}")
    };
    r
}

/// A per-type stream of `ty` serving `snapshot`.
pub fn single<M: Machine>(ty: ResourceType, snapshot: Arc<Snapshot>) -> M {
    let mut stream = M::new(Mode::Single(ty));
    stream.publish(snapshot);
    stream
}
