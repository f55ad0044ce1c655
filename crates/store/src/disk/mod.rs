//! The local disk store: blobs as files under `dir`, indexed by redb, evicted
//! in LRU order to stay under `max_size`.
//!
//! A write streams into a temp file while it is hashed (and compressed, for
//! CAS blobs in zstd storage mode) and is checked against its digest; the
//! index writer then flushes it to stable storage with the rest of its
//! batch (group_sync.rs, when `fsync` is on), renames it to its final name
//! and indexes it: no reader ever sees a partial or unverified blob, and a
//! write is acknowledged only once it would survive a power loss.

mod group_sync;
mod index;
mod layout;
mod presence;
mod recovery;
mod sink;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::fs::File;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};

use self::index::{Entry, Insert, Op, Reservation, SharedStats};
use self::layout::Layout;
use self::presence::{Presence, Probe, minute_of, minutes_since};
use self::sink::{FileSink, TempFile};
use crate::budget::{
    DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MEMORY_WAIT, MemoryBudget, MemoryUse, ZSTD_ENCODER_BYTES,
};
use crate::progress::{CutCounts, ProgressGuard};
use crate::proxy::{LocalTier, Written};
use crate::zstd_decode;
use crate::{
    Blob, BlobBody, BlobFile, BlobReader, Encoding, PutRequest, Store, StoreError, StoreStats,
};
use bazel_cache_digest::{BlobKey, Digest, Hasher, Kind};

pub use self::recovery::RecoveryReport;

/// Largest chunk a write copies at a time. Big enough that a 1 MiB blob costs
/// four file writes, small enough that 64 concurrent uploads stay in 16 MiB.
const CHUNK: usize = 256 * 1024;
/// Blobs up to this size (stored and, for a plain read of a zstd-stored
/// blob, logical) are read whole in one blocking call and handed to the
/// front end as bytes it sends as they are; larger ones stream.
const WHOLE_READ: u64 = 256 * 1024;

/// A blob file opened for a read, on a blocking thread.
enum Opened {
    /// Small enough to read whole in the same hand-off (decompressed when
    /// the reader wants plain bytes of a zstd-stored blob).
    Whole(Vec<u8>),
    /// To stream, with its length on disk.
    File(std::fs::File, u64),
}

/// Opens a blob's file and, when it is small, reads it whole: one hand-off
/// to a blocking thread per read, where `tokio::fs` made three (open,
/// stat, read) and a context switch each, most of a 4 KiB GET's CPU.
/// `None` when the file is gone.
fn open_for_read(
    path: &std::path::Path,
    entry: &Entry,
    decompress: bool,
) -> Result<Option<Opened>, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let on_disk = file.metadata()?.len();
    if on_disk > WHOLE_READ || (decompress && entry.size > WHOLE_READ) {
        return Ok(Some(Opened::File(file, on_disk)));
    }
    // Exactly the length just stat'ed: a blob file never changes once in
    // place (replacements are renames), and a plain `read_to_end` would
    // stat and seek again and read once more to find the end.
    let mut bytes = crate::file_chunks::read_exactly(&file, on_disk)?;
    if decompress {
        bytes = decompress_whole(&bytes, entry.size)?;
    }
    Ok(Some(Opened::Whole(bytes)))
}

/// Decompresses a small zstd-stored blob in one call with a context
/// reused per thread (building a streaming decoder cost more than the
/// decompression), checking it has the size the index records.
fn decompress_whole(frames: &[u8], size: u64) -> Result<Vec<u8>, StoreError> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let data = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        let decompressor = cell.as_mut().expect("just set");
        // One byte more than expected, so a longer blob is detected.
        decompressor.decompress(frames, size as usize + 1)
    })?;
    if data.len() as u64 != size {
        return Err(StoreError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "stored blob decompresses to {} bytes, the index says {size}",
                data.len()
            ),
        )));
    }
    Ok(data)
}

/// zstd level for CAS blobs in zstd storage mode: level 1 compresses at
/// several hundred MB/s per core, so compression does not dominate a PUT.
pub(super) const ZSTD_LEVEL: i32 = 1;

/// Write slots unless `max_concurrent_writes` says otherwise: the one place
/// this default is written (the server's `--help` shows it).
pub const DEFAULT_MAX_CONCURRENT_WRITES: usize = 256;

