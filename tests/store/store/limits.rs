//! Limits on writes: bytes in flight (`max_size`, `max_size_hard_limit`),
//! held by puts whose bodies the test releases by hand, and write slots
//! (`max_concurrent_writes`), which such puts do not hold while they wait
//! (a slot taken by disk work and `Busy` are unit tests of the disk store).

use std::sync::Arc;
use std::time::Duration;

use super::helpers::{cas, config, open, put, put_ok, random_bytes};
use bazel_cache_store::disk::DiskStore;
use bazel_cache_store::{Encoding, PutRequest, Store, StoreError};
use tokio::io::AsyncWriteExt;

/// A put whose body arrives only when the test writes it: the write holds
/// its reservation (but no write slot) until then.
struct Stalled {
    tx: tokio::io::DuplexStream,
    data: Vec<u8>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Stalled {
    /// Starts a put of `data` and sends nothing yet.
    async fn start(store: &Arc<DiskStore>, data: Vec<u8>) -> Stalled {
        let (tx, rx) = tokio::io::duplex(64 * 1024);
        let store = store.clone();
        let req = PutRequest {
            key: cas(&data),
            size: Some(data.len() as u64),
            encoding: Encoding::Identity,
            body: Box::pin(rx).into(),
        };
        let task = tokio::spawn(async move { store.put(req).await });
        // Let it take its slot and reservation.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Stalled { tx, data, task }
    }

    async fn finish(mut self) -> Result<(), StoreError> {
        self.tx.write_all(&self.data).await.unwrap();
        drop(self.tx);
        self.task.await.unwrap()
    }
}

#[tokio::test]
async fn bytes_in_flight_never_exceed_the_hard_limit() {
    const KIB: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1024 * KIB, Encoding::Identity);
    cfg.hard_limit_bytes = Some(1536 * KIB);
    let store = Arc::new(open(&cfg).await);
    // Fill the cache: stored bytes don't count against the limit, eviction
    // makes room for them.
    for seed in 0..3 {
        put_ok(
            &store,
            cas(&random_bytes(300 * 1024, seed)),
            &random_bytes(300 * 1024, seed),
        )
        .await;
    }
    let a = Stalled::start(&store, random_bytes(700 * 1024, 10)).await;
    let b = Stalled::start(&store, random_bytes(700 * 1024, 11)).await;
    assert_eq!(store.stats().reserved_bytes, 1400 * KIB);
    // Eviction ran at the reservation, not at the next commit: the disk
    // holds at most max_size plus what is arriving.
    let s = store.stats();
    assert!(s.stored_bytes + s.reserved_bytes <= 1536 * KIB, "{s:?}");
    let c = random_bytes(700 * 1024, 12);
    let err = put(&store, cas(&c), &c).await.unwrap_err();
    assert!(
        matches!(err, StoreError::InsufficientStorage { .. }) && err.is_out_of_space(),
        "{err}"
    );
    assert_eq!(store.contains(&cas(&c)).await.unwrap(), None);
    a.finish().await.unwrap();
    put_ok(&store, cas(&c), &c).await;
    b.finish().await.unwrap();
    let s = store.stats();
    assert_eq!(s.reserved_bytes, 0);
    assert!(s.stored_bytes <= 1024 * KIB, "{s:?}");
}

#[tokio::test]
async fn without_a_hard_limit_in_flight_bytes_are_bounded_by_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1024 * 1024, Encoding::Identity);
    let store = Arc::new(open(&cfg).await);
    let a = Stalled::start(&store, random_bytes(700 * 1024, 20)).await;
    let b = random_bytes(700 * 1024, 21);
    let err = put(&store, cas(&b), &b).await.unwrap_err();
    assert!(err.is_out_of_space(), "{err}");
    a.finish().await.unwrap();
    put_ok(&store, cas(&b), &b).await;
}

/// Write slots are for work on received bytes: writes waiting on their
/// bodies, more of them than there are slots, hold none, and others
/// complete meanwhile. (When a slot was taken before the body arrived, this
/// test asserted the opposite: a third write waited, then was refused.)
#[tokio::test]
async fn writes_waiting_on_their_bodies_hold_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64 << 20, Encoding::Identity);
    cfg.max_concurrent_writes = 2;
    cfg.write_slot_wait = Duration::from_millis(300);
    let store = Arc::new(open(&cfg).await);
    let a = Stalled::start(&store, random_bytes(1000, 30)).await;
    let b = Stalled::start(&store, random_bytes(1000, 31)).await;
    let c = Stalled::start(&store, random_bytes(1000, 33)).await;
    let d = random_bytes(1000, 32);
    put_ok(&store, cas(&d), &d).await;
    assert_eq!(store.contains(&cas(&d)).await.unwrap(), Some(1000));
    for stalled in [a, b, c] {
        stalled.finish().await.unwrap();
    }
    assert_eq!(store.stats().entries, 4);
}
