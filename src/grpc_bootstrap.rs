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
    /// Reach cutover over TLS (`cutover serve --tls-cert`); plaintext when `None`.
    pub tls: Option<GrpcTls>,
}

/// gRPC's `tls` channel credentials (gRFC A65): file paths as the client sees them, re-read
/// by the client every 10 minutes. cutover's certificate is checked against the host of
/// `server_uri`, the `--ads` host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    /// The CA that signed cutover's certificate (PEM).
    pub ca: String,
    /// The client's own certificate chain and key (PEM), for mutual TLS.
    pub cert_and_key: Option<(String, String)>,
}

/// One xDS server, cutover, over plaintext or TLS and xDS v3 (`xds_v3`; without it gRPC speaks
/// v2). The node has an empty `locality`: grpc-js-xds refuses a bootstrap without one.
pub fn grpc_bootstrap(o: &GrpcBootstrapOptions) -> Value {
    let creds = match &o.tls {
        None => json!({ "type": "insecure" }),
        Some(tls) => {
            let mut config = json!({ "ca_certificate_file": tls.ca });
            if let Some((cert, key)) = &tls.cert_and_key {
                config["certificate_file"] = json!(cert);
                config["private_key_file"] = json!(key);
            }
            json!({ "type": "tls", "config": config })
        }
    };
    json!({
        "xds_servers": [{
            "server_uri": format!("{}:{}", o.ads.host(), o.ads.port()),
            "channel_creds": [creds],
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
            tls: None,
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

    #[test]
    fn tls_uses_grpcs_tls_channel_credentials() {
        let b = grpc_bootstrap(&GrpcBootstrapOptions {
            node_id: "grpc-1".into(),
            node_cluster: "grpc-1".into(),
            node_metadata: BTreeMap::new(),
            ads: "cutover.corp.example:18000".parse().unwrap(),
            tls: Some(GrpcTls {
                ca: "/etc/grpc/ca.pem".into(),
                cert_and_key: Some(("/etc/grpc/cert.pem".into(), "/etc/grpc/key.pem".into())),
            }),
        });
        assert_eq!(
            b["xds_servers"][0]["channel_creds"],
            json!([{
                "type": "tls",
                "config": {
                    "ca_certificate_file": "/etc/grpc/ca.pem",
                    "certificate_file": "/etc/grpc/cert.pem",
                    "private_key_file": "/etc/grpc/key.pem",
                },
            }])
        );
        assert_eq!(
            b["xds_servers"][0]["server_uri"],
            "cutover.corp.example:18000"
        );
    }
}
