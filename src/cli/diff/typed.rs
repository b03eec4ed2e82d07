//! The parts of `cutover diff` read from the typed resources rather than their JSON: what a TCP
//! listener does with new connections (from its `filter_chain_matcher`), and which secrets
//! changed (never their content: a key is not printed).

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::matching::input_matchers::runtime_fraction::v3::RuntimeFraction;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::MatcherType;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{OnMatch, matcher_list, on_match};
use prost::Message;

/// Where a TCP listener sends new connections, `cluster share%, …` in the matcher's order;
/// `None` for a listener without a filter chain matcher (an HTTP one).
pub(super) fn tcp_shares(l: &Listener) -> Option<String> {
    let matcher = l.filter_chain_matcher.as_ref()?;
    let mut shares = Vec::new();
    let mut below = 0u64;
    if let Some(MatcherType::MatcherList(list)) = &matcher.matcher_type {
        for m in &list.matchers {
            let threshold = m.predicate.as_ref().and_then(threshold)?;
            let chain = m.on_match.as_ref().and_then(chain)?;
            shares.push((chain, threshold.saturating_sub(below)));
            below = threshold;
        }
    }
    let last = matcher.on_no_match.as_deref().and_then(chain)?;
    shares.push((last, 1_000_000u64.saturating_sub(below)));
    let text: Vec<String> = if shares.len() == 1 {
        vec![shares.remove(0).0]
    } else {
        shares
            .into_iter()
            .map(|(c, ppm)| format!("{c} {}%", ppm as f64 / 10_000.0))
            .collect()
    };
    Some(text.join(", "))
}

/// The chains a TCP listener has, by name.
pub(super) fn chains(l: &Listener) -> Vec<&str> {
    l.filter_chains.iter().map(|c| c.name.as_str()).collect()
}

fn chain(m: &OnMatch) -> Option<String> {
    match &m.on_match {
        Some(on_match::OnMatch::Action(a)) => Some(a.name.clone()),
        _ => None,
    }
}

/// The cumulative threshold, in parts per million, of a `runtime_fraction` predicate.
fn threshold(p: &matcher_list::Predicate) -> Option<u64> {
    use matcher_list::predicate::{MatchType, single_predicate};
    let Some(MatchType::SinglePredicate(single)) = &p.match_type else {
        return None;
    };
    let Some(single_predicate::Matcher::CustomMatch(custom)) = &single.matcher else {
        return None;
    };
    let any = custom.typed_config.as_ref()?;
    let fraction = RuntimeFraction::decode(any.value.as_slice()).ok()?;
    let percent = fraction.runtime_fraction?.default_value?;
    Some(u64::from(percent.numerator))
}

/// What changed in a secret, in words: never its content.
pub(super) fn secret_changes(old: &Secret, new: &Secret) -> Vec<String> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    match (&old.r#type, &new.r#type) {
        (Some(Type::TlsCertificate(o)), Some(Type::TlsCertificate(n))) => {
            let mut out = Vec::new();
            if o.certificate_chain != n.certificate_chain {
                out.push("certificate chain changed".to_owned());
            }
            if o.private_key != n.private_key {
                out.push("private key changed".to_owned());
            }
            out
        }
        (Some(Type::ValidationContext(o)), Some(Type::ValidationContext(n))) if o != n => {
            vec!["trusted CA changed".to_owned()]
        }
        (o, n) if o != n => vec!["content changed".to_owned()],
        _ => Vec::new(),
    }
}
