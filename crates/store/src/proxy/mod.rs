//! The proxy store: the local store in front of a remote [`Backend`]
//! shared by every replica (bazel-remote's proxy layer).
//!
//! - Reads: a local miss asks the backend; what it returns is verified (CAS
//!   hash, by the local store's normal write path) and stored locally, then
//!   served from disk. Concurrent misses for one key share one download
//!   (`single_flight.rs`).
//! - Writes: acknowledged once on local disk and durably queued
//!   (`queue.rs`); uploaded later by `num_uploaders` workers (write-behind),
//!   an AC entry only after the blobs it references (`ordering.rs`,
//!   `waits.rs`).
//! - Backend trouble never fails a client request: errors and timeouts make
//!   a read a miss and leave writes queued.
//! - Local eviction never deletes from the backend.
//! - Existence answers may be cached (`presence_cache.rs`, a `Backend`
//!   decorator the server applies); with `update_timestamps`, every use of a
//!   blob refreshes its object's age in the background, at most once per
//!   interval (`timestamp_refresh.rs`).

mod backend;
pub(crate) mod expiring_map;
mod local;
mod ordering;
mod presence_cache;
mod queue;
mod single_flight;
mod timestamp_refresh;
mod waits;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bazel_cache_digest::{BlobKey, Digest};
use futures_util::StreamExt;

pub use backend::{Backend, BackendError, Download, Presence, Upload};
pub use local::{LocalTier, Written};
pub use ordering::DEFAULT_AC_OUTPUT_CHECKS;
use ordering::UploadOrder;
pub use presence_cache::{PresenceCache, PresenceCacheConfig, PresenceStats};
use queue::UploadQueue;
pub use queue::{QueueStats, backoff};
use single_flight::SingleFlight;
pub use timestamp_refresh::{RefreshStats, TimestampRefresh};

use crate::{Blob, Encoding, PutRequest, Store, StoreError, StoreStats, lock};

/// How many HEAD requests one FindMissingBlobs may have in flight.
const HEAD_CONCURRENCY: usize = 32;
/// Attempts for an upload that the backend refuses for good (an S3 4xx)
/// before it is abandoned.
const MAX_CLIENT_ERROR_ATTEMPTS: u32 = 3;

/// Settings of the proxy layer (any backend).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub update_timestamps: bool,
    /// The least time between two refreshes of one object's timestamp.
    pub update_timestamps_interval: Duration,
    pub num_uploaders: usize,
    pub max_queued_uploads: usize,
    pub max_proxy_blob_size: u64,
    /// Checks of an AC entry whose blobs are in neither the backend nor
    /// the queue before it is abandoned ([`DEFAULT_AC_OUTPUT_CHECKS`]).
    pub ac_output_checks: u32,
}

/// Backend counters (bazel-remote's `bazel_remote_s3_cache_hits`/`misses`
/// and ours), read without locks.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Failed backend requests (network, timeouts, server errors).
    pub errors: AtomicU64,
    /// Objects whose bytes did not match their digest: never served.
    pub corrupt: AtomicU64,
}

pub struct ProxyStore {
    local: Arc<dyn LocalTier>,
    backend: Arc<dyn Backend>,
    cfg: ProxyConfig,
    queue: Arc<UploadQueue>,
    downloads: SingleFlight,
    pub stats: Arc<ProxyStats>,
    /// Error codes already logged, so a bad credential is reported once,
    /// not once per upload.
    reported: Mutex<HashSet<String>>,
    attempts: Mutex<HashMap<BlobKey, u32>>,
    order: UploadOrder,
    /// `update_timestamps`: refreshes the objects of blobs in use.
    refresh: Option<TimestampRefresh>,
}

