//! The committer thread: writes the writer's decisions to redb, in order,
//! so that no write waits for a redb commit.
//!
//! Commits are non-durable, and durable every [`DURABLE_EVERY`] while there
//! are changes, on [`ToCommitter::Flush`] and at shutdown. A durable commit
//! writes back every index page changed since the last one and syncs the
//! file: with a million entries that took 40–130 ms, and while the writer
//! made it, every write in flight waited (PUT p99 at a million entries grew
//! to that). Here it delays only the index's catching up; readers see the
//! decisions meanwhile (pending.rs), and blob files, the source of truth,
//! are durable before any write is acknowledged.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, Durability};
use tokio::sync::oneshot;

use super::pending::Pending;
use super::{
    DURABLE_EVERY, ENTRIES, Entry, LRU, META, META_CLEAN, META_ENTRIES, META_LOGICAL,
    META_NEXT_SEQ, META_STORED, index_err,
};
use crate::StoreError;
use bazel_cache_digest::BlobKey;

/// How long the committer waits before retrying a failed commit.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// While commits keep failing, one log line per this interval.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One change to the index tables, as the writer decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// Store `entry` under `key`; its LRU row moves from `old_seq`.
    Put {
        key: BlobKey,
        entry: Entry,
        old_seq: Option<u64>,
    },
    /// Drop `key` and its LRU row at `seq`.
    Remove { key: BlobKey, seq: u64 },
}

/// The counters kept in the META table, as of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    pub stored: u64,
    pub logical: u64,
    pub entries: u64,
    pub next_seq: u64,
}

pub(super) enum ToCommitter {
    /// A writer batch's changes and the counters after them.
    Changes {
        generation: u64,
        changes: Vec<Change>,
        meta: Meta,
    },
    /// Commit durably everything received so far, then report.
    Flush(oneshot::Sender<()>),
    /// Commit everything durably, mark the index clean (or not), report,
    /// stop.
    Shutdown {
        clean: bool,
        done: oneshot::Sender<()>,
    },
}

pub(super) struct Committer {
    pub db: Arc<Database>,
    pub pending: Arc<Pending>,
}

impl Committer {
    /// Commits what arrives until [`ToCommitter::Shutdown`], or until the
    /// writer goes away without one (the store was dropped): then what it
    /// holds is committed without marking the index clean, as after a crash.
    pub(super) fn run(self, rx: Receiver<ToCommitter>) {
        let mut queue: Vec<Change> = Vec::new();
        let mut meta = None;
        let mut generation = 0;
        let mut flushes = Vec::new();
        let mut dirty = false;
        // Failed commits in a row, and when the last was reported.
        let mut failures = 0u64;
        let mut reported = Instant::now();
        let mut last_durable = Instant::now();
        loop {
            let unsaved = dirty || !queue.is_empty();
            let wait = if failures > 0 {
                Duration::ZERO
            } else if unsaved {
                DURABLE_EVERY.saturating_sub(last_durable.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let mut shutdown = None;
            let mut gone = false;
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut next = Some(first);
                    while let Some(msg) = next {
                        match msg {
                            ToCommitter::Changes {
                                generation: g,
                                changes,
                                meta: m,
                            } => {
                                queue.extend(changes);
                                meta = Some(m);
                                generation = g;
                            }
                            ToCommitter::Flush(done) => flushes.push(done),
                            ToCommitter::Shutdown { clean, done } => {
                                shutdown = Some((clean, done));
                                break;
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => gone = true,
            }
            let durable = shutdown.is_some()
                || !flushes.is_empty()
                || ((dirty || !queue.is_empty()) && last_durable.elapsed() >= DURABLE_EVERY);
            if queue.is_empty() && !durable && !gone {
                continue;
            }
            let clean = shutdown.as_ref().map(|(clean, _)| *clean);
            match self.commit(&queue, meta, durable, clean) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "index commits succeed again");
                    }
                    queue.clear();
                    meta = None;
                    failures = 0;
                    self.pending.committed(generation);
                    if durable {
                        dirty = false;
                        last_durable = Instant::now();
                    } else {
                        dirty = true;
                    }
                    for done in flushes.drain(..) {
                        let _ = done.send(());
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || reported.elapsed() >= REPORT_EVERY {
                        tracing::error!(error = %e, failures, changes = queue.len(), "index commit failed; retrying");
                        reported = Instant::now();
                    }
                    self.pending.failing(e.to_string());
                    // Flush waiters learn of the failure by their sender dropping.
                    flushes.clear();
                    if shutdown.is_some() {
                        tracing::error!(
                            "index was not closed cleanly; recovery will run at next start"
                        );
                    } else if !gone {
                        // What arrives meanwhile waits in the channel.
                        std::thread::sleep(RETRY_AFTER);
                    }
                }
            }
            if let Some((_, done)) = shutdown {
                let _ = done.send(());
                return;
            }
            if gone {
                return;
            }
        }
    }

    pub(super) fn commit(
        &self,
        queue: &[Change],
        meta: Option<Meta>,
        durable: bool,
        clean: Option<bool>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(index_err)?;
        if durable {
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(Durability::None).map_err(index_err)?;
        }
        {
            let mut entries = txn.open_table(ENTRIES).map_err(index_err)?;
            let mut lru = txn.open_table(LRU).map_err(index_err)?;
            for change in queue {
                match change {
                    Change::Put {
                        key,
                        entry,
                        old_seq,
                    } => {
                        let k = key.to_bytes();
                        if let Some(old) = old_seq {
                            lru.remove(*old).map_err(index_err)?;
                        }
                        entries
                            .insert(k.as_slice(), entry.encode().as_slice())
                            .map_err(index_err)?;
                        lru.insert(entry.seq, k.as_slice()).map_err(index_err)?;
                    }
                    Change::Remove { key, seq } => {
                        entries
                            .remove(key.to_bytes().as_slice())
                            .map_err(index_err)?;
                        lru.remove(*seq).map_err(index_err)?;
                    }
                }
            }
            let mut table = txn.open_table(META).map_err(index_err)?;
            if let Some(m) = meta {
                table.insert(META_STORED, m.stored).map_err(index_err)?;
                table.insert(META_LOGICAL, m.logical).map_err(index_err)?;
                table.insert(META_ENTRIES, m.entries).map_err(index_err)?;
                table.insert(META_NEXT_SEQ, m.next_seq).map_err(index_err)?;
            }
            if let Some(clean) = clean {
                table
                    .insert(META_CLEAN, u64::from(clean))
                    .map_err(index_err)?;
            }
        }
        txn.commit().map_err(index_err)
    }
}
