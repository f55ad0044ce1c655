//! Rejected writes store nothing: digest and size mismatches,
//! `max_blob_size`, blobs larger than the cache, corrupt zstd bodies and
//! bodies that fail midway leave no entry, no file and the same stats. And
//! the empty blob, which always exists and takes neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::helpers::{
    ChunkedReader, KIB, MIB, MODES, ac, assert_absent, assert_serves, blob_files, body, cas,
    config, final_path, open, put, put_ok, random_bytes, read_body, request, text_bytes, tmp_files,
    zstd_encode,
};
use bazel_cache_digest::{BlobKey, EMPTY_SHA256, Hash};
use bazel_cache_store::disk::DiskStore;
use bazel_cache_store::{EmptyBlob, Encoding, PutRequest, Store, StoreError, StoreStats};

/// Asserts that a failed put left no trace: no entry, no file, same stats.
async fn assert_nothing_stored(store: &DiskStore, root: &Path, key: &BlobKey, before: StoreStats) {
    assert_absent(store, key).await;
    assert!(store.blob_path(key).unwrap().is_none());
    for enc in MODES {
        assert!(
            !final_path(root, key, enc).exists(),
            "{key}: file left behind"
        );
    }
    assert_eq!(
        tmp_files(root),
        Vec::<PathBuf>::new(),
        "temp files left behind"
    );
    assert_eq!(store.stats(), before, "stats changed by a failed put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_puts_store_nothing() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut cfg = config(root, 4 * MIB, mode);
        cfg.max_blob_size = 64 * KIB;
        let store = open(&cfg).await;
        // Something already stored, so "stats unchanged" means something.
        let keep = random_bytes(5000, 1);
        put_ok(&store, cas(&keep), &keep).await;
        let before = store.stats();

        // Content that does not hash to its name.
        let claimed = random_bytes(3000, 2);
        let sent = random_bytes(3000, 3);
        let key = cas(&claimed);
        let err = put(&store, key, &sent).await.unwrap_err();
        match &err {
            StoreError::DigestMismatch { expected, actual } => {
                assert_eq!(*expected, key.hash);
                assert_eq!(*actual, Hash::of(&sent));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(err.is_client_error());
        assert_nothing_stored(&store, root, &key, before).await;
        // Same without a declared size, streamed in odd chunks.
        let err = store
            .put(PutRequest {
                key,
                size: None,
                encoding: Encoding::Identity,
                body: Box::pin(ChunkedReader::new(sent.clone())).into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
        assert_nothing_stored(&store, root, &key, before).await;

        // Declared size disagrees with the body, both ways, CAS and AC.
        let data = random_bytes(1000, 4);
        for key in [cas(&data), ac("sized")] {
            let err = store
                .put(request(key, &data, Some(1001)))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::SizeMismatch {
                        expected: 1001,
                        actual: 1000
                    }
                ),
                "body too short: {err:?}"
            );
            assert!(err.is_client_error());
            assert_nothing_stored(&store, root, &key, before).await;
            let err = store.put(request(key, &data, Some(999))).await.unwrap_err();
            assert!(
                matches!(err, StoreError::SizeMismatch { expected: 999, actual } if actual > 999),
                "body too long: {err:?}"
            );
            assert_nothing_stored(&store, root, &key, before).await;
            let err = store.put(request(key, &data, Some(0))).await.unwrap_err();
            assert!(
                matches!(err, StoreError::SizeMismatch { expected: 0, .. }),
                "{err:?}"
            );
            assert_nothing_stored(&store, root, &key, before).await;
        }

        // max_blob_size: declared, and found out while streaming.
        let big = random_bytes(100 * KIB as usize, 5);
        let key = cas(&big);
        let err = put(&store, key, &big).await.unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { size, limit } if size == big.len() as u64 && limit == 64 * KIB),
            "{err:?}"
        );
        assert!(err.is_client_error());
        assert_nothing_stored(&store, root, &key, before).await;
        let err = store
            .put(PutRequest {
                key,
                size: None,
                encoding: Encoding::Identity,
                body: Box::pin(ChunkedReader::new(big.clone())).into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { limit, .. } if limit == 64 * KIB),
            "{err:?}"
        );
        assert_nothing_stored(&store, root, &key, before).await;
        // Also when the size limit is exceeded inside a compressed body.
        let err = store
            .put(PutRequest {
                key,
                size: None,
                encoding: Encoding::Zstd,
                body: body(&zstd_encode(&big)).into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
        assert_nothing_stored(&store, root, &key, before).await;
        // Exactly at the limit is fine.
        let at_limit = random_bytes(64 * KIB as usize, 6);
        store
            .put(request(cas(&at_limit), &at_limit, None))
            .await
            .unwrap();
        assert_serves(&store, &cas(&at_limit), &at_limit).await;
        let before = store.stats();

        // Corrupt and truncated zstd bodies.
        let good = text_bytes(50_000, 7);
        let key = cas(&good);
        let compressed = zstd_encode(&good);
        for bad in [
            b"definitely not a zstd stream".to_vec(),
            compressed[..compressed.len() / 2].to_vec(),
        ] {
            let err = store
                .put(PutRequest {
                    key,
                    size: Some(good.len() as u64),
                    encoding: Encoding::Zstd,
                    body: body(&bad).into(),
                })
                .await
                .unwrap_err();
            assert!(
                err.is_client_error(),
                "bad zstd must be the client's fault: {err:?}"
            );
            assert_nothing_stored(&store, root, &key, before).await;
        }

        // A body that fails mid-way (client disconnect).
        let mut reader = ChunkedReader::new(good.clone());
        reader.fail_after = Some(30_000);
        let err = store
            .put(PutRequest {
                key,
                size: None,
                encoding: Encoding::Identity,
                body: Box::pin(reader).into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Body(_)), "{err:?}");
        assert!(err.is_client_error());
        assert_nothing_stored(&store, root, &key, before).await;

        assert_serves(&store, &cas(&keep), &keep).await;
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_larger_than_the_cache_are_refused() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open(&config(root, 256 * KIB, mode)).await;
        let before = store.stats();
        // Compressible data: refused by logical size even if it would fit compressed.
        let big = text_bytes(300 * KIB as usize, 1);
        let key = cas(&big);
        let err = put(&store, key, &big).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InsufficientStorage { size, capacity }
                if size == big.len() as u64 && capacity == 256 * KIB),
            "{err:?}"
        );
        assert!(err.is_out_of_space());
        assert!(!err.is_client_error());
        assert_nothing_stored(&store, root, &key, before).await;
        let err = store
            .put(PutRequest {
                key,
                size: None,
                encoding: Encoding::Identity,
                body: Box::pin(ChunkedReader::new(big.clone())).into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InsufficientStorage { .. }),
            "{err:?}"
        );
        assert_nothing_stored(&store, root, &key, before).await;
        store.close().await;
    }
}

