//! Where Envoy connects: an endpoint of a version, or cutover's ADS address in a bootstrap.
//!
//! Either an IP address and port (`127.0.0.1:8081`, `[::1]:8081`) or a DNS name and port
//! (`blue:8080`, `checkout.prod.svc.cluster.local:8080`) that Envoy resolves itself. Parsing is
//! the only validation: an [`EndpointAddress`] is known to be well formed, a name is stored in
//! lower case (DNS names are case-insensitive, so `Blue:80` and `blue:80` are one endpoint), and
//! it is written back ([`fmt::Display`], and so the state file) as it is parsed.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address Envoy connects to: an IP socket address, or a DNS name and port.
///
/// Ordered IP addresses first, then names, so that a set of IP addresses keeps the order it had
/// when endpoints could only be IP addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointAddress {
    /// Sent to Envoy as is.
    Ip(SocketAddr),
    /// Resolved by Envoy (a DNS cluster).
    Name(HostPort),
}

/// A valid DNS name (lower case) and a port from 1 to 65535.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl EndpointAddress {
    /// The port, whatever the kind of address.
    pub fn port(&self) -> u16 {
        match self {
            EndpointAddress::Ip(a) => a.port(),
            EndpointAddress::Name(h) => h.port,
        }
    }

    /// Whether Envoy must resolve this address with DNS.
    pub fn is_name(&self) -> bool {
        matches!(self, EndpointAddress::Name(_))
    }

    /// The host part as Envoy's `socket_address.address` takes it: an IP without brackets, or
    /// the name.
    pub fn host(&self) -> String {
        match self {
            EndpointAddress::Ip(a) => a.ip().to_string(),
            EndpointAddress::Name(h) => h.host.clone(),
        }
    }
}

impl From<SocketAddr> for EndpointAddress {
    fn from(a: SocketAddr) -> Self {
        EndpointAddress::Ip(a)
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => a.fmt(f),
            EndpointAddress::Name(h) => write!(f, "{}:{}", h.host, h.port),
        }
    }
}

/// Why a text is not an address; each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no port: write IP:PORT or HOST:PORT, e.g. 127.0.0.1:8081 or blue:8080")]
    NoPort,
    #[error("port 0: give the port the endpoint listens on (1 to 65535)")]
    PortZero,
    #[error("port \"{0}\" is not a number from 1 to 65535")]
    BadPort(String),
    #[error(
        "\"{0}\" is neither an IP address nor a DNS name: a name is dot-separated labels of 1 to 63 letters, digits, '-' or '_' (not starting or ending with '-'), at most 253 characters; write IPv6 addresses in brackets, e.g. [::1]:8081"
    )]
    BadHost(String),
    #[error(
        "\"{0}\" looks like an IPv4 address but is not one (each of the 4 numbers is 0 to 255)"
    )]
    BadIpv4(String),
}

impl FromStr for EndpointAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return if addr.port() == 0 {
                Err(AddressError::PortZero)
            } else {
                Ok(EndpointAddress::Ip(addr))
            };
        }
        let (host, port) = text.rsplit_once(':').ok_or(AddressError::NoPort)?;
        if host.starts_with('[') || host.contains(':') {
            // An IPv6 address that did not parse above (or one without brackets).
            return Err(AddressError::BadHost(host.to_owned()));
        }
        let port = match port.parse::<u16>() {
            Ok(0) => return Err(AddressError::PortZero),
            Ok(p) => p,
            Err(_) if port.is_empty() => return Err(AddressError::NoPort),
            Err(_) => return Err(AddressError::BadPort(port.to_owned())),
        };
        check_dns_name(host)?;
        Ok(EndpointAddress::Name(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        }))
    }
}

