//! `tls:` on a listener: the section's checks, and the PEM files it names.
//!
//! Parsing the deployment file checks the section itself (names, one default certificate, no
//! name twice). The files are read by the caller (this module does no I/O) and checked here by
//! [`load_pem_files`]: each holds what it should, each key belongs to its certificate. Every
//! problem points at the key of the deployment file that names the file, so a bad certificate
//! is reported like any other mistake in the file, and the last good config stays served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_saphyr::{Location, Spanned};

use super::raw::RawListenerTls;
use super::validate::Validator;
use super::{FileRef, ListenerTls, Problem, Spec, SpecError, TlsCertificate, TlsVersion};

/// The largest PEM file read: a certificate chain is a few KiB; this keeps a wrong path (a
/// log file, a device) from taking memory.
pub const PEM_FILE_BYTES: usize = 1 << 20;

/// What reading each file of [`pem_paths`] gave: its bytes, or why it could not be read (the
/// message names the path as resolved).
pub type PemRead = BTreeMap<String, Result<Vec<u8>, String>>;

impl Validator {
    /// A listener's `tls:` section, or `None` (with the problems recorded) when it is wrong.
    pub(super) fn listener_tls(
        &mut self,
        raw: &Spanned<RawListenerTls>,
        listener: &str,
        proxyless: bool,
    ) -> Option<ListenerTls> {
        let before = self.problem_count();
        if proxyless {
            let msg = format!(
                "listener \"{listener}\" is proxyless: gRPC clients connect to the services \
                 themselves, there is no Envoy listener to terminate TLS on; remove `tls`"
            );
            self.at(&raw.referenced, msg);
        }
        let tls = &raw.value;
        if tls.certificates.is_empty() {
            self.at(
                &raw.referenced,
                "`tls` needs at least one entry under `certificates:` (`cert:` and `key:`, the \
                 PEM files of a certificate and its key)",
            );
        }
        let mut names: BTreeMap<String, Location> = BTreeMap::new();
        let mut default: Option<Location> = None;
        let mut certificates = Vec::new();
        for c in &tls.certificates {
            let mut server_names = Vec::new();
            for n in &c.value.server_names {
                let Some(name) = self.server_name(n) else {
                    continue;
                };
                if let Some(first) = names.get(&name) {
                    let msg = format!(
                        "two certificates for server name \"{name}\" (the first at line {}): a \
                         client asking for it could get either; keep the name on one",
                        first.line()
                    );
                    self.at(&n.referenced, msg);
                    continue;
                }
                names.insert(name.clone(), n.referenced);
                server_names.push(name);
            }
            if c.value.server_names.is_empty() {
                if let Some(first) = default {
                    let msg = format!(
                        "a second certificate without `server_names` (the first at line {}): \
                         only one can answer clients whose name no certificate lists; give this \
                         one its `server_names`",
                        first.line()
                    );
                    self.at(&c.referenced, msg);
                }
                default.get_or_insert(c.referenced);
            }
            let cert = self.file_ref(&c.value.cert, "cert");
            let key = self.file_ref(&c.value.key, "key");
            if let (Some(cert), Some(key)) = (cert, key) {
                certificates.push(TlsCertificate {
                    cert,
                    key,
                    server_names,
                });
            }
        }
        let min_version = match tls.min_version.as_ref().map(|v| (v.value.0.as_str(), v)) {
            None | Some(("1.2", _)) => TlsVersion::V1_2,
            Some(("1.3", _)) => TlsVersion::V1_3,
            Some((other, v)) => {
                let msg = format!(
                    "unknown `min_version` \"{other}\": write \"1.2\" (the default) or \"1.3\""
                );
                self.at(&v.referenced, msg);
                TlsVersion::V1_2
            }
        };
        let client_ca = tls
            .client_ca
            .as_ref()
            .and_then(|ca| self.file_ref(ca, "client_ca"));
        (self.problem_count() == before).then_some(ListenerTls {
            certificates,
            min_version,
            client_ca,
        })
    }

