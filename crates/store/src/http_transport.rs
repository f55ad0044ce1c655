//! The one place that builds a hyper client connection pool: TCP connector
//! (connect timeout, no Nagle, keep-alive), TLS over a given rustls
//! configuration, HTTP/1, pool limits. Every backend that speaks HTTP (S3,
//! `http_proxy`) gets its pool here; each decides its own TLS roots.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A pooled HTTP(S) client sending bodies of type `B`.
pub(crate) type PooledClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// How the pool connects and how many idle connections it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

/// The pool for http:// and https:// URLs; `tls` applies to the latter.
pub(crate) fn pooled_client<B>(tls: rustls::ClientConfig, opts: PoolOptions) -> PooledClient<B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    pooled_client_with_resolver(tls, opts, GaiResolver::new())
}

/// [`pooled_client`] with its own name resolver: the Remote Asset
/// downloader checks every address a name resolves to before connecting.
pub(crate) fn pooled_client_with_resolver<B, R>(
    tls: rustls::ClientConfig,
    opts: PoolOptions,
    resolver: R,
) -> Client<HttpsConnector<HttpConnector<R>>, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
    R: tower::Service<Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R::Future: Send,
{
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.max_idle_per_host)
        .pool_idle_timeout(opts.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}