/// A DNS name as resolvers accept it (RFC 1123 host names, plus `_`, which Docker and
/// Kubernetes service names may contain). A name whose last label is all digits is refused: it is
/// a mistyped IPv4 address (`10.0.0.300`), never a resolvable name.
fn check_dns_name(host: &str) -> Result<(), AddressError> {
    let bad = || AddressError::BadHost(host.to_owned());
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(bad());
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(
            if labels.len() == 4 && labels.iter().all(|l| l.len() <= 3) {
                AddressError::BadIpv4(host.to_owned())
            } else {
                bad()
            },
        );
    }
    Ok(())
}

// In the state file an address is its text, as a `SocketAddr` was before names existed: state
// files written by earlier versions read the same.
impl Serialize for EndpointAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid address {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EndpointAddress, AddressError> {
        text.parse()
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(
            parse("127.0.0.1:8081").unwrap(),
            EndpointAddress::Ip("127.0.0.1:8081".parse().unwrap())
        );
        assert_eq!(parse("[::1]:8081").unwrap().to_string(), "[::1]:8081");
        assert!(!parse("10.0.0.1:80").unwrap().is_name());
    }

    #[test]
    fn names() {
        for (text, host, port) in [
            ("blue:8080", "blue", 8080),
            ("localhost:1", "localhost", 1),
            (
                "Checkout.Prod.svc.cluster.local:65535",
                "checkout.prod.svc.cluster.local",
                65535,
            ),
            ("my_service:80", "my_service", 80),
            ("cutover.default.svc.:18000", "cutover.default.svc.", 18000),
            ("a-b.c1:80", "a-b.c1", 80),
            ("1blue:80", "1blue", 80),
        ] {
            let addr = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let EndpointAddress::Name(h) = &addr else {
                panic!("{text} is not a name: {addr:?}")
            };
            assert_eq!((h.host(), h.port()), (host, port), "{text}");
            assert!(addr.is_name());
            assert_eq!(addr.to_string(), format!("{host}:{port}"));
        }
    }

    #[test]
    fn a_name_is_case_insensitive() {
        assert_eq!(parse("Blue:80").unwrap(), parse("blue:80").unwrap());
    }

    #[test]
    fn invalid_addresses_say_what_is_wrong() {
        let long_label = format!("{}:80", "a".repeat(64));
        let long_name = format!("{}:80", ["abcdefghi"; 26].join("."));
        for (text, expected) in [
            ("blue", AddressError::NoPort),
            ("blue:", AddressError::NoPort),
            ("blue:0", AddressError::PortZero),
            ("127.0.0.1:0", AddressError::PortZero),
            ("blue:65536", AddressError::BadPort("65536".into())),
            ("blue:http", AddressError::BadPort("http".into())),
            ("blue:-1", AddressError::BadPort("-1".into())),
            (":80", AddressError::BadHost("".into())),
            ("bl ue:80", AddressError::BadHost("bl ue".into())),
            ("blue!:80", AddressError::BadHost("blue!".into())),
            ("-blue:80", AddressError::BadHost("-blue".into())),
            ("blue-:80", AddressError::BadHost("blue-".into())),
            ("a..b:80", AddressError::BadHost("a..b".into())),
            ("::1:80", AddressError::BadHost("::1".into())),
            ("[::1:80", AddressError::BadHost("[::1".into())),
            ("256.1.1.1:80", AddressError::BadIpv4("256.1.1.1".into())),
            ("10.0.0:80", AddressError::BadHost("10.0.0".into())),
            ("1234:80", AddressError::BadHost("1234".into())),
            (long_label.as_str(), AddressError::BadHost("a".repeat(64))),
            (
                long_name.as_str(),
                AddressError::BadHost(["abcdefghi"; 26].join(".")),
            ),
        ] {
            assert_eq!(parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn the_text_form_round_trips_through_serde() {
        for text in ["127.0.0.1:8081", "[::1]:8081", "blue:8080"] {
            let addr = parse(text).unwrap();
            let json = serde_json::to_string(&addr).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<EndpointAddress>(&json).unwrap(),
                addr
            );
        }
        // As a SocketAddr was written before names existed.
        let socket: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&socket).unwrap(),
            serde_json::to_string(&EndpointAddress::from(socket)).unwrap()
        );
    }
}
