//! A small S3 client of our own: just the five calls the S3 proxy needs
//! (HEAD, GET, PUT of a file, multipart upload for large files, and a
//! "touch" that refreshes an object's Last-Modified), on the hyper-util
//! connection pool, with requests signed by `aws-sigv4`. No AWS SDK.
//!
//! # Addressing
//!
//! `s3_proxy.endpoint` is `host[:port]` without a scheme (bazel-remote's
//! form); `s3_proxy.disable_ssl` chooses `http://` instead of `https://`.
//! `s3_proxy.bucket_lookup_type`:
//!
//! - `path`: `SCHEME://endpoint/bucket/key`
//! - `dns`: `SCHEME://bucket.endpoint/key` (virtual-hosted style)
//! - `auto` (default): virtual-hosted style only when the endpoint is an AWS
//!   host name (`amazonaws.com`, `*.amazonaws.com`, `*.amazonaws.com.cn`)
//!   without an explicit port, and the bucket name is a valid DNS label
//!   sequence (no dots over TLS, where the `*.s3...` certificate would not
//!   match). Everything else — IP addresses, `host:port`, MinIO, Ceph, local
//!   test servers — gets path style, which every S3 implementation serves.
//!
//! Object keys are percent-encoded the S3 way: every byte except
//! `A-Z a-z 0-9 - . _ ~` and `/` becomes `%XX`, and the same string is what
//! gets signed (single encoding, no path normalization).
//!
//! # TLS
//!
//! rustls (ring provider) with the **operating system's** CA store
//! (`rustls-native-certs`), not a compiled-in Mozilla list: the image ships
//! `ca-certificates`, and on-premises MinIO/Ceph endpoints are commonly
//! signed by a private CA that operators add to the system store (or point
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` at). With `disable_ssl` no CA store is
//! loaded at all.
//!
//! # Timeouts
//!
//! - TCP connect: [`S3ClientOptions::connect_timeout`] (5 s).
//! - Response head of every request: [`S3ClientOptions::request_timeout`]
//!   (30 s). For uploads the clock restarts whenever the upload body makes
//!   progress, so a large upload is never cut off for being large — only for
//!   stalling, or for the server not answering within the timeout after the
//!   last byte.
//! - Bodies (GET streams, XML answers): [`S3ClientOptions::stall_timeout`]
//!   (30 s) without a single byte ends the read with `io::ErrorKind::TimedOut`.
//!
//! # Credentials
//!
//! `auth_method: access_key` (static keys, optional session token) and
//! `aws_credentials_file` (a profile of an AWS shared credentials file, read
//! once at start-up) are supported; `iam_role` is refused by [`S3Client::new`].
//! `signature_type: v4` and `v4streaming` both sign with SigV4 and send
//! `x-amz-content-sha256: UNSIGNED-PAYLOAD` for file bodies (small XML bodies
//! are hashed); `anonymous` sends unsigned requests; `v2` is refused.
//!
//! The client does not retry on its own except for individual parts of a
//! multipart upload ([`S3ClientOptions::part_attempts`]); callers decide with
//! [`S3Error::is_retryable`].

use std::fmt::{self, Write as _};
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use crate::config::{BucketLookupType, S3AuthMethod, S3Config, S3SignatureType};
use crate::metrics::AtomicHistogram;
use crate::store::BlobReader;

const MIB: u64 = 1024 * 1024;
/// S3 limits: at most 10,000 parts, parts of at least 5 MiB (except the
/// last), single PUTs of at most 5 GiB.
const MAX_PARTS: u64 = 10_000;
const MAX_SINGLE_PUT: u64 = 5 * 1024 * MIB;
/// Error and XML answers are read up to this many bytes.
const XML_BODY_LIMIT: usize = 64 * 1024;
/// File bodies are read and sent in chunks of this size.
const FILE_CHUNK: u64 = 256 * 1024;
const DEFAULT_REGION: &str = "us-east-1";
const CONTENT_TYPE_BLOB: &str = "application/octet-stream";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = BoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

/// Tuning knobs; [`Default`] has the production values. Tests shrink the
/// timeouts and force multipart uploads of small files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3ClientOptions {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for a response head: from sending a request without a
    /// body, or from the last upload progress of a request with one.
    pub request_timeout: Duration,
    /// Longest wait for the next bytes of a response body (GET streams,
    /// XML answers).
    pub stall_timeout: Duration,
    /// Files larger than this are uploaded with multipart upload. Files
    /// larger than 5 GiB always are (S3's single-PUT limit).
    pub multipart_threshold: u64,
    /// Part size for multipart uploads; S3 wants at least 5 MiB (except the
    /// last part). Scaled up for files that would need more than 10,000 parts.
    pub multipart_part_size: u64,
    /// Parts of one upload sent at the same time.
    pub multipart_concurrency: usize,
    /// Attempts per part (retryable errors only) before the upload is aborted.
    pub part_attempts: u32,
    /// How long idle pooled connections are kept (AWS closes them after
    /// about 20 s; reusing one it just closed costs a failed request).
    pub pool_idle_timeout: Duration,
}

impl Default for S3ClientOptions {
    fn default() -> Self {
        S3ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            multipart_threshold: 64 * MIB,
            multipart_part_size: 16 * MIB,
            multipart_concurrency: 4,
            part_attempts: 3,
            pool_idle_timeout: Duration::from_secs(15),
        }
    }
}

/// An S3 object being downloaded.
pub struct S3Object {
    /// `Content-Length`, when the server sent one.
    pub len: Option<u64>,
    /// The object's bytes. A stall longer than the stall timeout ends it
    /// with `io::ErrorKind::TimedOut`; a truncated body with an error.
    pub body: BlobReader,
}

impl fmt::Debug for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Object")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Why an S3 call failed. The messages name the operation and object key,
/// never credentials or signatures.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The `s3_proxy` configuration can't be used (reported by [`S3Client::new`]).
    #[error("S3 configuration: {0}")]
    Config(String),
    #[error("S3 {op} {key:?}: invalid object key: {reason}")]
    InvalidKey {
        op: &'static str,
        key: String,
        reason: &'static str,
    },
    /// S3 answered with an error status (or with an `<Error>` document in a
    /// 200 answer, which CopyObject and CompleteMultipartUpload may do).
    #[error("S3 {op} {key}: HTTP {status}{}", describe_code(*.status, .code, .message))]
    Status {
        op: &'static str,
        key: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("S3 {op} {key}: timed out: {what}")]
    Timeout {
        op: &'static str,
        key: String,
        what: String,
    },
    /// Connecting, TLS, or the connection failing mid-request.
    #[error("S3 {op} {key}: connection error: {detail}")]
    Connection {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// Reading the local file being uploaded failed (or it is shorter than
    /// the length given).
    #[error("S3 {op} {key}: reading the local file: {source}")]
    File {
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    /// S3 answered successfully but not in the form expected.
    #[error("S3 {op} {key}: unexpected response: {detail}")]
    Protocol {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("S3 {op} {key}: signing the request: {detail}")]
    Signing {
        op: &'static str,
        key: String,
        detail: String,
    },
}

fn describe_code(status: u16, code: &Option<String>, message: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(reason) = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        let _ = write!(s, " {reason}");
    }
    match (code, message) {
        (Some(c), Some(m)) => {
            let _ = write!(s, ": {c}: {m}");
        }
        (Some(c), None) => {
            let _ = write!(s, ": {c}");
        }
        (None, Some(m)) => {
            let _ = write!(s, ": {m}");
        }
        (None, None) => {}
    }
    s
}

/// S3 error codes that are worth retrying even when the status isn't 5xx.
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
];

impl S3Error {
    /// Worth trying again later: 5xx, 429, SlowDown and similar S3 codes,
    /// timeouts, connection errors. Not: 4xx (auth, missing bucket),
    /// configuration, local file errors, malformed answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            S3Error::Status { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || *status == 408
                    || code
                        .as_deref()
                        .is_some_and(|c| RETRYABLE_CODES.contains(&c))
            }
            S3Error::Timeout { .. } | S3Error::Connection { .. } => true,
            S3Error::Config(_)
            | S3Error::InvalidKey { .. }
            | S3Error::File { .. }
            | S3Error::Protocol { .. }
            | S3Error::Signing { .. } => false,
        }
    }

    /// The HTTP status S3 answered with, for [`S3Error::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The S3 error code (`<Code>` of the XML error body), e.g.
    /// `SignatureDoesNotMatch`, `NoSuchBucket`, `AccessDenied`. HEAD answers
    /// have no body, hence no code.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// The S3 operations, for the request method and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
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
    const ALL: [Op; 8] = [
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
    fn metric_label(self) -> &'static str {
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

/// Where requests go: scheme, host and how the bucket is named.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addressing {
    scheme: &'static str,
    /// `host[:port]` as configured.
    endpoint: String,
    bucket: String,
    /// Virtual-hosted style (`bucket.endpoint`) rather than path style.
    virtual_host: bool,
}

