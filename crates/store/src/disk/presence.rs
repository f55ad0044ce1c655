//! An in-memory map of which CAS blobs the disk store holds, so that
//! FindMissingBlobs (a thousand digests a call, several calls per action)
//! answers without a B-tree descent in the index for every digest: a hit
//! or a miss costs a look at one or two cache lines.
//!
//! Entry: the first 8 bytes of the hash ([`Hash::fingerprint`]) → the blob's
//! size and when it was last used (for the LRU touch rate limit). Two
//! different stored and asked-for hashes share a fingerprint with
//! probability 2^-64 per pair, and must also share the size to be
//! confused: about 5 × 10^-14 per query with a million blobs stored.
//!
//! Memory: 16 bytes a slot, at 70–87.5 % of slots used: 18–23 bytes a
//! blob, about 20 MB for a million (a `HashMap` of the same entries took
//! 36 MB: it doubles its buckets, and a million blobs over 64 shards had
//! just crossed a doubling, leaving half of them empty). See [`Table`].
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

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bazel_cache_digest::{Hash, read, write};

/// Shards, so that concurrent readers and the writer rarely meet on a lock,
/// and a table's growth copies 1/64 of the map while readers of the
/// other 63 go on.
const SHARDS: usize = 64;
/// The fingerprint's top bits choose the shard; a table keeps the rest.
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// Sizes below 2^40 - 1 bytes are kept here; for larger blobs the entry
/// holds [`SIZE_MASK`], which sends a probe to the index.
const SIZE_BITS: u32 = 40;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;

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
    shards: Vec<RwLock<Table>>,
    loaded: AtomicBool,
}

/// The shard of a fingerprint (its top bits) and its key in that shard's
/// table: the other bits, shifted up so that keys order as fingerprints
/// do and spread over all of `u64`, with the low bit set so no key is
/// [`EMPTY`].
fn locate(fp: u64) -> (usize, u64) {
    ((fp >> (64 - SHARD_BITS)) as usize, (fp << SHARD_BITS) | 1)
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
            shards: (0..SHARDS).map(|_| RwLock::new(Table::default())).collect(),
            loaded: AtomicBool::new(false),
        }
    }

    pub(super) fn probe(&self, hash: &Hash) -> Probe {
        let (shard, key) = locate(hash.fingerprint());
        match read(&self.shards[shard]).get(key) {
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
        let (shard, key) = locate(hash.fingerprint());
        write(&self.shards[shard]).insert(key, pack(size, minute_of(unix_secs)));
    }

    /// Forgets a blob (the writer, before the commit that drops it).
    pub(super) fn remove(&self, hash: &Hash) {
        let (shard, key) = locate(hash.fingerprint());
        write(&self.shards[shard]).remove(key);
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
        self.shards.iter().map(|s| read(s).len).sum()
    }
}

/// A key of [`Table`]: none is 0 ([`locate`] sets the low bit).
const EMPTY: u64 = 0;

/// Slots past the last home: entries whose home is near the end go on
/// past it instead of wrapping round to the start (which would break
/// the order lookups rely on). Entries that overflow them add this many
/// more. Growing the table instead would not do: keys crowded at the
/// very end of the range (fingerprints someone hashed many blobs to get)
/// would keep sharing the last home however many homes there were.
const TAIL: usize = 16;

/// The home slot of `key` in a table of `homes` homes: the key's place on
/// `0..homes`, scaled (no division, no power of two needed).
fn home(key: u64, homes: usize) -> usize {
    ((u128::from(key) * homes as u128) >> 64) as usize
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    key: u64,
    value: u64,
}

/// One shard's entries: open addressing with linear probing in a flat
/// array, kept sorted by key.
///
/// Why this shape: a slot is just the key and value (16 bytes, no control
/// bytes, no pointers), the table is allowed to fill to 7/8 and grows by
/// a quarter, so between 70 % and 87.5 % of its slots are in use at any
/// size, where a doubling table spends half its memory on empty slots
/// right after each doubling.
///
/// A key's home slot is `key × homes / 2^64`: any number of homes works,
/// and the home never decreases as the key grows. The invariants:
///
/// 1. every entry sits at or after its home, with no empty slot between
///    the two;
/// 2. the entries are in key order.
///
/// So a lookup starts at the key's home and walks on while it sees keys
/// smaller than its own; an empty slot or a larger key proves the key is
/// absent. A miss stops about as early as a hit, even at 7/8 full, where
/// plain linear probing would walk on to the end of the cluster (some 30
/// slots on average). An insertion shifts the larger keys after its place
/// one slot on, up to the next empty slot; a removal shifts back the
/// entries after it that are not at their homes (no tombstones, so
/// removals leave nothing behind to slow lookups or to clean up). Growth
/// rebuilds in one pass: the entries are already in order.
///
/// It never shrinks: the cache's size limit bounds its entries, and a
/// store that held that many once will again.
#[derive(Debug, Default)]
struct Table {
    /// `homes + TAIL` slots (more if entries overflowed the tail), or
    /// none before the first insertion.
    slots: Vec<Slot>,
    /// Home slots: keys map onto `0..homes`.
    homes: usize,
    len: usize,
}

