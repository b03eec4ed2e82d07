//! The Client Status Discovery Service (`envoy.service.status.v3`), on the ADS port, so that
//! existing xDS tooling can ask which config each connected Envoy has: every resource cutover
//! sent it, with its version and whether the Envoy ACKed or NACKed it.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
    client_config::GenericXdsConfig,
    client_status_discovery_service_server::{
        ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
    },
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    NodeMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::Any;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{Access, Identity};
use crate::tls::PeerInfo;
use crate::xds::ResourceType;
use crate::xds::clients::{Client, ClientState, Clients};

#[derive(Debug, Clone)]
pub struct Csds {
    clients: Arc<Clients>,
    access: watch::Receiver<Arc<Access>>,
}

/// With mutual TLS, a caller sees only the Envoys its certificate may be (or every one, if its
/// `access:` rule says `csds: all`); without, every Envoy.
pub fn server(
    clients: Arc<Clients>,
    access: watch::Receiver<Arc<Access>>,
) -> ClientStatusDiscoveryServiceServer<Csds> {
    ClientStatusDiscoveryServiceServer::new(Csds { clients, access })
}

impl Csds {
    fn answer(&self, req: &ClientStatusRequest, who: Option<&Identity>) -> ClientStatusResponse {
        let access = self.access.borrow().clone();
        let reader = who.map(|who| access.csds_reader(who));
        let config = self
            .clients
            .list()
            .iter()
            // A client that has sent nothing yet holds nothing and has no identity.
            .filter(|s| s.group.is_some())
            .filter(|s| reader.as_ref().is_none_or(|r| r.sees(&s.node.id)))
            .filter(|s| {
                req.node_matchers
                    .iter()
                    .all(|m| node_matches(m, &s.node.id))
            })
            .map(|s| client_config(s, req.exclude_resource_contents))
            .collect();
        ClientStatusResponse { config }
    }
}

/// Pure: one client's resources as a CSDS `ClientConfig`.
pub fn client_config(s: &Client, exclude_contents: bool) -> ClientConfig {
    let mut generic_xds_configs = Vec::new();
    for ty in ResourceType::ALL {
        for r in &s.view.resource_states(ty) {
            let (client_status, config_status, error_state) = match &r.client {
                ClientState::Acked => (ClientResourceStatus::Acked, ConfigStatus::Synced, None),
                ClientState::Pending => {
                    (ClientResourceStatus::Requested, ConfigStatus::Stale, None)
                }
                ClientState::Nacked(details) => (
                    ClientResourceStatus::Nacked,
                    ConfigStatus::Error,
                    Some(UpdateFailureState {
                        details: details.clone(),
                        version_info: r.resource.version.clone(),
                        ..Default::default()
                    }),
                ),
            };
            generic_xds_configs.push(GenericXdsConfig {
                type_url: ty.type_url().to_owned(),
                name: r.resource.name.clone(),
                version_info: r.resource.version.clone(),
                // A secret's content is a private key: it never leaves through CSDS.
                xds_config: (!exclude_contents && ty != ResourceType::Secret)
                    .then(|| Any::decode(r.resource.encoded.as_ref()).ok())
                    .flatten(),
                config_status: config_status as i32,
                client_status: client_status as i32,
                error_state,
                ..Default::default()
            });
        }
    }
    ClientConfig {
        node: Some(Node {
            id: s.node.id.clone(),
            cluster: s.node.cluster.clone(),
            ..Default::default()
        }),
        generic_xds_configs,
        ..Default::default()
    }
}

fn node_matches(m: &NodeMatcher, id: &str) -> bool {
    // Metadata matchers are not supported: cutover keeps only what node groups match on.
    m.node_id.as_ref().is_none_or(|sm| string_matches(sm, id))
}

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let (value, fold) = if m.ignore_case {
        (value.to_lowercase(), true)
    } else {
        (value.to_owned(), false)
    };
    let norm = |p: &str| if fold { p.to_lowercase() } else { p.to_owned() };
    match &m.match_pattern {
        Some(MatchPattern::Exact(p)) => value == norm(p),
        Some(MatchPattern::Prefix(p)) => value.starts_with(&norm(p)),
        Some(MatchPattern::Suffix(p)) => value.ends_with(&norm(p)),
        Some(MatchPattern::Contains(p)) => value.contains(&norm(p)),
        // Regex and custom matchers: not supported; match nothing rather than everything.
        Some(_) => false,
        None => true,
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = ResponseStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let this = self.clone();
        let who = PeerInfo::of(&request).identity;
        let answers = request
            .into_inner()
            .map(move |req| req.map(|r| this.answer(&r, who.as_deref())));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        let who = PeerInfo::of(&request).identity;
        Ok(Response::new(
            self.answer(request.get_ref(), who.as_deref()),
        ))
    }
}