impl Addressing {
    fn new(
        endpoint: &str,
        bucket: &str,
        lookup: BucketLookupType,
        disable_ssl: bool,
    ) -> Result<Addressing, S3Error> {
        let endpoint = endpoint.trim();
        if endpoint.contains("://") {
            return Err(S3Error::Config(format!(
                "s3_proxy.endpoint {endpoint:?} must be host[:port] without a scheme \
                 (set s3_proxy.disable_ssl: true for http)"
            )));
        }
        if endpoint.is_empty() || endpoint.contains(['/', '@', '?', '#']) {
            return Err(S3Error::Config(format!(
                "s3_proxy.endpoint {endpoint:?} must be host[:port]"
            )));
        }
        let authority: http::uri::Authority = endpoint.parse().map_err(|_| {
            S3Error::Config(format!(
                "s3_proxy.endpoint {endpoint:?} is not a valid host[:port]"
            ))
        })?;
        if bucket.is_empty() || bucket.contains(['/', '?', '#']) {
            return Err(S3Error::Config(format!(
                "s3_proxy.bucket {bucket:?} is not a valid bucket name"
            )));
        }
        let tls = !disable_ssl;
        let virtual_host = match lookup {
            BucketLookupType::Path => false,
            BucketLookupType::Dns => true,
            BucketLookupType::Auto => {
                authority.port().is_none()
                    && is_aws_host(authority.host())
                    && bucket_is_dns_compatible(bucket, tls)
            }
        };
        if virtual_host && !bucket_is_dns_compatible(bucket, false) {
            return Err(S3Error::Config(format!(
                "s3_proxy.bucket {bucket:?} can't be used as a host name; \
                 set s3_proxy.bucket_lookup_type: path"
            )));
        }
        Ok(Addressing {
            scheme: if tls { "https" } else { "http" },
            endpoint: endpoint.to_owned(),
            bucket: bucket.to_owned(),
            virtual_host,
        })
    }

    /// The `Host` header (and URL authority).
    fn host(&self) -> String {
        if self.virtual_host {
            format!("{}.{}", self.bucket, self.endpoint)
        } else {
            self.endpoint.clone()
        }
    }

    /// The request path for `key`, percent-encoded.
    fn path(&self, key: &str) -> String {
        let mut path = String::with_capacity(key.len() + self.bucket.len() + 8);
        path.push('/');
        if !self.virtual_host {
            uri_encode(&self.bucket, false, &mut path);
            path.push('/');
        }
        uri_encode(key, true, &mut path);
        path
    }

    /// The full URL of `key`, plus `?query` when `query` isn't empty
    /// (already encoded).
    fn url(&self, key: &str, query: &str) -> String {
        let mut url = format!("{}://{}{}", self.scheme, self.host(), self.path(key));
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// `x-amz-copy-source` for `key`: `/bucket/key`, URL-encoded.
    fn copy_source(&self, key: &str) -> String {
        let mut s = String::from("/");
        uri_encode(&self.bucket, false, &mut s);
        s.push('/');
        uri_encode(key, true, &mut s);
        s
    }
}

fn is_aws_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "amazonaws.com"
        || host.ends_with(".amazonaws.com")
        || host.ends_with(".amazonaws.com.cn")
}