impl ProxyStore {
    /// Wraps `local`, opens the persisted upload queue in `dir` and starts
    /// the uploaders (which resume what a previous run left queued).
    pub fn start(
        local: Arc<dyn LocalTier>,
        backend: Arc<dyn Backend>,
        cfg: ProxyConfig,
        dir: &std::path::Path,
    ) -> Result<Arc<Self>, StoreError> {
        let queue = Arc::new(UploadQueue::open(dir, cfg.max_queued_uploads)?);
        let refresh = cfg
            .update_timestamps
            .then(|| TimestampRefresh::start(backend.clone(), cfg.update_timestamps_interval));
        let store = Arc::new(ProxyStore {
            local,
            backend,
            cfg,
            queue,
            downloads: SingleFlight::default(),
            stats: Arc::default(),
            reported: Mutex::default(),
            attempts: Mutex::default(),
            order: UploadOrder::default(),
            refresh,
        });
        for _ in 0..store.cfg.num_uploaders.max(1) {
            let weak = Arc::downgrade(&store);
            let queue = store.queue.clone();
            let local = store.local.clone();
            tokio::spawn(async move {
                local.recovered().await;
                drop(local);
                while let Some(key) = queue.next().await {
                    let Some(store) = weak.upgrade() else { break };
                    if store.ready_to_upload(key).await {
                        store.upload_with_retries(key).await;
                    }
                }
            });
        }
        Ok(store)
    }

    pub fn queue_stats(&self) -> &QueueStats {
        &self.queue.stats
    }

    /// At shutdown: lets the uploaders work while they make progress, for at
    /// most `limit`, so a replica whose disk goes with it (a Kubernetes
    /// emptyDir) leaves as little as possible only in its queue. Returns
    /// the uploads still queued (they resume at the next start on this dir).
    pub async fn finish_uploads(&self, limit: std::time::Duration) -> u64 {
        const STALLED: std::time::Duration = std::time::Duration::from_secs(2);
        let q = &self.queue.stats;
        let finished = || q.uploaded.load(Ordering::Relaxed) + q.abandoned.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + limit;
        let (mut seen, mut progress_at) = (finished(), tokio::time::Instant::now());
        loop {
            let pending = q.pending.load(Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            if pending == 0 || now >= deadline || now >= progress_at + STALLED {
                return pending;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if finished() != seen {
                (seen, progress_at) = (finished(), tokio::time::Instant::now());
            }
        }
    }

    /// `max_queued_uploads`: the queue length at which uploads are dropped.
    pub fn max_queued_uploads(&self) -> usize {
        self.cfg.max_queued_uploads
    }

    /// The timestamp refresher's counters (with `update_timestamps`).
    pub fn refresh_stats(&self) -> Option<&RefreshStats> {
        self.refresh.as_ref().map(|r| &*r.stats)
    }

    /// A use of `key`: refresh its object's age (with `update_timestamps`),
    /// in the background, at most once per interval.
    fn used(&self, key: BlobKey) {
        if let Some(refresh) = &self.refresh {
            refresh.request(key);
        }
    }

    /// Downloads from the backend in progress (one per key).
    pub fn downloads_in_flight(&self) -> usize {
        self.downloads.len()
    }

    /// Counters for `/status` (never credentials).
    pub fn status_json(&self) -> serde_json::Value {
        let q = &self.queue.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "Type": self.backend.name(),
            "Hits": n(&self.stats.hits),
            "Misses": n(&self.stats.misses),
            "Errors": n(&self.stats.errors),
            "CorruptObjects": n(&self.stats.corrupt),
            "UploadsPending": n(&q.pending),
            "UploadsDone": n(&q.uploaded),
            "UploadsDroppedQueueFull": n(&q.dropped_full),
            "UploadsAbandoned": n(&q.abandoned),
            "UploadRetries": n(&q.retries),
            "UploadsWaitedForBlobs": n(&q.waited),
            "UploadsWaitingForBlobs": self.ac_uploads_waiting(),
            // How far behind the backend is: the oldest queued upload's
            // wait, 0 when none waits.
            "UploadQueueOldestAgeSeconds": q.oldest_age().as_secs(),
        })
    }

    fn note_error(&self, what: &str, key: &BlobKey, e: &BackendError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let first = e
            .code
            .as_ref()
            .map(|c| lock(&self.reported).insert(c.clone()))
            .unwrap_or(true);
        if first || e.retryable {
            let backend = self.backend.name();
            let object = self.backend.locate(key);
            tracing::warn!(%what, %backend, object, error = %e, "backend request failed");
        }
    }

    /// Downloads `key` into the local store, once per key at a time. Cancel
    /// safe: a caller that goes away (a client disconnecting) leaves no
    /// entry behind (see `single_flight.rs`).
    async fn fetch(&self, key: BlobKey) -> bool {
        self.downloads.run(key, || self.fetch_once(key)).await
    }

