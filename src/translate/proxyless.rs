//! Proxyless listeners, for gRPC's own xDS clients: the HTTP listener's connection manager as an
//! xDS API listener with no address (gRFC A27). gRPC clients dialling `xds:///<name>` ask for
//! the listener `<name>`, take its routes over RDS on the same ADS stream, and pick the virtual
//! host whose domain is that name. They act only on gRPC status codes in a retry policy.
//!
//! Their make-before-break order is the client's own (they ask LDS → RDS → CDS → EDS by name):
//! see [`crate::xds::order`].

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{Resources, any, duration, http};
use crate::reconcile::ListenerPlan;
use crate::spec::{GRPC_RETRY_ON, Retries};

/// The resources of a proxyless listener besides its routes: the API listener.
pub(super) fn resources(l: &ListenerPlan, out: &mut Resources) {
    out.listeners.push(Listener {
        name: l.name.clone(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&http::connection_manager(l))),
        }),
        ..Default::default()
    });
}

/// gRPC clients act only on gRPC status codes (gRFC A44) and ignore the rest; the default
/// conditions (a refused or reset stream before the request was sent) are what their own
/// transparent retries already cover, so a policy with no gRPC code left is not sent.
pub(super) fn retry_policy(retries: &Retries) -> Option<RetryPolicy> {
    let on: Vec<&str> = retries
        .on
        .iter()
        .map(String::as_str)
        .filter(|c| GRPC_RETRY_ON.contains(c))
        .collect();
    (!on.is_empty()).then(|| RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(UInt32Value {
            value: retries.attempts,
        }),
        per_try_timeout: retries.per_try_timeout.map(duration),
        ..Default::default()
    })
}
