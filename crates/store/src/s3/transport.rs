//! The one place that builds the client's hyper connection pool: TCP
//! connector, TLS, HTTP/1 and pool settings.
//!
//! TLS is rustls (ring provider) with the **operating system's** CA store
//! (`rustls-native-certs`), not a compiled-in Mozilla list: the image ships
//! `ca-certificates`, and on-premises MinIO/Ceph endpoints are commonly
//! signed by a private CA that operators add to the system store (or point
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` at). With `disable_ssl` no CA store is
//! loaded at all.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::ReqBody;
use super::client::S3ClientOptions;
use super::error::S3Error;

/// The pooled HTTP(S) client every request goes through.
pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

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
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_conns)
        .pool_idle_timeout(opts.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}