/// Whether `bucket` can be a DNS label sequence in front of the endpoint:
/// 3–63 of `a-z 0-9 - .`, labels starting and ending alphanumeric, not an
/// IPv4 address; over TLS no dots (the wildcard certificate covers one label).
fn bucket_is_dns_compatible(bucket: &str, tls: bool) -> bool {
    if !(3..=63).contains(&bucket.len()) || (tls && bucket.contains('.')) {
        return false;
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return false;
    }
    bucket.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// S3's URI encoding: everything but unreserved characters (and `/` when
/// `keep_slash`) as `%XX` with upper-case hex.
fn uri_encode(s: &str, keep_slash: bool, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// How requests are authenticated.
#[derive(Clone)]
enum Signer {
    Anonymous,
    V4 {
        credentials: Credentials,
        region: String,
    },
}

/// What the request's payload hash is.
enum Payload<'a> {
    /// `UNSIGNED-PAYLOAD`: streamed file bodies.
    Unsigned,
    /// The SHA-256 of these bytes (empty for bodiless requests).
    Bytes(&'a [u8]),
}

impl Signer {
    fn sign(&self, req: &mut Request<ReqBody>, payload: Payload<'_>) -> Result<(), String> {
        let Signer::V4 {
            credentials,
            region,
        } = self
        else {
            return Ok(());
        };
        let identity: Identity = credentials.clone().into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let instructions = {
            let uri = req.uri().to_string();
            let mut headers = Vec::with_capacity(req.headers().len());
            for (name, value) in req.headers() {
                let value = value
                    .to_str()
                    .map_err(|_| format!("header {name} is not visible ASCII"))?;
                headers.push((name.as_str(), value));
            }
            let body = match payload {
                Payload::Unsigned => SignableBody::UnsignedPayload,
                Payload::Bytes(b) => SignableBody::Bytes(b),
            };
            let signable =
                SignableRequest::new(req.method().as_str(), uri, headers.into_iter(), body)
                    .map_err(|e| e.to_string())?;
            aws_sigv4::http_request::sign(signable, &params)
                .map_err(|e| e.to_string())?
                .into_parts()
                .0
        };
        instructions.apply_to_request_http1x(req);
        // Keep the signature and the token out of any Debug output.
        for name in [header::AUTHORIZATION.as_str(), "x-amz-security-token"] {
            if let Some(v) = req.headers_mut().get_mut(name) {
                v.set_sensitive(true);
            }
        }
        Ok(())
    }
}

/// Upper bounds (seconds) of the S3 request latency histogram: from a
/// same-rack MinIO (milliseconds) to the 30 s request timeout.
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every request this client made, for metrics (read at scrape time): how
/// it ended and how long it took, per operation.
#[derive(Debug)]
pub struct S3RequestStats {
    /// Answered as expected.
    pub ok: AtomicU64,
    /// Answered 404 where that means "absent" (HEAD, GET: a cache miss).
    pub not_found: AtomicU64,
    /// Failed: connection, timeout, signing, any other error answer, or an
    /// `<Error>` document in a 200 answer.
    pub errors: AtomicU64,
    /// Time to the answer (for uploads: sending the body, then the answer;
    /// for GET: the response head, not the streamed body), per operation.
    latency: Vec<AtomicHistogram>,
}

impl S3RequestStats {
    fn new() -> Self {
        S3RequestStats {
            ok: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Op::ALL
                .iter()
                .map(|_| AtomicHistogram::new(&LATENCY_BUCKETS))
                .collect(),
        }
    }

    /// `(operation, histogram)` for each S3 operation.
    pub fn latencies(&self) -> impl Iterator<Item = (&'static str, &AtomicHistogram)> {
        Op::ALL
            .iter()
            .zip(&self.latency)
            .map(|(op, h)| (op.metric_label(), h))
    }

    fn record(&self, op: Op, elapsed: Duration, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::NotFound => &self.not_found,
            Outcome::Error => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let index = Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every Op is in ALL");
        self.latency[index].observe(elapsed.as_secs_f64());
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    NotFound,
    Error,
}

/// What an operation's successful result says: absent (404) or not.
trait Found {
    fn found(&self) -> bool {
        true
    }
}

impl Found for () {}
impl Found for String {}
impl<T> Found for Option<T> {
    fn found(&self) -> bool {
        self.is_some()
    }
}

/// A cheap-to-clone S3 client for one bucket.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    addr: Addressing,
    signer: Signer,
    opts: S3ClientOptions,
    stats: S3RequestStats,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.inner.addr;
        let mut d = f.debug_struct("S3Client");
        d.field("endpoint", &format!("{}://{}", a.scheme, a.endpoint))
            .field("bucket", &a.bucket)
            .field("virtual_host", &a.virtual_host);
        match &self.inner.signer {
            Signer::Anonymous => d.field("auth", &"anonymous"),
            Signer::V4 { region, .. } => d
                .field("auth", &"sigv4 (credentials redacted)")
                .field("region", region),
        };
        d.field("options", &self.inner.opts).finish()
    }
}

impl S3Client {
    /// A client for `cfg` with the default [`S3ClientOptions`].
    pub fn new(cfg: &S3Config) -> Result<S3Client, S3Error> {
        S3Client::with_options(cfg, S3ClientOptions::default())
    }

    /// A client for `cfg` with explicit tuning.
    pub fn with_options(cfg: &S3Config, opts: S3ClientOptions) -> Result<S3Client, S3Error> {
        let addr = Addressing::new(
            &cfg.endpoint,
            &cfg.bucket,
            cfg.bucket_lookup_type,
            cfg.disable_ssl,
        )?;
        let signer = signer(cfg)?;
        if opts.multipart_part_size == 0
            || opts.multipart_concurrency == 0
            || opts.part_attempts == 0
        {
            return Err(S3Error::Config(
                "multipart part size, concurrency and attempts must be at least 1".to_owned(),
            ));
        }

        let tls = if cfg.disable_ssl {
            // Never used for http:// URLs; no CA store needed.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| S3Error::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        } else {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| S3Error::Config(format!("TLS setup: {e}")))?
            .with_native_roots()
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
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.max_idle_conns)
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(S3Client {
            inner: Arc::new(Inner {
                http,
                addr,
                signer,
                opts,
                stats: S3RequestStats::new(),
            }),
        })
    }

    pub fn options(&self) -> &S3ClientOptions {
        &self.inner.opts
    }

    /// Outcomes and latencies of every request so far (metrics).
    pub fn request_stats(&self) -> &S3RequestStats {
        &self.inner.stats
    }

    /// Runs one S3 request (`exchange`: build, send, read the answer) and
    /// records its outcome and latency. Every operation below is exactly
    /// one HTTP request and goes through here, so the metrics see each
    /// request once, classified by what the operation made of the answer
    /// (a 404 `NoSuchBucket` on GET is an error, a 404 on HEAD a miss).
    async fn observed<T: Found>(
        &self,
        op: Op,
        exchange: impl Future<Output = Result<T, S3Error>>,
    ) -> Result<T, S3Error> {
        let started = Instant::now();
        let result = exchange.await;
        let outcome = match &result {
            Ok(v) if v.found() => Outcome::Ok,
            Ok(_) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        };
        self.inner.stats.record(op, started.elapsed(), outcome);
        result
    }

    /// `http(s)://host/[bucket]`, for logs.
    pub fn base_url(&self) -> String {
        let a = &self.inner.addr;
        if a.virtual_host {
            format!("{}://{}/", a.scheme, a.host())
        } else {
            format!("{}://{}/{}", a.scheme, a.endpoint, a.bucket)
        }
    }

    /// The object's size, or `None` if it doesn't exist (404). HEAD answers
    /// carry no error body, so a 404 for a missing bucket also reads as `None`.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, S3Error> {
        self.observed(Op::Head, self.head_exchange(key)).await
    }

    async fn head_exchange(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let op = Op::Head;
        let req = self.request(
            op,
            key,
            "",
            HeaderMap::new(),
            empty_body(),
            Payload::Bytes(&[]),
        )?;
        let resp = self.send(op, key, req, None).await?;
        match resp.status() {
            StatusCode::OK => content_length(resp.headers())
                .map(Some)
                .ok_or_else(|| self.protocol(op, key, "no Content-Length in the answer")),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(op, key, resp).await),
        }
    }

    /// Opens the object for streaming, or `None` if it doesn't exist
    /// (404 `NoSuchKey`; a 404 with another code, e.g. `NoSuchBucket`, is
    /// an error).
    pub async fn get(&self, key: &str) -> Result<Option<S3Object>, S3Error> {
        self.observed(Op::Get, self.get_exchange(key)).await
    }

    async fn get_exchange(&self, key: &str) -> Result<Option<S3Object>, S3Error> {
        let op = Op::Get;
        let req = self.request(
            op,
            key,
            "",
            HeaderMap::new(),
            empty_body(),
            Payload::Bytes(&[]),
        )?;
        let resp = self.send(op, key, req, None).await?;
        match resp.status() {
            StatusCode::OK => {
                let len = content_length(resp.headers());
                let stream = resp
                    .into_body()
                    .into_data_stream()
                    .map_err(io::Error::other);
                let reader = tokio_util::io::StreamReader::new(stream);
                let what = format!("S3 GET {key}");
                Ok(Some(S3Object {
                    len,
                    body: Box::pin(StallTimeout::new(
                        reader,
                        self.inner.opts.stall_timeout,
                        what,
                    )),
                }))
            }
            StatusCode::NOT_FOUND => {
                let err = self.status_error(op, key, resp).await;
                match err.code() {
                    None | Some("NoSuchKey") => Ok(None),
                    Some(_) => Err(err),
                }
            }
            _ => Err(self.status_error(op, key, resp).await),
        }
    }

    /// Uploads `len` bytes of `file` (from offset 0) as `key`. The file is
    /// read with positional reads, so the caller can retry with the same
    /// handle and the path may be unlinked meanwhile. Files larger than
    /// [`S3ClientOptions::multipart_threshold`] go up in parts.
    pub async fn put_file(&self, key: &str, file: Arc<File>, len: u64) -> Result<(), S3Error> {
        if len > self.inner.opts.multipart_threshold || len > MAX_SINGLE_PUT {
            self.put_multipart(key, file, len).await
        } else {
            self.put_single(key, file, len).await
        }
    }

    /// Refreshes the object's Last-Modified by copying it onto itself with
    /// `x-amz-metadata-directive: REPLACE` (what bazel-remote's
    /// `update_timestamps` does). S3 can't copy objects over 5 GiB this way.
    pub async fn touch(&self, key: &str) -> Result<(), S3Error> {
        self.observed(Op::Copy, self.touch_exchange(key)).await
    }

    async fn touch_exchange(&self, key: &str) -> Result<(), S3Error> {
        let op = Op::Copy;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-amz-copy-source"),
            header_value(&self.inner.addr.copy_source(key)),
        );
        headers.insert(
            HeaderName::from_static("x-amz-metadata-directive"),
            HeaderValue::from_static("REPLACE"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_BLOB),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let req = self.request(op, key, "", headers, empty_body(), Payload::Bytes(&[]))?;
        let resp = self.send(op, key, req, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(op, key, resp).await);
        }
        let body = self.read_xml(op, key, resp.into_body()).await?;
        self.check_200_error(op, key, &body)
    }

    async fn put_single(&self, key: &str, file: Arc<File>, len: u64) -> Result<(), S3Error> {
        self.observed(Op::Put, self.put_single_exchange(key, file, len))
            .await
    }

    async fn put_single_exchange(
        &self,
        key: &str,
        file: Arc<File>,
        len: u64,
    ) -> Result<(), S3Error> {
        let op = Op::Put;
        let progress = Arc::new(Progress::new());
        let body = FileBody::new(file, 0, len, progress.clone());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_BLOB),
        );
        let req = self.request(op, key, "", headers, body.boxed(), Payload::Unsigned)?;
        let resp = self.send(op, key, req, Some(&progress)).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(op, key, resp).await);
        }
        // Drain the (empty) body so the connection goes back to the pool.
        self.read_xml(op, key, resp.into_body()).await?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, file: Arc<File>, len: u64) -> Result<(), S3Error> {
        let part_size = part_size_for(len, self.inner.opts.multipart_part_size);
        let upload_id = self.create_multipart(key).await?;
        // Aborts in the background if this future is dropped half-way.
        let mut guard = AbortGuard {
            client: Some(self.clone()),
            key: key.to_owned(),
            upload_id: upload_id.clone(),
        };
        let result = self
            .upload_parts_and_complete(key, &upload_id, file, len, part_size)
            .await;
        guard.client = None;
        if let Err(e) = &result
            && let Err(abort) = self.abort_multipart(key, &upload_id).await
        {
            tracing::warn!(
                error = %abort,
                upload_error = %e,
                "aborting a failed S3 multipart upload failed; its parts stay until a lifecycle rule removes them"
            );
        }
        result
    }

    async fn upload_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        file: Arc<File>,
        len: u64,
        part_size: u64,
    ) -> Result<(), S3Error> {
        let count = len.div_ceil(part_size).max(1);
        let parts = (0..count).map(|i| {
            let offset = i * part_size;
            let size = part_size.min(len - offset);
            (i as u32 + 1, offset, size)
        });
        let mut etags: Vec<(u32, String)> = futures_util::stream::iter(parts)
            .map(|(number, offset, size)| {
                let file = file.clone();
                async move {
                    let etag = self
                        .upload_part_with_retries(key, upload_id, number, file, offset, size)
                        .await?;
                    Ok::<_, S3Error>((number, etag))
                }
            })
            .buffer_unordered(self.inner.opts.multipart_concurrency)
            .try_collect()
            .await?;
        etags.sort_unstable_by_key(|(n, _)| *n);
        self.complete_multipart(key, upload_id, &etags).await
    }

    async fn upload_part_with_retries(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        file: Arc<File>,
        offset: u64,
        size: u64,
    ) -> Result<String, S3Error> {
        let mut attempt = 1;
        loop {
            match self
                .upload_part(key, upload_id, number, file.clone(), offset, size)
                .await
            {
                Ok(etag) => return Ok(etag),
                Err(e) if e.is_retryable() && attempt < self.inner.opts.part_attempts => {
                    let delay = Duration::from_millis(200) * 2u32.pow(attempt - 1);
                    tracing::debug!(error = %e, part = number, attempt, "retrying S3 UploadPart");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        self.observed(Op::CreateMultipart, self.create_multipart_exchange(key))
            .await
    }

    async fn create_multipart_exchange(&self, key: &str) -> Result<String, S3Error> {
        let op = Op::CreateMultipart;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_BLOB),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let req = self.request(
            op,
            key,
            "uploads",
            headers,
            empty_body(),
            Payload::Bytes(&[]),
        )?;
        let resp = self.send(op, key, req, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(op, key, resp).await);
        }
        let body = self.read_xml(op, key, resp.into_body()).await?;
        self.check_200_error(op, key, &body)?;
        match xml_element(&String::from_utf8_lossy(&body), "UploadId") {
            Some(id) if !id.is_empty() => Ok(id),
            _ => Err(self.protocol(op, key, "no UploadId in the answer")),
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        file: Arc<File>,
        offset: u64,
        size: u64,
    ) -> Result<String, S3Error> {
        self.observed(
            Op::UploadPart,
            self.upload_part_exchange(key, upload_id, number, file, offset, size),
        )
        .await
    }

    async fn upload_part_exchange(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        file: Arc<File>,
        offset: u64,
        size: u64,
    ) -> Result<String, S3Error> {
        let op = Op::UploadPart;
        let query = part_query(number, upload_id);
        let progress = Arc::new(Progress::new());
        let body = FileBody::new(file, offset, size, progress.clone());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        let req = self.request(op, key, &query, headers, body.boxed(), Payload::Unsigned)?;
        let resp = self.send(op, key, req, Some(&progress)).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(op, key, resp).await);
        }
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.read_xml(op, key, resp.into_body()).await?;
        etag.filter(|e| !e.is_empty())
            .ok_or_else(|| self.protocol(op, key, format!("no ETag for part {number}")))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Error> {
        self.observed(
            Op::CompleteMultipart,
            self.complete_multipart_exchange(key, upload_id, parts),
        )
        .await
    }

    async fn complete_multipart_exchange(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Error> {
        let op = Op::CompleteMultipart;
        let mut xml = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (number, etag) in parts {
            let _ = write!(
                xml,
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            );
        }
        xml.push_str("</CompleteMultipartUpload>");
        let xml = Bytes::from(xml);
        let mut query = String::from("uploadId=");
        uri_encode(upload_id, false, &mut query);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(xml.len()));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        let body = Full::new(xml.clone()).map_err(|e| match e {}).boxed();
        let req = self.request(op, key, &query, headers, body, Payload::Bytes(&xml))?;
        let resp = self.send(op, key, req, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(op, key, resp).await);
        }
        let body = self.read_xml(op, key, resp.into_body()).await?;
        self.check_200_error(op, key, &body)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.observed(
            Op::AbortMultipart,
            self.abort_multipart_exchange(key, upload_id),
        )
        .await
    }

    async fn abort_multipart_exchange(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let op = Op::AbortMultipart;
        let mut query = String::from("uploadId=");
        uri_encode(upload_id, false, &mut query);
        let req = self.request(
            op,
            key,
            &query,
            HeaderMap::new(),
            empty_body(),
            Payload::Bytes(&[]),
        )?;
        let resp = self.send(op, key, req, None).await?;
        match resp.status() {
            // 404 NoSuchUpload: already gone.
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => {
                self.read_xml(op, key, resp.into_body()).await?;
                Ok(())
            }
            _ => Err(self.status_error(op, key, resp).await),
        }
    }

    /// Builds and signs a request for `key`.
    fn request(
        &self,
        op: Op,
        key: &str,
        query: &str,
        mut headers: HeaderMap,
        body: ReqBody,
        payload: Payload<'_>,
    ) -> Result<Request<ReqBody>, S3Error> {
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
        let url = self.inner.addr.url(key, query);
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

    /// CopyObject and CompleteMultipartUpload can fail after S3 sent
    /// 200 OK: the body is then an `<Error>` document.
    fn check_200_error(&self, op: Op, key: &str, body: &[u8]) -> Result<(), S3Error> {
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

    fn protocol(&self, op: Op, key: &str, detail: impl Into<String>) -> S3Error {
        S3Error::Protocol {
            op: op.label(),
            key: key.to_owned(),
            detail: detail.into(),
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

fn signer(cfg: &S3Config) -> Result<Signer, S3Error> {
    let region = match cfg.region.trim() {
        "" => DEFAULT_REGION.to_owned(),
        r => r.to_owned(),
    };
    match cfg.signature_type {
        S3SignatureType::V4 | S3SignatureType::V4Streaming => {}
        S3SignatureType::Anonymous => return Ok(Signer::Anonymous),
        S3SignatureType::V2 => {
            return Err(S3Error::Config(
                "s3_proxy.signature_type v2 is not supported by bazel-cache; use v4".to_owned(),
            ));
        }
    }
    let credentials = match cfg.auth_method {
        S3AuthMethod::AccessKey => {
            if cfg.access_key_id.is_empty() || cfg.secret_access_key.is_empty() {
                return Err(S3Error::Config(
                    "s3_proxy.auth_method access_key needs s3_proxy.access_key_id and \
                     s3_proxy.secret_access_key"
                        .to_owned(),
                ));
            }
            let token = Some(cfg.session_token.clone()).filter(|t| !t.is_empty());
            Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.clone(),
                token,
                None,
                "s3_proxy.access_key",
            )
        }
        S3AuthMethod::AwsCredentialsFile => {
            let path = credentials_file_path(cfg.aws_shared_credentials_file.as_deref())?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                S3Error::Config(format!(
                    "s3_proxy.auth_method aws_credentials_file: reading {}: {e}",
                    path.display()
                ))
            })?;
            let creds = parse_credentials_file(&text, &cfg.aws_profile).map_err(|e| {
                S3Error::Config(format!(
                    "s3_proxy.auth_method aws_credentials_file: {}: {e}",
                    path.display()
                ))
            })?;
            Credentials::new(
                creds.access_key_id,
                creds.secret_access_key,
                creds.session_token,
                None,
                "s3_proxy.aws_credentials_file",
            )
        }
        S3AuthMethod::IamRole => {
            return Err(S3Error::Config(
                "s3_proxy.auth_method iam_role is not supported by bazel-cache; use access_key \
                 (e.g. BAZEL_REMOTE_S3_ACCESS_KEY_ID / BAZEL_REMOTE_S3_SECRET_ACCESS_KEY) or \
                 aws_credentials_file"
                    .to_owned(),
            ));
        }
    };
    Ok(Signer::V4 {
        credentials,
        region,
    })
}

fn credentials_file_path(configured: Option<&Path>) -> Result<PathBuf, S3Error> {
    if let Some(p) = configured {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".aws").join("credentials")),
        None => Err(S3Error::Config(
            "s3_proxy.auth_method aws_credentials_file: set s3_proxy.aws_shared_credentials_file \
             (HOME is not set)"
                .to_owned(),
        )),
    }
}

