//! What an Envoy cluster name says about the service version behind it. The one place that reads
//! cutover's cluster names back; the translator writes them (`<service>/<version>` and, for the
//! fallback of a canary share or an A/B rule, the aggregate `<service>/<version>~<fallback>`).

/// Longest name part the deployment file allows (`spec` checks 1 to 64 characters).
const MAX_PART: usize = 64;

/// A cluster cutover made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterName<'a> {
    /// `<service>/<version>`: the version's own endpoints.
    Version { service: &'a str, version: &'a str },
    /// `<service>/<primary>~<fallback>`: an aggregate cluster with no endpoints of its own that
    /// sends to `primary` and spills to `fallback` when `primary` has too few healthy endpoints.
    Fallback {
        service: &'a str,
        primary: &'a str,
        fallback: &'a str,
    },
}

impl<'a> ClusterName<'a> {
    /// `None` for any name cutover does not make (`cutover_xds`, a hostile Envoy's inventions).
    pub fn parse(name: &'a str) -> Option<ClusterName<'a>> {
        let (service, rest) = name.split_once('/')?;
        if !is_part(service) {
            return None;
        }
        match rest.split_once('~') {
            None => is_part(rest).then_some(ClusterName::Version {
                service,
                version: rest,
            }),
            Some((primary, fallback)) => {
                (is_part(primary) && is_part(fallback)).then_some(ClusterName::Fallback {
                    service,
                    primary,
                    fallback,
                })
            }
        }
    }

    pub fn service(&self) -> &'a str {
        match self {
            ClusterName::Version { service, .. } | ClusterName::Fallback { service, .. } => service,
        }
    }
}

/// A service or version name as the deployment file allows it: 1 to 64 letters, digits, `-`, `_`
/// or `.`.
fn is_part(s: &str) -> bool {
    (1..=MAX_PART).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_fallbacks_parse_and_nothing_else_does() {
        assert_eq!(
            ClusterName::parse("checkout/v1.2"),
            Some(ClusterName::Version {
                service: "checkout",
                version: "v1.2"
            })
        );
        assert_eq!(
            ClusterName::parse("checkout/v2~v1"),
            Some(ClusterName::Fallback {
                service: "checkout",
                primary: "v2",
                fallback: "v1"
            })
        );
        for other in [
            "cutover_xds",
            "checkout/",
            "/v1",
            "a/b/c",
            "a/b~",
            "a/~b",
            "a/b~c~d",
            "a b/c",
            "checkout/v1\u{e9}",
            &format!("s/{}", "v".repeat(65)),
        ] {
            assert_eq!(ClusterName::parse(other), None, "{other:?}");
        }
    }
}
