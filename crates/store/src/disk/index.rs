//! The redb index: one row per blob (kind, hash → size, encoding, LRU position)
//! plus an LRU table ordered by last use. Start-up reads three counters from
//! it instead of walking the blob tree, so a restart with millions of entries
//! takes milliseconds.
//!
//! Reads go straight to redb (MVCC snapshots, no lock shared with writers).
//! Every mutation goes through one writer thread ([`Writer`]) that applies
//! them in batches: a burst of puts shares one transaction (group commit), and
//! access-time updates ride along instead of costing a transaction per read.
//!
//! Durability: blob files are the source of truth. Index commits are
//! non-durable (no fsync) except every [`DURABLE_EVERY`] and at shutdown; after
//! an unclean stop, recovery (recovery.rs) reconciles the index with the files.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::group_sync::GroupSync;
use super::layout::Layout;
use super::presence::Presence;
use crate::{Encoding, StoreError, StoreStats, unix_now};
use bazel_cache_digest::{BlobKey, Kind};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const LRU: TableDefinition<u64, &[u8]> = TableDefinition::new("lru");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_STORED: &str = "stored_bytes";
const META_LOGICAL: &str = "logical_bytes";
const META_ENTRIES: &str = "entries";
const META_NEXT_SEQ: &str = "next_seq";
/// 1 when the last process closed the index cleanly; 0 while one runs.
const META_CLEAN: &str = "clean_shutdown";

/// Longest time a committed index change may stay non-durable.
pub(super) const DURABLE_EVERY: Duration = Duration::from_secs(2);
/// Fault injection for the crash tests: milliseconds the writer sleeps in
/// every group commit after the batch's files are renamed into place and
/// before they are acknowledged, logging a warning as it starts, so a test
/// can kill the process there. Unset in production.
pub(super) const PAUSE_GROUP_COMMIT_ENV: &str = "BAZEL_CACHE_FAULT_PAUSE_GROUP_COMMIT_MS";

/// Index entries put into the presence map per slice at start, between
/// batches of operations (a few milliseconds each).
const PRESENCE_SLICE: usize = 20_000;

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 4096;

const ENTRY_LEN: usize = 8 * 4 + 1;

/// One indexed blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    /// Logical (uncompressed) size.
    pub size: u64,
    /// Bytes on disk; what counts against `max_size`.
    pub stored: u64,
    /// Position in LRU order (higher = used more recently).
    pub seq: u64,
    /// Last use, seconds since the Unix epoch.
    pub atime: u64,
    pub encoding: Encoding,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..16].copy_from_slice(&self.stored.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.atime.to_le_bytes());
        out[32] = match self.encoding {
            Encoding::Identity => 0,
            Encoding::Zstd => 1,
        };
        out
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() != ENTRY_LEN {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Entry {
            size: u(0),
            stored: u(8),
            seq: u(16),
            atime: u(24),
            encoding: match bytes[32] {
                0 => Encoding::Identity,
                1 => Encoding::Zstd,
                _ => return None,
            },
        })
    }
}

fn index_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

/// Counters published by the writer for `/status` and metrics; read without locks.
#[derive(Debug, Default)]
pub(super) struct SharedStats {
    pub stored: AtomicU64,
    pub logical: AtomicU64,
    pub entries: AtomicU64,
    pub reserved: AtomicU64,
    pub evicted: AtomicU64,
    /// Entries removed by LRU eviction since start (metrics).
    pub evictions: AtomicU64,
    pub overwritten: AtomicU64,
    pub max: AtomicU64,
}

impl SharedStats {
    pub(super) fn snapshot(&self) -> StoreStats {
        StoreStats {
            stored_bytes: self.stored.load(Ordering::Relaxed),
            logical_bytes: self.logical.load(Ordering::Relaxed),
            reserved_bytes: self.reserved.load(Ordering::Relaxed),
            max_bytes: self.max.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            evicted_bytes: self.evicted.load(Ordering::Relaxed),
            overwritten_bytes: self.overwritten.load(Ordering::Relaxed),
        }
    }
}

