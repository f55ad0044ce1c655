//! The local disk store: blobs as files under `dir`, indexed by redb, evicted
//! in LRU order to stay under `max_size`.
//!
//! A write streams into a temp file while it is hashed (and compressed, for
//! CAS blobs in zstd storage mode) and is checked against its digest; the
//! index writer then flushes it to stable storage with the rest of its
//! batch (group_sync.rs, when `fsync` is on), renames it to its final name
//! and indexes it: no reader ever sees a partial or unverified blob, and a
//! write is acknowledged only once it would survive a power loss.
//!
//! # Layout
//! - `config.rs`: `DiskConfig` and the defaults.
//! - `write.rs`: a PUT, from limits and reservation to the hand-off to the
//!   index writer; `sink.rs`: the temp file it fills.
//! - `read.rs`: a GET, whole for small files, streamed for large ones;
//!   `../nowait.rs`: opening and reading a hot file without blocking.
//! - `index.rs` (and `index/`): redb, the writer thread, accounting, LRU.
//! - `group_sync.rs`: one flush for a batch of new files (group commit);
//!   `commit_stats.rs`: how long those flushes take (metrics).
//! - `presence.rs`: the in-memory set FindMissingBlobs answers from.
//! - `layout.rs`: paths on disk; `recovery.rs`: the start-up scan.
//! - `mount.rs`: warns at start when `dir`'s file system discards freed
//!   blocks online, which slows every eviction's file deletions.
//! - `adopt.rs` (and `adopt/`): taking over a bazel-remote `dir` in place.

mod adopt;
mod commit_stats;
mod config;
mod group_sync;
mod index;
mod layout;
mod mount;
mod presence;
mod read;
mod recovery;
mod sink;
mod write;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use self::index::{Entry, Op, Reservation, SharedStats};
use self::layout::Layout;
use self::presence::{Presence, Probe, minute_of, minutes_since};
use crate::progress::{CutCounts, ProgressGuard};
use crate::proxy::{LocalTier, Written};
use crate::{Blob, BlobReader, Encoding, PutBody, PutRequest, Store, StoreError, StoreStats};
use bazel_cache_digest::{BlobKey, Digest};

pub use self::adopt::{AdoptProgress, AdoptionStatus};
pub use self::commit_stats::CommitStats;
use self::config::ZSTD_LEVEL;
pub use self::config::{
    DEFAULT_BODY_MIN_RATE, DEFAULT_BODY_RATE_WINDOW, DEFAULT_BODY_STALL_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_WRITES, DiskConfig,
};
pub use self::recovery::RecoveryReport;

pub struct DiskStore {
    cfg: DiskConfig,
    /// One permit per write *working*: hashing, compressing and writing a
    /// chunk it has received, or flushing and fsyncing its file at the end.
    /// Slots bound concurrent disk work and the encoder buffers it fills;
    /// a write never holds one while it waits for the client's next bytes,
    /// so slow or stalled clients cannot take them hostage. Waiters are
    /// served first come first served (tokio's semaphore is fair), so a
    /// single write's chunk queues behind at most the chunks already
    /// waiting, never behind a whole batch.
    ///
    /// What a write holds while it waits on its client — its temp file, its
    /// reservation (the declared size), one receive buffer of at most
    /// `CHUNK` bytes and its zstd contexts — is bounded instead by how many
    /// bodies are being received (the listeners' connection cap and HTTP/2
    /// stream cap; idle resumable ByteStream uploads by their registry's
    /// `max_idle`), by how long a body may wait (the progress guard cuts a
    /// body that stalls for `body_stall_timeout` or brings less than
    /// `body_min_rate` over a `body_rate_window`, and lets all of it go),
    /// and by the front ends' memory budget for request bodies.
    write_slots: tokio::sync::Semaphore,
    /// Upload bodies cut by the progress guard (metrics).
    cuts: Arc<CutCounts>,
    /// Which CAS blobs are stored, in memory (presence.rs), kept by the
    /// index writer: FindMissingBlobs answers from it.
    presence: Arc<Presence>,
    layout: Layout,
    reader: index::Reader,
    tx: mpsc::Sender<Op>,
    stats: Arc<SharedStats>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Joined on close/drop: the thread holds the index open (a `Reader`),
    /// and redb refuses a second open of a file while it is held, so an
    /// immediate reopen (restart in-process, tests) failed with "Database
    /// already open" while a cancelled recovery was still winding down.
    recovery_thread: Option<std::thread::JoinHandle<()>>,
    recovery: watch::Receiver<Option<RecoveryReport>>,
    /// Adopting a bazel-remote `dir` (adopt.rs), when there is one; joined
    /// like `recovery_thread`.
    adopt_thread: Option<std::thread::JoinHandle<()>>,
    adoption: Arc<AdoptProgress>,
    /// Stops recovery and adoption at their next file (close, drop).
    cancel_background: Arc<AtomicBool>,
    /// Index and files are known to agree: the previous stop was clean, or
    /// recovery ran to its end. Only then may close() mark the index clean.
    recovery_complete: Arc<AtomicBool>,
}

