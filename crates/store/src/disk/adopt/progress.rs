//! What an adoption has done so far, counted as it goes and read without
//! locks by `/status` and the metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the adoption has done so far; read without locks (`/status`, metrics).
#[derive(Debug, Default)]
pub struct AdoptProgress {
    pub(super) running: AtomicBool,
    pub(super) found: AtomicU64,
    pub(super) adopted: AtomicU64,
    pub(super) adopted_bytes: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) corrupt: AtomicU64,
    pub(super) left_alone: AtomicU64,
    pub(super) too_old: AtomicU64,
}

/// A snapshot of [`AdoptProgress`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptionStatus {
    /// The background adoption is still going: files not yet adopted are
    /// misses until it reaches them.
    pub running: bool,
    /// bazel-remote files found (with a name it writes) at this start.
    pub found: u64,
    /// Verified and indexed, and their bytes on disk.
    pub adopted: u64,
    pub adopted_bytes: u64,
    /// Deleted because the key was stored already.
    pub duplicates: u64,
    /// Deleted because their content failed verification.
    pub corrupt: u64,
    /// Left where they are: names bazel-remote does not write, raw entries
    /// that are no ActionResult, files that could not be read or moved.
    pub left_alone: u64,
    /// Deleted without being read: older than the newest files that fill
    /// `max_size`, as eviction would have deleted them.
    pub too_old: u64,
}

impl AdoptProgress {
    pub fn status(&self) -> AdoptionStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AdoptionStatus {
            running: self.running.load(Ordering::Relaxed),
            found: get(&self.found),
            adopted: get(&self.adopted),
            adopted_bytes: get(&self.adopted_bytes),
            duplicates: get(&self.duplicates),
            corrupt: get(&self.corrupt),
            left_alone: get(&self.left_alone),
            too_old: get(&self.too_old),
        }
    }

    pub(in crate::disk) fn start(&self) {
        self.running.store(true, Ordering::Relaxed);
    }

    pub(super) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
