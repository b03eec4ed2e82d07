//! A gRPC codec whose responses are assembled from pre-encoded resources.
//!
//! prost's `Any` owns a `Vec<u8>`, so sending a generated `DiscoveryResponse` or
//! `DeltaDiscoveryResponse` would copy and re-encode every resource for every stream. Here a
//! response is written field by field: the small per-stream fields (versions, nonce, type URL,
//! names) are encoded, and each resource's bytes, encoded once per config version, are copied
//! straight into the frame. Fields are written in the order prost writes them (by field number),
//! so the bytes are exactly what prost would produce (tested below).

use std::marker::PhantomData;

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len, string};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};

use super::{delta, sotw};

// Field numbers of envoy.service.discovery.v3.DiscoveryResponse.
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;

// Field numbers of envoy.service.discovery.v3.DeltaDiscoveryResponse.
const DELTA_SYSTEM_VERSION_INFO: u32 = 1;
const DELTA_RESOURCES: u32 = 2;
const DELTA_TYPE_URL: u32 = 4;
const DELTA_NONCE: u32 = 5;
const DELTA_REMOVED_RESOURCES: u32 = 6;

// Field numbers of envoy.service.discovery.v3.Resource, the wrapper of each delta resource.
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_RESOURCE: u32 = 2;
const RESOURCE_NAME: u32 = 3;

/// A response that writes itself as its protobuf message.
pub trait EncodeResponse {
    fn encode_to(&self, buf: &mut impl BufMut);
}

impl EncodeResponse for sotw::Response {
    fn encode_to(&self, buf: &mut impl BufMut) {
        encode_response(self, buf);
    }
}

impl EncodeResponse for delta::Response {
    fn encode_to(&self, buf: &mut impl BufMut) {
        encode_delta_response(self, buf);
    }
}

/// Writes `response` as an encoded `DiscoveryResponse`.
pub fn encode_response(response: &sotw::Response, buf: &mut impl BufMut) {
    string::encode(VERSION_INFO, &response.version, buf);
    for r in response.resources.iter() {
        encode_key(RESOURCES, WireType::LengthDelimited, buf);
        encode_varint(r.encoded.len() as u64, buf);
        buf.put_slice(&r.encoded);
    }
    encode_str(TYPE_URL, response.ty.type_url(), buf);
    string::encode(NONCE, &response.nonce, buf);
}

/// Writes `response` as an encoded `DeltaDiscoveryResponse`: each resource as a `Resource`
/// wrapper (name, version, and the shared `Any` bytes as they are).
pub fn encode_delta_response(response: &delta::Response, buf: &mut impl BufMut) {
    string::encode(DELTA_SYSTEM_VERSION_INFO, &response.version, buf);
    for r in &response.resources {
        let any = key_len(RESOURCE_RESOURCE)
            + encoded_len_varint(r.encoded.len() as u64)
            + r.encoded.len();
        let wrapper = string::encoded_len(RESOURCE_NAME, &r.name)
            + string::encoded_len(RESOURCE_VERSION, &r.version)
            + any;
        encode_key(DELTA_RESOURCES, WireType::LengthDelimited, buf);
        encode_varint(wrapper as u64, buf);
        string::encode(RESOURCE_VERSION, &r.version, buf);
        encode_key(RESOURCE_RESOURCE, WireType::LengthDelimited, buf);
        encode_varint(r.encoded.len() as u64, buf);
        buf.put_slice(&r.encoded);
        string::encode(RESOURCE_NAME, &r.name, buf);
    }
    encode_str(DELTA_TYPE_URL, response.ty.type_url(), buf);
    string::encode(DELTA_NONCE, &response.nonce, buf);
    string::encode_repeated(DELTA_REMOVED_RESOURCES, &response.removed, buf);
}

/// A string field, as `string::encode` writes it, from a `&str` (no `String` made per
/// response for the type URL).
fn encode_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

/// Decodes requests of type `Req` with prost and encodes responses `Resp` from their shared
/// bytes.
#[derive(Debug)]
pub struct XdsCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for XdsCodec<Req, Resp> {
    fn default() -> Self {
        XdsCodec(PhantomData)
    }
}

impl<Req, Resp> Codec for XdsCodec<Req, Resp>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: EncodeResponse + Send + 'static,
{
    type Encode = Resp;
    type Decode = Req;
    type Encoder = ResponseEncoder<Resp>;
    type Decoder = tonic_prost::ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug)]
pub struct ResponseEncoder<Resp>(PhantomData<fn() -> Resp>);

impl<Resp: EncodeResponse> Encoder for ResponseEncoder<Resp> {
    type Item = Resp;
    type Error = Status;

    fn encode(&mut self, item: Resp, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_to(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;
    use crate::snapshot::{Resource, ResourceData};
    use crate::xds::ResourceType;
    use crate::xds::sotw::Response;

    #[test]
    fn encodes_exactly_what_prost_would() {
        let any = Any {
            type_url: ResourceType::Cluster.type_url().to_owned(),
            value: vec![10, 3, b'a', b'/', b'b'],
        };
        let resource = Resource::from(ResourceData {
            name: "a/b".into(),
            version: "v".into(),
            encoded: any.encode_to_vec().into(),
            names_clusters: false,
        });
        let response = Response {
            ty: ResourceType::Cluster,
            version: "abc".into(),
            nonce: "7".into(),
            resources: vec![resource.clone(), resource].into(),
        };
        let mut ours = Vec::new();
        encode_response(&response, &mut ours);
        let expected = DiscoveryResponse {
            version_info: "abc".into(),
            resources: vec![any.clone(), any],
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: "7".into(),
            ..Default::default()
        };
        assert_eq!(ours, expected.encode_to_vec());
        assert_eq!(
            DiscoveryResponse::decode(ours.as_slice()).unwrap(),
            expected
        );
    }

    #[test]
    fn encodes_a_delta_response_exactly_as_prost_would() {
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryResponse, Resource as Wrapper,
        };
        let any = Any {
            type_url: ResourceType::Route.type_url().to_owned(),
            // Long enough that the lengths take two bytes.
            value: vec![7; 300],
        };
        let resource = |name: &str| {
            Resource::from(ResourceData {
                name: name.into(),
                version: format!("{name}-v"),
                encoded: any.encode_to_vec().into(),
                names_clusters: false,
            })
        };
        let response = delta::Response {
            ty: ResourceType::Route,
            version: "abc".into(),
            nonce: "9".into(),
            resources: vec![resource("public"), resource("admin")],
            removed: vec!["old".into(), "older".into()],
        };
        let mut ours = Vec::new();
        encode_delta_response(&response, &mut ours);
        let wrapper = |name: &str| Wrapper {
            name: name.into(),
            version: format!("{name}-v"),
            resource: Some(any.clone()),
            ..Default::default()
        };
        let expected = DeltaDiscoveryResponse {
            system_version_info: "abc".into(),
            resources: vec![wrapper("public"), wrapper("admin")],
            type_url: ResourceType::Route.type_url().into(),
            removed_resources: vec!["old".into(), "older".into()],
            nonce: "9".into(),
            ..Default::default()
        };
        assert_eq!(ours, expected.encode_to_vec());
        assert_eq!(
            DeltaDiscoveryResponse::decode(ours.as_slice()).unwrap(),
            expected
        );
    }
}
