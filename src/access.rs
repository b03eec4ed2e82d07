//! Who may ask for what, when Envoys connect with client certificates (mutual TLS).
//!
//! A node id is only a claim: any client can put any id (and so any group's config) in its first
//! request. With mTLS the claim is checked against the identity its certificate proves — the
//! certificate's subject alternative names, DNS names and URIs (SPIFFE ids are URIs) — by the
//! rules of the deployment file's `access:` section. The same rules bind the telemetry streams
//! (a report is only taken for a node the reporter may be) and say whose status a CSDS caller
//! may read. Pure: the TLS edge ([`crate::tls`]) hands over the verified names; the xDS, telemetry
//! and CSDS servers ask [`Access`].

use std::fmt;

use regex::Regex;

/// What a verified client certificate says its holder is: its DNS and URI subject alternative
/// names, in certificate order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub names: Vec<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.names.is_empty() {
            return f.write_str("a certificate without DNS or URI names");
        }
        f.write_str(&self.names.join(", "))
    }
}

/// The longest name a pattern is tried on. A certificate's names and node ids are short; this
/// bounds the work a client can make matching cost.
const MAX_MATCHED_BYTES: usize = 1024;

/// A name pattern: literal text, `*` (any run of characters) and `{name}` captures (a non-empty
/// run without `/`, so that `spiffe://corp/ns/{ns}/sa/{sa}` takes one path segment each).
/// A capture of a node pattern stands for what the identity pattern captured under that name.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
    /// Compiled when no capture needs a value from elsewhere; matching is linear (`regex`).
    regex: Regex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Any,
    Capture(String),
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("`{{` without a closing `}}`; a capture is written `{{name}}`")]
    Unclosed,
    #[error("`}}` without an opening `{{`; a capture is written `{{name}}`")]
    UnopenedClose,
    #[error(
        "capture name {0:?} is not a name: use letters, digits and `_`, starting with a letter"
    )]
    BadName(String),
    #[error("capture {{{0}}} appears twice; each capture can be used once per pattern")]
    Repeated(String),
    #[error("the pattern is empty")]
    Empty,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.text == other.text
    }
}

impl Eq for Pattern {}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match c {
                '*' => {
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Any);
                    rest = &rest[1..];
                }
                '{' => {
                    let end = rest.find('}').ok_or(PatternError::Unclosed)?;
                    let name = &rest[1..end];
                    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(PatternError::BadName(name.to_owned()));
                    }
                    if parts.contains(&Part::Capture(name.to_owned())) {
                        return Err(PatternError::Repeated(name.to_owned()));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Capture(name.to_owned()));
                    rest = &rest[end + 1..];
                }
                '}' => return Err(PatternError::UnopenedClose),
                c => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let regex = compile(&parts, &[]);
        Ok(Pattern {
            text: text.to_owned(),
            parts,
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The names of its captures, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether `text` matches, and what each capture took.
    fn capture(&self, text: &str) -> Option<Vec<(String, String)>> {
        if text.len() > MAX_MATCHED_BYTES {
            return None;
        }
        let found = self.regex.captures(text)?;
        Some(
            self.captures()
                .enumerate()
                .map(|(i, name)| (name.to_owned(), found[i + 1].to_owned()))
                .collect(),
        )
    }

    /// Whether `text` matches with each capture standing for the value `bound` gives it.
    fn matches_bound(&self, text: &str, bound: &[(String, String)]) -> bool {
        if text.len() > MAX_MATCHED_BYTES {
            return false;
        }
        if self.captures().next().is_none() {
            return self.regex.is_match(text);
        }
        compile(&self.parts, bound).is_match(text)
    }
}

/// The pattern as an anchored regular expression; a capture with a value in `bound` is that
/// value, literally, and one without is a group of its own.
fn compile(parts: &[Part], bound: &[(String, String)]) -> Regex {
    let mut re = String::from("^");
    for part in parts {
        match part {
            Part::Text(t) => re.push_str(&regex::escape(t)),
            Part::Any => re.push_str("(?s:.*)"),
            Part::Capture(name) => match bound.iter().find(|(n, _)| n == name) {
                Some((_, value)) => re.push_str(&regex::escape(value)),
                None => re.push_str("([^/]+)"),
            },
        }
    }
    re.push('$');
    // Escaped text and fixed constructs only: always a valid expression.
    Regex::new(&re).expect("a pattern compiles")
}

/// Whose client status a CSDS caller may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CsdsScope {
    /// Only Envoys whose node ids the caller's identity may use.
    #[default]
    Own,
    /// Every Envoy's (an operator's tool).
    All,
}

