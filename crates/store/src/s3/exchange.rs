//! The one request/response path every S3 operation goes through:
//! [`S3Client::exchange`]. An operation describes its request as a [`Call`]
//! (operation, key, query, headers, body), says which statuses it handles,
//! and turns the accepted [`Answer`] into its result; everything else —
//! key checks, building and signing, sending, timeouts, error
//! classification and wording, and the request metrics — happens here,
//! once.
//!
//! # Timeouts
//!
//! - TCP connect: [`S3ClientOptions::connect_timeout`] (5 s; `transport.rs`).
//! - Response head of every request: [`S3ClientOptions::request_timeout`]
//!   (30 s). For uploads the clock restarts whenever the upload body makes
//!   progress, so a large upload is never cut off for being large — only for
//!   stalling, or for the server not answering within the timeout after the
//!   last byte.
//! - Bodies (GET streams, XML answers): [`S3ClientOptions::stall_timeout`]
//!   (30 s) without a single byte ends the read with `io::ErrorKind::TimedOut`.
//!
//! [`S3ClientOptions::connect_timeout`]: super::client::S3ClientOptions::connect_timeout
//! [`S3ClientOptions::request_timeout`]: super::client::S3ClientOptions::request_timeout
//! [`S3ClientOptions::stall_timeout`]: super::client::S3ClientOptions::stall_timeout

use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::body::{
    BodyError, FileBody, FileReadError, Progress, ReqBody, empty_body, read_bounded,
};
use super::client::S3Client;
use super::error::S3Error;
use super::signing::Payload;
use super::stats::{Found, Outcome};
use super::xml::{parse_error_body, xml_root};
use bazel_cache_digest::error_chain;

/// Error and XML answers are read up to this many bytes.
const XML_BODY_LIMIT: usize = 64 * 1024;

/// The S3 operations, for the request method and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Head,
    Get,
    Put,
    Copy,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
}

impl Op {
    pub(super) const ALL: [Op; 8] = [
        Op::Head,
        Op::Get,
        Op::Put,
        Op::Copy,
        Op::CreateMultipart,
        Op::UploadPart,
        Op::CompleteMultipart,
        Op::AbortMultipart,
    ];

    /// The `operation` label of `bazel_remote_s3_request_duration_seconds`.
    pub(super) fn metric_label(self) -> &'static str {
        match self {
            Op::Head => "head",
            Op::Get => "get",
            Op::Put => "put",
            Op::Copy => "copy",
            Op::CreateMultipart => "create_multipart",
            Op::UploadPart => "upload_part",
            Op::CompleteMultipart => "complete_multipart",
            Op::AbortMultipart => "abort_multipart",
        }
    }

    fn method(self) -> Method {
        match self {
            Op::Head => Method::HEAD,
            Op::Get => Method::GET,
            Op::Put | Op::Copy | Op::UploadPart => Method::PUT,
            Op::CreateMultipart | Op::CompleteMultipart => Method::POST,
            Op::AbortMultipart => Method::DELETE,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::Head => "HEAD",
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Copy => "PUT (CopyObject)",
            Op::CreateMultipart => "POST (CreateMultipartUpload)",
            Op::UploadPart => "PUT (UploadPart)",
            Op::CompleteMultipart => "POST (CompleteMultipartUpload)",
            Op::AbortMultipart => "DELETE (AbortMultipartUpload)",
        }
    }
}

/// One request of an operation, as [`S3Client::exchange`] sends it.
pub(super) struct Call<'a> {
    op: Op,
    key: &'a str,
    /// Already encoded; empty for none.
    query: String,
    headers: HeaderMap,
    body: ReqBody,
    payload: Payload<'a>,
    /// Upload progress of `body`, which restarts the request timeout.
    progress: Option<Arc<Progress>>,
    /// The statuses the operation handles; any other is an error.
    accept: &'static [StatusCode],
}

impl<'a> Call<'a> {
    /// A bodiless `op` request for `key`, expecting 200 OK.
    pub(super) fn new(op: Op, key: &'a str) -> Self {
        Call {
            op,
            key,
            query: String::new(),
            headers: HeaderMap::new(),
            body: empty_body(),
            payload: Payload::Bytes(&[]),
            progress: None,
            accept: &[StatusCode::OK],
        }
    }

    /// Adds `?query` (already encoded) to the URL.
    pub(super) fn query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    pub(super) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sends `len` bytes of `file` from `offset` (with its Content-Length),
    /// unsigned, timed by its progress.
    pub(super) fn file_body(mut self, file: Arc<File>, offset: u64, len: u64) -> Self {
        let progress = Arc::new(Progress::new());
        self.body = FileBody::new(file, offset, len, progress.clone()).boxed();
        self.payload = Payload::Unsigned;
        self.progress = Some(progress);
        self.header(header::CONTENT_LENGTH, HeaderValue::from(len))
    }

