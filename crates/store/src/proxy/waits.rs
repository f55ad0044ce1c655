//! Which CAS blobs the upload queue still holds, and which ActionResults
//! wait for them: the in-memory half of "an AC entry reaches the backend
//! only after the blobs it references" (the policy is `ordering.rs`).
//!
//! The queue's writer thread keeps the pending set equal to the persisted
//! table (it changes both in the same batch, the set right after the
//! commit), so "pending" here means "queued and not yet uploaded or
//! abandoned". An ActionResult parked on pending blobs is handed back to
//! the uploaders when the last of them leaves the queue: no polling, no
//! uploader held while it waits. Nothing here is persisted: after a restart
//! every queued entry is scheduled again and an ActionResult parks again on
//! whatever is still queued, so the order holds across kill -9.
//!
//! Blobs are tracked by an 8-byte fingerprint of their hash (a map entry
//! of ~16 bytes, not a full key, for queues of a million entries). Two blobs
//! sharing one would only make an ActionResult wait for an unrelated
//! upload, never skip a wait.

use std::collections::{HashMap, HashSet};

use bazel_cache_digest::{BlobKey, Hash, Kind};

/// How many uploaded blobs are remembered (two generations of this many),
/// so an ActionResult checked right after its outputs were uploaded needs
/// no HEAD to know they are in the backend.
const RECENT_UPLOADS: usize = 1 << 16;

#[derive(Default)]
pub(super) struct Waits {
    /// Queued CAS blobs (fingerprint → how many queued keys share it).
    pending: HashMap<u64, u32>,
    /// Queued CAS blob → the ActionResults parked on it.
    waiters: HashMap<u64, Vec<BlobKey>>,
    /// Parked ActionResult → how many of its blobs are still queued.
    parked: HashMap<BlobKey, usize>,
    /// Blobs this queue uploaded lately (current and previous generation).
    uploaded: [HashSet<u64>; 2],
}

impl Waits {
    /// A key entered the queue.
    pub(super) fn queued(&mut self, key: &BlobKey) {
        if key.kind == Kind::Cas {
            *self.pending.entry(key.hash.fingerprint()).or_default() += 1;
        }
    }

    /// A key left the queue (`uploaded`: it is in the backend now). Returns
    /// the ActionResults that no longer wait for anything.
    pub(super) fn left(&mut self, key: &BlobKey, uploaded: bool) -> Vec<BlobKey> {
        if key.kind != Kind::Cas {
            return Vec::new();
        }
        let fp = key.hash.fingerprint();
        if uploaded {
            if self.uploaded[0].len() >= RECENT_UPLOADS {
                self.uploaded[1] = std::mem::take(&mut self.uploaded[0]);
            }
            self.uploaded[0].insert(fp);
        }
        match self.pending.get_mut(&fp) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return Vec::new();
            }
            Some(_) => {
                self.pending.remove(&fp);
            }
            None => return Vec::new(),
        }
        let mut ready = Vec::new();
        for ac in self.waiters.remove(&fp).unwrap_or_default() {
            if let Some(n) = self.parked.get_mut(&ac) {
                *n -= 1;
                if *n == 0 {
                    self.parked.remove(&ac);
                    ready.push(ac);
                }
            }
        }
        ready
    }

    /// Parks `ac` on those of `blobs` still queued; `false` (nothing
    /// parked) when none is.
    pub(super) fn park(&mut self, ac: BlobKey, blobs: &[Hash]) -> bool {
        let mut waiting = HashSet::new();
        for hash in blobs {
            let fp = hash.fingerprint();
            if self.pending.contains_key(&fp) && waiting.insert(fp) {
                self.waiters.entry(fp).or_default().push(ac);
            }
        }
        if waiting.is_empty() {
            return false;
        }
        self.parked.insert(ac, waiting.len());
        true
    }

    /// Whether this queue uploaded `hash` lately.
    pub(super) fn recently_uploaded(&self, hash: &Hash) -> bool {
        let fp = hash.fingerprint();
        self.uploaded.iter().any(|g| g.contains(&fp))
    }

    /// How many ActionResults are parked (for `/status`).
    pub(super) fn parked(&self) -> usize {
        self.parked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_result_is_released_by_its_last_queued_blob() {
        let mut w = Waits::default();
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"c"));
        let ac = BlobKey::ac(Hash::of(b"action"));
        w.queued(&BlobKey::cas(a));
        w.queued(&BlobKey::cas(b));
        // c is not queued: only a and b are waited for.
        assert!(w.park(ac, &[a, b, c, a]));
        assert_eq!(w.parked(), 1);
        assert!(w.left(&BlobKey::cas(a), true).is_empty());
        assert!(w.recently_uploaded(&a));
        // Abandoned, not uploaded: released all the same (the policy then
        // asks the backend), but not remembered as uploaded.
        assert_eq!(w.left(&BlobKey::cas(b), false), vec![ac]);
        assert!(!w.recently_uploaded(&b));
        assert_eq!(w.parked(), 0);
        // Nothing queued any more: nothing to park on.
        assert!(!w.park(ac, &[a, b]));
    }

    #[test]
    fn a_blob_queued_twice_releases_on_its_last_exit() {
        let mut w = Waits::default();
        let a = Hash::of(b"a");
        let ac = BlobKey::ac(a);
        w.queued(&BlobKey::cas(a));
        w.queued(&BlobKey::cas(a));
        assert!(w.park(ac, &[a]));
        assert!(w.left(&BlobKey::cas(a), true).is_empty());
        assert_eq!(w.left(&BlobKey::cas(a), true), vec![ac]);
        // AC keys themselves are not tracked as blobs.
        w.queued(&ac);
        assert!(!w.park(BlobKey::ac(Hash::of(b"x")), &[a]));
    }
}
