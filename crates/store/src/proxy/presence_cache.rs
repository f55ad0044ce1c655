//! [`PresenceCache`]: the backend's existence answers, remembered for a
//! while, as a [`Backend`] decorator (one rule, one file).
//!
//! Why: every replica answers FindMissingBlobs for blobs it lacks locally
//! with one HEAD per digest, and Bazel asks about the same digests again
//! and again (every build, every action's inputs), so replicas sharing a
//! bucket send HEAD storms (bazel-remote issue #919). Here a HEAD's answer
//! is kept, "present" for `positive_ttl` and "absent" for `negative_ttl`,
//! and concurrent checks of one key share one HEAD. A decorator, not code
//! inside the proxy: the proxy keeps one existence path (`Backend::head`)
//! whichever backend is behind it, and the server decides whether the rule
//! applies.
//!
//! What this replica learns itself updates the cache at once: a finished
//! upload or a download that found the object is "present", a download
//! that found nothing "absent". A negative answer is never newer than our
//! own upload: a HEAD that was in flight while the upload finished is
//! dropped (see [`ExpiringMap::insert_since`]). A download of a key with a
//! fresh "absent" is answered absent without asking, so AC misses (most
//! GETs of an uncached build) reach the bucket once per `negative_ttl` too.
//!
//! The price is staleness, bounded by the TTLs: another replica's upload is
//! seen up to `negative_ttl` late (a miss, never an error), and an object
//! the bucket's lifecycle rule deletes is still "present" for up to
//! `positive_ttl`, so `positive_ttl` must stay well below the lifecycle
//! expiry (the README says why; the config refuses a day or more).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bazel_cache_digest::BlobKey;

use super::expiring_map::ExpiringMap;
use super::single_flight::SingleFlight;
use super::{Backend, BackendError, Download, Presence, Upload};

/// The cache's settings (`s3_proxy.presence_cache_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceCacheConfig {
    /// How long "present" is believed. Zero: never cached.
    pub positive_ttl: Duration,
    /// How long "absent" is believed. Zero: never cached.
    pub negative_ttl: Duration,
    /// The most keys remembered; the oldest go first. Zero: no cache.
    pub max_entries: usize,
}

impl PresenceCacheConfig {
    /// Whether the cache would remember anything.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0 && !(self.positive_ttl.is_zero() && self.negative_ttl.is_zero())
    }
}

/// The cache's counters, read by the server's metrics.
#[derive(Debug, Default)]
pub struct PresenceStats {
    /// HEAD requests sent to the backend.
    pub heads: AtomicU64,
    /// Existence checks answered "present" from the cache.
    pub cached_present: AtomicU64,
    /// Existence checks (and downloads) answered "absent" from the cache.
    pub cached_absent: AtomicU64,
    /// Checks that waited for another caller's HEAD of the same key.
    pub coalesced: AtomicU64,
}

/// A HEAD's outcome as every caller waiting on it gets it.
#[derive(Clone)]
enum Answer {
    Known(Presence),
    Failed {
        retryable: bool,
        code: Option<String>,
        message: String,
    },
}

impl Answer {
    fn into_result(self) -> Result<Presence, BackendError> {
        match self {
            Answer::Known(p) => Ok(p),
            Answer::Failed {
                retryable,
                code,
                message,
            } => Err(BackendError {
                retryable,
                code,
                source: message.into(),
            }),
        }
    }
}

/// A [`Presence`] in 8 bytes instead of 16 (a million of them are kept):
/// the logical size, or one of two values no blob's size reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed(u64);

impl Packed {
    const ABSENT: Packed = Packed(u64::MAX);
    const SIZE_UNKNOWN: Packed = Packed(u64::MAX - 1);

    fn pack(p: Presence) -> Packed {
        match p {
            Presence::Absent => Packed::ABSENT,
            Presence::Present { size: None } => Packed::SIZE_UNKNOWN,
            Presence::Present { size: Some(s) } => Packed(s.min(u64::MAX - 2)),
        }
    }

    fn unpack(self) -> Presence {
        match self {
            Packed::ABSENT => Presence::Absent,
            Packed::SIZE_UNKNOWN => Presence::Present { size: None },
            Packed(s) => Presence::Present { size: Some(s) },
        }
    }
}

pub struct PresenceCache {
    inner: Arc<dyn Backend>,
    cfg: PresenceCacheConfig,
    answers: ExpiringMap<Packed>,
    heads: SingleFlight<Answer>,
    pub stats: PresenceStats,
}

impl PresenceCache {
    pub fn new(inner: Arc<dyn Backend>, cfg: PresenceCacheConfig) -> Self {
        PresenceCache {
            inner,
            cfg,
            answers: ExpiringMap::new(cfg.max_entries),
            heads: SingleFlight::default(),
            stats: PresenceStats::default(),
        }
    }

