//! [`ExpiringMap`]: a bounded map from blob keys to small answers that each
//! stay valid for a time to live. The presence cache (`presence_cache.rs`)
//! keeps the backend's existence answers in one, the timestamp refresher
//! (`timestamp_refresh.rs`) the objects it refreshed lately.
//!
//! Why its own structure: both must hold up to about a million keys on a
//! server that also holds the disk index, so an entry is 32 bytes in a ring
//! (with an 8-byte value) plus 25 to 50 in the hash map (a 128-bit key and
//! an insertion number, at hashbrown's load factors),
//! and the bound is a fixed number of entries that never grows: each shard
//! is a ring of slots written in insertion order, so the slot a new entry
//! takes is the oldest one, whose key is dropped (evict oldest, no list to
//! maintain). Shards each have their own lock, held for a hash-map probe,
//! never across an `.await`, so no request waits on a global lock.
//!
//! Keys are the first 128 bits of the blob's SHA-256 (inverted for AC
//! keys, so an AC key and a CAS key of one hash differ): two blobs that
//! share them would be a SHA-256 collision in 128 bits, which nobody has
//! ever found. Time is tokio's clock, so tests run on paused time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bazel_cache_digest::{BlobKey, Kind};
use tokio::time::Instant;

use crate::lock;

/// The most shards; fewer when the map holds fewer entries than this, so
/// that the total bound is exact.
const MAX_SHARDS: usize = 64;

type Fingerprint = [u64; 2];

fn fingerprint(key: &BlobKey) -> Fingerprint {
    let h = key.hash.bytes();
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    // `Hash::fingerprint` is word 0 told apart by digest function.
    let first = key.hash.fingerprint();
    match key.kind {
        Kind::Cas => [first, word(1)],
        Kind::Ac => [!first, !word(1)],
    }
}

struct Slot<V> {
    key: Fingerprint,
    value: V,
    /// Milliseconds after the map's creation.
    expires: u64,
}

struct Shard<V> {
    /// Key → the insertion number of its slot (the slot is `n % capacity`).
    index: HashMap<Fingerprint, u64>,
    /// Filled in insertion order, then overwritten oldest first.
    ring: Vec<Slot<V>>,
    capacity: usize,
    /// Insertions so far: the next one's number.
    inserted: u64,
}

impl<V: Copy> Shard<V> {
    fn live(&self, key: &Fingerprint, now: u64) -> Option<(u64, &Slot<V>)> {
        let n = *self.index.get(key)?;
        let slot = &self.ring[(n % self.capacity as u64) as usize];
        (slot.expires > now).then_some((n, slot))
    }

    fn insert(&mut self, key: Fingerprint, value: V, expires: u64) {
        let n = self.inserted;
        self.inserted += 1;
        let at = (n % self.capacity as u64) as usize;
        let slot = Slot {
            key,
            value,
            expires,
        };
        if self.ring.len() < self.capacity {
            // Grow by doubling, but never past the bound.
            if self.ring.len() == self.ring.capacity() {
                let more = self.ring.len().max(16).min(self.capacity - self.ring.len());
                self.ring.reserve_exact(more);
            }
            self.ring.push(slot);
        } else {
            // The oldest slot: its key goes, unless it was inserted again
            // since (then its index points at a newer slot).
            let old = std::mem::replace(&mut self.ring[at], slot);
            let oldest = n - self.capacity as u64;
            if self.index.get(&old.key) == Some(&oldest) {
                self.index.remove(&old.key);
            }
        }
        self.index.insert(key, n);
    }
}

/// Up to `max_entries` keys, each with a value that expires.
pub(crate) struct ExpiringMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    start: Instant,
}

/// Where a key stood when a backend request about it began: an answer is
/// only kept if nothing newer was recorded for the key meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp(u64);