    pub(super) fn file_ref(&mut self, raw: &Spanned<String>, key: &str) -> Option<FileRef> {
        if raw.value.trim().is_empty() {
            let msg = format!("`{key}` is empty: name a PEM file");
            self.at(&raw.referenced, msg);
            return None;
        }
        Some(FileRef {
            path: raw.value.clone(),
            line: raw.referenced.line().max(1),
            column: raw.referenced.column().max(1),
        })
    }

    /// A DNS name as SNI carries it, or `*.` and one: lowercase (SNI is not case sensitive).
    pub(super) fn server_name(&mut self, raw: &Spanned<String>) -> Option<String> {
        let name = raw.value.to_ascii_lowercase();
        let rest = name.strip_prefix("*.").unwrap_or(&name);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if name.len() <= 253 && rest.split('.').all(label_ok) {
            return Some(name);
        }
        let msg = format!(
            "invalid server name \"{}\": write a host name (shop.example.com) or a wildcard for \
             one label under a domain (*.example.com)",
            raw.value
        );
        self.at(&raw.referenced, msg);
        None
    }
}

/// Every PEM file the listeners' `tls:` sections name, as written.
pub fn pem_paths(spec: &Spec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for tls in spec.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        for c in &tls.certificates {
            out.insert(c.cert.path.clone());
            out.insert(c.key.path.clone());
        }
        out.extend(tls.client_ca.iter().map(|ca| ca.path.clone()));
    }
    for s in spec.services.values() {
        out.extend(
            s.policy
                .tls
                .iter()
                .flat_map(|t| &t.ca)
                .map(|ca| ca.path.clone()),
        );
    }
    out
}

/// Checks the PEM files the spec names (`read`, by path as written) and keeps their content in
/// [`Spec::pem_files`]. Errors point at the key that names the file; the warnings returned
/// (an expired certificate, a server name the certificate does not cover) do not stop the load.
pub fn load_pem_files(
    mut spec: Spec,
    file: &str,
    read: &PemRead,
    now: SystemTime,
) -> Result<(Spec, Vec<Problem>), SpecError> {
    let mut check = PemCheck {
        read,
        now,
        errors: Vec::new(),
        warnings: Vec::new(),
        texts: BTreeMap::new(),
    };
    for tls in spec.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        for c in &tls.certificates {
            check.certificate(c);
        }
        if let Some(ca) = &tls.client_ca {
            check.certs(ca, "client_ca");
        }
    }
    for ca in spec
        .services
        .values()
        .filter_map(|s| s.policy.tls.as_ref()?.ca.as_ref())
    {
        check.certs(ca, "ca");
    }
    if !check.errors.is_empty() {
        check.errors.sort_by_key(|p| (p.line, p.column));
        return Err(SpecError {
            file: file.to_owned(),
            problems: check.errors,
        });
    }
    spec.pem_files = check.texts;
    check.warnings.sort_by_key(|p| (p.line, p.column));
    Ok((spec, check.warnings))
}

struct PemCheck<'a> {
    read: &'a PemRead,
    now: SystemTime,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    texts: BTreeMap<String, Arc<str>>,
}

fn problem(at: &FileRef, message: String) -> Problem {
    Problem {
        line: at.line,
        column: at.column,
        message,
    }
}

