//! [`CommitStats`]: how long each group commit's flushes took and how many
//! new blobs each one made durable, for the server's metrics (read at
//! scrape time, recorded by the index writer).
//!
//! Why: every acknowledged write waits for its batch's flushes
//! (group_sync.rs), so a flush that slows down (a busy or failing disk, a
//! volume shared with other heavy writers, a network block device) shows
//! as write latency for every client at once, and nothing else tells that
//! apart from a slow server. Databases export their log's fsync time for
//! the same reason. The blob count shows group commit at work: under load
//! one flush serves many writes.

use std::time::Duration;

use crate::histogram::AtomicHistogram;

/// Upper bounds (seconds) of the flush-time histogram: from a flush of an
/// idle NVMe volume (well under a millisecond) to a disk in trouble.
const FLUSH_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the blobs-per-commit histogram: powers of two up to a
/// batch far larger than the writer's queue lets one get.
const BLOB_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Group commits since start: one observation per batch of new blobs that
/// was flushed (none with `fsync: false`, which flushes nothing).
#[derive(Debug)]
pub struct CommitStats {
    flush: AtomicHistogram,
    blobs: AtomicHistogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            flush: AtomicHistogram::new(&FLUSH_BUCKETS),
            blobs: AtomicHistogram::new(&BLOB_BUCKETS),
        }
    }
}

impl CommitStats {
    /// One group commit: both of its flushes took `flush` together, and it
    /// made `blobs` new blobs durable.
    pub(in crate::disk) fn record(&self, flush: Duration, blobs: usize) {
        self.flush.observe(flush.as_secs_f64());
        self.blobs.observe(blobs as f64);
    }

    /// Seconds each group commit spent flushing (its two flushes together).
    pub fn flush_seconds(&self) -> &AtomicHistogram {
        &self.flush
    }

    /// New blobs (written, or adopted from bazel-remote) each group commit
    /// made durable.
    pub fn blobs(&self) -> &AtomicHistogram {
        &self.blobs
    }
}