    async fn fetch_once(&self, key: BlobKey) -> bool {
        let download = match self.backend.get(&key).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Err(e) => {
                self.note_error("GET", &key, &e);
                return false;
            }
        };
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let object = self.backend.locate(&key);
        if download
            .stored_len
            .is_some_and(|len| len > self.cfg.max_proxy_blob_size)
        {
            tracing::info!(object, "object exceeds max_proxy_blob_size; not fetched");
            return false;
        }
        let put = PutRequest {
            key,
            size: download.size,
            encoding: Encoding::Identity,
            body: download.body.into(),
        };
        match self.local.put(put).await {
            Ok(()) => {
                self.used(key);
                true
            }
            Err(e) if e.is_client_error() => {
                // A corrupt or truncated object: the local store verified it
                // and stored nothing. Never served; the next writer replaces it.
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::error!(object, error = %e, "object in the backend does not match its digest; ignored");
                false
            }
            Err(e) => {
                tracing::warn!(object, error = %e, "storing a downloaded blob locally failed");
                false
            }
        }
    }

    async fn upload_with_retries(&self, key: BlobKey) {
        match self.upload(&key).await {
            Ok(true) => {
                self.forget_attempts(&key);
                self.queue.uploaded(key).await;
            }
            Ok(false) => {
                // Evicted locally before it could be uploaded.
                self.forget_attempts(&key);
                self.queue.done(key).await;
            }
            Err(e) => {
                self.note_error("PUT", &key, &e);
                let attempt = {
                    let mut a = lock(&self.attempts);
                    let n = a.entry(key).or_default();
                    *n += 1;
                    *n
                };
                if !e.retryable && attempt >= MAX_CLIENT_ERROR_ATTEMPTS {
                    let object = self.backend.locate(&key);
                    tracing::error!(object, error = %e, "the backend keeps refusing this upload; giving up on it");
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
        lock(&self.attempts).remove(key);
    }

    /// Uploads one blob from its local file; `Ok(false)` when it is no
    /// longer stored locally.
    async fn upload(&self, key: &BlobKey) -> Result<bool, BackendError> {
        let opened = self.local.open_blob(key).map_err(BackendError::local)?;
        let Some((file, encoding, size)) = opened else {
            return Ok(false);
        };
        let upload = Upload {
            file,
            encoding,
            size,
            scratch: self.local.scratch_path(),
        };
        self.backend.put(key, upload).await?;
        // A fresh object: no refresh is due for an interval.
        if let Some(refresh) = &self.refresh {
            refresh.refreshed(*key);
        }
        Ok(true)
    }

    /// Whether the backend holds the blob with this size (HEAD only).
    async fn in_backend(&self, d: &Digest) -> bool {
        let key = BlobKey::cas(d.hash);
        match self.backend.head_digest(d).await {
            Ok(Presence::Present { size }) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                size.is_none_or(|s| s == d.size)
            }
            Ok(Presence::Absent) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(e) => {
                self.note_error("HEAD", &key, &e);
                false
            }
        }
    }
}

#[async_trait]
impl Store for ProxyStore {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        if let Some(blob) = self.local.get(key, accept_zstd).await? {
            self.used(*key);
            return Ok(Some(blob));
        }
        if !self.fetch(*key).await {
            return Ok(None);
        }
        self.local.get(key, accept_zstd).await
    }

    /// A blob only in the backend is fetched here: callers of `contains`
    /// want its logical size, which a `cas.v2` object does not tell
    /// without reading.
    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        if let Some(size) = self.local.contains(key).await? {
            self.used(*key);
            return Ok(Some(size));
        }
        if !self.fetch(*key).await {
            return Ok(None);
        }
        self.local.contains(key).await
    }

    /// Digests found (locally or in the backend) are uses: their objects'
    /// ages are refreshed.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let locally_missing = self.local.find_missing(digests).await?;
        if self.refresh.is_some() {
            let missing: HashSet<&Digest> = locally_missing.iter().collect();
            for d in digests.iter().filter(|d| !missing.contains(d)) {
                self.used(BlobKey::cas(d.hash));
            }
        }
        let checks = futures_util::stream::iter(locally_missing)
            .map(|d| async move { (d, self.in_backend(&d).await) })
            .buffered(HEAD_CONCURRENCY);
        Ok(checks
            .filter_map(|(d, found)| async move {
                if found {
                    self.used(BlobKey::cas(d.hash));
                }
                (!found).then_some(d)
            })
            .collect()
            .await)
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        let key = req.key;
        if self.local.put_new(req).await? == Written::AlreadyPresent {
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