/// The least an upload body must bring, in bytes per second averaged over
/// [`DEFAULT_BODY_RATE_WINDOW`] of waiting on it (`body_min_rate`). 256 B/s
/// is 1/500 of a 1 Mbit/s link: a laptop on such a VPN uploading 100 blobs
/// at once (Bazel's `--remote_max_connections` default) gives each about
/// 1.25 kB/s, five times this; and a window asks for 7.5 KiB, less than one
/// of Bazel's 16 KiB ByteStream chunks, which gRPC delivers only whole.
pub const DEFAULT_BODY_MIN_RATE: u64 = 256;
/// The longest an upload body may go without a byte before the write is
/// abandoned (the server's `http_read_timeout` overrides it).
pub const DEFAULT_BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The window over which [`DEFAULT_BODY_MIN_RATE`] is averaged
/// (`body_rate_window`). Long enough to ride out gRPC flow-control pauses,
/// TCP retransmission back-off and a chunk arriving whole on a slow link;
/// short enough that a body sending a byte a second is cut after 30 s of
/// waiting on it (the stall limit alone let it run for ever, and before
/// that cut only a body silent for 60 s).
pub const DEFAULT_BODY_RATE_WINDOW: Duration = Duration::from_secs(30);

/// Settings of the disk store; the server fills them from its validated config.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub dir: PathBuf,
    pub max_size_bytes: u64,
    /// How CAS blobs are kept on disk (AC entries are always kept as sent).
    pub cas_encoding: Encoding,
    pub max_blob_size: u64,
    pub fsync: bool,
    /// A read moves an entry to the LRU tail at most once per this interval,
    /// so hot blobs don't turn every read into an index write.
    pub touch_interval: Duration,
    /// `max_size_hard_limit`: writes are refused when the bytes in flight
    /// (being received) would exceed it. `None`: max_size is the bound.
    pub hard_limit_bytes: Option<u64>,
    /// Write slots (`max_concurrent_writes`): writes working on bytes
    /// they have at once; more wait, first come first served (see
    /// [`DiskStore`]'s `write_slots`).
    pub max_concurrent_writes: usize,
    /// How long a write waits for a slot before it is refused as busy.
    pub write_slot_wait: Duration,
    /// A body that sends nothing for this long is abandoned, freeing its
    /// reservation and temp file (`http_read_timeout`, default 60 s).
    pub body_stall_timeout: Duration,
    /// A body must also bring this many bytes per second averaged over
    /// every `body_rate_window` of waiting on it, or it is abandoned the
    /// same way (`body_min_rate`; 0: no rate check).
    pub body_min_rate: u64,
    pub body_rate_window: Duration,
    /// The memory budget (`max_buffer_memory`) a write's buffers and zstd
    /// contexts, and a read's decoder, are reserved from; shared with the
    /// front ends.
    pub memory: Arc<MemoryBudget>,
}

