//! Index changes the writer has decided, and acknowledged, that the
//! committer thread has not committed to redb yet: what readers see before
//! redb does.
//!
//! The writer is the only one that decides (inserts, touches, forgets,
//! evictions) and the only one that adds here, tagging each change with the
//! generation (writer batch) that made it. The committer commits generations
//! in order and publishes the last one committed; the writer then prunes what
//! redb now holds. So for any key, the latest decision is here or, when it is
//! not here, in the latest redb commit: a reader looks here first, then
//! begins its read transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::Entry;
use bazel_cache_digest::{BlobKey, lock};

/// The latest decision about a key: `Some` stored as this entry, `None`
/// removed; and the generation that made it.
type Decided = (Option<Entry>, u64);

#[derive(Default)]
pub(super) struct Pending {
    decided: Mutex<HashMap<BlobKey, Decided>>,
    /// `decided.len()`, so that readers skip the lock when nothing waits
    /// (the common case): a decision is counted here before its write is
    /// acknowledged, so a reader that follows the acknowledgement sees it.
    len: AtomicUsize,
    committed: Mutex<Committed>,
    progress: Condvar,
}

#[derive(Default)]
struct Committed {
    generation: u64,
    /// Why the committer's last commit failed, while it retries.
    failing: Option<String>,
}

impl Pending {
    /// The decision about `key` not yet in redb: `Some(None)` when the key
    /// was removed, `None` when redb has the latest.
    pub(super) fn get(&self, key: &BlobKey) -> Option<Option<Entry>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        lock(&self.decided).get(key).map(|(entry, _)| *entry)
    }

    /// [`Pending::get`] for many keys under one lock; `None` for the keys
    /// redb has the latest of.
    pub(super) fn get_many(&self, keys: &[BlobKey]) -> Vec<Option<Option<Entry>>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return vec![None; keys.len()];
        }
        let decided = lock(&self.decided);
        keys.iter()
            .map(|k| decided.get(k).map(|(entry, _)| *entry))
            .collect()
    }

    /// Every decision not yet pruned (readers merging them with a scan).
    pub(super) fn snapshot(&self) -> HashMap<BlobKey, Option<Entry>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return HashMap::new();
        }
        lock(&self.decided)
            .iter()
            .map(|(k, (entry, _))| (*k, *entry))
            .collect()
    }

    /// Publishes the decisions of `generation` (the writer, before it
    /// acknowledges the writes they record).
    pub(super) fn publish(
        &self,
        generation: u64,
        decisions: impl IntoIterator<Item = (BlobKey, Option<Entry>)>,
    ) {
        let mut decided = lock(&self.decided);
        for (key, entry) in decisions {
            decided.insert(key, (entry, generation));
        }
        self.len.store(decided.len(), Ordering::Release);
    }

    /// Drops the decisions redb now holds (the writer, before it begins a
    /// read transaction that must see the latest decisions).
    pub(super) fn prune(&self) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let committed = lock(&self.committed).generation;
        let mut decided = lock(&self.decided);
        decided.retain(|_, (_, generation)| *generation > committed);
        self.len.store(decided.len(), Ordering::Release);
    }

    /// Decisions not yet pruned.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The committer: every generation up to `generation` is in redb.
    pub(super) fn committed(&self, generation: u64) {
        let mut c = lock(&self.committed);
        c.generation = c.generation.max(generation);
        c.failing = None;
        self.progress.notify_all();
    }

    /// The committer: its commit failed; it keeps the changes and retries.
    pub(super) fn failing(&self, reason: String) {
        lock(&self.committed).failing = Some(reason);
        self.progress.notify_all();
    }

    /// Why the committer's commits fail, while they do.
    pub(super) fn failure(&self) -> Option<String> {
        lock(&self.committed).failing.clone()
    }

    /// Waits up to `wait` for the committer to commit `generation`. `Err`
    /// says why not: its commits fail, or it did not get there in time.
    pub(super) fn wait_committed(&self, generation: u64, wait: Duration) -> Result<(), String> {
        let c = lock(&self.committed);
        let (c, _) = self
            .progress
            .wait_timeout_while(c, wait, |c| {
                c.generation < generation && c.failing.is_none()
            })
            .unwrap_or_else(PoisonError::into_inner);
        if c.generation >= generation {
            return Ok(());
        }
        Err(c.failing.clone().unwrap_or_else(|| {
            format!(
                "the committer is {} batches behind after {wait:?}",
                generation - c.generation
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;
    use bazel_cache_digest::Hash;

    fn entry(seq: u64) -> Entry {
        Entry {
            size: 1,
            stored: 1,
            seq,
            atime: 0,
            encoding: Encoding::Identity,
        }
    }

    #[test]
    fn decisions_stay_until_their_generation_is_committed() {
        let p = Pending::default();
        let (a, b) = (BlobKey::cas(Hash::of(b"a")), BlobKey::cas(Hash::of(b"b")));
        p.publish(1, [(a, Some(entry(1)))]);
        p.publish(2, [(b, Some(entry(2))), (a, None)]);
        assert_eq!(p.get(&a), Some(None));
        p.committed(1);
        p.prune();
        // `a` was decided again in generation 2: still pending.
        assert_eq!(p.get_many(&[a, b]), vec![Some(None), Some(Some(entry(2)))]);
        p.committed(2);
        p.prune();
        assert_eq!((p.get(&a), p.get(&b), p.len()), (None, None, 0));
    }

    #[test]
    fn a_failing_committer_ends_the_wait() {
        let p = Pending::default();
        p.failing("disk full".into());
        assert_eq!(p.failure(), Some("disk full".into()));
        assert_eq!(
            p.wait_committed(1, Duration::from_secs(60)),
            Err("disk full".into())
        );
        p.committed(1);
        assert_eq!(p.failure(), None);
        assert_eq!(p.wait_committed(1, Duration::from_secs(60)), Ok(()));
        assert!(p.wait_committed(2, Duration::ZERO).is_err());
    }
}
