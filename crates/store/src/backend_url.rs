//! [`UrlBackendConfig`]: the settings of a proxy backend that is another
//! cache reached by URL (`http_proxy:` and `grpc_proxy:`), bazel-remote's
//! `URLBackendConfig`: a base URL, optionally with `user:password@` for
//! HTTP basic authentication, and PEM files for TLS (`ca_file`) and mTLS
//! (`cert_file` + `key_file`).
//!
//! Parsing and the rules between the keys live here, with bazel-remote's
//! wording, so both backends and the server's config apply the same ones.
//! The password is a [`Secret`]: the URL without credentials is what logs
//! and errors show.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Secret;

/// Which protocol a URL backend speaks; its URL scheme is this or this + `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlProtocol {
    Http,
    Grpc,
}

impl UrlProtocol {
    pub fn scheme(self) -> &'static str {
        match self {
            UrlProtocol::Http => "http",
            UrlProtocol::Grpc => "grpc",
        }
    }
}

/// Basic credentials from the URL's user info (percent-decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl BasicAuth {
    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password.expose());
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        )
    }
}

/// A parsed, validated `http_proxy:` or `grpc_proxy:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlBackendConfig {
    pub protocol: UrlProtocol,
    /// `https://` / `grpcs://`.
    pub tls: bool,
    /// `host:port` (port defaulted from the scheme when absent).
    pub authority: String,
    /// The host alone, for TLS server name checks.
    pub host: String,
    /// The URL's path without trailing `/` (`""` or `/cache`); requests go
    /// to `{path}/ac/{hash}` and `{path}/cas/{hash}`.
    pub path: String,
    pub basic_auth: Option<BasicAuth>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl UrlBackendConfig {
    /// Parses `url` and checks the TLS files against it, with bazel-remote's
    /// rules: the scheme is the protocol or its `s` form; a key needs a
    /// certificate and the other way round; mTLS and a CA need the TLS scheme.
    pub fn parse(
        protocol: UrlProtocol,
        url: &str,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<UrlBackendConfig, String> {
        let p = protocol.scheme();
        // http::Uri takes any scheme and keeps the user info in the
        // authority; its errors never quote the URL (it may hold a password).
        let parsed: http::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
        let (Some(scheme), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
            return Err(format!("not a URL of the form {p}[s]://host:port"));
        };
        let tls = match scheme {
            s if s == p => false,
            s if s == format!("{p}s") => true,
            _ => {
                return Err(format!(
                    "the {p} proxy backend protocol must be either {p} or {p}s, not {scheme:?}"
                ));
            }
        };
        let host = authority.host();
        if host.is_empty() {
            return Err("the URL has no host".to_owned());
        }
        if parsed.query().is_some() {
            return Err("the URL must not have a query".to_owned());
        }
        let path = parsed.path().trim_end_matches('/');
        if protocol == UrlProtocol::Grpc && !path.is_empty() {
            return Err(format!(
                "a gRPC URL names no path (got {path:?}); use grpc[s]://host:port"
            ));
        }
        let default_port = match (protocol, tls) {
            (UrlProtocol::Http, false) => 80,
            (UrlProtocol::Http, true) => 443,
            // gRPC has no registered port; bazel-remote's default gRPC port.
            (UrlProtocol::Grpc, _) => 9092,
        };
        let (user_info, host_port) = match authority.as_str().rsplit_once('@') {
            Some((user_info, host_port)) => (Some(user_info), host_port),
            None => (None, authority.as_str()),
        };
        // Read here: http::Uri reports a port that is no u16 as absent.
        let port = match host_port
            .strip_prefix(host)
            .and_then(|r| r.strip_prefix(':'))
        {
            None | Some("") => default_port,
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| "not a URL (invalid port)".to_owned())?,
        };
        let basic_auth = match user_info {
            None => None,
            Some(user_info) => {
                let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
                Some(BasicAuth {
                    username: percent_decode(user)?,
                    password: Secret::new(percent_decode(password)?),
                })
            }
        };
        if cert_file.is_some() != key_file.is_some() {
            return Err(format!(
                "to use mTLS with the {p} proxy, both a key and a certificate must be provided \
                 ({p}_proxy.cert_file and {p}_proxy.key_file)"
            ));
        }
        if cert_file.is_some() && !tls {
            return Err(format!(
                "when mTLS is enabled, the {p} proxy backend protocol must be {p}s"
            ));
        }
        if ca_file.is_some() && !tls {
            return Err(format!(
                "when {p}_proxy.ca_file is set, the {p} proxy backend protocol must be {p}s"
            ));
        }
        Ok(UrlBackendConfig {
            protocol,
            tls,
            authority: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            path: path.to_owned(),
            basic_auth,
            cert_file,
            key_file,
            ca_file,
        })
    }

    /// The URL without credentials, for logs and `/status`.
    pub fn display_url(&self) -> String {
        let scheme = self.protocol.scheme();
        let s = if self.tls { "s" } else { "" };
        format!("{scheme}{s}://{}{}", self.authority, self.path)
    }

    /// The rustls client configuration: the CA of `ca_file`, else the
    /// operating system's store; the client certificate of `cert_file` and
    /// `key_file` when set. Read once at start: a mistake stops the start.
    /// No ALPN: the connector sets it.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        use hyper_rustls::ConfigBuilderExt;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match &self.ca_file {
            // Never used for http:// URLs: no CA store needed (nor required
            // to be installed).
            _ if !self.tls => builder.with_root_certificates(rustls::RootCertStore::empty()),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca, "ca_file", self.protocol)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", self.key("ca_file", ca)))?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder.with_native_roots().map_err(|e| {
                format!(
                    "loading the system CA certificates: {e} (install ca-certificates, set \
                     SSL_CERT_FILE, or set {}_proxy.ca_file)",
                    self.protocol.scheme()
                )
            })?,
        };
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let certs = read_certs(cert, "cert_file", self.protocol)?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", self.key("key_file", key)))?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|e| format!("{}: {e}", self.key("cert_file", cert)))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(config)
    }

    /// The PEM bytes of the TLS files, for clients that take PEM (tonic).
    /// Read once at start.
    pub fn pem_files(&self) -> Result<PemFiles, String> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("{}: {e}", self.key(name, path)))
        };
        let ca = self
            .ca_file
            .as_deref()
            .map(|p| read("ca_file", p))
            .transpose()?;
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
            _ => None,
        };
        Ok(PemFiles { ca, identity })
    }

    fn key(&self, name: &str, path: &Path) -> String {
        format!("{}_proxy.{name} {}", self.protocol.scheme(), path.display())
    }
}

