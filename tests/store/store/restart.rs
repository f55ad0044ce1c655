//! Clean restarts: entries, stats and LRU order survive, a change of CAS
//! storage mode keeps old blobs readable, stale temp files go at start.

use super::helpers::{
    KIB, MIB, ac, assert_serves, assert_stats_match_disk, cas, config, get_bytes, open, put_ok,
    random_bytes, text_bytes, tmp_files,
};
use bazel_cache_digest::Kind;
use bazel_cache_store::{Encoding, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_keeps_everything_with_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cfg = config(root, 256 * KIB, Encoding::Zstd);
    cfg.fsync = true;
    let store = open(&cfg).await;
    let mut kept = Vec::new();
    for i in 0..12u64 {
        let data = if i % 2 == 0 {
            text_bytes(40_000, i)
        } else {
            random_bytes(50_000, i)
        };
        put_ok(&store, cas(&data), &data).await;
        kept.push((cas(&data), data));
    }
    let action = random_bytes(900, 99);
    put_ok(&store, ac("a"), &random_bytes(100, 98)).await;
    put_ok(&store, ac("a"), &action).await;
    kept.push((ac("a"), action));
    // Read the oldest blob still present: it moves to the LRU tail.
    store.flush().await.unwrap();
    let oldest = store.lru_order().unwrap()[0];
    assert!(get_bytes(&store, &oldest).await.is_some());
    store.flush().await.unwrap();
    let stats = store.stats();
    assert!(
        stats.evicted_bytes > 0,
        "the cache should have evicted something"
    );
    let lru = store.lru_order().unwrap();
    kept.retain(|(k, _)| lru.contains(k));
    assert_eq!(kept.len() as u64, stats.entries);
    store.close().await;

    let store = open(&cfg).await;
    assert!(
        !store.recovered().await.ran,
        "a clean stop must not trigger recovery"
    );
    let after = store.stats();
    assert_eq!(
        (
            after.entries,
            after.stored_bytes,
            after.logical_bytes,
            after.max_bytes
        ),
        (
            stats.entries,
            stats.stored_bytes,
            stats.logical_bytes,
            stats.max_bytes
        )
    );
    // evicted/overwritten count since start.
    assert_eq!(
        (
            after.evicted_bytes,
            after.overwritten_bytes,
            after.reserved_bytes
        ),
        (0, 0, 0)
    );
    assert_eq!(
        store.lru_order().unwrap(),
        lru,
        "LRU order survives a restart"
    );
    for (k, data) in &kept {
        assert_serves(&store, k, data).await;
    }
    assert_stats_match_disk(&store, root);
    store.close().await;

    // Switching the CAS storage mode keeps old blobs readable; new ones use
    // the new mode.
    cfg.cas_encoding = Encoding::Identity;
    let store = open(&cfg).await;
    assert!(!store.recovered().await.ran);
    for (k, data) in &kept {
        assert_serves(&store, k, data).await;
    }
    let fresh = text_bytes(10_000, 1234);
    put_ok(&store, cas(&fresh), &fresh).await;
    assert!(std::fs::read(store.blob_path(&cas(&fresh)).unwrap().unwrap()).unwrap() == fresh);
    // Re-putting a blob stored compressed keeps the stored .zst file: an
    // identical CAS blob is verified, not rewritten.
    let (k0, d0) = kept
        .iter()
        .rev()
        .find(|(k, _)| k.kind == Kind::Cas)
        .unwrap()
        .clone();
    let old_path = store.blob_path(&k0).unwrap().unwrap();
    put_ok(&store, k0, &d0).await;
    let new_path = store.blob_path(&k0).unwrap().unwrap();
    assert_eq!(old_path, new_path);
    assert!(old_path.exists());
    assert_serves(&store, &k0, &d0).await;
    store.flush().await.unwrap();
    assert_stats_match_disk(&store, root);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_temp_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, MIB, Encoding::Identity);
    open(&cfg).await.close().await;
    std::fs::write(root.join("tmp").join("4242-7"), b"half a blob").unwrap();
    let store = open(&cfg).await;
    assert!(tmp_files(root).is_empty());
    assert!(!store.recovered().await.ran);
    store.close().await;
}
