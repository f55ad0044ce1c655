//! An in-memory map of which CAS blobs the disk store holds, so that
//! FindMissingBlobs (a thousand digests a call, several calls per action)
//! answers without a B-tree descent in the index for every digest: a hit
//! or a miss costs one hash-map probe.
//!
//! Entry: the first 8 bytes of the SHA-256 (a fingerprint) → the blob's
//! size and when it was last used (for the LRU touch rate limit). 16 bytes
//! per blob: about 36 MB for a million blobs, against 40+ bytes for full
//! keys. Two different stored and asked-for hashes share a fingerprint
//! with probability 2^-64 per pair, and must also share the size to be
//! confused: about 5 × 10^-14 per query with a million blobs stored.
//!
//! Who writes: only the index writer, in its order. It adds a blob once
//! it publishes the decision that indexes it (a query in between misses, and the client
//! uploads again: harmless) and removes one before the commit that drops
//! it and before its file is unlinked (a query in between misses while
//! the file is still there: harmless). So the map never says "present"
//! for a blob the index has dropped. It is filled at start by the writer
//! too, in slices between batches ([`Presence::mark_loaded`] when done);
//! until then a probe that misses is not an answer and the caller asks
//! the index.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bazel_cache_digest::{Hash, read, write};

/// Shards, so that concurrent readers and the writer rarely meet on a lock.
const SHARDS: usize = 64;
/// Sizes below 2^40 - 1 bytes are kept here; for larger blobs the entry
/// holds [`SIZE_MASK`], which sends a probe to the index.
const SIZE_BITS: u32 = 40;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;

/// The fingerprint is already uniformly distributed: hashing it again
/// would only cost time.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<Identity>>;

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// Stored, with this size; last used at this minute (Unix minutes,
    /// truncated to 24 bits).
    Present { size: u64, minute: u32 },
    /// Not stored.
    Absent,
    /// This map cannot tell (not loaded yet, or a size beyond its range):
    /// ask the index.
    Unknown,
}

pub(super) struct Presence {
    shards: Vec<RwLock<Shard>>,
    loaded: AtomicBool,
}

fn fingerprint(hash: &Hash) -> u64 {
    u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes"))
}

fn pack(size: u64, minute: u32) -> u64 {
    size.min(SIZE_MASK) | (u64::from(minute & 0xff_ffff) << SIZE_BITS)
}

/// Unix time in minutes, truncated to the 24 bits an entry keeps (wraps
/// every 31 years; compared with wrapping arithmetic).
pub(super) fn minute_of(unix_secs: u64) -> u32 {
    ((unix_secs / 60) & 0xff_ffff) as u32
}

/// Minutes from `then` to `now`, both truncated by [`minute_of`].
pub(super) fn minutes_since(then: u32, now: u32) -> u32 {
    now.wrapping_sub(then) & 0xff_ffff
}

impl Presence {
    pub(super) fn new() -> Self {
        Presence {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            loaded: AtomicBool::new(false),
        }
    }

    fn shard(&self, fp: u64) -> &RwLock<Shard> {
        // The top bits: the low ones choose the bucket inside the shard.
        &self.shards[(fp >> 58) as usize % SHARDS]
    }

    pub(super) fn probe(&self, hash: &Hash) -> Probe {
        let fp = fingerprint(hash);
        match read(self.shard(fp)).get(&fp) {
            Some(v) if v & SIZE_MASK == SIZE_MASK => Probe::Unknown,
            Some(v) => Probe::Present {
                size: v & SIZE_MASK,
                minute: (v >> SIZE_BITS) as u32,
            },
            None if self.loaded.load(Ordering::Acquire) => Probe::Absent,
            None => Probe::Unknown,
        }
    }

    /// Records a stored blob (the writer, after its commit).
    pub(super) fn insert(&self, hash: &Hash, size: u64, unix_secs: u64) {
        let fp = fingerprint(hash);
        write(self.shard(fp)).insert(fp, pack(size, minute_of(unix_secs)));
    }

    /// Forgets a blob (the writer, before the commit that drops it).
    pub(super) fn remove(&self, hash: &Hash) {
        let fp = fingerprint(hash);
        write(self.shard(fp)).remove(&fp);
    }

    /// Every stored blob has been inserted: a miss is now an answer.
    pub(super) fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether a miss is an answer yet.
    pub(super) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Blobs held (tests and metrics).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_answer_only_once_loaded() {
        let p = Presence::new();
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        p.insert(&a, 123, 1_700_000_000);
        assert_eq!(
            p.probe(&a),
            Probe::Present {
                size: 123,
                minute: minute_of(1_700_000_000)
            }
        );
        assert_eq!(p.probe(&b), Probe::Unknown);
        p.mark_loaded();
        assert_eq!(p.probe(&b), Probe::Absent);
        p.remove(&a);
        assert_eq!(p.probe(&a), Probe::Absent);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn sizes_beyond_range_defer_to_the_index() {
        let p = Presence::new();
        p.mark_loaded();
        let a = Hash::of(b"huge");
        p.insert(&a, 1 << 40, 0);
        assert_eq!(p.probe(&a), Probe::Unknown);
        p.insert(&a, (1 << 40) - 2, 0);
        assert!(matches!(p.probe(&a), Probe::Present { size, .. } if size == (1 << 40) - 2));
    }

    #[test]
    fn minutes_wrap() {
        assert_eq!(minutes_since(0xff_fffe, 1), 3);
        assert_eq!(minutes_since(5, 5), 0);
    }
}
