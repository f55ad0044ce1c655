//! Crash recovery: after an unclean stop the files are the truth (orphans
//! adopted, lost and corrupt files dropped, half-written temp files
//! removed), a lost index is rebuilt, and a recovery cut short by a close
//! runs again at the next start.

use super::helpers::{
    KIB, MIB, MODES, ac, assert_absent, assert_serves, assert_stats_match_disk, cas, config,
    final_path, open, put_ok, random_bytes, text_bytes, tmp_files,
};
use bazel_cache_digest::{BlobKey, DigestFunction, Hash};
use bazel_cache_store::{Encoding, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_crash_reconciles_files_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, 64 * MIB, Encoding::Identity);
    let store = open(&cfg).await;
    let mut blobs: Vec<(BlobKey, Vec<u8>)> = (0..6u64)
        .map(|i| random_bytes(1000 + 100 * i as usize, i))
        .map(|d| (cas(&d), d))
        .collect();
    blobs.push((ac("action"), random_bytes(321, 50)));
    for (k, d) in &blobs {
        put_ok(&store, *k, d).await;
    }
    // The index is durable up to here; the crash comes after.
    store.flush().await.unwrap();
    let (victim, _) = blobs.remove(0);
    let victim_path = store.blob_path(&victim).unwrap().unwrap();
    drop(store); // no close(): the index stays marked unclean, as after a crash

    // A write that was in progress.
    std::fs::write(root.join("tmp").join("999999-3"), random_bytes(777, 7)).unwrap();
    // A blob file lost.
    std::fs::remove_file(&victim_path).unwrap();
    // A blob renamed into place whose index update never became durable.
    let orphan = random_bytes(5000, 60);
    let orphan_key = cas(&orphan);
    std::fs::write(final_path(root, &orphan_key, Encoding::Identity), &orphan).unwrap();
    // A file whose content does not match its name (torn write).
    let corrupt_key = cas(b"what the name promises");
    let corrupt_path = final_path(root, &corrupt_key, Encoding::Identity);
    std::fs::write(&corrupt_path, b"something else entirely").unwrap();
    // A file that is not a blob at all is left alone.
    let stray = root.join("cas").join("00").join("README");
    std::fs::write(&stray, b"not ours").unwrap();

    let store = open(&cfg).await;
    // Start-up empties tmp before serving.
    assert!(
        tmp_files(root).is_empty(),
        "half-written temp file must be removed"
    );
    let report = store.recovered().await;
    assert!(report.ran, "{report:?}");
    assert_eq!(report.adopted, 1, "{report:?}");
    assert_eq!(report.corrupt_removed, 1, "{report:?}");
    assert_eq!(report.entries_dropped, 1, "{report:?}");
    assert_eq!(
        report.files_checked, 8,
        "6 + 1 AC + orphan + corrupt - lost: {report:?}"
    );

    assert_serves(&store, &orphan_key, &orphan).await;
    assert_absent(&store, &victim).await;
    assert!(store.blob_path(&victim).unwrap().is_none());
    assert_absent(&store, &corrupt_key).await;
    assert!(!corrupt_path.exists(), "corrupt file must be deleted");
    assert!(stray.exists());
    std::fs::remove_file(&stray).unwrap();
    blobs.push((orphan_key, orphan));
    for (k, d) in &blobs {
        assert_serves(&store, k, d).await;
    }
    let s = store.stats();
    let total: u64 = blobs.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(
        (s.entries, s.stored_bytes, s.logical_bytes),
        (blobs.len() as u64, total, total)
    );
    assert_stats_match_disk(&store, root);
    store.flush().await.unwrap();
    assert_eq!(store.lru_order().unwrap().len(), blobs.len());

    // A clean stop after recovery: the next start has nothing to do.
    store.close().await;
    let store = open(&cfg).await;
    assert!(!store.recovered().await.ran);
    assert_eq!(store.stats().entries, blobs.len() as u64);
    assert_eq!(store.stats().stored_bytes, total);
    store.close().await;
}