/// One rule of the file's `access:` section: a certificate identity, the node ids it may use,
/// and optionally the groups those nodes may fall in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub identity: Pattern,
    /// Its captures are the identity's (validation checks that each is captured there).
    pub node: Pattern,
    /// `None`: any group.
    pub groups: Option<Vec<String>>,
    pub csds: CsdsScope,
}

/// The file's access rules. Without any, a client's node id must be one of its certificate's
/// names, exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub rules: Vec<Rule>,
}

/// Why a client with a verified certificate was refused; the text goes to the client (as a
/// `PERMISSION_DENIED` status) and to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "client certificate identity [{identity}] matches no rule of the deployment file's \
         `access:` section; add a rule whose `identity` matches one of these names"
    )]
    UnknownIdentity { identity: Identity },
    #[error(
        "node id {node:?} is not one that client certificate identity [{identity}] may use \
         (it may use: {allowed}); start the Envoy with a node id its `access:` rule allows, \
         or change the rule"
    )]
    NodeNotAllowed {
        identity: Identity,
        node: String,
        allowed: String,
    },
    #[error(
        "node id {node:?} is not one of client certificate identity [{identity}]'s names; \
         without an `access:` section in the deployment file the node id must equal a DNS or \
         URI name of the certificate; add a rule to allow others"
    )]
    NotOwnName { identity: Identity, node: String },
    #[error(
        "node {node:?} falls in group \"{group}\", which client certificate identity \
         [{identity}] may not get (its rule allows: {allowed})"
    )]
    GroupNotAllowed {
        identity: Identity,
        node: String,
        group: String,
        allowed: String,
    },
}

impl Access {
    /// May the holder of `who` be node `node`? `group` is the node's group when it asks for
    /// config (telemetry has none to check).
    pub fn check(&self, who: &Identity, node: &str, group: Option<&str>) -> Result<(), Refusal> {
        if self.rules.is_empty() {
            return if who.names.iter().any(|n| n == node) {
                Ok(())
            } else {
                Err(Refusal::NotOwnName {
                    identity: who.clone(),
                    node: node.to_owned(),
                })
            };
        }
        let mut matched: Vec<(&Rule, Vec<(String, String)>)> = Vec::new();
        for rule in &self.rules {
            for name in &who.names {
                if let Some(bound) = rule.identity.capture(name) {
                    matched.push((rule, bound));
                }
            }
        }
        if matched.is_empty() {
            return Err(Refusal::UnknownIdentity {
                identity: who.clone(),
            });
        }
        let for_node: Vec<&Rule> = matched
            .iter()
            .filter(|(rule, bound)| rule.node.matches_bound(node, bound))
            .map(|(rule, _)| *rule)
            .collect();
        if for_node.is_empty() {
            let allowed = matched
                .iter()
                .map(|(rule, bound)| describe_node(&rule.node, bound))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Refusal::NodeNotAllowed {
                identity: who.clone(),
                node: node.to_owned(),
                allowed,
            });
        }
        let Some(group) = group else { return Ok(()) };
        if for_node.iter().any(|rule| {
            rule.groups
                .as_ref()
                .is_none_or(|gs| gs.iter().any(|g| g == group))
        }) {
            return Ok(());
        }
        let allowed: Vec<&str> = for_node
            .iter()
            .flat_map(|rule| rule.groups.iter().flatten())
            .map(String::as_str)
            .collect();
        Err(Refusal::GroupNotAllowed {
            identity: who.clone(),
            node: node.to_owned(),
            group: group.to_owned(),
            allowed: allowed.join(", "),
        })
    }

    /// What a CSDS caller holding `who` may read: its node patterns are compiled once here,
    /// not once per connected Envoy.
    pub fn csds_reader(&self, who: &Identity) -> CsdsReader {
        if self.rules.is_empty() {
            return CsdsReader::Names(who.names.clone());
        }
        let mut nodes = Vec::new();
        for rule in &self.rules {
            for name in &who.names {
                if let Some(bound) = rule.identity.capture(name) {
                    if rule.csds == CsdsScope::All {
                        return CsdsReader::All;
                    }
                    nodes.push(compile(&rule.node.parts, &bound));
                }
            }
        }
        CsdsReader::Nodes(nodes)
    }
}

