//! The redb index: one row per blob (kind, hash → size, encoding, LRU position)
//! plus an LRU table ordered by last use. Start-up reads three counters from
//! it instead of walking the blob tree, so a restart with millions of entries
//! takes milliseconds.
//!
//! Reads go straight to redb (MVCC snapshots, no lock shared with writers),
//! after a look at the changes not yet committed (index/pending.rs). Every
//! mutation goes through one writer thread ([`Writer`]) that applies them
//! in batches: a burst of puts shares one group commit of their files, and
//! access-time updates ride along instead of costing a transaction per read.
//! The writer decides every change (and evicts) against the index as it
//! will be, acknowledges the writes, and hands the changes to the committer
//! thread (index/committer.rs), which commits them to redb: no write waits
//! for a redb commit, so none waits for the periodic durable one either.
//!
//! Durability: blob files are the source of truth. Index commits are
//! non-durable (no fsync) except every [`DURABLE_EVERY`] and at shutdown; after
//! an unclean stop, recovery (recovery.rs) reconciles the index with the files.
//!
//! Memory: redb's page cache is bounded ([`CACHE_BYTES`]): by default it
//! grows to 1 GiB, and with a million entries it held the whole index file
//! (280 MB resident). Pages it does not hold are read from the OS page cache.

mod committer;
mod pending;
mod reader;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use self::committer::{Change, Committer, Meta, ToCommitter};
use self::pending::Pending;
pub(super) use self::reader::Reader;
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

/// Most operations folded into one batch.
const MAX_BATCH: usize = 4096;

/// redb's page cache. It holds the B-trees' branch pages (about 1 MiB per
/// million entries) and recently used leaves; up to half of it buffers
/// pages changed by non-durable commits, and the rest is written as it
/// overflows, so a durable commit has at most that half left to write.
const CACHE_BYTES: usize = 8 << 20;

/// Changes the committer may lag behind by before the writer waits for it
/// (about 2 MiB of decisions held twice, in [`Pending`] and in transit).
const MAX_PENDING: usize = 16_384;
/// How long the writer waits for a lagging committer before it refuses
/// the writes of a batch.
const COMMITTER_WAIT: Duration = Duration::from_secs(10);
/// While writes are refused for the committer, one log line per interval.
const REPORT_REFUSALS_EVERY: Duration = Duration::from_secs(10);

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

/// The index: the redb database and the changes decided but not yet
/// committed to it. Cheap to clone.
#[derive(Clone)]
pub(super) struct Index {
    db: Arc<Database>,
    pending: Arc<Pending>,
}

/// What opening the index found out about the previous run.
pub(super) struct Opened {
    pub db: Index,
    /// False after a crash, or when blob directories exist without an index:
    /// recovery must reconcile index and files.
    pub was_clean: bool,
}

/// Opens (or creates) the index and marks it in use.
pub(super) fn open(layout: &Layout, stats: &SharedStats) -> Result<Opened, StoreError> {
    let path = layout.index_path();
    let existed = path.exists();
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(&path)
        .map_err(|e| match e {
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
        db: Index {
            db: Arc::new(db),
            pending: Arc::default(),
        },
        was_clean,
    })
}

