//! The S3 proxy backend against a real S3 server (`s3s-fs`, started here on
//! 127.0.0.1), with the real server in this process:
//!
//! 1. upload: PUT N distinct 1 MiB blobs to server A (16 concurrent) and time
//!    until A's write-behind queue has drained into S3 (`/status`
//!    `Backend.UploadsPending == 0`, `UploadsDone == N`); the client-visible
//!    PUT rate is printed separately;
//! 2. read-through: server B (empty disk, same bucket) GETs the N blobs (all
//!    local misses → S3 → verify → store → serve), then GETs them again (now
//!    local hits);
//! 3. added latency of a miss: on server C (empty disk) sequential GETs of
//!    blobs only in S3, interleaved with sequential GETs of local hits;
//!    p50/p99 of both and the difference.
//!
//! The requests are `bazel-cache bench`'s HTTP client and load driver: every
//! body is hashed as it arrives and checked against its name, inside the
//! timed part as a real client's would be.
//!
//! s3s-fs does not set TCP_NODELAY on the connections it accepts, so some of
//! its 1 MiB GET answers end with a ~40 ms Nagle/delayed-ACK stall (curl
//! straight against s3s-fs shows it too): the miss latency is bimodal and its
//! p50/p99 say more about s3s-fs than about the proxy; min/p10 are printed
//! too, and BENCH_DUMP_LATENCIES=1 prints every sample.
//!
//! Run: `cargo bench --bench s3_throughput`
//! Knobs (env): BENCH_BLOBS (200), BENCH_LATENCY_SAMPLES (100),
//! BENCH_CONCURRENCY (16), BENCH_STORAGE_MODE (zstd), BENCH_FSYNC (true),
//! BENCH_NUM_UPLOADERS (the server's default), BENCH_DRAIN_TIMEOUT (seconds,
//! 120), BENCH_DUMP_LATENCIES (unset), S3S_FS (the s3s-fs binary; else `s3s-fs` on PATH, else
//! `~/.cargo/bin/s3s-fs`).

mod support;

use support::{env_num, env_or};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_cache::config;
use bazel_cache::server::Server;
use bazel_cache_bench::blobs::{BlobId, SizeClass};
use bazel_cache_bench::http::HttpClient;
use bazel_cache_bench::report::Stats;
use bazel_cache_bench::stats::{Recorder, percentile};
use bazel_cache_bench::target::Target;
use bazel_cache_bench::{Load, Measured, Outcome, drive};

const MIB: f64 = 1024.0 * 1024.0;
const BLOB_SIZE: u64 = 1 << 20;
/// Blob namespaces: the upload set and the blobs only in S3 for the latency pass.
const SET: u64 = 1;
const FRESH: u64 = 2;
// ---------------------------------------------------------------- s3s-fs

// The same s3s-fs launcher the tests use (tests/support/s3.rs).
#[allow(dead_code)]
#[path = "../tests/support/s3.rs"]
mod s3_server;
use s3_server::S3Server;

/// CAS objects in the bucket (files named by a 64-hex digest).
fn cas_objects(s3: &S3Server) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&s3.root.path().join(&s3.bucket), &mut n);
    n
}

// ---------------------------------------------------------------- servers

/// One bazel-cache server in this process, serving until `stop`.
struct Running {
    base: String,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop_tx.send(());
        self.serving.await.unwrap();
    }
}

struct Settings {
    mode: String,
    fsync: String,
    num_uploaders: Option<usize>,
}

