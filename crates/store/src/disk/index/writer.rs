//! The index writer: one thread that decides every change to the index
//! (inserts, touches, forgets, evictions) against the index as it will be,
//! renames finished files into place after their batch's group commit,
//! acknowledges the writes and hands the changes to the committer.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tokio::sync::{mpsc, oneshot};

use super::accounting::{Reservation, SharedStats, Totals};
use super::committer::{Change, Committer, Meta, ToCommitter};
use super::pending::Pending;
use super::reaper::Reaper;
use super::*;
use bazel_cache_digest::{DigestFunction, Hash};

/// A finished blob that the writer moves into place and indexes.
pub(in crate::disk) struct Insert {
    pub key: BlobKey,
    /// Where the verified bytes are now: a temp file to rename, or (recovery)
    /// the final path already.
    pub from: PathBuf,
    pub size: u64,
    pub stored: u64,
    pub encoding: Encoding,
    /// Where the file comes from, which decides what the writer does with it.
    pub origin: Origin,
    /// The write's reservation (none for recovery). The writer releases it
    /// just before the commit that counts the blob in `stored`; held until
    /// after, the blob's bytes counted twice (reserved + stored) and eviction
    /// removed blobs that fit, even the new blob itself when it was larger
    /// than half of max_size.
    pub reservation: Option<Reservation>,
}

/// Where an [`Insert`]'s file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::disk) enum Origin {
    /// A write: `from` is a temp file, flushed with its batch and renamed
    /// into place; it replaces an existing entry.
    Write,
    /// Recovery: the file is already in place; an entry that matches it is
    /// kept as it is.
    Recovered,
    /// A file of a bazel-remote `dir` (adopt.rs), verified: `from` is its
    /// path in bazel-remote's tree. It is renamed into place only if the
    /// key is not stored (what this server stored wins; the file is then
    /// deleted), and it takes the LRU position and last use given, so
    /// adopted files keep their relative order and rank below new writes.
    /// On failure the file stays where it was, for the next start.
    Foreign { seq: u64, atime: u64 },
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

/// Undoes the placement of a file whose batch failed: a write's file is
/// deleted, an adopted one goes back where it was found.
fn unplace(ins: &Insert, dest: &std::path::Path) {
    match ins.origin {
        Origin::Write => {
            let _ = std::fs::remove_file(dest);
        }
        Origin::Foreign { .. } => {
            let _ = std::fs::rename(dest, &ins.from);
        }
        Origin::Recovered => {}
    }
}

/// Where the writer reports the outcome of an insert.
pub(in crate::disk) type Reply = oneshot::Sender<Result<(), StoreError>>;

pub(in crate::disk) enum Op {
    Insert(Insert, Reply),
    /// A read used this key; move it to the LRU tail.
    Touch(BlobKey),
    /// A reader or recovery found the file of this key missing.
    Forget(BlobKey),
    /// Commit durably now and report.
    Flush(oneshot::Sender<()>),
    /// Lets the writer make a periodic durable commit while idle.
    Tick,
    /// Reserves this many LRU positions for adopted files (adopt.rs),
    /// above every entry so far; answers the first.
    ReserveSeqs(u64, oneshot::Sender<u64>),
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
pub(in crate::disk) struct Writer {
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
    /// Removes the files of evicted and replaced entries (reaper.rs).
    reaper: Reaper,
    /// When writes refused by [`Writer::keep_up`] were last logged.
    refusals_reported: Option<Instant>,
}

/// What a batch decided, before it is published.
#[derive(Default)]
struct Decided {
    changes: Vec<Change>,
    /// The latest decision per key.
    decisions: HashMap<BlobKey, Option<Entry>>,
    /// Files to remove, with their sizes on disk.
    unlink: Vec<(PathBuf, u64)>,
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

/// The keys read in a batch, each once, in the order of its last read:
/// they take LRU positions in that order. (In key order, as a sorted set
/// gave them, a blob read just now could rank older than one read
/// earlier in the same batch, and be evicted first.)
fn in_order_of_last_use(touches: Vec<BlobKey>) -> Vec<BlobKey> {
    let mut seen = std::collections::HashSet::with_capacity(touches.len());
    let mut ordered: Vec<BlobKey> = touches
        .into_iter()
        .rev()
        .filter(|k| seen.insert(*k))
        .collect();
    ordered.reverse();
    ordered
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
    pub(in crate::disk) fn new(
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
            presence_cursor: BlobKey::cas(Hash::sha256([0; 32])).to_bytes().to_vec(),
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
            reaper: Reaper::start()?,
            refusals_reported: None,
        })
    }