fn lookup(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &BlobKey,
) -> Result<Option<Entry>, StoreError> {
    let found = table.get(key.to_bytes().as_slice()).map_err(index_err)?;
    Ok(found.and_then(|v| Entry::decode(v.value())))
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

/// The writer side: decides every change to the index, renames files into
/// place and evicts, so that these happen in one order and size accounting
/// never races; the committer thread only writes its decisions to redb.
pub(super) struct Writer {
    index: Index,
    layout: Layout,
    stats: Arc<SharedStats>,
    fsync: bool,
    durable: GroupSync,
    /// Fault injection for the crash tests ([`PAUSE_GROUP_COMMIT_ENV`]).
    pause_in_group_commit: Option<Duration>,
    /// Which CAS blobs are stored, for FindMissingBlobs (presence.rs):
    /// written only here, in the order of decisions.
    presence: Arc<Presence>,
    /// Where filling `presence` from the index goes on: the next key.
    presence_cursor: Vec<u8>,
    next_seq: u64,
    /// The last batch of changes handed to the committer.
    generation: u64,
    /// LRU rows below this position are evicted or stale (their key was
    /// used again since): the next eviction scan starts here.
    evict_from: u64,
    to_committer: Option<std::sync::mpsc::Sender<ToCommitter>>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// When writes refused by [`Writer::keep_up`] were last logged.
    refusals_reported: Option<Instant>,
}

/// What a batch decided, before it is published.
#[derive(Default)]
struct Decided {
    changes: Vec<Change>,
    /// The latest decision per key.
    decisions: HashMap<BlobKey, Option<Entry>>,
    unlink: Vec<PathBuf>,
    totals: Totals,
    next_seq: u64,
    evict_from: u64,
    overwritten: u64,
    evicted: u64,
    evictions: u64,
    /// CAS blobs leaving the presence map, before their files go.
    absent: Vec<bazel_cache_digest::Hash>,
    /// CAS blobs touched, and their sizes, for the presence map.
    touched: Vec<(BlobKey, u64)>,
}

impl Decided {
    fn remove(&mut self, key: BlobKey, old: &Entry) {
        self.changes.push(Change::Remove { key, seq: old.seq });
        self.decisions.insert(key, None);
        self.totals.remove(old);
        if key.kind == Kind::Cas {
            self.absent.push(key.hash);
        }
    }

    fn put(&mut self, key: BlobKey, entry: Entry, old_seq: Option<u64>) {
        self.changes.push(Change::Put {
            key,
            entry,
            old_seq,
        });
        self.decisions.insert(key, Some(entry));
    }
}

/// The index as the writer's decisions make it: this batch's, then those
/// not yet committed, then redb (a snapshot begun after pruning).
struct View<'a, T> {
    pending: &'a Pending,
    entries: &'a T,
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> View<'_, T> {
    fn current(&self, d: &Decided, key: &BlobKey) -> Result<Option<Entry>, StoreError> {
        if let Some(decided) = d.decisions.get(key) {
            return Ok(*decided);
        }
        if let Some(decided) = self.pending.get(key) {
            return Ok(decided);
        }
        lookup(self.entries, key)
    }
}

