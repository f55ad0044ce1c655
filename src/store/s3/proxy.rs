//! The S3 proxy store: the local disk store in front of a shared bucket.
//!
//! - Reads: a local miss asks S3; a hit is verified (CAS hash, by the disk
//!   store's normal write path) and stored locally, then served from disk.
//!   Concurrent misses for one key share one download.
//! - Writes: acknowledged once on local disk and durably queued; uploaded
//!   later by `num_uploaders` workers (write-behind, see queue.rs).
//! - S3 trouble never fails a client request: errors and timeouts of the
//!   backend make a read a miss and leave writes queued.
//! - Local eviction never deletes from S3.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::casblob;
use super::client::{S3Client, S3Error};
use super::keys::object_key;
use super::queue::{UploadQueue, backoff};
use crate::digest::{BlobKey, Digest, Kind};
use crate::store::disk::{DiskStore, Written};
use crate::store::{Blob, Encoding, PutRequest, Store, StoreError, StoreStats};

/// Why an upload attempt failed.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    S3(#[from] S3Error),
    /// Reading or re-encoding the local copy failed (disk trouble): retried.
    #[error("preparing the upload: {0}")]
    Local(String),
}

impl UploadError {
    fn is_retryable(&self) -> bool {
        match self {
            UploadError::S3(e) => e.is_retryable(),
            UploadError::Local(_) => true,
        }
    }
}

fn local(e: impl std::fmt::Display) -> UploadError {
    UploadError::Local(e.to_string())
}

/// How many S3 HEAD requests one FindMissingBlobs may have in flight.
const HEAD_CONCURRENCY: usize = 32;
/// Attempts for an upload that S3 refuses with a 4xx before it is abandoned.
const MAX_CLIENT_ERROR_ATTEMPTS: u32 = 3;

/// Settings of the proxy, from the validated config.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub prefix: String,
    /// zstd storage mode: CAS objects use bazel-remote's `cas.v2` layout.
    pub casblob: bool,
    pub update_timestamps: bool,
    pub num_uploaders: usize,
    pub max_queued_uploads: usize,
    pub max_proxy_blob_size: u64,
}

/// Backend counters (bazel-remote's `bazel_remote_s3_cache_hits`/`misses`
/// and ours), read without locks.
#[derive(Debug, Default)]
pub struct S3Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Failed S3 requests (network, timeouts, 5xx and 4xx other than 404).
    pub errors: AtomicU64,
    /// Objects whose bytes did not match their digest: never served.
    pub corrupt: AtomicU64,
}

pub struct S3ProxyStore {
    local: Arc<DiskStore>,
    s3: S3Client,
    cfg: ProxyConfig,
    queue: Arc<UploadQueue>,
    inflight: Mutex<HashMap<BlobKey, Arc<OnceCell<bool>>>>,
    pub stats: Arc<S3Stats>,
    /// S3 error codes already logged, so a bad credential is reported once,
    /// not once per upload.
    reported: Mutex<std::collections::HashSet<String>>,
    attempts: Mutex<HashMap<BlobKey, u32>>,
}

impl S3ProxyStore {
    /// Wraps `local`, opens the persisted upload queue in `dir` and starts
    /// the uploaders (which resume what a previous run left queued).
    pub fn start(
        local: Arc<DiskStore>,
        s3: S3Client,
        cfg: ProxyConfig,
        dir: &std::path::Path,
    ) -> Result<Arc<Self>, StoreError> {
        let queue = Arc::new(UploadQueue::open(dir, cfg.max_queued_uploads)?);
        let store = Arc::new(S3ProxyStore {
            local,
            s3,
            cfg,
            queue,
            inflight: Mutex::default(),
            stats: Arc::default(),
            reported: Mutex::default(),
            attempts: Mutex::default(),
        });
        for _ in 0..store.cfg.num_uploaders.max(1) {
            let weak = Arc::downgrade(&store);
            let queue = store.queue.clone();
            let local = store.local.clone();
            tokio::spawn(async move {
                // After a crash the index learns of recent blobs only when
                // recovery adopts their files: until then an upload would
                // find its blob "gone" and be abandoned.
                local.recovered().await;
                drop(local);
                while let Some(key) = queue.next().await {
                    let Some(store) = weak.upgrade() else { break };
                    store.upload_with_retries(key).await;
                }
            });
        }
        Ok(store)
    }