    /// Applies operations in batches until [`Op::Shutdown`]. If every sender
    /// goes away without one (the store was dropped, not closed), the index
    /// stays marked unclean, exactly as after a crash.
    pub(in crate::disk) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
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
            // In-flight bytes this batch may evict for: read before the
            // rest of the batch is taken from the channel. A write reserves
            // after everything its client sent before it (the touches of
            // the reads it just made), so every reservation seen here comes
            // with its client's earlier touches in this batch, and eviction
            // never ranks a blob read just before a write as unused. Read
            // once the batch is taken, a reservation could be counted ahead
            // of touches still queued, and the blob just read evicted first.
            let mut in_flight = self.stats.reserved.load(Ordering::Acquire);
            let mut batch = vec![op];
            loop {
                if batch.len() == MAX_BATCH {
                    // Touches may be left queued: evict for stored bytes
                    // only, and for in-flight bytes at the next batch.
                    in_flight = 0;
                    break;
                }
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
            self.apply(batch, in_flight);
            if let Some((clean, done)) = shutdown {
                // Every file the index no longer names is gone before the
                // index may be marked as matching the files.
                self.reaper.finish();
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

    /// Whether `key` has an entry, as the decisions so far make the index
    /// (this thread prunes the pending set, so none is missed in between).
    fn is_stored(&self, key: &BlobKey) -> Result<bool, StoreError> {
        if let Some(decided) = self.index.pending.get(key) {
            return Ok(decided.is_some());
        }
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let entries = txn.open_table(ENTRIES).map_err(index_err)?;
        Ok(lookup(&entries, key)?.is_some())
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
            let mut jump = None;
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
                    // The AC keys between two functions' CAS keys: go on
                    // from the next function's first CAS key, if any.
                    jump = Some(next_cas_start(k.value()));
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
            match (jump, last) {
                (Some(Some(start)), _) => {
                    self.presence_cursor = start;
                    Ok(false)
                }
                (_, Some(mut key)) if n == PRESENCE_SLICE => {
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

    /// Applies one batch; `in_flight` is the reserved bytes it may evict
    /// for (see [`Writer::run`]).
    fn apply(&mut self, batch: Vec<Op>, in_flight: u64) {
        let mut inserts = Vec::new();
        let mut touches = Vec::new();
        let mut forgets = Vec::new();
        let mut flushes = Vec::new();
        let mut make_room = false;
        for op in batch {
            match op {
                Op::Insert(ins, done) => inserts.push((ins, done)),
                Op::Touch(k) => {
                    touches.push(k);
                }
                Op::Forget(k) => forgets.push(k),
                Op::Flush(done) => flushes.push(done),
                Op::MakeRoom => make_room = true,
                Op::ReserveSeqs(n, done) => {
                    let _ = done.send(self.next_seq);
                    self.next_seq += n;
                }
                Op::Tick | Op::Shutdown { .. } => {}
            }
        }
        let over = make_room && {
            let s = &self.stats;
            s.stored.load(Ordering::Relaxed).saturating_add(in_flight)
                > s.max.load(Ordering::Relaxed)
        };
        if !inserts.is_empty() || !touches.is_empty() || !forgets.is_empty() || over {
            let touches = in_order_of_last_use(touches);
            self.apply_changes(inserts, &touches, &forgets, in_flight);
        }
        // After this batch's changes, which the committer receives first,
        // and after the files they drop are gone.
        if !flushes.is_empty() {
            self.reaper.wait_idle();
        }
        for done in flushes {
            self.send(ToCommitter::Flush(done));
        }
    }

    fn apply_changes(
        &mut self,
        inserts: Vec<(Insert, Reply)>,
        touches: &[BlobKey],
        forgets: &[BlobKey],
        in_flight: u64,
    ) {
        // This batch's writes stop counting as in flight: they are stored.
        let arrived: u64 = inserts
            .iter()
            .filter_map(|(ins, _)| ins.reservation.as_ref().map(Reservation::bytes))
            .sum();
        let in_flight = in_flight.saturating_sub(arrived);
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
                if ins.origin == Origin::Write {
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
        let mut flushed = Duration::ZERO;
        if self.fsync && inserts.iter().any(|(ins, _)| ins.origin == Origin::Write) {
            let sources: Vec<&std::path::Path> = inserts
                .iter()
                .filter(|(ins, _)| ins.origin == Origin::Write)
                .map(|(ins, _)| ins.from.as_path())
                .collect();
            let began = Instant::now();
            let synced = self.durable.sync_files(&sources);
            flushed = began.elapsed();
            if let Err(e) = synced {
                tracing::error!(error = %e, "flushing new blobs to stable storage failed");
                let reason = e.to_string();
                for (ins, done) in inserts {
                    if ins.origin == Origin::Write {
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
        let mut keys = std::collections::HashSet::new();
        for (mut ins, done) in inserts {
            // From here on the blob is accounted by `decide` (or failed).
            drop(ins.reservation.take());
            let dest = self.layout.blob_path(&ins.key, ins.encoding);
            match ins.origin {
                // Found by recovery while evicted since: about to go.
                Origin::Recovered if self.reaper.is_waiting(&dest) => continue,
                Origin::Recovered => {}
                Origin::Write => {
                    if let Err(e) = self.place(&ins.from, &dest) {
                        let _ = std::fs::remove_file(&ins.from);
                        let _ = done.send(Err(e.into()));
                        continue;
                    }
                }
                Origin::Foreign { .. } => {
                    match self.is_stored(&ins.key) {
                        Ok(false) if !keys.contains(&ins.key) => {}
                        Ok(_) => {
                            // Stored already (a write since start, or a
                            // second bazel-remote file of the key): the
                            // entry stands and this copy goes.
                            let _ = std::fs::remove_file(&ins.from);
                            let _ = done.send(Err(StoreError::Io(std::io::Error::new(
                                std::io::ErrorKind::AlreadyExists,
                                "stored already",
                            ))));
                            continue;
                        }
                        Err(e) => {
                            let _ = done.send(Err(e));
                            continue;
                        }
                    }
                    if let Err(e) = self.place(&ins.from, &dest) {
                        let _ = done.send(Err(e.into()));
                        continue;
                    }
                }
            }
            if ins.origin != Origin::Recovered
                && let Some(parent) = dest.parent()
            {
                dirs.insert(parent.to_path_buf());
            }
            keys.insert(ins.key);
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
        if self.fsync && !dirs.is_empty() {
            let began = Instant::now();
            let synced = self.durable.sync_dirs(&dirs);
            flushed += began.elapsed();
            if let Err(e) = synced {
                tracing::error!(error = %e, "flushing renamed blobs to stable storage failed");
                for (ins, dest, done) in placed {
                    unplace(&ins, &dest);
                    let _ = done.send(Err(StoreError::Io(std::io::Error::other(e.to_string()))));
                }
                return;
            }
            // Blobs written, and bazel-remote files adopted (renamed in
            // place, so flushed by the same second flush).
            let durable = placed
                .iter()
                .filter(|(ins, _, _)| ins.origin != Origin::Recovered)
                .count();
            self.stats.commits.record(flushed, durable);
        }

        // Decisions redb now holds leave the pending set before the
        // snapshot `decide` reads is begun.
        self.index.pending.prune();
        match self.decide(&placed, touches, forgets, in_flight) {
            Ok(decided) => self.publish(decided, placed),
            Err(e) => {
                tracing::error!(error = %e, "reading the index failed");
                for (ins, dest, done) in placed {
                    unplace(&ins, &dest);
                    let _ = done.send(Err(StoreError::Index(e.to_string())));
                }
            }
        }
    }

    /// Renames a finished file to its final path, once any evicted file
    /// of that path still waiting for the reaper is gone (reaper.rs).
    fn place(&self, from: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
        self.reaper.claim(dest);
        rename_into_shard(from, dest)
    }

    /// Decides this batch's changes against the index as the decisions so
    /// far make it: forgets, touches, new blobs, then eviction. Nothing is
    /// published here: a failed read leaves no trace.
    fn decide(
        &self,
        placed: &[(Insert, PathBuf, Reply)],
        touches: &[BlobKey],
        forgets: &[BlobKey],
        in_flight: u64,
    ) -> Result<Decided, StoreError> {
        let txn = self.index.db.begin_read().map_err(index_err)?;
        let entries = txn.open_table(ENTRIES).map_err(index_err)?;
        let view = View {
            pending: &self.index.pending,
            entries: &entries,
        };
        let now = unix_now();
        let max = self.stats.max.load(Ordering::Relaxed);
        // Writes that failed since the batch began no longer count.
        let reserved = in_flight.min(self.stats.reserved.load(Ordering::Relaxed));
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
                if ins.origin == Origin::Recovered
                    && old.encoding == ins.encoding
                    && old.stored == ins.stored
                {
                    continue;
                }
                d.totals.remove(&old);
                d.overwritten += old.stored;
                let old_path = self.layout.blob_path(&ins.key, old.encoding);
                if &old_path != dest {
                    d.unlink.push((old_path, old.stored));
                }
            }
            let (seq, atime) = match ins.origin {
                Origin::Foreign { seq, atime } => {
                    // Below rows the eviction scan has passed: look again.
                    d.evict_from = d.evict_from.min(seq);
                    (seq, atime)
                }
                Origin::Write | Origin::Recovered => {
                    d.next_seq += 1;
                    (d.next_seq - 1, now)
                }
            };
            let entry = Entry {
                size: ins.size,
                stored: ins.stored,
                seq,
                atime,
                encoding: ins.encoding,
            };
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
        d.unlink
            .push((self.layout.blob_path(&key, old.encoding), old.stored));
    }

    /// Makes a batch's decisions visible (presence map, pending set,
    /// counters), acknowledges the writes, hands the changes to the
    /// committer and the files they drop to the reaper.
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
        // Last: when the reaper's backlog is at its bound this waits for
        // room, and this batch's writes (acknowledged above) and index
        // changes (with the committer) need not wait with it. Readers miss
        // the evicted keys already; a key written again before its old
        // file is gone is claimed by `place`.
        self.reaper
            .remove(d.unlink, self.stats.max.load(Ordering::Relaxed));
    }
}

/// The first CAS key (index byte form) of a digest function whose keys
/// sort after `key`: where the presence map's load goes on after AC keys.
fn next_cas_start(key: &[u8]) -> Option<Vec<u8>> {
    DigestFunction::ALL
        .into_iter()
        .map(|f| BlobKey::cas(Hash::new(f, [0; 32])).to_bytes().to_vec())
        .find(|start| start.as_slice() > key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::Hash;

    #[test]
    fn touches_keep_the_order_of_each_keys_last_read() {
        let key = |b: u8| BlobKey {
            kind: Kind::Cas,
            hash: Hash::sha256([b; 32]),
        };
        // Read 9, 1, 5, then 9 again: 9 is the most recent, 1 the oldest.
        let got = in_order_of_last_use(vec![key(9), key(1), key(5), key(9)]);
        assert_eq!(got, vec![key(1), key(5), key(9)]);
    }
}
