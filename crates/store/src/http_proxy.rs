//! The `http_proxy` backend: another HTTP cache (an old bazel-remote, or
//! another bazel-cache) spoken to in bazel-remote's HTTP cache protocol:
//! `HEAD`/`GET`/`PUT {url}/ac/{hash}` and `{url}/cas/{hash}`.
//!
//! Bodies are identity bytes both ways: every HTTP cache serves and takes
//! them (zstd over HTTP came with bazel-remote 2), and the proxy verifies
//! what comes back through the local store's write path, so a wrong answer
//! is never stored or served. A blob stored zstd-compressed locally is
//! decoded while it is sent.
//!
//! bazel-remote's own `http_proxy` in zstd storage mode asks for
//! `{url}/cas.v2/{hash}`, a layout only a plain file server holding its
//! `cas.v2` files answers (bazel-remote's HTTP server does not); this
//! backend always uses `/cas/`, so it works against a real cache whatever
//! the storage mode.
//!
//! BLAKE3 entries go to `{url}/blake3/ac/{hash}` and `{url}/blake3/cas/{hash}`,
//! the paths this server's own HTTP front end takes them on (bazel-remote has
//! no BLAKE3 and answers those with an error, which the queue reports).
//!
//! `touch` does nothing: the HTTP protocol has no way to refresh an entry
//! without reading it, and the other cache keeps its own LRU order.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Kind};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::backend_url::UrlBackendConfig;
use crate::http_transport::{PoolOptions, PooledClient, pooled_client};
use crate::progress::ProgressGuard;
use crate::proxy::{Backend, BackendError, Download, Presence, Upload};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Upload bodies stream from a file (and a decoder): `Send`, not `Sync`.
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// Longest wait for a response head (HEAD, GET, and a PUT once its body is
/// sent), and for the next bytes of a download.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A PUT may take this long per MiB on top of [`REQUEST_TIMEOUT`].
const PUT_TIME_PER_MIB: Duration = Duration::from_secs(1);
/// Upload bodies are read from the local file in chunks of this size.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Idle connections kept to the other cache.
const MAX_IDLE_CONNS: usize = 64;

pub struct HttpBackend {
    client: PooledClient<ReqBody>,
    /// `{scheme}://{authority}{path}`, without credentials.
    base: String,
    authorization: Option<HeaderValue>,
}

/// What went wrong talking to the other cache.
#[derive(Debug, thiserror::Error)]
enum HttpProxyError {
    #[error("{method} {url}: {status}{}", if .text.is_empty() { String::new() } else { format!(": {}", .text) })]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        text: String,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("{method} {url}: no answer within {0:?}", .timeout)]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
}

impl From<HttpProxyError> for BackendError {
    fn from(e: HttpProxyError) -> Self {
        let (retryable, code) = match &e {
            HttpProxyError::Status { status, .. } => (
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS,
                Some(format!("http {}", status.as_u16())),
            ),
            _ => (true, None),
        };
        BackendError {
            retryable,
            code,
            source: Box::new(e),
        }
    }
}

impl HttpBackend {
    /// A client for `cfg`; reads its TLS files now, so a mistake stops the
    /// start. Never connects here: the other cache may come up later.
    pub fn new(cfg: &UrlBackendConfig) -> Result<HttpBackend, String> {
        let tls = cfg.rustls_config()?;
        let client = pooled_client(
            tls,
            PoolOptions {
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(15),
                max_idle_per_host: MAX_IDLE_CONNS,
            },
        );
        let authorization = cfg
            .basic_auth
            .as_ref()
            .map(|a| {
                let mut v = HeaderValue::from_str(&a.header_value())
                    .map_err(|_| "http_proxy.url: the user info cannot be sent in a header")?;
                v.set_sensitive(true);
                Ok::<_, String>(v)
            })
            .transpose()?;
        Ok(HttpBackend {
            client,
            base: cfg.display_url(),
            authorization,
        })
    }

    fn url(&self, key: &BlobKey) -> String {
        format!(
            "{}/{}{}/{}",
            self.base,
            key.hash.function().resource_segment(),
            key.kind.as_str(),
            key.hash
        )
    }