    pub fn queue_stats(&self) -> &super::queue::QueueStats {
        &self.queue.stats
    }

    /// Outcomes and latencies of the S3 requests made so far (metrics).
    pub fn request_stats(&self) -> &super::client::S3RequestStats {
        self.s3.request_stats()
    }

    /// `max_queued_uploads`: the queue length at which uploads are dropped.
    pub fn max_queued_uploads(&self) -> usize {
        self.cfg.max_queued_uploads
    }

    /// Counters for `/status` (never credentials).
    pub fn status_json(&self) -> serde_json::Value {
        let q = &self.queue.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "Type": "s3",
            "Hits": n(&self.stats.hits),
            "Misses": n(&self.stats.misses),
            "Errors": n(&self.stats.errors),
            "CorruptObjects": n(&self.stats.corrupt),
            "UploadsPending": n(&q.pending),
            "UploadsDone": n(&q.uploaded),
            "UploadsDroppedQueueFull": n(&q.dropped_full),
            "UploadsAbandoned": n(&q.abandoned),
            "UploadRetries": n(&q.retries),
        })
    }

    fn object(&self, key: &BlobKey) -> String {
        object_key(&self.cfg.prefix, key, self.cfg.casblob)
    }

    fn note_error(&self, what: &str, key: &str, e: &S3Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let first = e
            .code()
            .map(|c| {
                self.reported
                    .lock()
                    .expect("reported lock")
                    .insert(c.to_string())
            })
            .unwrap_or(true);
        if first || e.is_retryable() {
            tracing::warn!(%what, object = key, error = %e, "S3 request failed");
        }
    }

    /// Downloads `key` from S3 into the local store, once per key at a time.
    async fn fetch(&self, key: BlobKey) -> bool {
        let cell = {
            let mut map = self.inflight.lock().expect("inflight lock");
            map.entry(key).or_default().clone()
        };
        let found = *cell.get_or_init(|| self.fetch_once(key)).await;
        let mut map = self.inflight.lock().expect("inflight lock");
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        found
    }

    async fn fetch_once(&self, key: BlobKey) -> bool {
        let object = self.object(&key);
        let obj = match self.s3.get(&object).await {
            Ok(Some(obj)) => obj,
            Ok(None) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Err(e) => {
                self.note_error("GET", &object, &e);
                return false;
            }
        };
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        if obj
            .len
            .is_some_and(|len| len > self.cfg.max_proxy_blob_size)
        {
            tracing::info!(object, "object exceeds max_proxy_blob_size; not fetched");
            return false;
        }
        let casblob = key.kind == Kind::Cas && self.cfg.casblob;
        let (size, body) = if casblob {
            (None, casblob::decoder(obj.body))
        } else {
            (obj.len, obj.body)
        };
        let put = PutRequest {
            key,
            size,
            encoding: Encoding::Identity,
            body,
        };
        match self.local.put(put).await {
            Ok(()) => {
                if self.cfg.update_timestamps {
                    let s3 = self.s3.clone();
                    tokio::spawn(async move {
                        if let Err(e) = s3.touch(&object).await {
                            tracing::debug!(object, error = %e, "refreshing the object's timestamp failed");
                        }
                    });
                }
                true
            }
            Err(e) if e.is_client_error() => {
                // A corrupt or truncated object: the disk store verified it and
                // stored nothing. Never served; the next writer replaces it.
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::error!(object, error = %e, "object in S3 does not match its digest; ignored");
                false
            }
            Err(e) => {
                tracing::warn!(object, error = %e, "storing a downloaded blob locally failed");
                false
            }
        }
    }

    async fn upload_with_retries(&self, key: BlobKey) {
        let object = self.object(&key);
        match self.upload(&key, &object).await {
            Ok(true) => {
                self.queue.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                self.forget_attempts(&key);
                self.queue.done(key).await;
            }
            Ok(false) => {
                // Evicted locally before it could be uploaded.
                self.queue.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                self.forget_attempts(&key);
                self.queue.done(key).await;
            }
            Err(e) => {
                match &e {
                    UploadError::S3(s3) => self.note_error("PUT", &object, s3),
                    UploadError::Local(_) => {
                        tracing::warn!(object, error = %e, "upload not attempted")
                    }
                }
                let attempt = {
                    let mut a = self.attempts.lock().expect("attempts lock");
                    let n = a.entry(key).or_default();
                    *n += 1;
                    *n
                };
                if !e.is_retryable() && attempt >= MAX_CLIENT_ERROR_ATTEMPTS {
                    tracing::error!(object, error = %e, "S3 keeps refusing this upload; giving up on it");
                    self.queue.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                    self.forget_attempts(&key);
                    self.queue.done(key).await;
                    return;
                }
                self.queue.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt.saturating_sub(1))).await;
                self.queue.retry_later(key);
            }
        }
    }

    fn forget_attempts(&self, key: &BlobKey) {
        self.attempts.lock().expect("attempts lock").remove(key);
    }

    /// Uploads one blob from its local file; `Ok(false)` when it is no longer
    /// stored locally.
    async fn upload(&self, key: &BlobKey, object: &str) -> Result<bool, UploadError> {
        let opened = self.local.open_blob(key).map_err(local)?;
        let Some((file, encoding, size)) = opened else {
            return Ok(false);
        };
        let casblob = key.kind == Kind::Cas && self.cfg.casblob;
        if !casblob && encoding == Encoding::Identity {
            let len = file.metadata().map_err(local)?.len();
            self.s3.put_file(object, Arc::new(file), len).await?;
            return Ok(true);
        }
        // Re-encode into a scratch file: bazel-remote's casblob format, or
        // plain bytes from a zstd-stored blob.
        let scratch = self.local.scratch_path();
        let spool = scratch.clone();
        let spooled = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, u64)> {
            let mut input: Box<dyn io::Read> = match encoding {
                Encoding::Identity => Box::new(file),
                Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
            };
            let mut out = std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&spool)?;
            let len = if casblob {
                casblob::encode(&mut input, size, &mut out)?
            } else {
                io::copy(&mut input, &mut out)?
            };
            Ok((out, len))
        })
        .await
        .map_err(local)
        .and_then(|r| r.map_err(local));
        let result = match spooled {
            Ok((out, len)) => self
                .s3
                .put_file(object, Arc::new(out), len)
                .await
                .map(|()| true)
                .map_err(UploadError::from),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&scratch).await;
        result
    }

    /// Whether S3 holds the blob (HEAD only). In `cas.v2` layout the object
    /// length is the encoded size, so only presence can be checked.
    async fn in_s3(&self, d: &Digest) -> bool {
        let object = self.object(&BlobKey::cas(d.hash));
        match self.s3.head(&object).await {
            Ok(Some(len)) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.cfg.casblob || len == d.size
            }
            Ok(None) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(e) => {
                self.note_error("HEAD", &object, &e);
                false
            }
        }
    }
}

