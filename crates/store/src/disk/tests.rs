//! Write slots are held for work on received bytes only, and the
//! progress guard's cuts are counted.

use super::write::CHUNK;
use super::*;
use crate::CutReason;
use bazel_cache_digest::Hash;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

async fn store(dir: &std::path::Path, tune: impl FnOnce(&mut DiskConfig)) -> Arc<DiskStore> {
    let mut cfg = DiskConfig::new(dir, 64 << 20);
    cfg.fsync = false;
    tune(&mut cfg);
    Arc::new(DiskStore::open(cfg).await.unwrap())
}

fn put(data: &[u8], body: BlobReader) -> PutRequest {
    PutRequest {
        key: BlobKey::cas(Hash::of(data)),
        size: Some(data.len() as u64),
        encoding: Encoding::Identity,
        body,
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn a_stalled_body_holds_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), |c| {
        c.max_concurrent_writes = 1;
        c.write_slot_wait = Duration::from_millis(500);
    })
    .await;
    // Bigger than a chunk: part of it has been written, under the slot,
    // before the body stalls.
    let big = bytes(CHUNK + CHUNK / 2, 1);
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let stalled = tokio::spawn({
        let (store, big) = (store.clone(), big.clone());
        async move { store.put(put(&big, Box::pin(rx))).await }
    });
    tx.write_all(&big[..CHUNK + 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The only slot is free: other writes complete while it stalls.
    for seed in 2..5 {
        let small = bytes(1000, seed);
        let body = Box::pin(io::Cursor::new(small.clone()));
        store.put(put(&small, body)).await.unwrap();
        assert_eq!(
            store
                .contains(&BlobKey::cas(Hash::of(&small)))
                .await
                .unwrap(),
            Some(1000)
        );
    }
    assert!(!stalled.is_finished());
    tx.write_all(&big[CHUNK + 1000..]).await.unwrap();
    drop(tx);
    stalled.await.unwrap().unwrap();
    assert_eq!(
        store.contains(&BlobKey::cas(Hash::of(&big))).await.unwrap(),
        Some(big.len() as u64)
    );
}

#[tokio::test]
async fn a_write_that_cannot_get_a_slot_in_time_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), |c| {
        c.max_concurrent_writes = 1;
        c.write_slot_wait = Duration::from_millis(200);
    })
    .await;
    // The slot is taken by disk work (here: by hand).
    let held = store.write_slots.acquire().await.unwrap();
    let data = bytes(1000, 9);
    let err = store
        .put(put(&data, Box::pin(io::Cursor::new(data.clone()))))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { writes: 1 }), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    // Waiters get the slot when it frees.
    let waiting = tokio::spawn({
        let (store, data) = (store.clone(), data.clone());
        async move {
            store
                .put(put(&data, Box::pin(io::Cursor::new(data.clone()))))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    drop(held);
    waiting.await.unwrap().unwrap();
}

#[tokio::test]
async fn cut_bodies_are_counted_by_reason_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), |c| {
        c.body_stall_timeout = Duration::from_millis(300);
        c.body_min_rate = 1000;
        c.body_rate_window = Duration::from_millis(400);
    })
    .await;
    let data = bytes(10_000, 7);
    // A byte every 50 ms: 20 bytes/s, far below 1000.
    let (mut tx, rx) = tokio::io::duplex(1024);
    let dribble = tokio::spawn({
        let data = data.clone();
        async move {
            for b in data {
                if tx.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let err = store.put(put(&data, Box::pin(rx))).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Body(e) if crate::cut_reason(e) == Some(CutReason::TooSlow)),
        "{err}"
    );
    dribble.abort();
    // Silent: the stall limit.
    let (_tx, rx) = tokio::io::duplex(1024);
    let err = store.put(put(&data, Box::pin(rx))).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Body(e) if crate::cut_reason(e) == Some(CutReason::Stalled)),
        "{err}"
    );
    assert_eq!(store.uploads_cut().get(CutReason::TooSlow), 1);
    assert_eq!(store.uploads_cut().get(CutReason::Stalled), 1);
    assert_eq!(
        store
            .contains(&BlobKey::cas(Hash::of(&data)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.stats().reserved_bytes, 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
