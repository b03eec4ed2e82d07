//! The xDS bootstrap of gRPC's own xDS clients (gRFC A27), pointing them at cutover: the JSON
//! file that `GRPC_XDS_BOOTSTRAP` names, for clients that dial `xds:///<target>` (a
//! `proxyless: true` listener of the deployment file).
//!
//! Pure: it builds the JSON value; `cutover bootstrap --grpc` prints it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::spec::EndpointAddress;

#[derive(Debug, Clone)]
pub struct GrpcBootstrapOptions {
    pub node_id: String,
    pub node_cluster: String,
    /// `node.metadata`, string values (what the deployment file's `groups` may match).
    pub node_metadata: BTreeMap<String, String>,
    /// cutover's ADS address as the client reaches it.
    pub ads: EndpointAddress,
}

/// One xDS server, cutover, over plaintext and xDS v3 (`xds_v3`; without it gRPC speaks v2).
/// The node has an empty `locality`: grpc-js-xds refuses a bootstrap without one.
pub fn grpc_bootstrap(o: &GrpcBootstrapOptions) -> Value {
    json!({
        "xds_servers": [{
            "server_uri": format!("{}:{}", o.ads.host(), o.ads.port()),
            "channel_creds": [{ "type": "insecure" }],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": o.node_id,
            "cluster": o.node_cluster,
            "metadata": o.node_metadata,
            "locality": {},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_grpc_clients_at_cutover_over_xds_v3() {
        let b = grpc_bootstrap(&GrpcBootstrapOptions {
            node_id: "grpc-1".into(),
            node_cluster: "shop".into(),
            node_metadata: BTreeMap::from([("role".into(), "client".into())]),
            ads: "127.0.0.1:18000".parse().unwrap(),
        });
        assert_eq!(
            b,
            json!({
                "xds_servers": [{
                    "server_uri": "127.0.0.1:18000",
                    "channel_creds": [{ "type": "insecure" }],
                    "server_features": ["xds_v3"],
                }],
                "node": {
                    "id": "grpc-1",
                    "cluster": "shop",
                    "metadata": { "role": "client" },
                    "locality": {},
                },
            })
        );
    }
}