impl Table {
    /// Home slots of a table's first allocation.
    const MIN_HOMES: usize = 16;

    fn home(&self, key: u64) -> usize {
        home(key, self.homes)
    }

    /// Where `key` is, or where it would go: the first slot from its home
    /// on that is empty or holds a key at least as large. May be
    /// `slots.len()` (the tail is full of smaller keys).
    fn position(&self, key: u64) -> usize {
        let mut i = self.home(key);
        while let Some(s) = self.slots.get(i) {
            if s.key == EMPTY || s.key >= key {
                break;
            }
            i += 1;
        }
        i
    }

    fn get(&self, key: u64) -> Option<u64> {
        let s = self.slots.get(self.position(key))?;
        (s.key == key).then_some(s.value)
    }

    fn insert(&mut self, key: u64, value: u64) {
        debug_assert_ne!(key, EMPTY);
        let mut at = self.position(key);
        if let Some(s) = self.slots.get_mut(at)
            && s.key == key
        {
            s.value = value;
            return;
        }
        if (self.len + 1) * 8 > self.homes * 7 {
            self.grow();
            at = self.position(key);
        }
        // Shift the larger keys from `at` up to the next empty slot.
        let free = match self.slots[at..].iter().position(|s| s.key == EMPTY) {
            Some(free) => at + free,
            None => {
                extend_tail(&mut self.slots);
                self.slots.len() - TAIL
            }
        };
        self.slots.copy_within(at..free, at + 1);
        self.slots[at] = Slot { key, value };
        self.len += 1;
    }

    fn remove(&mut self, key: u64) {
        let mut at = self.position(key);
        if self.slots.get(at).is_none_or(|s| s.key != key) {
            return;
        }
        // Shift back each following entry that is not at its home.
        while let Some(&next) = self.slots.get(at + 1) {
            if next.key == EMPTY || self.home(next.key) > at {
                break;
            }
            self.slots[at] = next;
            at += 1;
        }
        self.slots[at] = Slot::default();
        self.len -= 1;
    }

    /// Rebuilds with a quarter more homes, so the table is at most 70 %
    /// full afterwards. The entries are in order: each goes to its home or
    /// right after the one before.
    fn grow(&mut self) {
        let homes = (self.homes + self.homes / 4).max(Self::MIN_HOMES);
        let mut slots = vec![Slot::default(); homes + TAIL];
        let mut next = 0;
        for s in self.slots.iter().filter(|s| s.key != EMPTY) {
            let at = home(s.key, homes).max(next);
            if at >= slots.len() {
                extend_tail(&mut slots);
            }
            slots[at] = *s;
            next = at + 1;
        }
        self.slots = slots;
        self.homes = homes;
    }
}

