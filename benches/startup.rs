//! Start-up time and memory with many indexed entries. The index is read,
//! the blob tree is not walked, so neither should grow with the entry
//! count.
//!
//! 1. Fill a store with BENCH_ENTRIES (1,000,000) real blob files through
//!    the store API (fsync off while filling; it does not change what is
//!    measured), close it cleanly.
//! 2. Open it in this process: time to open and to answer a lookup, after a
//!    clean stop and after an unclean one (background reconciliation).
//! 3. Start the real server binary on it: time until it prints its
//!    `.bazelrc` lines (it is serving then) and until `bazel-cache bench`'s
//!    first request is answered; then serve GETs for a few seconds and read
//!    the server's RSS from /proc, next to an empty server's after the
//!    same load.
//!
//! Run: `cargo bench --bench startup` (BENCH_ENTRIES, BENCH_SECONDS = 3).

mod support;

use std::sync::Arc;
use std::time::Instant;

use bazel_cache_digest::{BlobKey, Hash};
use bazel_cache_store::disk::{DiskConfig, DiskStore};
use bazel_cache_store::{Encoding, PutRequest, Store};
use support::{ServerProcess, env_num, phase, print_header, print_row};

fn config(dir: &std::path::Path) -> DiskConfig {
    DiskConfig {
        fsync: false,
        cas_encoding: Encoding::Identity,
        ..DiskConfig::new(dir, 100 << 30)
    }
}

#[tokio::main]
async fn main() {
    let entries = env_num("BENCH_ENTRIES", 1_000_000);
    let seconds = env_num("BENCH_SECONDS", 3).max(1);
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
                    body: Box::pin(std::io::Cursor::new(body)).into(),
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

    let rss_before = support::proc_status_kib(std::process::id(), "VmRSS:");
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
        support::proc_status_kib(std::process::id(), "VmRSS:").saturating_sub(rss_before)
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

    // The real binary on the same directory, then on an empty one.
    let duration = format!("{seconds}s");
    let load = [
        "--mix",
        "read:9,write:1",
        "--sizes",
        "4KiB",
        "--concurrency",
        "16",
        "--duration",
        &duration,
        "--warmup",
        "0s",
    ];
    let empty = tempfile::tempdir().unwrap();
    println!();
    print_header();
    for (name, path) in [("1M entries", dir.path()), ("empty", empty.path())] {
        let server = ServerProcess::start(path, &["--max_size", "100"]);
        let answered = server.startup + support::first_answer(&server.http);
        let report = phase(&server.http, &load).await;
        print_row(&format!("server, {name}: 4 KiB 90% GET"), &report);
        for op in &report.ops {
            let label = op.op.map_or("all", |o| o.as_str());
            println!(
                "{:<36} {:>8} {:>11.0} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9}",
                format!("  of which {label}"),
                "",
                op.stats.requests_per_second,
                op.stats.mib_per_second,
                op.stats.latency.p50_ms,
                op.stats.latency.p99_ms,
                op.stats.latency.p999_ms,
                op.stats.requests
            );
        }
        println!(
            "server, {name}: serving {:.1} ms after exec, first request answered at {:.1} ms; RSS {} MiB after the load (peak {} MiB)",
            server.startup.as_secs_f64() * 1e3,
            answered.as_secs_f64() * 1e3,
            server.rss_kib() / 1024,
            server.peak_rss_kib() / 1024,
        );
    }
}