    /// Sends one request; the response head within `timeout`.
    async fn send(
        &self,
        method: Method,
        key: &BlobKey,
        body: ReqBody,
        content_length: Option<u64>,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpProxyError> {
        let url = self.url(key);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        if let Some(len) = content_length {
            req = req
                .header(header::CONTENT_LENGTH, len)
                .header(header::CONTENT_TYPE, "application/octet-stream");
        }
        let req = req.body(body).map_err(|e| HttpProxyError::Transport {
            method: method.clone(),
            url: url.clone(),
            source: Box::new(e),
        })?;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(HttpProxyError::Timeout {
                method,
                url,
                timeout,
            }),
            Ok(Err(e)) => Err(HttpProxyError::Transport {
                method,
                url,
                source: Box::new(e),
            }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// The error for an unexpected status, with up to 1 KiB of its body.
    async fn status_error(
        method: Method,
        url: String,
        resp: http::Response<hyper::body::Incoming>,
    ) -> HttpProxyError {
        let status = resp.status();
        let body = resp.into_body().into_data_stream();
        let mut text = Vec::new();
        let read = async {
            let mut body = std::pin::pin!(body);
            while let Some(Ok(chunk)) = body.next().await {
                text.extend_from_slice(&chunk[..chunk.len().min(1024 - text.len())]);
                if text.len() >= 1024 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
        let text = String::from_utf8_lossy(&text)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .trim()
            .to_owned();
        HttpProxyError::Status {
            method,
            url,
            status,
            text,
        }
    }
}

fn empty_body() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn content_length(resp: &http::Response<hyper::body::Incoming>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The identity bytes of a local blob as a request body.
fn upload_body(upload: Upload) -> ReqBody {
    let reader = upload.into_identity_reader();
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, UPLOAD_CHUNK)
        .map_ok(Frame::data)
        .map_err(|e: io::Error| -> BoxError { Box::new(e) });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

#[async_trait]
impl Backend for HttpBackend {
    fn name(&self) -> &'static str {
        "http"
    }

    fn locate(&self, key: &BlobKey) -> String {
        self.url(key)
    }

    async fn head(&self, key: &BlobKey) -> Result<Presence, BackendError> {
        let resp = self
            .send(Method::HEAD, key, empty_body(), None, REQUEST_TIMEOUT)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(Presence::Present {
                size: content_length(&resp),
            }),
            StatusCode::NOT_FOUND => Ok(Presence::Absent),
            _ => Err(Self::status_error(Method::HEAD, self.url(key), resp)
                .await
                .into()),
        }
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Download>, BackendError> {
        let resp = self
            .send(Method::GET, key, empty_body(), None, REQUEST_TIMEOUT)
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => {
                return Err(Self::status_error(Method::GET, self.url(key), resp)
                    .await
                    .into());
            }
        }
        // A compressed answer we did not ask for would not hash right; say
        // so instead of failing verification.
        if let Some(enc) = resp.headers().get(header::CONTENT_ENCODING)
            && enc.as_bytes() != b"identity"
        {
            return Err(BackendError {
                retryable: false,
                code: Some("http content-encoding".into()),
                source: format!(
                    "GET {}: answered with Content-Encoding {enc:?}, which was not asked for",
                    self.url(key)
                )
                .into(),
            });
        }
        let len = content_length(&resp);
        let stream = resp
            .into_body()
            .into_data_stream()
            .map_err(io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        Ok(Some(Download {
            size: len,
            stored_len: len,
            body: Box::pin(ProgressGuard::new(
                reader,
                REQUEST_TIMEOUT,
                "http_proxy GET",
            )),
        }))
    }

    /// Like bazel-remote: a HEAD first, so a CAS blob the other cache holds
    /// is not sent again. ActionResults are small and a key's entry may
    /// change: always sent.
    async fn put(&self, key: &BlobKey, blob: Upload) -> Result<(), BackendError> {
        if key.kind == Kind::Cas
            && let Ok(Presence::Present { size }) = self.head(key).await
            && size.is_none_or(|s| s == blob.size)
        {
            return Ok(());
        }
        let size = blob.size;
        let mib = u32::try_from(size >> 20).unwrap_or(u32::MAX);
        let timeout = REQUEST_TIMEOUT.saturating_add(PUT_TIME_PER_MIB.saturating_mul(mib));
        let resp = self
            .send(Method::PUT, key, upload_body(blob), Some(size), timeout)
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::status_error(Method::PUT, self.url(key), resp)
                .await
                .into())
        }
    }

    async fn touch(&self, _key: &BlobKey) -> Result<(), BackendError> {
        Ok(())
    }
}
