//! TLS for the HTTP and gRPC ports: the server certificate and key from
//! `tls_cert_file` / `tls_key_file`, and with `tls_ca_file` client
//! certificates (mTLS) checked against that CA.
//!
//! The certificate and key are re-read when their files change (cert-manager
//! and Kubernetes renew mounted certificates in place), checked every
//! [`reload::CHECK_INTERVAL`] by a [`reload::Watcher`]; a pair that does not
//! load is reported and the previous one kept.
//!
//! As in bazel-remote, mTLS makes a client certificate mandatory at the
//! handshake, unless `allow_unauthenticated_reads` is on: then the
//! certificate is optional and [`crate::auth`] lets certificate-less clients
//! read but not write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::config::defaults::TLS_HANDSHAKE_TIMEOUT;
use crate::reload;

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

/// The server certificate and key, shared by both ports' acceptors and
/// swapped when the files change.
#[derive(Debug)]
pub(crate) struct ServerCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The certificate and key files, in that order.
    files: reload::Watcher,
}

impl ServerCert {
    /// Loads the pair; errors name the key and file.
    pub(crate) fn load(tls: &TlsConfig) -> Result<Arc<ServerCert>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Watching starts before reading, so a renewal during the read is
        // seen by the next check.
        let files = reload::Watcher::new([&tls.cert_file, &tls.key_file]);
        let key = load_pair(&tls.cert_file, &tls.key_file, &provider)?;
        Ok(Arc::new(ServerCert {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            provider,
            current: RwLock::new(key),
            files,
        }))
    }

    /// Re-reads the pair if either file changed; keeps the old one if the
    /// new one does not load (a renewal caught half-written, a mismatch).
    pub(crate) fn reload_if_changed(&self) {
        if !self.files.changed() {
            return;
        }
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                *bazel_cache_digest::write(&self.current) = key;
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate files changed but cannot be used; keeping the previous certificate");
            }
        }
    }

    /// Checks the files for changes until the last acceptor is dropped.
    pub(crate) fn spawn_reloader(self: &Arc<Self>) {
        reload::spawn_checks(self, reload::CHECK_INTERVAL, ServerCert::reload_if_changed);
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(bazel_cache_digest::read(&self.current).clone())
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
pub(crate) fn acceptor(
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
pub(crate) struct Accepted<S> {
    pub stream: tokio_rustls::server::TlsStream<S>,
    pub client_cert: bool,
}

/// Runs the handshake under [`TLS_HANDSHAKE_TIMEOUT`]: a client that
/// connects and says nothing must not hold a task and a socket forever.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    io: S,
) -> std::io::Result<Accepted<S>> {
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io))
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `openssl` in `dir`; `args` are split at spaces.
    fn openssl(dir: &Path, args: &str) {
        let out = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ca.pem` and, signed by it, `<name>.pem` / `<name>.key` for localhost.
    fn server_pair(dir: &Path, name: &str) -> TlsConfig {
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        if !dir.join("ca.pem").exists() {
            openssl(
                dir,
                &format!("req -x509 {EC} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"),
            );
        }
        std::fs::write(
            dir.join(format!("{name}.cnf")),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &format!("req {EC} -keyout {name}.key -out {name}.csr -subj /CN=localhost"),
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 2 -extfile {name}.cnf"
            ),
        );
        TlsConfig {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}.key")),
            ca_file: None,
            min_version: "1.2".into(),
        }
    }

    /// An acceptor for a fresh `server` pair in `dir` (see [`client_for`]).
    pub(crate) fn test_acceptor(dir: &Path) -> TlsAcceptor {
        let tls = server_pair(dir, "server");
        let cert = ServerCert::load(&tls).unwrap();
        acceptor(&tls, &cert, false, &[b"h2"]).unwrap()
    }

    /// A client trusting `dir`'s CA, and the name to ask for.
    pub(crate) fn client_for(
        dir: &Path,
    ) -> (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ) {
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certs("ca", &dir.join("ca.pem")).unwrap() {
            roots.add(ca).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        (tokio_rustls::TlsConnector::from(Arc::new(config)), name)
    }

    fn served(cert: &ServerCert) -> Vec<u8> {
        cert.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_pair_renamed_into_place_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = server_pair(dir.path(), "first");
        let second = server_pair(dir.path(), "second");
        let cert = ServerCert::load(&first).unwrap();
        let before = served(&cert);
        cert.reload_if_changed();
        assert_eq!(served(&cert), before, "nothing changed, nothing reloaded");

        std::fs::rename(&second.cert_file, &first.cert_file).unwrap();
        std::fs::rename(&second.key_file, &first.key_file).unwrap();
        cert.reload_if_changed();
        let renewed = served(&cert);
        assert_ne!(renewed, before, "the renamed pair was not picked up");

        std::fs::write(&first.key_file, "not a key").unwrap();
        cert.reload_if_changed();
        assert_eq!(served(&cert), renewed, "a broken key replaced the pair");
    }
}