/// [`TAIL`] more empty slots at the end, and no more capacity than that
/// (a plain push would double the allocation).
fn extend_tail(slots: &mut Vec<Slot>) {
    slots.reserve_exact(TAIL);
    slots.resize(slots.len() + TAIL, Slot::default());
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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

    /// Checks [`Table`]'s invariants and that it holds exactly `model`.
    fn check(t: &Table, model: &HashMap<u64, u64>) {
        assert_eq!(t.len, model.len());
        if t.homes == 0 {
            assert!(t.slots.is_empty());
        } else {
            assert!(t.slots.len() >= t.homes + TAIL);
            assert_eq!(t.slots.capacity(), t.slots.len());
        }
        assert!(
            t.len * 8 <= t.homes * 7,
            "{} entries in {} homes",
            t.len,
            t.homes
        );
        let mut last = EMPTY;
        let mut run_start = 0;
        for (i, s) in t.slots.iter().enumerate() {
            if s.key == EMPTY {
                run_start = i + 1;
                continue;
            }
            assert!(s.key > last, "slot {i} out of order");
            last = s.key;
            let h = t.home(s.key);
            assert!(
                h <= i && h >= run_start,
                "slot {i}: home {h}, run from {run_start}"
            );
            assert_eq!(model.get(&s.key), Some(&s.value), "slot {i}");
        }
        for (&k, &v) in model {
            assert_eq!(t.get(k), Some(v));
        }
    }

    /// A small xorshift generator: the tests need no crate for randomness.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random insertions, updates, removals and lookups against a
    /// `HashMap`, with keys drawn from `key` (a spread that decides how
    /// crowded the homes are).
    fn against_model(seed: u64, ops: usize, key: impl Fn(u64) -> u64) {
        let mut rng = Rng(seed);
        let mut t = Table::default();
        let mut model = HashMap::new();
        for op in 0..ops {
            let k = key(rng.next());
            match rng.next() % 8 {
                0..=3 => {
                    let v = rng.next();
                    t.insert(k, v);
                    model.insert(k, v);
                }
                4 | 5 => {
                    t.remove(k);
                    model.remove(&k);
                }
                _ => assert_eq!(t.get(k), model.get(&k).copied()),
            }
            if op % 97 == 0 {
                check(&t, &model);
            }
        }
        check(&t, &model);
        // Empty it again: every removal shifts back what follows it.
        let keys: Vec<u64> = model.keys().copied().collect();
        for k in keys {
            t.remove(k);
            model.remove(&k);
            assert_eq!(t.get(k), None);
        }
        check(&t, &model);
    }

    #[test]
    fn a_table_agrees_with_a_hash_map() {
        // Keys spread over all of u64, as fingerprints are; a pool of about
        // 3,000, so insertions update and removals find their key.
        against_model(1, 20_000, |r| {
            ((r % 3000) << 1 | 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        // Many more: growth through many sizes.
        against_model(2, 60_000, |r| r | 1);
    }

    #[test]
    fn a_table_copes_with_crowded_homes() {
        // Keys in a sliver of the range all share a few homes: long runs,
        // shifts across them, and entries pushed into the tail.
        against_model(3, 20_000, |r| (r % 5000) << 1 | 1);
        // And at the top of the range: one run past the last home, the
        // tail extended for it (more homes would not spread these keys).
        against_model(4, 20_000, |r| u64::MAX - ((r % 5000) << 1));
    }

    #[test]
    fn a_table_grows_and_keeps_every_entry() {
        let mut t = Table::default();
        let mut model = HashMap::new();
        let mut rng = Rng(5);
        let mut homes = vec![];
        for i in 0..100_000u64 {
            let k = rng.next() | 1;
            t.insert(k, i);
            model.insert(k, i);
            if homes.last() != Some(&t.homes) {
                homes.push(t.homes);
            }
        }
        check(&t, &model);
        // Growth by a quarter: between 70 % and 87.5 % full.
        assert!(
            homes.windows(2).all(|w| w[1] == w[0] + w[0] / 4),
            "{homes:?}"
        );
        assert!(t.len * 100 >= t.homes * 69, "{} in {}", t.len, t.homes);
        assert_eq!(t.slots.len(), t.homes + TAIL);
    }

    #[test]
    fn removal_shifts_back_only_displaced_entries() {
        let mut t = Table::default();
        // 16 homes: keys k << 60 have home k.
        let at = |home: u64, low: u64| (home << 60) | low;
        for (k, v) in [(at(3, 1), 1), (at(3, 3), 2), (at(4, 1), 3), (at(6, 1), 4)] {
            t.insert(k, v);
        }
        assert_eq!(t.homes, 16);
        let keys = |t: &Table| t.slots.iter().map(|s| s.key).collect::<Vec<_>>()[..8].to_vec();
        assert_eq!(
            keys(&t),
            [0, 0, 0, at(3, 1), at(3, 3), at(4, 1), at(6, 1), 0]
        );
        t.remove(at(3, 1));
        // at(3, 3) goes home, at(4, 1) too; at(6, 1) was home already.
        assert_eq!(keys(&t), [0, 0, 0, at(3, 3), at(4, 1), 0, at(6, 1), 0]);
        assert_eq!(t.get(at(3, 1)), None);
        assert_eq!(t.get(at(6, 1)), Some(4));
        // Removing what is not there changes nothing.
        t.remove(at(5, 1));
        assert_eq!(t.len, 3);
    }

    #[test]
    fn minutes_wrap() {
        assert_eq!(minutes_since(0xff_fffe, 1), 3);
        assert_eq!(minutes_since(5, 5), 0);
    }
}
