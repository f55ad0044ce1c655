//! The S3 client's connection pool: its TLS roots, over the shared pool of
//! `http_transport.rs` (connector, HTTP/1, pool settings).
//!
//! TLS is rustls (ring provider) with the **operating system's** CA store
//! (`rustls-native-certs`), not a compiled-in Mozilla list: the image ships
//! `ca-certificates`, and on-premises MinIO/Ceph endpoints are commonly
//! signed by a private CA that operators add to the system store (or point
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` at). With `disable_ssl` no CA store is
//! loaded at all.

use std::sync::Arc;

use hyper_rustls::ConfigBuilderExt;

use super::body::ReqBody;
use super::client::S3ClientOptions;
use super::error::S3Error;
use crate::http_transport::{PoolOptions, PooledClient, pooled_client};

/// The pooled HTTP(S) client every request goes through.
pub(super) type HttpClient = PooledClient<ReqBody>;

/// The connection pool for an endpoint reached over http (`disable_ssl`)
/// or https, keeping at most `max_idle_conns` idle connections.
pub(super) fn http_client(
    disable_ssl: bool,
    max_idle_conns: usize,
    opts: &S3ClientOptions,
) -> Result<HttpClient, S3Error> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| S3Error::Config(format!("TLS setup: {e}")))?;
    let tls = if disable_ssl {
        // Never used for http:// URLs; no CA store needed.
        tls.with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    } else {
        tls.with_native_roots()
            .map_err(|e| {
                S3Error::Config(format!(
                    "loading the system CA certificates for https to s3_proxy.endpoint: {e} \
                     (install ca-certificates, set SSL_CERT_FILE, or set s3_proxy.disable_ssl)"
                ))
            })?
            .with_no_client_auth()
    };
    Ok(pooled_client(
        tls,
        PoolOptions {
            connect_timeout: opts.connect_timeout,
            idle_timeout: opts.pool_idle_timeout,
            max_idle_per_host: max_idle_conns,
        },
    ))
}