#[async_trait]
impl Store for S3ProxyStore {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        if let Some(blob) = self.local.get(key, accept_zstd).await? {
            return Ok(Some(blob));
        }
        if !self.fetch(*key).await {
            return Ok(None);
        }
        self.local.get(key, accept_zstd).await
    }

    /// A blob only in S3 is fetched here: callers of `contains` want its
    /// logical size, which a `cas.v2` object does not tell without reading.
    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        if let Some(size) = self.local.contains(key).await? {
            return Ok(Some(size));
        }
        if !self.fetch(*key).await {
            return Ok(None);
        }
        self.local.contains(key).await
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let locally_missing = self.local.find_missing(digests).await?;
        let checks = futures_util::stream::iter(locally_missing)
            .map(|d| async move { (d, self.in_s3(&d).await) })
            .buffered(HEAD_CONCURRENCY);
        Ok(checks
            .filter_map(|(d, found)| async move { (!found).then_some(d) })
            .collect()
            .await)
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        let key = req.key;
        if self.local.put_blob(req).await? == Written::AlreadyPresent {
            return Ok(());
        }
        if !self.queue.add(key).await? {
            let dropped = self.queue.stats.dropped_full.load(Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(%key, dropped, "upload queue full (max_queued_uploads): blob kept locally only");
            }
        }
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        self.local.stats()
    }
}
