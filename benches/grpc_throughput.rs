//! gRPC throughput of the real server (in this process, on 127.0.0.1) with
//! tonic clients: FindMissingBlobs, BatchUpdateBlobs / BatchReadBlobs of
//! 4 KiB blobs, ByteStream Write / Read of 64 MiB blobs.
//!
//! Run: `cargo bench --bench grpc_throughput`
//! Knobs (env): BENCH_SECONDS (default 5 per phase), BENCH_CONCURRENCY (16
//! requests in flight for the CAS phases), BENCH_STREAMS (4 ByteStream
//! calls in flight), BENCH_CONNECTIONS (1 HTTP/2 connection shared by all
//! requests, as Bazel does for up to 100 concurrent calls), BENCH_FSYNC
//! (true), BENCH_STORAGE_MODE (zstd), BENCH_BATCH_BLOBS (131072 distinct
//! 4 KiB blobs, made before timing), BENCH_BS_BLOBS (48 distinct 64 MiB
//! blobs at most), BENCH_CHUNK_KIB (1024, ByteStream chunk size).
//!
//! Prints one line per phase: the rate (digests/s, blobs/s or GB/s, where
//! GB = 10^9 bytes), the payload in MiB/s, and p50/p99 latency per call.
//! A phase stops after BENCH_SECONDS or when its distinct blobs run out.

mod support;

use support::{env_num, env_or, percentile, random_bytes};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bazel_cache::config;
use bazel_cache::server::Server;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bs::byte_stream_client::ByteStreamClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, Endpoint};

const SMALL: usize = 4096;
const BATCH: usize = 256;
const FIND_DIGESTS: usize = 1000;
const BIG: usize = 64 << 20;
/// Client-side message limit: well above any chunk or batch used here.
const MAX_MESSAGE: usize = 16 << 20;

fn digest(hash: [u8; 32], size: usize) -> re::Digest {
    re::Digest {
        hash: hex::encode(hash),
        size_bytes: size as i64,
    }
}

/// Distinct 4 KiB blobs as BatchUpdateBlobs entries, made before timing so
/// the client's own hashing is not measured.
fn small_blobs(count: usize) -> Vec<re::batch_update_blobs_request::Request> {
    (0..count)
        .map(|i| {
            let data = random_bytes(SMALL, 0x5eed_0000 + i as u64);
            re::batch_update_blobs_request::Request {
                digest: Some(digest(Sha256::digest(&data).into(), SMALL)),
                data,
                compressor: re::compressor::Value::Identity as i32,
            }
        })
        .collect()
}

/// Distinct 64 MiB blobs that cost neither memory nor hashing time per
/// blob: blob `i` is a shared random base whose last 8 bytes are `i`, and
/// its SHA-256 continues a hash state saved before the last 64-byte block.
struct BigBlobs {
    base: Vec<u8>,
    /// SHA-256 of `base[..BIG - 64]` (a whole number of 64-byte blocks).
    prefix: Sha256,
}

impl BigBlobs {
    fn new() -> BigBlobs {
        let base = random_bytes(BIG, 0xb16);
        let mut prefix = Sha256::new();
        prefix.update(&base[..BIG - 64]);
        BigBlobs { base, prefix }
    }

    fn suffix(i: usize) -> [u8; 8] {
        (i as u64 ^ 0x0b16_b0b5).to_le_bytes()
    }

    fn hash(&self, i: usize) -> String {
        let mut h = self.prefix.clone();
        h.update(&self.base[BIG - 64..BIG - 8]);
        h.update(Self::suffix(i));
        hex::encode(h.finalize())
    }

    /// Bytes `range` of blob `i`.
    fn bytes(&self, i: usize, range: std::ops::Range<usize>) -> Vec<u8> {
        let tail = BIG - 8;
        let mut v = self.base[range.start.min(tail)..range.end.min(tail)].to_vec();
        if range.end > tail {
            v.extend_from_slice(&Self::suffix(i)[range.start.max(tail) - tail..range.end - tail]);
        }
        v
    }
}

