//! Round trips in both CAS storage encodings: AC and CAS, with and without
//! a declared size, bodies sent plain or zstd-compressed, blobs served
//! compressed or not; large blobs streamed through a pipe; small zstd-stored
//! blobs (decompressed in one call) and large ones (streamed), and a stored
//! frame of the wrong size refused.

use std::sync::Arc;

use super::helpers::{
    ChunkedReader, KIB, MIB, MODES, ac, assert_absent, assert_serves, assert_stats_match_disk,
    body, cas, config, final_path, get_bytes, open, piped, put_ok, random_bytes, read_body,
    request, text_bytes, tmp_files, zstd_encode,
};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::{Encoding, PutRequest, Store, StoreError};

async fn round_trip(mode: Encoding) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(&config(root, 64 * MIB, mode)).await;

    let blob = text_bytes(200 * KIB as usize, 1);
    let blob_key = cas(&blob);
    let action = text_bytes(10 * KIB as usize, 2);
    let action_key = ac("action-1");

    assert_absent(&store, &blob_key).await;
    assert_absent(&store, &action_key).await;
    put_ok(&store, blob_key, &blob).await;
    // AC entries with and without a declared size.
    store.put(request(action_key, &action, None)).await.unwrap();

    assert_serves(&store, &blob_key, &blob).await;
    assert_serves(&store, &action_key, &action).await;
    // AC and CAS are separate namespaces.
    assert_absent(&store, &BlobKey::ac(blob_key.hash)).await;
    assert_absent(&store, &BlobKey::cas(action_key.hash)).await;

    // CAS blob with accept_zstd = true.
    let cas_path = store.blob_path(&blob_key).unwrap().expect("indexed");
    let on_disk = std::fs::read(&cas_path).unwrap();
    let got = store.get(&blob_key, true).await.unwrap().unwrap();
    assert_eq!(got.size, blob.len() as u64);
    match mode {
        Encoding::Identity => {
            assert_eq!(got.encoding, Encoding::Identity);
            assert!(read_body(got).await == blob);
            assert!(on_disk == blob, "identity mode stores the bytes as sent");
            assert!(!cas_path.to_string_lossy().ends_with(".zst"));
        }
        Encoding::Zstd => {
            assert_eq!(got.encoding, Encoding::Zstd);
            assert_eq!(got.body_len, Some(on_disk.len() as u64));
            let compressed = read_body(got).await;
            assert!(
                compressed.len() < blob.len() / 4,
                "text compresses well: {}",
                compressed.len()
            );
            assert!(zstd::decode_all(&compressed[..]).unwrap() == blob);
            assert!(cas_path.to_string_lossy().ends_with(".zst"));
            assert!(on_disk.len() < blob.len(), "file on disk is compressed");
            assert!(zstd::decode_all(&on_disk[..]).unwrap() == blob);
        }
    }

    // AC entries are kept as sent, whatever the CAS mode, and never served
    // compressed.
    let ac_path = store.blob_path(&action_key).unwrap().unwrap();
    assert!(std::fs::read(&ac_path).unwrap() == action);
    let got = store.get(&action_key, true).await.unwrap().unwrap();
    assert_eq!(got.encoding, Encoding::Identity);
    assert!(read_body(got).await == action);

    let stats = store.stats();
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.logical_bytes, (blob.len() + action.len()) as u64);
    assert_eq!(stats.stored_bytes, (on_disk.len() + action.len()) as u64);
    assert_eq!(stats.reserved_bytes, 0);
    assert_eq!(stats.max_bytes, 64 * MIB);
    assert_stats_match_disk(&store, root);

    // Zstd-encoded request bodies are decoded, verified and stored by the mode.
    let zblob = text_bytes(100 * KIB as usize, 3);
    let zkey = cas(&zblob);
    store
        .put(PutRequest {
            key: zkey,
            size: Some(zblob.len() as u64),
            encoding: Encoding::Zstd,
            body: body(&zstd_encode(&zblob)).into(),
        })
        .await
        .unwrap();
    assert_serves(&store, &zkey, &zblob).await;
    // Several concatenated frames are one stream, delivered in odd chunks.
    let multi = text_bytes(300 * KIB as usize, 4);
    let mut frames = zstd_encode(&multi[..100_000]);
    frames.extend(zstd_encode(&multi[100_000..]));
    store
        .put(PutRequest {
            key: cas(&multi),
            size: None,
            encoding: Encoding::Zstd,
            body: Box::pin(ChunkedReader::new(frames)).into(),
        })
        .await
        .unwrap();
    assert_serves(&store, &cas(&multi), &multi).await;
    // An AC entry sent compressed is stored decoded.
    let zaction_key = ac("action-zstd");
    store
        .put(PutRequest {
            key: zaction_key,
            size: Some(action.len() as u64),
            encoding: Encoding::Zstd,
            body: body(&zstd_encode(&action)).into(),
        })
        .await
        .unwrap();
    assert_serves(&store, &zaction_key, &action).await;
    assert!(std::fs::read(store.blob_path(&zaction_key).unwrap().unwrap()).unwrap() == action);
    // A compressed body is verified against the digest of its decoded bytes.
    let err = store
        .put(PutRequest {
            key: cas(b"something else"),
            size: None,
            encoding: Encoding::Zstd,
            body: body(&zstd_encode(&zblob)).into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { actual, .. } if actual == zkey.hash),
        "{err:?}"
    );

    assert_eq!(store.stats().entries, 5);
    assert_stats_match_disk(&store, root);
    assert!(tmp_files(root).is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_identity_mode() {
    round_trip(Encoding::Identity).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_zstd_mode() {
    round_trip(Encoding::Zstd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_blob_round_trips() {
    let data = Arc::new({
        // Half text, half incompressible: exercises both ends of zstd (a
        // blob is stored compressed when its first chunk compresses).
        let mut d = text_bytes(10 * MIB as usize, 2);
        d.extend(random_bytes(10 * MIB as usize, 1));
        d
    });
    let key = cas(&data);
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open(&config(root, 64 * MIB, mode)).await;
        store
            .put(PutRequest {
                key,
                size: Some(data.len() as u64),
                encoding: Encoding::Identity,
                body: piped(data.clone(), 100_000).into(),
            })
            .await
            .unwrap();
        assert_serves(&store, &key, &data).await;
        let stored = std::fs::metadata(store.blob_path(&key).unwrap().unwrap())
            .unwrap()
            .len();
        match mode {
            Encoding::Identity => assert_eq!(stored, data.len() as u64),
            Encoding::Zstd => {
                assert!(stored < data.len() as u64 * 3 / 4, "{stored}");
                let blob = store.get(&key, true).await.unwrap().unwrap();
                assert_eq!(blob.encoding, Encoding::Zstd);
                assert_eq!(blob.body_len, Some(stored));
                let raw = read_body(blob).await;
                assert!(zstd::decode_all(&raw[..]).unwrap() == *data);
            }
        }
        // Same blob again, undeclared size, sent zstd-compressed.
        let compressed = Arc::new(zstd::encode_all(&data[..], 1).unwrap());
        store
            .put(PutRequest {
                key,
                size: None,
                encoding: Encoding::Zstd,
                body: piped(compressed, 65_536).into(),
            })
            .await
            .unwrap();
        assert_serves(&store, &key, &data).await;
        let s = store.stats();
        assert_eq!(
            (s.entries, s.logical_bytes, s.stored_bytes),
            (1, data.len() as u64, stored)
        );
        assert!(tmp_files(root).is_empty());
        store.close().await;
    }
}

/// In zstd storage, a blob whose first chunk does not compress (an
/// archive, an image: most large build outputs) is stored as sent: no CPU
/// spent compressing it, nothing to decompress on a plain read, and the
/// bytes on disk are the blob's. Readers that accept zstd get it plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompressible_blobs_are_stored_uncompressed_in_zstd_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&config(dir.path(), 64 * MIB, Encoding::Zstd)).await;
    for data in [random_bytes(4096, 5), random_bytes(3 * MIB as usize, 6)] {
        let key = cas(&data);
        put_ok(&store, key, &data).await;
        let path = store.blob_path(&key).unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data, "{}", path.display());
        let blob = store.get(&key, true).await.unwrap().unwrap();
        assert_eq!(blob.encoding, Encoding::Identity);
        assert_eq!(read_body(blob).await, data);
        assert_eq!(store.stats().stored_bytes, store.stats().logical_bytes);
    }
    // A compressible one is still compressed.
    let text = text_bytes(MIB as usize, 7);
    put_ok(&store, cas(&text), &text).await;
    let blob = store.get(&cas(&text), true).await.unwrap().unwrap();
    assert_eq!(blob.encoding, Encoding::Zstd);
    store.close().await;
}

/// Small zstd-stored blobs are decompressed in one call (the fast path of
/// `get`); large ones stream. Both give the bytes back, and a stored file
/// that no longer decompresses to the indexed size is an error, never
/// wrong bytes.
#[tokio::test]
async fn small_and_large_zstd_blobs_read_back_and_a_wrong_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&config(dir.path(), 64 << 20, Encoding::Zstd)).await;
    let small = text_bytes(20_000, 1);
    let large = text_bytes(300_000, 2);
    for data in [&small, &large] {
        put_ok(&store, cas(data), data).await;
        assert_eq!(
            get_bytes(&store, &cas(data)).await.as_deref(),
            Some(&data[..])
        );
    }
    // Replace the small blob's file with a valid frame of other content.
    let path = final_path(dir.path(), &cas(&small), Encoding::Zstd);
    let other = zstd::bulk::compress(&text_bytes(19_000, 3), 1).unwrap();
    std::fs::write(&path, other).unwrap();
    let blob = store.get(&cas(&small), false).await;
    assert!(blob.is_err(), "a frame of the wrong size was served");
}
