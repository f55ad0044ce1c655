//! FindMissingBlobs answers from the in-memory presence map
//! (crates/store/src/disk/presence.rs): it must agree with the index after
//! puts, overwrites, evictions and a restart, and a digest with the right
//! hash but a wrong size is missing.

use std::time::{Duration, Instant};

use super::helpers::{KIB, MIB, cas, config, open, put_ok, random_bytes};
use bazel_cache_digest::Digest;
use bazel_cache_store::disk::DiskStore;
use bazel_cache_store::{Encoding, Store};

fn digest(data: &[u8]) -> Digest {
    Digest {
        hash: cas(data).hash,
        size: data.len() as u64,
    }
}

async fn loaded(store: &DiskStore) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.presence_loaded() {
        assert!(Instant::now() < deadline, "presence map never loaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_agrees_with_the_index_through_evictions_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), MIB, Encoding::Zstd);
    let store = open(&cfg).await;
    loaded(&store).await;
    let a = random_bytes(300 * KIB as usize, 1);
    let b = random_bytes(300 * KIB as usize, 2);
    let absent = random_bytes(10, 3);
    put_ok(&store, cas(&a), &a).await;
    put_ok(&store, cas(&b), &b).await;
    let wrong_size = Digest {
        size: a.len() as u64 + 1,
        ..digest(&a)
    };
    let asked = [digest(&a), digest(&absent), wrong_size, digest(&b)];
    assert_eq!(
        store.find_missing(&asked).await.unwrap(),
        vec![digest(&absent), wrong_size]
    );

    // Fill past max_size: A (least recently used) is evicted and reported
    // missing from then on.
    for seed in 10..13 {
        let filler = random_bytes(300 * KIB as usize, seed);
        put_ok(&store, cas(&filler), &filler).await;
    }
    store.flush().await.unwrap();
    assert!(
        store.blob_path(&cas(&a)).unwrap().is_none(),
        "A not evicted"
    );
    assert_eq!(
        store.find_missing(&[digest(&a)]).await.unwrap(),
        vec![digest(&a)]
    );
    let stored_before: Vec<_> = [&a, &b]
        .iter()
        .filter(|d| store.blob_path(&cas(d)).unwrap().is_some())
        .map(|d| digest(d))
        .collect();
    store.close().await;

    // After a restart the map is filled from the index, then answers alike.
    let store = open(&cfg).await;
    loaded(&store).await;
    let missing = store.find_missing(&asked).await.unwrap();
    for d in &asked {
        assert_eq!(
            !missing.contains(d),
            stored_before.contains(d),
            "{d:?} after restart"
        );
    }
    store.close().await;
}