#[derive(Clone, Copy)]
enum Rate {
    /// Items per second, e.g. "digests" or "blobs".
    PerSecond(&'static str),
    /// Payload in GB/s.
    GigabytesPerSecond,
}

struct Phase {
    name: String,
    in_flight: usize,
    rate: Rate,
    calls: usize,
    items: u64,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn print(&mut self) {
        self.latencies.sort();
        let pct = |p: f64| percentile(&self.latencies, p);
        let secs = self.elapsed.as_secs_f64();
        let rate = match self.rate {
            Rate::PerSecond(unit) => format!("{:>9.0} {unit}/s", self.items as f64 / secs),
            Rate::GigabytesPerSecond => format!("{:>9.2} GB/s", self.bytes as f64 / secs / 1e9),
        };
        let payload = match self.bytes {
            0 => String::new(),
            b => format!("{:.1} MiB/s", b as f64 / secs / (1024.0 * 1024.0)),
        };
        println!(
            "{:<49} {:>2} in flight {rate:<17} {payload:>12}   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} calls in {:.1} s)",
            self.name,
            self.in_flight,
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            self.calls,
            secs,
        );
    }
}

/// Runs `op(i)` for i = 0, 1, ... from `in_flight` tasks for `duration`,
/// or until `limit` calls. `op` returns (items, payload bytes).
async fn run_phase<F, Fut>(
    name: String,
    rate: Rate,
    in_flight: usize,
    duration: Duration,
    limit: usize,
    op: F,
) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (u64, u64)> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut items, mut bytes) = (0, 0);
            while start.elapsed() < duration {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let t = Instant::now();
                let (n, b) = op(i).await;
                lat.push(t.elapsed());
                items += n;
                bytes += b;
            }
            (lat, items, bytes)
        }));
    }
    let mut latencies = Vec::new();
    let (mut items, mut bytes) = (0, 0);
    for t in tasks {
        let (l, n, b) = t.await.unwrap();
        latencies.extend(l);
        items += n;
        bytes += b;
    }
    Phase {
        name,
        in_flight,
        rate,
        calls: latencies.len(),
        items,
        bytes,
        elapsed: start.elapsed(),
        latencies,
    }
}

/// Clients over `connections` HTTP/2 connections; call `i` uses `[i % n]`.
struct Clients {
    cas: Vec<ContentAddressableStorageClient<Channel>>,
    bs: Vec<ByteStreamClient<Channel>>,
}

impl Clients {
    async fn connect(url: &str, connections: usize) -> Clients {
        let mut clients = Clients {
            cas: Vec::new(),
            bs: Vec::new(),
        };
        for _ in 0..connections {
            let channel = Endpoint::from_shared(url.to_string())
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            clients.cas.push(
                ContentAddressableStorageClient::new(channel.clone())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            );
            clients.bs.push(
                ByteStreamClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            );
        }
        clients
    }

    fn cas(&self, i: usize) -> ContentAddressableStorageClient<Channel> {
        self.cas[i % self.cas.len()].clone()
    }

    fn bs(&self, i: usize) -> ByteStreamClient<Channel> {
        self.bs[i % self.bs.len()].clone()
    }
}

/// ByteStream Write of big blob `i` in `chunk`-byte messages.
async fn write_big(
    mut client: ByteStreamClient<Channel>,
    blobs: Arc<BigBlobs>,
    i: usize,
    chunk: usize,
) -> Result<(), tonic::Status> {
    let resource = format!(
        "uploads/{:08x}-0000-4000-8000-{:012x}/blobs/{}/{BIG}",
        std::process::id(),
        i,
        blobs.hash(i)
    );
    let messages = BIG.div_ceil(chunk);
    let requests = futures_util::stream::iter((0..messages).map(move |k| {
        let range = k * chunk..((k + 1) * chunk).min(BIG);
        bs::WriteRequest {
            resource_name: if k == 0 {
                resource.clone()
            } else {
                String::new()
            },
            write_offset: range.start as i64,
            finish_write: range.end == BIG,
            data: blobs.bytes(i, range),
        }
    }));
    let resp = client.write(requests).await?.into_inner();
    if resp.committed_size != BIG as i64 {
        return Err(tonic::Status::internal(format!(
            "committed_size {} for a {BIG}-byte blob",
            resp.committed_size
        )));
    }
    Ok(())
}