/// Crash right after puts whose index commits were not yet durable: the blob
/// files are the truth, every blob must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restores_blobs_whose_index_commit_was_not_durable() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cfg = config(root, 64 * MIB, mode);
        let store = open(&cfg).await;
        let blobs: Vec<(BlobKey, Vec<u8>)> = (0..20u64)
            .map(|i| text_bytes(2000 + 50 * i as usize, i))
            .map(|d| (cas(&d), d))
            .chain([(ac("x"), random_bytes(100, 1))])
            .collect();
        for (k, d) in &blobs {
            put_ok(&store, *k, d).await;
        }
        drop(store);

        let store = open(&cfg).await;
        let report = store.recovered().await;
        assert!(report.ran);
        assert_eq!(report.corrupt_removed, 0);
        assert_eq!(report.files_checked, blobs.len() as u64);
        for (k, d) in &blobs {
            assert_serves(&store, k, d).await;
        }
        let s = store.stats();
        let logical: u64 = blobs.iter().map(|(_, d)| d.len() as u64).sum();
        assert_eq!((s.entries, s.logical_bytes), (blobs.len() as u64, logical));
        assert_stats_match_disk(&store, root);
        store.close().await;
    }
}

/// A lost index over existing blob directories is rebuilt from the files,
/// BLAKE3's tree (`dir/blake3/…`) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_index_is_rebuilt_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, 64 * MIB, Encoding::Zstd);
    let store = open(&cfg).await;
    let blobs: Vec<(BlobKey, Vec<u8>)> = (0..10u64)
        .map(|i| text_bytes(3000 + 10 * i as usize, i))
        .map(|d| (cas(&d), d))
        .chain([(ac("y"), random_bytes(200, 2))])
        .chain((0..3u64).map(|i| {
            let d = text_bytes(5000 + i as usize, 100 + i);
            let key = BlobKey::cas(Hash::of_with(DigestFunction::Blake3, &d));
            (key, d)
        }))
        .chain([(
            BlobKey::ac(Hash::of_with(DigestFunction::Blake3, b"y")),
            random_bytes(300, 3),
        )])
        .collect();
    for (k, d) in &blobs {
        put_ok(&store, *k, d).await;
    }
    let stats = store.stats();
    store.close().await;
    assert!(root.join("blake3/cas").is_dir() && root.join("blake3/ac").is_dir());
    std::fs::remove_file(root.join("index.redb")).unwrap();

    let store = open(&cfg).await;
    let report = store.recovered().await;
    assert!(report.ran, "a missing index must trigger recovery");
    assert_eq!(report.adopted, blobs.len() as u64);
    for (k, d) in &blobs {
        assert_serves(&store, k, d).await;
    }
    let s = store.stats();
    assert_eq!(
        (s.entries, s.stored_bytes, s.logical_bytes),
        (stats.entries, stats.stored_bytes, stats.logical_bytes)
    );
    store.close().await;
}

/// Closing (or dropping) a store while recovery still runs: reopening at once
/// must work (nothing of the old store may still hold the index open), and
/// the unfinished recovery must run again — a close that marked the index
/// clean would leave the files not yet adopted unindexed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_recovery_reopens_and_recovers_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, 256 * MIB, Encoding::Identity);
    // Enough unindexed data that recovery takes a while to verify it.
    let mut blobs = Vec::new();
    for i in 0..40u64 {
        let data = random_bytes(512 * KIB as usize, i);
        let path = final_path(root, &cas(&data), Encoding::Identity);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &data).unwrap();
        blobs.push(data);
    }
    for close in [true, false, true] {
        let store = open(&cfg).await;
        if close {
            store.close().await;
        } else {
            drop(store);
        }
    }
    let store = open(&cfg).await;
    store.recovered().await;
    assert_eq!(
        store.stats().entries,
        40,
        "every file must be adopted in the end"
    );
    for data in blobs.iter().step_by(7) {
        assert_serves(&store, &cas(data), data).await;
    }
    assert_stats_match_disk(&store, root);
    store.close().await;
    let store = open(&cfg).await;
    assert!(
        !store.recovered().await.ran,
        "recovery finished: the next start is clean"
    );
    assert_eq!(store.stats().entries, 40);
    store.close().await;
}