#[derive(PartialEq, Eq)]
struct FileCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileCredentials(<redacted>)")
    }
}

/// Reads one profile of an AWS shared credentials file (INI: `[profile]`
/// sections of `key = value`, `#`/`;` comments). Errors never quote values.
fn parse_credentials_file(text: &str, profile: &str) -> Result<FileCredentials, String> {
    let mut in_profile = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" | "aws_security_token" => token = Some(v),
            _ => {}
        }
    }
    if !found {
        return Err(format!("no [{profile}] profile (s3_proxy.aws_profile)"));
    }
    match (
        id.filter(|s| !s.is_empty()),
        secret.filter(|s| !s.is_empty()),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(FileCredentials {
            access_key_id,
            secret_access_key,
            session_token: token.filter(|t| !t.is_empty()),
        }),
        _ => Err(format!(
            "profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        )),
    }
}

/// Aborts a multipart upload in the background when dropped armed (the
/// upload future was cancelled).
struct AbortGuard {
    client: Option<S3Client>,
    key: String,
    upload_id: String,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let upload_id = std::mem::take(&mut self.upload_id);
        handle.spawn(async move {
            if let Err(e) = client.abort_multipart(&key, &upload_id).await {
                tracing::warn!(error = %e, "aborting a cancelled S3 multipart upload failed");
            }
        });
    }
}

