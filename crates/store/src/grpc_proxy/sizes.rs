//! [`KnownSizes`]: the sizes of CAS blobs the gRPC backend has seen, so it
//! can name them in REAPI requests (which need hash and size) when the
//! proxy asks by hash alone.
//!
//! Bounded: two generations per shard; when the current one fills, the
//! older is dropped, so memory stays under the capacity whatever the load
//! and recently seen sizes survive. Sharded by the hash's first byte, so
//! concurrent requests do not share one lock.

use std::collections::HashMap;
use std::sync::Mutex;

use bazel_cache_digest::Hash;

use crate::lock;

const SHARDS: usize = 64;

pub(super) struct KnownSizes {
    shards: Box<[Mutex<Generations>]>,
    /// Entries per generation per shard.
    generation_cap: usize,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Hash, u64>,
    previous: HashMap<Hash, u64>,
}

impl KnownSizes {
    /// Remembers about `capacity` sizes (at most that many).
    pub(super) fn new(capacity: usize) -> KnownSizes {
        KnownSizes {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generation_cap: (capacity / SHARDS / 2).max(1),
        }
    }

    fn shard(&self, hash: &Hash) -> &Mutex<Generations> {
        &self.shards[usize::from(hash.bytes()[0]) % SHARDS]
    }

    pub(super) fn insert(&self, hash: Hash, size: u64) {
        let mut g = lock(self.shard(&hash));
        if g.current.len() >= self.generation_cap && !g.current.contains_key(&hash) {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(hash, size);
    }

    pub(super) fn get(&self, hash: &Hash) -> Option<u64> {
        let g = lock(self.shard(hash));
        g.current
            .get(hash)
            .or_else(|| g.previous.get(hash))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(first: u8, n: u32) -> Hash {
        let mut h = [0u8; 32];
        h[0] = first;
        h[1..5].copy_from_slice(&n.to_le_bytes());
        Hash::sha256(h)
    }

    #[test]
    fn remembers_recent_sizes_within_its_capacity() {
        let sizes = KnownSizes::new(SHARDS * 2 * 4);
        sizes.insert(hash(1, 0), 7);
        assert_eq!(sizes.get(&hash(1, 0)), Some(7));
        assert_eq!(sizes.get(&hash(2, 0)), None);
        // One shard: 4 per generation, 8 kept at most.
        for n in 1..=20 {
            sizes.insert(hash(1, n), u64::from(n));
        }
        let kept = (0..=20)
            .filter(|&n| sizes.get(&hash(1, n)).is_some())
            .count();
        assert!(kept <= 8, "{kept} kept");
        assert_eq!(sizes.get(&hash(1, 20)), Some(20), "the latest is kept");
        assert_eq!(sizes.get(&hash(1, 0)), None, "the oldest is gone");
    }
}
