//! Recently refused credentials, so a client that repeats a wrong password
//! (a typo in a build's `.netrc`, a stale Secret) is answered from memory
//! instead of by another slow hash verify each time.
//!
//! Keys are SHA-256 digests of the whole `Authorization` header. Entries
//! expire after a fixed time and the map is bounded: the oldest entry makes
//! way for a new one, so a flood of distinct wrong passwords costs memory
//! only up to the bound (and such a flood is throttled by the verify
//! permits instead, see `super::HtpasswdSource`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub(super) type Key = [u8; 32];

pub(super) struct RecentFailures {
    /// When each key failed.
    at: HashMap<Key, Instant>,
    /// Keys in the order they were added (oldest first), to expire and
    /// evict without scanning. May hold stale pairs for keys re-added
    /// since; those are skipped when they reach the front.
    order: VecDeque<(Key, Instant)>,
    max: usize,
    ttl: Duration,
}

impl RecentFailures {
    pub(super) fn new(max: usize, ttl: Duration) -> RecentFailures {
        RecentFailures {
            at: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
            ttl,
        }
    }

    /// True when `key` failed less than the time-to-live before `now`.
    pub(super) fn contains(&self, key: &Key, now: Instant) -> bool {
        self.at
            .get(key)
            .is_some_and(|&at| now.saturating_duration_since(at) < self.ttl)
    }

    /// Remembers that `key` failed at `now`, dropping expired entries and,
    /// when still full, the oldest ones.
    pub(super) fn insert(&mut self, key: Key, now: Instant) {
        while let Some(&(_, at)) = self.order.front() {
            if now.saturating_duration_since(at) < self.ttl && self.order.len() < self.max {
                break;
            }
            self.pop_oldest();
        }
        self.at.insert(key, now);
        self.order.push_back((key, now));
    }

    fn pop_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front()
            && self.at.get(&key) == Some(&at)
        {
            self.at.remove(&key);
        }
    }

    /// Entries held, expired ones included until an insert drops them.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        k
    }

    #[test]
    fn entries_expire_after_the_time_to_live() {
        let t0 = Instant::now();
        let mut f = RecentFailures::new(16, Duration::from_secs(60));
        f.insert(key(1), t0);
        assert!(f.contains(&key(1), t0));
        assert!(f.contains(&key(1), t0 + Duration::from_secs(59)));
        assert!(!f.contains(&key(1), t0 + Duration::from_secs(60)));
        assert!(!f.contains(&key(2), t0));
        // The next insert drops the expired entry.
        f.insert(key(2), t0 + Duration::from_secs(61));
        assert_eq!(f.len(), 1);
        assert_eq!(f.order.len(), 1);
    }

    #[test]
    fn the_oldest_entries_make_way_at_the_bound() {
        let t0 = Instant::now();
        let mut f = RecentFailures::new(100, Duration::from_secs(60));
        for n in 0..1000 {
            f.insert(key(n), t0 + Duration::from_millis(u64::from(n)));
            assert!(f.len() <= 100 && f.order.len() <= 100);
        }
        let now = t0 + Duration::from_secs(1);
        assert!(!f.contains(&key(0), now));
        assert!(!f.contains(&key(899), now));
        assert!((900..1000).all(|n| f.contains(&key(n), now)));
    }

    #[test]
    fn a_key_added_again_lives_from_its_last_failure() {
        let t0 = Instant::now();
        let mut f = RecentFailures::new(4, Duration::from_secs(60));
        // Two verifies of the same header that ran at once both report.
        f.insert(key(1), t0);
        let later = t0 + Duration::from_secs(1);
        f.insert(key(1), later);
        assert_eq!(f.order.len(), 2);
        // Its first pair leaving the queue must not remove the second.
        for n in 2..5 {
            f.insert(key(n), later);
        }
        assert!(f.contains(&key(1), t0 + Duration::from_secs(60)));
        assert!(!f.contains(&key(1), later + Duration::from_secs(60)));
    }
}