fn part_query(number: u32, upload_id: &str) -> String {
    let mut q = format!("partNumber={number}&uploadId=");
    uri_encode(upload_id, false, &mut q);
    q
}

/// The part size for a `len`-byte upload: the configured size, scaled up
/// (to whole MiB) when the file would otherwise need more than 10,000 parts.
fn part_size_for(len: u64, configured: u64) -> u64 {
    let needed = len.div_ceil(MAX_PARTS);
    if needed > configured {
        needed.div_ceil(MIB) * MIB
    } else {
        configured.max(1)
    }
}

fn empty_body() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed()
}

fn header_value(s: &str) -> HeaderValue {
    // Only ever called with percent-encoded or validated host text.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `e` and its sources, joined with ": ".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = e.source();
    }
    s
}

// ---------------------------------------------------------------------------
// Bodies

/// When an upload body last made progress, and how far it got.
struct Progress {
    base: Instant,
    last_ms: AtomicU64,
    sent: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    fn advance(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A failure reading the local file of an upload body; recognised in the
/// transport error's source chain.
#[derive(Debug)]
struct FileReadError(io::Error);

impl fmt::Display for FileReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the file to upload: {}", self.0)
    }
}

impl std::error::Error for FileReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// `len` bytes of a file from `start`, read with positional reads on the
/// blocking pool, one chunk ahead of what hyper has taken.
struct FileBody {
    file: Arc<File>,
    /// Offset of the next chunk to read.
    next: u64,
    end: u64,
    /// Bytes not yet handed to hyper.
    remaining: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    progress: Arc<Progress>,
}