    /// Keys remembered now (expired ones included until reused).
    pub fn entries(&self) -> usize {
        self.answers.len()
    }

    fn ttl(&self, p: Presence) -> Duration {
        match p {
            Presence::Present { .. } => self.cfg.positive_ttl,
            Presence::Absent => self.cfg.negative_ttl,
        }
    }

    fn cached(&self, key: &BlobKey) -> Option<Presence> {
        let p = self.answers.get(key)?.unpack();
        let counter = match p {
            Presence::Present { .. } => &self.stats.cached_present,
            Presence::Absent => &self.stats.cached_absent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(p)
    }

    /// One HEAD, its answer remembered; run by one caller per key at a time.
    async fn head_once(&self, key: BlobKey) -> Answer {
        // A HEAD of this key may have finished between our lookup and
        // joining the flight.
        if let Some(p) = self.cached(&key) {
            return Answer::Known(p);
        }
        let since = self.answers.stamp(&key);
        self.stats.heads.fetch_add(1, Ordering::Relaxed);
        match self.inner.head(&key).await {
            Ok(p) => {
                self.answers
                    .insert_since(&key, Packed::pack(p), self.ttl(p), since);
                Answer::Known(p)
            }
            Err(e) => Answer::Failed {
                retryable: e.retryable,
                code: e.code,
                message: e.source.to_string(),
            },
        }
    }
}

#[async_trait]
impl Backend for PresenceCache {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn locate(&self, key: &BlobKey) -> String {
        self.inner.locate(key)
    }

