//! Integration tests of the disk store through its public API: round trips in
//! both CAS storage encodings, rejected writes, size accounting, LRU
//! eviction, restart, crash recovery, concurrency, large streamed blobs and
//! reads that outlive their blob's eviction.
//!
//! Most stores run with `fsync: false` (speed) and `touch_interval: 0` (every
//! read moves its entry to the LRU tail). Touches reach the index through the
//! store's writer thread asynchronously: tests call `flush()` before looking
//! at LRU order.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bazel_cache::digest::{BlobKey, EMPTY_SHA256, Hash, Kind};
use bazel_cache::store::disk::{DiskConfig, DiskStore};
use bazel_cache::store::{Blob, BlobReader, Encoding, PutRequest, Store, StoreError, StoreStats};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const MODES: [Encoding; 2] = [Encoding::Identity, Encoding::Zstd];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn config(dir: &Path, max_size: u64, cas_encoding: Encoding) -> DiskConfig {
    let mut cfg = DiskConfig::new(dir, max_size);
    cfg.cas_encoding = cas_encoding;
    cfg.fsync = false;
    cfg.touch_interval = Duration::ZERO;
    cfg
}

async fn open(cfg: &DiskConfig) -> DiskStore {
    DiskStore::open(cfg.clone()).await.expect("open disk store")
}

/// Deterministic incompressible bytes (xorshift64*).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic, highly compressible bytes (numbered text lines).
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("blob {seed} line {i:08}: the quick brown fox\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn cas(data: &[u8]) -> BlobKey {
    BlobKey::cas(Hash::of(data))
}

fn ac(name: &str) -> BlobKey {
    BlobKey::ac(Hash::of(name.as_bytes()))
}

fn body(data: &[u8]) -> BlobReader {
    Box::pin(io::Cursor::new(data.to_vec()))
}

fn request(key: BlobKey, data: &[u8], size: Option<u64>) -> PutRequest {
    PutRequest {
        key,
        size,
        encoding: Encoding::Identity,
        body: body(data),
    }
}

/// Puts `data` with its size declared.
async fn put(store: &DiskStore, key: BlobKey, data: &[u8]) -> Result<(), StoreError> {
    store.put(request(key, data, Some(data.len() as u64))).await
}

async fn put_ok(store: &DiskStore, key: BlobKey, data: &[u8]) {
    put(store, key, data)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Reads a blob's whole body, checking it against `body_len`.
async fn read_body(blob: Blob) -> Vec<u8> {
    let mut body = blob.body;
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.expect("read blob body");
    if let Some(n) = blob.body_len {
        assert_eq!(
            out.len() as u64,
            n,
            "body_len must equal the bytes the body yields"
        );
    }
    out
}

/// The identity bytes of a blob, or None if missing.
async fn get_bytes(store: &DiskStore, key: &BlobKey) -> Option<Vec<u8>> {
    let blob = store.get(key, false).await.expect("get")?;
    assert_eq!(
        blob.encoding,
        Encoding::Identity,
        "{key}: accept_zstd=false must yield identity"
    );
    let size = blob.size;
    let bytes = read_body(blob).await;
    assert_eq!(
        bytes.len() as u64,
        size,
        "{key}: Blob::size must be the logical size"
    );
    Some(bytes)
}

async fn assert_serves(store: &DiskStore, key: &BlobKey, data: &[u8]) {
    assert_eq!(
        store.contains(key).await.unwrap(),
        Some(data.len() as u64),
        "contains {key}"
    );
    let got = get_bytes(store, key)
        .await
        .unwrap_or_else(|| panic!("{key} missing"));
    assert!(
        got == data,
        "{key}: content differs ({} bytes vs {} expected)",
        got.len(),
        data.len()
    );
}

async fn assert_absent(store: &DiskStore, key: &BlobKey) {
    assert_eq!(
        store.contains(key).await.unwrap(),
        None,
        "{key} should be absent"
    );
    assert!(
        store.get(key, true).await.unwrap().is_none(),
        "{key} should be absent"
    );
}

/// Every regular file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn tmp_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("tmp"))
}

/// Blob files (AC and CAS trees), with their total length.
fn blob_files(root: &Path) -> (Vec<PathBuf>, u64) {
    let mut files = files_under(&root.join("ac"));
    files.extend(files_under(&root.join("cas")));
    let total = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    (files, total)
}

/// Stats must agree with the files actually on disk.
fn assert_stats_match_disk(store: &DiskStore, root: &Path) {
    let stats = store.stats();
    let (files, total) = blob_files(root);
    assert_eq!(
        stats.entries,
        files.len() as u64,
        "entries vs blob files: {files:?}"
    );
    assert_eq!(stats.stored_bytes, total, "stored_bytes vs bytes on disk");
}

/// Final path of a blob as the layout names it (for files written by hand).
fn final_path(root: &Path, key: &BlobKey, encoding: Encoding) -> PathBuf {
    let hex = key.hash.to_hex();
    let name = match encoding {
        Encoding::Identity => hex.clone(),
        Encoding::Zstd => format!("{hex}.zst"),
    };
    root.join(key.kind.as_str()).join(&hex[..2]).join(name)
}

