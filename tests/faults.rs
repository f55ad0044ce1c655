//! Fault tests against the real server binary, on 127.0.0.1 only, each
//! bounded in time:
//!
//! - `kill -9` in the middle of a 16-way write load (HTTP and ByteStream),
//!   restart on the same `dir`: no acknowledged write is lost, every blob
//!   served hashes to its name, the index agrees with the files;
//! - eviction under concurrent writers and readers: disk usage stays within
//!   `max_size` plus one in-flight blob, a blob evicted while it is read is
//!   served whole or not at all;
//! - slow and abusive clients (slowloris, a stalled upload, 10,000 idle
//!   connections, disconnects mid-stream): other clients are served
//!   meanwhile, and file descriptors and memory come back afterwards.
//!
//! Waits are bounded polls ("until X, at most N seconds"), never timing
//! assertions; figures (start-up time, RSS) are printed, not asserted.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_cache::digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use common::Server;
use common::async_client as http_client;
use futures_util::StreamExt;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

// ---------------------------------------------------------------- helpers

/// Compressible bytes, unique per seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = format!("seed {seed}\n").into_bytes();
    out.extend((0..len.saturating_sub(out.len())).map(|i| b"the quick brown fox "[i % 20]));
    out.truncate(len);
    out
}

fn hex(data: &[u8]) -> String {
    Hash::of(data).to_hex()
}

async fn grpc_channel(s: &Server) -> Channel {
    Channel::from_shared(s.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn bytestream(ch: Channel) -> ByteStreamClient<Channel> {
    ByteStreamClient::new(ch)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

/// A fresh ByteStream upload name for `data`.
fn upload_name(data: &[u8], n: u64) -> String {
    format!(
        "uploads/5a3e0c1d-0000-4000-8000-{n:012x}/blobs/{}/{}",
        hex(data),
        data.len()
    )
}

/// One ByteStream Write of `data` in 64 KiB messages.
async fn bytestream_write(
    c: &mut ByteStreamClient<Channel>,
    name: &str,
    data: &[u8],
) -> Result<i64, tonic::Status> {
    let chunk = 64 * KIB;
    let mut reqs: Vec<WriteRequest> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.into() } else { String::new() },
            write_offset: (i * chunk) as i64,
            finish_write: false,
            data: c.to_vec(),
        })
        .collect();
    reqs.last_mut().unwrap().finish_write = true;
    c.write(futures_util::stream::iter(reqs))
        .await
        .map(|r| r.into_inner().committed_size)
}

/// Polls `cond` every 50 ms until it holds; panics with `what` (and the
/// last value `cond` reported) after `limit`. A bound on a wait, not a
/// performance assertion.
async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let (ok, value) = cond();
        if ok {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what}: still not true after {limit:?} (last seen: {value:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A blob file under `dir/ac` or `dir/cas`.
#[derive(Debug)]
struct BlobFile {
    kind: &'static str,
    hex: String,
    path: PathBuf,
    len: u64,
}

/// Every blob file under `dir/ac/xx/` and `dir/cas/xx/` (see
/// src/store/disk/layout.rs). Files vanishing during the walk (eviction)
/// are skipped.
fn blob_files(dir: &Path) -> Vec<BlobFile> {
    let mut out = Vec::new();
    for kind in ["ac", "cas"] {
        let Ok(shards) = std::fs::read_dir(dir.join(kind)) else {
            continue;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let Ok(meta) = file.metadata() else { continue };
                let name = file.file_name().to_string_lossy().into_owned();
                let hex = name.strip_suffix(".zst").unwrap_or(&name).to_string();
                out.push(BlobFile {
                    kind,
                    hex,
                    path: file.path(),
                    len: meta.len(),
                });
            }
        }
    }
    out
}

/// Bytes of all blob files under `dir/ac` and `dir/cas`.
fn disk_usage(dir: &Path) -> u64 {
    blob_files(dir).iter().map(|f| f.len).sum()
}

fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The soft RLIMIT_NOFILE of process `pid`, from `/proc/<pid>/limits`.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into())
}

