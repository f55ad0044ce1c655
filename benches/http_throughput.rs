//! HTTP GET and PUT throughput of the real server (in this process, on
//! 127.0.0.1) for 4 KiB and 1 MiB blobs at 16 concurrent connections.
//!
//! Run: `cargo bench --bench http_throughput`
//! Knobs (env): BENCH_SECONDS (default 5 per phase), BENCH_CONCURRENCY (16),
//! BENCH_FSYNC (true), BENCH_STORAGE_MODE (zstd), BENCH_ENDPOINT_METRICS
//! (false; `true` serves with `--enable_endpoint_metrics`).
//!
//! Prints one line per phase: requests/s, MiB/s and p50/p99 latency.

mod support;

use support::{blobs, env_or, percentile};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bazel_cache::config;
use bazel_cache::server::Server;

struct Phase {
    name: String,
    requests: usize,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn print(&mut self) {
        self.latencies.sort();
        let pct = |p: f64| percentile(&self.latencies, p);
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{:<22} {:>9.0} req/s {:>9.1} MiB/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} requests)",
            self.name,
            self.requests as f64 / secs,
            self.bytes as f64 / secs / (1024.0 * 1024.0),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            self.requests,
        );
    }
}

/// Runs `op` from `concurrency` tasks for `duration`, or until `limit` ops.
async fn run_phase<F, Fut>(
    name: String,
    concurrency: usize,
    duration: Duration,
    limit: usize,
    op: F,
) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bytes = 0;
            while start.elapsed() < duration {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let t = Instant::now();
                bytes += op(i).await;
                lat.push(t.elapsed());
            }
            (lat, bytes)
        }));
    }
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (l, b) = t.await.unwrap();
        latencies.extend(l);
        bytes += b;
    }
    Phase {
        name,
        requests: latencies.len(),
        bytes,
        elapsed: start.elapsed(),
        latencies,
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", "5").parse().unwrap();
    let concurrency: usize = env_or("BENCH_CONCURRENCY", "16").parse().unwrap();
    let fsync = env_or("BENCH_FSYNC", "true");
    let mode = env_or("BENCH_STORAGE_MODE", "zstd");
    let endpoint_metrics = env_or("BENCH_ENDPOINT_METRICS", "false");
    let dir = tempfile::tempdir().unwrap();
    let args = [
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
        &format!("--fsync={fsync}"),
        "--storage_mode",
        &mode,
        &format!("--enable_endpoint_metrics={endpoint_metrics}"),
    ];
    let cfg = config::from_args_and_env(args, &|_| None)
        .expect("bench config")
        .config;
    let server = Server::bind(cfg).await.unwrap();
    let base = format!("http://{}", server.http_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    println!(
        "bazel-cache HTTP benchmark: {concurrency} connections, {seconds} s per phase, fsync={fsync}, storage_mode={mode}, endpoint_metrics={endpoint_metrics}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let duration = Duration::from_secs(seconds);
    for (label, size, count) in [
        ("4 KiB", 4096usize, 200_000usize),
        ("1 MiB", 1 << 20, 1_000),
    ] {
        let set = Arc::new(blobs(count, size, size as u64));
        let (c, b, s) = (client.clone(), base.clone(), set.clone());
        let mut put = run_phase(
            format!("PUT {label}"),
            concurrency,
            duration,
            count,
            move |i| {
                let (c, b, s) = (c.clone(), b.clone(), s.clone());
                async move {
                    let (h, body) = &s[i];
                    let r = c
                        .put(format!("{b}/cas/{h}"))
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    body.len() as u64
                }
            },
        )
        .await;
        put.print();
        let stored = put.requests;
        let (c, b, s) = (client.clone(), base.clone(), set.clone());
        let mut get = run_phase(
            format!("GET {label}"),
            concurrency,
            duration,
            usize::MAX,
            move |i| {
                let (c, b, s) = (c.clone(), b.clone(), s.clone());
                async move {
                    let (h, _) = &s[i % stored];
                    let r = c.get(format!("{b}/cas/{h}")).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap().len() as u64
                }
            },
        )
        .await;
        get.print();
    }
    let _ = stop_tx.send(());
    serving.await.unwrap();
}
