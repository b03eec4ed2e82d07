//! TLS and mutual TLS for the xDS port (ADS, the per-type services, CSDS and the telemetry
//! services all share it), with rustls.
//!
//! The certificate, its key and the client CA are files, read again whenever they change (they
//! are polled: a Kubernetes Secret volume swaps a symlink, which file events report unreliably).
//! A new config is used for new connections only; open connections, and so every xDS stream,
//! keep going. Files that do not load (a key written before its certificate, a truncated PEM)
//! leave the last good config in use, logged once per content.
//!
//! With a client CA, every client must present a certificate it signed; the certificate's DNS
//! and URI names become the connection's [`Identity`], which the servers check against the
//! file's access rules ([`crate::access`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::access::Identity;

/// Where the server's certificate and key are, and the CA that signs client certificates
/// (mutual TLS) if clients must present one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used; each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`){detail}", path.display())]
    NoCertificate { path: PathBuf, detail: String },
    #[error(
        "{} holds no PEM private key (PKCS#8 `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`){detail}",
        path.display()
    )]
    NoKey { path: PathBuf, detail: String },
    #[error(
        "the key in {} does not belong to the certificate in {} (or is not a key rustls can use): {source}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the client CA file {}: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

/// The longest a client may take to finish its TLS handshake; a client that stalls it holds
/// one of [`MAX_HANDSHAKES`] until then.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once. Past this, new connections are closed at once (the client
/// retries), so that clients that connect and send nothing cannot make cutover hold without
/// bound.
const MAX_HANDSHAKES: usize = 1024;
/// How often the files are read to see whether they changed.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// At most this many names of a client certificate are kept as its identity.
const MAX_IDENTITY_NAMES: usize = 64;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The files' bytes, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
        Ok(Contents {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            &self.cert[..],
            &self.key[..],
            self.client_ca.as_deref().unwrap_or_default(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

/// A rustls server config from the files' contents. Pure but for the crypto.
fn server_config(files: &TlsFiles, c: &Contents) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&c.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: files.cert.clone(),
            detail: format!(": {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
            detail: String::new(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|e| TlsError::NoKey {
        path: files.key.clone(),
        detail: format!(": {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match (&files.client_ca, &c.client_ca) {
        (Some(path), Some(pem)) => {
            let ca_error = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ca_error(format!("not PEM certificates: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ca_error(format!("a certificate rustls cannot use: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ca_error(
                    "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".to_owned(),
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            })?;
    // gRPC is HTTP/2; a client that offers ALPN must offer h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The TLS config new connections get, kept current with the files.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
    /// What the config was made from, to notice a change.
    loaded: RwLock<[u8; 32]>,
    /// The last contents that failed, to log a failure once.
    failed: RwLock<Option<[u8; 32]>>,
}

impl Tls {
    /// Loads the files; fails if they cannot be used (cutover does not start without TLS it
    /// was asked for).
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let contents = Contents::read(&files)?;
        let config = server_config(&files, &contents)?;
        Ok(Arc::new(Tls {
            config: RwLock::new(Arc::new(config)),
            loaded: RwLock::new(contents.fingerprint()),
            failed: RwLock::new(None),
            files,
        }))
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files and, if they changed and load, uses them for new connections. Returns
    /// whether the config changed.
    pub fn reload(&self) -> bool {
        let contents = match Contents::read(&self.files) {
            Ok(c) => c,
            // A file being replaced may be missing for a moment; the next poll sees it.
            Err(e) => {
                tracing::debug!(error = %e, "TLS files not readable now; keeping the current ones");
                return false;
            }
        };
        let fingerprint = contents.fingerprint();
        if *self.loaded.read().unwrap_or_else(|e| e.into_inner()) == fingerprint {
            return false;
        }
        match server_config(&self.files, &contents) {
            Ok(config) => {
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = fingerprint;
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded; new connections use it, open streams go on"
                );
                true
            }
            Err(e) => {
                let mut failed = self.failed.write().unwrap_or_else(|e| e.into_inner());
                if *failed != Some(fingerprint) {
                    *failed = Some(fingerprint);
                    tracing::warn!(
                        error = %e,
                        "the changed TLS files do not load; still serving the previous certificate"
                    );
                }
                false
            }
        }
    }

    /// Reloads every [`RELOAD_EVERY`] until `closing`.
    pub async fn watch(self: Arc<Self>, mut closing: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closed = std::pin::pin!(async move {
            let _ = closing.wait_for(|c| *c).await;
        });
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let this = self.clone();
                    // File reads and key parsing are blocking work.
                    let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                }
                () = &mut closed => return,
            }
        }
    }
}

/// Who is at the other end of a connection: set as a request extension by [`TlsConn`] (plain
/// TCP connections carry tonic's `TcpConnectInfo` instead; [`PeerInfo::of`] reads both).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    /// The verified client certificate's names; `None` without mutual TLS.
    pub identity: Option<Arc<Identity>>,
    /// Whether the connection is TLS.
    pub encrypted: bool,
}

impl PeerInfo {
    /// Whether secrets (private keys, over SDS) may be sent on this connection: it is TLS, or
    /// it is plaintext over loopback, which only this machine can read. A plaintext connection
    /// from elsewhere could be read on the way, and so could a key sent on it.
    pub fn may_receive_secrets(&self) -> bool {
        self.encrypted || self.addr.is_some_and(|a| a.ip().is_loopback())
    }
}

impl PeerInfo {
    pub fn of<T>(request: &tonic::Request<T>) -> PeerInfo {
        if let Some(info) = request.extensions().get::<PeerInfo>() {
            return info.clone();
        }
        PeerInfo {
            addr: request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(|i| i.remote_addr()),
            identity: None,
            encrypted: false,
        }
    }
}

/// The DNS and URI names of a DER certificate.
pub fn certificate_names(der: &[u8]) -> Identity {
    use x509_parser::extensions::GeneralName;
    let mut names = Vec::new();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der)
        && let Ok(Some(san)) = cert.subject_alternative_name()
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
            if names.len() == MAX_IDENTITY_NAMES {
                break;
            }
        }
    }
    Identity { names }
}