/// Bytes promised to a write in flight, counted in [`SharedStats::reserved`]
/// so that eviction makes room for them before the blob lands. Released on
/// drop: when the write fails, or when the writer counts the blob as stored.
pub(super) struct Reservation {
    stats: Arc<SharedStats>,
    bytes: u64,
}

impl Reservation {
    /// Reserves `bytes` unless the bytes of all writes in flight, these
    /// included, would exceed `limit`. Stored blobs don't count: eviction
    /// can always make room for them, but not for bytes still arriving.
    /// `Err` carries the bytes already in flight.
    pub(super) fn try_new(stats: &Arc<SharedStats>, bytes: u64, limit: u64) -> Result<Self, u64> {
        let mut current = stats.reserved.load(Ordering::Relaxed);
        loop {
            let after = current.saturating_add(bytes);
            if after > limit {
                return Err(current);
            }
            match stats.reserved.compare_exchange_weak(
                current,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        stats: stats.clone(),
                        bytes,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// True when stored plus in-flight bytes are over `max_size`: eviction
    /// should run now rather than at the next write's commit.
    pub(super) fn needs_room(&self) -> bool {
        let s = &self.stats;
        s.stored
            .load(Ordering::Relaxed)
            .saturating_add(s.reserved.load(Ordering::Relaxed))
            > s.max.load(Ordering::Relaxed)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stats.reserved.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What opening the index found out about the previous run.
pub(super) struct Opened {
    pub db: Arc<Database>,
    /// False after a crash, or when blob directories exist without an index:
    /// recovery must reconcile index and files.
    pub was_clean: bool,
}

/// Opens (or creates) the index and marks it in use.
pub(super) fn open(layout: &Layout, stats: &SharedStats) -> Result<Opened, StoreError> {
    let path = layout.index_path();
    let existed = path.exists();
    let mut builder = Database::builder();
    if let Some(mb) = std::env::var("XX_INDEX_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        builder.set_cache_size(mb << 20);
    }
    let db = builder.create(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.clone()),
        e => StoreError::Index(format!("opening {}: {e}", path.display())),
    })?;
    let txn = db.begin_write().map_err(index_err)?;
    let was_clean;
    {
        let mut meta = txn.open_table(META).map_err(index_err)?;
        let get = |m: &redb::Table<&str, u64>, k: &str| -> Result<u64, StoreError> {
            Ok(m.get(k).map_err(index_err)?.map(|v| v.value()).unwrap_or(0))
        };
        was_clean = if existed {
            get(&meta, META_CLEAN)? == 1
        } else {
            // A new index over existing blob directories (index deleted, or an
            // older layout) must adopt what is there.
            !Kind::ALL.iter().any(|k| layout.kind_dir(*k).exists())
        };
        stats
            .stored
            .store(get(&meta, META_STORED)?, Ordering::Relaxed);
        stats
            .logical
            .store(get(&meta, META_LOGICAL)?, Ordering::Relaxed);
        stats
            .entries
            .store(get(&meta, META_ENTRIES)?, Ordering::Relaxed);
        meta.insert(META_CLEAN, 0).map_err(index_err)?;
        txn.open_table(ENTRIES).map_err(index_err)?;
        txn.open_table(LRU).map_err(index_err)?;
    }
    txn.commit().map_err(index_err)?;
    Ok(Opened {
        db: Arc::new(db),
        was_clean,
    })
}

/// Read access to the index. Cheap to clone.
#[derive(Clone)]
pub(super) struct Reader {
    db: Arc<Database>,
}

impl Reader {
    pub(super) fn new(db: Arc<Database>) -> Self {
        Reader { db }
    }

    pub(super) fn get(&self, key: &BlobKey) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(ENTRIES).map_err(index_err)?;
        let found = table.get(key.to_bytes().as_slice()).map_err(index_err)?;
        Ok(found.and_then(|v| Entry::decode(v.value())))
    }

    /// Looks up many keys in one snapshot (FindMissingBlobs).
    pub(super) fn get_many(
        &self,
        keys: impl Iterator<Item = BlobKey>,
    ) -> Result<Vec<Option<Entry>>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(ENTRIES).map_err(index_err)?;
        keys.map(|key| {
            let found = table.get(key.to_bytes().as_slice()).map_err(index_err)?;
            Ok(found.and_then(|v| Entry::decode(v.value())))
        })
        .collect()
    }

    /// Visits every entry (recovery and tests); `f` returns false to stop.
    pub(super) fn for_each(
        &self,
        mut f: impl FnMut(BlobKey, Entry) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(ENTRIES).map_err(index_err)?;
        for row in table.iter().map_err(index_err)? {
            let (k, v) = row.map_err(index_err)?;
            if let (Some(key), Some(entry)) =
                (BlobKey::from_bytes(k.value()), Entry::decode(v.value()))
                && !f(key, entry)
            {
                break;
            }
        }
        Ok(())
    }

    /// Last use (seconds since the Unix epoch) of the least recently used
    /// entry, `None` when the index is empty. One snapshot, two lookups: the
    /// head of the LRU table and its entry (for metrics scrapes).
    pub(super) fn lru_head_atime(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let lru = txn.open_table(LRU).map_err(index_err)?;
        let Some((_, key)) = lru.first().map_err(index_err)? else {
            return Ok(None);
        };
        let entries = txn.open_table(ENTRIES).map_err(index_err)?;
        let found = entries.get(key.value()).map_err(index_err)?;
        Ok(found
            .and_then(|v| Entry::decode(v.value()))
            .map(|e| e.atime))
    }

    /// Keys from least to most recently used (tests and diagnostics).
    pub(super) fn lru_order(&self) -> Result<Vec<BlobKey>, StoreError> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(LRU).map_err(index_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(index_err)? {
            let (_, v) = row.map_err(index_err)?;
            out.extend(BlobKey::from_bytes(v.value()));
        }
        Ok(out)
    }
}

/// A finished blob that the writer moves into place and indexes.
pub(super) struct Insert {
    pub key: BlobKey,
    /// Where the verified bytes are now: a temp file to rename, or (recovery)
    /// the final path already.
    pub from: PathBuf,
    pub size: u64,
    pub stored: u64,
    pub encoding: Encoding,
    /// Recovery adopts a file that is already in place: keep an existing entry.
    pub adopt: bool,
    /// The write's reservation (none for recovery). The writer releases it
    /// just before the commit that counts the blob in `stored`; held until
    /// after, the blob's bytes counted twice (reserved + stored) and eviction
    /// removed blobs that fit, even the new blob itself when it was larger
    /// than half of max_size.
    pub reservation: Option<Reservation>,
}

/// Renames a finished temp file to its final name, re-creating the shard
/// directory if someone removed it.
fn rename_into_shard(from: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
    match std::fs::rename(from, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(from, dest)
        }
        other => other,
    }
}