/// Decides, per connected Envoy, whether a CSDS caller sees it: it does when it may be that
/// node (as [`Access::check`] without a group).
#[derive(Debug, Clone)]
pub enum CsdsReader {
    All,
    /// The node ids its rules allow, with its captures filled in.
    Nodes(Vec<Regex>),
    /// Without rules: its certificate's names.
    Names(Vec<String>),
}

impl CsdsReader {
    pub fn sees(&self, node: &str) -> bool {
        match self {
            CsdsReader::All => true,
            CsdsReader::Nodes(_) if node.len() > MAX_MATCHED_BYTES => false,
            CsdsReader::Nodes(nodes) => nodes.iter().any(|re| re.is_match(node)),
            CsdsReader::Names(names) => names.iter().any(|n| n == node),
        }
    }
}

/// A node pattern as it reads with the identity's captures filled in.
fn describe_node(node: &Pattern, bound: &[(String, String)]) -> String {
    let mut out = String::new();
    for part in &node.parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Any => out.push('*'),
            Part::Capture(name) => match bound.iter().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(identity: &str, node: &str) -> Rule {
        Rule {
            identity: Pattern::parse(identity).unwrap(),
            node: Pattern::parse(node).unwrap(),
            groups: None,
            csds: CsdsScope::Own,
        }
    }

    fn who(names: &[&str]) -> Identity {
        Identity {
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_spiffe_capture_binds_the_node_id() {
        let access = Access {
            rules: vec![rule(
                "spiffe://corp.example/ns/{ns}/sa/{name}",
                "{name}.{ns}",
            )],
        };
        let edge = who(&["spiffe://corp.example/ns/prod/sa/edge"]);
        assert_eq!(access.check(&edge, "edge.prod", None), Ok(()));
        let refused = access.check(&edge, "checkout.prod", None).unwrap_err();
        assert!(matches!(refused, Refusal::NodeNotAllowed { .. }));
        assert!(
            refused.to_string().contains("it may use: \"edge.prod\""),
            "{refused}"
        );
        // A capture is one path segment: `a/b` cannot pose as a service account named `a`.
        let nested = who(&["spiffe://corp.example/ns/prod/sa/edge/extra"]);
        assert!(matches!(
            access.check(&nested, "edge/extra.prod", None),
            Err(Refusal::UnknownIdentity { .. })
        ));
    }

    #[test]
    fn captured_text_is_literal_in_the_node_pattern() {
        // The captured "a.c" must not act as a regular expression (`.` matching any character).
        let access = Access {
            rules: vec![rule("dns:{host}", "{host}")],
        };
        assert_eq!(access.check(&who(&["dns:a.c"]), "a.c", None), Ok(()));
        assert!(access.check(&who(&["dns:a.c"]), "abc", None).is_err());
    }

    #[test]
    fn a_glob_identity_may_use_a_glob_of_node_ids() {
        let access = Access {
            rules: vec![rule("*.sidecars.corp.example", "sidecar-*")],
        };
        let s = who(&["a1.sidecars.corp.example"]);
        assert_eq!(access.check(&s, "sidecar-7", None), Ok(()));
        assert!(access.check(&s, "edge-1", None).is_err());
        assert!(matches!(
            access.check(&who(&["a1.edge.corp.example"]), "sidecar-7", None),
            Err(Refusal::UnknownIdentity { .. })
        ));
    }

    #[test]
    fn any_of_the_certificates_names_may_match() {
        let access = Access {
            rules: vec![rule("spiffe://corp/{id}", "{id}")],
        };
        let both = who(&["edge-1.corp.example", "spiffe://corp/edge-1"]);
        assert_eq!(access.check(&both, "edge-1", None), Ok(()));
    }

    #[test]
    fn without_rules_the_node_id_must_be_one_of_the_names() {
        let access = Access::default();
        let c = who(&["edge-1", "spiffe://corp/edge-1"]);
        assert_eq!(access.check(&c, "edge-1", None), Ok(()));
        assert_eq!(access.check(&c, "spiffe://corp/edge-1", None), Ok(()));
        assert!(matches!(
            access.check(&c, "edge-2", None),
            Err(Refusal::NotOwnName { .. })
        ));
        assert!(access.check(&who(&[]), "", None).is_err());
    }

    #[test]
    fn groups_limit_what_an_identity_gets() {
        let mut r = rule("spiffe://corp/edge/{id}", "{id}");
        r.groups = Some(vec!["edge".into()]);
        let access = Access { rules: vec![r] };
        let e = who(&["spiffe://corp/edge/e1"]);
        assert_eq!(access.check(&e, "e1", Some("edge")), Ok(()));
        let refused = access.check(&e, "e1", Some("sidecars")).unwrap_err();
        assert!(matches!(refused, Refusal::GroupNotAllowed { .. }));
        assert!(refused.to_string().contains("allows: edge"), "{refused}");
        // Telemetry has no group to check.
        assert_eq!(access.check(&e, "e1", None), Ok(()));
    }

    #[test]
    fn csds_readers_see_their_own_envoys_unless_their_rule_says_all() {
        let mut ops = rule("spiffe://corp/ops/*", "*");
        ops.csds = CsdsScope::All;
        let access = Access {
            rules: vec![rule("spiffe://corp/edge/{id}", "{id}"), ops],
        };
        let edge = access.csds_reader(&who(&["spiffe://corp/edge/e1"]));
        assert!(edge.sees("e1"));
        assert!(!edge.sees("e2"));
        let op = access.csds_reader(&who(&["spiffe://corp/ops/alice"]));
        assert!(op.sees("e1") && op.sees("anything"));
        let stranger = access.csds_reader(&who(&["spiffe://elsewhere/x"]));
        assert!(!stranger.sees("e1"));
        // Without rules: the certificate's own names.
        let own = Access::default().csds_reader(&who(&["e1"]));
        assert!(own.sees("e1") && !own.sees("e2"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        assert_eq!(Pattern::parse("a{b"), Err(PatternError::Unclosed));
        assert_eq!(Pattern::parse("a}b"), Err(PatternError::UnopenedClose));
        assert_eq!(
            Pattern::parse("{1x}"),
            Err(PatternError::BadName("1x".into()))
        );
        assert_eq!(
            Pattern::parse("{a}-{a}"),
            Err(PatternError::Repeated("a".into()))
        );
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        let p = Pattern::parse("spiffe://td/{ns}/*/{sa}").unwrap();
        assert_eq!(p.captures().collect::<Vec<_>>(), ["ns", "sa"]);
    }

    #[test]
    fn overlong_names_never_match() {
        let access = Access {
            rules: vec![rule("*", "*")],
        };
        let long = "x".repeat(MAX_MATCHED_BYTES + 1);
        assert!(access.check(&who(&[&long]), "n", None).is_err());
    }
}
