//! [`TimestampRefresh`]: keeping the objects builds use young in the
//! bucket (`update_timestamps`), at most once per object per interval, in
//! the background.
//!
//! Why: a bucket lifecycle rule expires objects by age, and before this
//! only a proxied download refreshed an object's age. A blob every build
//! finds in a replica's local disk, or that FindMissingBlobs finds, was
//! never refreshed, so it expired while in use and action results outlived
//! the outputs they name (bazel-remote issues #395, #624). Now every use a
//! replica sees (a local hit, a digest found present, the AC entry of a
//! GetActionResult and the blobs it names) asks for a refresh.
//!
//! Asking is cheap and never waits: a key refreshed less than `interval`
//! ago (or whose refresh is queued) is skipped; otherwise it goes into a
//! bounded queue that one task drains, sending at most
//! [`MAX_CONCURRENT_REFRESHES`] refreshes (S3: a CopyObject onto itself) at
//! once. When the queue is full the request is dropped and the key forgotten,
//! so its next use tries again. A failed refresh fails no request; it is
//! counted and retried on the first use after the interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bazel_cache_digest::BlobKey;
use tokio::sync::{Semaphore, mpsc};

use super::Backend;
use super::expiring_map::ExpiringMap;

/// Refreshes in flight at once.
const MAX_CONCURRENT_REFRESHES: usize = 16;
/// Refreshes waiting to be sent; more are dropped (and tried again on the
/// key's next use).
const QUEUE_LENGTH: usize = 100_000;
/// Keys whose last refresh is remembered (about 60 bytes each); when more
/// were refreshed within one interval, the oldest are forgotten and may be
/// refreshed again early, which costs a request, nothing else.
const REMEMBERED: usize = 1 << 20;

/// The refresher's counters, read by the server's metrics.
#[derive(Debug, Default)]
pub struct RefreshStats {
    /// Refreshes queued for the backend.
    pub queued: AtomicU64,
    /// Uses of a key refreshed less than an interval ago: nothing sent.
    pub skipped_recent: AtomicU64,
    /// Requests dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Refreshes the backend failed (the object gone, a network error).
    pub failed: AtomicU64,
}

pub struct TimestampRefresh {
    interval: Duration,
    recent: ExpiringMap<()>,
    queue: mpsc::Sender<BlobKey>,
    pub stats: Arc<RefreshStats>,
}

impl TimestampRefresh {
    /// Starts the task that sends refreshes to `backend`; it ends when the
    /// refresher is dropped.
    pub fn start(backend: Arc<dyn Backend>, interval: Duration) -> Self {
        let (queue, mut requests) = mpsc::channel::<BlobKey>(QUEUE_LENGTH);
        let stats = Arc::new(RefreshStats::default());
        let counters = stats.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES));
            while let Some(key) = requests.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (backend, counters) = (backend.clone(), counters.clone());
                tokio::spawn(async move {
                    if let Err(e) = backend.touch(&key).await {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        let object = backend.locate(&key);
                        tracing::debug!(object, error = %e, "refreshing the object's timestamp failed");
                    }
                    drop(slot);
                });
            }
        });
        TimestampRefresh {
            interval,
            recent: ExpiringMap::new(REMEMBERED),
            queue,
            stats,
        }
    }

    /// Notes that `key`'s object was just written (an upload): it is young,
    /// so uses within the interval need no refresh.
    pub fn refreshed(&self, key: BlobKey) {
        self.recent.insert(&key, (), self.interval);
    }

    /// Asks for `key`'s object to be refreshed, unless it was less than an
    /// interval ago. Never waits.
    pub fn request(&self, key: BlobKey) {
        if !self.recent.insert_if_vacant(&key, (), self.interval) {
            self.stats.skipped_recent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.queue.try_send(key) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.recent.remove(&key);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bazel_cache_digest::Hash;

    use super::*;
    use crate::lock;
    use crate::proxy::{BackendError, Download, Presence, Upload};

    /// Counts touches per key.
    #[derive(Default)]
    struct Touches(Mutex<HashMap<BlobKey, u32>>);

    #[async_trait]
    impl Backend for Touches {
        fn name(&self) -> &'static str {
            "test"
        }
        fn locate(&self, key: &BlobKey) -> String {
            key.to_string()
        }
        async fn head(&self, _key: &BlobKey) -> Result<Presence, BackendError> {
            Ok(Presence::Absent)
        }
        async fn get(&self, _key: &BlobKey) -> Result<Option<Download>, BackendError> {
            Ok(None)
        }
        async fn put(&self, _key: &BlobKey, _blob: Upload) -> Result<(), BackendError> {
            Ok(())
        }
        async fn touch(&self, key: &BlobKey) -> Result<(), BackendError> {
            *lock(&self.0).entry(*key).or_default() += 1;
            Ok(())
        }
    }

    async fn settle(backend: &Touches, want: u32) {
        while lock(&backend.0).values().sum::<u32>() < want {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_is_refreshed_at_most_once_per_interval() {
        let backend = Arc::new(Touches::default());
        let refresh = TimestampRefresh::start(backend.clone(), Duration::from_secs(3600));
        let a = BlobKey::cas(Hash::of(b"a"));
        let b = BlobKey::ac(Hash::of(b"b"));
        for _ in 0..5 {
            refresh.request(a);
            refresh.request(b);
        }
        settle(&backend, 2).await;
        assert_eq!(refresh.stats.queued.load(Ordering::SeqCst), 2);
        assert_eq!(refresh.stats.skipped_recent.load(Ordering::SeqCst), 8);
        tokio::time::advance(Duration::from_secs(3599)).await;
        refresh.request(a);
        assert_eq!(refresh.stats.queued.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        refresh.request(a);
        settle(&backend, 3).await;
        assert_eq!(lock(&backend.0)[&a], 2);
        assert_eq!(lock(&backend.0)[&b], 1);

        // A key just uploaded is young: no refresh for an interval.
        let c = BlobKey::cas(Hash::of(b"c"));
        refresh.refreshed(c);
        refresh.request(c);
        assert_eq!(refresh.stats.queued.load(Ordering::SeqCst), 3);
        tokio::time::advance(Duration::from_secs(3600)).await;
        refresh.request(c);
        settle(&backend, 4).await;
        assert_eq!(lock(&backend.0)[&c], 1);
    }
}