    /// Sends `bytes` (with its Content-Length), hashed into the signature.
    pub(super) fn bytes_body(mut self, bytes: &'a Bytes) -> Self {
        self.body = Full::new(bytes.clone()).map_err(|e| match e {}).boxed();
        self.payload = Payload::Bytes(bytes);
        self.header(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()))
    }

    /// The statuses the operation's reader handles (default: 200 OK only).
    pub(super) fn accept(mut self, statuses: &'static [StatusCode]) -> Self {
        self.accept = statuses;
        self
    }
}

/// An answer with a status the operation accepted, for its reader.
pub(super) struct Answer<'a> {
    client: &'a S3Client,
    op: Op,
    key: &'a str,
    resp: Response<Incoming>,
}

impl Answer<'_> {
    pub(super) fn status(&self) -> StatusCode {
        self.resp.status()
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        self.resp.headers()
    }

    /// The body, for the operation to stream.
    pub(super) fn into_body(self) -> Incoming {
        self.resp.into_body()
    }

    /// Reads the (small, XML or empty) body, bounded in size and by the
    /// stall timeout; reading it to the end returns the connection to the
    /// pool.
    pub(super) async fn xml(self) -> Result<Vec<u8>, S3Error> {
        self.client
            .read_xml(self.op, self.key, self.resp.into_body())
            .await
    }

    /// [`Answer::xml`], failing on an `<Error>` document: CopyObject and
    /// CompleteMultipartUpload can fail after S3 sent 200 OK.
    pub(super) async fn checked_xml(self) -> Result<Vec<u8>, S3Error> {
        let (op, key) = (self.op, self.key);
        let body = self.xml().await?;
        check_200_error(op, key, &body)?;
        Ok(body)
    }

    /// The answer as an [`S3Error::Status`], with S3's code and message
    /// when the body has them.
    pub(super) async fn into_error(self) -> S3Error {
        self.client.status_error(self.op, self.key, self.resp).await
    }
}

impl S3Client {
    /// Runs one S3 request from start to finish and records its outcome and
    /// latency: checks the key, builds and signs the request, sends it and
    /// waits for the response head (see the timeouts above), turns a status
    /// the call doesn't accept into an [`S3Error::Status`], and lets `read`
    /// make the operation's result of the answer. Every operation is exactly
    /// one call of this, so the metrics see each request once, classified by
    /// what the operation made of the answer (a 404 `NoSuchBucket` on GET is
    /// an error, a 404 on HEAD a miss).
    pub(super) async fn exchange<'a, T, Fut>(
        &'a self,
        mut call: Call<'a>,
        read: impl FnOnce(Answer<'a>) -> Fut,
    ) -> Result<T, S3Error>
    where
        T: Found,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        let started = Instant::now();
        let (op, key, accept) = (call.op, call.key, call.accept);
        let result = async {
            let progress = call.progress.take();
            let req = self.request(call)?;
            let resp = self.send(op, key, req, progress.as_deref()).await?;
            if !accept.contains(&resp.status()) {
                return Err(self.status_error(op, key, resp).await);
            }
            read(Answer {
                client: self,
                op,
                key,
                resp,
            })
            .await
        }
        .await;
        let outcome = match &result {
            Ok(v) if v.found() => Outcome::Ok,
            Ok(_) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        };
        self.inner.stats.record(op, started.elapsed(), outcome);
        result
    }

    /// Builds and signs the request of `call`.
    fn request(&self, call: Call<'_>) -> Result<Request<ReqBody>, S3Error> {
        let Call {
            op,
            key,
            query,
            mut headers,
            body,
            payload,
            ..
        } = call;
        if key.is_empty() {
            return Err(S3Error::InvalidKey {
                op: op.label(),
                key: key.to_owned(),
                reason: "empty",
            });
        }
        if key.len() > 1024 {
            return Err(S3Error::InvalidKey {
                op: op.label(),
                key: key.to_owned(),
                reason: "longer than 1024 bytes",
            });
        }
        let url = self.inner.addr.url(key, &query);
        headers.insert(header::HOST, header_value(&self.inner.addr.host()));
        let mut req = Request::builder()
            .method(op.method())
            .uri(url)
            .body(body)
            .map_err(|e| S3Error::Signing {
                op: op.label(),
                key: key.to_owned(),
                detail: format!("building the request: {e}"),
            })?;
        *req.headers_mut() = headers;
        self.inner
            .signer
            .sign(&mut req, payload)
            .map_err(|detail| S3Error::Signing {
                op: op.label(),
                key: key.to_owned(),
                detail,
            })?;
        Ok(req)
    }

    /// Sends `req` and waits for the response head, at most the request
    /// timeout — counted from the last upload progress when there is a body.
    async fn send(
        &self,
        op: Op,
        key: &str,
        req: Request<ReqBody>,
        progress: Option<&Progress>,
    ) -> Result<Response<Incoming>, S3Error> {
        let timeout = self.inner.opts.request_timeout;
        let started = Instant::now();
        let last = || progress.map_or(started, Progress::last);
        let fut = self.inner.http.request(req);
        tokio::pin!(fut);
        loop {
            let deadline = last() + timeout;
            tokio::select! {
                biased;
                res = &mut fut => return res.map_err(|e| self.transport_error(op, key, e)),
                () = tokio::time::sleep_until(deadline.into()) => {
                    if last() + timeout <= Instant::now() {
                        let what = match progress {
                            Some(p) => format!(
                                "no progress for {timeout:?} (sent {} bytes of the body)",
                                p.sent()
                            ),
                            None => format!("no response within {timeout:?}"),
                        };
                        return Err(S3Error::Timeout { op: op.label(), key: key.to_owned(), what });
                    }
                }
            }
        }
    }

    /// Reads a small answer body (XML), bounded in size and by the stall timeout.
    async fn read_xml(&self, op: Op, key: &str, body: Incoming) -> Result<Vec<u8>, S3Error> {
        read_bounded(body, XML_BODY_LIMIT, self.inner.opts.stall_timeout)
            .await
            .map_err(|e| match e {
                BodyError::Stalled(after) => S3Error::Timeout {
                    op: op.label(),
                    key: key.to_owned(),
                    what: format!("no data in the answer for {after:?}"),
                },
                BodyError::Hyper(e) => S3Error::Connection {
                    op: op.label(),
                    key: key.to_owned(),
                    detail: format!("reading the answer: {}", error_chain(&e)),
                },
            })
    }

    /// The error for a non-success answer, with S3's code and message when
    /// the body has them.
    async fn status_error(&self, op: Op, key: &str, resp: Response<Incoming>) -> S3Error {
        let status = resp.status().as_u16();
        let body = if op == Op::Head {
            Vec::new()
        } else {
            read_bounded(
                resp.into_body(),
                XML_BODY_LIMIT,
                self.inner.opts.stall_timeout,
            )
            .await
            .unwrap_or_default()
        };
        let (code, message) = parse_error_body(&body);
        S3Error::Status {
            op: op.label(),
            key: key.to_owned(),
            status,
            code,
            message,
        }
    }

    fn transport_error(
        &self,
        op: Op,
        key: &str,
        err: hyper_util::client::legacy::Error,
    ) -> S3Error {
        // A failing upload body is a local file problem, not the network's.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if let Some(f) = e.downcast_ref::<FileReadError>() {
                return S3Error::File {
                    op: op.label(),
                    key: key.to_owned(),
                    source: io::Error::new(f.0.kind(), f.0.to_string()),
                };
            }
            source = e.source();
        }
        let detail = if err.is_connect() {
            format!(
                "connecting to {}: {}",
                self.inner.addr.host(),
                error_chain(&err)
            )
        } else {
            // A pooled connection that broke (e.g. the server restarted):
            // still name the endpoint, so an operator sees which one.
            format!(
                "talking to {}: {}",
                self.inner.addr.host(),
                error_chain(&err)
            )
        };
        S3Error::Connection {
            op: op.label(),
            key: key.to_owned(),
            detail,
        }
    }
}

