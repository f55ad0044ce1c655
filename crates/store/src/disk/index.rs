//! The redb index: one row per blob (kind, hash → size, encoding, LRU position)
//! plus an LRU table ordered by last use. Start-up reads three counters from
//! it instead of walking the blob tree, so a restart with millions of entries
//! takes milliseconds.
//!
//! Reads go straight to redb (MVCC snapshots, no lock shared with writers),
//! after a look at the changes not yet committed (index/pending.rs). Every
//! mutation goes through one writer thread ([`Writer`], index/writer.rs) that applies them
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
//! Size accounting (counters, reservations for writes in flight) is in
//! index/accounting.rs.
//!
//! Memory: redb's page cache is bounded ([`CACHE_BYTES`]): by default it
//! grows to 1 GiB, and with a million entries it held the whole index file
//! (280 MB resident). Pages it does not hold are read from the OS page cache.

mod accounting;
mod committer;
mod pending;
mod reader;
mod reaper;
mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub(super) use self::accounting::{Reservation, SharedStats};
use self::pending::Pending;
pub(super) use self::reader::Reader;
pub(super) use self::writer::{Insert, Op, Origin, Writer};
use super::group_sync::GroupSync;
use super::layout::Layout;
use super::presence::Presence;
use crate::{Encoding, StoreError, unix_now};
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
            !Layout::namespaces().any(|(f, k)| layout.kind_dir(f, k).exists())
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

#[cfg(test)]
mod tests;