/// ByteStream Read of big blob `i`; returns the bytes (only kept if `keep`)
/// and their count.
async fn read_big(
    mut client: ByteStreamClient<Channel>,
    hash: String,
    keep: bool,
) -> Result<(usize, Vec<u8>), tonic::Status> {
    let mut stream = client
        .read(bs::ReadRequest {
            resource_name: format!("blobs/{hash}/{BIG}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut n = 0;
    let mut kept = Vec::new();
    while let Some(msg) = stream.message().await? {
        n += msg.data.len();
        if keep {
            kept.extend_from_slice(&msg.data);
        }
    }
    Ok((n, kept))
}

#[tokio::main]
async fn main() {
    let seconds: u64 = env_num("BENCH_SECONDS", 5) as u64;
    let concurrency = env_num("BENCH_CONCURRENCY", 16);
    let streams = env_num("BENCH_STREAMS", 4);
    let connections = env_num("BENCH_CONNECTIONS", 1).max(1);
    let batch_blobs = env_num("BENCH_BATCH_BLOBS", 131_072).max(BATCH);
    let bs_blobs = env_num("BENCH_BS_BLOBS", 48);
    let chunk = env_num("BENCH_CHUNK_KIB", 1024).max(1) * 1024;
    let fsync = env_or("BENCH_FSYNC", "true");
    let mode = env_or("BENCH_STORAGE_MODE", "zstd");
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
        "127.0.0.1:0",
        "--access_log_level",
        "none",
        &format!("--fsync={fsync}"),
        "--storage_mode",
        &mode,
    ];
    let cfg = config::from_args_and_env(args, &|_| None)
        .expect("bench config")
        .config;
    let server = Server::bind(cfg).await.unwrap();
    let url = format!(
        "http://{}",
        server.grpc_addr().expect("gRPC listener on 127.0.0.1:0")
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    println!(
        "bazel-cache gRPC benchmark: {concurrency} CAS calls / {streams} ByteStream calls in flight over {connections} connection(s), {seconds} s per phase, fsync={fsync}, storage_mode={mode}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let clients = Arc::new(Clients::connect(&url, connections).await);
    let duration = Duration::from_secs(seconds);

    // --- CAS batches of 4 KiB blobs ---
    let small = Arc::new(small_blobs(batch_blobs));
    let c = clients.clone();
    let s = small.clone();
    let mut update = run_phase(
        format!("BatchUpdateBlobs ({BATCH} x 4 KiB blobs)"),
        Rate::PerSecond("blobs"),
        concurrency,
        duration,
        small.len() / BATCH,
        move |i| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                let requests = s[i * BATCH..(i + 1) * BATCH].to_vec();
                let resp = c
                    .cas(i)
                    .batch_update_blobs(re::BatchUpdateBlobsRequest {
                        requests,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("BatchUpdateBlobs: {e}"))
                    .into_inner();
                assert_eq!(resp.responses.len(), BATCH);
                for r in &resp.responses {
                    let code = r.status.as_ref().map_or(0, |s| s.code);
                    assert_eq!(code, 0, "BatchUpdateBlobs: {:?}", r.status);
                }
                (BATCH as u64, (BATCH * SMALL) as u64)
            }
        },
    )
    .await;
    update.print();
    let stored_batches = update.calls;
    let stored = stored_batches * BATCH;
    assert!(stored > 0, "BatchUpdateBlobs stored nothing");

    let c = clients.clone();
    let s = small.clone();
    let mut read = run_phase(
        format!("BatchReadBlobs ({BATCH} x 4 KiB blobs)"),
        Rate::PerSecond("blobs"),
        concurrency,
        duration,
        usize::MAX,
        move |i| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                let b = i % stored_batches;
                let digests = s[b * BATCH..(b + 1) * BATCH]
                    .iter()
                    .map(|r| r.digest.clone().unwrap())
                    .collect();
                let resp = c
                    .cas(i)
                    .batch_read_blobs(re::BatchReadBlobsRequest {
                        digests,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("BatchReadBlobs: {e}"))
                    .into_inner();
                assert_eq!(resp.responses.len(), BATCH);
                let mut bytes = 0;
                for r in &resp.responses {
                    let code = r.status.as_ref().map_or(0, |s| s.code);
                    assert_eq!(code, 0, "BatchReadBlobs: {:?}", r.status);
                    assert_eq!(r.data.len(), SMALL, "BatchReadBlobs: wrong size");
                    bytes += r.data.len() as u64;
                }
                (BATCH as u64, bytes)
            }
        },
    )
    .await;
    read.print();

    // --- FindMissingBlobs: half of each request stored, half not ---
    let present: Arc<Vec<re::Digest>> = Arc::new(
        small[..stored]
            .iter()
            .map(|r| r.digest.clone().unwrap())
            .collect(),
    );
    let absent: Arc<Vec<re::Digest>> = Arc::new(
        (0..65_536u64)
            .map(|i| digest(Sha256::digest(format!("absent {i}")).into(), SMALL))
            .collect(),
    );
    let c = clients.clone();
    let half = FIND_DIGESTS / 2;
    let mut find = run_phase(
        format!("FindMissingBlobs ({FIND_DIGESTS} digests, half present)"),
        Rate::PerSecond("digests"),
        concurrency,
        duration,
        usize::MAX,
        move |i| {
            let (c, present, absent) = (c.clone(), present.clone(), absent.clone());
            async move {
                let mut blob_digests = Vec::with_capacity(FIND_DIGESTS);
                for k in 0..half {
                    blob_digests.push(present[(i * half + k) % present.len()].clone());
                    blob_digests.push(absent[(i * half + k) % absent.len()].clone());
                }
                let resp = c
                    .cas(i)
                    .find_missing_blobs(re::FindMissingBlobsRequest {
                        blob_digests,
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("FindMissingBlobs: {e}"))
                    .into_inner();
                assert_eq!(
                    resp.missing_blob_digests.len(),
                    FIND_DIGESTS - half,
                    "FindMissingBlobs: wrong number of missing digests"
                );
                (FIND_DIGESTS as u64, 0)
            }
        },
    )
    .await;
    find.print();

    // --- ByteStream of 64 MiB blobs ---
    let big = Arc::new(BigBlobs::new());
    // One probe write outside the timing: tells whether ByteStream is served
    // at all, and leaves blob 0 for the read-back check.
    match write_big(clients.bs(0), big.clone(), 0, chunk).await {
        Err(e) => println!(
            "ByteStream Write/Read: skipped, the probe write failed: {:?}: {}",
            e.code(),
            e.message()
        ),
        Ok(()) => {
            let c = clients.clone();
            let b = big.clone();
            let mut write = run_phase(
                format!(
                    "ByteStream Write (64 MiB blobs, {} KiB chunks)",
                    chunk / 1024
                ),
                Rate::GigabytesPerSecond,
                streams,
                duration,
                bs_blobs.saturating_sub(1),
                move |i| {
                    let (c, b) = (c.clone(), b.clone());
                    async move {
                        write_big(c.bs(i), b, i + 1, chunk)
                            .await
                            .unwrap_or_else(|e| panic!("ByteStream Write: {e}"));
                        (1, BIG as u64)
                    }
                },
            )
            .await;
            write.print();
            let written = write.calls + 1;

            // The server hands back exactly what was written.
            let (n, data) = read_big(clients.bs(0), big.hash(0), true)
                .await
                .unwrap_or_else(|e| panic!("ByteStream Read: {e}"));
            assert_eq!(n, BIG, "ByteStream Read: wrong size");
            assert!(
                data == big.bytes(0, 0..BIG),
                "ByteStream Read: content differs"
            );
            drop(data);

            let c = clients.clone();
            let hashes: Arc<Vec<String>> = Arc::new((0..written).map(|i| big.hash(i)).collect());
            let mut read = run_phase(
                "ByteStream Read (64 MiB blobs)".to_string(),
                Rate::GigabytesPerSecond,
                streams,
                duration,
                usize::MAX,
                move |i| {
                    let (c, h) = (c.clone(), hashes.clone());
                    async move {
                        let (n, _) = read_big(c.bs(i), h[i % h.len()].clone(), false)
                            .await
                            .unwrap_or_else(|e| panic!("ByteStream Read: {e}"));
                        assert_eq!(n, BIG, "ByteStream Read: wrong size");
                        (1, n as u64)
                    }
                },
            )
            .await;
            read.print();
        }
    }

    drop(clients);
    let _ = stop_tx.send(());
    serving.await.unwrap();
}