impl FileBody {
    fn new(file: Arc<File>, start: u64, len: u64, progress: Arc<Progress>) -> FileBody {
        FileBody {
            file,
            next: start,
            end: start + len,
            remaining: len,
            pending: None,
            progress,
        }
    }

    fn start_read(&mut self) {
        if self.pending.is_some() || self.next >= self.end {
            return;
        }
        let n = FILE_CHUNK.min(self.end - self.next) as usize;
        let offset = self.next;
        let file = self.file.clone();
        self.next += n as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, offset).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends before offset {}", offset + n as u64),
                    )
                } else {
                    e
                }
            })?;
            Ok(Bytes::from(buf))
        }));
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.start_read();
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        let chunk = match result {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Poll::Ready(Some(Err(Box::new(FileReadError(e))))),
            Err(join) => {
                return Poll::Ready(Some(Err(Box::new(FileReadError(io::Error::other(
                    join.to_string(),
                ))))));
            }
        };
        this.remaining -= chunk.len() as u64;
        this.progress.advance(chunk.len() as u64);
        this.start_read(); // read ahead while hyper sends this chunk
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

enum BodyError {
    Stalled(Duration),
    Hyper(hyper::Error),
}

/// Up to `limit` bytes of `body` (the rest is dropped), each frame within `stall`.
async fn read_bounded(
    mut body: Incoming,
    limit: usize,
    stall: Duration,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(stall)),
            Ok(None) => return Ok(out),
            Ok(Some(frame)) => frame.map_err(BodyError::Hyper)?,
        };
        if let Ok(data) = frame.into_data() {
            let take = data.len().min(limit - out.len());
            out.extend_from_slice(&data[..take]);
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
}

