//! A gRPC codec whose responses are assembled from pre-encoded resources.
//!
//! prost's `Any` owns a `Vec<u8>`, so sending a generated `DiscoveryResponse` would copy and
//! re-encode every resource for every stream. Here a response is written field by field: the
//! small per-stream fields (version, nonce, type URL) are encoded, and each resource's bytes,
//! encoded once per config version, are copied straight into the frame.

use bytes::BufMut;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::encoding::{WireType, encode_key, encode_varint, string};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};

use super::sotw::Response;

// Field numbers of envoy.service.discovery.v3.DiscoveryResponse.
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;

/// Writes `response` as an encoded `DiscoveryResponse`.
pub fn encode_response(response: &Response, buf: &mut impl BufMut) {
    string::encode(VERSION_INFO, &response.version, buf);
    for r in &response.resources {
        encode_key(RESOURCES, WireType::LengthDelimited, buf);
        encode_varint(r.encoded.len() as u64, buf);
        buf.put_slice(&r.encoded);
    }
    string::encode(TYPE_URL, &response.ty.type_url().to_owned(), buf);
    string::encode(NONCE, &response.nonce, buf);
}

/// Decodes `DiscoveryRequest`s and encodes [`Response`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct XdsCodec;

impl Codec for XdsCodec {
    type Encode = Response;
    type Decode = DiscoveryRequest;
    type Encoder = ResponseEncoder;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = Response;
    type Error = Status;

    fn encode(&mut self, item: Response, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        encode_response(&item, buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;
    use crate::snapshot::Resource;
    use crate::xds::ResourceType;

    #[test]
    fn encodes_exactly_what_prost_would() {
        let any = Any {
            type_url: ResourceType::Cluster.type_url().to_owned(),
            value: vec![10, 3, b'a', b'/', b'b'],
        };
        let resource = Resource {
            name: "a/b".into(),
            version: "v".into(),
            encoded: any.encode_to_vec().into(),
        };
        let response = Response {
            ty: ResourceType::Cluster,
            version: "abc".into(),
            nonce: "7".into(),
            resources: vec![resource.clone(), resource],
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
}
