//! Hostile clients against the real server binary, each next to a
//! well-behaved one that PUTs and GETs a 1 KiB blob over HTTP every 50 ms:
//! what the attack costs that client (p50/p99 of its PUT+GET pairs, a
//! failed one counting with the time it took to fail; its errors and its
//! pairs, at most 20 a second, fewer when it waits), the server's resident
//! memory (peak during the attack, and 5 s after the attack ended), its
//! open file descriptors, and a figure of the attack's own. The attacks of
//! the issue "Every resource bounded":
//!
//! 1. 50 TCP connections that send nothing and 50 that send half an HTTP/2
//!    preface, on each port: how many are still open after
//!    BENCH_HOLD_SECONDS (20).
//! 2. 300 HTTP PUTs declaring 4096 bytes and sending 1 byte/s for
//!    BENCH_HOLD_SECONDS: how many bodies the server cut, how many temp
//!    files they held.
//! 3. 300 ByteStream Writes started (one 64 KiB message of a 1 MiB blob)
//!    and abandoned: half keep their stream open and silent, half lose
//!    their connection after a second. How many silent ones the server
//!    cut, how many temp files the uploads held.
//! 4. 96 concurrent HTTP PUTs of a ~260 KiB zstd frame that declares a
//!    128 MiB window and no content size, and inflates to BENCH_BOMB_MIB
//!    (136); its last 4 bytes come 5 s after the rest, so that the
//!    server's decoders all hold a full window at once (sent whole, a
//!    server with few cores decodes them almost one after the other).
//!    Each of the 96 sends another as soon as one is answered, for 10 s.
//!    The answers and how long they took.
//! 5. One HTTP/2 connection with 3,000 ByteStream Reads of a 1 MiB blob,
//!    each stream's flow-control window 64 bytes and never opened further
//!    (a client that stops reading), held for BENCH_HOLD_SECONDS: how many
//!    streams the server took on; its memory while they are stuck and after
//!    the connection closed. The Reads go out at most 64 unanswered at a
//!    time (h2 sends GOAWAY to a peer whose small DATA frames pile up
//!    unread, which is not this attack) until the server stops answering.
//! 6. 4 concurrent BatchUpdateBlobs of 50,000 8-byte blobs: the answers.
//! 7. 16 clients sending wrong passwords, a new one each request (bcrypt
//!    cost BENCH_BCRYPT_COST, 10): how many 401s a second.
//!
//! 0 is the baseline: the good client alone for 5 s.
//!
//! Every attack runs against a fresh server (so its peaks are the
//! attack's), is bounded in count and time, talks to 127.0.0.1 only and
//! stops by itself; a server whose memory passes BENCH_RSS_CAP_MIB (8192)
//! is killed, and its row says so. The whole run takes about 4 minutes.
//!
//! Run: `cargo bench --bench hostile` (BENCH_ATTACKS=1,3 for a subset;
//! BENCH_SERVER to measure another build; the server's log goes to a file,
//! BENCH_KEEP_LOGS=1 keeps them and prints where).

mod support;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_cache::auth::basic_header;
use bazel_cache_digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use futures_util::StreamExt;
use support::flood::{Flood, FloodCounts, flooder, write_htpasswd};
use support::good_client::{GoodClient, GoodFigures};
use support::watch::Watch;
use support::{ServerProcess, env_list, env_num, fd_count, has_flag, server_help};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

/// How often the good client does its PUT+GET.
const GOOD_EVERY: Duration = Duration::from_millis(50);
/// How long the baseline runs.
const BASELINE: Duration = Duration::from_secs(5);
/// When "after" is measured, from the end of an attack.
const AFTER: Duration = Duration::from_secs(5);
/// The longest the bench waits for the answers of attacks 4 and 6.
const ANSWERS_WITHIN: Duration = Duration::from_secs(30);
/// How long attack 7 floods.
const FLOOD_FOR: Duration = Duration::from_secs(10);

