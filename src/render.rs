//! Envoy messages in Envoy's own JSON form (proto3 JSON mapping, `Any` expanded with `@type`),
//! and as YAML. Used by `cutover render`, `cutover bootstrap` and the admin API.
//!
//! prost-generated types carry no reflection, so the descriptors that `envoy-types` was built
//! from are embedded and messages are transcoded through `prost-reflect`.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use crate::snapshot::{Published, ResourceType, Snapshot};

static DESCRIPTORS: &[u8] = include_bytes!("../proto/envoy-types-0.7.7.desc");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("embedded Envoy descriptors are unreadable: {0}")]
    Descriptors(String),
    #[error("no descriptor for message type {0}")]
    UnknownType(String),
    #[error("cannot decode {type_name}: {source}")]
    Decode {
        type_name: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write YAML: {0}")]
    Yaml(String),
}

fn pool() -> Result<&'static DescriptorPool, RenderError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| RenderError::Descriptors(e.clone()))
}

/// An encoded message of type `full_name` (e.g. `google.protobuf.Any`) as JSON.
pub fn message_json(full_name: &str, bytes: &[u8]) -> Result<Value, RenderError> {
    let pool = pool()?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| RenderError::UnknownType(full_name.to_owned()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|source| RenderError::Decode {
        type_name: full_name.to_owned(),
        source,
    })?;
    // snake_case names, as in Envoy's docs and its own config_dump.
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true);
    Ok(msg.serialize_with_options(serde_json::value::Serializer, &options)?)
}

/// A prost message as JSON.
pub fn to_json<M: prost::Name>(msg: &M) -> Result<Value, RenderError> {
    message_json(&M::full_name(), &msg.encode_to_vec())
}

/// Every resource of a snapshot, grouped by type in make-before-break order, each as an `Any`
/// with its `@type`: the exact content Envoy is sent.
pub fn snapshot_json(snapshot: &Snapshot) -> Result<Value, RenderError> {
    let mut out = Map::new();
    out.insert("version".into(), Value::String(snapshot.version.clone()));
    for ty in ResourceType::ALL {
        let resources = snapshot
            .resources(ty)
            .values()
            .map(|r| message_json("google.protobuf.Any", &r.encoded))
            .collect::<Result<Vec<_>, _>>()?;
        let mut resources = Value::Array(resources);
        if ty == ResourceType::Secret {
            redact_private_keys(&mut resources);
        }
        out.insert(type_key(ty).into(), resources);
    }
    Ok(Value::Object(out))
}

/// Replaces every `private_key` with `[redacted]`, as Envoy's own config dump does: what is
/// rendered is printed and served by the admin API, a private key is neither.
fn redact_private_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "private_key" {
                    *v = serde_json::json!({ "inline_string": "[redacted]" });
                } else {
                    redact_private_keys(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_private_keys),
        _ => {}
    }
}

/// What is published, as [`snapshot_json`]: with one node group, that group's snapshot; with
/// several, an object of them by group.
pub fn published_json(published: &Published) -> Result<Value, RenderError> {
    let groups: Vec<_> = published.groups().collect();
    if let [(_, only)] = groups[..] {
        return snapshot_json(&only.snapshot);
    }
    let mut out = Map::new();
    for (group, g) in groups {
        out.insert(group.to_string(), snapshot_json(&g.snapshot)?);
    }
    Ok(Value::Object(out))
}

/// The key a type's resources are listed under in rendered output.
pub fn type_key(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "clusters",
        ResourceType::Endpoint => "endpoints",
        ResourceType::Listener => "listeners",
        ResourceType::Route => "routes",
        ResourceType::Secret => "secrets",
    }
}

/// JSON value as YAML text.
pub fn yaml(value: &Value) -> Result<String, RenderError> {
    serde_saphyr::to_string(value).map_err(|e| RenderError::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Duration;

    use super::*;

    #[test]
    fn descriptors_match_compiled_types() {
        let cluster = Cluster {
            name: "checkout/blue".into(),
            connect_timeout: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = to_json(&cluster).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "checkout/blue", "connect_timeout": "1s"})
        );
    }
}
