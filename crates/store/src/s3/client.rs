//! A small S3 client of our own: just the five calls the S3 proxy needs
//! (HEAD, GET, PUT of a file, multipart upload for large files, and a
//! "touch" that refreshes an object's Last-Modified), on the hyper-util
//! connection pool, with requests signed by `aws-sigv4`. No AWS SDK.
//!
//! This file is the client's face: [`S3Client`], its construction and
//! tuning ([`S3ClientOptions`]), and the single-request operations. The
//! rest is one idea per file, all private to `s3/`:
//!
//! - `addressing.rs`: URLs, virtual-host vs path style, key encoding
//! - `transport.rs`: the hyper connection pool (connector, TLS, pool)
//! - `exchange.rs`: the one request/response path of every operation
//!   (signing, sending, timeouts, error classification, metrics)
//! - `signing.rs`, `credentials.rs`: SigV4 and where its keys come from
//! - `body.rs`: upload bodies and bounded answer reads
//! - `multipart.rs`: uploads in parts, for large files
//! - `xml.rs`, `error.rs`, `stats.rs`: answers, errors, request metrics
//!
//! `auth_method: access_key` (static keys, optional session token) and
//! `aws_credentials_file` (a profile of an AWS shared credentials file, read
//! once at start-up) are supported; `iam_role` is refused by [`S3Client::new`].
//! `signature_type: v4` and `v4streaming` both sign with SigV4; `anonymous`
//! sends unsigned requests; `v2` is refused.
//!
//! The client does not retry on its own except for individual parts of a
//! multipart upload ([`S3ClientOptions::part_attempts`]); callers decide with
//! [`S3Error::is_retryable`].

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;

use super::addressing::Addressing;
use super::config::S3Config;
use super::exchange::{Call, Op, header_value, protocol};
use super::signing::Signer;
use super::transport::{HttpClient, http_client};
use crate::BlobReader;
use crate::progress::ProgressGuard;

pub use super::error::S3Error;
pub use super::stats::S3RequestStats;

pub(super) const MIB: u64 = 1024 * 1024;
/// S3's limit for a single PUT: 5 GiB.
const MAX_SINGLE_PUT: u64 = 5 * 1024 * MIB;
pub(super) const CONTENT_TYPE_BLOB: &str = "application/octet-stream";

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

/// A cheap-to-clone S3 client for one bucket.
#[derive(Clone)]
pub struct S3Client {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: HttpClient,
    pub(super) addr: Addressing,
    pub(super) signer: Signer,
    pub(super) opts: S3ClientOptions,
    pub(super) stats: S3RequestStats,
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
        let signer = Signer::from_config(cfg)?;
        if opts.multipart_part_size == 0
            || opts.multipart_concurrency == 0
            || opts.part_attempts == 0
        {
            return Err(S3Error::Config(
                "multipart part size, concurrency and attempts must be at least 1".to_owned(),
            ));
        }
        let http = http_client(cfg.disable_ssl, cfg.max_idle_conns, &opts)?;
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
        let call = Call::new(Op::Head, key).accept(&[StatusCode::OK, StatusCode::NOT_FOUND]);
        self.exchange(call, |answer| async move {
            if answer.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            content_length(answer.headers())
                .map(Some)
                .ok_or_else(|| protocol(Op::Head, key, "no Content-Length in the answer"))
        })
        .await
    }

    /// Opens the object for streaming, or `None` if it doesn't exist
    /// (404 `NoSuchKey`; a 404 with another code, e.g. `NoSuchBucket`, is
    /// an error).
    pub async fn get(&self, key: &str) -> Result<Option<S3Object>, S3Error> {
        let stall_timeout = self.inner.opts.stall_timeout;
        let call = Call::new(Op::Get, key).accept(&[StatusCode::OK, StatusCode::NOT_FOUND]);
        self.exchange(call, |answer| async move {
            if answer.status() == StatusCode::NOT_FOUND {
                let err = answer.into_error().await;
                return match err.code() {
                    None | Some("NoSuchKey") => Ok(None),
                    Some(_) => Err(err),
                };
            }
            let len = content_length(answer.headers());
            let stream = answer
                .into_body()
                .into_data_stream()
                .map_err(io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            Ok(Some(S3Object {
                len,
                body: Box::pin(ProgressGuard::new(reader, stall_timeout, "S3 GET")),
            }))
        })
        .await
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
        let call = Call::new(Op::Copy, key)
            .header(
                HeaderName::from_static("x-amz-copy-source"),
                header_value(&self.inner.addr.copy_source(key)),
            )
            .header(
                HeaderName::from_static("x-amz-metadata-directive"),
                HeaderValue::from_static("REPLACE"),
            )
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_BLOB),
            )
            .header(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        self.exchange(call, |answer| async move {
            answer.checked_xml().await.map(drop)
        })
        .await
    }

    async fn put_single(&self, key: &str, file: Arc<File>, len: u64) -> Result<(), S3Error> {
        let call = Call::new(Op::Put, key).file_body(file, 0, len).header(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_BLOB),
        );
        self.exchange(call, |answer| async move {
            // Drain the (empty) body so the connection goes back to the pool.
            answer.xml().await.map(drop)
        })
        .await
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A configuration for unit tests: path style on 127.0.0.1:9000 with
/// static keys and a session token.
#[cfg(test)]
pub(super) fn test_config() -> S3Config {
    use super::config::{BucketLookupType, S3AuthMethod, S3SignatureType};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::config::{S3AuthMethod, S3SignatureType};

    #[test]
    fn unsupported_settings_are_refused_by_name() {
        let mut cfg = test_config();
        cfg.auth_method = S3AuthMethod::IamRole;
        let err = S3Client::new(&cfg).unwrap_err();
        assert!(
            err.to_string().contains("s3_proxy.auth_method iam_role"),
            "{err}"
        );
        let mut cfg = test_config();
        cfg.signature_type = S3SignatureType::V2;
        let err = S3Client::new(&cfg).unwrap_err();
        assert!(err.to_string().contains("s3_proxy.signature_type"), "{err}");
        let mut cfg = test_config();
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
        let client = S3Client::new(&test_config()).unwrap();
        let debug = format!("{client:?}");
        assert!(debug.contains("127.0.0.1:9000"), "{debug}");
        assert!(debug.contains("us-east-1"), "{debug}");
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI", "SESSIONTOKEN"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