impl PemCheck<'_> {
    /// The file's text, kept for the spec; `None` (with the error) when it cannot be used.
    fn text(&mut self, at: &FileRef, key: &str) -> Option<Vec<u8>> {
        let bytes = match self.read.get(&at.path) {
            Some(Ok(bytes)) => bytes,
            Some(Err(why)) => {
                let msg = format!("`{key}`: {why}; the last good config stays served");
                self.errors.push(problem(at, msg));
                return None;
            }
            None => {
                let msg = format!("`{key}`: {} was not read", at.path);
                self.errors.push(problem(at, msg));
                return None;
            }
        };
        if bytes.len() > PEM_FILE_BYTES {
            let msg = format!(
                "`{key}`: {} is larger than {} KiB, too large for a PEM certificate or key; is \
                 it the right file?",
                at.path,
                PEM_FILE_BYTES / 1024
            );
            self.errors.push(problem(at, msg));
            return None;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            let msg = format!(
                "`{key}`: {} is not PEM text (a DER file? convert it with `openssl x509 -inform \
                 der -in FILE -out FILE.pem`)",
                at.path
            );
            self.errors.push(problem(at, msg));
            return None;
        };
        self.texts.insert(at.path.clone(), Arc::from(text));
        Some(bytes.clone())
    }

    /// The certificates of a PEM file: at least one, each a valid X.509 certificate.
    fn certs(&mut self, at: &FileRef, key: &str) -> Option<Vec<CertificateDer<'static>>> {
        let bytes = self.text(at, key)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            let msg = format!(
                "`{key}`: {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                at.path
            );
            self.errors.push(problem(at, msg));
            return None;
        }
        for (i, der) in certs.iter().enumerate() {
            if let Err(err) = x509_parser::parse_x509_certificate(der) {
                let msg = format!(
                    "`{key}`: certificate {} of {} is not a valid X.509 certificate: {err}",
                    i + 1,
                    at.path
                );
                self.errors.push(problem(at, msg));
                return None;
            }
        }
        Some(certs)
    }

    fn certificate(&mut self, c: &TlsCertificate) {
        let chain = self.certs(&c.cert, "cert");
        let key = self.text(&c.key, "key").and_then(|bytes| {
            let parsed = PrivateKeyDer::from_pem_slice(&bytes).ok();
            if parsed.is_none() {
                let msg = format!(
                    "`key`: {} holds no PEM private key (PKCS#8 `BEGIN PRIVATE KEY`, `BEGIN RSA \
                     PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)",
                    c.key.path
                );
                self.errors.push(problem(&c.key, msg));
            }
            parsed
        });
        let (Some(chain), Some(key)) = (chain, key) else {
            return;
        };
        let signing = match rustls::crypto::ring::sign::any_supported_type(&key) {
            Ok(k) => k,
            Err(err) => {
                let msg = format!(
                    "`key`: {} is not a key Envoy can use ({err}): use an RSA (2048 bits or \
                     more) or ECDSA P-256/P-384 key",
                    c.key.path
                );
                self.errors.push(problem(&c.key, msg));
                return;
            }
        };
        let leaf = chain[0].clone();
        if rustls::sign::CertifiedKey::new(chain, signing)
            .keys_match()
            .is_err()
        {
            let msg = format!(
                "`key`: the key in {} does not belong to the certificate in {} (the first \
                 certificate of the chain): a key and certificate from different pairs? (a \
                 half-finished rotation writes one file before the other: the last good pair \
                 stays served until both match)",
                c.key.path, c.cert.path
            );
            self.errors.push(problem(&c.key, msg));
            return;
        }
        self.leaf_warnings(c, &leaf);
    }

    /// An expired or not yet valid certificate, and server names it does not cover: served
    /// (Envoy would serve them), but clients will refuse them.
    fn leaf_warnings(&mut self, c: &TlsCertificate, der: &CertificateDer<'_>) {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return;
        };
        let now = self
            .now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let validity = cert.validity();
        if validity.not_after.timestamp() < now {
            let msg = format!(
                "warning: the certificate in {} expired on {}: clients will refuse it; renew it",
                c.cert.path, validity.not_after
            );
            self.warnings.push(problem(&c.cert, msg));
        } else if validity.not_before.timestamp() > now {
            let msg = format!(
                "warning: the certificate in {} is not valid before {}: clients will refuse it \
                 until then",
                c.cert.path, validity.not_before
            );
            self.warnings.push(problem(&c.cert, msg));
        }
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for name in &c.server_names {
            if !sans.iter().any(|san| covers(san, name)) {
                let msg = format!(
                    "warning: server name \"{name}\" is not among the names of the certificate \
                     in {} ({}): clients asking for it will refuse the certificate",
                    c.cert.path,
                    if sans.is_empty() {
                        "it has none".to_owned()
                    } else {
                        sans.join(", ")
                    }
                );
                self.warnings.push(problem(&c.cert, msg));
            }
        }
    }
}