/// A body that hands out `data` in uneven chunks, optionally failing with an
/// I/O error after `fail_after` bytes (a client that disconnects).
struct ChunkedReader {
    data: Vec<u8>,
    pos: usize,
    step: usize,
    fail_after: Option<usize>,
}

impl ChunkedReader {
    fn new(data: Vec<u8>) -> Self {
        ChunkedReader {
            data,
            pos: 0,
            step: 0,
            fail_after: None,
        }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        const SIZES: [usize; 5] = [1, 4093, 65_536, 7, 200_001];
        let this = &mut *self;
        if let Some(limit) = this.fail_after
            && this.pos >= limit
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            )));
        }
        let mut n = SIZES[this.step % SIZES.len()].min(buf.remaining());
        this.step += 1;
        n = n.min(this.data.len() - this.pos);
        if let Some(limit) = this.fail_after {
            n = n.min(limit - this.pos);
        }
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A body streamed through a pipe by another task, `chunk` bytes at a time,
/// the way a network body arrives.
fn piped(data: Arc<Vec<u8>>, chunk: usize) -> BlobReader {
    let (mut tx, rx) = tokio::io::duplex(chunk.max(1024));
    tokio::spawn(async move {
        for part in data.chunks(chunk) {
            if tx.write_all(part).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = tx.shutdown().await;
    });
    Box::pin(rx)
}

fn zstd_encode(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd encode")
}

// ---------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------

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
            body: body(&zstd_encode(&zblob)),
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
            body: Box::pin(ChunkedReader::new(frames)),
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
            body: body(&zstd_encode(&action)),
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
            body: body(&zstd_encode(&zblob)),
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

// ---------------------------------------------------------------------------
// 2. Rejected writes store nothing
// ---------------------------------------------------------------------------

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
                body: Box::pin(ChunkedReader::new(sent.clone())),
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
                body: Box::pin(ChunkedReader::new(big.clone())),
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
                body: body(&zstd_encode(&big)),
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
                    body: body(&bad),
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
                body: Box::pin(reader),
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
                body: Box::pin(ChunkedReader::new(big.clone())),
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

async fn check_empty_blob(store: &DiskStore) {
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
    let store = open(&config(root, MIB, Encoding::Zstd)).await;
    let empty = BlobKey::cas(EMPTY_SHA256);
    check_empty_blob(&store).await;
    store.put(request(empty, b"", Some(0))).await.unwrap();
    store.put(request(empty, b"", None)).await.unwrap();
    store
        .put(PutRequest {
            key: empty,
            size: Some(0),
            encoding: Encoding::Zstd,
            body: body(&zstd_encode(b"")),
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
    store.close().await;
    let store = open(&config(root, MIB, Encoding::Zstd)).await;
    check_empty_blob(&store).await;
    store.close().await;
}

// ---------------------------------------------------------------------------
// 3. Size accounting
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 4. LRU eviction
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 5. Restart
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 6. Crash recovery
// ---------------------------------------------------------------------------

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

/// A lost index over existing blob directories is rebuilt from the files.
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
        .collect();
    for (k, d) in &blobs {
        put_ok(&store, *k, d).await;
    }
    let stats = store.stats();
    store.close().await;
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

// ---------------------------------------------------------------------------
// 7. Concurrency
// ---------------------------------------------------------------------------

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
                        body: piped(data, 8192 + i * 1000),
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
                        body: piped(data, 5000 + i),
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
        assert_eq!(
            s.overwritten_bytes,
            15 * same_stored,
            "{mode:?}: 15 of 16 writes replaced an equal copy"
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
                        body: Box::pin(ChunkedReader::new(d.clone())),
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
                    body: Box::pin(rx),
                })
                .await
        })
    };
    tx.write_all(&random_bytes(100_000, 1)).await.unwrap();
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

