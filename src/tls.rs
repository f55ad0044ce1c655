//! TLS for the HTTP and gRPC ports: the server certificate and key from
//! `tls_cert_file` / `tls_key_file`, and with `tls_ca_file` client
//! certificates (mTLS) checked against that CA.
//!
//! The certificate and key are re-read when their files change (cert-manager
//! and Kubernetes renew mounted certificates in place), checked every 10 s;
//! a pair that does not load is reported and the previous one kept.
//!
//! As in bazel-remote, mTLS makes a client certificate mandatory at the
//! handshake, unless `allow_unauthenticated_reads` is on: then the
//! certificate is optional and [`crate::auth`] lets certificate-less clients
//! read but not write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// How long a client may take to complete the handshake; a client that
/// connects and says nothing must not hold a task and a socket forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("tls: {0}")]
    Config(String),
}

/// How often the certificate files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The server certificate and key, shared by both ports' acceptors and
/// swapped when the files change.
#[derive(Debug)]
pub struct ServerCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

/// Modification times and lengths of both files.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(paths: [&Path; 2]) -> Stamp {
    paths.map(|p| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    })
}

impl ServerCert {
    /// Loads the pair; errors name the key and file.
    pub fn load(tls: &TlsConfig) -> Result<Arc<ServerCert>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let before = stamp([&tls.cert_file, &tls.key_file]);
        let key = load_pair(&tls.cert_file, &tls.key_file, &provider)?;
        Ok(Arc::new(ServerCert {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            provider,
            current: RwLock::new((key, before)),
        }))
    }

    /// Re-reads the pair if either file changed; keeps the old one if the
    /// new one does not load (a renewal caught half-written, a mismatch).
    pub fn reload_if_changed(&self) {
        let now = stamp([&self.cert_file, &self.key_file]);
        if self.current.read().unwrap_or_else(|e| e.into_inner()).1 == now {
            return;
        }
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (key, now);
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate files changed but cannot be used; keeping the previous certificate");
                self.current.write().unwrap_or_else(|e| e.into_inner()).1 = now;
            }
        }
    }

    /// Checks the files for changes until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let Some(cert) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || cert.reload_if_changed()).await;
            }
        });
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs("tls_cert_file", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::File {
        key: "tls_key_file",
        path: key_file.display().to_string(),
        reason: format!("no usable private key: {e}"),
    })?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| TlsError::File {
            key: "tls_key_file",
            path: key_file.display().to_string(),
            reason: format!("does not match tls_cert_file: {e}"),
        })
}

/// An acceptor for one port, serving `cert`; `alpn` names the protocols.
pub fn acceptor(
    tls: &TlsConfig,
    cert: &Arc<ServerCert>,
    allow_unauthenticated_reads: bool,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, TlsError> {
    let provider = cert.provider.clone();
    // rustls speaks TLS 1.2 and 1.3 only; bazel-remote's "1.0"/"1.1"
    // minimums therefore mean 1.2 here.
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.as_str() {
        "1.3" => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &tls.ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_certs("tls_ca_file", ca_file)? {
                roots.add(ca).map_err(|e| TlsError::File {
                    key: "tls_ca_file",
                    path: ca_file.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if allow_unauthenticated_reads {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Config(format!("tls_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// A connection after the handshake, and whether the client presented a
/// certificate that the CA verified (rustls only keeps verified ones).
pub struct Accepted<S> {
    pub stream: tokio_rustls::server::TlsStream<S>,
    pub client_cert: bool,
}

/// Runs the handshake under [`HANDSHAKE_TIMEOUT`].
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    io: S,
) -> std::io::Result<Accepted<S>> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    Ok(Accepted {
        stream,
        client_cert,
    })
}
