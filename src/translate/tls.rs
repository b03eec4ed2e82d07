//! TLS termination on a listener: one filter chain per certificate, chosen by SNI, each with a
//! `DownstreamTlsContext` that takes its certificate from SDS on the ADS stream; and the
//! secrets themselves.
//!
//! The certificate is not inline in the listener: new content under the same secret name is a
//! rotation Envoy applies to new handshakes without touching the listener, so no connection is
//! drained or closed. See [`crate::spec::TlsCertificate::secret_name`].

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsCertificate, TlsParameters, common_tls_context::ValidationContextType, secret,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{ads_config_source, any};
use crate::spec::{ListenerTls, TlsVersion};

/// Reads the SNI for the filter chain match.
pub(super) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The name of the secret holding a listener's client CA.
fn client_ca_secret(listener: &str) -> String {
    format!("{listener}/client-ca")
}

/// One filter chain per certificate, each running `filter` (the HTTP connection manager).
/// Envoy prefers an exact server name, then the longest wildcard, then the chain without
/// names (the default certificate).
pub(super) fn filter_chains(
    listener: &str,
    tls: &ListenerTls,
    filter: &Filter,
) -> Vec<FilterChain> {
    tls.certificates
        .iter()
        .map(|c| {
            let secret = c.secret_name(listener);
            let context = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_params: Some(TlsParameters {
                        tls_minimum_protocol_version: match tls.min_version {
                            TlsVersion::V1_2 => TlsProtocol::TlSv12,
                            TlsVersion::V1_3 => TlsProtocol::TlSv13,
                        } as i32,
                        ..Default::default()
                    }),
                    tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                        name: secret.clone(),
                        sds_config: Some(ads_config_source()),
                    }],
                    alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
                    validation_context_type: tls.client_ca.as_ref().map(|_| {
                        ValidationContextType::ValidationContextSdsSecretConfig(SdsSecretConfig {
                            name: client_ca_secret(listener),
                            sds_config: Some(ads_config_source()),
                        })
                    }),
                    ..Default::default()
                }),
                require_client_certificate: tls
                    .client_ca
                    .as_ref()
                    .map(|_| BoolValue { value: true }),
                ..Default::default()
            };
            FilterChain {
                name: secret,
                filter_chain_match: (!c.server_names.is_empty()).then(|| FilterChainMatch {
                    server_names: c.server_names.clone(),
                    ..Default::default()
                }),
                filters: vec![filter.clone()],
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".to_owned(),
                    config_type: Some(SocketConfig::TypedConfig(any(&context))),
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// The listener's secrets: each certificate with its key, and the client CA.
pub(super) fn secrets(
    listener: &str,
    tls: &ListenerTls,
    files: &BTreeMap<String, Arc<str>>,
) -> Vec<Secret> {
    let inline = |path: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(
            files.get(path).map(|t| t.to_string()).unwrap_or_default(),
        )),
        ..Default::default()
    };
    let mut out: Vec<Secret> = tls
        .certificates
        .iter()
        .map(|c| Secret {
            name: c.secret_name(listener),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&c.cert.path)),
                private_key: Some(inline(&c.key.path)),
                ..Default::default()
            })),
        })
        .collect();
    if let Some(ca) = &tls.client_ca {
        out.push(Secret {
            name: client_ca_secret(listener),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(&ca.path)),
                    ..Default::default()
                },
            )),
        });
    }
    out
}
