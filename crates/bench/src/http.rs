//! The HTTP client: bazel-remote's protocol (`PUT`/`GET`/`HEAD`
//! `<prefix>/cas/<sha256>`), as Bazel's `--remote_cache=http://` speaks it:
//! HTTP/1.1 with keep-alive, one connection per request in flight, basic
//! auth from the URL. Any server of that protocol works, including a plain
//! file server for GET (which is how nginx is measured for comparison).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::blobs::{BlobId, SizeClass};
use crate::error::{BenchError, OpError, chain};
use crate::target::Target;
use crate::tls::Loaded;
use bazel_cache_digest::{Hash, Hasher};

type Body = BoxBody<Bytes, Infallible>;

/// Request bodies are sent in frames of at most this many bytes.
const FRAME: usize = 256 << 10;

pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// `scheme://host:port/prefix`.
    base: String,
    auth: Option<HeaderValue>,
}

impl HttpClient {
    /// A client for `target`; `instance` (if not empty) is appended to the
    /// URL's path, as bazel-remote reads instance names from HTTP paths.
    pub fn new(
        target: &Target,
        tls: Option<&Loaded>,
        instance: &str,
        connections: usize,
    ) -> Result<HttpClient, BenchError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // A plain-http target never uses the TLS half of the connector.
        let tls_config = match tls {
            Some(tls) => tls.rustls()?,
            None => crate::tls::unused(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        let scheme = if target.tls { "https" } else { "http" };
        let mut base = format!("{scheme}://{}{}", target.authority(), target.path);
        for segment in instance.split('/').filter(|s| !s.is_empty()) {
            base.push('/');
            base.push_str(segment);
        }
        let auth = match target.basic_auth() {
            None => None,
            Some(v) => Some(HeaderValue::from_str(&v).map_err(|_| BenchError::Url {
                url: target.redacted(),
                message: "the user or password cannot be sent in an HTTP header".to_owned(),
            })?),
        };
        Ok(HttpClient { client, base, auth })
    }

    fn request(&self, method: Method, hash: &Hash, body: Body, len: Option<u64>) -> Request<Body> {
        let mut req =
            Request::builder()
                .method(method)
                .uri(format!("{}/cas/{}", self.base, hash.to_hex()));
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(len) = len {
            req = req.header(CONTENT_LENGTH, len);
        }
        req.body(body).expect("method, URI and headers are valid")
    }

    /// Uploads blob `id`; returns the bytes sent. The body is streamed in
    /// slices of the class's shared content, never assembled.
    pub async fn put(&self, class: &Arc<SizeClass>, id: BlobId) -> Result<u64, OpError> {
        let hash = class.hash(id);
        let size = class.size();
        let body: Body = if size as usize <= FRAME {
            Full::new(Bytes::from(class.copy(id, 0..size))).boxed()
        } else {
            let frames = class
                .pieces(id, 0..size, FRAME)
                .map(|b| Ok::<_, Infallible>(Frame::data(b)));
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        };
        let req = self.request(Method::PUT, &hash, body, Some(size));
        let what = || format!("PUT {}", short(&hash));
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(&what(), &e))?;
        let status = resp.status();
        // Drain the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if !status.is_success() {
            return Err(OpError::Http {
                status: status.as_u16(),
                context: what(),
            });
        }
        Ok(size)
    }

    /// Downloads blob `id` and checks its length and SHA-256 as the bytes
    /// arrive; returns the bytes read.
    pub async fn get(&self, class: &Arc<SizeClass>, id: BlobId) -> Result<u64, OpError> {
        let hash = class.hash(id);
        let what = || format!("GET {}", short(&hash));
        let req = self.request(Method::GET, &hash, Empty::new().boxed(), None);
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(&what(), &e))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            return Err(OpError::Http {
                status,
                context: what(),
            });
        }
        let mut body = resp.into_body();
        let mut hasher = Hasher::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| transport(&format!("{} (body)", what()), &e))?;
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
            }
        }
        check(&what(), class.size(), hash, hasher)
    }

    /// Whether the server has blob `id` (`HEAD`: 200 yes, 404 no).
    pub(crate) async fn head(&self, class: &Arc<SizeClass>, id: BlobId) -> Result<bool, OpError> {
        let hash = class.hash(id);
        let what = || format!("HEAD {}", short(&hash));
        let req = self.request(Method::HEAD, &hash, Empty::new().boxed(), None);
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(&what(), &e))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(OpError::Http {
                status: other.as_u16(),
                context: what(),
            }),
        }
    }
}

/// Compares what was read with what blob should be.
pub(crate) fn check(what: &str, size: u64, hash: Hash, hasher: Hasher) -> Result<u64, OpError> {
    let got = hasher.len();
    if got != size {
        return Err(OpError::WrongSize {
            what: what.to_owned(),
            expected: size,
            got,
        });
    }
    if hasher.finish() != hash {
        return Err(OpError::Corrupt {
            what: what.to_owned(),
        });
    }
    Ok(got)
}

/// The first 16 hex digits, enough to find a blob in a log.
pub(crate) fn short(hash: &Hash) -> String {
    let mut s = hash.to_hex();
    s.truncate(16);
    s
}

/// A failed exchange, named by what was being done.
fn transport(what: &str, e: &dyn std::error::Error) -> OpError {
    OpError::Transport(format!("{what}: {}", chain(e)))
}
