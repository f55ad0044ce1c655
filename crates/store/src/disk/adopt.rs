//! Adopting a bazel-remote `dir` in place: a team replacing bazel-remote
//! keeps its warm disk cache. When `dir` holds bazel-remote's trees
//! (`ac.v2/`, `cas.v2/`, `raw.v2/`; names in adopt/names.rs), the store
//! serves at once and a background thread takes the files over:
//!
//! 1. it lists them (one `stat` each) and sorts them by last use, the
//!    later of atime and mtime — bazel-remote's start-up scan orders its
//!    LRU by atime; mtime covers file systems mounted `noatime`;
//! 2. it reserves that many LRU positions from the index writer, above
//!    every entry so far: adopted files keep their relative order and rank
//!    below whatever this server stores from now on;
//! 3. newest first (the files most likely to be asked for are served
//!    soonest), it verifies each file (adopt/verify.rs) before the
//!    index knows it, so nothing is served unverified, and hands it to the
//!    writer, which *renames* it into our layout (no copy: a casblob's
//!    header is a zstd skippable frame, so the file already is our zstd
//!    storage form; plain files are our plain form) and indexes it with
//!    its size on disk, counted against `max_size` and evictable like any
//!    other entry.
//!
//! Decisions:
//! - Once the newest files fill `max_size`, the older ones are deleted
//!   unread, as eviction would (bazel-remote evicts them at its start
//!   when `max_size` shrank): no time is spent verifying what would go.
//! - A key already stored (written since start, or a second bazel-remote
//!   file of the key) wins: the adopted copy is deleted. For CAS the bytes
//!   are the same; for the AC, ours is the newer result.
//! - A file whose content fails (hash, size, casblob header, an `ac.v2`
//!   entry that is no ActionResult) is deleted, counted and logged.
//! - A file whose name bazel-remote would not have written, a `raw.v2`
//!   entry that is no ActionResult (kept unvalidated by bazel-remote's
//!   `disable_http_ac_validation`), or an unreadable file is left where it
//!   is, counted and logged. `raw.v2` entries that are ActionResults become
//!   AC entries (our AC serves both front ends), unless `ac.v2` has the key.
//! - Files move as they are adopted, so a later start finds them indexed
//!   and scans only what is left (emptied shard directories are removed).
//!   An interrupted adoption resumes there.
//!
//! # Layout
//! - `adopt.rs`: the [`Adopter`] thread: order, budget, hand-off to the writer.
//! - `adopt/listing.rs`: finding the files; `adopt/names.rs`: bazel-remote's
//!   names; `adopt/verify.rs`: checking a file's content.
//! - `adopt/progress.rs`: the counters `/status` and metrics read.

mod listing;
mod names;
mod progress;
mod verify;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use self::listing::{list, remove_empty_trees};
use self::names::{TREES, Tree};
pub use self::progress::{AdoptProgress, AdoptionStatus};
use self::verify::{Refused, verify};
use super::index::{Insert, Op, Origin, Reader};
use crate::StoreError;
use bazel_cache_digest::Hash;

/// Test hook: while the file this names exists, the adoption waits before
/// its next file, so a test can watch the server serve mid-adoption
/// without depending on timing. Unset in production.
pub(super) const ADOPT_HOLD_ENV: &str = "BAZEL_CACHE_FAULT_ADOPT_HOLD_FILE";
/// How often a held adoption looks at the hold file.
const HOLD_POLL: Duration = Duration::from_millis(50);

/// Inserts handed to the writer whose outcome is not yet read; bounds what
/// the adoption holds and how far it runs ahead of the writer.
const IN_FLIGHT: usize = 256;

/// Whether `dir` holds any of bazel-remote's trees.
pub(super) fn present(dir: &Path) -> bool {
    TREES.iter().any(|(name, _)| dir.join(name).is_dir())
}

/// The adoption, run on its own thread; stops early (resuming at the next
/// start) when `cancel` is set.
pub(super) struct Adopter {
    pub dir: PathBuf,
    pub index: Reader,
    pub tx: mpsc::Sender<Op>,
    pub cancel: Arc<AtomicBool>,
    pub progress: Arc<AdoptProgress>,
    /// `max_size`: only the newest files that fit are adopted.
    pub max_size: u64,
}

impl Adopter {
    pub(super) fn run(self) {
        let progress = &self.progress;
        progress.start();
        let result = self.adopt();
        progress.running.store(false, Ordering::Relaxed);
        let s = progress.status();
        match result {
            Ok(()) if self.cancel.load(Ordering::Relaxed) => {
                tracing::info!(
                    ?s,
                    "adopting the bazel-remote directory stopped; the next start resumes it"
                )
            }
            Ok(()) => tracing::info!(
                found = s.found,
                adopted = s.adopted,
                adopted_bytes = s.adopted_bytes,
                duplicates = s.duplicates,
                corrupt = s.corrupt,
                left_alone = s.left_alone,
                too_old = s.too_old,
                "adopted the bazel-remote directory"
            ),
            Err(e) => tracing::error!(error = %e, ?s, "adopting the bazel-remote directory failed"),
        }
    }

