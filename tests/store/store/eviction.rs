//! LRU eviction: least recently used first (reads and `contains` count as
//! uses), a put never evicts for its own reservation, and `touch_interval`
//! limits how often a read reorders.

use std::time::Duration;

use super::helpers::{
    KIB, MIB, MODES, assert_absent, assert_serves, assert_stats_match_disk, cas, config, get_bytes,
    open, put_ok, random_bytes,
};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::disk::DiskStore;
use bazel_cache_store::{Encoding, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_evicts_least_recently_used_first() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open(&config(root, 10 * KIB, mode)).await;
        // Incompressible, so sizes on disk are ~3 KiB in both modes.
        let blob = |seed| random_bytes(3 * KIB as usize, seed);
        let (a, b, c, d, e) = (blob(1), blob(2), blob(3), blob(4), blob(5));
        let (ka, kb, kc, kd, ke) = (cas(&a), cas(&b), cas(&c), cas(&d), cas(&e));
        let check_bound = |store: &DiskStore| {
            let s = store.stats();
            assert!(
                s.stored_bytes <= 10 * KIB,
                "{mode:?}: stored {} > max",
                s.stored_bytes
            );
        };

        for (k, data) in [(ka, &a), (kb, &b), (kc, &c)] {
            put_ok(&store, k, data).await;
            check_bound(&store);
        }
        store.flush().await.unwrap();
        assert_eq!(
            store.lru_order().unwrap(),
            vec![ka, kb, kc],
            "{mode:?}: insertion order"
        );
        assert_eq!(store.stats().evicted_bytes, 0);

        // Reading A makes it the most recently used.
        assert!(get_bytes(&store, &ka).await.unwrap() == a);
        store.flush().await.unwrap();
        assert_eq!(
            store.lru_order().unwrap(),
            vec![kb, kc, ka],
            "{mode:?}: after reading A"
        );

        let b_path = store.blob_path(&kb).unwrap().unwrap();
        let b_stored = std::fs::metadata(&b_path).unwrap().len();
        assert!(b_path.exists());
        put_ok(&store, kd, &d).await;
        check_bound(&store);
        store.flush().await.unwrap();
        assert_eq!(
            store.lru_order().unwrap(),
            vec![kc, ka, kd],
            "{mode:?}: B must be evicted, not A or C"
        );
        assert!(store.blob_path(&kb).unwrap().is_none());
        assert!(!b_path.exists(), "{mode:?}: evicted file must be deleted");
        let s = store.stats();
        assert_eq!(s.evicted_bytes, b_stored);
        assert_eq!(s.entries, 3);
        assert_stats_match_disk(&store, root);

        // contains() counts as a use too: touch C, then E evicts A.
        let a_path = store.blob_path(&ka).unwrap().unwrap();
        assert_eq!(store.contains(&kc).await.unwrap(), Some(c.len() as u64));
        store.flush().await.unwrap();
        put_ok(&store, ke, &e).await;
        check_bound(&store);
        store.flush().await.unwrap();
        assert_eq!(
            store.lru_order().unwrap(),
            vec![kd, kc, ke],
            "{mode:?}: after touching C"
        );
        assert!(!a_path.exists());
        assert!(store.stats().evicted_bytes > b_stored);

        assert_absent(&store, &kb).await;
        assert_absent(&store, &ka).await;
        for (k, data) in [(kc, &c), (kd, &d), (ke, &e)] {
            assert_serves(&store, &k, data).await;
        }
        assert_stats_match_disk(&store, root);
        store.close().await;
    }
}