async fn check_empty_blob(store: &impl Store) {
    let empty = BlobKey::cas(EMPTY_SHA256);
    assert_eq!(store.contains(&empty).await.unwrap(), Some(0));
    for accept_zstd in [false, true] {
        let blob = store
            .get(&empty, accept_zstd)
            .await
            .unwrap()
            .expect("empty blob exists");
        assert_eq!(blob.size, 0);
        assert_eq!(blob.encoding, Encoding::Identity);
        assert!(read_body(blob).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blob_always_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The rule is a decorator above every store (bazel_cache_store::EmptyBlob).
    let store = EmptyBlob::new(
        open(&config(root, MIB, Encoding::Zstd)).await,
        Duration::from_secs(60),
    );
    let empty = BlobKey::cas(EMPTY_SHA256);
    check_empty_blob(&store).await;
    store.put(request(empty, b"", Some(0))).await.unwrap();
    store.put(request(empty, b"", None)).await.unwrap();
    store
        .put(PutRequest {
            key: empty,
            size: Some(0),
            encoding: Encoding::Zstd,
            body: body(&zstd_encode(b"")).into(),
        })
        .await
        .unwrap();
    let err = store.put(request(empty, b"x", None)).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
    check_empty_blob(&store).await;
    // The empty blob takes no entry and no file.
    assert_eq!(store.stats().entries, 0);
    assert_eq!(blob_files(root).0, Vec::<PathBuf>::new());
    assert!(tmp_files(root).is_empty());
    store.into_inner().close().await;
    let store = EmptyBlob::new(
        open(&config(root, MIB, Encoding::Zstd)).await,
        Duration::from_secs(60),
    );
    check_empty_blob(&store).await;
    store.into_inner().close().await;
}
