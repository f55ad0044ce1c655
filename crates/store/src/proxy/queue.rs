//! The write-behind queue: blobs stored locally and not yet in the backend.
//!
//! Unlike bazel-remote's in-memory channel, the queue is persisted in redb
//! (`dir/uploads.redb`): an entry is committed durably before the client's
//! write is acknowledged, and removed only once S3 has the object, so a
//! crash or restart loses no acknowledged upload. Enqueues are group-committed
//! by one writer thread, like the index.
//!
//! When `max_queued_uploads` entries are pending, new uploads are dropped
//! (the blob stays in the local cache) and counted; the queue never blocks
//! or fails a client's write because the backend is behind.
//!
//! The writer also keeps the in-memory [`Waits`] in step with the table, so
//! an ActionResult can wait for the CAS blobs still queued (`ordering.rs`),
//! and counts entries per enqueue second, so the age of the oldest queued
//! upload (how far behind the backend is) is known without a table scan.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::waits::Waits;
use crate::{StoreError, lock, unix_now};
use bazel_cache_digest::{BlobKey, Hash};

const PENDING: TableDefinition<&[u8], u64> = TableDefinition::new("pending");
const MAX_BATCH: usize = 4096;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(format!("upload queue: {e}"))
}

/// Counters for `/status` and metrics.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub pending: AtomicU64,
    /// Uploads not queued because the queue was full.
    pub dropped_full: AtomicU64,
    pub uploaded: AtomicU64,
    /// Uploads abandoned: the blob left the local cache first, or S3 kept
    /// refusing it (4xx) after the allowed attempts.
    pub abandoned: AtomicU64,
    pub retries: AtomicU64,
    /// Times an AC entry was set aside to wait for the upload of blobs it
    /// references.
    pub waited: AtomicU64,
    /// Unix seconds at which the oldest entry still queued was queued; 0
    /// when the queue is empty.
    pub oldest_queued_at: AtomicU64,
}

impl QueueStats {
    /// How long the oldest queued upload has waited; zero when none waits.
    pub fn oldest_age(&self) -> Duration {
        match self.oldest_queued_at.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            at => Duration::from_secs(unix_now().saturating_sub(at)),
        }
    }
}

enum Op {
    Add(BlobKey, oneshot::Sender<bool>),
    /// Left the queue; `true`: uploaded.
    Done(BlobKey, bool),
}

/// Handle to the persisted queue. Cheap to share behind an `Arc`.
pub(super) struct UploadQueue {
    tx: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    work_tx: mpsc::UnboundedSender<BlobKey>,
    work_rx: Mutex<mpsc::UnboundedReceiver<BlobKey>>,
    waits: Arc<std::sync::Mutex<Waits>>,
    pub stats: Arc<QueueStats>,
}

