//! The xDS side: the protocol machines and the server that connects them to sockets.
//!
//! - [`sotw`]: the state-of-the-world protocol for one stream, a pure state machine;
//! - [`delta`]: the incremental (delta) protocol for one stream, a pure state machine beside it,
//!   fed the same snapshots;
//! - [`stream`]: the stream core, what both machines keep of a stream and do alike (per type:
//!   the subscription, what the client holds, what is in flight; the request prologue, nonces,
//!   the make-before-break questions, the reports), and [`stream::Machine`], what the server
//!   drives;
//! - [`order`]: make-before-break, the ordering policy every protocol machine follows;
//! - [`clients`]: one protocol-neutral view of what every connected client holds (ACKed, pending,
//!   rejected), written by the machines' streams and read by status, CSDS, metrics and the
//!   controller's gates;
//! - [`codec`], [`server`], [`csds`]: the gRPC edge;
//! - [`limits`]: what clients may make cutover hold (streams, message size, names) and a log
//!   limiter for what they may make it log.
//!
//! Resource types and their order are [`ResourceType`] (in [`crate::snapshot`]).

pub mod clients;
pub mod codec;
pub mod csds;
pub mod delta;
pub mod limits;
pub mod order;
pub mod server;
pub mod sotw;
pub mod stream;

pub use crate::snapshot::ResourceType;

/// Which resource types a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ADS: every type on one stream, ordered and gated on ACKs.
    Aggregated,
    /// A per-type discovery service (CDS, EDS, LDS or RDS alone).
    Single(ResourceType),
}

impl Mode {
    /// The types the stream carries, in make-before-break order.
    pub fn types(self) -> &'static [ResourceType] {
        match self {
            Mode::Aggregated => &ResourceType::ALL,
            Mode::Single(ResourceType::Cluster) => &[ResourceType::Cluster],
            Mode::Single(ResourceType::Endpoint) => &[ResourceType::Endpoint],
            Mode::Single(ResourceType::Listener) => &[ResourceType::Listener],
            Mode::Single(ResourceType::Route) => &[ResourceType::Route],
            Mode::Single(ResourceType::Secret) => &[ResourceType::Secret],
        }
    }
}

/// What a protocol machine answers to one input: the responses to send, in order, and the events
/// to record.
#[derive(Debug, PartialEq)]
pub struct Output<R> {
    pub responses: Vec<R>,
    pub events: Vec<Event>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            responses: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// Something a protocol machine saw that the edge should log or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        ty: ResourceType,
        version: String,
    },
    Nack {
        ty: ResourceType,
        version: String,
        error: String,
    },
    /// A request for a type this stream does not serve (logged, otherwise ignored).
    UnknownType {
        type_url: String,
    },
}
