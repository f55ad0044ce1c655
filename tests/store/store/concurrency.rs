//! Concurrency: many writers of one blob, writers and readers of distinct
//! blobs at once, and a put abandoned midway leaving no temp file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::helpers::{
    ChunkedReader, KIB, MIB, MODES, assert_serves, assert_stats_match_disk, cas, config, open,
    piped, random_bytes, read_body, text_bytes, tmp_files,
};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::{Encoding, PutRequest, Store};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_the_same_blob() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = Arc::new(open(&config(root, 64 * MIB, mode)).await);
        let same = Arc::new(text_bytes(300 * KIB as usize, 1));
        let others: Vec<Arc<Vec<u8>>> = (0..4)
            .map(|i| Arc::new(random_bytes(100 * KIB as usize, 10 + i)))
            .collect();

        let mut tasks = Vec::new();
        for i in 0..16usize {
            let store = store.clone();
            let data = same.clone();
            tasks.push(tokio::spawn(async move {
                let size = (i % 2 == 0).then_some(data.len() as u64);
                let key = cas(&data);
                store
                    .put(PutRequest {
                        key,
                        size,
                        encoding: Encoding::Identity,
                        body: piped(data, 8192 + i * 1000).into(),
                    })
                    .await
            }));
        }
        for (i, data) in others.iter().enumerate() {
            let store = store.clone();
            let data = data.clone();
            tasks.push(tokio::spawn(async move {
                let key = cas(&data);
                store
                    .put(PutRequest {
                        key,
                        size: None,
                        encoding: Encoding::Identity,
                        body: piped(data, 5000 + i).into(),
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().expect("concurrent put");
        }

        assert_serves(&store, &cas(&same), &same).await;
        for d in &others {
            assert_serves(&store, &cas(d), d).await;
        }
        assert!(
            tmp_files(root).is_empty(),
            "{mode:?}: temp files left: {:?}",
            tmp_files(root)
        );
        let s = store.stats();
        assert_eq!(s.entries, 5, "{mode:?}: the shared blob counts once");
        let same_stored = std::fs::metadata(store.blob_path(&cas(&same)).unwrap().unwrap())
            .unwrap()
            .len();
        let others_logical: u64 = others.iter().map(|d| d.len() as u64).sum();
        assert_eq!(s.logical_bytes, same.len() as u64 + others_logical);
        // A write that began before the first copy was committed replaces
        // an equal copy when it lands; one that began after only verifies
        // its bytes. Which is which depends on scheduling: only whole
        // copies, at most 15, can have been replaced.
        assert!(
            s.overwritten_bytes % same_stored == 0 && s.overwritten_bytes <= 15 * same_stored,
            "{mode:?}: {} bytes overwritten, not whole copies of {same_stored} (at most 15)",
            s.overwritten_bytes
        );
        assert_eq!(s.reserved_bytes, 0);
        store.flush().await.unwrap();
        assert_stats_match_disk(&store, root);
        assert_eq!(store.lru_order().unwrap().len(), 5);
        Arc::into_inner(store).unwrap().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_of_distinct_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(open(&config(root, 256 * MIB, Encoding::Zstd)).await);
    let blobs: Arc<Vec<(BlobKey, Vec<u8>)>> = Arc::new(
        (0..120u64)
            .map(|i| {
                let len = 1 + (i as usize * 7919) % (48 * KIB as usize);
                if i % 3 == 0 {
                    random_bytes(len, i)
                } else {
                    text_bytes(len, i)
                }
            })
            .map(|d| (cas(&d), d))
            .collect(),
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..6usize {
        let (store, blobs) = (store.clone(), blobs.clone());
        writers.push(tokio::spawn(async move {
            for (i, (k, d)) in blobs.iter().enumerate().filter(|(i, _)| i % 6 == w) {
                let size = (i % 4 != 0).then_some(d.len() as u64);
                store
                    .put(PutRequest {
                        key: *k,
                        size,
                        encoding: Encoding::Identity,
                        body: Box::pin(ChunkedReader::new(d.clone())).into(),
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..4usize {
        let (store, blobs, done) = (store.clone(), blobs.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut hits = 0u64;
            let mut i = r * 31;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                i = (i + 17) % blobs.len();
                let (k, d) = &blobs[i];
                let accept_zstd = i % 2 == 0;
                if let Some(blob) = store.get(k, accept_zstd).await.unwrap() {
                    assert_eq!(blob.size, d.len() as u64);
                    let encoding = blob.encoding;
                    let bytes = read_body(blob).await;
                    let bytes = match encoding {
                        Encoding::Identity => bytes,
                        Encoding::Zstd => zstd::decode_all(&bytes[..]).unwrap(),
                    };
                    assert!(bytes == *d, "a reader saw a partial or wrong blob");
                    hits += 1;
                } else if let Some(size) = store.contains(k).await.unwrap() {
                    assert_eq!(size, d.len() as u64);
                }
                tokio::task::yield_now().await;
            }
            hits
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut hits = 0;
    for r in readers {
        hits += r.await.unwrap();
    }
    assert!(hits > 0, "readers should have found some blobs");
    for (k, d) in blobs.iter() {
        assert_serves(&store, k, d).await;
    }
    let s = store.stats();
    assert_eq!(s.entries, blobs.len() as u64);
    assert_eq!(
        s.logical_bytes,
        blobs.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
    );
    assert!(tmp_files(root).is_empty());
    store.flush().await.unwrap();
    assert_stats_match_disk(&store, root);
    Arc::into_inner(store).unwrap().close().await;
}

/// A put abandoned mid-body (its future dropped: client gone, timeout) must
/// not leave its temp file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_put_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Arc::new(open(&config(root, 64 * MIB, Encoding::Zstd)).await);
    let (mut tx, rx) = tokio::io::duplex(4096);
    let task = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put(PutRequest {
                    key: cas(b"never finished"),
                    size: None,
                    encoding: Encoding::Identity,
                    body: Box::pin(rx).into(),
                })
                .await
        })
    };
    // More than one receive buffer (256 KiB): the temp file is created
    // when the first full buffer goes to disk.
    tx.write_all(&random_bytes(300_000, 1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmp_files(root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the put never created its temp file"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    drop(tx);
    assert_eq!(
        tmp_files(root),
        Vec::<PathBuf>::new(),
        "abandoned temp file"
    );
    assert_eq!(store.stats().reserved_bytes, 0);
    Arc::into_inner(store).unwrap().close().await;
}
