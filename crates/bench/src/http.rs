//! The HTTP client: bazel-remote's protocol (`PUT`/`GET`/`HEAD`
//! `<prefix>/cas/<sha256>`, `GET`/`PUT` `<prefix>/ac/<sha256>`, zstd bodies
//! with `Content-Encoding`/`Accept-Encoding: zstd` and `X-Digest-SizeBytes`),
//! as Bazel's `--remote_cache=http://` speaks it: HTTP/1.1 with keep-alive,
//! one connection per request in flight, basic auth from the URL. Any server of that protocol works, including a plain
//! file server for GET (which is how nginx is measured for comparison).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, HeaderValue};
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
use crate::zstd_read::Verifier;
use bazel_cache_digest::{DigestFunction, Hash, Hasher};

type Body = BoxBody<Bytes, Infallible>;

/// Request bodies are sent in frames of at most this many bytes.
const FRAME: usize = 256 << 10;
/// bazel-remote's header for the size of the blob a zstd body decodes to.
const X_DIGEST_SIZE: &str = "x-digest-sizebytes";

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

    /// A request for `<base>/[blake3/]<kind>/<hash>` with the URL's
    /// credentials: SHA-256 at bazel-remote's paths, BLAKE3 under a
    /// `blake3/` segment (spelled as REAPI resource names spell it).
    fn request(
        &self,
        method: Method,
        function: DigestFunction,
        kind: &str,
        hash: &str,
    ) -> http::request::Builder {
        let mut req = Request::builder().method(method).uri(format!(
            "{}/{}{kind}/{hash}",
            self.base,
            function.resource_segment()
        ));
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req
    }

    /// Sends `req` and reads the answer's body, expecting a 2xx status.
    async fn exchange(&self, req: Request<Body>, what: &str) -> Result<(), OpError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(what, &e))?;
        let status = resp.status();
        // Drain the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if !status.is_success() {
            return Err(OpError::Http {
                status: status.as_u16(),
                context: what.to_owned(),
            });
        }
        Ok(())
    }

    /// Uploads blob `id`; returns the bytes sent. The body is streamed in
    /// slices of the class's shared content, never assembled.
    pub async fn put(&self, class: &Arc<SizeClass>, id: BlobId) -> Result<u64, OpError> {
        self.put_as(class, id, false).await
    }

    /// Uploads blob `id`, as a zstd stream if `zstd` (`Content-Encoding:
    /// zstd`, the blob's size in bazel-remote's `X-Digest-SizeBytes`);
    /// returns the blob's size.
    pub(crate) async fn put_as(
        &self,
        class: &Arc<SizeClass>,
        id: BlobId,
        zstd: bool,
    ) -> Result<u64, OpError> {
        let hash = class.hash(id);
        let size = class.size();
        let (len, pieces) = if zstd {
            let len = class.zstd_len();
            (len, class.zstd_pieces(id, 0..len, FRAME))
        } else {
            (size, class.pieces(id, 0..size, FRAME))
        };
        let body: Body = if len as usize <= FRAME {
            Full::new(pieces.collect::<Vec<Bytes>>().concat().into()).boxed()
        } else {
            let frames = pieces.map(|b| Ok::<_, Infallible>(Frame::data(b)));
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        };
        let mut req = self
            .request(Method::PUT, hash.function(), "cas", &hash.to_hex())
            .header(CONTENT_LENGTH, len);
        if zstd {
            req = req
                .header(CONTENT_ENCODING, "zstd")
                .header(X_DIGEST_SIZE, size);
        }
        let req = req.body(body).expect("method, URI and headers are valid");
        let what = format!("PUT{} {}", if zstd { " zstd" } else { "" }, short(&hash));
        self.exchange(req, &what).await?;
        Ok(size)
    }

    /// Downloads blob `id` and checks its length and hash as the bytes
    /// arrive; returns the bytes read.
    pub async fn get(&self, class: &Arc<SizeClass>, id: BlobId) -> Result<u64, OpError> {
        self.get_as(class, id, false).await
    }

    /// Downloads blob `id`, accepting zstd if `zstd`, and checks what it
    /// decodes to (a server may answer uncompressed: that is checked as is).
    pub(crate) async fn get_as(
        &self,
        class: &Arc<SizeClass>,
        id: BlobId,
        zstd: bool,
    ) -> Result<u64, OpError> {
        let hash = class.hash(id);
        let what = format!("GET{} {}", if zstd { " zstd" } else { "" }, short(&hash));
        let mut req = self.request(Method::GET, hash.function(), "cas", &hash.to_hex());
        if zstd {
            req = req.header(ACCEPT_ENCODING, "zstd");
        }
        let req = req
            .body(Empty::new().boxed())
            .expect("method, URI and headers are valid");
        let hasher = self.download(req, hash.function(), &what).await?;
        check(&what, class.size(), hash, hasher)
    }

    /// Sends a GET and decodes its body (`Content-Encoding: zstd` or none)
    /// into a hasher of `function` as it arrives.
    async fn download(
        &self,
        req: Request<Body>,
        function: DigestFunction,
        what: &str,
    ) -> Result<Hasher, OpError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(what, &e))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            return Err(OpError::Http {
                status,
                context: what.to_owned(),
            });
        }
        let zstd = resp
            .headers()
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
        let mut verifier =
            Verifier::new(zstd, function).map_err(|e| OpError::undecodable(what, e))?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| transport(&format!("{what} (body)"), &e))?;
            if let Ok(data) = frame.into_data() {
                verifier
                    .update(&data)
                    .map_err(|e| OpError::undecodable(what, e))?;
            }
        }
        verifier.finish().map_err(|e| OpError::undecodable(what, e))
    }

    /// Stores an ActionResult (`PUT /[blake3/]ac/<action hash>`, the
    /// action hash being of `function`); returns its length.
    pub(crate) async fn ac_put(
        &self,
        function: DigestFunction,
        action: &str,
        encoded: Vec<u8>,
    ) -> Result<u64, OpError> {
        let len = encoded.len() as u64;
        let req = self
            .request(Method::PUT, function, "ac", action)
            .header(CONTENT_LENGTH, len)
            .body(Full::new(Bytes::from(encoded)).boxed())
            .expect("method, URI and headers are valid");
        self.exchange(req, &format!("PUT /ac/{}", &action[..16]))
            .await?;
        Ok(len)
    }

    /// Fetches an ActionResult and checks it is the one `expected` names
    /// (its hash and length); the action hash is of `expected`'s function.
    /// Returns its length.
    pub(crate) async fn ac_get(
        &self,
        action: &str,
        len: u64,
        expected: Hash,
    ) -> Result<u64, OpError> {
        let what = format!("GET /ac/{}", &action[..16]);
        let function = expected.function();
        let req = self
            .request(Method::GET, function, "ac", action)
            .body(Empty::new().boxed())
            .expect("method, URI and headers are valid");
        let hasher = self.download(req, function, &what).await?;
        check(&what, len, expected, hasher)
    }

    /// Whether the server has blob `id` (`HEAD`: 200 yes, 404 no).
    pub(crate) async fn head(&self, class: &Arc<SizeClass>, id: BlobId) -> Result<bool, OpError> {
        let hash = class.hash(id);
        let what = || format!("HEAD {}", short(&hash));
        let req = self
            .request(Method::HEAD, hash.function(), "cas", &hash.to_hex())
            .body(Empty::new().boxed())
            .expect("method, URI and headers are valid");
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

    /// GETs the client's base URL itself (a page such as `/metrics`), at
    /// most `limit` bytes of it.
    pub(crate) async fn page(&self, limit: usize) -> Result<String, String> {
        let mut req = Request::builder().uri(&self.base);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Empty::new().boxed())
            .map_err(|e| format!("{}: {e}", self.base))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{}: {}", self.base, chain(&e)))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", self.base))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("{}: HTTP {}", self.base, status.as_u16()));
        }
        String::from_utf8(body.to_vec()).map_err(|_| format!("{}: not UTF-8 text", self.base))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_hashed_with_another_function_is_corrupt() {
        let data = vec![7u8; 5000];
        let blake3 = Hash::of_with(DigestFunction::Blake3, &data);
        let hashed = |function| {
            let mut h = Hasher::new(function);
            h.update(&data);
            h
        };
        assert_eq!(
            check("GET", 5000, blake3, hashed(DigestFunction::Blake3)).unwrap(),
            5000
        );
        for (name, hasher) in [
            (blake3, hashed(DigestFunction::Sha256)),
            (Hash::of(&data), hashed(DigestFunction::Blake3)),
        ] {
            let err = check("GET", 5000, name, hasher).unwrap_err();
            assert!(matches!(err, OpError::Corrupt { .. }), "{err}");
        }
    }
}
