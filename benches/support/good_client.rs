//! A well-behaved client, measured while others misbehave: every 50 ms (or
//! the interval given) a PUT of a new small blob over HTTP, then a GET of
//! it, the pair timed. What an attack costs the clients that do nothing
//! wrong is its latency and its errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bazel_cache_digest::Hash;
use tokio::task::JoinHandle;

use super::flood::percentile;

/// Bytes of each blob.
const BLOB: usize = 1024;
/// A pair that takes longer than this is an error (and the client moves on).
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the client saw.
pub(crate) struct GoodFigures {
    /// PUT+GET pairs done.
    pub pairs: usize,
    /// Pairs that failed (an error status, a transport error, a timeout,
    /// wrong bytes back).
    pub errors: usize,
    /// Of all pairs, in milliseconds: a failed one counts with the time it
    /// took to fail (a timeout with its 10 s).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub first_error: Option<String>,
}

/// The running client; [`GoodClient::stop`] ends it and returns the figures.
pub(crate) struct GoodClient {
    stop: Arc<AtomicBool>,
    task: JoinHandle<GoodFigures>,
}

impl GoodClient {
    /// Starts the client against `http` (`http://host:port`), sending
    /// `authorization` with every request when given.
    pub(crate) fn start(http: &str, authorization: Option<String>, every: Duration) -> GoodClient {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(http.to_string(), authorization, every, stop.clone()));
        GoodClient { stop, task }
    }

    pub(crate) async fn stop(self) -> GoodFigures {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the good client panicked")
    }
}

async fn run(
    http: String,
    authorization: Option<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> GoodFigures {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("an HTTP client");
    // Blobs no other run of the bench has written: the PUT is a real write.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let blob = blob(seed, n);
        n += 1;
        let url = format!("{http}/cas/{}", Hash::of(&blob).to_hex());
        let started = Instant::now();
        match tokio::time::timeout(
            TIMEOUT,
            pair(&client, &url, &blob, authorization.as_deref()),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")))
        {
            Ok(()) => {}
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    GoodFigures {
        pairs: latencies.len(),
        errors,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        first_error,
    }
}

async fn pair(
    client: &reqwest::Client,
    url: &str,
    blob: &[u8],
    authorization: Option<&str>,
) -> Result<(), String> {
    let with_auth = |r: reqwest::RequestBuilder| match authorization {
        Some(a) => r.header("Authorization", a),
        None => r,
    };
    let put = with_auth(client.put(url).body(blob.to_vec()))
        .send()
        .await
        .map_err(|e| format!("PUT: {}", why(&e)))?;
    if !put.status().is_success() {
        return Err(format!("PUT answered {}", put.status()));
    }
    let get = with_auth(client.get(url))
        .send()
        .await
        .map_err(|e| format!("GET: {}", why(&e)))?;
    if !get.status().is_success() {
        return Err(format!("GET answered {}", get.status()));
    }
    let body = get
        .bytes()
        .await
        .map_err(|e| format!("GET body: {}", why(&e)))?;
    if body.as_ref() != blob {
        return Err(format!("GET returned {} other bytes", body.len()));
    }
    Ok(())
}

/// What went wrong with a request: reqwest's own message names the URL,
/// the causes below it say what happened.
fn why(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {TIMEOUT:?}");
    }
    let mut why = String::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        why = c.to_string();
        cause = c.source();
    }
    if why.is_empty() { e.to_string() } else { why }
}

/// Blob `n` of the client seeded `seed`.
fn blob(seed: u64, n: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOB);
    b.extend_from_slice(&seed.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.resize(BLOB, b'g');
    b
}
