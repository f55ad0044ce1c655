//! Start-up time of the disk store with many indexed entries: the index is
//! read, the blob tree is not walked, so opening should not grow with the
//! entry count. Also times the unclean path (open + background recovery).
//!
//! Run: `cargo bench --bench startup` (BENCH_ENTRIES, default 1000000).
//! Filling takes a few minutes: every entry is a real file put through the
//! store (fsync off while filling; it does not change what is measured).

use std::sync::Arc;
use std::time::Instant;

use bazel_cache::digest::{BlobKey, Hash};
use bazel_cache::store::disk::{DiskConfig, DiskStore};
use bazel_cache::store::{Encoding, PutRequest, Store};

fn config(dir: &std::path::Path) -> DiskConfig {
    DiskConfig {
        fsync: false,
        cas_encoding: Encoding::Identity,
        ..DiskConfig::new(dir, 100 << 30)
    }
}

#[tokio::main]
async fn main() {
    let entries: usize = std::env::var("BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(config(dir.path())).await.unwrap());
    let fill = Instant::now();
    let workers = 32;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < entries {
                let body = (i as u64).to_le_bytes().to_vec();
                let key = BlobKey::cas(Hash::of(&body));
                let req = PutRequest {
                    key,
                    size: Some(8),
                    encoding: Encoding::Identity,
                    body: Box::pin(std::io::Cursor::new(body)),
                };
                store.put(req).await.unwrap();
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "filled {entries} entries in {:.1} s",
        fill.elapsed().as_secs_f64()
    );
    Arc::try_unwrap(store).ok().unwrap().close().await;

    let rss_before = rss_kib();
    let t = Instant::now();
    let store = DiskStore::open(config(dir.path())).await.unwrap();
    let open = t.elapsed();
    let probe = BlobKey::cas(Hash::of(&7u64.to_le_bytes()));
    assert_eq!(store.contains(&probe).await.unwrap(), Some(8));
    let first = t.elapsed();
    println!(
        "clean start with {} entries: open {:.1} ms, first lookup answered after {:.1} ms, RSS +{} KiB",
        store.stats().entries,
        open.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        rss_kib().saturating_sub(rss_before)
    );
    // An unclean stop: drop without close; the next open reconciles in the background.
    drop(store);
    let t = Instant::now();
    let store = DiskStore::open(config(dir.path())).await.unwrap();
    let open = t.elapsed();
    let report = store.recovered().await;
    println!(
        "unclean start: open {:.1} ms (serving), background recovery {:.1} s ({} files checked)",
        open.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64(),
        report.files_checked
    );
    store.close().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