impl Writer {
    pub(super) fn new(
        index: Index,
        layout: Layout,
        stats: Arc<SharedStats>,
        fsync: bool,
        presence: Arc<Presence>,
    ) -> Result<Self, StoreError> {
        let txn = index.db.begin_read().map_err(index_err)?;
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
        let (to_committer, rx) = std::sync::mpsc::channel();
        let committer = Committer {
            db: index.db.clone(),
            pending: index.pending.clone(),
        };
        let committer = std::thread::Builder::new()
            .name("index-commit".into())
            .spawn(move || committer.run(rx))?;
        Ok(Writer {
            pause_in_group_commit,
            presence,
            presence_cursor: BlobKey::cas(bazel_cache_digest::Hash([0; 32]))
                .to_bytes()
                .to_vec(),
            durable: GroupSync::new(layout.tmp_dir())?,
            index,
            layout,
            stats,
            fsync,
            next_seq,
            generation: 0,
            evict_from: 0,
            to_committer: Some(to_committer),
            committer: Some(committer),
            refusals_reported: None,
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
                // The committer commits everything durably, marks the
                // index, then answers.
                self.send(ToCommitter::Shutdown { clean, done });
                break;
            }
        }
        // Without a shutdown the committer commits what it holds and stops.
        drop(self.to_committer.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }

    fn send(&self, msg: ToCommitter) {
        // A committer that died drops what it is sent: flush and shutdown
        // waiters learn of it by their sender dropping.
        if let Some(tx) = &self.to_committer {
            let _ = tx.send(msg);
        }
    }

    /// Puts the next [`PRESENCE_SLICE`] CAS entries of the index into the
    /// presence map, and marks the map loaded after the last. Rows are read
    /// from redb in their latest form: this thread's decisions that redb
    /// does not hold yet override them. Changes to entries before the
    /// cursor reach the map through `apply`.
    fn load_presence_slice(&mut self) {
        let result = (|| -> Result<bool, StoreError> {
            let txn = self.index.db.begin_read().map_err(index_err)?;
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
                let entry = match self.index.pending.get(&key) {
                    Some(decided) => decided,
                    None => Entry::decode(v.value()),
                };
                if let Some(e) = entry {
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

    /// Whether the committer keeps up: `Err` while its commits fail (new
    /// writes are refused, as they were when the writer's own commit
    /// failed), or when it lags by more than [`MAX_PENDING`] decisions
    /// (held in memory until committed) and does not catch up within
    /// [`COMMITTER_WAIT`].
    fn keep_up(&self) -> Result<(), String> {
        let pending = &self.index.pending;
        if let Some(reason) = pending.failure() {
            return Err(reason);
        }
        if pending.len() <= MAX_PENDING {
            return Ok(());
        }
        pending.wait_committed(self.generation, COMMITTER_WAIT)?;
        pending.prune();
        Ok(())
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
        let over = make_room && {
            let s = &self.stats;
            s.stored
                .load(Ordering::Relaxed)
                .saturating_add(s.reserved.load(Ordering::Relaxed))
                > s.max.load(Ordering::Relaxed)
        };
        if !inserts.is_empty() || !touches.is_empty() || !forgets.is_empty() || over {
            self.apply_changes(inserts, &touches, &forgets);
        }
        // After this batch's changes, which the committer receives first.
        for done in flushes {
            self.send(ToCommitter::Flush(done));
        }
    }

    fn apply_changes(
        &mut self,
        inserts: Vec<(Insert, Reply)>,
        touches: &BTreeSet<BlobKey>,
        forgets: &[BlobKey],
    ) {
        if let Err(reason) = self.keep_up() {
            if !inserts.is_empty()
                && self
                    .refusals_reported
                    .is_none_or(|at| at.elapsed() >= REPORT_REFUSALS_EVERY)
            {
                tracing::warn!(%reason, "index commits fail or lag: refusing writes");
                self.refusals_reported = Some(Instant::now());
            }
            for (ins, done) in inserts {
                if !ins.adopt {
                    let _ = std::fs::remove_file(&ins.from);
                }
                let _ = done.send(Err(StoreError::Index(format!(
                    "committing the index: {reason}"
                ))));
            }
            return;
        }
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
        // ...then moved into place: a rename that fails is reported to its
        // writer and never indexed.
        let mut placed = Vec::with_capacity(inserts.len());
        let mut dirs = BTreeSet::new();
        for (mut ins, done) in inserts {
            // From here on the blob is accounted by `decide` (or failed).
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
        // write is acknowledged. (The index commit need not be durable:
        // after a crash, recovery rebuilds it from the files.)
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

        // Decisions redb now holds leave the pending set before the
        // snapshot `decide` reads is begun.
        self.index.pending.prune();
        match self.decide(&placed, touches, forgets) {
            Ok(decided) => self.publish(decided, placed),
            Err(e) => {
                tracing::error!(error = %e, "reading the index failed");
                for (ins, dest, done) in placed {
                    if !ins.adopt {
                        let _ = std::fs::remove_file(&dest);
                    }
                    let _ = done.send(Err(StoreError::Index(e.to_string())));
                }
            }
        }
    }

    /// Decides this batch's changes against the index as the decisions so
    /// far make it: forgets, touches, new blobs, then eviction. Nothing is
    /// published here: a failed read leaves no trace.
    fn decide(
        &self,
        placed: &[(Insert, PathBuf, Reply)],
        touches: &BTreeSet<BlobKey>,
        forgets: &[BlobKey],
    ) -> Result<Decided, StoreError> {
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let entries = txn.open_table(ENTRIES).map_err(index_err)?;
        let view = View {
            pending: &self.index.pending,
            entries: &entries,
        };
        let now = unix_now();
        let max = self.stats.max.load(Ordering::Relaxed);
        let reserved = self.stats.reserved.load(Ordering::Relaxed);
        let mut d = Decided {
            totals: Totals::load(&self.stats),
            next_seq: self.next_seq,
            evict_from: self.evict_from,
            ..Decided::default()
        };

        for key in forgets {
            let Some(old) = view.current(&d, key)? else {
                continue;
            };
            // Re-check under the writer's order: a put may have restored it.
            if self.layout.blob_path(key, old.encoding).exists() {
                continue;
            }
            d.remove(*key, &old);
        }

        // Touches first: they record reads that happened before the
        // writes in this batch, and a new blob is the most recent use.
        // (The other order could rank a just-written blob oldest and
        // evict it at once when the cache is full.)
        for key in touches {
            let Some(old) = view.current(&d, key)? else {
                continue;
            };
            let entry = Entry {
                seq: d.next_seq,
                atime: now,
                ..old
            };
            d.next_seq += 1;
            d.put(*key, entry, Some(old.seq));
            d.touched.push((*key, entry.size));
        }

        for (ins, dest, _) in placed {
            let old = view.current(&d, &ins.key)?;
            if let Some(old) = old {
                if ins.adopt && old.encoding == ins.encoding && old.stored == ins.stored {
                    continue;
                }
                d.totals.remove(&old);
                d.overwritten += old.stored;
                let old_path = self.layout.blob_path(&ins.key, old.encoding);
                if &old_path != dest {
                    d.unlink.push(old_path);
                }
            }
            let entry = Entry {
                size: ins.size,
                stored: ins.stored,
                seq: d.next_seq,
                atime: now,
                encoding: ins.encoding,
            };
            d.next_seq += 1;
            d.put(ins.key, entry, old.map(|o| o.seq));
            d.totals.add(&entry);
        }

        // Evict least recently used entries until the store, including
        // writes still in flight, fits under max_size.
        let fits = |d: &Decided| d.totals.stored.saturating_add(reserved) <= max;
        if !fits(&d) {
            let lru = txn.open_table(LRU).map_err(index_err)?;
            for row in lru.range(d.evict_from..).map_err(index_err)? {
                if fits(&d) {
                    break;
                }
                let (seq, key) = row.map_err(index_err)?;
                let seq = seq.value();
                d.evict_from = seq + 1;
                let Some(key) = BlobKey::from_bytes(key.value()) else {
                    continue;
                };
                // A row whose key was used (or dropped) since is stale.
                if let Some(old) = view.current(&d, &key)?.filter(|e| e.seq == seq) {
                    self.evict(&mut d, key, &old);
                }
            }
            if !fits(&d) {
                // Every row of redb's LRU table is gone or stale: what is
                // left was decided since, in position order.
                let mut rest = Vec::new();
                let keys: Vec<BlobKey> = self
                    .index
                    .pending
                    .snapshot()
                    .into_keys()
                    .chain(d.decisions.keys().copied())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for key in keys {
                    if let Some(e) = view.current(&d, &key)? {
                        rest.push((e.seq, key, e));
                    }
                }
                rest.sort_by_key(|(seq, _, _)| *seq);
                for (_, key, old) in rest {
                    if fits(&d) {
                        break;
                    }
                    self.evict(&mut d, key, &old);
                }
            }
        }
        Ok(d)
    }

    fn evict(&self, d: &mut Decided, key: BlobKey, old: &Entry) {
        d.remove(key, old);
        d.evicted += old.stored;
        d.evictions += 1;
        d.unlink.push(self.layout.blob_path(&key, old.encoding));
    }

    /// Makes a batch's decisions visible (presence map, pending set,
    /// counters), removes the files they drop, acknowledges the writes and
    /// hands the changes to the committer.
    fn publish(&mut self, d: Decided, placed: Vec<(Insert, PathBuf, Reply)>) {
        for hash in &d.absent {
            self.presence.remove(hash);
        }
        // CAS blobs stored or used in this batch, unless it also dropped them.
        let present: Vec<(BlobKey, u64)> = d
            .touched
            .iter()
            .copied()
            .chain(placed.iter().map(|(ins, _, _)| (ins.key, ins.size)))
            .filter(|(key, _)| key.kind == Kind::Cas && !matches!(d.decisions.get(key), Some(None)))
            .collect();
        let changed = !d.changes.is_empty();
        if changed {
            self.generation += 1;
            self.index.pending.publish(self.generation, d.decisions);
        }
        for path in d.unlink {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "removing evicted blob");
            }
        }
        d.totals.publish(&self.stats);
        self.stats
            .overwritten
            .fetch_add(d.overwritten, Ordering::Relaxed);
        self.stats.evicted.fetch_add(d.evicted, Ordering::Relaxed);
        self.stats
            .evictions
            .fetch_add(d.evictions, Ordering::Relaxed);
        let now = unix_now();
        for (key, size) in &present {
            self.presence.insert(&key.hash, *size, now);
        }
        for (_, _, done) in placed {
            let _ = done.send(Ok(()));
        }
        self.next_seq = d.next_seq;
        self.evict_from = d.evict_from;
        if changed {
            let meta = Meta {
                stored: d.totals.stored,
                logical: d.totals.logical,
                entries: d.totals.entries,
                next_seq: d.next_seq,
            };
            self.send(ToCommitter::Changes {
                generation: self.generation,
                changes: d.changes,
                meta,
            });
        }
    }
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
mod tests;