impl UploadQueue {
    /// Opens (or creates) the queue in `dir` and schedules every entry left
    /// by a previous run.
    pub(super) fn open(dir: &Path, max_queued: usize) -> Result<UploadQueue, StoreError> {
        let db = Database::builder()
            .create(dir.join("uploads.redb"))
            .map_err(err)?;
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(QueueStats::default());
        let mut waits = Waits::default();
        let mut queued_at = QueuedAt::default();
        {
            let txn = db.begin_write().map_err(err)?;
            txn.open_table(PENDING).map_err(err)?;
            txn.commit().map_err(err)?;
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(PENDING).map_err(err)?;
            stats
                .pending
                .store(table.len().map_err(err)?, Ordering::Relaxed);
            for row in table.iter().map_err(err)? {
                let (k, at) = row.map_err(err)?;
                queued_at.add(at.value());
                if let Some(key) = BlobKey::from_bytes(k.value()) {
                    waits.queued(&key);
                    let _ = work_tx.send(key);
                }
            }
        }
        queued_at.publish(&stats);
        let pending = stats.pending.load(Ordering::Relaxed);
        if pending > 0 {
            tracing::info!(pending, "resuming uploads queued by a previous run");
        }
        let (tx, rx) = mpsc::channel(8192);
        let waits = Arc::new(std::sync::Mutex::new(waits));
        let writer = QueueWriter {
            db,
            max_queued: max_queued as u64,
            stats: stats.clone(),
            work_tx: work_tx.clone(),
            waits: waits.clone(),
            queued_at,
        };
        let writer = std::thread::Builder::new()
            .name("upload-queue".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(UploadQueue {
            tx: Some(tx),
            writer: Some(writer),
            work_tx,
            work_rx: Mutex::new(work_rx),
            waits,
            stats,
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Op>, StoreError> {
        self.tx.as_ref().ok_or(StoreError::Closed)
    }

    /// Records that `key` must reach S3; returns once that is durable.
    /// `false` when the queue is full and the upload was dropped.
    pub(super) async fn add(&self, key: BlobKey) -> Result<bool, StoreError> {
        let (done, wait) = oneshot::channel();
        self.sender()?
            .send(Op::Add(key, done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| err("writer stopped"))
    }

    /// The next blob to upload (waits while there is none).
    pub(super) async fn next(&self) -> Option<BlobKey> {
        self.work_rx.lock().await.recv().await
    }

    /// Puts a key back for a later attempt.
    pub(super) fn retry_later(&self, key: BlobKey) {
        let _ = self.work_tx.send(key);
    }

    /// Removes `key`, which the backend now holds.
    pub(super) async fn uploaded(&self, key: BlobKey) {
        self.remove(key, true).await
    }

    /// Removes `key`, abandoned for good.
    pub(super) async fn done(&self, key: BlobKey) {
        self.remove(key, false).await
    }

    async fn remove(&self, key: BlobKey, uploaded: bool) {
        if let Ok(tx) = self.sender() {
            let _ = tx.send(Op::Done(key, uploaded)).await;
        }
    }

    /// Parks the ActionResult `ac` until those of `blobs` still queued
    /// have left the queue; then it is scheduled again. `false` when none
    /// is queued (nothing parked).
    pub(super) fn park(&self, ac: BlobKey, blobs: &[Hash]) -> bool {
        lock(&self.waits).park(ac, blobs)
    }

    /// Whether this queue uploaded the CAS blob `hash` lately.
    pub(super) fn recently_uploaded(&self, hash: &Hash) -> bool {
        lock(&self.waits).recently_uploaded(hash)
    }

    /// ActionResults waiting for their blobs' uploads.
    pub(super) fn parked(&self) -> usize {
        lock(&self.waits).parked()
    }
}

impl Drop for UploadQueue {
    /// Lets the writer finish its last batch and release the database, so
    /// the queue can be reopened at once (restart in-process, tests).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A row of the table added, or removed (`true`: uploaded).
enum Change {
    Queued(BlobKey),
    Left(BlobKey, bool),
}

/// How many queued entries were queued in each second (the table's
/// values), so the oldest is the first key: a few bytes per distinct
/// second, however many entries.
#[derive(Default)]
struct QueuedAt(BTreeMap<u64, u64>);

impl QueuedAt {
    fn add(&mut self, at: u64) {
        *self.0.entry(at).or_default() += 1;
    }

    fn remove(&mut self, at: u64) {
        if let Some(n) = self.0.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&at);
            }
        }
    }

    fn publish(&self, stats: &QueueStats) {
        let oldest = self.0.keys().next().copied().unwrap_or(0);
        stats.oldest_queued_at.store(oldest, Ordering::Relaxed);
    }
}

struct QueueWriter {
    db: Database,
    max_queued: u64,
    stats: Arc<QueueStats>,
    work_tx: mpsc::UnboundedSender<BlobKey>,
    waits: Arc<std::sync::Mutex<Waits>>,
    /// Only this thread changes it, with the table.
    queued_at: QueuedAt,
}

impl QueueWriter {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(op) = rx.blocking_recv() {
            let mut batch = vec![op];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.apply(batch) {
                tracing::error!(error = %e, "upload queue commit failed");
            }
        }
    }

    fn apply(&mut self, batch: Vec<Op>) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        let adds = batch.iter().any(|op| matches!(op, Op::Add(..)));
        if !adds {
            // Removals may be lost in a crash: the upload is then repeated,
            // which S3 treats as an overwrite with the same bytes.
            txn.set_durability(Durability::None).map_err(err)?;
        }
        let mut replies = Vec::new();
        // Rows added and removed, in batch order (a key may do both).
        let mut changes = Vec::new();
        // Enqueue seconds added and removed, applied once the commit holds.
        let now = unix_now();
        let mut times = Vec::new();
        let mut seen = HashSet::new();
        {
            let mut table = txn.open_table(PENDING).map_err(err)?;
            let mut len = table.len().map_err(err)?;
            for op in batch {
                match op {
                    Op::Add(key, reply) => {
                        let k = key.to_bytes();
                        let accepted = if table.get(k.as_slice()).map_err(err)?.is_some()
                            || !seen.insert(key)
                        {
                            true
                        } else if len >= self.max_queued {
                            false
                        } else {
                            table.insert(k.as_slice(), now).map_err(err)?;
                            times.push((now, true));
                            len += 1;
                            changes.push(Change::Queued(key));
                            true
                        };
                        replies.push((reply, accepted));
                    }
                    Op::Done(key, uploaded) => {
                        let removed = table
                            .remove(key.to_bytes().as_slice())
                            .map_err(err)?
                            .map(|at| at.value());
                        if let Some(at) = removed {
                            times.push((at, false));
                            len -= 1;
                            changes.push(Change::Left(key, uploaded));
                        }
                    }
                }
            }
            self.stats.pending.store(len, Ordering::Relaxed);
        }
        txn.commit().map_err(err)?;
        for (at, added) in times {
            if added {
                self.queued_at.add(at);
            } else {
                self.queued_at.remove(at);
            }
        }
        self.queued_at.publish(&self.stats);
        // After the commit and before any reply: a client acknowledged for
        // a blob finds it pending when its ActionResult is checked.
        let mut scheduled = Vec::new();
        {
            let mut waits = lock(&self.waits);
            for change in changes {
                match change {
                    Change::Queued(key) => {
                        waits.queued(&key);
                        scheduled.push(key);
                    }
                    Change::Left(key, uploaded) => {
                        // Counted here, after `pending` went down in the
                        // same batch: whoever sees an upload done or
                        // abandoned also sees it gone from the queue.
                        let counter = if uploaded {
                            &self.stats.uploaded
                        } else {
                            &self.stats.abandoned
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        scheduled.extend(waits.left(&key, uploaded));
                    }
                }
            }
        }
        for key in scheduled {
            let _ = self.work_tx.send(key);
        }
        for (reply, accepted) in replies {
            if !accepted {
                self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
            }
            let _ = reply.send(accepted);
        }
        Ok(())
    }
}

/// Exponential backoff for retryable upload failures: 1 s doubling to 60 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::Hash;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_survives_reopen_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<BlobKey> = (0..5u8).map(|i| BlobKey::cas(Hash::of(&[i]))).collect();
        {
            let q = UploadQueue::open(dir.path(), 3).unwrap();
            for k in &keys[..3] {
                assert!(q.add(*k).await.unwrap());
            }
            // Already queued: accepted without taking room.
            assert!(q.add(keys[0]).await.unwrap());
            // Full: dropped and counted.
            assert!(!q.add(keys[3]).await.unwrap());
            assert_eq!(q.stats.dropped_full.load(Ordering::Relaxed), 1);
            assert_eq!(q.next().await, Some(keys[0]));
            q.done(keys[0]).await;
            assert!(q.add(keys[4]).await.unwrap());
            assert_eq!(q.stats.pending.load(Ordering::Relaxed), 3);
        }
        let q = UploadQueue::open(dir.path(), 3).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(q.next().await.unwrap());
        }
        got.sort();
        let mut want = vec![keys[1], keys[2], keys[4]];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn the_oldest_enqueue_second_is_the_first_still_counted() {
        let stats = QueueStats::default();
        let mut at = QueuedAt::default();
        at.publish(&stats);
        assert_eq!(stats.oldest_queued_at.load(Ordering::Relaxed), 0);
        for t in [500, 300, 300, 400] {
            at.add(t);
        }
        at.publish(&stats);
        assert_eq!(stats.oldest_queued_at.load(Ordering::Relaxed), 300);
        at.remove(300);
        at.publish(&stats);
        assert_eq!(stats.oldest_queued_at.load(Ordering::Relaxed), 300);
        at.remove(300);
        at.publish(&stats);
        assert_eq!(stats.oldest_queued_at.load(Ordering::Relaxed), 400);
        at.remove(400);
        at.remove(500);
        // A removal of a second never counted changes nothing.
        at.remove(42);
        at.publish(&stats);
        assert_eq!(stats.oldest_queued_at.load(Ordering::Relaxed), 0);
        assert_eq!(stats.oldest_age(), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_oldest_enqueue_time_is_persisted_and_follows_removals() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (BlobKey::cas(Hash::of(b"a")), BlobKey::cas(Hash::of(b"b")));
        let first = {
            let q = UploadQueue::open(dir.path(), 10).unwrap();
            assert!(q.add(a).await.unwrap());
            let first = q.stats.oldest_queued_at.load(Ordering::Relaxed);
            assert!(first > 0 && first <= unix_now());
            assert!(q.add(b).await.unwrap());
            // A later entry does not make the oldest younger.
            assert_eq!(q.stats.oldest_queued_at.load(Ordering::Relaxed), first);
            first
        };
        // Reopened: the enqueue time read back from the table, not the
        // time of the restart.
        {
            let q = UploadQueue::open(dir.path(), 10).unwrap();
            assert_eq!(q.stats.oldest_queued_at.load(Ordering::Relaxed), first);
            q.uploaded(a).await;
            q.uploaded(b).await;
            // Dropping the queue lets its writer apply both.
        }
        let q = UploadQueue::open(dir.path(), 10).unwrap();
        assert_eq!(q.stats.pending.load(Ordering::Relaxed), 0);
        assert_eq!(q.stats.oldest_queued_at.load(Ordering::Relaxed), 0);
        assert_eq!(q.stats.oldest_age(), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_entry_comes_back_when_its_blob_leaves_even_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let blob = BlobKey::cas(Hash::of(b"output"));
        let ac = BlobKey::ac(Hash::of(b"action"));
        {
            let q = UploadQueue::open(dir.path(), 10).unwrap();
            assert!(q.add(blob).await.unwrap());
            assert!(q.add(ac).await.unwrap());
            assert_eq!(q.next().await, Some(blob));
            assert_eq!(q.next().await, Some(ac));
            assert!(q.park(ac, &[blob.hash]));
            assert_eq!(q.parked(), 1);
            // Dropped without removing anything: both rows stay.
        }
        let q = UploadQueue::open(dir.path(), 10).unwrap();
        // Reloaded: AC keys first (key order), and the blob pending again.
        assert_eq!(q.next().await, Some(ac));
        assert_eq!(q.next().await, Some(blob));
        assert!(q.park(ac, &[blob.hash]));
        assert!(!q.recently_uploaded(&blob.hash));
        q.uploaded(blob).await;
        assert_eq!(q.next().await, Some(ac));
        assert_eq!(q.parked(), 0);
        assert!(q.recently_uploaded(&blob.hash));
        assert!(!q.park(ac, &[blob.hash]));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(60));
    }
}
