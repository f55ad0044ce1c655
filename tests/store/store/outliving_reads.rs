//! Reads that outlive their blob's eviction or replacement, and a stored
//! blob's file meeting the world: a shard directory removed by hand is
//! recreated, a re-upload of a stored CAS blob is verified, not rewritten.

use super::helpers::{
    KIB, MIB, assert_absent, assert_serves, assert_stats_match_disk, body, cas, config, get_bytes,
    open, put, put_ok, random_bytes, read_body, text_bytes,
};
use bazel_cache_digest::{BlobKey, Hash, Kind};
use bazel_cache_store::{Encoding, PutRequest, Store, StoreError};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_survive_eviction() {
    for (mode, accept_zstd) in [
        (Encoding::Identity, false),
        (Encoding::Zstd, false),
        (Encoding::Zstd, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open(&config(root, 4 * MIB, mode)).await;
        // Larger than a whole read (256 KiB), so the read streams from the
        // open file; a compressible first chunk, so zstd mode stores it
        // compressed.
        let mut x = text_bytes(256 * KIB as usize, 1);
        x.extend(random_bytes(2 * MIB as usize, 1));
        let kx = cas(&x);
        put_ok(&store, kx, &x).await;
        let x_path = store.blob_path(&kx).unwrap().unwrap();

        let blob = store.get(&kx, accept_zstd).await.unwrap().unwrap();
        let encoding = blob.encoding;
        let mut body = blob.body.into_reader();
        let mut head = vec![0u8; 1000];
        body.read_exact(&mut head).await.unwrap();

        // Fill the cache until X is evicted.
        for i in 0..4u64 {
            let filler = random_bytes(3 * MIB as usize / 2, 100 + i);
            put_ok(&store, cas(&filler), &filler).await;
        }
        store.flush().await.unwrap();
        assert!(
            store.blob_path(&kx).unwrap().is_none(),
            "{mode:?}: X should be evicted"
        );
        assert!(!x_path.exists(), "{mode:?}: X's file should be unlinked");
        assert!(store.stats().evicted_bytes > 0);
        assert_absent(&store, &kx).await;

        // The open read still delivers the whole blob.
        let mut rest = Vec::new();
        body.read_to_end(&mut rest).await.unwrap();
        head.extend(rest);
        let got = match encoding {
            Encoding::Identity => head,
            Encoding::Zstd => zstd::decode_all(&head[..]).unwrap(),
        };
        assert!(
            got == x,
            "{mode:?}/{accept_zstd}: read interrupted by eviction"
        );
        assert_stats_match_disk(&store, root);
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_survive_ac_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(&config(root, MIB, Encoding::Zstd)).await;
    let key = BlobKey::new(Kind::Ac, Hash::of(b"action"));
    let old = random_bytes(50_000, 1);
    let new = random_bytes(20_000, 2);
    put_ok(&store, key, &old).await;
    let blob = store.get(&key, true).await.unwrap().unwrap();
    assert_eq!(blob.size, old.len() as u64);
    put_ok(&store, key, &new).await;
    assert!(
        read_body(blob).await == old,
        "the old entry is read whole and unmixed"
    );
    assert_serves(&store, &key, &new).await;
    assert_eq!(store.stats().overwritten_bytes, old.len() as u64);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_shard_directory_is_recreated_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, Encoding::Identity);
    let data = b"lives in a shard that an operator deleted".to_vec();
    let key = cas(&data);
    let store = open(&cfg).await;
    store.close().await;
    let shard = dir.path().join("cas").join(&key.hash.to_hex()[..2]);
    std::fs::remove_dir(&shard).unwrap();

    let store = open(&cfg).await;
    let req = PutRequest {
        key,
        size: Some(data.len() as u64),
        encoding: Encoding::Identity,
        body: body(&data).into(),
    };
    store.put(req).await.unwrap();
    assert!(shard.is_dir());
    let blob = store.get(&key, false).await.unwrap().unwrap();
    let mut got = Vec::new();
    blob.body.into_reader().read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_uploading_a_stored_cas_blob_verifies_but_does_not_rewrite() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&config(dir.path(), 1 << 20, Encoding::Zstd)).await;
    let data = text_bytes(50_000, 9);
    let key = cas(&data);
    put_ok(&store, key, &data).await;
    let path = store.blob_path(&key).unwrap().unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let before = store.stats();

    put_ok(&store, key, &data).await;
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "file was rewritten"
    );
    assert_eq!(store.stats(), before);

    // A wrong body for a stored digest is still refused.
    let mut wrong = data.clone();
    wrong[0] ^= 1;
    let err = put(&store, key, &wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert_eq!(get_bytes(&store, &key).await, Some(data));
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    store.close().await;
}