async fn start_server(s3: &S3Server, settings: &Settings) -> Running {
    let dir = tempfile::Builder::new()
        .prefix("bench-cache.")
        .tempdir()
        .expect("create the cache dir");
    let mut args: Vec<String> = [
        "bazel-cache",
        "--dir",
        dir.path().to_str().unwrap(),
        "--max_size",
        "20",
        "--http_address",
        "127.0.0.1:0",
        "--grpc_address",
        "none",
        "--access_log_level",
        "none",
        "--storage_mode",
        &settings.mode,
        &format!("--fsync={}", settings.fsync),
        "--s3.endpoint",
        &s3.endpoint,
        "--s3.bucket",
        &s3.bucket,
        "--s3.auth_method",
        "access_key",
        "--s3.access_key_id",
        &s3.access_key,
        "--s3.secret_access_key",
        &s3.secret_key,
        "--s3.disable_ssl",
        "--s3.bucket_lookup_type",
        "path",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(n) = settings.num_uploaders {
        args.push("--num_uploaders".into());
        args.push(n.to_string());
    }
    let cfg = config::from_args_and_env(args, &|_| None)
        .expect("bench config")
        .config;
    let server = Server::bind(cfg).await.unwrap();
    let base = format!("http://{}", server.http_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    Running {
        base,
        stop_tx,
        serving,
        _dir: dir,
    }
}

async fn status(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let r = client.get(format!("{base}/status")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/status");
    serde_json::from_slice(&r.bytes().await.unwrap()).expect("/status is JSON")
}

fn counter(st: &serde_json::Value, name: &str) -> u64 {
    st["Backend"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("/status has no Backend.{name}: {st}"))
}

/// Polls `/status` (every 5 ms) until the upload queue is empty and
/// `uploads` uploads are done; returns when that was first seen.
async fn wait_drained(
    client: &reqwest::Client,
    base: &str,
    uploads: u64,
    timeout: Duration,
) -> (Instant, serde_json::Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let st = status(client, base).await;
        let seen = Instant::now();
        if counter(&st, "UploadsPending") == 0 && counter(&st, "UploadsDone") >= uploads {
            return (seen, st);
        }
        assert!(
            seen < deadline,
            "uploads did not drain within {timeout:?}; /status: {st}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- phases

fn print_phase(name: &str, m: Measured) {
    let record = m.rows.into_iter().next().unwrap_or_default();
    let errors = record.error_count();
    assert_eq!(errors, 0, "{name}: {:?}", record.samples);
    let s = Stats::of(record, m.elapsed);
    println!(
        "{name:<34} {:>7.1} blobs/s {:>8.1} MiB/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {:.2} s)",
        s.blobs_per_second,
        s.mib_per_second,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.requests,
        m.elapsed.as_secs_f64(),
    );
}

/// An HTTP client of `bazel-cache bench` for the server at `base`.
fn client(base: &str, concurrency: usize) -> Arc<HttpClient> {
    let target = Target::parse(base).expect("server URL");
    Arc::new(HttpClient::new(&target, None, "", concurrency).expect("HTTP client"))
}

/// What [`each_blob`] does to every blob.
#[derive(Clone, Copy)]
enum Op {
    Put,
    /// GET, each blob hashed as it arrives.
    Get,
}

/// Runs `op` on blobs `0..count` of `namespace` from `concurrency` workers.
async fn each_blob(
    op: Op,
    base: &str,
    class: &Arc<SizeClass>,
    namespace: u64,
    count: usize,
    concurrency: usize,
) -> Measured {
    let (c, class) = (client(base, concurrency), class.clone());
    let load = Load {
        concurrency,
        duration: None,
        requests: Some(count as u64),
        warmup: Duration::ZERO,
    };
    drive(&load, 1, move |t| {
        let (c, class) = (c.clone(), class.clone());
        async move {
            let id = BlobId {
                namespace,
                index: t.index,
            };
            let result = match op {
                Op::Put => c.put(&class, id).await,
                Op::Get => c.get(&class, id).await,
            };
            Outcome {
                row: 0,
                blobs: 1,
                bytes: *result.as_ref().unwrap_or(&0),
                result: result.map(drop),
            }
        }
    })
    .await
}

/// One request at a time: a miss (blob `i` of [`FRESH`], only in S3) then
/// a hit (blob `i` of [`SET`], local), `samples` times. Row 0 = misses,
/// row 1 = hits, latencies in request order.
async fn alternate(base: &str, class: &Arc<SizeClass>, samples: usize) -> (Recorder, Recorder) {
    let (c, class) = (client(base, 1), class.clone());
    let load = Load {
        concurrency: 1,
        duration: None,
        requests: Some(2 * samples as u64),
        warmup: Duration::ZERO,
    };
    let m = drive(&load, 2, move |t| {
        let (c, class) = (c.clone(), class.clone());
        async move {
            let row = (t.index % 2) as usize;
            let id = BlobId {
                namespace: if row == 0 { FRESH } else { SET },
                index: t.index / 2,
            };
            let result = c.get(&class, id).await;
            Outcome {
                row,
                blobs: 1,
                bytes: *result.as_ref().unwrap_or(&0),
                result: result.map(drop),
            }
        }
    })
    .await;
    let mut rows = m.rows.into_iter();
    let (miss, hit) = (rows.next().unwrap(), rows.next().unwrap());
    for r in [&miss, &hit] {
        assert_eq!(r.error_count(), 0, "latency pass: {:?}", r.samples);
    }
    (miss, hit)
}

#[tokio::main]
async fn main() {
    let n = env_num("BENCH_BLOBS", 200);
    let samples = env_num("BENCH_LATENCY_SAMPLES", 100).min(n);
    let concurrency = env_num("BENCH_CONCURRENCY", 16);
    let drain_timeout = Duration::from_secs(env_num("BENCH_DRAIN_TIMEOUT", 120) as u64);
    let settings = Settings {
        mode: env_or("BENCH_STORAGE_MODE", "zstd"),
        fsync: env_or("BENCH_FSYNC", "true"),
        num_uploaders: std::env::var("BENCH_NUM_UPLOADERS")
            .ok()
            .map(|v| v.parse().expect("BENCH_NUM_UPLOADERS is a number")),
    };
    assert!(
        n > 0 && samples > 0,
        "BENCH_BLOBS and BENCH_LATENCY_SAMPLES must be positive"
    );

    let s3 = S3Server::start();
    println!(
        "bazel-cache S3 proxy benchmark: s3s-fs at {}, {n} x 1 MiB blobs, {concurrency} connections, storage_mode={}, fsync={}, num_uploaders={}, {} cores",
        s3.endpoint,
        settings.mode,
        settings.fsync,
        settings
            .num_uploaders
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let class = SizeClass::new(BLOB_SIZE);
    let total_mib = n as f64 * BLOB_SIZE as f64 / MIB;

    // 1. Upload: PUTs to A, then A's write-behind queue drains into S3.
    let a = start_server(&s3, &settings).await;
    let started = Instant::now();
    let put = each_blob(Op::Put, &a.base, &class, SET, n, concurrency).await;
    let acked = Instant::now();
    let (drained, st_a) = wait_drained(&client, &a.base, n as u64, drain_timeout).await;
    let drain = drained - started;
    println!("\n== upload: PUT {n} blobs to A, drain into S3");
    print_phase("client PUT (acknowledged locally)", put);
    println!(
        "{:<34} {:>7.1} blobs/s {:>8.1} MiB/s   first PUT → queue empty {:.2} s (last ack → empty {:.2} s)",
        "drain into S3",
        n as f64 / drain.as_secs_f64(),
        total_mib / drain.as_secs_f64(),
        drain.as_secs_f64(),
        (drained - acked).as_secs_f64(),
    );
    let in_bucket = cas_objects(&s3);
    println!("A Backend: {}", st_a["Backend"]);
    println!("CAS objects in the bucket: {in_bucket}");
    assert_eq!(counter(&st_a, "UploadsDone"), n as u64, "A: {st_a}");
    assert_eq!(in_bucket, n, "every uploaded blob is an object in S3");

    // Fresh blobs for the latency phase, uploaded through A too.
    let fresh = each_blob(Op::Put, &a.base, &class, FRESH, samples, concurrency).await;
    assert_eq!(
        fresh.rows[0].error_count(),
        0,
        "{:?}",
        fresh.rows[0].samples
    );
    let (_, st_a) = wait_drained(&client, &a.base, (n + samples) as u64, drain_timeout).await;
    assert_eq!(
        counter(&st_a, "UploadsDone"),
        (n + samples) as u64,
        "A: {st_a}"
    );
    a.stop().await;

    // 2. Read-through: B has an empty disk; every GET is a local miss.
    let b = start_server(&s3, &settings).await;
    let miss = each_blob(Op::Get, &b.base, &class, SET, n, concurrency).await;
    let st_b = status(&client, &b.base).await;
    let hit = each_blob(Op::Get, &b.base, &class, SET, n, concurrency).await;
    let st_b2 = status(&client, &b.base).await;
    println!("\n== read-through: GET {n} blobs from B (empty disk), then again");
    print_phase("GET, local miss → S3 (read-through)", miss);
    print_phase("GET, local hit", hit);
    println!("B Backend after the misses: {}", st_b["Backend"]);
    println!(
        "B after the hits: NumFiles {}, Backend {}",
        st_b2["NumFiles"], st_b2["Backend"]
    );
    assert_eq!(counter(&st_b, "Hits"), n as u64, "B: {st_b}");
    assert_eq!(
        counter(&st_b2, "Hits"),
        n as u64,
        "local hits do not ask S3: {st_b2}"
    );
    assert_eq!(st_b["NumFiles"], n as u64, "B stores what it read: {st_b}");
    assert_eq!(
        counter(&st_b2, "UploadsPending"),
        0,
        "no re-upload: {st_b2}"
    );
    assert_eq!(counter(&st_b2, "UploadsDone"), 0, "no re-upload: {st_b2}");
    b.stop().await;

    // 3. Latency of a miss: C (empty disk) first reads `samples` blobs of the
    // first set (so they are local), then alternates a miss (a fresh blob,
    // only in S3) with a hit (one of those), one request at a time.
    let c = start_server(&s3, &settings).await;
    let warm = each_blob(Op::Get, &c.base, &class, SET, samples, 1).await;
    assert_eq!(warm.rows[0].error_count(), 0, "{:?}", warm.rows[0].samples);
    let (mut miss, mut hit) = alternate(&c.base, &class, samples).await;
    let st_c = status(&client, &c.base).await;
    assert_eq!(counter(&st_c, "Hits"), (2 * samples) as u64, "C: {st_c}");
    assert_eq!(counter(&st_c, "UploadsDone"), 0, "C: {st_c}");
    c.stop().await;
    if std::env::var_os("BENCH_DUMP_LATENCIES").is_some() {
        let show = |lat: &[u64]| {
            lat.iter()
                .map(|ns| format!("{:.1}", *ns as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("\nmiss latencies (ms, in order): {}", show(&miss.latencies));
        println!("hit latencies (ms, in order): {}", show(&hit.latencies));
    }
    miss.latencies.sort_unstable();
    hit.latencies.sort_unstable();
    let at = |lat: &[u64], q: f64| percentile(lat, q) as f64 / 1e6;
    println!(
        "\n== latency: {samples} sequential GETs on C, miss (S3 → verify → store → serve) vs local hit"
    );
    for (name, lat) in [
        ("GET miss (read-through)", &miss.latencies),
        ("GET local hit", &hit.latencies),
    ] {
        println!(
            "{name:<34} p50 {:>7.2} ms   p99 {:>7.2} ms   (min {:.2}, p10 {:.2}, p90 {:.2}, mean {:.2} ms)",
            at(lat, 0.50),
            at(lat, 0.99),
            lat[0] as f64 / 1e6,
            at(lat, 0.10),
            at(lat, 0.90),
            lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e6,
        );
    }
    println!(
        "{:<34} p50 {:>+7.2} ms   p99 {:>+7.2} ms",
        "added by a read-through miss",
        at(&miss.latencies, 0.50) - at(&hit.latencies, 0.50),
        at(&miss.latencies, 0.99) - at(&hit.latencies, 0.99),
    );

    let log = s3.log();
    if !log.trim().is_empty() {
        println!(
            "\ns3s-fs logged {} line(s); first ones:",
            log.lines().count()
        );
        for line in log.lines().take(5) {
            println!("  {line}");
        }
    }
    drop(s3);
}
