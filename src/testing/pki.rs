//! Certificates made in the test ([`crate::pki`]): a CA, server certificates with the names
//! cutover is reached by, and client certificates with the DNS and URI names an Envoy proves;
//! what a test's client needs to trust them, and writing them where cutover reads them.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub use crate::pki::Pair;

/// Where a CA, a certificate and a key were written.
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority ([`crate::pki::Ca`]) whose every step is expected to work: a test
/// that cannot make a certificate has nothing to test.
pub struct Ca(crate::pki::Ca);

impl std::ops::Deref for Ca {
    type Target = crate::pki::Ca;

    fn deref(&self) -> &crate::pki::Ca {
        &self.0
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        Ca(crate::pki::Ca::new(name).expect("a CA"))
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str]) -> Pair {
        self.0.server(names).expect("a server certificate")
    }

    /// A client certificate with these names: `spiffe://…` and other URIs as URI names, the
    /// rest as DNS names.
    pub fn client(&self, names: &[&str]) -> Pair {
        self.0.client(names).expect("a client certificate")
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