/// A normal client's PUT and GET of a fresh blob, on a new connection:
/// proof that the server still serves others while abuse goes on.
async fn normal_round_trip(s: &Server, seed: u64) {
    let blob = common::noise(64 * KIB + seed as usize, seed);
    let url = format!("{}/cas/{}", s.http_url, hex(&blob));
    let client = http_client();
    let r = client.put(&url).body(blob.clone()).send().await;
    let r = r.unwrap_or_else(|e| panic!("a normal PUT failed while under abuse: {e}"));
    assert_eq!(r.status(), 200, "normal PUT under abuse");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "normal GET under abuse");
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);
}

/// Waits until the server's descriptor count is back to `baseline` (it may
/// dip below: idle keep-alive connections of earlier clients closing).
async fn fds_settle(pid: u32, baseline: usize, what: &str) {
    let n = wait_until(
        &format!("{what}: server file descriptors back to the {baseline} before"),
        Duration::from_secs(60),
        || {
            let n = fd_count(pid);
            (n <= baseline, n)
        },
    )
    .await;
    println!("{what}: server fds {baseline} before, {n} after");
}

// ------------------------------------------------------------- kill -9

/// A write the server acknowledged (HTTP 200, gRPC OK) before the kill.
#[derive(Debug, Clone)]
enum Acked {
    Cas { hex: String, len: usize },
    Ac { key: String, body: Vec<u8> },
}

/// The blob worker `w` writes in its `i`-th iteration: sizes cycle through
/// small, medium, over 1 MiB and over 3 MiB; half compressible.
fn load_blob(w: u64, i: u64) -> Vec<u8> {
    const SIZES: [usize; 6] = [KIB, 37 * KIB, 1536 * KIB + 5, 300 * KIB, 3 * MIB + 17, 0];
    let seed = w * 1_000_000 + i + 1;
    let len = match SIZES[(i as usize + w as usize) % SIZES.len()] {
        0 => 100 + (seed as usize % 4000),
        n => n,
    };
    if (i + w).is_multiple_of(2) {
        common::noise(len, seed)
    } else {
        text(len, seed)
    }
}

