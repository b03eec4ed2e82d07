//! What points a client at cutover: a complete Envoy bootstrap ([`envoy`]) or the xDS bootstrap
//! of a proxyless gRPC client ([`grpc`]). Both say the same two things, [`Client`]: who the
//! client is (its node, which the deployment file's `groups` match) and how it reaches cutover
//! (the ADS address, over plaintext or TLS); each adds only what its kind of client has.
//!
//! Pure: they build values; `cutover bootstrap` prints them.

pub mod envoy;
pub mod grpc;

use crate::node::NodeInfo;
use crate::spec::EndpointAddress;

/// A client of cutover, as its bootstrap names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its `node`: id, cluster and metadata (string values, what the deployment file's `groups`
    /// may match).
    pub node: NodeInfo,
    /// cutover's ADS addresses as the client reaches them, one per replica (at least one): IP
    /// addresses, or names it resolves (a name may resolve to several replicas).
    pub ads: Vec<EndpointAddress>,
    /// Reach cutover over TLS (`cutover serve --tls-cert`); plaintext when `None`.
    pub tls: Option<ClientTls>,
}

/// How a client reaches a cutover that serves TLS: file paths as the client sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed cutover's certificate (PEM).
    pub ca: String,
    /// The client's own certificate chain and key (PEM), for mutual TLS.
    pub cert_and_key: Option<(String, String)>,
}
