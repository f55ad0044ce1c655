//! Adopting a bazel-remote `dir` through the store's API (the server-level
//! checks are in tests/api/adopt.rs): adopted files take the LRU order of
//! their last use and are accounted as they are on disk; a clean restart
//! scans nothing again; an adoption cut short by a stop resumes at the
//! next start and loses nothing.

use std::time::Duration;

use super::helpers::{MIB, assert_serves, assert_stats_match_disk, cas, config, open};
use crate::support::bazel_remote::{BazelRemoteDir, day_plus};
use crate::support::{noise, text};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::disk::{AdoptionStatus, DiskStore};
use bazel_cache_store::{Encoding, Store};

/// Waits for the adoption to finish; its last status.
async fn adopted(store: &DiskStore) -> AdoptionStatus {
    for _ in 0..2400 {
        let status = store.adoption();
        if !status.running {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("adoption still running: {:?}", store.adoption());
}

/// `n` blobs, casblobs and plain files alternately, last used in an order
/// that is neither creation nor hash order; returned oldest first.
fn fixture(br: &mut BazelRemoteDir, n: u64) -> Vec<(BlobKey, Vec<u8>)> {
    let mut blobs: Vec<(u64, Vec<u8>)> = (0..n)
        .map(|i| {
            let data = if i % 2 == 0 {
                text(20_000 + i as usize, i)
            } else {
                noise(15_000 + i as usize, i)
            };
            ((i * 7919) % n, data)
        })
        .collect();
    for (used, data) in &blobs {
        if used % 2 == 0 {
            br.casblob(data, day_plus(*used));
        } else {
            br.plain(data, day_plus(*used));
        }
    }
    blobs.sort_by_key(|(used, _)| *used);
    blobs.into_iter().map(|(_, d)| (cas(&d), d)).collect()
}

/// A bazel-remote `dir` holding [`fixture`]`(n)`.
fn bazel_remote_dir(n: u64) -> (tempfile::TempDir, Vec<(BlobKey, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = fixture(&mut BazelRemoteDir::create(dir.path()), n);
    (dir, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_files_keep_the_lru_order_of_their_last_use() {
    let (dir, blobs) = bazel_remote_dir(24);
    let root = dir.path();
    let cfg = config(root, 64 * MIB, Encoding::Zstd);
    let store = open(&cfg).await;
    let status = adopted(&store).await;
    assert_eq!((status.found, status.adopted), (24, 24), "{status:?}");
    store.flush().await.unwrap();
    let order: Vec<BlobKey> = blobs.iter().map(|(k, _)| *k).collect();
    assert_eq!(store.lru_order().unwrap(), order, "oldest last use first");
    assert_stats_match_disk(&store, root);
    assert_eq!(store.stats().stored_bytes, status.adopted_bytes);
    for (key, data) in &blobs {
        assert_serves(&store, key, data).await;
    }
    store.close().await;

    // A clean restart: nothing left to adopt, everything indexed.
    let store = open(&cfg).await;
    let status = adopted(&store).await;
    assert_eq!(status, AdoptionStatus::default(), "trees gone: no adoption");
    assert!(!root.join("cas.v2").exists(), "emptied trees are removed");
    assert_eq!(store.stats().entries, 24);
    for (key, data) in &blobs {
        assert_serves(&store, key, data).await;
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adoption_cut_short_resumes_at_the_next_start() {
    let (dir, blobs) = bazel_remote_dir(40);
    let root = dir.path();
    let cfg = config(root, 64 * MIB, Encoding::Zstd);
    // Stopped at once: the adoption stops at its next file, wherever it
    // is (usually before its first, sometimes a few in); the checks below
    // hold for any split between the two runs.
    let store = open(&cfg).await;
    store.close().await;
    let left = left_in_cas_tree(root);

    let store = open(&cfg).await;
    let status = adopted(&store).await;
    assert_eq!(status.found, left, "{status:?}");
    assert_eq!(status.adopted, left, "{status:?}");
    assert_eq!(store.stats().entries, 40);
    assert_stats_match_disk(&store, root);
    for (key, data) in &blobs {
        assert_serves(&store, key, data).await;
    }
    store.close().await;
}

/// Files left in bazel-remote's CAS tree.
fn left_in_cas_tree(root: &std::path::Path) -> u64 {
    let Ok(shards) = std::fs::read_dir(root.join("cas.v2")) else {
        return 0;
    };
    shards
        .flatten()
        .map(|shard| std::fs::read_dir(shard.path()).unwrap().count() as u64)
        .sum()
}
