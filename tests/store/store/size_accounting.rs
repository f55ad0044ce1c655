//! Size accounting: the stats follow puts, AC overwrites and evictions, count
//! compressed bytes in zstd mode, and agree with the files on disk.

use super::helpers::{
    KIB, MIB, ac, assert_serves, assert_stats_match_disk, cas, config, open, put_ok, random_bytes,
    request, text_bytes,
};
use bazel_cache_store::{Encoding, Store, StoreStats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_track_puts_overwrites_and_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(&config(root, 64 * KIB, Encoding::Identity)).await;
    let expect = |entries, stored, overwritten, evicted| StoreStats {
        stored_bytes: stored,
        logical_bytes: stored,
        reserved_bytes: 0,
        max_bytes: 64 * KIB,
        entries,
        evicted_bytes: evicted,
        overwritten_bytes: overwritten,
    };
    assert_eq!(store.stats(), expect(0, 0, 0, 0));

    let action = ac("k1");
    put_ok(&store, action, &random_bytes(1000, 1)).await;
    let x = random_bytes(2000, 2);
    put_ok(&store, cas(&x), &x).await;
    let y = random_bytes(3000, 3);
    put_ok(&store, cas(&y), &y).await;
    assert_eq!(store.stats(), expect(3, 6000, 0, 0));

    // Overwriting an AC entry with a bigger and then a smaller result.
    let bigger = random_bytes(2500, 4);
    put_ok(&store, action, &bigger).await;
    assert_eq!(store.stats(), expect(3, 7500, 1000, 0));
    assert_serves(&store, &action, &bigger).await;
    let smaller = random_bytes(500, 5);
    store.put(request(action, &smaller, None)).await.unwrap();
    assert_eq!(store.stats(), expect(3, 5500, 3500, 0));
    assert_serves(&store, &action, &smaller).await;
    assert_stats_match_disk(&store, root);

    // Putting a CAS blob again verifies it and keeps the stored copy:
    // counted once, nothing overwritten.
    put_ok(&store, cas(&x), &x).await;
    assert_eq!(store.stats(), expect(3, 5500, 3500, 0));
    assert_serves(&store, &cas(&x), &x).await;
    assert_stats_match_disk(&store, root);

    // Fill past max_size: evicted bytes account for everything that left.
    let mut put_total = 5500u64;
    let mut last = Vec::new();
    for i in 0..30u64 {
        let data = random_bytes(4000 + i as usize * 10, 100 + i);
        put_ok(&store, cas(&data), &data).await;
        put_total += data.len() as u64;
        let s = store.stats();
        assert!(
            s.stored_bytes <= s.max_bytes,
            "stored {} > max {}",
            s.stored_bytes,
            s.max_bytes
        );
        assert_eq!(s.stored_bytes, s.logical_bytes);
        assert_eq!(
            s.stored_bytes + s.evicted_bytes,
            put_total,
            "every byte is stored or evicted"
        );
        last = data;
    }
    let s = store.stats();
    assert!(s.evicted_bytes > 0);
    assert!(s.entries < 33);
    assert_serves(&store, &cas(&last), &last).await;
    store.flush().await.unwrap();
    assert_stats_match_disk(&store, root);
    assert_eq!(store.lru_order().unwrap().len() as u64, s.entries);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_compressed_bytes_in_zstd_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(&config(root, 64 * MIB, Encoding::Zstd)).await;
    let mut logical = 0;
    for i in 0..5 {
        let data = text_bytes(50_000 + i * 1000, i as u64);
        put_ok(&store, cas(&data), &data).await;
        logical += data.len() as u64;
    }
    let action = random_bytes(777, 9);
    put_ok(&store, ac("a"), &action).await;
    logical += 777;
    let s = store.stats();
    assert_eq!(s.entries, 6);
    assert_eq!(s.logical_bytes, logical);
    assert!(
        s.stored_bytes < logical / 4,
        "stored {} logical {logical}",
        s.stored_bytes
    );
    assert_stats_match_disk(&store, root);
    store.close().await;
}