impl DiskConfig {
    pub fn new(dir: impl Into<PathBuf>, max_size_bytes: u64) -> Self {
        DiskConfig {
            dir: dir.into(),
            max_size_bytes,
            cas_encoding: Encoding::Zstd,
            max_blob_size: u64::MAX,
            fsync: true,
            touch_interval: Duration::from_secs(60),
            hard_limit_bytes: None,
            max_concurrent_writes: DEFAULT_MAX_CONCURRENT_WRITES,
            write_slot_wait: Duration::from_secs(60),
            body_stall_timeout: DEFAULT_BODY_STALL_TIMEOUT,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            body_rate_window: DEFAULT_BODY_RATE_WINDOW,
            memory: MemoryBudget::new(DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MEMORY_WAIT),
        }
    }
}

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
    cancel_recovery: Arc<AtomicBool>,
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
        // Temp files are writes that never finished: no one will claim them.
        for entry in std::fs::read_dir(layout.tmp_dir())? {
            let _ = std::fs::remove_file(entry?.path());
        }
        let stats = Arc::new(SharedStats::default());
        stats.max.store(cfg.max_size_bytes, Ordering::Relaxed);
        let opened = index::open(&layout, &stats)?;
        // Shard directories are made once, on first use of `dir`; a restart
        // skips 512 mkdirs (the writer re-creates a shard if one goes missing).
        if Kind::ALL.iter().any(|k| !layout.kind_dir(*k).is_dir()) {
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
        let cancel_recovery = Arc::new(AtomicBool::new(false));
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
                cancel_recovery.clone(),
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

        Ok(DiskStore {
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
            cancel_recovery,
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
        self.cancel_recovery.store(true, Ordering::Relaxed);
        // It stops at its next file; the writer keeps serving it until then.
        if let Some(thread) = self.recovery_thread.take() {
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
        Box::pin(
            ProgressGuard::new(body, self.cfg.body_stall_timeout, "upload")
                .min_rate(self.cfg.body_min_rate, self.cfg.body_rate_window)
                .counting(self.cuts.clone()),
        )
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

    /// [`Store::put`], telling whether bytes were written or an identical
    /// CAS blob was already there (a proxy then has nothing new to upload).
    pub async fn put_blob(&self, req: PutRequest) -> Result<Written, StoreError> {
        if let Some(size) = req.size {
            if size > self.cfg.max_blob_size {
                return Err(StoreError::TooLarge {
                    size,
                    limit: self.cfg.max_blob_size,
                });
            }
            if size > self.cfg.max_size_bytes {
                return Err(StoreError::InsufficientStorage {
                    size,
                    capacity: self.cfg.max_size_bytes,
                });
            }
        }
        let key = req.key;
        if key.kind == Kind::Cas && self.reader.get(&key)?.is_some() {
            // Already stored (clients re-upload what others built): verify the
            // bytes, so a bad upload still gets its error, but write nothing.
            self.write_temp(None, req).await?;
            if let Some(entry) = self.reader.get(&key)? {
                self.note_use(&key, &entry);
            }
            return Ok(Written::AlreadyPresent);
        }
        // Unknown sizes (a compressed HTTP body) reserve once written.
        let mut reservation = match req.size {
            Some(size) => Some(self.reserve(size)?),
            None => None,
        };
        let received = self.write_temp(Some(self.layout.tmp_path()), req).await?;
        let Some((tmp, stored, encoding)) = received.file else {
            return Err(StoreError::Io(io::Error::other("write produced no file")));
        };
        if reservation.is_none() {
            reservation = Some(self.reserve(stored)?);
        }
        let (done, wait) = oneshot::channel();
        let insert = Insert {
            key,
            from: tmp.path.clone(),
            size: received.size,
            stored,
            encoding,
            adopt: false,
            // The writer releases it when it counts the blob as stored.
            reservation,
        };
        if self.tx.send(Op::Insert(insert, done)).await.is_err() {
            return Err(StoreError::Closed);
        }
        tmp.hand_over();
        // The writer answers once the blob is durable (group commit).
        wait.await.map_err(|_| StoreError::Closed)??;
        Ok(Written::Stored)
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

    /// Copies the body into a temp file at `tmp` (`None`: an identical CAS
    /// blob is stored, only verify): decode, hash, count, check limits,
    /// encode for storage.
    ///
    /// Received bytes collect in a buffer with no write slot held; a slot
    /// is taken while one blocking task hashes, encodes and writes each full
    /// buffer (the first also creates the file, the last also closes it),
    /// then given back. One hand-off per buffer, none per network frame.
    async fn write_temp(
        &self,
        tmp: Option<PathBuf>,
        req: PutRequest,
    ) -> Result<Received, StoreError> {
        let PutRequest {
            key,
            size,
            encoding,
            body,
        } = req;
        let body = self.guard_upload(body);
        let mut input: BlobReader = match encoding {
            Encoding::Identity => body,
            Encoding::Zstd => Box::pin(zstd_decode::decoder(body, &self.cfg.memory).await?),
        };
        let wanted = match key.kind {
            Kind::Cas => self.cfg.cas_encoding,
            Kind::Ac => Encoding::Identity,
        };

        let limit = size.unwrap_or(u64::MAX).min(self.cfg.max_blob_size);
        let cap = size.map_or(CHUNK, |s| (s as usize).saturating_add(1).clamp(1, CHUNK));
        // The receive buffer and the storage encoder, from the memory budget.
        let encoder = if tmp.is_some() && wanted == Encoding::Zstd {
            ZSTD_ENCODER_BYTES
        } else {
            0
        };
        let _buffers = (self.cfg.memory)
            .reserve(MemoryUse::UploadBuffer, cap as u64 + encoder)
            .await?;
        let mut work = Work {
            hasher: Hasher::new(),
            sink: None,
            create: tmp.map(|path| (path, wanted)),
            buf: vec![0u8; cap],
            finished: None,
        };
        let mut filled = 0;
        let mut seen = 0u64;
        loop {
            // No slot is held here: this is the wait on the client.
            let n = input
                .read(&mut work.buf[filled..])
                .await
                .map_err(StoreError::body)?;
            if n == 0 {
                break;
            }
            filled += n;
            seen += n as u64;
            if seen > limit {
                return Err(match size {
                    Some(expected) if seen > expected && expected <= self.cfg.max_blob_size => {
                        StoreError::SizeMismatch {
                            expected,
                            actual: seen,
                        }
                    }
                    _ => StoreError::TooLarge {
                        size: seen,
                        limit: self.cfg.max_blob_size,
                    },
                });
            }
            if seen > self.cfg.max_size_bytes {
                return Err(StoreError::InsufficientStorage {
                    size: seen,
                    capacity: self.cfg.max_size_bytes,
                });
            }
            if filled == work.buf.len() {
                let _slot = self.write_slot().await?;
                work = work.run(filled, false).await?;
                filled = 0;
            }
        }
        // The last chunk, closing the file, then the size and digest checks.
        let _slot = self.write_slot().await?;
        let work = work.run(filled, true).await?;
        let logical = work.hasher.len();
        if let Some(expected) = size
            && expected != logical
        {
            return Err(StoreError::SizeMismatch {
                expected,
                actual: logical,
            });
        }
        let actual = work.hasher.finish();
        if key.kind == Kind::Cas && actual != key.hash {
            return Err(StoreError::DigestMismatch {
                expected: key.hash,
                actual,
            });
        }
        Ok(Received {
            size: logical,
            file: work.finished,
        })
    }
}

/// What [`DiskStore::write_temp`] received: the blob's logical size and,
/// unless it only verified, its temp file, stored size and encoding.
struct Received {
    size: u64,
    file: Option<(TempFile, u64, Encoding)>,
}

/// A write's state that its blocking tasks work on: moved into each task
/// and back, so no lock is shared and a dropped put drops it (and its temp
/// file) wherever it is.
struct Work {
    hasher: Hasher,
    sink: Option<FileSink>,
    /// The temp file to create in the first task, and the encoding wanted.
    create: Option<(PathBuf, Encoding)>,
    buf: Vec<u8>,
    /// Set by the last task: the closed temp file, its size and encoding.
    finished: Option<(TempFile, u64, Encoding)>,
}

/// Hashing a chunk this small costs less than handing it to a thread, when
/// there is no file to write.
const INLINE_HASH: usize = 64 * 1024;

impl Work {
    /// Hashes and stores `buf[..len]`; `last` also closes the file.
    fn step(&mut self, len: usize, last: bool) -> io::Result<()> {
        if let Some((path, encoding)) = self.create.take() {
            self.sink = Some(FileSink::create(path, encoding)?);
        }
        let chunk = &self.buf[..len];
        self.hasher.update(chunk);
        if let Some(sink) = self.sink.as_mut() {
            sink.write(chunk)?;
        }
        if last {
            let sink = self.sink.take().unwrap_or_else(FileSink::discard);
            self.finished = sink.finish()?;
        }
        Ok(())
    }

    /// [`Work::step`] on a blocking thread, or inline when it only hashes
    /// a small chunk.
    async fn run(mut self, len: usize, last: bool) -> Result<Work, StoreError> {
        let writes = self.create.is_some() || self.sink.as_ref().is_some_and(FileSink::writes_file);
        if !writes && len <= INLINE_HASH {
            self.step(len, last)?;
            return Ok(self);
        }
        tokio::task::spawn_blocking(move || self.step(len, last).map(|()| self))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("write task failed: {e}"))))?
            .map_err(StoreError::from)
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
        let Some(entry) = self.reader.get(key)? else {
            return Ok(None);
        };
        let path = self.layout.blob_path(key, entry.encoding);
        let decompress = entry.encoding == Encoding::Zstd && !accept_zstd;
        let opened = tokio::task::spawn_blocking(move || open_for_read(&path, &entry, decompress))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("read task failed: {e}"))))??;
        let Some(opened) = opened else {
            // Evicted or replaced between the lookup and the open, or lost:
            // the writer drops the entry if the file is really gone.
            self.forget(key);
            return Ok(None);
        };
        self.note_use(key, &entry);
        Ok(Some(match opened {
            Opened::Whole(bytes) => Blob {
                size: if decompress || entry.encoding == Encoding::Identity {
                    bytes.len() as u64
                } else {
                    entry.size
                },
                encoding: if decompress {
                    Encoding::Identity
                } else {
                    entry.encoding
                },
                body_len: Some(bytes.len() as u64),
                body: BlobBody::Bytes(bytes.into()),
            },
            // The open file's length, not the index's: an AC entry may have
            // been replaced by a different-sized one since the lookup.
            Opened::File(file, on_disk) if entry.encoding == Encoding::Identity => Blob {
                size: on_disk,
                encoding: Encoding::Identity,
                body_len: Some(on_disk),
                body: BlobBody::File(BlobFile { file, len: on_disk }),
            },
            Opened::File(file, on_disk) if !decompress => Blob {
                size: entry.size,
                encoding: Encoding::Zstd,
                body_len: Some(on_disk),
                body: BlobBody::File(BlobFile { file, len: on_disk }),
            },
            Opened::File(file, _) => {
                let mut dec = zstd_decode::decoder(File::from_std(file), &self.cfg.memory).await?;
                // A full budget is refused here, before the caller answers.
                zstd_decode::reserve_first_frame(&mut dec).await?;
                Blob {
                    size: entry.size,
                    encoding: Encoding::Identity,
                    body_len: Some(entry.size),
                    body: BlobBody::Stream(Box::pin(dec)),
                }
            }
        }))
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
        self.cancel_recovery.store(true, Ordering::Relaxed);
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        // The writer stops once recovery (cancelled above) drops its sender.
        for thread in [self.writer.take(), self.recovery_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
