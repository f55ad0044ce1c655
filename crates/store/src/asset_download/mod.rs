//! The Remote Asset API's downloader: fetches a URL with the server's own
//! HTTP(S) client into a temporary file, hashing while it streams (SHA-256
//! for the CAS key, SHA-384/512 for `checksum.sri`), so a large download is
//! never held in memory and is stored from the file afterwards.
//!
//! Limits: a connect timeout, an overall deadline per URL (the request's
//! `timeout` or ours), a size limit (`max_blob_size`: checked against
//! `Content-Length` first, then counted), at most [`MAX_REDIRECTS`]
//! redirects, an origin silent for a minute cut (the one progress guard),
//! at most [`MAX_CONCURRENT_DOWNLOADS`] at once, and the [`AddressPolicy`]
//! against request forgery on every hop.
//!
//! # Layout
//! - `mod.rs`: [`Downloader`], [`Downloaded`], [`DownloadError`].
//! - `address_policy.rs`: which hosts and addresses may be contacted.

mod address_policy;

pub use address_policy::{AddressPolicy, is_global};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bazel_cache_digest::{DigestFunction, Hash, Hasher};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::io::StreamReader;

use crate::progress::ProgressGuard;

use crate::http_transport::{PoolOptions, pooled_client_with_resolver};
use address_policy::CheckedResolver;

/// Redirects followed per URL (Bazel's own downloader follows a few too).
pub const MAX_REDIRECTS: usize = 5;
/// Downloads in progress at once: each holds a temporary file of up to
/// `max_blob_size` and a connection; more are refused, retryably, so no
/// client can tie up the disk or the origin's bandwidth.
pub const MAX_CONCURRENT_DOWNLOADS: usize = 32;
/// An origin that sends nothing for this long is cut.
const STALL: Duration = Duration::from_secs(60);

/// How the downloader connects and where its temporary files go.
#[derive(Debug, Clone)]
pub struct DownloaderOptions {
    pub connect_timeout: Duration,
    /// The whole download of one URL, redirects included, unless the
    /// request names a shorter timeout.
    pub timeout: Duration,
    /// The largest body accepted (`max_blob_size`).
    pub max_size: u64,
    pub temp_dir: PathBuf,
    pub policy: AddressPolicy,
}

/// Why a URL gave no blob; the message goes into the response status.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Refused(String),
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("larger than max_blob_size ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
}

/// All [`MAX_CONCURRENT_DOWNLOADS`] are in progress.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_CONCURRENT_DOWNLOADS} remote asset downloads are in progress; retry later")]
pub struct Busy;

/// The right to download, held for one FetchBlob's downloads.
pub struct DownloadPermit(#[allow(dead_code)] OwnedSemaphorePermit);

/// A downloaded body in a temporary file (removed when dropped) and its
/// hashes: the SRI ones, and its CAS name under the requested function.
#[derive(Debug)]
pub struct Downloaded {
    pub file: TempFile,
    pub size: u64,
    /// The body's hash under the digest function the request named.
    pub hash: Hash,
    pub sha256: [u8; 32],
    pub sha384: [u8; 48],
    pub sha512: [u8; 64],
}

/// A temporary file removed on drop (off the async worker when possible).
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || std::fs::remove_file(path));
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

type DownloadClient = Client<HttpsConnector<HttpConnector<CheckedResolver>>, Empty<Bytes>>;

pub struct Downloader {
    client: DownloadClient,
    opts: DownloaderOptions,
    permits: std::sync::Arc<Semaphore>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Downloader {
    /// The client trusts the operating system's CA store; without one,
    /// https downloads fail (with a message) and http ones still work.
    pub fn new(opts: DownloaderOptions) -> Downloader {
        use hyper_rustls::ConfigBuilderExt;
        let builder = || {
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
        };
        let tls = match builder().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            Err(e) => {
                tracing::warn!(error = %e, "remote asset downloads: no system CA certificates; https fetches will fail");
                builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }
        };
        let client = pooled_client_with_resolver(
            tls,
            PoolOptions {
                connect_timeout: opts.connect_timeout,
                idle_timeout: Duration::from_secs(30),
                max_idle_per_host: 4,
            },
            CheckedResolver {
                policy: opts.policy.clone(),
            },
        );
        Downloader {
            client,
            opts,
            permits: std::sync::Arc::new(Semaphore::new(MAX_CONCURRENT_DOWNLOADS)),
        }
    }