impl DiskStore {
    /// Opens the store in `cfg.dir`, creating it if needed. Start-up cost does
    /// not grow with the number of entries; after an unclean stop, recovery
    /// reconciles files and index in the background while the store serves.
    pub async fn open(cfg: DiskConfig) -> Result<DiskStore, StoreError> {
        let blocking_cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(blocking_cfg))
            .await
            .map_err(|e| StoreError::Index(format!("open task failed: {e}")))?
    }

    fn open_blocking(cfg: DiskConfig) -> Result<DiskStore, StoreError> {
        let layout = Layout::new(&cfg.dir);
        std::fs::create_dir_all(layout.tmp_dir())?;
        mount::warn_if_discarding(&cfg.dir);
        // Temp files are writes that never finished: no one will claim them.
        for entry in std::fs::read_dir(layout.tmp_dir())? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let stats = Arc::new(SharedStats::default());
        stats.max.store(cfg.max_size_bytes, Ordering::Relaxed);
        let opened = index::open(&layout, &stats)?;
        // Shard directories are made once, on first use of `dir`; a restart
        // skips 1024 mkdirs (the writer re-creates a shard if one goes
        // missing). A `dir` from before BLAKE3 gets its BLAKE3 tree here.
        if Layout::namespaces().any(|(f, k)| !layout.kind_dir(f, k).is_dir()) {
            for dir in layout.shard_dirs() {
                std::fs::create_dir_all(dir)?;
            }
        }

        let (tx, rx) = mpsc::channel(8192);
        let presence = Arc::new(Presence::new());
        let writer = index::Writer::new(
            opened.db.clone(),
            layout.clone(),
            stats.clone(),
            cfg.fsync,
            presence.clone(),
        )?;
        let writer = std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || writer.run(rx))?;

        // Idle ticks let the writer make its periodic durable commit.
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(index::DURABLE_EVERY);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(tx) => {
                        let _ = tx.try_send(Op::Tick);
                    }
                    None => break,
                }
            }
        });

        let reader = index::Reader::new(opened.db);
        let cancel_background = Arc::new(AtomicBool::new(false));
        let (done_tx, recovery) = watch::channel(None);
        let mut recovery_thread = None;
        let recovery_complete = Arc::new(AtomicBool::new(opened.was_clean));
        if opened.was_clean {
            let _ = done_tx.send(Some(RecoveryReport::default()));
        } else {
            tracing::warn!(dir = %cfg.dir.display(), "previous run did not stop cleanly; reconciling index and blob files in the background");
            let (layout, reader, tx, cancel) = (
                layout.clone(),
                reader.clone(),
                tx.clone(),
                cancel_background.clone(),
            );
            let complete = recovery_complete.clone();
            let thread = std::thread::Builder::new()
                .name("recovery".into())
                .spawn(move || {
                    let report = recovery::reconcile(&layout, &reader, &tx, &cancel);
                    // A cancelled reconcile returns Ok with part of the work done.
                    if report.is_ok() && !cancel.load(Ordering::Relaxed) {
                        complete.store(true, Ordering::Relaxed);
                    }
                    match &report {
                        Ok(r) => tracing::info!(?r, "recovery finished"),
                        Err(e) => tracing::error!(error = %e, "recovery failed"),
                    }
                    let _ = done_tx.send(Some(report.unwrap_or_default()));
                })?;
            recovery_thread = Some(thread);
        }

        let adoption = Arc::new(AdoptProgress::default());
        let mut adopt_thread = None;
        if adopt::present(&cfg.dir) {
            // Shown as running from the first request on.
            adoption.start();
            let adopter = adopt::Adopter {
                dir: cfg.dir.clone(),
                index: reader.clone(),
                tx: tx.clone(),
                cancel: cancel_background.clone(),
                progress: adoption.clone(),
                max_size: cfg.max_size_bytes,
            };
            adopt_thread = Some(
                std::thread::Builder::new()
                    .name("adopt".into())
                    .spawn(move || adopter.run())?,
            );
        }

        Ok(DiskStore {
            adopt_thread,
            adoption,
            presence,
            write_slots: tokio::sync::Semaphore::new(cfg.max_concurrent_writes.max(1)),
            cuts: Arc::default(),
            cfg,
            layout,
            reader,
            tx,
            stats,
            writer: Some(writer),
            recovery_thread,
            recovery,
            cancel_background,
            recovery_complete,
        })
    }

    /// The settings this store was opened with.
    pub fn config(&self) -> &DiskConfig {
        &self.cfg
    }

    /// Waits until start-up recovery (if any) has finished.
    pub async fn recovered(&self) -> RecoveryReport {
        let mut rx = self.recovery.clone();
        match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().unwrap_or_default(),
            Err(_) => RecoveryReport::default(),
        }
    }

    /// Makes every index change so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Flush(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await
            .map_err(|_| StoreError::Index("flush failed".into()))
    }

    /// Orderly shutdown: the index is committed durably and marked clean, so
    /// the next start skips recovery — unless a recovery was still running:
    /// then it is cancelled and the next start runs it again. (Marking the
    /// index clean after a cancelled recovery left the files it had not yet
    /// adopted on disk for good: never served, counted or evicted.)
    pub async fn close(mut self) {
        self.cancel_background.store(true, Ordering::Relaxed);
        // They stop at their next file; the writer keeps serving them until then.
        for thread in [self.recovery_thread.take(), self.adopt_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let clean = self.recovery_complete.load(Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Shutdown { clean, done }).await.is_ok() {
            let _ = wait.await;
        }
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    /// Last use (seconds since the Unix epoch) of the least recently used
    /// entry; `None` when empty. A read snapshot, no lock shared with the
    /// writer (metrics: `longest_item_idle_time_seconds`).
    pub fn oldest_access(&self) -> Result<Option<u64>, StoreError> {
        self.reader.lru_head_atime()
    }

    /// Entries removed by LRU eviction since start (metrics).
    pub fn evictions(&self) -> u64 {
        self.stats.evictions.load(Ordering::Relaxed)
    }

    /// Group commits since start: flush time and blobs per flush (metrics).
    pub fn commits(&self) -> &CommitStats {
        &self.stats.commits
    }

    /// Upload bodies cut since start because they stalled or were too slow
    /// (metrics).
    pub fn uploads_cut(&self) -> &CutCounts {
        &self.cuts
    }

    /// `body` under the progress guard every upload gets (`body_stall_timeout`,
    /// `body_min_rate` over `body_rate_window`), its cut counted in
    /// [`DiskStore::uploads_cut`]: for a front end that reads a client's body
    /// itself before it puts it (an action-cache entry it validates), so
    /// that read cannot be held open by a client that dribbles either.
    pub fn guard_upload(&self, body: BlobReader) -> BlobReader {
        Box::pin(self.upload_guard(body))
    }

    /// [`DiskStore::guard_upload`] for a body as reader or chunks.
    fn guard_body(&self, body: PutBody) -> PutBody {
        match body {
            PutBody::Reader(r) => PutBody::Reader(self.guard_upload(r)),
            PutBody::Chunks(s) => PutBody::Chunks(Box::pin(self.upload_guard(s))),
        }
    }

    fn upload_guard<R>(&self, body: R) -> ProgressGuard<R> {
        ProgressGuard::new(body, self.cfg.body_stall_timeout, "upload")
            .min_rate(self.cfg.body_min_rate, self.cfg.body_rate_window)
            .counting(self.cuts.clone())
    }

    /// A write slot, for work on bytes already received (see
    /// `write_slots`); `Busy` when none frees up within `write_slot_wait`.
    async fn write_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        match tokio::time::timeout(self.cfg.write_slot_wait, self.write_slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Busy {
                writes: self.cfg.max_concurrent_writes,
            }),
        }
    }

    /// Whether FindMissingBlobs answers from memory yet: the presence map
    /// is filled from the index in the background after every start
    /// (tests and diagnostics).
    pub fn presence_loaded(&self) -> bool {
        self.presence.is_loaded()
    }

    /// How adopting a bazel-remote `dir` goes (`/status`, metrics); all
    /// zero when there was none.
    pub fn adoption(&self) -> AdoptionStatus {
        self.adoption.status()
    }

    /// Keys from least to most recently used (tests and diagnostics).
    pub fn lru_order(&self) -> Result<Vec<BlobKey>, StoreError> {
        self.reader.lru_order()
    }

    /// Reserves room for a write of `bytes` (see [`Reservation::try_new`])
    /// and, when that takes the store over max_size, has the writer evict
    /// at once.
    fn reserve(&self, bytes: u64) -> Result<Reservation, StoreError> {
        let limit = self.cfg.hard_limit_bytes.unwrap_or(self.cfg.max_size_bytes);
        let reservation = Reservation::try_new(&self.stats, bytes, limit).map_err(|in_flight| {
            StoreError::InsufficientStorage {
                size: bytes,
                capacity: limit.saturating_sub(in_flight),
            }
        })?;
        if reservation.needs_room() {
            // Best effort: a full channel means the writer is busy and will
            // evict at its next commit anyway.
            let _ = self.tx.try_send(Op::MakeRoom);
        }
        Ok(reservation)
    }

    /// Opens a blob's file for a backend upload: the open file stays
    /// readable even if the entry is evicted meanwhile. Returns the file,
    /// how it is encoded and the blob's logical size.
    pub fn open_blob(
        &self,
        key: &BlobKey,
    ) -> Result<Option<(std::fs::File, Encoding, u64)>, StoreError> {
        let Some(entry) = self.reader.get(key)? else {
            return Ok(None);
        };
        match std::fs::File::open(self.layout.blob_path(key, entry.encoding)) {
            Ok(f) => Ok(Some((f, entry.encoding, entry.size))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A path for a scratch file on the store's file system (backend
    /// uploads spool re-encoded blobs there); removed at the next start.
    pub fn scratch_path(&self) -> PathBuf {
        self.layout.tmp_path()
    }

    /// The file holding a blob, if indexed (tests and diagnostics).
    pub fn blob_path(&self, key: &BlobKey) -> Result<Option<PathBuf>, StoreError> {
        Ok(self
            .reader
            .get(key)?
            .map(|e| self.layout.blob_path(key, e.encoding)))
    }

    fn note_use(&self, key: &BlobKey, entry: &Entry) {
        let age = crate::unix_now().saturating_sub(entry.atime);
        if age >= self.cfg.touch_interval.as_secs() {
            // Best effort: under overload, LRU order may lag rather than slow reads.
            let _ = self.tx.try_send(Op::Touch(*key));
        }
    }

    fn forget(&self, key: &BlobKey) {
        let _ = self.tx.try_send(Op::Forget(*key));
    }
}

/// The disk store is the local tier of a proxy.
#[async_trait]
impl LocalTier for DiskStore {
    async fn put_new(&self, req: PutRequest) -> Result<Written, StoreError> {
        self.put_blob(req).await
    }

    fn open_blob(
        &self,
        key: &BlobKey,
    ) -> Result<Option<(std::fs::File, Encoding, u64)>, StoreError> {
        DiskStore::open_blob(self, key)
    }

    fn scratch_path(&self) -> PathBuf {
        DiskStore::scratch_path(self)
    }

    async fn recovered(&self) {
        DiskStore::recovered(self).await;
    }
}

#[async_trait]
impl Store for DiskStore {
    async fn get(&self, key: &BlobKey, accept_zstd: bool) -> Result<Option<Blob>, StoreError> {
        self.read(key, accept_zstd).await
    }

    async fn contains(&self, key: &BlobKey) -> Result<Option<u64>, StoreError> {
        let Some(entry) = self.reader.get(key)? else {
            return Ok(None);
        };
        self.note_use(key, &entry);
        Ok(Some(entry.size))
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        // From memory (presence.rs): a probe per digest; the index is read
        // only for what the map cannot answer (while it is being filled at
        // start, and blobs of 1 TiB and more).
        let now = crate::unix_now();
        let this_minute = minute_of(now);
        let touch_minutes = (self.cfg.touch_interval.as_secs() / 60).max(1) as u32;
        let mut missing = Vec::new();
        let mut ask_index = Vec::new();
        for d in digests {
            match self.presence.probe(&d.hash) {
                Probe::Present { size, minute } => {
                    if size != d.size {
                        missing.push(*d);
                    } else if minutes_since(minute, this_minute) >= touch_minutes {
                        let _ = self.tx.try_send(Op::Touch(BlobKey::cas(d.hash)));
                    }
                }
                Probe::Absent => missing.push(*d),
                Probe::Unknown => ask_index.push(*d),
            }
        }
        if !ask_index.is_empty() {
            let keys = ask_index.iter().map(|d| BlobKey::cas(d.hash));
            let entries = self.reader.get_many(keys)?;
            for (d, entry) in ask_index.iter().zip(entries) {
                match entry {
                    Some(e) if e.size == d.size => self.note_use(&BlobKey::cas(d.hash), &e),
                    _ => missing.push(*d),
                }
            }
            // Keep the caller's order.
            let order: std::collections::HashMap<_, _> = digests
                .iter()
                .enumerate()
                .map(|(i, d)| (d.hash, i))
                .collect();
            missing.sort_by_key(|d| order.get(&d.hash).copied().unwrap_or(usize::MAX));
        }
        Ok(missing)
    }

    async fn put(&self, req: PutRequest) -> Result<(), StoreError> {
        self.put_blob(req).await.map(|_| ())
    }

    fn stats(&self) -> StoreStats {
        self.stats.snapshot()
    }
}

impl Drop for DiskStore {
    /// Without [`DiskStore::close`], the index stays marked unclean and the
    /// next start runs recovery — the same path a crash takes.
    fn drop(&mut self) {
        self.cancel_background.store(true, Ordering::Relaxed);
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        // The writer stops once recovery (cancelled above) drops its sender.
        for thread in [
            self.writer.take(),
            self.recovery_thread.take(),
            self.adopt_thread.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