/// A write's reservation must not be counted again once its blob is stored:
/// a blob over half of max_size (declared size) must survive its own put, and
/// must not push out blobs that fit beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_does_not_evict_for_its_own_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(&config(root, 10 * KIB, Encoding::Identity)).await;
    let small = random_bytes(3 * KIB as usize, 1);
    put_ok(&store, cas(&small), &small).await;
    let big = random_bytes(6 * KIB as usize, 2);
    put_ok(&store, cas(&big), &big).await;
    store.flush().await.unwrap();
    assert_serves(&store, &cas(&big), &big).await;
    assert_serves(&store, &cas(&small), &small).await;
    let s = store.stats();
    assert_eq!(
        (s.entries, s.stored_bytes, s.evicted_bytes, s.reserved_bytes),
        (2, 9 * KIB, 0, 0)
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_interval_limits_lru_updates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cfg = config(root, MIB, Encoding::Identity);
    cfg.touch_interval = Duration::from_secs(3600);
    let store = open(&cfg).await;
    let keys: Vec<BlobKey> = (0..3).map(|i| cas(&random_bytes(1000, i))).collect();
    for i in 0..3 {
        let d = random_bytes(1000, i);
        put_ok(&store, cas(&d), &d).await;
    }
    assert!(get_bytes(&store, &keys[0]).await.is_some());
    store.flush().await.unwrap();
    // Used less than touch_interval ago: the read does not reorder.
    assert_eq!(store.lru_order().unwrap(), keys);
    store.close().await;
}

/// Evicted files are removed by the reaper threads after the writes that
/// evicted them are acknowledged (reaper.rs). A blob written again right
/// after its eviction, while its old file may still wait for removal,
/// must keep its new file: the writer claims the path first. (Whether a
/// removal is still waiting depends on timing here; reaper.rs tests the
/// claim itself step by step.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_written_again_right_after_its_eviction_keeps_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(&config(root, 7 * KIB, Encoding::Identity)).await;
    let blob = |seed| random_bytes(3 * KIB as usize, seed);
    let (a, b) = (blob(1), blob(2));
    let (ka, kb) = (cas(&a), cas(&b));
    // Two fit. Each round's new blob evicts one of them, and writing A and
    // B again evicts again: mostly A or B right after their eviction (reads
    // reorder the LRU as their touches land, so not always).
    put_ok(&store, ka, &a).await;
    put_ok(&store, kb, &b).await;
    let evictions = store.evictions();
    for round in 0..200u64 {
        let filler = blob(1000 + round);
        put_ok(&store, cas(&filler), &filler).await;
        put_ok(&store, ka, &a).await;
        put_ok(&store, kb, &b).await;
        assert_serves(&store, &ka, &a).await;
        assert_serves(&store, &kb, &b).await;
    }
    assert!(
        store.evictions() >= evictions + 300,
        "too few evictions to test anything: {}",
        store.evictions() - evictions
    );
    store.flush().await.unwrap();
    assert_serves(&store, &ka, &a).await;
    assert_serves(&store, &kb, &b).await;
    assert_stats_match_disk(&store, root);
    store.close().await;
}

/// A read finished before a put starts is a use that put's eviction sees:
/// the writer evicts for in-flight bytes only once it holds every touch
/// sent before them (writer.rs). Without that, a blob read just before a
/// write could be the one evicted while older blobs stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_read_just_before_a_put_is_not_evicted_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Four blobs fit; each put of a fifth evicts the least recently used.
    let store = open(&config(root, 13 * KIB, Encoding::Identity)).await;
    let blob = |seed| random_bytes(3 * KIB as usize, seed);
    // Least recently used first.
    let mut order = std::collections::VecDeque::new();
    for seed in 0..4 {
        let data = blob(seed);
        put_ok(&store, cas(&data), &data).await;
        order.push_back((cas(&data), data));
    }
    store.flush().await.unwrap();
    for round in 0..300u64 {
        // Read the oldest two, oldest last: it becomes the most recent.
        let (k1, d1) = order.remove(1).unwrap();
        let (k0, d0) = order.pop_front().unwrap();
        assert_eq!(get_bytes(&store, &k1).await.as_deref(), Some(&d1[..]));
        assert_eq!(get_bytes(&store, &k0).await.as_deref(), Some(&d0[..]));
        order.push_back((k1, d1));
        order.push_back((k0, d0));
        let data = blob(100 + round);
        put_ok(&store, cas(&data), &data).await;
        let (gone, _) = order.pop_front().unwrap();
        order.push_back((cas(&data), data));
        for (k, _) in &order {
            assert!(
                store.blob_path(k).unwrap().is_some(),
                "round {round}: {k} was evicted out of LRU order"
            );
        }
        assert!(store.blob_path(&gone).unwrap().is_none(), "round {round}");
    }
    store.flush().await.unwrap();
    assert_stats_match_disk(&store, root);
    store.close().await;
}