/// Whether a certificate name (`shop.example.com`, `*.example.com`) covers a server name
/// (exact, or a wildcard of one label; a wildcard server name only by the same wildcard).
fn covers(san: &str, name: &str) -> bool {
    if san == name {
        return true;
    }
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(domain), Some((label, rest))) => label != "*" && rest == domain,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::tests::problems;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::spec::parse;

    fn file(tls: &str) -> String {
        format!(
            "\
listeners:
  - name: public
    address: 127.0.0.1:10443
    tls:
{tls}
    routes:
      - match: {{ prefix: / }}
        service: checkout
services:
  checkout:
    versions:
      blue: {{ endpoints: [127.0.0.1:8081] }}
    active: blue
"
        )
    }

    const TWO: &str = "      certificates:
        - cert: shop.pem
          key: shop-key.pem
          server_names: [Shop.Example.com]
        - cert: default.pem
          key: default-key.pem";

    /// A self-signed pair for `names`, valid from 2000 until the end of `until_year`.
    fn pair(names: &[&str], until_year: i32) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(until_year, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The first second of `year`, roughly (every fourth year a leap year is near enough).
    fn year(year: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs((year - 1970) * 31_557_600)
    }

    fn read(files: &[(&str, &str)]) -> PemRead {
        files
            .iter()
            .map(|(p, t)| ((*p).to_owned(), Ok(t.as_bytes().to_vec())))
            .collect()
    }

    fn load(files: &PemRead) -> Result<(Spec, Vec<Problem>), SpecError> {
        let spec = parse("deploy.yaml", &file(TWO)).unwrap();
        load_pem_files(spec, "deploy.yaml", files, SystemTime::now())
    }

    #[test]
    fn a_tls_section_parses_with_names_lowercased_and_its_files_listed() {
        let spec = parse("deploy.yaml", &file(TWO)).unwrap();
        let tls = spec.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].server_names, ["shop.example.com"]);
        assert!(tls.certificates[1].server_names.is_empty());
        assert_eq!(tls.min_version, TlsVersion::V1_2);
        assert_eq!(
            tls.certificates[0].secret_name("public"),
            "public/shop.example.com"
        );
        assert_eq!(tls.certificates[1].secret_name("public"), "public/default");
        assert_eq!(
            pem_paths(&spec).into_iter().collect::<Vec<_>>(),
            ["default-key.pem", "default.pem", "shop-key.pem", "shop.pem"]
        );
    }

    #[test]
    fn every_mistake_in_a_tls_section_is_reported_where_it_is() {
        let text = file(
            "      min_version: 1.1
      certificates:
        - cert: a.pem
          key: a-key.pem
          server_names: [shop.example.com, \"shop..example.com\"]
        - cert: b.pem
          key: \"\"
          server_names: [SHOP.example.com]
        - cert: c.pem
          key: c-key.pem
        - cert: d.pem
          key: d-key.pem",
        );
        assert_eq!(
            problems(&text),
            [
                "deploy.yaml:5:20: unknown `min_version` \"1.1\": write \"1.2\" (the default) or \"1.3\"",
                "deploy.yaml:9:44: invalid server name \"shop..example.com\": write a host name (shop.example.com) or a wildcard for one label under a domain (*.example.com)",
                "deploy.yaml:11:16: `key` is empty: name a PEM file",
                "deploy.yaml:12:26: two certificates for server name \"shop.example.com\" (the first at line 9): a client asking for it could get either; keep the name on one",
                "deploy.yaml:15:11: a second certificate without `server_names` (the first at line 13): only one can answer clients whose name no certificate lists; give this one its `server_names`",
            ]
        );
        let none = file("      certificates: []");
        assert_eq!(
            problems(&none),
            [
                "deploy.yaml:5:7: `tls` needs at least one entry under `certificates:` (`cert:` and `key:`, the PEM files of a certificate and its key)"
            ]
        );
    }

    #[test]
    fn a_proxyless_listener_has_no_tls() {
        let text = "\
listeners:
  - name: checkout.svc
    proxyless: true
    tls: { certificates: [{ cert: a.pem, key: a-key.pem }] }
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue: { endpoints: [127.0.0.1:8081] }
    active: blue
";
        let p = problems(text);
        assert!(
            p.iter()
                .any(|m| m.starts_with("deploy.yaml:4:10: listener \"checkout.svc\" is proxyless")),
            "{p:#?}"
        );
    }

    #[test]
    fn good_files_load_into_the_spec_and_warn_of_names_the_certificate_lacks() {
        let (shop, shop_key) = pair(&["shop.example.com"], 2090);
        let (default, default_key) = pair(&["www.example.com"], 2090);
        let files = read(&[
            ("shop.pem", &shop),
            ("shop-key.pem", &shop_key),
            ("default.pem", &default),
            ("default-key.pem", &default_key),
        ]);
        let (spec, warnings) = load(&files).unwrap();
        assert_eq!(spec.pem_files.len(), 4);
        assert_eq!(&*spec.pem_files["shop.pem"], shop.as_str());
        assert!(warnings.is_empty(), "{warnings:?}");

        // The same pair under a name it does not carry: served, with a warning.
        let (other, other_key) = pair(&["other.example.com"], 2090);
        let files = read(&[
            ("shop.pem", &other),
            ("shop-key.pem", &other_key),
            ("default.pem", &default),
            ("default-key.pem", &default_key),
        ]);
        let (_, warnings) = load(&files).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!((warnings[0].line, warnings[0].column), (6, 17));
        assert!(
            warnings[0].message.contains(
                "server name \"shop.example.com\" is not among the names of the certificate in shop.pem (other.example.com)"
            ),
            "{}",
            warnings[0].message
        );
    }

    #[test]
    fn an_expired_certificate_is_served_with_a_warning() {
        let (shop, shop_key) = pair(&["shop.example.com"], 2001);
        let (default, default_key) = pair(&["www.example.com"], 2090);
        let files = read(&[
            ("shop.pem", &shop),
            ("shop-key.pem", &shop_key),
            ("default.pem", &default),
            ("default-key.pem", &default_key),
        ]);
        let (_, warnings) = load(&files).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].message.contains("expired on"),
            "{}",
            warnings[0].message
        );
        // After 2090 the other one has expired too.
        let spec = parse("deploy.yaml", &file(TWO)).unwrap();
        let later = year(2095);
        let (_, warnings) = load_pem_files(spec, "deploy.yaml", &files, later).unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn unusable_files_are_errors_at_the_key_that_names_them() {
        let (shop, _) = pair(&["shop.example.com"], 2090);
        let (_, stranger_key) = pair(&["shop.example.com"], 2090);
        let (default, default_key) = pair(&["www.example.com"], 2090);
        let mut files = read(&[
            ("shop.pem", &shop),
            ("shop-key.pem", &stranger_key),
            ("default.pem", "not a certificate"),
            ("default-key.pem", &default_key),
        ]);
        let err = load(&files).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].starts_with("deploy.yaml:7:16: `key`: the key in shop-key.pem does not belong to the certificate in shop.pem"),
            "{err}"
        );
        assert_eq!(
            lines[1],
            "deploy.yaml:9:17: `cert`: default.pem holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        );
        files.insert(
            "default.pem".to_owned(),
            Err(
                "cannot read /etc/x/default.pem: No such file or directory (os error 2)".to_owned(),
            ),
        );
        files.insert("default-key.pem".to_owned(), Ok(default.into_bytes()));
        let err = load(&files).unwrap_err().to_string();
        assert!(
            err.contains("deploy.yaml:9:17: `cert`: cannot read /etc/x/default.pem: No such file or directory (os error 2); the last good config stays served"),
            "{err}"
        );
        assert!(
            err.contains("deploy.yaml:10:16: `key`: default-key.pem holds no PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn a_wildcard_covers_one_label() {
        assert!(covers("shop.example.com", "shop.example.com"));
        assert!(covers("*.example.com", "shop.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "a.shop.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("shop.example.com", "*.example.com"));
    }
}
