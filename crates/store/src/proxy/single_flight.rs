//! Single-flight backend requests: concurrent misses for one key share one
//! download (and concurrent existence checks one HEAD, `presence_cache.rs`),
//! and a caller that goes away leaves nothing behind.
//!
//! Why a guard: the caller is a request future, and a client that
//! disconnects drops it at any `.await`. Before, the map entry was removed
//! only after the download returned, so a dropped request left its entry
//! (and the key's slot in the map) forever. Now the entry is removed on
//! drop by whoever is last: the one that finished, or the last waiter to
//! give up. A download abandoned half-way is taken over by the next waiter
//! (tokio's `OnceCell` hands initialisation on when its future is dropped).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bazel_cache_digest::BlobKey;
use tokio::sync::OnceCell;

use crate::lock;

type Cell<T> = Arc<OnceCell<T>>;

/// One request per key at a time; `T` is what its callers share (whether
/// a download succeeded, a HEAD's answer).
pub(crate) struct SingleFlight<T = bool> {
    inflight: Mutex<HashMap<BlobKey, Cell<T>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            inflight: Mutex::default(),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `download` for `key` unless one is running, then shares its
    /// outcome.
    pub(crate) async fn run<F, Fut>(&self, key: BlobKey, download: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let cell = lock(&self.inflight).entry(key).or_default().clone();
        let guard = Leave {
            flights: self,
            key,
            cell,
        };
        guard.cell.get_or_init(download).await.clone()
    }

    /// Keys being downloaded.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inflight).len()
    }
}

/// Removes the key's entry when its last interested caller leaves.
struct Leave<'a, T> {
    flights: &'a SingleFlight<T>,
    key: BlobKey,
    cell: Cell<T>,
}

impl<T> Drop for Leave<'_, T> {
    fn drop(&mut self) {
        let mut map = lock(&self.flights.inflight);
        let Some(current) = map.get(&self.key) else {
            return;
        };
        if !Arc::ptr_eq(current, &self.cell) {
            return;
        }
        // Two references: the map's and ours. More means another caller is
        // still waiting on (or running) this download: it removes the entry.
        // A finished download is removed at once, so the next miss asks the
        // backend again rather than reusing a stale answer.
        if self.cell.initialized() || Arc::strong_count(&self.cell) <= 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bazel_cache_digest::Hash;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_download() {
        let flights = Arc::new(SingleFlight::<bool>::default());
        let key = BlobKey::cas(Hash::of(b"k"));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flights, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(key, || async {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        true
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_leaves_no_entry() {
        let flights = SingleFlight::<bool>::default();
        let key = BlobKey::cas(Hash::of(b"k"));
        let hung = tokio::time::timeout(
            Duration::from_millis(20),
            flights.run(key, std::future::pending::<bool>),
        )
        .await;
        assert!(hung.is_err(), "the download never ends; the caller gave up");
        assert_eq!(flights.len(), 0, "the abandoned entry was removed");
        // And the next caller downloads afresh.
        assert!(flights.run(key, || async { true }).await);
        assert_eq!(flights.len(), 0);
    }
}