impl<V: Copy> ExpiringMap<V> {
    /// A map of at most `max_entries` keys (none when 0: every lookup
    /// misses, nothing is kept).
    pub(crate) fn new(max_entries: usize) -> Self {
        let count = max_entries.min(MAX_SHARDS);
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    index: HashMap::new(),
                    ring: Vec::new(),
                    capacity: max_entries / count,
                    inserted: 0,
                })
            })
            .collect();
        ExpiringMap {
            shards,
            start: Instant::now(),
        }
    }

    fn shard(&self, key: &Fingerprint) -> Option<&Mutex<Shard<V>>> {
        if self.shards.is_empty() {
            return None;
        }
        Some(&self.shards[(key[1] % self.shards.len() as u64) as usize])
    }

    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_millis() as u64
    }

    fn expiry(&self, ttl: Duration) -> u64 {
        self.now().saturating_add(ttl.as_millis() as u64)
    }

    /// The key's value, unless absent or expired.
    pub(crate) fn get(&self, key: &BlobKey) -> Option<V> {
        let fp = fingerprint(key);
        let now = self.now();
        let shard = lock(self.shard(&fp)?);
        shard.live(&fp, now).map(|(_, slot)| slot.value)
    }

    /// Records `value` for `ttl` (nothing for a zero `ttl`), replacing
    /// what the key had.
    pub(crate) fn insert(&self, key: &BlobKey, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let fp = fingerprint(key);
        let expires = self.expiry(ttl);
        if let Some(shard) = self.shard(&fp) {
            lock(shard).insert(fp, value, expires);
        }
    }

    /// Records `value` for `ttl` only if the key has no live value; true
    /// when it did. One check and insert under the shard's lock, so of
    /// concurrent callers exactly one wins.
    pub(crate) fn insert_if_vacant(&self, key: &BlobKey, value: V, ttl: Duration) -> bool {
        if ttl.is_zero() {
            return true;
        }
        let fp = fingerprint(key);
        let now = self.now();
        let expires = now.saturating_add(ttl.as_millis() as u64);
        let Some(shard) = self.shard(&fp) else {
            return true;
        };
        let mut shard = lock(shard);
        if shard.live(&fp, now).is_some() {
            return false;
        }
        shard.insert(fp, value, expires);
        true
    }

    /// Marks the moment a backend request about `key` begins, for
    /// [`ExpiringMap::insert_since`].
    pub(crate) fn stamp(&self, key: &BlobKey) -> Stamp {
        let fp = fingerprint(key);
        Stamp(self.shard(&fp).map_or(0, |s| lock(s).inserted))
    }

    /// Records the answer of a request that began at `since`, unless the
    /// key got a value meanwhile (an upload finishing while a HEAD was in
    /// flight is newer than the HEAD's "absent").
    pub(crate) fn insert_since(&self, key: &BlobKey, value: V, ttl: Duration, since: Stamp) {
        if ttl.is_zero() {
            return;
        }
        let fp = fingerprint(key);
        let expires = self.expiry(ttl);
        let Some(shard) = self.shard(&fp) else {
            return;
        };
        let mut shard = lock(shard);
        if shard.index.get(&fp).is_some_and(|&n| n >= since.0) {
            return;
        }
        shard.insert(fp, value, expires);
    }

    /// Forgets the key.
    pub(crate) fn remove(&self, key: &BlobKey) {
        let fp = fingerprint(key);
        if let Some(shard) = self.shard(&fp) {
            lock(shard).index.remove(&fp);
        }
    }

    /// Keys held (expired ones included until their slot is reused).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).index.len()).sum()
    }

    /// The most keys it holds.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::Hash;

    fn key(i: u64) -> BlobKey {
        BlobKey::cas(Hash::of(&i.to_le_bytes()))
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn values_expire_after_their_ttl() {
        let map = ExpiringMap::new(100);
        map.insert(&key(1), 1u8, Duration::from_secs(10));
        map.insert(&key(2), 2u8, MINUTE);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(map.get(&key(1)), Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(map.get(&key(1)), None, "expired at its ttl");
        assert_eq!(map.get(&key(2)), Some(2), "its own ttl");
        // An expired key is vacant again.
        assert!(map.insert_if_vacant(&key(1), 3, MINUTE));
        assert!(!map.insert_if_vacant(&key(1), 4, MINUTE));
        assert_eq!(map.get(&key(1)), Some(3));
    }

    #[test]
    fn holds_at_most_max_entries_and_evicts_the_oldest() {
        for max in [1, 7, 64, 100, 1000] {
            let map = ExpiringMap::new(max);
            assert!(map.capacity() <= max && map.capacity() > max / 2, "{max}");
            for i in 0..(max as u64 * 5) {
                map.insert(&key(i), i, MINUTE);
                assert!(map.len() <= max, "{max}: {} entries", map.len());
            }
            // The newest insert is always kept; in each shard the oldest go.
            let last = max as u64 * 5 - 1;
            assert_eq!(map.get(&key(last)), Some(last));
            assert_eq!(map.get(&key(0)), None, "{max}: the oldest was evicted");
        }
        let none = ExpiringMap::new(0);
        none.insert(&key(1), 1u8, MINUTE);
        assert_eq!(none.get(&key(1)), None);
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn a_reinserted_key_is_not_evicted_with_its_old_slot() {
        let map = ExpiringMap::new(1); // one shard of one slot
        map.insert(&key(1), 1u8, MINUTE);
        map.insert(&key(1), 2u8, MINUTE);
        assert_eq!(map.get(&key(1)), Some(2));
        assert_eq!(map.len(), 1);
        let map = ExpiringMap::new(2); // two shards of one slot
        map.insert(&key(5), 1u8, MINUTE);
        map.insert(&key(5), 2u8, MINUTE);
        assert_eq!(map.get(&key(5)), Some(2));
    }

    #[test]
    fn an_answer_older_than_the_keys_value_is_dropped() {
        let map = ExpiringMap::new(100);
        let since = map.stamp(&key(1));
        map.insert(&key(1), "uploaded", MINUTE);
        map.insert_since(&key(1), "head said absent", MINUTE, since);
        assert_eq!(map.get(&key(1)), Some("uploaded"));
        let since = map.stamp(&key(1));
        map.insert_since(&key(1), "later head", MINUTE, since);
        assert_eq!(map.get(&key(1)), Some("later head"));
        map.remove(&key(1));
        assert_eq!(map.get(&key(1)), None);
    }

    #[test]
    fn an_entry_of_an_eight_byte_value_takes_32_bytes_in_the_ring() {
        // The figure the docs quote (about 80 bytes an entry with the map).
        assert_eq!(std::mem::size_of::<Slot<u64>>(), 32);
        assert_eq!(std::mem::size_of::<Slot<()>>(), 24);
    }

    #[test]
    fn ac_and_cas_keys_of_one_hash_are_distinct() {
        let map = ExpiringMap::new(100);
        let h = Hash::of(b"x");
        map.insert(&BlobKey::cas(h), 1u8, MINUTE);
        assert_eq!(map.get(&BlobKey::ac(h)), None);
    }
}