const USER: &str = "builder";
const PASSWORD: &str = "right-password";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    Baseline,
    IdleConnections,
    SlowBodies,
    AbandonedWrites,
    ZstdBombs,
    StuckReads,
    HugeBatches,
    WrongPasswords,
}

impl Attack {
    const ALL: [Attack; 8] = [
        Attack::Baseline,
        Attack::IdleConnections,
        Attack::SlowBodies,
        Attack::AbandonedWrites,
        Attack::ZstdBombs,
        Attack::StuckReads,
        Attack::HugeBatches,
        Attack::WrongPasswords,
    ];

    fn label(self) -> &'static str {
        match self {
            Attack::Baseline => "0 none (baseline)",
            Attack::IdleConnections => "1 silent/half-preface conns 4x50",
            Attack::SlowBodies => "2 PUT bodies at 1 byte/s x300",
            Attack::AbandonedWrites => "3 abandoned Writes x300",
            Attack::ZstdBombs => "4 zstd bombs (128 MiB window) x96",
            Attack::StuckReads => "5 zero-window Reads x3000",
            Attack::HugeBatches => "6 BatchUpdate 50k blobs x4",
            Attack::WrongPasswords => "7 wrong passwords x16",
        }
    }
}

/// Flags of newer builds that bring an attack's bound within the bench's
/// time: passed only to a build whose `--help` lists them, so that older
/// builds run with what they have. The least rate of an upload body is
/// averaged over 30 s by default, longer than attacks 2 and 3 hold (an
/// abandoned Write's 64 KiB cover its first window).
const SHORTER_DEADLINES: &[(Attack, &str, &str)] = &[
    (Attack::SlowBodies, "body_rate_window", "10s"),
    (Attack::AbandonedWrites, "body_rate_window", "5s"),
];

struct Knobs {
    hold: Duration,
    cap_kib: u64,
    bcrypt_cost: usize,
    help: String,
    scratch: PathBuf,
    bomb: Option<bytes::Bytes>,
}

/// The server under attack, as the attacks address it.
struct Target {
    /// `http://127.0.0.1:PORT`
    http: String,
    http_addr: String,
    grpc_addr: String,
    /// The cache directory (its `tmp/` holds the uploads in progress).
    cache: PathBuf,
}

struct Row {
    label: &'static str,
    good: GoodFigures,
    peak_rss_kib: u64,
    after_rss_kib: u64,
    peak_fds: u64,
    after_fds: u64,
    killed: bool,
    figure: String,
}

#[tokio::main]
async fn main() {
    let wanted = env_list("BENCH_ATTACKS", "0,1,2,3,4,5,6,7");
    let attacks: Vec<Attack> = wanted
        .iter()
        .map(|&n| {
            *Attack::ALL.get(n).unwrap_or_else(|| {
                eprintln!("BENCH_ATTACKS: no attack {n} (0 to 7)");
                std::process::exit(2)
            })
        })
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let keep_logs = env_num("BENCH_KEEP_LOGS", 0) != 0;
    let knobs = Knobs {
        hold: Duration::from_secs(env_num("BENCH_HOLD_SECONDS", 20).max(1) as u64),
        cap_kib: env_num("BENCH_RSS_CAP_MIB", 8192) as u64 * 1024,
        bcrypt_cost: env_num("BENCH_BCRYPT_COST", 10),
        help: server_help(),
        scratch: scratch.path().to_path_buf(),
        bomb: attacks
            .contains(&Attack::ZstdBombs)
            .then(|| zstd_bomb(env_num("BENCH_BOMB_MIB", 136)).into()),
    };

    println!(
        "server {}; {} cores; good client: PUT+GET of 1 KiB over HTTP every {} ms",
        support::server_binary().display(),
        support::cores(),
        GOOD_EVERY.as_millis()
    );
    let passed: Vec<String> = SHORTER_DEADLINES
        .iter()
        .filter(|(a, flag, _)| attacks.contains(a) && has_flag(&knobs.help, flag))
        .map(|(a, flag, value)| format!("--{flag}={value} (attack {})", *a as u8))
        .collect();
    if !passed.is_empty() {
        println!("shorter deadlines this build has: {}", passed.join(", "));
    }
    println!(
        "{:<34} {:>8} {:>8} {:>10} {:>9} {:>9} {:>11}  attack figure",
        "attack", "p50 ms", "p99 ms", "err/pairs", "RSS peak", "RSS +5s", "fds peak/+5"
    );
    let mut rows = Vec::new();
    for attack in attacks {
        let row = measure(attack, &knobs).await;
        print_row(&row);
        rows.push(row);
    }
    for row in &rows {
        if let Some(e) = &row.good.first_error {
            println!("{}: the good client's first error: {e}", row.label);
        }
    }
    if keep_logs {
        let kept = scratch.keep();
        println!("server logs: {}/attack-*/server.log", kept.display());
    }
}

