//! What the disk store tests share: the store configuration they use
//! (`fsync` off, `touch_interval` zero), deterministic blob contents, puts
//! and reads, assertions that compare the store with the files on disk, and
//! request bodies that arrive in uneven chunks, fail midway or come through a
//! pipe.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bazel_cache_digest::{BlobKey, Hash};
use bazel_cache_store::disk::{DiskConfig, DiskStore};
use bazel_cache_store::{Blob, BlobReader, Encoding, PutRequest, Store, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
pub(super) const MODES: [Encoding; 2] = [Encoding::Identity, Encoding::Zstd];

pub(super) fn config(dir: &Path, max_size: u64, cas_encoding: Encoding) -> DiskConfig {
    let mut cfg = DiskConfig::new(dir, max_size);
    cfg.cas_encoding = cas_encoding;
    cfg.fsync = false;
    cfg.touch_interval = Duration::ZERO;
    cfg
}

pub(super) async fn open(cfg: &DiskConfig) -> DiskStore {
    DiskStore::open(cfg.clone()).await.expect("open disk store")
}

/// Deterministic incompressible bytes (xorshift64*).
pub(super) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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
pub(super) fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("blob {seed} line {i:08}: the quick brown fox\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

pub(super) fn cas(data: &[u8]) -> BlobKey {
    BlobKey::cas(Hash::of(data))
}

pub(super) fn ac(name: &str) -> BlobKey {
    BlobKey::ac(Hash::of(name.as_bytes()))
}

pub(super) fn body(data: &[u8]) -> BlobReader {
    Box::pin(io::Cursor::new(data.to_vec()))
}

pub(super) fn request(key: BlobKey, data: &[u8], size: Option<u64>) -> PutRequest {
    PutRequest {
        key,
        size,
        encoding: Encoding::Identity,
        body: body(data).into(),
    }
}

/// Puts `data` with its size declared.
pub(super) async fn put(store: &DiskStore, key: BlobKey, data: &[u8]) -> Result<(), StoreError> {
    store.put(request(key, data, Some(data.len() as u64))).await
}

pub(super) async fn put_ok(store: &DiskStore, key: BlobKey, data: &[u8]) {
    put(store, key, data)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Reads a blob's whole body, checking it against `body_len`.
pub(super) async fn read_body(blob: Blob) -> Vec<u8> {
    let mut body = blob.body.into_reader();
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
pub(super) async fn get_bytes(store: &DiskStore, key: &BlobKey) -> Option<Vec<u8>> {
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

pub(super) async fn assert_serves(store: &DiskStore, key: &BlobKey, data: &[u8]) {
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

pub(super) async fn assert_absent(store: &DiskStore, key: &BlobKey) {
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
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn tmp_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("tmp"))
}

/// Blob files (AC and CAS trees), with their total length.
pub(super) fn blob_files(root: &Path) -> (Vec<PathBuf>, u64) {
    let mut files = files_under(&root.join("ac"));
    files.extend(files_under(&root.join("cas")));
    let total = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    (files, total)
}

/// Stats must agree with the files actually on disk.
pub(super) fn assert_stats_match_disk(store: &DiskStore, root: &Path) {
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
pub(super) fn final_path(root: &Path, key: &BlobKey, encoding: Encoding) -> PathBuf {
    let hex = key.hash.to_hex();
    let name = match encoding {
        Encoding::Identity => hex.clone(),
        Encoding::Zstd => format!("{hex}.zst"),
    };
    root.join(key.kind.as_str()).join(&hex[..2]).join(name)
}

/// A body that hands out `data` in uneven chunks, optionally failing with an
/// I/O error after `fail_after` bytes (a client that disconnects).
pub(super) struct ChunkedReader {
    pub(super) data: Vec<u8>,
    pub(super) pos: usize,
    pub(super) step: usize,
    pub(super) fail_after: Option<usize>,
}

impl ChunkedReader {
    pub(super) fn new(data: Vec<u8>) -> Self {
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
pub(super) fn piped(data: Arc<Vec<u8>>, chunk: usize) -> BlobReader {
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

pub(super) fn zstd_encode(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd encode")
}
