//! The index: encodings; writes acknowledged, read, counted and evicted
//! while redb commits wait (the committer is held up by a write transaction
//! the test keeps open), and kept once it catches up; redb's page cache
//! within its bound.

use std::io;

use super::super::{DiskConfig, DiskStore};
use super::committer::{Change, Committer};
use super::*;
use crate::{PutRequest, Store};
use bazel_cache_digest::{Digest, Hash};

#[test]
fn entry_and_key_encodings_round_trip() {
    let e = Entry {
        size: 1 << 40,
        stored: 12345,
        seq: 7,
        atime: 1_700_000_000,
        encoding: Encoding::Zstd,
    };
    assert_eq!(Entry::decode(&e.encode()), Some(e));
    assert_eq!(Entry::decode(&[0u8; 3]), None);
    let k = BlobKey::ac(Hash::of(b"k"));
    assert_eq!(BlobKey::from_bytes(&k.to_bytes()), Some(k));
}

const KIB: usize = 1024;

/// Incompressible bytes, different for every seed: a chain of SHA-256s.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0u32..)
        .flat_map(|i| {
            Hash::of(&[&[seed][..], &i.to_le_bytes()].concat())
                .bytes()
                .to_vec()
        })
        .take(len)
        .collect()
}

fn config(dir: &std::path::Path, max_size: u64) -> DiskConfig {
    let mut cfg = DiskConfig::new(dir, max_size);
    cfg.fsync = false;
    cfg.touch_interval = Duration::ZERO;
    cfg
}

fn request(key: BlobKey, data: &[u8]) -> PutRequest {
    PutRequest {
        key,
        size: Some(data.len() as u64),
        encoding: Encoding::Identity,
        body: Box::pin(io::Cursor::new(data.to_vec())).into(),
    }
}

async fn put(store: &DiskStore, key: BlobKey, data: &[u8]) {
    store.put(request(key, data)).await.unwrap();
}

async fn read(store: &DiskStore, key: &BlobKey) -> Option<Vec<u8>> {
    let blob = store.get(key, false).await.unwrap()?;
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut blob.body.into_reader(), &mut out)
        .await
        .unwrap();
    Some(out)
}

/// Stored bytes, logical bytes and entries.
fn counted(store: &DiskStore) -> (u64, u64, u64) {
    let s = store.stats();
    (s.stored_bytes, s.logical_bytes, s.entries)
}

/// Holds redb's write lock, so the committer cannot commit until dropped.
fn hold_commits(store: &DiskStore) -> redb::WriteTransaction {
    store.reader.index.db.begin_write().unwrap()
}