    fn adopt(&self) -> Result<(), StoreError> {
        let Adopter {
            dir,
            index,
            tx,
            cancel,
            progress,
            max_size,
        } = self;
        let mut files = list(dir, progress)?;
        // In LRU order, oldest first.
        files.sort_by_key(|c| c.used);
        let ac_keys: HashSet<Hash> = files
            .iter()
            .filter(|c| c.tree == Tree::Ac)
            .map(|c| c.hash)
            .collect();
        files.retain(|c| {
            let shadowed = c.tree == Tree::Raw && ac_keys.contains(&c.hash);
            if shadowed {
                tracing::info!(path = %c.path.display(), "leaving a raw.v2 entry alone: ac.v2 has its key");
                AdoptProgress::count(&progress.left_alone);
            }
            !shadowed
        });
        progress.found.store(files.len() as u64, Ordering::Relaxed);
        tracing::info!(
            files = files.len(),
            dir = %dir.display(),
            "adopting a bazel-remote directory in the background"
        );
        let (reply, base) = oneshot::channel();
        tx.blocking_send(Op::ReserveSeqs(files.len() as u64, reply))
            .map_err(|_| StoreError::Closed)?;
        let base = base.blocking_recv().map_err(|_| StoreError::Closed)?;
        let hold = std::env::var_os(ADOPT_HOLD_ENV).map(PathBuf::from);

        let mut waiting = VecDeque::new();
        // Newest first: the files most likely to be asked for are served
        // soonest, and once `max_size` is full the older ones are deleted
        // unread, as eviction would delete them (bazel-remote evicts them
        // at its start when max_size shrank). LRU positions still follow
        // the files' age.
        let mut kept = 0u64;
        for (i, file) in files.into_iter().enumerate().rev() {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            if let Some(hold) = &hold {
                while hold.exists() && !cancel.load(Ordering::Relaxed) {
                    std::thread::sleep(HOLD_POLL);
                }
            }
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            if kept.saturating_add(file.len) > *max_size {
                kept = u64::MAX;
                remove(&file.path, "older than what max_size holds");
                AdoptProgress::count(&progress.too_old);
                continue;
            }
            let key = file.key();
            if index.get(&key)?.is_some() {
                remove_duplicate(&file.path, progress);
                continue;
            }
            let verified = match verify(&file.path, file.tree, &file.hash, file.form) {
                Ok(v) => v,
                Err(Refused::Corrupt(reason)) => {
                    tracing::warn!(path = %file.path.display(), %reason, "a bazel-remote file fails verification");
                    remove(&file.path, "failed verification");
                    AdoptProgress::count(&progress.corrupt);
                    continue;
                }
                Err(reason) => {
                    tracing::warn!(path = %file.path.display(), %reason, "leaving a bazel-remote file alone");
                    AdoptProgress::count(&progress.left_alone);
                    continue;
                }
            };
            let stored = file.len;
            kept += stored;
            let (done, outcome) = oneshot::channel();
            let insert = Insert {
                key,
                from: file.path.clone(),
                size: verified.size,
                stored,
                encoding: verified.encoding,
                origin: Origin::Foreign {
                    seq: base + i as u64,
                    atime: file.used,
                },
                reservation: None,
            };
            tx.blocking_send(Op::Insert(insert, done))
                .map_err(|_| StoreError::Closed)?;
            waiting.push_back((file.path, stored, outcome));
            while waiting.len() > IN_FLIGHT {
                let (path, stored, outcome) = waiting.pop_front().expect("not empty");
                settle(&path, stored, outcome, progress);
            }
        }
        for (path, stored, outcome) in waiting {
            settle(&path, stored, outcome, progress);
        }
        // Durable before the trees shrink: the moved files are in the index.
        let (done, flushed) = oneshot::channel();
        tx.blocking_send(Op::Flush(done))
            .map_err(|_| StoreError::Closed)?;
        let _ = flushed.blocking_recv();
        remove_empty_trees(dir);
        Ok(())
    }
}

/// Counts the writer's answer to an adopted file.
fn settle(
    path: &Path,
    stored: u64,
    outcome: oneshot::Receiver<Result<(), StoreError>>,
    progress: &AdoptProgress,
) {
    match outcome.blocking_recv() {
        Ok(Ok(())) => {
            AdoptProgress::count(&progress.adopted);
            progress.adopted_bytes.fetch_add(stored, Ordering::Relaxed);
        }
        Ok(Err(StoreError::Io(e))) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            AdoptProgress::count(&progress.duplicates);
        }
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "leaving a bazel-remote file alone: moving it into place failed");
            AdoptProgress::count(&progress.left_alone);
        }
        Err(_) => {
            AdoptProgress::count(&progress.left_alone);
        }
    }
}

fn remove_duplicate(path: &Path, progress: &AdoptProgress) {
    remove(path, "its key is stored already");
    AdoptProgress::count(&progress.duplicates);
}

/// Deletes a bazel-remote file the adoption does not take, saying why.
fn remove(path: &Path, why: &str) {
    tracing::debug!(path = %path.display(), why, "deleting a bazel-remote file");
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, why, "deleting a bazel-remote file failed");
    }
}
