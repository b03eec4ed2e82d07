//! Certificates made in the test (rcgen): a CA, server certificates with the names cutover is
//! reached by, and client certificates with the DNS and URI names an Envoy proves.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// Where a CA, a certificate and a key were written.
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str]) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with these names: `spiffe://…` and other URIs as URI names, the
    /// rest as DNS names.
    pub fn client(&self, names: &[&str]) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.subject_alt_names = names
            .iter()
            .map(|n| {
                let value = n.to_string().try_into().expect("an IA5 name");
                if n.contains("://") {
                    SanType::URI(value)
                } else {
                    SanType::DnsName(value)
                }
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// What a gRPC client that trusts this CA needs to reach a server by `domain` (a name or an
    /// IP address its certificate carries), presenting `client` if given.
    pub fn client_tls(&self, domain: &str, client: Option<&Pair>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pem))
            .domain_name(domain);
        if let Some(p) = client {
            tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
        }
        tls
    }

    /// Writes the CA and `pair` into `dir` as `<stem>-ca.pem`, `<stem>.pem`, `<stem>-key.pem`.
    pub fn write(&self, dir: &Path, stem: &str, pair: &Pair) -> Files {
        let files = Files {
            ca: dir.join(format!("{stem}-ca.pem")),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&files.ca, &self.pem).expect("write the CA");
        pair.write(&files.cert, &files.key);
        files
    }
}

impl Pair {
    /// Writes the certificate and key, each replaced at once (written beside, then renamed),
    /// as a certificate rotation would.
    pub fn write(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key), (cert, &self.cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
    }
}