/// Where the writer reports the outcome of an insert.
pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;

pub(super) enum Op {
    Insert(Insert, Reply),
    /// A read used this key; move it to the LRU tail.
    Touch(BlobKey),
    /// A reader or recovery found the file of this key missing.
    Forget(BlobKey),
    /// Commit durably now and report.
    Flush(oneshot::Sender<()>),
    /// Lets the writer make a periodic durable commit while idle.
    Tick,
    /// A write reserved space that takes stored + in-flight bytes over
    /// max_size: evict now, so the disk holds at most max_size plus what is
    /// being written at this moment.
    MakeRoom,
    /// Orderly shutdown: commit durably, stop. `clean` marks the index as
    /// matching the files, so the next start skips recovery: false when a
    /// recovery was cancelled before it finished.
    Shutdown {
        clean: bool,
        done: oneshot::Sender<()>,
    },
}

/// The writer side: owns all index mutations, file renames and evictions, so
/// that they happen in one order and size accounting never races.
pub(super) struct Writer {
    db: Arc<Database>,
    layout: Layout,
    stats: Arc<SharedStats>,
    fsync: bool,
    durable: GroupSync,
    /// Fault injection for the crash tests ([`PAUSE_GROUP_COMMIT_ENV`]).
    pause_in_group_commit: Option<Duration>,
    /// Which CAS blobs are stored, for FindMissingBlobs (presence.rs):
    /// written only here, in commit order.
    presence: Arc<Presence>,
    /// Where filling `presence` from the index goes on: the next key.
    presence_cursor: Vec<u8>,
    next_seq: u64,
    dirty_since_durable: bool,
    last_durable: Instant,
}

