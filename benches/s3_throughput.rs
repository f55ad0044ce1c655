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
//! Bodies are compared with the blobs sent in every pass, and hashed in the
//! latency pass (outside the timed part).
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

use support::{blobs, env_num, env_or, percentile};

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bazel_cache::config;
use bazel_cache::digest::Hash;
use bazel_cache::server::Server;

const MIB: f64 = 1024.0 * 1024.0;
const BLOB_SIZE: usize = 1 << 20;
const INSTALL_HINT: &str = "install it with `cargo install s3s-fs@0.14.1 --locked --features binary`, or point S3S_FS at the binary";

// ---------------------------------------------------------------- s3s-fs

/// A running `s3s-fs` with one bucket; killed on drop.
struct S3Fs {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
    root: tempfile::TempDir,
    logdir: tempfile::TempDir,
    child: Option<Child>,
}

fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            eprintln!("S3S_FS={} does not exist; {INSTALL_HINT}", p.display());
            std::process::exit(2);
        }
        return p;
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(cargo_home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(p) => p,
        None => {
            eprintln!(
                "s3_throughput needs s3s-fs (a local S3 server), which is not installed: {INSTALL_HINT}"
            );
            std::process::exit(2);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl S3Fs {
    fn start() -> S3Fs {
        let bin = s3s_fs_binary();
        let root = tempfile::Builder::new()
            .prefix("bench-s3.")
            .tempdir()
            .expect("create the s3s-fs root");
        let logdir = tempfile::Builder::new()
            .prefix("bench-s3-log.")
            .tempdir()
            .expect("create the s3s-fs log dir");
        let bucket = "bench".to_owned();
        std::fs::create_dir(root.path().join(&bucket)).expect("create the bucket directory");
        let mut s3 = S3Fs {
            endpoint: String::new(),
            access_key: "AKIABENCHBAZELCACHE".to_owned(),
            secret_key: "bench/Secret+Key/0123456789abcdefghijklmn".to_owned(),
            bucket,
            root,
            logdir,
            child: None,
        };
        // Another process may take the port between probing and binding.
        for attempt in 1..=5 {
            let port = free_port();
            s3.endpoint = format!("127.0.0.1:{port}");
            match s3.spawn(&bin, port) {
                Ok(()) => return s3,
                Err(e) if attempt < 5 => eprintln!("s3s-fs start attempt {attempt}: {e}"),
                Err(e) => panic!("s3s-fs did not start: {e}\n{}", s3.log()),
            }
        }
        unreachable!()
    }

    fn spawn(&mut self, bin: &Path, port: u16) -> Result<(), String> {
        let log = std::fs::File::create(self.logdir.path().join("s3s-fs.log"))
            .map_err(|e| format!("create log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut child = Command::new(bin)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(self.root.path())
            .env("RUST_LOG", env_or("S3S_FS_LOG", "warn"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("run {}: {e}", bin.display()))?;
        let addr: SocketAddr = self.endpoint.parse().expect("endpoint is an address");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("s3s-fs exited with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{addr} not accepting after 20 s"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.logdir.path().join("s3s-fs.log")).unwrap_or_default()
    }

    /// Objects in the bucket whose name is a SHA-256 (CAS objects).
    fn cas_objects(&self) -> usize {
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
        walk(&self.root.path().join(&self.bucket), &mut n);
        n
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Fs {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            let log = self.log();
            if !log.trim().is_empty() {
                eprintln!("--- s3s-fs log ---\n{log}--- end of s3s-fs log ---");
            }
        }
        self.stop();
    }
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

async fn start_server(s3: &S3Fs, settings: &Settings) -> Running {
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

struct Phase {
    requests: usize,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Phase {
    fn print(&mut self, name: &str) {
        self.latencies.sort();
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{name:<34} {:>7.1} blobs/s {:>8.1} MiB/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {:.2} s)",
            self.requests as f64 / secs,
            self.bytes as f64 / secs / MIB,
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.99)),
            self.requests,
            secs,
        );
    }
}

/// Runs `op(i)` for every `i < count` from `concurrency` tasks.
async fn run_phase<F, Fut>(concurrency: usize, count: usize, op: F) -> Phase
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
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
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
        requests: latencies.len(),
        bytes,
        elapsed: start.elapsed(),
        latencies,
    }
}

type Blobs = Arc<Vec<(String, bytes::Bytes)>>;

async fn put_all(client: &reqwest::Client, base: &str, set: &Blobs, concurrency: usize) -> Phase {
    let (c, b, s) = (client.clone(), base.to_owned(), set.clone());
    run_phase(concurrency, set.len(), move |i| {
        let (c, b, s) = (c.clone(), b.clone(), s.clone());
        async move {
            let (h, body) = &s[i];
            let r = c
                .put(format!("{b}/cas/{h}"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "PUT /cas/{h}");
            body.len() as u64
        }
    })
    .await
}

/// GETs every blob of `set`, checking each body against what was sent.
async fn get_all(client: &reqwest::Client, base: &str, set: &Blobs, concurrency: usize) -> Phase {
    let (c, b, s) = (client.clone(), base.to_owned(), set.clone());
    run_phase(concurrency, set.len(), move |i| {
        let (c, b, s) = (c.clone(), b.clone(), s.clone());
        async move {
            let (h, want) = &s[i];
            let r = c.get(format!("{b}/cas/{h}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "GET /cas/{h}");
            let got = r.bytes().await.unwrap();
            assert!(
                got == *want,
                "GET /cas/{h}: wrong body ({} bytes)",
                got.len()
            );
            got.len() as u64
        }
    })
    .await
}

/// One timed GET; the body is read completely inside the timer and its
/// SHA-256 checked outside it.
async fn timed_get(client: &reqwest::Client, base: &str, hash: &str) -> Duration {
    let t = Instant::now();
    let r = client
        .get(format!("{base}/cas/{hash}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET /cas/{hash}");
    let body = r.bytes().await.unwrap();
    let elapsed = t.elapsed();
    assert_eq!(
        Hash::of(&body).to_hex(),
        hash,
        "GET /cas/{hash}: wrong body"
    );
    elapsed
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

    let s3 = S3Fs::start();
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
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let set: Blobs = Arc::new(blobs(n, BLOB_SIZE, 0x5eed_0001));
    let fresh: Blobs = Arc::new(blobs(samples, BLOB_SIZE, 0x5eed_0002));
    let total_mib = n as f64 * BLOB_SIZE as f64 / MIB;

    // 1. Upload: PUTs to A, then A's write-behind queue drains into S3.
    let a = start_server(&s3, &settings).await;
    let started = Instant::now();
    let mut put = put_all(&client, &a.base, &set, concurrency).await;
    let acked = Instant::now();
    let (drained, st_a) = wait_drained(&client, &a.base, n as u64, drain_timeout).await;
    let drain = drained - started;
    println!("\n== upload: PUT {n} blobs to A, drain into S3");
    put.print("client PUT (acknowledged locally)");
    println!(
        "{:<34} {:>7.1} blobs/s {:>8.1} MiB/s   first PUT → queue empty {:.2} s (last ack → empty {:.2} s)",
        "drain into S3",
        n as f64 / drain.as_secs_f64(),
        total_mib / drain.as_secs_f64(),
        drain.as_secs_f64(),
        (drained - acked).as_secs_f64(),
    );
    let in_bucket = s3.cas_objects();
    println!("A Backend: {}", st_a["Backend"]);
    println!("CAS objects in the bucket: {in_bucket}");
    assert_eq!(counter(&st_a, "UploadsDone"), n as u64, "A: {st_a}");
    assert_eq!(in_bucket, n, "every uploaded blob is an object in S3");

    // Fresh blobs for the latency phase, uploaded through A too.
    put_all(&client, &a.base, &fresh, concurrency).await;
    let (_, st_a) = wait_drained(&client, &a.base, (n + samples) as u64, drain_timeout).await;
    assert_eq!(
        counter(&st_a, "UploadsDone"),
        (n + samples) as u64,
        "A: {st_a}"
    );
    a.stop().await;

    // 2. Read-through: B has an empty disk; every GET is a local miss.
    let b = start_server(&s3, &settings).await;
    let mut miss = get_all(&client, &b.base, &set, concurrency).await;
    let st_b = status(&client, &b.base).await;
    let mut hit = get_all(&client, &b.base, &set, concurrency).await;
    let st_b2 = status(&client, &b.base).await;
    println!("\n== read-through: GET {n} blobs from B (empty disk), then again");
    miss.print("GET, local miss → S3 (read-through)");
    hit.print("GET, local hit");
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
    let warm: Blobs = Arc::new(set[..samples].to_vec());
    get_all(&client, &c.base, &warm, 1).await;
    let mut miss_lat = Vec::with_capacity(samples);
    let mut hit_lat = Vec::with_capacity(samples);
    for i in 0..samples {
        miss_lat.push(timed_get(&client, &c.base, &fresh[i].0).await);
        hit_lat.push(timed_get(&client, &c.base, &warm[i].0).await);
    }
    let st_c = status(&client, &c.base).await;
    assert_eq!(counter(&st_c, "Hits"), (2 * samples) as u64, "C: {st_c}");
    assert_eq!(counter(&st_c, "UploadsDone"), 0, "C: {st_c}");
    c.stop().await;
    if std::env::var_os("BENCH_DUMP_LATENCIES").is_some() {
        let show = |lat: &[Duration]| {
            lat.iter()
                .map(|d| format!("{:.1}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("\nmiss latencies (ms, in order): {}", show(&miss_lat));
        println!("hit latencies (ms, in order): {}", show(&hit_lat));
    }
    miss_lat.sort();
    hit_lat.sort();
    println!(
        "\n== latency: {samples} sequential GETs on C, miss (S3 → verify → store → serve) vs local hit"
    );
    for (name, lat) in [
        ("GET miss (read-through)", &miss_lat),
        ("GET local hit", &hit_lat),
    ] {
        println!(
            "{name:<34} p50 {:>7.2} ms   p99 {:>7.2} ms   (min {:.2}, p10 {:.2}, p90 {:.2}, mean {:.2} ms)",
            ms(percentile(lat, 0.50)),
            ms(percentile(lat, 0.99)),
            ms(lat[0]),
            ms(percentile(lat, 0.10)),
            ms(percentile(lat, 0.90)),
            ms(lat.iter().sum::<Duration>() / lat.len() as u32),
        );
    }
    println!(
        "{:<34} p50 {:>+7.2} ms   p99 {:>+7.2} ms",
        "added by a read-through miss",
        ms(percentile(&miss_lat, 0.50)) - ms(percentile(&hit_lat, 0.50)),
        ms(percentile(&miss_lat, 0.99)) - ms(percentile(&hit_lat, 0.99)),
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