fn print_row(r: &Row) {
    let mib = |kib: u64| format!("{} MiB", kib.div_ceil(1024));
    let after = if r.killed {
        "killed".to_string()
    } else {
        mib(r.after_rss_kib)
    };
    let peak = if r.killed {
        format!(">{}", mib(r.peak_rss_kib))
    } else {
        mib(r.peak_rss_kib)
    };
    println!(
        "{:<34} {:>8.1} {:>8.1} {:>10} {:>9} {:>9} {:>11}  {}",
        r.label,
        r.good.p50_ms,
        r.good.p99_ms,
        format!("{}/{}", r.good.errors, r.good.pairs),
        peak,
        after,
        format!("{}/{}", r.peak_fds, r.after_fds),
        r.figure
    );
    let _ = io::stdout().flush();
}

/// One attack against a fresh server, the good client alongside.
async fn measure(attack: Attack, k: &Knobs) -> Row {
    let dir = k.scratch.join(format!("attack-{}", attack as u8));
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut args: Vec<String> = Vec::new();
    let mut authorization = None;
    if attack == Attack::WrongPasswords {
        let htpasswd = dir.join("htpasswd");
        write_htpasswd(&htpasswd, USER, PASSWORD, k.bcrypt_cost);
        args.push("--htpasswd_file".into());
        args.push(htpasswd.display().to_string());
        authorization = Some(basic_header(USER, PASSWORD));
    }
    for (a, flag, value) in SHORTER_DEADLINES {
        if *a == attack && has_flag(&k.help, flag) {
            args.push(format!("--{flag}={value}"));
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start_logging_to(&cache, &argv, &dir.join("server.log"));
    let pid = server.pid();
    let target = Target {
        http: server.http.clone(),
        http_addr: server.http.trim_start_matches("http://").to_string(),
        grpc_addr: server
            .grpc()
            .trim_start_matches("grpc://")
            .trim_start_matches("grpcs://")
            .to_string(),
        cache: cache.clone(),
    };
    let watch = Watch::start(pid, k.cap_kib);
    let good = GoodClient::start(&server.http, authorization, GOOD_EVERY);

    let mut figure = match attack {
        Attack::Baseline => {
            tokio::time::sleep(BASELINE).await;
            String::new()
        }
        Attack::IdleConnections => idle_connections(&target, k.hold).await,
        Attack::SlowBodies => slow_bodies(&target, k.hold).await,
        Attack::AbandonedWrites => abandoned_writes(&target, k.hold).await,
        Attack::ZstdBombs => zstd_bombs(&target, k.bomb.clone().expect("the bomb")).await,
        Attack::StuckReads => stuck_reads(&target, k.hold).await,
        Attack::HugeBatches => huge_batches(&target).await,
        Attack::WrongPasswords => wrong_passwords(&target).await,
    };

    let good = good.stop().await;
    let peak_rss_kib = watch.peak_rss_kib();
    let peak_fds = watch.peak_fds();
    tokio::time::sleep(AFTER).await;
    let after_rss_kib = server.rss_kib();
    let after_fds = fd_count(pid);
    if matches!(attack, Attack::SlowBodies | Attack::AbandonedWrites) {
        figure += &format!(", {} 5 s after", temp_files(&cache));
    }
    let killed = watch.killed();
    drop(watch);
    server.kill();
    Row {
        label: attack.label(),
        good,
        peak_rss_kib,
        after_rss_kib,
        peak_fds,
        after_fds,
        killed,
        figure,
    }
}

/// Files in the store's temp directory: uploads in progress.
fn temp_files(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("tmp")).map_or(0, |d| d.count())
}

/// "3x400 2xclosed": how often each outcome came up.
fn tally<I: IntoIterator<Item = String>>(outcomes: I) -> String {
    let mut counts = BTreeMap::<String, usize>::new();
    for o in outcomes {
        *counts.entry(o).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(o, n)| format!("{n}x{o}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The median of some durations (unsorted), or "-".
fn median(mut ds: Vec<Duration>) -> String {
    if ds.is_empty() {
        return "-".into();
    }
    ds.sort();
    secs(ds[ds.len() / 2])
}

// ---------------------------------------------------------------------------
// 1. Connections that never make a request.

/// The HTTP/2 client preface; half of it is what attack 1 sends.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn idle_connections(t: &Target, hold: Duration) -> String {
    const EACH: usize = 50;
    let groups = [
        (&t.http_addr, false),
        (&t.http_addr, true),
        (&t.grpc_addr, false),
        (&t.grpc_addr, true),
    ];
    let mut conns: Vec<Vec<std::net::TcpStream>> = Vec::new();
    let mut not_connected = 0;
    for (addr, half_preface) in groups {
        let addr = addr.parse().expect("an address");
        let mut group = Vec::new();
        for _ in 0..EACH {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    if half_preface {
                        let _ = s.write_all(&PREFACE[..PREFACE.len() / 2]);
                    }
                    let _ = s.set_nonblocking(true);
                    group.push(s);
                }
                Err(_) => not_connected += 1,
            }
        }
        conns.push(group);
    }
    tokio::time::sleep(hold).await;
    let open: Vec<usize> = conns
        .iter_mut()
        .map(|g| {
            g.iter_mut()
                .filter_map(|s| still_open(s).then_some(()))
                .count()
        })
        .collect();
    let mut figure = format!(
        "open after {}: HTTP {}+{}, gRPC {}+{} of {EACH}+{EACH} (silent+half preface)",
        secs(hold),
        open[0],
        open[1],
        open[2],
        open[3]
    );
    if not_connected > 0 {
        figure += &format!(", {not_connected} not connected");
    }
    figure
}

/// Whether the server has neither closed nor reset a connection (whatever
/// it sent, a server preface or an error, is read and dropped).
fn still_open(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Upload bodies at 1 byte a second.

enum Slow {
    NotConnected,
    /// Still sending when the bench stopped.
    Open,
    /// The server answered (the status) or closed the connection.
    Cut {
        after: Duration,
        status: Option<String>,
    },
}

async fn slow_bodies(t: &Target, hold: Duration) -> String {
    const BODIES: usize = 300;
    let until = Instant::now() + hold;
    let tasks: Vec<_> = (0..BODIES)
        .map(|i| tokio::spawn(slow_body(t.http_addr.clone(), i, until)))
        .collect();
    let (mut open, mut not_connected) = (0, 0);
    let (mut cut_after, mut statuses) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.expect("a slow body panicked") {
            Slow::NotConnected => not_connected += 1,
            Slow::Open => open += 1,
            Slow::Cut { after, status } => {
                cut_after.push(after);
                statuses.push(status.unwrap_or_else(|| "closed".into()));
            }
        }
    }
    let mut figure = format!(
        "cut {}/{BODIES} ({}) median at {}, {open} still sending",
        cut_after.len(),
        tally(statuses),
        median(cut_after)
    );
    if not_connected > 0 {
        figure += &format!(", {not_connected} not connected");
    }
    // What the bodies still held when the bench stopped sending.
    figure + &format!("; temp files: {} at end", temp_files(&t.cache))
}

async fn slow_body(addr: String, i: usize, until: Instant) -> Slow {
    const DECLARED: usize = 4096;
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    else {
        return Slow::NotConnected;
    };
    let hash = Hash::of(format!("slow body {i}").as_bytes()).to_hex();
    let head =
        format!("PUT /cas/{hash} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {DECLARED}\r\n\r\n");
    let started = Instant::now();
    let (mut rd, mut wr) = s.split();
    if wr.write_all(head.as_bytes()).await.is_err() {
        return Slow::Cut {
            after: started.elapsed(),
            status: None,
        };
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if Instant::now() >= until {
                    return Slow::Open;
                }
                // One byte short of the declared length: never complete.
                if sent + 1 < DECLARED {
                    if wr.write_all(b"x").await.is_err() {
                        return Slow::Cut { after: started.elapsed(), status: None };
                    }
                    sent += 1;
                }
            }
            read = rd.read(&mut buf) => {
                let status = match read {
                    Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.1 ") => {
                        Some(String::from_utf8_lossy(&buf[9..12]).into_owned())
                    }
                    _ => None,
                };
                return Slow::Cut { after: started.elapsed(), status };
            }
        }
    }
}

