//! Client-side TLS for `https://` and `grpcs://` targets: the server is
//! checked against `--cacert` (else the system's CA store, as Bazel does),
//! and `--cert`/`--key` present a client certificate (mTLS). The files are
//! read and parsed before any connection, so a wrong file is reported by
//! name rather than as a failed handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_rustls::ConfigBuilderExt as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::BenchError;

/// The TLS files given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// CA certificates (PEM) that replace the system's store.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) and its key (PEM), both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The files' contents, checked to parse.
pub struct Loaded {
    ca: Option<(Vec<u8>, Vec<CertificateDer<'static>>)>,
    client: Option<ClientIdentity>,
}

struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsFiles {
    pub(crate) fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    pub(crate) fn load(&self) -> Result<Loaded, BenchError> {
        let ca = match &self.ca {
            None => None,
            Some(path) => {
                let pem = read("--cacert", path)?;
                Some((pem.clone(), certs("--cacert", path, &pem)?))
            }
        };
        let client = match &self.client {
            None => None,
            Some((cert, key)) => {
                let cert_pem = read("--cert", cert)?;
                let key_pem = read("--key", key)?;
                let chain = certs("--cert", cert, &cert_pem)?;
                let parsed = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| file_error("--key", key, format!("no usable private key: {e}")))?;
                Some(ClientIdentity {
                    cert_pem,
                    key_pem,
                    chain,
                    key: parsed,
                })
            }
        };
        Ok(Loaded { ca, client })
    }
}

impl Loaded {
    /// A rustls configuration for the HTTP client (whose connector sets
    /// ALPN itself).
    pub fn rustls(&self) -> Result<rustls::ClientConfig, BenchError> {
        let config_error = |e: &dyn std::fmt::Display| BenchError::Usage {
            flag: "TLS",
            message: e.to_string(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(&e))?;
        let builder = match &self.ca {
            Some((_, certs)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots.add(cert.clone()).map_err(|e| config_error(&e))?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder.with_native_roots().map_err(|e| BenchError::Usage {
                flag: "--cacert",
                message: format!("not given, and the system CA store is unusable: {e}"),
            })?,
        };
        let config = match &self.client {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| BenchError::Usage {
                    flag: "--cert/--key",
                    message: e.to_string(),
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(config)
    }

    /// The same settings for tonic's channel.
    pub fn tonic(&self, server_name: &str) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new().domain_name(server_name);
        config = match &self.ca {
            Some((pem, _)) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some(id) = &self.client {
            config = config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        config
    }
}

/// A configuration for a connector that only ever makes plain
/// connections: no roots, so it could not complete a handshake.
pub(crate) fn unused() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, BenchError> {
    std::fs::read(path).map_err(|e| file_error(flag, path, e.to_string()))
}

fn certs(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, BenchError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no certificate in it".to_owned()));
    }
    Ok(certs)
}

fn file_error(flag: &'static str, path: &Path, message: String) -> BenchError {
    BenchError::TlsFile {
        flag,
        path: path.display().to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let files = TlsFiles {
            ca: Some(empty.clone()),
            client: None,
        };
        let err = files.load().err().unwrap().to_string();
        assert!(
            err.starts_with("--cacert ") && err.contains("no certificate"),
            "{err}"
        );
        let files = TlsFiles {
            ca: Some(dir.path().join("missing.pem")),
            client: None,
        };
        let err = files.load().err().unwrap().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
