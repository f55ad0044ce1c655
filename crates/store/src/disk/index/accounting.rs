//! Size accounting: the counters `/status` and metrics read without
//! locks, the reservations that make eviction leave room for writes in
//! flight, and the writer's running totals that it publishes to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Entry;
use crate::StoreStats;
use crate::disk::commit_stats::CommitStats;

/// Counters published by the writer for `/status` and metrics; read without locks.
#[derive(Debug, Default)]
pub(in crate::disk) struct SharedStats {
    pub stored: AtomicU64,
    pub logical: AtomicU64,
    pub entries: AtomicU64,
    pub reserved: AtomicU64,
    pub evicted: AtomicU64,
    /// Entries removed by LRU eviction since start (metrics).
    pub evictions: AtomicU64,
    pub overwritten: AtomicU64,
    pub max: AtomicU64,
    /// Group commits: flush time and blobs per flush (metrics).
    pub commits: CommitStats,
}

impl SharedStats {
    pub(in crate::disk) fn snapshot(&self) -> StoreStats {
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
pub(in crate::disk) struct Reservation {
    stats: Arc<SharedStats>,
    bytes: u64,
}

impl Reservation {
    /// Reserves `bytes` unless the bytes of all writes in flight, these
    /// included, would exceed `limit`. Stored blobs don't count: eviction
    /// can always make room for them, but not for bytes still arriving.
    /// `Err` carries the bytes already in flight.
    pub(in crate::disk) fn try_new(
        stats: &Arc<SharedStats>,
        bytes: u64,
        limit: u64,
    ) -> Result<Self, u64> {
        let mut current = stats.reserved.load(Ordering::Relaxed);
        loop {
            let after = current.saturating_add(bytes);
            if after > limit {
                return Err(current);
            }
            // Release: the writer that sees these bytes (Acquire) also
            // sees what this thread sent it before reserving.
            match stats.reserved.compare_exchange_weak(
                current,
                after,
                Ordering::Release,
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

    pub(in crate::disk) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True when stored plus in-flight bytes are over `max_size`: eviction
    /// should run now rather than at the next write's commit.
    pub(in crate::disk) fn needs_room(&self) -> bool {
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

/// The writer's running totals for a batch, published when it commits.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) stored: u64,
    pub(super) logical: u64,
    pub(super) entries: u64,
}

impl Totals {
    pub(super) fn load(stats: &SharedStats) -> Self {
        Totals {
            stored: stats.stored.load(Ordering::Relaxed),
            logical: stats.logical.load(Ordering::Relaxed),
            entries: stats.entries.load(Ordering::Relaxed),
        }
    }

    pub(super) fn add(&mut self, e: &Entry) {
        self.stored += e.stored;
        self.logical += e.size;
        self.entries += 1;
    }

    pub(super) fn remove(&mut self, e: &Entry) {
        self.stored = self.stored.saturating_sub(e.stored);
        self.logical = self.logical.saturating_sub(e.size);
        self.entries = self.entries.saturating_sub(1);
    }

    pub(super) fn publish(&self, stats: &SharedStats) {
        stats.stored.store(self.stored, Ordering::Relaxed);
        stats.logical.store(self.logical, Ordering::Relaxed);
        stats.entries.store(self.entries, Ordering::Relaxed);
    }
}