/// CopyObject and CompleteMultipartUpload can fail after S3 sent
/// 200 OK: the body is then an `<Error>` document.
fn check_200_error(op: Op, key: &str, body: &[u8]) -> Result<(), S3Error> {
    let text = String::from_utf8_lossy(body);
    if xml_root(&text) == Some("Error") {
        let (code, message) = parse_error_body(body);
        return Err(S3Error::Status {
            op: op.label(),
            key: key.to_owned(),
            status: 200,
            code,
            message,
        });
    }
    Ok(())
}

/// S3 answered successfully but not in the form `op` expects.
pub(super) fn protocol(op: Op, key: &str, detail: impl Into<String>) -> S3Error {
    S3Error::Protocol {
        op: op.label(),
        key: key.to_owned(),
        detail: detail.into(),
    }
}

pub(super) fn header_value(s: &str) -> HeaderValue {
    // Only ever called with percent-encoded or validated host text.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::client::test_config;

    #[test]
    fn signed_requests_carry_sigv4_headers_but_display_no_secret() {
        let client = S3Client::new(&test_config()).unwrap();
        let req = client.request(Call::new(Op::Get, "a b")).unwrap();
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:9000/cache/a%20b");
        let h = req.headers();
        let auth = h[header::AUTHORIZATION].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/s3/aws4_request"), "{auth}");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert_eq!(h["x-amz-security-token"], "SESSIONTOKEN");
        assert_eq!(
            h["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(h.contains_key("x-amz-date"));
        let debug = format!("{req:?}");
        assert!(
            !debug.contains("wJalrXUtnFEMI") && !debug.contains("Signature="),
            "{debug}"
        );
    }

    #[test]
    fn keys_are_checked_before_anything_is_sent() {
        let client = S3Client::new(&test_config()).unwrap();
        let err = client.request(Call::new(Op::Head, "")).unwrap_err();
        assert!(
            matches!(
                err,
                S3Error::InvalidKey {
                    reason: "empty",
                    ..
                }
            ),
            "{err:?}"
        );
        let long = "k".repeat(1025);
        let err = client.request(Call::new(Op::Put, &long)).unwrap_err();
        assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
        assert!(client.request(Call::new(Op::Put, &long[..1024])).is_ok());
    }
}