/// The TLS files' PEM bytes: the CA, and the client certificate with its key.
pub struct PemFiles {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read_certs(
    path: &Path,
    name: &str,
    protocol: UrlProtocol,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = || format!("{}_proxy.{name} {}", protocol.scheme(), path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", what()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", what()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", what()));
    }
    Ok(certs)
}

fn percent_decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the URL's user info is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(protocol: UrlProtocol, url: &str) -> Result<UrlBackendConfig, String> {
        UrlBackendConfig::parse(protocol, url, None, None, None)
    }

    #[test]
    fn urls_split_into_authority_path_and_credentials() {
        let c = parse(
            UrlProtocol::Http,
            "http://u%40x:p%3Aw@cache.local:8080/base/",
        )
        .unwrap();
        assert!(!c.tls);
        assert_eq!(c.authority, "cache.local:8080");
        assert_eq!(c.path, "/base");
        let auth = c.basic_auth.as_ref().unwrap();
        assert_eq!(auth.username, "u@x");
        assert_eq!(auth.password.expose(), "p:w");
        // "u@x:p:w" in base64.
        assert_eq!(auth.header_value(), "Basic dUB4OnA6dw==");
        assert_eq!(c.display_url(), "http://cache.local:8080/base");
        assert!(!format!("{c:?}").contains("p:w"), "{c:?}");

        let c = parse(UrlProtocol::Grpc, "grpcs://[::1]").unwrap();
        assert!(c.tls);
        assert_eq!(c.authority, "[::1]:9092");
        assert_eq!(c.host, "::1");
        assert_eq!(c.path, "");
        assert_eq!(
            parse(UrlProtocol::Http, "https://h").unwrap().authority,
            "h:443"
        );
    }

    #[test]
    fn bad_urls_and_tls_files_say_why() {
        let e = parse(UrlProtocol::Http, "grpc://h:1").unwrap_err();
        assert!(e.contains("must be either http or https"), "{e}");
        let e = parse(UrlProtocol::Grpc, "http://h:1").unwrap_err();
        assert!(e.contains("must be either grpc or grpcs"), "{e}");
        assert!(parse(UrlProtocol::Http, "h:1").is_err());
        assert!(parse(UrlProtocol::Http, "http://h/?q=1").is_err());
        assert!(parse(UrlProtocol::Http, "http://h:70000").is_err());
        assert!(parse(UrlProtocol::Http, "http:///x").is_err());
        let e = parse(UrlProtocol::Grpc, "grpc://h:1/instance").unwrap_err();
        assert!(e.contains("names no path"), "{e}");
        assert!(parse(UrlProtocol::Grpc, "grpc://h:1/").is_ok());
        let f = || Some(PathBuf::from("/f"));
        let e =
            UrlBackendConfig::parse(UrlProtocol::Http, "https://h", f(), None, None).unwrap_err();
        assert!(e.contains("both a key and a certificate"), "{e}");
        let e = UrlBackendConfig::parse(UrlProtocol::Grpc, "grpc://h", f(), f(), None).unwrap_err();
        assert!(e.contains("must be grpcs"), "{e}");
        let e =
            UrlBackendConfig::parse(UrlProtocol::Http, "http://h", None, None, f()).unwrap_err();
        assert!(e.contains("must be https"), "{e}");
        assert!(UrlBackendConfig::parse(UrlProtocol::Http, "https://h", f(), f(), f()).is_ok());
    }
}