impl Writer {
    pub(super) fn new(
        db: Arc<Database>,
        layout: Layout,
        stats: Arc<SharedStats>,
        fsync: bool,
        presence: Arc<Presence>,
    ) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(index_err)?;
        let meta = txn.open_table(META).map_err(index_err)?;
        let next_seq = meta
            .get(META_NEXT_SEQ)
            .map_err(index_err)?
            .map(|v| v.value())
            .unwrap_or(1);
        let pause_in_group_commit = std::env::var(PAUSE_GROUP_COMMIT_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        Ok(Writer {
            pause_in_group_commit,
            presence,
            presence_cursor: BlobKey::cas(bazel_cache_digest::Hash([0; 32]))
                .to_bytes()
                .to_vec(),
            durable: GroupSync::new(layout.tmp_dir())?,
            db,
            layout,
            stats,
            fsync,
            next_seq,
            dirty_since_durable: false,
            last_durable: Instant::now(),
        })
    }

    /// Applies operations in batches until [`Op::Shutdown`]. If every sender
    /// goes away without one (the store was dropped, not closed), the index
    /// stays marked unclean, exactly as after a crash.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        loop {
            // Until the presence map is filled, fill a slice whenever no
            // operation waits; after that, sleep until one comes.
            let op = if self.presence.is_loaded() {
                rx.blocking_recv()
            } else {
                match rx.try_recv() {
                    Ok(op) => Some(op),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.load_presence_slice();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Some(op) = op else { break };
            let mut batch = vec![op];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut shutdown = None;
            batch.retain_mut(|op| match op {
                Op::Shutdown { .. } => {
                    if let Op::Shutdown { clean, done } = std::mem::replace(op, Op::Tick) {
                        shutdown = Some((clean, done));
                    }
                    false
                }
                _ => true,
            });
            self.apply(batch);
            if let Some((clean, done)) = shutdown {
                if let Err(e) = self.close(clean) {
                    tracing::error!(error = %e, "index was not closed cleanly; recovery will run at next start");
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Puts the next [`PRESENCE_SLICE`] CAS entries of the index into the
    /// presence map, from the latest commit (this thread makes every
    /// commit, so nothing changes under it), and marks the map loaded
    /// after the last. Changes to entries before the cursor reach the map
    /// through `apply`; those after it are read here in their latest form.
    fn load_presence_slice(&mut self) {
        let result = (|| -> Result<bool, StoreError> {
            let txn = self.db.begin_read().map_err(index_err)?;
            let table = txn.open_table(ENTRIES).map_err(index_err)?;
            let mut last = None;
            let mut n = 0;
            for row in table
                .range(self.presence_cursor.as_slice()..)
                .map_err(index_err)?
            {
                let (k, v) = row.map_err(index_err)?;
                let Some(key) = BlobKey::from_bytes(k.value()) else {
                    continue;
                };
                if key.kind != Kind::Cas {
                    break;
                }
                if let Some(e) = Entry::decode(v.value()) {
                    self.presence.insert(&key.hash, e.size, e.atime);
                }
                last = Some(k.value().to_vec());
                n += 1;
                if n == PRESENCE_SLICE {
                    break;
                }
            }
            match last {
                Some(mut key) if n == PRESENCE_SLICE => {
                    // The smallest key after `key`.
                    key.push(0);
                    self.presence_cursor = key;
                    Ok(false)
                }
                _ => Ok(true),
            }
        })();
        match result {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(
                    blobs = self.presence.len(),
                    "presence map loaded: blob existence checks answer from memory"
                );
                self.presence.mark_loaded();
            }
            Err(e) => {
                // Stay on the index for misses; try again later.
                tracing::warn!(error = %e, "filling the presence map failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn close(&mut self, clean: bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(index_err)?;
        {
            let mut meta = txn.open_table(META).map_err(index_err)?;
            meta.insert(META_CLEAN, u64::from(clean))
                .map_err(index_err)?;
        }
        txn.commit().map_err(index_err)
    }

    fn apply(&mut self, batch: Vec<Op>) {
        let mut inserts = Vec::new();
        let mut touches = BTreeSet::new();
        let mut forgets = Vec::new();
        let mut flushes = Vec::new();
        let mut make_room = false;
        for op in batch {
            match op {
                Op::Insert(ins, done) => inserts.push((ins, done)),
                Op::Touch(k) => {
                    touches.insert(k);
                }
                Op::Forget(k) => forgets.push(k),
                Op::Flush(done) => flushes.push(done),
                Op::MakeRoom => make_room = true,
                Op::Tick | Op::Shutdown { .. } => {}
            }
        }
        let durable = !flushes.is_empty()
            || (self.dirty_since_durable && self.last_durable.elapsed() >= DURABLE_EVERY);
        let over = make_room && {
            let s = &self.stats;
            s.stored
                .load(Ordering::Relaxed)
                .saturating_add(s.reserved.load(Ordering::Relaxed))
                > s.max.load(Ordering::Relaxed)
        };
        if inserts.is_empty() && touches.is_empty() && forgets.is_empty() && !durable && !over {
            return;
        }

        let t0 = Instant::now();
        let n_inserts = inserts.len();
        let n_touches = touches.len();
        // Group commit: the bytes of every new blob in this batch reach
        // stable storage in one flush, before any of them is renamed into
        // place (a file under its final name is always whole)...
        if self.fsync && inserts.iter().any(|(ins, _)| !ins.adopt) {
            let sources: Vec<&std::path::Path> = inserts
                .iter()
                .filter(|(ins, _)| !ins.adopt)
                .map(|(ins, _)| ins.from.as_path())
                .collect();
            if let Err(e) = self.durable.sync_files(&sources) {
                tracing::error!(error = %e, "flushing new blobs to stable storage failed");
                let reason = e.to_string();
                for (ins, done) in inserts {
                    if !ins.adopt {
                        let _ = std::fs::remove_file(&ins.from);
                        let _ =
                            done.send(Err(StoreError::Io(std::io::Error::other(reason.clone()))));
                    }
                }
                return;
            }
        }
        let ta = Instant::now();
        // ...then moved into place: a rename that fails is reported to its
        // writer and never indexed.
        let mut placed = Vec::with_capacity(inserts.len());
        let mut dirs = BTreeSet::new();
        for (mut ins, done) in inserts {
            // From here on the blob is accounted by `commit` (or failed).
            drop(ins.reservation.take());
            let dest = self.layout.blob_path(&ins.key, ins.encoding);
            if !ins.adopt {
                if let Err(e) = rename_into_shard(&ins.from, &dest) {
                    let _ = std::fs::remove_file(&ins.from);
                    let _ = done.send(Err(e.into()));
                    continue;
                }
                if let Some(parent) = dest.parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
            placed.push((ins, dest, done));
        }
        let tb = Instant::now();
        if let Some(pause) = self.pause_in_group_commit
            && !placed.is_empty()
        {
            tracing::warn!(
                blobs = placed.len(),
                "fault injection: group commit paused between rename and acknowledgement"
            );
            std::thread::sleep(pause);
        }
        // ...and the renames are made durable in a second flush before any
        // write is acknowledged. (The index commit below need not be
        // durable: after a crash, recovery rebuilds it from the files.)
        if self.fsync
            && !dirs.is_empty()
            && let Err(e) = self.durable.sync_dirs(&dirs)
        {
            tracing::error!(error = %e, "flushing renamed blobs to stable storage failed");
            for (_, dest, done) in placed {
                let _ = std::fs::remove_file(&dest);
                let _ = done.send(Err(StoreError::Io(std::io::Error::other(e.to_string()))));
            }
            return;
        }

        let t1 = Instant::now();
        let result = self.commit(&placed, &touches, &forgets, durable);
        tracing::debug!(
            n_inserts,
            n_touches,
            durable,
            files_ms = (t1 - t0).as_secs_f64() * 1e3,
            sync1_ms = (ta - t0).as_secs_f64() * 1e3,
            rename_ms = (tb - ta).as_secs_f64() * 1e3,
            sync2_ms = (t1 - tb).as_secs_f64() * 1e3,
            commit_ms = t1.elapsed().as_secs_f64() * 1e3,
            "TIMING"
        );
        match result {
            Ok(outcome) => {
                for path in outcome.unlink {
                    if let Err(e) = std::fs::remove_file(&path)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(path = %path.display(), error = %e, "removing evicted blob");
                    }
                }
                let now = unix_now();
                for key in touches.iter().filter(|k| k.kind == Kind::Cas) {
                    if let Some(size) = outcome.touched.get(key) {
                        self.presence.insert(&key.hash, *size, now);
                    }
                }
                for (ins, _, done) in placed {
                    if ins.key.kind == Kind::Cas {
                        self.presence.insert(&ins.key.hash, ins.size, now);
                    }
                    let _ = done.send(Ok(()));
                }
                if durable {
                    self.dirty_since_durable = false;
                    self.last_durable = Instant::now();
                } else {
                    self.dirty_since_durable = true;
                }
                for f in flushes {
                    let _ = f.send(());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "index commit failed");
                for (ins, dest, done) in placed {
                    if !ins.adopt {
                        let _ = std::fs::remove_file(&dest);
                    }
                    let _ = done.send(Err(StoreError::Index(e.to_string())));
                }
                // Flush waiters learn of the failure by their sender dropping.
            }
        }
    }

    fn commit(
        &mut self,
        placed: &[(Insert, PathBuf, Reply)],
        touches: &BTreeSet<BlobKey>,
        forgets: &[BlobKey],
        durable: bool,
    ) -> Result<CommitOutcome, StoreError> {
        let mut txn = self.db.begin_write().map_err(index_err)?;
        if durable {
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(Durability::None).map_err(index_err)?;
        }
        let now = unix_now();
        let max = self.stats.max.load(Ordering::Relaxed);
        let reserved = self.stats.reserved.load(Ordering::Relaxed);
        let mut totals = Totals::load(&self.stats);
        let mut unlink = Vec::new();
        let mut overwritten = 0u64;
        let mut evicted = 0u64;
        let mut evictions = 0u64;
        let mut next_seq = self.next_seq;
        let mut touched = std::collections::HashMap::new();
        {
            let mut entries = txn.open_table(ENTRIES).map_err(index_err)?;
            let mut lru = txn.open_table(LRU).map_err(index_err)?;

            for key in forgets {
                let k = key.to_bytes();
                let Some(old) = entries
                    .get(k.as_slice())
                    .map_err(index_err)?
                    .and_then(|v| Entry::decode(v.value()))
                else {
                    continue;
                };
                // Re-check under the writer's order: a put may have restored it.
                if self.layout.blob_path(key, old.encoding).exists() {
                    continue;
                }
                if key.kind == Kind::Cas {
                    self.presence.remove(&key.hash);
                }
                entries.remove(k.as_slice()).map_err(index_err)?;
                lru.remove(old.seq).map_err(index_err)?;
                totals.remove(&old);
            }

            // Touches first: they record reads that happened before the
            // writes in this batch, and a new blob is the most recent use.
            // (The other order could rank a just-written blob oldest and
            // evict it at once when the cache is full.)
            for key in touches {
                let k = key.to_bytes();
                let Some(mut entry) = entries
                    .get(k.as_slice())
                    .map_err(index_err)?
                    .and_then(|v| Entry::decode(v.value()))
                else {
                    continue;
                };
                lru.remove(entry.seq).map_err(index_err)?;
                touched.insert(*key, entry.size);
                entry.seq = next_seq;
                entry.atime = now;
                next_seq += 1;
                entries
                    .insert(k.as_slice(), entry.encode().as_slice())
                    .map_err(index_err)?;
                lru.insert(entry.seq, k.as_slice()).map_err(index_err)?;
            }

            for (ins, dest, _) in placed {
                let k = ins.key.to_bytes();
                let old = entries
                    .get(k.as_slice())
                    .map_err(index_err)?
                    .and_then(|v| Entry::decode(v.value()));
                if let Some(old) = old {
                    if ins.adopt && old.encoding == ins.encoding && old.stored == ins.stored {
                        continue;
                    }
                    lru.remove(old.seq).map_err(index_err)?;
                    totals.remove(&old);
                    overwritten += old.stored;
                    let old_path = self.layout.blob_path(&ins.key, old.encoding);
                    if &old_path != dest {
                        unlink.push(old_path);
                    }
                }
                let entry = Entry {
                    size: ins.size,
                    stored: ins.stored,
                    seq: next_seq,
                    atime: now,
                    encoding: ins.encoding,
                };
                next_seq += 1;
                entries
                    .insert(k.as_slice(), entry.encode().as_slice())
                    .map_err(index_err)?;
                lru.insert(entry.seq, k.as_slice()).map_err(index_err)?;
                totals.add(&entry);
            }

            // Evict least recently used entries until the store, including
            // writes still in flight, fits under max_size.
            while totals.stored.saturating_add(reserved) > max {
                let Some((seq, key_bytes)) = lru
                    .pop_first()
                    .map_err(index_err)?
                    .map(|(s, k)| (s.value(), k.value().to_vec()))
                else {
                    break;
                };
                let Some(key) = BlobKey::from_bytes(&key_bytes) else {
                    continue;
                };
                let removed = entries
                    .remove(key_bytes.as_slice())
                    .map_err(index_err)?
                    .and_then(|v| Entry::decode(v.value()));
                if let Some(old) = removed {
                    debug_assert_eq!(old.seq, seq);
                    if key.kind == Kind::Cas {
                        self.presence.remove(&key.hash);
                    }
                    totals.remove(&old);
                    evicted += old.stored;
                    evictions += 1;
                    unlink.push(self.layout.blob_path(&key, old.encoding));
                }
            }

            let mut meta = txn.open_table(META).map_err(index_err)?;
            meta.insert(META_STORED, totals.stored).map_err(index_err)?;
            meta.insert(META_LOGICAL, totals.logical)
                .map_err(index_err)?;
            meta.insert(META_ENTRIES, totals.entries)
                .map_err(index_err)?;
            meta.insert(META_NEXT_SEQ, next_seq).map_err(index_err)?;
        }
        txn.commit().map_err(index_err)?;
        self.next_seq = next_seq;
        totals.publish(&self.stats);
        self.stats
            .overwritten
            .fetch_add(overwritten, Ordering::Relaxed);
        self.stats.evicted.fetch_add(evicted, Ordering::Relaxed);
        self.stats.evictions.fetch_add(evictions, Ordering::Relaxed);
        Ok(CommitOutcome { unlink, touched })
    }
}

struct CommitOutcome {
    unlink: Vec<PathBuf>,
    /// Sizes of the entries touched, for the presence map.
    touched: std::collections::HashMap<BlobKey, u64>,
}

#[derive(Default)]
struct Totals {
    stored: u64,
    logical: u64,
    entries: u64,
}

impl Totals {
    fn load(stats: &SharedStats) -> Self {
        Totals {
            stored: stats.stored.load(Ordering::Relaxed),
            logical: stats.logical.load(Ordering::Relaxed),
            entries: stats.entries.load(Ordering::Relaxed),
        }
    }

    fn add(&mut self, e: &Entry) {
        self.stored += e.stored;
        self.logical += e.size;
        self.entries += 1;
    }

    fn remove(&mut self, e: &Entry) {
        self.stored = self.stored.saturating_sub(e.stored);
        self.logical = self.logical.saturating_sub(e.size);
        self.entries = self.entries.saturating_sub(1);
    }

    fn publish(&self, stats: &SharedStats) {
        stats.stored.store(self.stored, Ordering::Relaxed);
        stats.logical.store(self.logical, Ordering::Relaxed);
        stats.entries.store(self.entries, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_key_encodings_round_trip() {
        let e = Entry {
            size: 1 << 40,
            stored: 12345,
            seq: 7,
            atime: 1_700_000_000,
            encoding: Encoding::Zstd,
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode(&[0u8; 3]), None);
        let k = BlobKey::ac(bazel_cache_digest::Hash::of(b"k"));
        assert_eq!(BlobKey::from_bytes(&k.to_bytes()), Some(k));
    }
}