// ---------------------------------------------------------------------------
// gRPC connections the bench can cut.

/// A gRPC channel over one TCP connection, and a handle on that
/// connection's socket to close it whatever the streams on it are doing
/// (a stream whose request never ends would otherwise keep it open).
struct Conn {
    channel: Channel,
    socket: std::net::TcpStream,
}

impl Conn {
    async fn open(addr: &str, tune: impl FnOnce(Endpoint) -> Endpoint) -> io::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let std_tcp = tcp.into_std()?;
        let socket = std_tcp.try_clone()?;
        let slot = Arc::new(Mutex::new(Some(tokio::net::TcpStream::from_std(std_tcp)?)));
        let endpoint =
            tune(Endpoint::from_shared(format!("http://{addr}")).map_err(io::Error::other)?);
        // The one connection, once: no reconnecting behind the bench's back.
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let tcp = slot.lock().unwrap().take();
                async move {
                    tcp.map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| io::Error::other("the connection was closed"))
                }
            }))
            .await
            .map_err(io::Error::other)?;
        Ok(Conn { channel, socket })
    }

    fn close(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

fn code(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

// ---------------------------------------------------------------------------
// 3. Uploads started and abandoned.

async fn abandoned_writes(t: &Target, hold: Duration) -> String {
    const WRITES: usize = 300;
    const CONNECTIONS: usize = 10;
    const SIZE: usize = 1024 * 1024;
    const FIRST: usize = 64 * 1024;
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        match Conn::open(&t.grpc_addr, |e| e).await {
            Ok(c) => conns.push(c),
            Err(e) => return format!("could not connect: {e}"),
        }
    }
    // The first half of the connections carry the streams kept open.
    let kept = |i: usize| i % CONNECTIONS < CONNECTIONS / 2;
    let data = vec![b'w'; FIRST];
    let mut tasks = Vec::new();
    for i in 0..WRITES {
        let hash = Hash::of(format!("abandoned upload {i}").as_bytes()).to_hex();
        let request = WriteRequest {
            resource_name: format!("uploads/00000000-0000-4000-8000-{i:012}/blobs/{hash}/{SIZE}"),
            write_offset: 0,
            finish_write: false,
            data: data.clone(),
        };
        let mut client = ByteStreamClient::new(conns[i % CONNECTIONS].channel.clone());
        tasks.push((
            kept(i),
            tokio::spawn(async move {
                let requests = futures_util::stream::once(async move { request })
                    .chain(futures_util::stream::pending());
                let started = Instant::now();
                let answer = client.write(requests).await;
                (started.elapsed(), answer.err().map(|s| code(&s)))
            }),
        ));
    }
    // The first messages are out; the dropped half loses its connections.
    let wait = Duration::from_secs(1).min(hold);
    tokio::time::sleep(wait).await;
    for c in &conns[CONNECTIONS / 2..] {
        c.close();
    }
    tokio::time::sleep(hold - wait).await;
    let temp_at_end = temp_files(&t.cache);
    let (mut cut_after, mut codes, mut silent) = (Vec::new(), Vec::new(), 0);
    for (kept, task) in tasks {
        if !kept {
            task.abort();
            continue;
        }
        if task.is_finished() {
            let (after, code) = task.await.expect("a write panicked");
            cut_after.push(after);
            codes.push(code.unwrap_or_else(|| "Ok".into()));
        } else {
            silent += 1;
            task.abort();
        }
    }
    for c in &conns {
        c.close();
    }
    format!(
        "silent streams cut {}/{} ({}) median at {}, {silent} still open; temp files: {temp_at_end} at end",
        cut_after.len(),
        WRITES / 2,
        tally(codes),
        median(cut_after)
    )
}

// ---------------------------------------------------------------------------
// 4. zstd bombs.

/// A zstd frame that declares a 128 MiB window (the most a default decoder
/// accepts) and no content size, so a streaming decoder sets up the whole
/// window: 256 KiB of noise in raw blocks, then RLE blocks up to
/// `content_mib` MiB. About 260 KiB for 136 MiB.
fn zstd_bomb(content_mib: usize) -> Vec<u8> {
    const BLOCK: usize = 128 * 1024;
    const RAW_BLOCKS: usize = 2;
    let blocks = (content_mib * 1024 * 1024)
        .div_ceil(BLOCK)
        .max(RAW_BLOCKS + 1);
    let mut frame = Vec::with_capacity(RAW_BLOCKS * BLOCK + blocks * 4 + 6);
    frame.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame_Header_Descriptor: no content size, not single-segment, no
    // checksum, no dictionary; Window_Descriptor: 2^(10+17) = 128 MiB.
    frame.extend_from_slice(&[0x00, 17 << 3]);
    let noise = noise(RAW_BLOCKS * BLOCK, 4);
    for b in 0..blocks {
        let last = u32::from(b + 1 == blocks);
        let (kind, payload): (u32, &[u8]) = if b < RAW_BLOCKS {
            (0, &noise[b * BLOCK..(b + 1) * BLOCK])
        } else {
            (1, b"z")
        };
        let header = last | (kind << 1) | ((BLOCK as u32) << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(payload);
    }
    // A default decoder takes it, and it inflates as designed.
    let mut decoder = zstd::stream::read::Decoder::new(&frame[..]).expect("a zstd decoder");
    let inflated = io::copy(&mut decoder, &mut io::sink()).expect("the bomb decodes");
    assert_eq!(inflated, (blocks * BLOCK) as u64);
    frame
}

async fn zstd_bombs(t: &Target, bomb: bytes::Bytes) -> String {
    const BOMBERS: usize = 96;
    // Each bomber sends bomb after bomb until this long after the start (a
    // server that refuses them at once is still under attack meanwhile).
    const BOMBING: Duration = Duration::from_secs(10);
    let client = reqwest::Client::builder()
        .timeout(ANSWERS_WITHIN)
        .build()
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..BOMBERS)
        .map(|i| {
            let (client, bomb, http) = (client.clone(), bomb.clone(), t.http.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while answers.is_empty() || started.elapsed() < BOMBING {
                    let url = format!(
                        "{http}/cas/{}",
                        Hash::of(format!("bomb {i} {n}").as_bytes()).to_hex()
                    );
                    n += 1;
                    answers.push(drop_bomb(&client, url, bomb.clone()).await);
                }
                answers
            })
        })
        .collect();
    let mut took = Vec::new();
    let mut outcomes = Vec::new();
    for task in tasks {
        for (after, outcome) in task.await.expect("a bomber panicked") {
            if outcome != "no answer" {
                took.push(after);
            }
            outcomes.push(outcome);
        }
    }
    let slowest = took.iter().max().copied().map_or("-".into(), secs);
    format!(
        "{} bombs of {} KiB: {}, median {} max {}",
        outcomes.len(),
        bomb.len() / 1024,
        tally(outcomes),
        median(took),
        slowest
    )
}

