//! Storage for bazel-cache: the [`Store`] trait every protocol front end
//! talks to, and the stores behind it.
//!
//! [`Store`] is deliberately small (get, contains, find_missing, put, stats)
//! and streams bodies both ways, so the HTTP and gRPC front ends hold no
//! storage logic, and a proxy over a remote [`Backend`](proxy::Backend)
//! wraps the disk store behind the same trait.
//!
//! # Layout
//! - `lib.rs`: the [`Store`] trait, [`Blob`], [`PutRequest`], [`StoreError`].
//! - `action_result.rs`: what a valid `ActionResult` is, and whether a cached
//!   one is complete (every blob it names is present).
//! - `empty_blob.rs`: the empty-blob rule, a decorator above every store.
//! - `file_chunks.rs`: [`BlobFile`], a stored file sent in chunks read
//!   straight into the buffers the front ends send.
//! - `nowait.rs`: opening and reading a file on the async worker when the
//!   kernel's caches allow it without blocking.
//! - `put_body.rs`: [`PutBody`], an upload as a reader or as the chunks the
//!   transport already holds (written without another copy).
//! - `progress.rs`: the one guard that cuts a body that stops sending or
//!   sends too slowly, and the counts of cut uploads.
//! - `histogram.rs`: lock-free latency histograms the store records and the
//!   server exports.
//! - `budget.rs`: the memory budget (`max_buffer_memory`) that decoders,
//!   upload buffers and read buffers reserve from.
//! - `zstd_frame.rs`, `zstd_decode.rs`: zstd frame headers read ahead of
//!   the decoder; the one decoder, its window capped, its memory reserved.
//! - `secret.rs`: [`Secret`], credentials that never print.
//! - `chunking/`: FastCDC 2020 and the storage half of REAPI's SplitBlob
//!   and SpliceBlob (chunks and spliced blobs are ordinary CAS blobs).
//! - `disk/`: files plus a redb index, LRU eviction, crash recovery,
//!   adopting a bazel-remote `dir` in place; the local tier of every
//!   configuration.
//! - `proxy/`: read-through, durable write-behind queue and single-flight
//!   downloads over any [`Backend`](proxy::Backend); the presence cache (a
//!   `Backend` decorator) and timestamp refreshes on every use.
//! - `s3/`: the S3/MinIO backend (our own client on hyper, aws-sigv4).
//! - `http_proxy.rs`, `grpc_proxy/`: another cache as the backend, over
//!   bazel-remote's HTTP protocol or REAPI (migrating from bazel-remote);
//!   `backend_url.rs` their shared settings (URL, basic auth, TLS files).
//! - `http_transport.rs`: the one hyper client pool builder (S3, HTTP).
//! - `asset_download/`: the Remote Asset API's downloader (timeouts, size
//!   limit, redirects, SSRF address policy), streaming to a temporary file
//!   while hashing.
//!
//! This crate knows nothing of the server's configuration or metrics: each
//! store owns its config type (`DiskConfig`, `ProxyConfig`, `S3Config`) and
//! exposes counters that the server reads.

pub mod action_result;
pub mod asset_download;
pub mod backend_url;
pub mod budget;
pub mod chunking;
pub mod disk;
mod empty_blob;
mod file_chunks;
pub mod grpc_proxy;
pub mod histogram;
pub mod http_proxy;
mod http_transport;
pub(crate) mod nowait;
mod progress;
pub mod proxy;
mod put_body;
pub mod s3;
mod secret;
pub mod zstd_decode;
pub mod zstd_frame;

pub use empty_blob::{EmptyBlob, is_empty_blob};
pub use file_chunks::BlobFile;
pub use progress::{CutCounts, CutReason, cut_reason};
pub use put_body::{BlobChunks, PutBody};
pub use secret::Secret;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use bazel_cache_digest::{BlobKey, Digest, Hash};

/// A body being read or written. Boxed so stores and front ends can hand each
/// other files, decoders or network streams without sharing concrete types.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// How the bytes of a body are encoded. Digests and sizes always refer to the
/// identity (uncompressed) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    /// A standard zstd stream (RFC 8878), one or more frames.
    Zstd,
}

/// A blob found in the store, ready to stream.
pub struct Blob {
    /// Logical (uncompressed) size in bytes.
    pub size: u64,
    /// Encoding of `body`: zstd only when the caller accepted it.
    pub encoding: Encoding,
    /// Exact number of bytes `body` yields, when known (always for identity).
    pub body_len: Option<u64>,
    pub body: BlobBody,
}

/// A found blob's bytes: in memory when the store read them in one go
/// (small files: one hand-off to a blocking thread instead of one per
/// open, stat and read), else a stream.
pub enum BlobBody {
    /// Every byte of the body. A front end sends it as is.
    Bytes(bytes::Bytes),
    /// A stored file to send as it is, in chunks read straight into the
    /// buffers sent ([`BlobFile::into_chunks`]).
    File(BlobFile),
    Stream(BlobReader),
}

impl BlobBody {
    /// The body as a stream, whichever form it has.
    pub fn into_reader(self) -> BlobReader {
        match self {
            BlobBody::Bytes(b) => Box::pin(std::io::Cursor::new(b)),
            BlobBody::File(f) => f.into_reader(),
            BlobBody::Stream(r) => r,
        }
    }
}