/// Files under `ac/` and `cas/`.
fn blob_files(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    for kind in ["ac", "cas"] {
        for shard in std::fs::read_dir(dir.join(kind)).unwrap() {
            n += std::fs::read_dir(shard.unwrap().path()).unwrap().count() as u64;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_acknowledged_read_and_counted_while_index_commits_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(config(dir.path(), 64 << 20)).await.unwrap();
    let (a, b, c) = (blob(10 * KIB, 1), blob(20 * KIB, 2), blob(KIB, 3));
    let (cas_a, cas_b, cas_c) = (
        BlobKey::cas(Hash::of(&a)),
        BlobKey::cas(Hash::of(&b)),
        BlobKey::cas(Hash::of(&c)),
    );
    let action = BlobKey::ac(Hash::of(b"action"));
    put(&store, cas_a, &a).await;
    store.flush().await.unwrap();

    let held = hold_commits(&store);
    // An AC entry, then its replacement, and a new CAS blob: all while
    // nothing reaches redb.
    put(&store, action, &b[..5 * KIB]).await;
    put(&store, action, &b).await;
    put(&store, cas_b, &b).await;
    assert_eq!(store.lru_order().unwrap(), vec![cas_a, action, cas_b]);
    // A read moves an entry to the end of the LRU order, committed or
    // not: its touch reaches the writer before the next put does.
    store.get(&cas_a, false).await.unwrap();
    put(&store, cas_c, &c).await;
    assert_eq!(
        store.lru_order().unwrap(),
        vec![action, cas_b, cas_a, cas_c]
    );
    assert_eq!(read(&store, &action).await.as_deref(), Some(&b[..]));
    assert_eq!(read(&store, &cas_b).await.as_deref(), Some(&b[..]));
    assert_eq!(store.contains(&cas_a).await.unwrap(), Some(a.len() as u64));
    let digest = |key: BlobKey, data: &[u8]| Digest {
        hash: key.hash,
        size: data.len() as u64,
    };
    let digests = [digest(cas_a, &a), digest(cas_b, &b), digest(cas_c, &c)];
    assert_eq!(store.find_missing(&digests).await.unwrap(), vec![]);
    let stats = counted(&store);
    assert_eq!(stats.1, (a.len() + 2 * b.len() + c.len()) as u64);
    assert_eq!(stats.2, 4);

    // Once commits go on, everything reaches redb (the flush passes the
    // reads' touches too) and outlives a restart.
    drop(held);
    store.flush().await.unwrap();
    let order = store.lru_order().unwrap();
    store.close().await;
    let store = DiskStore::open(config(dir.path(), 64 << 20)).await.unwrap();
    assert!(!store.recovered().await.ran, "the index was closed cleanly");
    assert_eq!(store.lru_order().unwrap(), order);
    assert_eq!(counted(&store), stats);
    assert_eq!(read(&store, &action).await.as_deref(), Some(&b[..]));
    assert_eq!(read(&store, &cas_b).await.as_deref(), Some(&b[..]));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_is_decided_while_index_commits_wait() {
    let dir = tempfile::tempdir().unwrap();
    // Room for ten 100 KiB blobs.
    let max = 10 * 100 * KIB as u64 + 50 * KIB as u64;
    let store = DiskStore::open(config(dir.path(), max)).await.unwrap();
    let blobs: Vec<Vec<u8>> = (0..30).map(|i| blob(100 * KIB, i)).collect();
    let keys: Vec<BlobKey> = blobs.iter().map(|b| BlobKey::cas(Hash::of(b))).collect();
    // Five committed, the rest decided while commits wait: eviction goes
    // through redb's LRU rows, then through what is not committed yet.
    for (key, data) in keys.iter().zip(&blobs).take(5) {
        put(&store, *key, data).await;
    }
    store.flush().await.unwrap();
    let held = hold_commits(&store);
    for (key, data) in keys.iter().zip(&blobs).skip(5) {
        put(&store, *key, data).await;
    }
    let stats = counted(&store);
    assert!(stats.0 <= max, "{stats:?}");
    assert_eq!(stats.2, 10);
    assert_eq!(blob_files(dir.path()), 10);
    assert_eq!(store.lru_order().unwrap(), keys[20..].to_vec());
    assert_eq!(read(&store, &keys[0]).await, None);
    assert_eq!(read(&store, &keys[19]).await, None);
    assert_eq!(read(&store, &keys[29]).await.as_ref(), Some(&blobs[29]));

    drop(held);
    store.close().await;
    let store = DiskStore::open(config(dir.path(), max)).await.unwrap();
    assert!(!store.recovered().await.ran);
    assert_eq!(counted(&store), stats);
    assert_eq!(store.lru_order().unwrap(), keys[20..].to_vec());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_while_index_commits_fail() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(config(dir.path(), 64 << 20)).await.unwrap();
    let pending = store.reader.index.pending.clone();
    // As the committer reports a failed commit (a full disk, say).
    pending.failing("No space left on device".into());
    let data = blob(KIB, 7);
    let key = BlobKey::cas(Hash::of(&data));
    let refused = store.put(request(key, &data)).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Index(m) if m.contains("No space left")),
        "{refused:?}"
    );
    assert_eq!(store.contains(&key).await.unwrap(), None);
    assert_eq!(blob_files(dir.path()), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    // Its next commit succeeds: writes are taken again.
    pending.committed(0);
    put(&store, key, &data).await;
    assert_eq!(read(&store, &key).await, Some(data));
    store.close().await;
}

#[test]
fn the_page_cache_stays_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let index = open(&layout, &SharedStats::default()).unwrap().db;
    let committer = Committer {
        db: index.db.clone(),
        pending: index.pending.clone(),
    };
    // An index file several times the cache: 200,000 entries, about 30 MB.
    const N: u64 = 200_000;
    let key = |i: u64| BlobKey::cas(Hash::of(&i.to_le_bytes()));
    for chunk in 0..N / 10_000 {
        let changes: Vec<Change> = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| Change::Put {
                key: key(i),
                entry: Entry {
                    size: i,
                    stored: i,
                    seq: i + 1,
                    atime: 0,
                    encoding: Encoding::Identity,
                },
                old_seq: None,
            })
            .collect();
        committer.commit(&changes, None, false, None).unwrap();
    }
    let reader = Reader::new(index.clone());
    let mut n = 0;
    reader
        .for_each(|_, _| {
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(n, N);
    for i in (0..N).step_by(7) {
        assert_eq!(reader.get(&key(i)).unwrap().map(|e| e.size), Some(i));
    }
    assert_eq!(reader.lru_order().unwrap().len() as u64, N);
    let used = index.db.cache_stats().used_bytes();
    assert!(used > 0, "cache metrics are on for tests");
    assert!(used <= CACHE_BYTES, "redb's cache holds {used} bytes");
}
