//! The xDS bootstrap of gRPC's own xDS clients (gRFC A27), pointing them at cutover: the JSON
//! file that `GRPC_XDS_BOOTSTRAP` names, for clients that dial `xds:///<target>` (a
//! `proxyless: true` listener of the deployment file).
//!
//! Pure: it builds the JSON value; `cutover bootstrap --grpc` prints it.

use serde_json::{Value, json};

use super::Client;

/// One xDS server, cutover, over plaintext or TLS and xDS v3 (`xds_v3`; without it gRPC speaks
/// v2). The node has an empty `locality`: grpc-js-xds refuses a bootstrap without one.
///
/// TLS is gRPC's `tls` channel credentials (gRFC A65): the files are re-read by the client every
/// 10 minutes, and cutover's certificate is checked against the host of `server_uri`, the
/// `--ads` host. gRPC has nothing else of its own to set.
pub fn bootstrap(client: &Client) -> Value {
    let creds = match &client.tls {
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
    let Client { node, ads, .. } = client;
    // Several servers: gRPC uses the first it can reach, and the next ones while it cannot
    // (gRFC A71).
    let servers: Vec<_> = ads
        .iter()
        .map(|ads| {
            json!({
                "server_uri": format!("{}:{}", ads.host(), ads.port()),
                "channel_creds": [creds],
                "server_features": ["xds_v3"],
            })
        })
        .collect();
    json!({
        "xds_servers": servers,
        "node": {
            "id": node.id,
            "cluster": node.cluster,
            "metadata": node.metadata,
            "locality": {},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use super::super::ClientTls;
    use crate::node::NodeInfo;

    #[test]
    fn points_grpc_clients_at_cutover_over_xds_v3() {
        let b = bootstrap(&Client {
            node: NodeInfo {
                id: "grpc-1".into(),
                cluster: "shop".into(),
                metadata: BTreeMap::from([("role".into(), "client".into())]),
            },
            ads: vec!["127.0.0.1:18000".parse().unwrap()],
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
        let b = bootstrap(&Client {
            node: NodeInfo {
                id: "grpc-1".into(),
                cluster: "grpc-1".into(),
                metadata: BTreeMap::new(),
            },
            ads: vec!["cutover.corp.example:18000".parse().unwrap()],
            tls: Some(ClientTls {
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