/// Fails a read with `TimedOut` when the inner reader yields nothing for
/// `timeout` while someone is waiting on it.
struct StallTimeout<R> {
    inner: R,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
    what: String,
}

impl<R> StallTimeout<R> {
    fn new(inner: R, timeout: Duration, what: String) -> Self {
        StallTimeout {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            what,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for StallTimeout<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = tokio::time::Instant::now() + this.timeout;
                    this.sleep.as_mut().reset(deadline);
                    this.armed = true;
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.armed = false;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no data for {:?}", this.what, this.timeout),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

// ---------------------------------------------------------------------------
// XML

/// `<Code>` and `<Message>` of an S3 error document.
fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    if body.is_empty() {
        return (None, None);
    }
    let text = String::from_utf8_lossy(body);
    let code = xml_element(&text, "Code").filter(|c| !c.is_empty());
    let message = xml_element(&text, "Message").filter(|m| !m.is_empty());
    (code, message)
}

/// The name of the document's root element, skipping the XML declaration,
/// comments and processing instructions.
fn xml_root(xml: &str) -> Option<&str> {
    let mut rest = xml;
    loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            let end = rest.find('>')?;
            rest = &rest[end + 1..];
            continue;
        }
        let end = rest
            .find(|c: char| c == '>' || c == '/' || c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        return Some(&rest[..end]);
    }
}

/// The text of the first `<name>` element (attributes allowed, no nested
/// elements expected), entity-decoded; `Some("")` for `<name/>`.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut from = 0;
    while let Some(pos) = xml[from..].find(&open) {
        let after = from + pos + open.len();
        let rest = &xml[after..];
        match rest.chars().next() {
            Some('>') => {
                let body = &rest[1..];
                let end = body.find(&close)?;
                return Some(xml_unescape(&body[..end]));
            }
            Some(c) if c.is_ascii_whitespace() || c == '/' => {
                let gt = rest.find('>')?;
                if rest[..gt].ends_with('/') {
                    return Some(String::new());
                }
                let body = &rest[gt + 1..];
                let end = body.find(&close)?;
                return Some(xml_unescape(&body[..end]));
            }
            // A longer name with the same prefix (<CodeX>): keep looking.
            _ => from = after,
        }
    }
    None
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(endpoint: &str, bucket: &str, lookup: BucketLookupType, tls: bool) -> Addressing {
        Addressing::new(endpoint, bucket, lookup, !tls).unwrap()
    }

    #[test]
    fn path_style_urls() {
        let a = addr("127.0.0.1:9000", "cache", BucketLookupType::Path, false);
        assert_eq!(a.url("ac/ab/x", ""), "http://127.0.0.1:9000/cache/ac/ab/x");
        assert_eq!(a.host(), "127.0.0.1:9000");
        let a = addr("s3.amazonaws.com", "cache", BucketLookupType::Path, true);
        assert_eq!(
            a.url("k", "uploads"),
            "https://s3.amazonaws.com/cache/k?uploads"
        );
    }

    #[test]
    fn dns_style_urls() {
        let a = addr("minio.local:9000", "cache", BucketLookupType::Dns, true);
        assert_eq!(
            a.url("p/cas/ab/x", ""),
            "https://cache.minio.local:9000/p/cas/ab/x"
        );
        assert_eq!(a.host(), "cache.minio.local:9000");
        assert_eq!(a.copy_source("a b"), "/cache/a%20b");
        // A bucket that can't be a host name is refused up front.
        let err =
            Addressing::new("minio.local", "My_Bucket", BucketLookupType::Dns, false).unwrap_err();
        assert!(err.to_string().contains("bucket_lookup_type"), "{err}");
    }

    #[test]
    fn auto_style_rule() {
        let auto = |endpoint: &str, bucket: &str, tls: bool| {
            addr(endpoint, bucket, BucketLookupType::Auto, tls).virtual_host
        };
        assert!(auto("s3.amazonaws.com", "cache", true));
        assert!(auto("s3.eu-west-1.amazonaws.com", "my-cache", true));
        assert!(auto("s3.cn-north-1.amazonaws.com.cn", "cache", true));
        // Dotted buckets don't match the wildcard certificate over TLS.
        assert!(!auto("s3.amazonaws.com", "my.cache", true));
        assert!(auto("s3.amazonaws.com", "my.cache", false));
        // Explicit port, IP address, other hosts: path style.
        assert!(!auto("s3.amazonaws.com:443", "cache", true));
        assert!(!auto("127.0.0.1", "cache", false));
        assert!(!auto("[::1]:9000", "cache", false));
        assert!(!auto("minio.example.com", "cache", true));
        assert!(!auto("notamazonaws.com", "cache", true));
        assert!(!auto("s3.amazonaws.com", "Upper", true));
    }