    async fn head(&self, key: &BlobKey) -> Result<Presence, BackendError> {
        if let Some(p) = self.cached(key) {
            return Ok(p);
        }
        let mut led = false;
        let answer = self
            .heads
            .run(*key, || {
                led = true;
                self.head_once(*key)
            })
            .await;
        if !led {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        answer.into_result()
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Download>, BackendError> {
        if self.answers.get(key) == Some(Packed::ABSENT) {
            self.stats.cached_absent.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let since = self.answers.stamp(key);
        let download = self.inner.get(key).await?;
        let p = match &download {
            Some(d) => Presence::Present { size: d.size },
            None => Presence::Absent,
        };
        self.answers
            .insert_since(key, Packed::pack(p), self.ttl(p), since);
        Ok(download)
    }

    async fn put(&self, key: &BlobKey, blob: Upload) -> Result<(), BackendError> {
        let size = blob.size;
        self.inner.put(key, blob).await?;
        let p = Presence::Present { size: Some(size) };
        self.answers.insert(key, Packed::pack(p), self.ttl(p));
        Ok(())
    }

    async fn touch(&self, key: &BlobKey) -> Result<(), BackendError> {
        self.inner.touch(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use bazel_cache_digest::Hash;

    use super::*;
    use crate::lock;

    /// A backend whose objects are a set of keys; counts HEADs and can hold
    /// them until released, to make concurrent checks overlap.
    #[derive(Default)]
    struct Bucket {
        objects: Mutex<HashSet<BlobKey>>,
        heads: AtomicU64,
        gate: tokio::sync::Notify,
        hold: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Backend for Bucket {
        fn name(&self) -> &'static str {
            "test"
        }
        fn locate(&self, key: &BlobKey) -> String {
            key.to_string()
        }
        async fn head(&self, key: &BlobKey) -> Result<Presence, BackendError> {
            self.heads.fetch_add(1, Ordering::SeqCst);
            if self.hold.load(Ordering::SeqCst) {
                self.gate.notified().await;
            }
            Ok(if lock(&self.objects).contains(key) {
                Presence::Present { size: Some(1) }
            } else {
                Presence::Absent
            })
        }
        async fn get(&self, _key: &BlobKey) -> Result<Option<Download>, BackendError> {
            Ok(None)
        }
        async fn put(&self, key: &BlobKey, _blob: Upload) -> Result<(), BackendError> {
            lock(&self.objects).insert(*key);
            Ok(())
        }
        async fn touch(&self, _key: &BlobKey) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn cfg() -> PresenceCacheConfig {
        PresenceCacheConfig {
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(10),
            max_entries: 1000,
        }
    }

    fn key(i: u8) -> BlobKey {
        BlobKey::cas(Hash::of(&[i]))
    }

    fn upload(dir: &tempfile::TempDir) -> Upload {
        let path = dir.path().join("blob");
        std::fs::write(&path, b"x").unwrap();
        Upload {
            file: std::fs::File::open(&path).unwrap(),
            encoding: crate::Encoding::Identity,
            size: 1,
            scratch: dir.path().join("scratch"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_for_their_own_ttl() {
        let bucket = Arc::new(Bucket::default());
        lock(&bucket.objects).insert(key(1));
        let cache = PresenceCache::new(bucket.clone(), cfg());
        for _ in 0..3 {
            assert_eq!(
                cache.head(&key(1)).await.unwrap(),
                Presence::Present { size: Some(1) }
            );
            assert_eq!(cache.head(&key(2)).await.unwrap(), Presence::Absent);
        }
        assert_eq!(bucket.heads.load(Ordering::SeqCst), 2, "one HEAD per key");
        assert_eq!(cache.stats.heads.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats.cached_present.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats.cached_absent.load(Ordering::SeqCst), 2);

        // Another replica uploads key 2: seen once the negative TTL is over.
        lock(&bucket.objects).insert(key(2));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(cache.head(&key(2)).await.unwrap(), Presence::Absent);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            cache.head(&key(2)).await.unwrap(),
            Presence::Present { .. }
        ));
        assert_eq!(bucket.heads.load(Ordering::SeqCst), 3);

        // The positive answer of key 1 lasts its own, longer TTL.
        tokio::time::advance(Duration::from_secs(589)).await;
        cache.head(&key(1)).await.unwrap();
        assert_eq!(bucket.heads.load(Ordering::SeqCst), 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.head(&key(1)).await.unwrap();
        assert_eq!(bucket.heads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_checks_of_one_key_share_one_head() {
        let bucket = Arc::new(Bucket::default());
        bucket.hold.store(true, Ordering::SeqCst);
        let cache = Arc::new(PresenceCache::new(bucket.clone(), cfg()));
        let checks: Vec<_> = (0..16)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.head(&key(7)).await.unwrap() })
            })
            .collect();
        // One thread: once the HEAD is in flight and every task has run up
        // to its first wait, all sixteen are waiting on that one HEAD.
        while bucket.heads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        bucket.gate.notify_waiters();
        for c in checks {
            assert_eq!(c.await.unwrap(), Presence::Absent);
        }
        assert_eq!(bucket.heads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats.coalesced.load(Ordering::SeqCst), 15);
    }

    #[tokio::test]
    async fn our_upload_replaces_a_negative_answer_even_one_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(Bucket::default());
        let cache = Arc::new(PresenceCache::new(bucket.clone(), cfg()));
        assert_eq!(cache.head(&key(3)).await.unwrap(), Presence::Absent);
        cache.put(&key(3), upload(&dir)).await.unwrap();
        assert_eq!(
            cache.head(&key(3)).await.unwrap(),
            Presence::Present { size: Some(1) }
        );
        assert_eq!(bucket.heads.load(Ordering::SeqCst), 1);

        // A HEAD sent before our upload finished answers "absent" after it:
        // the upload is newer and wins.
        bucket.hold.store(true, Ordering::SeqCst);
        let head = tokio::spawn({
            let cache = cache.clone();
            async move { cache.head(&key(4)).await.unwrap() }
        });
        while bucket.heads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        cache.put(&key(4), upload(&dir)).await.unwrap();
        bucket.hold.store(false, Ordering::SeqCst);
        bucket.gate.notify_waiters();
        head.await.unwrap();
        assert!(matches!(
            cache.head(&key(4)).await.unwrap(),
            Presence::Present { .. }
        ));
    }

    #[tokio::test]
    async fn a_cached_absence_answers_downloads_too() {
        let bucket = Arc::new(Bucket::default());
        let cache = PresenceCache::new(bucket.clone(), cfg());
        assert_eq!(cache.head(&key(5)).await.unwrap(), Presence::Absent);
        assert!(cache.get(&key(5)).await.unwrap().is_none());
        assert_eq!(cache.stats.cached_absent.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn packed_answers_round_trip_in_eight_bytes() {
        assert_eq!(std::mem::size_of::<Packed>(), 8);
        for p in [
            Presence::Absent,
            Presence::Present { size: None },
            Presence::Present { size: Some(0) },
            Presence::Present {
                size: Some(1 << 40),
            },
        ] {
            assert_eq!(Packed::pack(p).unpack(), p);
        }
    }

    #[tokio::test]
    async fn memory_stays_bounded() {
        let bucket = Arc::new(Bucket::default());
        let cache = PresenceCache::new(
            bucket,
            PresenceCacheConfig {
                max_entries: 100,
                ..cfg()
            },
        );
        for i in 0..=255 {
            cache.head(&key(i)).await.unwrap();
        }
        assert!(cache.entries() <= 100, "{}", cache.entries());
    }
}