/// PUTs the bomb as `url`; its last bytes (the last block's header and
/// byte) come BOMB_PAUSE after the rest, so that every server-side decoder
/// has its window filled at once. The answer (a status, "no answer",
/// "closed") and how long it took.
async fn drop_bomb(
    client: &reqwest::Client,
    url: String,
    bomb: bytes::Bytes,
) -> (Duration, String) {
    const BOMB_TAIL: usize = 4;
    const BOMB_PAUSE: Duration = Duration::from_secs(5);
    let len = bomb.len();
    let (head, tail) = (bomb.slice(..len - BOMB_TAIL), bomb.slice(len - BOMB_TAIL..));
    let body = futures_util::stream::once(async move { Ok::<_, io::Error>(head) }).chain(
        futures_util::stream::once(async move {
            tokio::time::sleep(BOMB_PAUSE).await;
            Ok(tail)
        }),
    );
    let started = Instant::now();
    let outcome = match client
        .put(url)
        .header("Content-Encoding", "zstd")
        .header("Content-Length", len)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "no answer".into(),
        Err(_) => "closed".into(),
    };
    (started.elapsed(), outcome)
}

// ---------------------------------------------------------------------------
// 5. Reads nobody reads.

async fn stuck_reads(t: &Target, hold: Duration) -> String {
    const READS: usize = 3000;
    const BLOB: usize = 1024 * 1024;
    const UNANSWERED: usize = 64;
    const NO_PROGRESS: Duration = Duration::from_secs(1);
    let blob = noise(BLOB, 5);
    let hash = Hash::of(&blob).to_hex();
    let stored = reqwest::Client::new()
        .put(format!("{}/cas/{hash}", t.http))
        .body(blob)
        .send()
        .await;
    match stored {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => return format!("could not store the blob: {}", r.status()),
        Err(e) => return format!("could not store the blob: {e}"),
    }
    // The server may send 64 bytes a stream, then the windows stay shut:
    // the client never reads. The connection window is wide, so that every
    // stream gets its first bytes' worth of the server's attention.
    let conn = match Conn::open(&t.grpc_addr, |e| {
        e.initial_stream_window_size(64)
            .initial_connection_window_size(1 << 30)
    })
    .await
    {
        Ok(c) => c,
        Err(e) => return format!("could not connect: {e}"),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let settled = || answered.load(Ordering::Relaxed) + refused.lock().unwrap().len();
    let started = Instant::now();
    let mut paced = true;
    let mut tasks = Vec::with_capacity(READS);
    for i in 0..READS {
        // At most UNANSWERED requests at a time (a ReadRequest is a small
        // DATA frame; see the top of the file).
        let mut progress = (settled(), Instant::now());
        while paced && i - progress.0 >= UNANSWERED && started.elapsed() < hold {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = settled();
            if now != progress.0 {
                progress = (now, Instant::now());
            } else if progress.1.elapsed() >= NO_PROGRESS {
                // The server takes no more streams on this connection:
                // the rest wait in the client, sending nothing.
                paced = false;
            }
        }
        if started.elapsed() >= hold {
            break;
        }
        let mut client = ByteStreamClient::new(conn.channel.clone());
        let (answered, refused, mut stopped) = (answered.clone(), refused.clone(), stopped.clone());
        let resource_name = format!("blobs/{hash}/{BLOB}");
        tasks.push(tokio::spawn(async move {
            let request = ReadRequest {
                resource_name,
                read_offset: 0,
                read_limit: 0,
            };
            match client.read(request).await {
                Ok(stream) => {
                    answered.fetch_add(1, Ordering::Relaxed);
                    let _ = stopped.wait_for(|s| *s).await;
                    drop(stream);
                }
                Err(s) => refused.lock().unwrap().push(code(&s)),
            }
        }));
    }
    let opening = started.elapsed();
    tokio::time::sleep(hold.saturating_sub(opening)).await;
    let answered = answered.load(Ordering::Relaxed);
    let refused = std::mem::take(&mut *refused.lock().unwrap());
    let sent = tasks.len();
    let waiting = sent - answered - refused.len();
    let _ = stop.send(true);
    conn.close();
    drop(conn);
    for t in tasks {
        t.abort();
    }
    let mut figure = format!("streams answered {answered}/{READS}");
    if !refused.is_empty() {
        figure += &format!(", refused {}", tally(refused));
    }
    figure += &format!(", {waiting} waiting at {}", secs(hold));
    if sent < READS {
        figure += &format!(", {} not sent", READS - sent);
    }
    figure
}

// ---------------------------------------------------------------------------
// 6. Batches of many tiny blobs.

async fn huge_batches(t: &Target) -> String {
    const BATCHES: usize = 4;
    const BLOBS: usize = 50_000;
    let conn = match Conn::open(&t.grpc_addr, |e| e).await {
        Ok(c) => c,
        Err(e) => return format!("could not connect: {e}"),
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let batches: Vec<re::BatchUpdateBlobsRequest> = (0..BATCHES)
        .map(|b| re::BatchUpdateBlobsRequest {
            requests: (0..BLOBS)
                .map(|j| {
                    let data = (seed ^ (b * BLOBS + j) as u64).to_le_bytes().to_vec();
                    re::batch_update_blobs_request::Request {
                        digest: Some(re::Digest {
                            hash: Hash::of(&data).to_hex(),
                            size_bytes: data.len() as i64,
                        }),
                        data,
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let mut client =
                re::content_addressable_storage_client::ContentAddressableStorageClient::new(
                    conn.channel.clone(),
                )
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = match client.batch_update_blobs(batch).await {
                    Ok(r) => {
                        let failed = r
                            .into_inner()
                            .responses
                            .iter()
                            .filter(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
                            .count();
                        if failed == 0 {
                            "Ok".to_string()
                        } else {
                            format!("Ok({failed} blobs refused)")
                        }
                    }
                    Err(s) => code(&s),
                };
                (started.elapsed(), outcome)
            })
        })
        .collect();
    let started = Instant::now();
    let mut took = Vec::new();
    let mut outcomes = Vec::new();
    let mut unanswered = 0;
    for mut task in tasks {
        let left = ANSWERS_WITHIN.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, &mut task).await {
            Ok(Ok((after, outcome))) => {
                took.push(after);
                outcomes.push(outcome);
            }
            Ok(Err(e)) => panic!("a batch panicked: {e}"),
            Err(_) => {
                unanswered += 1;
                task.abort();
            }
        }
    }
    conn.close();
    let slowest = took.iter().max().copied().map_or("-".into(), secs);
    let mut figure = format!("{}, slowest {slowest}", tally(outcomes));
    if unanswered > 0 {
        figure += &format!(", {unanswered} unanswered in {}", secs(ANSWERS_WITHIN));
    }
    figure
}

// ---------------------------------------------------------------------------
// 7. Wrong passwords.

async fn wrong_passwords(t: &Target) -> String {
    const FLOODERS: usize = 16;
    let url = format!("{}/cas/{}", t.http, Hash::of(b"flooded").to_hex());
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let tasks: Vec<_> = (0..FLOODERS)
        .map(|n| {
            tokio::spawn(flooder(
                n,
                url.clone(),
                USER,
                Flood::NewGuesses,
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(FLOOD_FOR).await;
    let refused = counts.refused.load(Ordering::Relaxed);
    let other = counts.other.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a flooder panicked");
    }
    format!(
        "{:.0} wrong passwords refused/s (401), {other} other answers",
        refused as f64 / FLOOD_FOR.as_secs_f64()
    )
}

// ---------------------------------------------------------------------------

/// `len` deterministic incompressible bytes (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