    #[test]
    fn keys_are_encoded_the_s3_way() {
        let a = addr("h:1", "b", BucketLookupType::Path, false);
        assert_eq!(
            a.path("dir/a b+c%d=e&f?g#h~i.j_k-l"),
            "/b/dir/a%20b%2Bc%25d%3De%26f%3Fg%23h~i.j_k-l"
        );
        assert_eq!(a.path("ü/€"), "/b/%C3%BC/%E2%82%AC");
        assert_eq!(a.path("a//b"), "/b/a//b");
        assert_eq!(part_query(3, "a/b+c"), "partNumber=3&uploadId=a%2Fb%2Bc");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for endpoint in [
            "http://minio:9000",
            "minio:9000/path",
            "",
            "user@host",
            "a b",
        ] {
            let err = Addressing::new(endpoint, "b", BucketLookupType::Auto, true).unwrap_err();
            assert!(
                err.to_string().contains("s3_proxy.endpoint"),
                "{endpoint}: {err}"
            );
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn parses_s3_error_documents() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match &amp; &lt;so&gt; &#x41;&#66;</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>"#;
        let (code, message) = parse_error_body(body);
        assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            message.as_deref(),
            Some("The request signature we calculated does not match & <so> AB")
        );
        assert_eq!(xml_root(std::str::from_utf8(body).unwrap()), Some("Error"));
        assert_eq!(parse_error_body(b""), (None, None));
        assert_eq!(parse_error_body(b"not xml at all"), (None, None));
        assert_eq!(parse_error_body(b"<Error><Code>Trunc"), (None, None));
        // Longer names sharing a prefix and empty elements.
        assert_eq!(
            xml_element("<CodeX>no</CodeX><Code/><Code>yes</Code>", "Code").as_deref(),
            Some("")
        );
        assert_eq!(
            xml_element("<CodeX>no</CodeX><Code>yes</Code>", "Code").as_deref(),
            Some("yes")
        );
        assert_eq!(
            xml_element(r#"<R xmlns="x"><UploadId>abc</UploadId></R>"#, "UploadId").as_deref(),
            Some("abc")
        );
        assert_eq!(xml_unescape("a &bogus; b & c"), "a &bogus; b & c");
    }

    #[test]
    fn finds_the_root_element() {
        assert_eq!(
            xml_root(
                "<?xml version=\"1.0\"?>\n<!-- c --><CopyObjectResult><ETag>x</ETag></CopyObjectResult>"
            ),
            Some("CopyObjectResult")
        );
        assert_eq!(xml_root("  \n <Error>"), Some("Error"));
        assert_eq!(xml_root("<Error xmlns=\"x\">"), Some("Error"));
        assert_eq!(xml_root(""), None);
    }

    #[test]
    fn error_display_and_classification() {
        let e = S3Error::Status {
            op: "GET",
            key: "p/cas/ab/x".into(),
            status: 403,
            code: Some("AccessDenied".into()),
            message: Some("Access Denied".into()),
        };
        assert_eq!(
            e.to_string(),
            "S3 GET p/cas/ab/x: HTTP 403 Forbidden: AccessDenied: Access Denied"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.status(), Some(403));
        assert_eq!(e.code(), Some("AccessDenied"));
        let status = |status, code: Option<&str>| S3Error::Status {
            op: "PUT",
            key: "k".into(),
            status,
            code: code.map(str::to_owned),
            message: None,
        };
        assert!(status(503, Some("SlowDown")).is_retryable());
        assert!(status(500, None).is_retryable());
        assert!(status(429, None).is_retryable());
        assert!(status(400, Some("RequestTimeout")).is_retryable());
        assert!(status(200, Some("InternalError")).is_retryable());
        assert!(!status(404, Some("NoSuchBucket")).is_retryable());
        assert_eq!(
            status(404, None).to_string(),
            "S3 PUT k: HTTP 404 Not Found"
        );
    }

    #[test]
    fn part_sizes_respect_the_part_count_limit() {
        assert_eq!(part_size_for(100 * MIB, 16 * MIB), 16 * MIB);
        // 1 TiB in 16 MiB parts would be 65,536 parts.
        let size = part_size_for(1024 * 1024 * MIB, 16 * MIB);
        assert!((1024 * 1024 * MIB).div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % MIB, 0);
        assert_eq!(part_size_for(10, 4), 4);
    }

    #[test]
    fn credentials_file_profiles() {
        let text = "# comment\n[default]\naws_access_key_id = AKDEF\naws_secret_access_key=SKDEF\n\n\
                    [ci]\n; c\naws_access_key_id=AKCI\naws_secret_access_key = SKCI\naws_session_token = TOK\n\
                    [broken]\naws_access_key_id=X\n";
        let d = parse_credentials_file(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("AKDEF", "SKDEF")
        );
        assert_eq!(d.session_token, None);
        let ci = parse_credentials_file(text, "ci").unwrap();
        assert_eq!(ci.session_token.as_deref(), Some("TOK"));
        let err = parse_credentials_file(text, "broken").unwrap_err();
        assert!(
            err.contains("aws_secret_access_key") && !err.contains('X'),
            "{err}"
        );
        assert!(
            parse_credentials_file(text, "nope")
                .unwrap_err()
                .contains("[nope]")
        );
        assert_eq!(format!("{d:?}"), "FileCredentials(<redacted>)");
    }

    fn config() -> S3Config {
        S3Config {
            endpoint: "127.0.0.1:9000".into(),
            bucket: "cache".into(),
            prefix: String::new(),
            region: String::new(),
            auth_method: S3AuthMethod::AccessKey,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: "SESSIONTOKEN".into(),
            signature_type: S3SignatureType::V4,
            iam_role_endpoint: String::new(),
            aws_profile: "default".into(),
            aws_shared_credentials_file: None,
            disable_ssl: true,
            bucket_lookup_type: BucketLookupType::Auto,
            max_idle_conns: 4,
            update_timestamps: false,
        }
    }

    #[test]
    fn unsupported_settings_are_refused_by_name() {
        let mut cfg = config();
        cfg.auth_method = S3AuthMethod::IamRole;
        let err = S3Client::new(&cfg).unwrap_err();
        assert!(
            err.to_string().contains("s3_proxy.auth_method iam_role"),
            "{err}"
        );
        let mut cfg = config();
        cfg.signature_type = S3SignatureType::V2;
        let err = S3Client::new(&cfg).unwrap_err();
        assert!(err.to_string().contains("s3_proxy.signature_type"), "{err}");
        let mut cfg = config();
        cfg.auth_method = S3AuthMethod::AwsCredentialsFile;
        cfg.aws_shared_credentials_file = Some("/nonexistent/credentials".into());
        let err = S3Client::new(&cfg).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/credentials"),
            "{err}"
        );
    }

    #[test]
    fn debug_hides_credentials() {
        let client = S3Client::new(&config()).unwrap();
        let debug = format!("{client:?}");
        assert!(debug.contains("127.0.0.1:9000"), "{debug}");
        assert!(debug.contains("us-east-1"), "{debug}");
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI", "SESSIONTOKEN"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn signed_requests_carry_sigv4_headers_but_display_no_secret() {
        let client = S3Client::new(&config()).unwrap();
        let req = client
            .request(
                Op::Get,
                "a b",
                "",
                HeaderMap::new(),
                empty_body(),
                Payload::Bytes(&[]),
            )
            .unwrap();
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
}