    /// A permit to download, or [`Busy`] at once (no queue to wait in).
    pub fn permit(&self) -> Result<DownloadPermit, Busy> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map(DownloadPermit)
            .map_err(|_| Busy)
    }

    /// Downloads `url` with `headers`, following redirects, within
    /// `timeout` (capped by the configured one); the body is named with
    /// `function`.
    pub async fn download(
        &self,
        _permit: &DownloadPermit,
        url: &str,
        headers: &[(String, String)],
        timeout: Option<Duration>,
        function: DigestFunction,
    ) -> Result<Downloaded, DownloadError> {
        let limit = timeout.map_or(self.opts.timeout, |t| t.min(self.opts.timeout));
        match tokio::time::timeout(limit, self.follow(url, headers, function)).await {
            Ok(result) => result,
            Err(_) => Err(DownloadError::Timeout(limit)),
        }
    }

    async fn follow(
        &self,
        url: &str,
        headers: &[(String, String)],
        function: DigestFunction,
    ) -> Result<Downloaded, DownloadError> {
        let first = parse_url(url)?;
        let mut uri = first.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.opts
                .policy
                .check_host(uri.host().unwrap_or_default())
                .map_err(DownloadError::Refused)?;
            let mut req = http::Request::get(uri.clone());
            // Headers the client gave for this URL go to its host only, not
            // to wherever a redirect points.
            if uri.host() == first.host() {
                for (name, value) in headers {
                    req = req.header(name.as_str(), value.as_str());
                }
            }
            let req = req
                .header(http::header::USER_AGENT, USER_AGENT)
                .body(Empty::new())
                .map_err(|e| DownloadError::BadUrl {
                    url: uri.to_string(),
                    reason: e.to_string(),
                })?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| DownloadError::Transport(bazel_cache_digest::error_chain(&e)))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or(DownloadError::Status(status.as_u16()))?;
                uri = resolve_location(&uri, location)?;
                continue;
            }
            if !status.is_success() {
                return Err(DownloadError::Status(status.as_u16()));
            }
            return self.save(resp.into_body(), function).await;
        }
        Err(DownloadError::TooManyRedirects)
    }

    /// Streams the body into a temporary file, hashing it.
    async fn save(
        &self,
        body: hyper::body::Incoming,
        function: DigestFunction,
    ) -> Result<Downloaded, DownloadError> {
        let limit = self.opts.max_size;
        if http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > limit)
        {
            return Err(DownloadError::TooLarge { limit });
        }
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let file = TempFile {
            path: self
                .opts
                .temp_dir
                .join(format!("bazel-cache-asset-{}-{n}", std::process::id())),
        };
        let out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file.path())
            .await?;
        let mut out = out;
        // An origin that stops sending is cut by the one progress guard.
        let stream = body
            .into_data_stream()
            .map_err(|e| std::io::Error::other(bazel_cache_digest::error_chain(&e)));
        let mut reader =
            ProgressGuard::new(StreamReader::new(stream), STALL, "remote asset download");
        let mut buf = vec![0u8; 256 * 1024];
        let mut hashes = BodyHashes::new(function);
        let mut size = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| DownloadError::Transport(bazel_cache_digest::error_chain(&e)))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(DownloadError::TooLarge { limit });
            }
            // Three or four digests of 256 KiB are a millisecond of CPU:
            // on a blocking thread, not the async worker.
            (hashes, buf) = tokio::task::spawn_blocking(move || {
                hashes.update(&buf[..n]);
                (hashes, buf)
            })
            .await
            .map_err(|e| DownloadError::Transport(e.to_string()))?;
            out.write_all(&buf[..n]).await?;
        }
        out.flush().await?;
        Ok(hashes.finish(file, size))
    }
}

/// The digests a download is checked and named with, fed once per chunk.
struct BodyHashes {
    s256: sha2::Sha256,
    s384: sha2::Sha384,
    s512: sha2::Sha512,
    /// The CAS name's function when it is not SHA-256 (computed for the
    /// SRI check anyway).
    named: Option<Hasher>,
}

impl BodyHashes {
    fn new(function: DigestFunction) -> BodyHashes {
        BodyHashes {
            s256: sha2::Sha256::new(),
            s384: sha2::Sha384::new(),
            s512: sha2::Sha512::new(),
            named: (function != DigestFunction::Sha256).then(|| Hasher::new(function)),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.s256.update(data);
        self.s384.update(data);
        self.s512.update(data);
        if let Some(h) = self.named.as_mut() {
            h.update(data);
        }
    }

    fn finish(self, file: TempFile, size: u64) -> Downloaded {
        let sha256 = array(&self.s256.finalize());
        Downloaded {
            file,
            size,
            hash: self.named.map_or(Hash::sha256(sha256), Hasher::finish),
            sha256,
            sha384: array(&self.s384.finalize()),
            sha512: array(&self.s512.finalize()),
        }
    }
}

fn array<const N: usize>(digest: &[u8]) -> [u8; N] {
    digest
        .try_into()
        .expect("digest length matches its algorithm")
}

/// Sent with every download, so an origin's log shows the cache fetched.
pub const USER_AGENT: &str = concat!("bazel-cache/", env!("CARGO_PKG_VERSION"), " remote-asset");

fn parse_url(url: &str) -> Result<http::Uri, DownloadError> {
    let bad = |reason: &str| DownloadError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("only http and https URLs are fetched")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// A `Location` header, absolute or relative to the URL that sent it.
fn resolve_location(base: &http::Uri, location: &str) -> Result<http::Uri, DownloadError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return parse_url(location);
    }
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let scheme = base.scheme_str().unwrap_or("http");
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    parse_url(&format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_redirects_resolve_against_the_url() {
        let base: http::Uri = "http://h:1/a/b?x".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/c").unwrap().to_string(),
            "http://h:1/c"
        );
        assert_eq!(
            resolve_location(&base, "c").unwrap().to_string(),
            "http://h:1/a/c"
        );
        assert_eq!(
            resolve_location(&base, "https://o/p").unwrap().to_string(),
            "https://o/p"
        );
        assert!(parse_url("file:///etc/passwd").is_err());
    }
}
