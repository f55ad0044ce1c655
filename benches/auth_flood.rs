//! A client whose credentials are right, while others flood the server
//! with wrong passwords: its latency for a small authenticated GET, with
//! no flood and with 16 flooding clients, side by side.
//!
//! The htpasswd entry is bcrypt at cost BENCH_BCRYPT_COST (12, ~200 ms a
//! verify), written by Apache's `htpasswd -B`. Two floods: every flooder
//! repeating one typo (a misconfigured build; the failure cache answers)
//! and every request a new wrong password (each needs a verify; the verify
//! permits bound what that takes from the good client).
//!
//! Run: `cargo bench --bench auth_flood` (BENCH_SECONDS = 5 per phase,
//! BENCH_FLOODERS = 16, BENCH_BCRYPT_COST = 12; BENCH_SERVER to measure
//! another build).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bazel_cache::auth::basic_header;
use bazel_cache_digest::Hash;
use support::flood::{Flood, FloodCounts, flooder, percentile, write_htpasswd};
use support::{ServerProcess, env_num};

const USER: &str = "builder";
const PASSWORD: &str = "right-password";

struct Figures {
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    refused_per_second: f64,
}

async fn phase(
    url: &str,
    kind: Flood,
    flooders: usize,
    duration: Duration,
    client: &reqwest::Client,
) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let tasks: Vec<_> = if kind == Flood::None {
        Vec::new()
    } else {
        (0..flooders)
            .map(|n| {
                tokio::spawn(flooder(
                    n,
                    url.to_string(),
                    USER,
                    kind,
                    stop.clone(),
                    counts.clone(),
                ))
            })
            .collect()
    };
    // Let the flood build up (and the first verifies start) first.
    if kind != Flood::None {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let good = basic_header(USER, PASSWORD);
    let refused_before = counts.refused.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < duration {
        let t = Instant::now();
        let resp = client
            .get(url)
            .header("Authorization", &good)
            .send()
            .await
            .expect("good client GET");
        assert_eq!(resp.status(), 200, "good client GET");
        resp.bytes().await.expect("good client body");
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    let refused_during = counts.refused.load(Ordering::Relaxed) - refused_before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    latencies.sort();
    Figures {
        requests: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().unwrap().as_secs_f64() * 1e3,
        refused_per_second: refused_during as f64 / elapsed.as_secs_f64(),
    }
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 5).max(1);
    let flooders = env_num("BENCH_FLOODERS", 16).max(1);
    let cost = env_num("BENCH_BCRYPT_COST", 12);

    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, USER, PASSWORD, cost);
    let data_dir = dir.path().join("cache");
    std::fs::create_dir(&data_dir).unwrap();
    let server = ServerProcess::start(&data_dir, &["--htpasswd_file", htpasswd.to_str().unwrap()]);

    // The small blob the good client reads; its credentials are verified
    // (and cached) here, before anything is measured.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let blob = vec![7u8; 1024];
    let url = format!("{}/cas/{}", server.http, Hash::of(&blob).to_hex());
    let put = client
        .put(&url)
        .header("Authorization", basic_header(USER, PASSWORD))
        .body(blob)
        .send()
        .await
        .expect("PUT the blob");
    assert!(put.status().is_success(), "PUT answered {}", put.status());

    println!(
        "good client: sequential authenticated GET of 1 KiB, {seconds} s a phase; \
         bcrypt cost {cost}; {} cores",
        support::cores()
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "flood", "requests", "p50 ms", "p99 ms", "max ms", "refused/s"
    );
    let duration = Duration::from_secs(seconds as u64);
    for kind in [Flood::None, Flood::SameTypo, Flood::NewGuesses] {
        let f = phase(&url, kind, flooders, duration, &client).await;
        println!(
            "{:<36} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>11.1}",
            kind.label(flooders),
            f.requests,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.refused_per_second
        );
    }
}
