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
        body: body.into(),
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
    assert_nothing_left(&store, dir.path(), &data).await;
}

/// A refused write left no entry, no reservation and no temp file.
async fn assert_nothing_left(store: &DiskStore, dir: &std::path::Path, data: &[u8]) {
    let key = BlobKey::cas(Hash::of(data));
    assert_eq!(store.contains(&key).await.unwrap(), None);
    assert_eq!(store.stats().reserved_bytes, 0);
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
}

/// Bodies of chunks ([`PutBody::Chunks`]): the HTTP and gRPC front ends
/// hand their bytes over this way, and the write path hashes and writes
/// them where they are, except small ones, which it copies.
mod chunked_bodies {
    use super::*;
    use crate::read_all;
    use bytes::Bytes;

    /// `data` cut at `sizes` (the rest in one last chunk).
    fn cut(data: &[u8], sizes: &[usize]) -> Vec<io::Result<Bytes>> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in sizes {
            let end = (at + n).min(data.len());
            out.push(Ok(Bytes::copy_from_slice(&data[at..end])));
            at = end;
        }
        out.push(Ok(Bytes::copy_from_slice(&data[at..])));
        out
    }

    fn put_chunks(data: &[u8], chunks: Vec<io::Result<Bytes>>) -> PutRequest {
        PutRequest {
            key: BlobKey::cas(Hash::of(data)),
            size: Some(data.len() as u64),
            encoding: Encoding::Identity,
            body: PutBody::chunks(futures_util::stream::iter(chunks)),
        }
    }

    /// Small chunks (copied), large ones (kept), empty ones, and chunks
    /// across the hand-off size, in one blob of several hand-offs.
    const SIZES: &[usize] = &[1, 40_000, 0, 3, 3, 70_000, 31_999, 300_000, 5, 0, 200_000];

    #[tokio::test]
    async fn chunks_are_stored_as_sent_plain_or_compressed() {
        let noise = super::super::sink::tests::noise(900_000);
        let text = b"cc_library(name = \"lib\", srcs = [\"lib.cc\"])\n".repeat(20_000);
        for encoding in [Encoding::Identity, Encoding::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path(), |c| c.cas_encoding = encoding).await;
            for data in [&noise[..], &text[..]] {
                store.put(put_chunks(data, cut(data, SIZES))).await.unwrap();
                let key = BlobKey::cas(Hash::of(data));
                let back = read_all(store.as_ref(), &key, u64::MAX).await.unwrap();
                assert!(back.as_deref() == Some(data), "{encoding:?}");
            }
            let stats = store.stats();
            let logical = (noise.len() + text.len()) as u64;
            assert_eq!(stats.logical_bytes, logical);
            if encoding == Encoding::Zstd {
                // The text compressed (its chunks joined into frames), the
                // noise did not.
                assert!(stats.stored_bytes < noise.len() as u64 + text.len() as u64 / 4);
            } else {
                assert_eq!(stats.stored_bytes, logical);
            }
        }
    }

    #[tokio::test]
    async fn a_chunk_with_wrong_bytes_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), |_| {}).await;
        let data = bytes(600_000, 3);
        let mut chunks = cut(&data, SIZES);
        // Corrupt a kept (large) chunk after the first hand-off.
        let mut bad = chunks[7].as_ref().unwrap().to_vec();
        bad[1000] ^= 1;
        chunks[7] = Ok(Bytes::from(bad));
        let err = store.put(put_chunks(&data, chunks)).await.unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        // A body error mid-stream: the same.
        let mut chunks = cut(&data, SIZES);
        chunks[5] = Err(io::Error::other("connection reset"));
        let err = store.put(put_chunks(&data, chunks)).await.unwrap_err();
        assert!(matches!(err, StoreError::Body(_)), "{err}");
        assert_nothing_left(&store, dir.path(), &data).await;
    }

    #[tokio::test]
    async fn empty_chunks_do_not_hold_off_the_stall_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), |c| {
            c.body_stall_timeout = Duration::from_millis(300);
        })
        .await;
        let data = bytes(10_000, 5);
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let feeder = tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
            // Then nothing but empty chunks, more often than the limit.
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Ok(Bytes::new())).await.is_err() {
                    return;
                }
            }
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let req = PutRequest {
            key: BlobKey::cas(Hash::of(&data)),
            size: Some(data.len() as u64),
            encoding: Encoding::Identity,
            body: PutBody::chunks(body),
        };
        let err = tokio::time::timeout(Duration::from_secs(10), store.put(req))
            .await
            .expect("cut by the stall limit")
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Body(e) if crate::cut_reason(e) == Some(CutReason::Stalled)),
            "{err}"
        );
        feeder.abort();
    }

    #[test]
    fn small_chunks_are_copied_and_large_ones_kept() {
        let mut work = write::Work::for_test();
        for _ in 0..1000 {
            work.take(Bytes::from_static(b"x"));
        }
        work.take(Bytes::from(vec![7u8; 40_000]));
        work.take(Bytes::from_static(b"yz"));
        // The thousand bytes became one part of their own, ahead of the
        // kept chunk; the last two bytes wait in the buffer.
        assert_eq!(work.parts.len(), 2);
        assert_eq!(&work.parts[0][..], &[b'x'; 1000][..]);
        assert_eq!(work.parts[1].len(), 40_000);
        assert_eq!(work.buf, b"yz");
        assert_eq!(work.pending(), 41_002);
    }
}
