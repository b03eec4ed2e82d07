//! The deployment file exactly as serde reads it, with the position of every value that a
//! validation message may need to point at. Unknown keys are rejected here.

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub services: Entries<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(rename = "match")]
    pub matcher: Spanned<RawMatch>,
    pub service: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub prefix: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub versions: Spanned<Entries<Spanned<RawVersion>>>,
    /// Shorthand for `strategy: { blue-green: { active: ... } }`.
    pub active: Option<Spanned<String>>,
    pub strategy: Option<Spanned<RawStrategy>>,
    pub mirror: Option<Spanned<RawMirror>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    pub load_balancing: Option<Spanned<RawLoadBalancing>>,
    pub outlier_detection: Option<Spanned<RawOutlierDetection>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub slow_start: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<RawRetries>>,
    pub panic_threshold: Option<Spanned<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawStrategy {
    BlueGreen(RawBlueGreen),
    RedBlack(RawRedBlack),
    Canary(Box<RawCanary>),
    Shadow(RawShadow),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlueGreen {
    pub active: Spanned<String>,
    pub preview: Option<Spanned<RawPreview>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedBlack {
    pub active: Spanned<String>,
    pub grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    pub header: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub stable: Spanned<String>,
    pub canary: Spanned<String>,
    pub weight: Spanned<Scalar>,
    pub sticky: Option<Spanned<RawSticky>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub primary: Spanned<String>,
    pub mirror: Spanned<String>,
    pub percent: Option<Spanned<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub version: Spanned<String>,
    pub percent: Option<Spanned<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(rename = "match")]
    pub matcher: Spanned<RawRuleMatch>,
    pub version: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleMatch {
    #[serde(default)]
    pub header: Entries<Spanned<Scalar>>,
    #[serde(default)]
    pub cookie: Entries<Spanned<Scalar>>,
    #[serde(default)]
    pub query: Entries<Spanned<Scalar>>,
    pub prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawLoadBalancing {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash(RawHashOn),
    Maglev(RawHashOn),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawHashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    pub enabled: Option<bool>,
    pub consecutive_5xx: Option<Spanned<u32>>,
    pub consecutive_gateway_errors: Option<Spanned<u32>>,
    pub interval: Option<Spanned<String>>,
    pub base_ejection_time: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<u32>>,
    pub success_rate: Option<Spanned<RawSuccessRate>>,
    pub failure_percentage: Option<Spanned<RawFailurePercentage>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSuccessRate {
    pub minimum_hosts: Option<u32>,
    pub request_volume: Option<u32>,
    pub stdev_factor: Option<Spanned<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailurePercentage {
    pub threshold: Option<Spanned<u32>>,
    pub minimum_hosts: Option<u32>,
    pub request_volume: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub tcp: Option<bool>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub wait_for_first_check: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub attempts: Option<Spanned<u32>>,
    pub on: Option<Vec<Spanned<String>>>,
    pub per_try_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    #[serde(default)]
    pub endpoints: Vec<Spanned<RawEndpoint>>,
}

/// An endpoint: `127.0.0.1:8081`, or `{ address: 127.0.0.1:8081, weight: 2, drain: true }`.
#[derive(Debug)]
pub struct RawEndpoint {
    pub address: String,
    pub weight: Option<u32>,
    pub drain: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointMap {
    address: String,
    weight: Option<u32>,
    #[serde(default)]
    drain: bool,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an endpoint: IP:PORT, or { address: IP:PORT, weight: N, drain: true }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    address: v.to_owned(),
                    weight: None,
                    drain: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawEndpoint, A::Error> {
                let m =
                    RawEndpointMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEndpoint {
                    address: m.address,
                    weight: m.weight,
                    drain: m.drain,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A scalar written as a number or a string (`10`, `0.5`, `"10%"`, `"1"`), kept as its text so
/// that validation can parse it and point at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A YAML mapping kept in file order with the position of every key, so that duplicate and
/// invalid names can be reported where they are written.
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}