// ---------------------------------------------------------------------------
// 8. Large streamed blobs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_blob_round_trips() {
    let data = Arc::new({
        // Half incompressible, half text: exercises both ends of zstd.
        let mut d = random_bytes(10 * MIB as usize, 1);
        d.extend(text_bytes(10 * MIB as usize, 2));
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
                body: piped(data.clone(), 100_000),
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
                body: piped(compressed, 65_536),
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

// ---------------------------------------------------------------------------
// 9. Reads that outlive eviction or replacement
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_survive_eviction() {
    for (mode, accept_zstd) in [
        (Encoding::Identity, false),
        (Encoding::Zstd, false),
        (Encoding::Zstd, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = open(&config(root, 64 * KIB, mode)).await;
        let x = random_bytes(20 * KIB as usize, 1);
        let kx = cas(&x);
        put_ok(&store, kx, &x).await;
        let x_path = store.blob_path(&kx).unwrap().unwrap();

        let blob = store.get(&kx, accept_zstd).await.unwrap().unwrap();
        let encoding = blob.encoding;
        let mut body = blob.body;
        let mut head = vec![0u8; 1000];
        body.read_exact(&mut head).await.unwrap();

        // Fill the cache until X is evicted.
        for i in 0..4u64 {
            let filler = random_bytes(20 * KIB as usize, 100 + i);
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
        body: body(&data),
    };
    store.put(req).await.unwrap();
    assert!(shard.is_dir());
    let blob = store.get(&key, false).await.unwrap().unwrap();
    let mut got = Vec::new();
    Box::into_pin(Box::new(blob.body))
        .read_to_end(&mut got)
        .await
        .unwrap();
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

// ---------------------------------------------------------------------------
// Limits: bytes in flight (max_size / max_size_hard_limit), write slots
// ---------------------------------------------------------------------------

/// A put whose body arrives only when the test writes it: the write holds
/// its reservation and its slot until then.
struct Stalled {
    tx: tokio::io::DuplexStream,
    data: Vec<u8>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Stalled {
    /// Starts a put of `data` and sends nothing yet.
    async fn start(store: &Arc<DiskStore>, data: Vec<u8>) -> Stalled {
        let (tx, rx) = tokio::io::duplex(64 * 1024);
        let store = store.clone();
        let req = PutRequest {
            key: cas(&data),
            size: Some(data.len() as u64),
            encoding: Encoding::Identity,
            body: Box::pin(rx),
        };
        let task = tokio::spawn(async move { store.put(req).await });
        // Let it take its slot and reservation.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Stalled { tx, data, task }
    }

    async fn finish(mut self) -> Result<(), StoreError> {
        self.tx.write_all(&self.data).await.unwrap();
        drop(self.tx);
        self.task.await.unwrap()
    }
}

#[tokio::test]
async fn bytes_in_flight_never_exceed_the_hard_limit() {
    const KIB: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1024 * KIB, Encoding::Identity);
    cfg.hard_limit_bytes = Some(1536 * KIB);
    let store = Arc::new(open(&cfg).await);
    // Fill the cache: stored bytes don't count against the limit, eviction
    // makes room for them.
    for seed in 0..3 {
        put_ok(
            &store,
            cas(&random_bytes(300 * 1024, seed)),
            &random_bytes(300 * 1024, seed),
        )
        .await;
    }
    let a = Stalled::start(&store, random_bytes(700 * 1024, 10)).await;
    let b = Stalled::start(&store, random_bytes(700 * 1024, 11)).await;
    assert_eq!(store.stats().reserved_bytes, 1400 * KIB);
    // Eviction ran at the reservation, not at the next commit: the disk
    // holds at most max_size plus what is arriving.
    let s = store.stats();
    assert!(s.stored_bytes + s.reserved_bytes <= 1536 * KIB, "{s:?}");
    let c = random_bytes(700 * 1024, 12);
    let err = put(&store, cas(&c), &c).await.unwrap_err();
    assert!(
        matches!(err, StoreError::InsufficientStorage { .. }) && err.is_out_of_space(),
        "{err}"
    );
    assert_eq!(store.contains(&cas(&c)).await.unwrap(), None);
    a.finish().await.unwrap();
    put_ok(&store, cas(&c), &c).await;
    b.finish().await.unwrap();
    let s = store.stats();
    assert_eq!(s.reserved_bytes, 0);
    assert!(s.stored_bytes <= 1024 * KIB, "{s:?}");
}

#[tokio::test]
async fn without_a_hard_limit_in_flight_bytes_are_bounded_by_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1024 * 1024, Encoding::Identity);
    let store = Arc::new(open(&cfg).await);
    let a = Stalled::start(&store, random_bytes(700 * 1024, 20)).await;
    let b = random_bytes(700 * 1024, 21);
    let err = put(&store, cas(&b), &b).await.unwrap_err();
    assert!(err.is_out_of_space(), "{err}");
    a.finish().await.unwrap();
    put_ok(&store, cas(&b), &b).await;
}

#[tokio::test]
async fn writes_beyond_the_slots_wait_then_are_refused_as_busy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64 << 20, Encoding::Identity);
    cfg.max_concurrent_writes = 2;
    cfg.write_slot_wait = Duration::from_millis(300);
    let store = Arc::new(open(&cfg).await);
    let a = Stalled::start(&store, random_bytes(1000, 30)).await;
    let b = Stalled::start(&store, random_bytes(1000, 31)).await;
    let c = random_bytes(1000, 32);
    let started = Instant::now();
    let err = put(&store, cas(&c), &c).await.unwrap_err();
    assert!(matches!(err, StoreError::Busy { writes: 2 }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A waiting write gets the slot a finishing one frees.
    let waiting = {
        let store = store.clone();
        let c = c.clone();
        tokio::spawn(async move { put(&store, cas(&c), &c).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    a.finish().await.unwrap();
    waiting.await.unwrap().unwrap();
    b.finish().await.unwrap();
    assert_eq!(store.contains(&cas(&c)).await.unwrap(), Some(1000));
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