/// One HTTP writer: CAS blobs, and every fourth round an ActionResult
/// that references the writer's last acknowledged blob.
async fn http_writer(
    w: u64,
    url: String,
    acked: Arc<Mutex<Vec<Acked>>>,
    killed: Arc<AtomicBool>,
    early_errors: Arc<Mutex<Vec<String>>>,
) {
    let client = http_client();
    let mut last: Option<(String, usize)> = None;
    for i in 0.. {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let (path, body, record) = match (&last, i % 4) {
            (Some((h, len)), 3) => {
                let ar = re::ActionResult {
                    output_files: vec![re::OutputFile {
                        path: format!("out/{w}/{i}"),
                        digest: Some(re::Digest {
                            hash: h.clone(),
                            size_bytes: *len as i64,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let key = hex(format!("action {w} {i}").as_bytes());
                let body = ar.encode_to_vec();
                let record = Acked::Ac {
                    key: key.clone(),
                    body: body.clone(),
                };
                (format!("/ac/{key}"), body, record)
            }
            _ => {
                let blob = load_blob(w, i);
                let record = Acked::Cas {
                    hex: hex(&blob),
                    len: blob.len(),
                };
                (format!("/cas/{}", hex(&blob)), blob, record)
            }
        };
        match client.put(format!("{url}{path}")).body(body).send().await {
            Ok(r) if r.status() == 200 => {
                if let Acked::Cas { hex, len } = &record {
                    last = Some((hex.clone(), *len));
                }
                acked.lock().unwrap().push(record);
            }
            other => {
                if !killed.load(Ordering::SeqCst) {
                    early_errors
                        .lock()
                        .unwrap()
                        .push(format!("HTTP writer {w}: {path}: {other:?}"));
                }
                return;
            }
        }
    }
}

/// One ByteStream writer.
async fn grpc_writer(
    w: u64,
    channel: Channel,
    acked: Arc<Mutex<Vec<Acked>>>,
    killed: Arc<AtomicBool>,
    early_errors: Arc<Mutex<Vec<String>>>,
) {
    let mut client = bytestream(channel);
    for i in 0.. {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let blob = load_blob(w, i);
        let name = upload_name(&blob, w * 1_000_000 + i);
        match bytestream_write(&mut client, &name, &blob).await {
            Ok(n) if n == blob.len() as i64 => acked.lock().unwrap().push(Acked::Cas {
                hex: hex(&blob),
                len: blob.len(),
            }),
            other => {
                if !killed.load(Ordering::SeqCst) {
                    early_errors
                        .lock()
                        .unwrap()
                        .push(format!("ByteStream writer {w}: {name}: {other:?}"));
                }
                return;
            }
        }
    }
}

/// Waits for the background reconciliation that follows an unclean stop
/// (src/store/disk/recovery.rs). `/status` does not report it, so this
/// watches the log line the recovery thread writes when it ends.
async fn wait_for_recovery(s: &Server) -> String {
    wait_until(
        "the server logs `recovery finished` after an unclean stop",
        Duration::from_secs(120),
        || {
            let (_, err) = s.output();
            let line = err
                .lines()
                .find(|l| l.contains("recovery finished") || l.contains("recovery failed"))
                .map(str::to_string);
            (line.is_some(), line)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    const HTTP_WRITERS: u64 = 13;
    const GRPC_WRITERS: u64 = 3;
    /// Acknowledged writes to wait for before the kill.
    const ACKS_BEFORE_KILL: usize = 150;
    let dir = tempfile::Builder::new()
        .prefix("bazel-cache-faults-kill.")
        .tempdir()
        .unwrap();
    // Default fsync (true) and storage mode (zstd): what users run.
    let args = ["--grpc_address", "127.0.0.1:0", "--max_size", "4"];
    let server = Server::start_with_dir(dir.path(), &args);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let early_errors = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..HTTP_WRITERS {
        workers.push(tokio::spawn(http_writer(
            w,
            server.http_url.clone(),
            acked.clone(),
            killed.clone(),
            early_errors.clone(),
        )));
    }
    for w in HTTP_WRITERS..HTTP_WRITERS + GRPC_WRITERS {
        // One connection per writer, as separate Bazel clients would have.
        let channel = grpc_channel(&server).await;
        workers.push(tokio::spawn(grpc_writer(
            w,
            channel,
            acked.clone(),
            killed.clone(),
            early_errors.clone(),
        )));
    }

    wait_until(
        "writers acknowledged enough writes",
        Duration::from_secs(120),
        || {
            let n = acked.lock().unwrap().len();
            let errors = early_errors.lock().unwrap().clone();
            assert!(
                errors.is_empty(),
                "writes failed before the kill: {errors:#?}"
            );
            (n >= ACKS_BEFORE_KILL, n)
        },
    )
    .await;
    // SIGKILL with all 16 writers mid-request. Acks that arrive from now
    // on were sent before the process died, so they count too.
    let pid = server.pid();
    killed.store(true, Ordering::SeqCst);
    kill_now(pid);
    drop(server);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let errors = early_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "writes failed before the kill: {errors:#?}"
    );
    let files_at_kill = blob_files(dir.path()).len();
    println!(
        "killed with {} acknowledged writes, {files_at_kill} blob files and {} temp files on disk",
        acked.len(),
        temp_files(dir.path())
    );

    let started = Instant::now();
    let server = Server::start_with_dir(dir.path(), &args);
    println!(
        "restart after kill -9: serving after {:?} (recovery runs in the background)",
        started.elapsed()
    );
    let recovery = wait_for_recovery(&server).await;
    println!(
        "recovery done {:?} after the restart: {recovery}",
        started.elapsed()
    );
    assert!(
        recovery.contains("ran: true"),
        "the restart after kill -9 must reconcile: {recovery}"
    );

    // No acknowledged write is lost, and each is served intact.
    let client = http_client();
    for a in &acked {
        match a {
            Acked::Cas { hex: h, len } => {
                let r = client
                    .get(format!("{}/cas/{h}", server.http_url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "acknowledged CAS blob {h} ({len} bytes) lost"
                );
                let body = r.bytes().await.unwrap();
                assert_eq!(body.len(), *len, "CAS blob {h}: wrong length");
                assert_eq!(hex(&body), *h, "CAS blob {h}: corrupt");
            }
            Acked::Ac { key, body } => {
                let r = client
                    .get(format!("{}/ac/{key}", server.http_url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "acknowledged AC entry {key} lost");
                assert_eq!(&r.bytes().await.unwrap()[..], &body[..], "AC entry {key}");
            }
        }
    }

    // The index agrees with the files: every file is served and intact
    // (including writes that were in flight at the kill), and /status
    // counts exactly the files on disk.
    let files = blob_files(dir.path());
    let mut served = 0;
    for f in &files {
        let r = client
            .get(format!("{}/{}/{}", server.http_url, f.kind, f.hex))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{} is on disk but not served",
            f.path.display()
        );
        let body = r.bytes().await.unwrap();
        if f.kind == "cas" {
            assert_eq!(hex(&body), f.hex, "{} served corrupt", f.path.display());
        } else {
            assert_eq!(
                &body[..],
                &std::fs::read(&f.path).unwrap()[..],
                "{}",
                f.path.display()
            );
        }
        served += 1;
    }
    let st = server.status_async().await;
    let on_disk: u64 = files.iter().map(|f| f.len).sum();
    println!(
        "after recovery: {served} blob files served intact; /status NumFiles {} CurrSize {}; on disk {} files, {on_disk} bytes",
        st["NumFiles"],
        st["CurrSize"],
        files.len()
    );
    assert_eq!(
        st["NumFiles"].as_u64(),
        Some(files.len() as u64),
        "NumFiles vs files on disk: {st}"
    );
    assert_eq!(
        st["CurrSize"].as_u64(),
        Some(on_disk),
        "CurrSize vs bytes on disk: {st}"
    );
    assert_eq!(temp_files(dir.path()), 0, "temp files survived the restart");
    let distinct: HashSet<&str> = acked
        .iter()
        .map(|a| match a {
            Acked::Cas { hex, .. } => hex.as_str(),
            Acked::Ac { key, .. } => key.as_str(),
        })
        .collect();
    assert!(
        files.len() >= distinct.len(),
        "fewer files than acknowledged writes"
    );
    server.stop();
}

/// SIGKILL by pid, while the writers run (`Server`'s Drop would SIGKILL
/// too, but it also waits for the process, which is not needed here).
fn kill_now(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

// ------------------------------------------------------------- eviction

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_concurrent_load_stays_within_max_size_and_serves_whole_blobs() {
    // 4 writers of at most 2 MiB each keep the bytes in flight (reserved)
    // under max_size (10.7 MB), so no write is refused for lack of room.
    const WRITERS: u64 = 4;
    const READERS: u64 = 6;
    const BLOBS_PER_WRITER: u64 = 40;
    const LARGEST: usize = 2 * MIB;
    let server = Server::start(&["--max_size", "0.01"]);
    let max_size = server.status_async().await["MaxSize"].as_u64().unwrap();
    let dir = server.dir.clone();

    // Disk usage sampled from another thread for as long as the load runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, dir) = (stop.clone(), dir.clone());
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(disk_usage(&dir));
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, samples)
        })
    };

    let written: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let written_bytes = Arc::new(AtomicU64::new(0));
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (url, written, bytes) = (
            server.http_url.clone(),
            written.clone(),
            written_bytes.clone(),
        );
        writers.push(tokio::spawn(async move {
            let client = http_client();
            for i in 0..BLOBS_PER_WRITER {
                let seed = w * 1000 + i + 1;
                let len = [64 * KIB, 700 * KIB, LARGEST, 300 * KIB, 1100 * KIB][(i % 5) as usize];
                let blob = common::noise(len - (seed as usize % 1000), seed);
                let h = hex(&blob);
                let r = client
                    .put(format!("{url}/cas/{h}"))
                    .body(blob.clone())
                    .send()
                    .await
                    .unwrap();
                let code = r.status();
                assert_eq!(code, 200, "PUT {h}: {}", r.text().await.unwrap());
                bytes.fetch_add(blob.len() as u64, Ordering::Relaxed);
                written.lock().unwrap().push((h, blob.len()));
            }
        }));
    }
    // Readers fetch random blobs written so far, most of them evicted or
    // about to be; half read slowly so eviction overtakes them mid-body.
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (url, written, done) = (
            server.http_url.clone(),
            written.clone(),
            writers_done.clone(),
        );
        readers.push(tokio::spawn(async move {
            let client = http_client();
            let (mut whole, mut missing) = (0u64, 0u64);
            let mut x = r * 7919 + 1;
            while !done.load(Ordering::SeqCst) {
                let pick = {
                    let w = written.lock().unwrap();
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly recent blobs (likely present), some old ones.
                    let n = w.len();
                    if n == 0 {
                        None
                    } else if x % 3 == 0 {
                        Some(w[x as usize % n].clone())
                    } else {
                        Some(w[n - 1 - (x as usize % n.min(8))].clone())
                    }
                };
                let Some((h, len)) = pick else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let resp = client.get(format!("{url}/cas/{h}")).send().await.unwrap();
                match resp.status().as_u16() {
                    404 => missing += 1,
                    200 => {
                        let mut body = Vec::with_capacity(len);
                        let mut stream = resp.bytes_stream();
                        while let Some(chunk) = stream.next().await {
                            let chunk = chunk.unwrap_or_else(|e| {
                                panic!("GET {h}: body broken after {} bytes: {e}", body.len())
                            });
                            body.extend_from_slice(&chunk);
                            if r % 2 == 0 {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        assert_eq!(body.len(), len, "GET {h}: truncated");
                        assert_eq!(hex(&body), h, "GET {h}: corrupt");
                        whole += 1;
                    }
                    other => panic!("GET {h}: unexpected {other}"),
                }
            }
            (whole, missing)
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    let (mut whole, mut missing) = (0, 0);
    for r in readers {
        let (w, m) = r.await.unwrap();
        whole += w;
        missing += m;
    }
    stop.store(true, Ordering::SeqCst);
    let (peak, samples) = sampler.join().unwrap();
    let written_bytes = written_bytes.load(Ordering::Relaxed);
    println!(
        "eviction: wrote {written_bytes} bytes into max_size {max_size}; disk usage peak {peak} over {samples} samples (limit + one blob = {}); reads: {whole} whole, {missing} not found",
        max_size + LARGEST as u64
    );
    assert!(written_bytes > 5 * max_size, "the load must force eviction");
    assert!(whole > 0, "no read was served: the readers tested nothing");
    // zstd storage (the default) of incompressible data adds a few bytes
    // of framing per blob.
    assert!(
        peak <= max_size + LARGEST as u64 + 4 * KIB as u64,
        "disk usage peaked at {peak} bytes: over max_size {max_size} by more than one blob ({LARGEST} bytes)"
    );

    let st = server.status_async().await;
    let files = blob_files(&dir);
    let on_disk: u64 = files.iter().map(|f| f.len).sum();
    assert!(st["CurrSize"].as_u64().unwrap() <= max_size, "{st}");
    assert_eq!(st["CurrSize"].as_u64(), Some(on_disk), "{st}");
    assert_eq!(st["NumFiles"].as_u64(), Some(files.len() as u64), "{st}");
    assert_eq!(st["ReservedSize"].as_u64(), Some(0), "{st}");
    assert_eq!(temp_files(&dir), 0);
}

// ------------------------------------------------ slow and abusive clients

/// Opens a connection and sends a request head one byte every `every`,
/// forever; returns when the server closes the connection (or after
/// `give_up`), telling whether it was the server that closed it.
async fn slowloris(addr: String, head: Vec<u8>, every: Duration, give_up: Duration) -> bool {
    let Ok(conn) = TcpStream::connect(&addr).await else {
        return false;
    };
    let (mut rd, mut wr) = conn.into_split();
    let deadline = tokio::time::Instant::now() + give_up;
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                // A response (408) may come before the close; keep reading.
                Ok(n) if n > 0 => continue,
                _ => return true,
            },
            _ = tokio::time::sleep(every) => {
                let byte = head.get(sent % head.len()).copied().unwrap_or(b'a');
                if wr.write_all(&[byte]).await.is_err() {
                    return true;
                }
                sent += 1;
            }
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_dropped_and_do_not_block_others() {
    const CONNECTIONS: usize = 200;
    // The header timeout, shortened from its 30 s default to keep the test short.
    let server = Server::start(&["--http_read_timeout", "2s"]);
    let pid = server.pid();
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, rss) = (fd_count(pid), rss_kib(pid));

    // A request line and headers that never end: "X-Pad: aaaa...".
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nX-Pad: ",
        hex(b"never sent")
    )
    .into_bytes();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(slowloris(
            server.http_addr().to_string(),
            head.clone(),
            Duration::from_millis(100),
            Duration::from_secs(60),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    normal_round_trip(&server, 2).await;
    let peak_fds = fd_count(pid);
    let mut closed_by_server = 0;
    for t in tasks {
        closed_by_server += usize::from(t.await.unwrap());
    }
    println!(
        "slowloris: {closed_by_server}/{CONNECTIONS} connections closed by the server; fds {fds} -> {peak_fds}; RSS {rss} KiB -> {} KiB",
        rss_kib(pid)
    );
    assert_eq!(
        closed_by_server, CONNECTIONS,
        "connections still dribbling headers after 60 s were not closed (http_read_timeout 2s)"
    );
    normal_round_trip(&server, 3).await;
    fds_settle(pid, fds, "slowloris").await;
}

/// Sends a PUT head announcing `len` bytes and then `send` bytes of body.
async fn partial_put(s: &Server, blob: &[u8], send: usize) -> TcpStream {
    let mut conn = TcpStream::connect(s.http_addr()).await.unwrap();
    let head = format!(
        "PUT /cas/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        hex(blob),
        blob.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&blob[..send]).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_upload_does_not_block_others_and_leaves_nothing_when_dropped() {
    let server = Server::start(&[]);
    let pid = server.pid();
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, files) = (
        fd_count(pid),
        server.status_async().await["NumFiles"].clone(),
    );

    let blob = common::noise(4 * MIB, 77);
    let stalled = partial_put(&server, &blob, 256 * KIB).await;
    // The write has started: its bytes are reserved and a temp file exists.
    let dir = server.dir.clone();
    wait_until(
        "the stalled upload has a temp file",
        Duration::from_secs(30),
        || (temp_files(&dir) == 1, temp_files(&dir)),
    )
    .await;
    let reserved = server.status_async().await["ReservedSize"]
        .as_u64()
        .unwrap();
    assert_eq!(
        reserved,
        blob.len() as u64,
        "the stalled upload's reservation"
    );
    // Others are served while it stalls (here for 3 s).
    for i in 0..3 {
        normal_round_trip(&server, 10 + i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(stalled);
    wait_until(
        "the dropped upload's temp file is removed",
        Duration::from_secs(30),
        || (temp_files(&dir) == 0, temp_files(&dir)),
    )
    .await;
    let st = server.status_async().await;
    assert_eq!(
        st["ReservedSize"].as_u64(),
        Some(0),
        "reservation kept: {st}"
    );
    assert_eq!(
        st["NumFiles"].as_u64().unwrap(),
        files.as_u64().unwrap() + 3,
        "only the three normal blobs were added: {st}"
    );
    let r = http_client()
        .head(format!("{}/cas/{}", server.http_url, hex(&blob)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a partial upload became visible");
    fds_settle(pid, fds, "stalled upload").await;
}

/// `http_read_timeout` is documented as the time allowed to read a client
/// request (bazel-remote: Go's `ReadTimeout`, which covers the body). A
/// client that stops sending mid-body should lose its connection, temp
/// file, reservation and write slot once it passes; otherwise a few
/// stalled uploads (as many as `max_concurrent_writes`) starve every other
/// writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn http_read_timeout_cuts_stalled_uploads_and_frees_their_write_slots() {
    const SLOTS: usize = 2;
    let server = Server::start(&[
        "--http_read_timeout",
        "2s",
        "--max_concurrent_writes",
        &SLOTS.to_string(),
    ]);
    let dir = server.dir.clone();
    let mut stalled = Vec::new();
    for i in 0..SLOTS {
        stalled.push(partial_put(&server, &common::noise(2 * MIB, 78 + i as u64), 64 * KIB).await);
    }
    wait_until(
        "every stalled upload holds a temp file",
        Duration::from_secs(30),
        || (temp_files(&dir) == SLOTS, temp_files(&dir)),
    )
    .await;
    // Another writer needs a slot that only the timeout can free.
    normal_round_trip(&server, 1).await;
    for (i, conn) in stalled.iter_mut().enumerate() {
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            let mut answer = Vec::new();
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await;
        let answer = closed.unwrap_or_else(|_| {
            panic!("stalled upload {i} is still open 60 s later with http_read_timeout 2s")
        });
        println!("stalled upload {i} answered: {answer:?}");
    }
    wait_until(
        "temp files of the cut uploads removed",
        Duration::from_secs(30),
        || (temp_files(&dir) == 0, temp_files(&dir)),
    )
    .await;
    assert_eq!(
        server.status_async().await["ReservedSize"].as_u64(),
        Some(0),
        "reservations of the cut uploads kept"
    );
}

/// Raises this process's soft RLIMIT_NOFILE to `want` (or the hard limit).
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_idle_connections_neither_block_others_nor_leak() {
    const IDLE: usize = 10_000;
    // The server starts with the limits of the environment (it inherits
    // ours before we raise them): what a deployment would give it.
    let server = Server::start(&[]);
    let pid = server.pid();
    let server_limit = open_files_limit(pid);
    let ours = raise_nofile(IDLE as u64 + 1000);
    assert!(
        ours >= IDLE as u64 + 200,
        "this test needs {} file descriptors for its client side; the hard limit allows {ours}",
        IDLE + 200
    );
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, rss_start) = (fd_count(pid), rss_kib(pid));
    println!("server: soft RLIMIT_NOFILE {server_limit}, {fds} fds, RSS {rss_start} KiB at start");

    let mut rss_after = Vec::new();
    for round in 0..2 {
        let mut conns = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            conns.push(TcpStream::connect(server.http_addr()).await.unwrap());
        }
        // Connected is not accepted: wait until the server holds them all.
        wait_until(
            &format!(
                "the server accepts {IDLE} idle connections (its soft RLIMIT_NOFILE is {server_limit})"
            ),
            Duration::from_secs(60),
            || {
                let n = fd_count(pid);
                (n >= fds + IDLE, n)
            },
        )
        .await;
        let rss_open = rss_kib(pid);
        normal_round_trip(&server, 100 + round).await;
        drop(conns);
        fds_settle(pid, fds + 1, "10,000 idle connections").await;
        // Freed memory returns to the allocator, not always to the kernel:
        // compare rounds, so only growth per round (a leak) counts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_kib(pid);
        println!(
            "round {round}: RSS {rss_open} KiB with {IDLE} idle connections, {rss} KiB after closing them"
        );
        rss_after.push(rss);
    }
    assert!(
        rss_after[1] <= rss_after[0] + 32 * 1024,
        "RSS grew from {} KiB to {} KiB between two identical rounds of {IDLE} connections",
        rss_after[0],
        rss_after[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_disconnect_mid_stream_leave_nothing_behind() {
    const ROUNDS: u64 = 20;
    let server = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let pid = server.pid();
    let dir = server.dir.clone();
    let big = common::noise(16 * MIB, 5);
    let big_hex = hex(&big);
    let r = http_client()
        .put(format!("{}/cas/{big_hex}", server.http_url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    normal_round_trip(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, rss) = (fd_count(pid), rss_kib(pid));
    let files = server.status_async().await["NumFiles"].as_u64().unwrap();

    let channel = grpc_channel(&server).await;
    for round in 0..ROUNDS {
        // HTTP upload: 1 MiB of a 4 MiB body, then gone.
        let blob = common::noise(4 * MIB, 1000 + round);
        let conn = partial_put(&server, &blob, MIB).await;
        drop(conn);

        // HTTP download: the head and 64 KiB of a 16 MiB body, then gone.
        let mut conn = TcpStream::connect(server.http_addr()).await.unwrap();
        let get = format!("GET /cas/{big_hex} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.write_all(get.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * KIB];
        conn.read_exact(&mut buf).await.unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 200"), "GET of the big blob");
        drop(conn);

        // ByteStream Read: the first message, then the call is dropped.
        let mut client = bytestream(channel.clone());
        let mut stream = client
            .read(ReadRequest {
                resource_name: format!("blobs/{big_hex}/{}", big.len()),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!stream.message().await.unwrap().unwrap().data.is_empty());
        drop(stream);
    }

    // ByteStream Write cut off mid-stream: resumable by design (the server
    // keeps it for the client to resume), then resumed to completion.
    let blob = common::noise(3 * MIB, 99);
    let name = upload_name(&blob, 99);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let mut writer = bytestream(channel.clone());
    let call =
        tokio::spawn(async move {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            writer.write(stream).await
        });
    tx.send(WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: blob[..MIB].to_vec(),
    })
    .await
    .unwrap();
    let mut query = bytestream(channel.clone());
    let mut seen = 0;
    for _ in 0..600 {
        if let Ok(r) = query
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
        {
            seen = r.into_inner().committed_size;
            if seen == MIB as i64 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen, MIB as i64,
        "QueryWriteStatus of the interrupted upload"
    );
    call.abort();
    drop(tx);
    let _ = call.await;
    let mut resume: Vec<WriteRequest> = blob[MIB..]
        .chunks(64 * KIB)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (MIB + i * 64 * KIB) as i64,
            finish_write: false,
            data: c.to_vec(),
        })
        .collect();
    resume.last_mut().unwrap().finish_write = true;
    // A resuming stream takes over even if the server has not yet noticed
    // that the old one is gone.
    let committed = query
        .write(futures_util::stream::iter(resume))
        .await
        .unwrap_or_else(|e| panic!("resuming the interrupted upload: {e}"))
        .into_inner()
        .committed_size;
    assert_eq!(committed, blob.len() as i64, "resumed upload");

    normal_round_trip(&server, 2).await;
    drop((channel, query));
    wait_until(
        "temp files of abandoned HTTP uploads removed",
        Duration::from_secs(30),
        || (temp_files(&dir) == 0, temp_files(&dir)),
    )
    .await;
    let st = server.status_async().await;
    assert_eq!(st["ReservedSize"].as_u64(), Some(0), "{st}");
    assert_eq!(
        st["NumFiles"].as_u64(),
        Some(files + 2),
        "only the resumed upload and one normal blob were added: {st}"
    );
    fds_settle(pid, fds, "disconnects mid-stream").await;
    println!(
        "disconnects: RSS {rss} KiB before, {} KiB after",
        rss_kib(pid)
    );
}
