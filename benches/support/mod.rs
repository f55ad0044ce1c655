//! What the benchmarks share: environment knobs, the real server binary as
//! a child process (so client and server do not share a runtime, and its
//! RSS can be read), and running `bazel_cache_bench` phases and printing
//! their figures. The load generation, verification and percentiles are
//! the `bazel-cache bench` code itself.
#![allow(dead_code)] // each bench uses a different subset

pub(crate) mod flood;
pub(crate) mod good_client;
pub(crate) mod watch;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bazel_cache_bench::{self as bench, Options, Report};

pub(crate) fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub(crate) fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a number");
            std::process::exit(2)
        }),
        _ => default,
    }
}

/// A comma-separated list knob, e.g. BENCH_CLIENTS=1,16,64.
pub(crate) fn env_list(name: &str, default: &str) -> Vec<usize> {
    env_or(name, default)
        .split(',')
        .map(|v| {
            v.trim().parse().unwrap_or_else(|_| {
                eprintln!("{name}: {v:?} is not a number");
                std::process::exit(2)
            })
        })
        .collect()
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The server binary: this build's (cargo builds it in the bench profile),
/// or BENCH_SERVER (another build, or bazel-remote, which takes the same
/// flags and prints the same `.bazelrc` lines).
pub(crate) fn server_binary() -> PathBuf {
    match std::env::var_os("BENCH_SERVER") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_bazel-cache")),
    }
}

/// A running server process, stopped (SIGTERM, then SIGKILL) on drop.
pub(crate) struct ServerProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `grpc://127.0.0.1:PORT`, when it serves gRPC.
    pub grpc: Option<String>,
    /// From spawning until the `.bazelrc` lines were printed.
    pub startup: Duration,
}

impl ServerProcess {
    /// Starts the server on `dir` with HTTP and gRPC on ephemeral ports of
    /// 127.0.0.1, no access log, and `extra` flags (BENCH_SERVER_ARGS adds
    /// more, e.g. `--fsync=false --storage_mode uncompressed`).
    pub(crate) fn start(dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_stderr(dir, extra, Stdio::inherit())
    }

    /// As [`ServerProcess::start`], with the server's log (stderr) going to
    /// `log` instead of the bench's output (a hostile client makes it
    /// chatty).
    pub(crate) fn start_logging_to(dir: &Path, extra: &[&str], log: &Path) -> ServerProcess {
        let file =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        Self::start_with_stderr(dir, extra, Stdio::from(file))
    }

    fn start_with_stderr(dir: &Path, extra: &[&str], stderr: Stdio) -> ServerProcess {
        let bin = server_binary();
        let from_env = env_or("BENCH_SERVER_ARGS", "");
        let mut cmd = Command::new(&bin);
        cmd.arg("--dir")
            .arg(dir)
            .args(["--http_address", "127.0.0.1:0"])
            .args(["--grpc_address", "127.0.0.1:0"])
            .args(["--access_log_level", "none"])
            .args(extra)
            .args(from_env.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            // The gRPC line comes first, the HTTP line last; keep reading
            // afterwards so the server never blocks on a full pipe.
            let mut grpc = None;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.trim().strip_prefix("build --remote_cache=") {
                    if url.starts_with("grpc") {
                        grpc = Some(url.to_owned());
                    } else {
                        let _ = tx.send((url.to_owned(), grpc.clone()));
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((http, grpc)) => ServerProcess {
                child: Some(child),
                http,
                grpc,
                startup: started.elapsed(),
            },
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{} printed no `build --remote_cache=` line within 60 s",
                    bin.display()
                );
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory of the server process (`VmRSS` in /proc).
    pub(crate) fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident memory (`VmHWM`).
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub(crate) fn grpc(&self) -> &str {
        self.grpc.as_deref().expect("the server serves gRPC")
    }

    /// Stops the server at once (SIGKILL), without the graceful drain of
    /// drop; for a server a bench has just abused, whose drain would only
    /// wait for the abuse to time out.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `--help` text of the server binary, to pass a flag only to builds
/// that have it (the benches compare builds of different ages).
pub(crate) fn server_help() -> String {
    let bin = server_binary();
    let out = Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {} --help: {e}", bin.display()));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Whether the `--help` text lists `--flag`.
pub(crate) fn has_flag(help: &str, flag: &str) -> bool {
    let spelled = format!("--{flag}");
    help.split(|c: char| c.is_whitespace() || c == ',')
        .any(|w| {
            w == spelled
                || w.starts_with(&format!("{spelled}="))
                || w.starts_with(&format!("{spelled}["))
        })
}

/// Open file descriptors of a process (sockets included).
pub(crate) fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long one `GET /status` takes on a fresh connection (plain HTTP).
pub(crate) fn first_answer(http: &str) -> Duration {
    use std::io::{Read, Write};
    let addr = http.trim_start_matches("http://");
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the server");
    s.write_all(
        format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("send GET /status");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).expect("read the answer");
    assert_eq!(&first[..9], b"HTTP/1.1 ", "not an HTTP answer");
    t.elapsed()
}

pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs one `bazel-cache bench` phase against `url` with the options
/// `args` (as on the command line); panics with the reason if it cannot
/// run or any request failed.
pub(crate) async fn phase(url: &str, args: &[&str]) -> Report {
    let options = Options::parse(std::iter::once(url).chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("bench options {args:?}: {e}"));
    let report = bench::run(&options)
        .await
        .unwrap_or_else(|e| panic!("bench {url} {args:?}: {e}"));
    assert!(
        !report.failed(),
        "bench {url} {args:?} had errors:\n{}",
        report.text()
    );
    report
}

pub(crate) fn print_header() {
    println!(
        "{:<36} {:>8} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "phase", "clients", "req/s", "MiB/s", "p50 ms", "p99 ms", "p999 ms", "requests"
    );
}

/// One line: the report's total.
pub(crate) fn print_row(name: &str, report: &Report) {
    let t = &report.total;
    println!(
        "{name:<36} {:>8} {:>11.0} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9}",
        report.concurrency,
        t.requests_per_second,
        t.mib_per_second,
        t.latency.p50_ms,
        t.latency.p99_ms,
        t.latency.p999_ms,
        t.requests,
    );
}

/// The throughput matrix of the issue: PUT and GET of 4 KiB and 1 MiB
/// blobs at each client count, `seconds` per phase. `label` names the
/// protocol in the output.
pub(crate) async fn matrix(
    label: &str,
    url: &str,
    seconds: usize,
    clients: &[usize],
    extra: &[&str],
) {
    let duration = format!("{seconds}s");
    for size in ["4KiB", "1MiB"] {
        for (op, mix) in [("PUT", "write"), ("GET", "read")] {
            for &c in clients {
                let c = c.to_string();
                let mut args = vec![
                    "--mix",
                    mix,
                    "--sizes",
                    size,
                    "--concurrency",
                    &c,
                    "--duration",
                    &duration,
                    "--warmup",
                    "1s",
                    "--no_write_check",
                ];
                args.extend_from_slice(extra);
                let report = phase(url, &args).await;
                print_row(&format!("{label} {op} {size}"), &report);
            }
        }
    }
}
