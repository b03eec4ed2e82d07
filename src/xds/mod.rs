//! The xDS side: resource types and their order ([`ResourceType`]), the per-stream state machine
//! with no I/O ([`sotw`]), the wire encoding of pre-encoded responses ([`codec`]), and the tonic
//! server that connects them to sockets ([`server`]).

pub mod codec;
pub mod csds;
pub mod server;
pub mod sotw;

pub use crate::snapshot::ResourceType;