/// A write into the store. The store hashes while it copies and makes the
/// blob visible only once the content matches (`Kind::Cas`) and the size
/// matches `size` (when given).
pub struct PutRequest {
    pub key: BlobKey,
    /// Declared logical size, if the client declared one.
    pub size: Option<u64>,
    /// Encoding of `body`; zstd bodies are decoded before hashing.
    pub encoding: Encoding,
    pub body: PutBody,
}

/// What a store holds, for `/status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes the entries take on disk (compressed where stored compressed).
    pub stored_bytes: u64,
    /// Sum of logical (uncompressed) sizes.
    pub logical_bytes: u64,
    /// Bytes reserved by writes in flight.
    pub reserved_bytes: u64,
    pub max_bytes: u64,
    pub entries: u64,
    /// Bytes removed by LRU eviction since start.
    pub evicted_bytes: u64,
    /// Bytes replaced by writes of a key that already existed, since start.
    pub overwritten_bytes: u64,
}

/// Why a store operation failed, with what a client needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("content hash mismatch: the request names {expected} but the body hashes to {actual}")]
    DigestMismatch { expected: Hash, actual: Hash },
    #[error("size mismatch: {expected} bytes declared, {actual} bytes received")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("blob of {size} bytes exceeds max_blob_size ({limit} bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("blob of {size} bytes cannot fit in a cache of {capacity} bytes")]
    InsufficientStorage { size: u64, capacity: u64 },
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// Reading the client's body failed (disconnect, bad framing, bad zstd).
    #[error("reading request body: {0}")]
    Body(#[source] io::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("index error: {0}")]
    Index(String),
    #[error("store is shutting down")]
    Closed,
    /// Another process holds the index (a previous instance still stopping,
    /// or a second server pointed at the same `dir`).
    #[error("{} is in use by another process", .0.display())]
    Locked(std::path::PathBuf),
    /// Every write slot (`max_concurrent_writes`) stayed taken while the
    /// write waited: the client should retry (HTTP 503, gRPC UNAVAILABLE).
    #[error("server busy: {writes} writes already in progress; retry later")]
    Busy { writes: usize },
    /// The memory budget (`max_buffer_memory`) stayed full while the
    /// request waited for buffers: the client should retry (HTTP 503, gRPC
    /// RESOURCE_EXHAUSTED).
    #[error(transparent)]
    MemoryExhausted(#[from] budget::MemoryExhausted),
}

impl StoreError {
    /// A failed read of a client's body: a zstd frame refused before it
    /// was decoded becomes [`StoreError::InvalidBody`], a decoder refused
    /// memory [`StoreError::MemoryExhausted`]; anything else stays
    /// [`StoreError::Body`].
    pub fn body(e: io::Error) -> StoreError {
        if let Some(inner) = e.get_ref() {
            if let Some(refusal) = inner.downcast_ref::<zstd_frame::FrameError>() {
                return StoreError::InvalidBody(refusal.to_string());
            }
            if let Some(exhausted) = inner.downcast_ref::<budget::MemoryExhausted>() {
                return StoreError::MemoryExhausted(exhausted.clone());
            }
        }
        StoreError::Body(e)
    }

    /// True when the client sent something wrong (HTTP 4xx, gRPC INVALID_ARGUMENT).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::DigestMismatch { .. }
                | StoreError::SizeMismatch { .. }
                | StoreError::TooLarge { .. }
                | StoreError::InvalidBody(_)
                | StoreError::Body(_)
        )
    }

    /// Disk full or blob larger than the cache (HTTP 507, gRPC RESOURCE_EXHAUSTED).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::InsufficientStorage { .. } => true,
            StoreError::Io(e) => e.raw_os_error() == Some(28), // ENOSPC
            _ => false,
        }
    }
}

/// Reads a whole blob into memory — only for small metadata blobs
/// (ActionResults, Trees, batch reads), bounded by `limit`.
/// `Ok(None)` when absent; `TooLarge` when bigger than `limit`.
pub async fn read_all(
    store: &dyn Store,
    key: &BlobKey,
    limit: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    use tokio::io::AsyncReadExt;
    let Some(blob) = store.get(key, false).await? else {
        return Ok(None);
    };
    if blob.size > limit {
        return Err(StoreError::TooLarge {
            size: blob.size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(blob.size as usize);
    blob.body
        .into_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > limit {
        return Err(StoreError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(Some(bytes))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A blob store with an action cache and a content-addressable storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Opens a blob for reading. `accept_zstd` lets the store hand out its
    /// compressed bytes as they are instead of decompressing them.
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError>;

    /// The logical size of a blob, if present.
    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError>;

    /// The CAS digests the store lacks (or holds with another size), in
    /// request order. Stores override it to answer a batch in one pass.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let mut missing = Vec::new();
        for d in digests {
            if self.contains(&BlobKey::cas(d.hash)).await? != Some(d.size) {
                missing.push(*d);
            }
        }
        Ok(missing)
    }

    /// Streams a blob in. On success the blob is durable (as configured) and
    /// visible to readers; on any error nothing is stored.
    async fn put(&self, req: PutRequest) -> Result<(), StoreError>;

    fn stats(&self) -> StoreStats;
}

/// The workspace's one mutex poison policy (see `bazel_cache_digest::lock`).
pub use bazel_cache_digest::lock;

/// A shared store is a store: lets decorators wrap `Arc<dyn Store>` and
/// `Arc<DiskStore>` alike.
#[async_trait]
impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        (**self).get(key, accept_zstd).await
    }

    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        (**self).contains(key).await
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        (**self).find_missing(digests).await
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        (**self).put(req).await
    }

    fn stats(&self) -> StoreStats {
        (**self).stats()
    }
}