/// A TLS connection and who is on it.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// TLS connections from accepted TCP connections. Each handshake runs in its own task, so a
/// slow client delays nobody; at most `MAX_HANDSHAKES` at once, each within
/// `HANDSHAKE_TIMEOUT`. A failed handshake (no client certificate, one the CA did not sign,
/// a plaintext client) closes that connection and is logged at most once a minute per address.
pub fn incoming<S>(tcp: S, tls: Arc<Tls>) -> impl Stream<Item = io::Result<TlsConn>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<io::Result<TlsConn>>(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let failures = Arc::new(FailureLog::default());
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let conn = tokio::select! {
                next = tcp.next() => match next {
                    Some(Ok(conn)) => conn,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                    None => return,
                },
                // The server stopped taking connections.
                _ = tx.closed() => return,
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!("too many TLS handshakes in progress; closing a new connection");
                continue;
            };
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let addr = conn.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|leaf| Arc::new(certificate_names(leaf)));
                        let _ = tx
                            .send(Ok(TlsConn {
                                stream,
                                info: PeerInfo {
                                    addr,
                                    identity,
                                    encrypted: true,
                                },
                            }))
                            .await;
                    }
                    Ok(Err(e)) => failures.log(addr, &e.to_string()),
                    Err(_) => failures.log(addr, "no TLS handshake within 10 s"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Logs failed handshakes at most once a minute per client address (a refused Envoy retries
/// every few seconds), and for at most a bounded number of addresses.
#[derive(Debug, Default)]
struct FailureLog {
    last: std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, std::time::Instant>>,
}

impl FailureLog {
    fn log(&self, addr: Option<SocketAddr>, error: &str) {
        let now = std::time::Instant::now();
        let ip = addr.map(|a| a.ip());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= 10_000 {
            last.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        }
        let due = last
            .get(&ip)
            .is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(60));
        if due && last.len() < 10_000 {
            last.insert(ip, now);
            tracing::warn!(
                peer = ?addr,
                error,
                "refused a connection: TLS handshake failed (a client without a certificate the \
                 client CA signed, or one speaking plaintext to a TLS port?)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PeerInfo;

    /// Keys go over TLS, or over loopback only this machine can read; never over plaintext
    /// from elsewhere, nor when the peer is unknown.
    #[test]
    fn secrets_go_only_where_nobody_on_the_way_can_read_them() {
        let peer = |addr: Option<&str>, encrypted| PeerInfo {
            addr: addr.map(|a| a.parse().unwrap()),
            identity: None,
            encrypted,
        };
        assert!(peer(Some("127.0.0.1:5000"), false).may_receive_secrets());
        assert!(peer(Some("[::1]:5000"), false).may_receive_secrets());
        assert!(peer(Some("10.0.0.7:5000"), true).may_receive_secrets());
        assert!(!peer(Some("10.0.0.7:5000"), false).may_receive_secrets());
        assert!(!peer(Some("[2001:db8::1]:5000"), false).may_receive_secrets());
        assert!(!peer(None, false).may_receive_secrets());
    }
}
