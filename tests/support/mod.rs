//! Shared helpers of every integration-test binary: start the real server
//! binary, run external tools (bazel, ccache, ...) with a time limit, small
//! HTTP and file-system utilities, digests of test data; and, in
//! submodules, S3 (`s3`: an s3s-fs server), certificates (`pki`), the
//! Prometheus text format and PromQL (`prometheus`), the OpenTofu module
//! evaluator (`tofu`) and what the deploy checks share (`deploy`), the
//! server run the way the NixOS module's unit runs it (`unit`), and a
//! WebDriver client for headless Chromium (`webdriver`).
//!
//! The test binaries are `tests/<group>/main.rs` (api, store, s3, clients,
//! deploy, bench) and `tests/s3_tls.rs`; each includes this module with
//! `#[path = "../support/mod.rs"] mod support;` and its test modules use
//! `crate::support`. Not every binary uses every helper, hence the
//! `dead_code` allowance.
//!
//! `BAZEL_CACHE_E2E_SERVER=/path/to/binary` runs the tests against another
//! build of the server (e.g. a release build) or against bazel-remote itself,
//! which takes the same flags and prints the same `.bazelrc` lines.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bazel_cache_digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use tonic::transport::Channel;

/// How long the server may take to print its `build --remote_cache=` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop (SIGTERM) may take before we SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The line prefix the server prints (to stdout) once its HTTP listener is
/// up (`https://` with TLS).
const REMOTE_CACHE_LINE_PREFIX: &str = "build --remote_cache=http";

/// A running server process. Killed (SIGKILL) when dropped; if the current
/// thread is panicking, the server's output is printed first so a failing
/// test shows what the server logged.
pub(crate) struct Server {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub(crate) http_url: String,
    /// The server's `--dir`.
    pub(crate) dir: PathBuf,
    /// Owns `dir` when `Server::start` created it; see [`Server::stop`].
    tempdir: Option<tempfile::TempDir>,
    child: Option<Child>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
    /// Set once a panic message already included the server's output.
    output_reported: bool,
}

/// The server binary under test.
pub(crate) fn server_binary() -> PathBuf {
    match std::env::var_os("BAZEL_CACHE_E2E_SERVER") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_bazel-cache")),
    }
}

fn has_flag(args: &[&str], flag: &str) -> bool {
    let with_eq = format!("{flag}=");
    args.iter().any(|a| *a == flag || a.starts_with(&with_eq))
}

impl Server {
    /// Starts the server on a fresh temporary `--dir`, which is deleted when
    /// the `Server` is dropped (or handed back by [`Server::stop`]).
    pub(crate) fn start(extra_args: &[&str]) -> Server {
        let tempdir = tempfile::Builder::new()
            .prefix("bazel-cache-e2e-server.")
            .tempdir()
            .expect("create server temp dir");
        let mut server = Server::start_with_dir(tempdir.path(), extra_args);
        server.tempdir = Some(tempdir);
        server
    }

    /// Starts the server on an existing `--dir` (e.g. to restart on the data
    /// a previous `Server` left behind). The directory is not deleted.
    ///
    /// Defaults `--max_size 1 --http_address 127.0.0.1:0 --grpc_address none`
    /// are added unless `extra_args` sets the same flag.
    pub(crate) fn start_with_dir(dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_with_dir_env(dir, extra_args, &[])
    }

    /// [`Server::start_with_dir`] with extra environment variables (fault
    /// injection hooks the server reads at start).
    pub(crate) fn start_with_dir_env(
        dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let bin = server_binary();
        let mut args: Vec<String> = vec!["--dir".into(), dir.display().to_string()];
        for (flag, value) in [
            ("--max_size", "1"),
            ("--http_address", "127.0.0.1:0"),
            ("--grpc_address", "none"),
        ] {
            if !has_flag(extra_args, flag) {
                args.push(flag.into());
                args.push(value.into());
            }
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));

        let mut child = Command::new(&bin)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start server {}: {e}", bin.display()));

        let stdout_log = Arc::new(Mutex::new(String::new()));
        let stderr_log = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = mpsc::channel::<String>();

        let out = child.stdout.take().unwrap();
        let log = Arc::clone(&stdout_log);
        let stdout_reader = thread::spawn(move || {
            let mut url_tx = Some(url_tx);
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                if url_tx.is_some()
                    && let Some(url) = parse_remote_cache_line(&line)
                {
                    let _ = url_tx.take().unwrap().send(url);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr_reader = drain_in_background(err, Arc::clone(&stderr_log));

        let mut server = Server {
            http_url: String::new(),
            dir: dir.to_path_buf(),
            tempdir: None,
            child: Some(child),
            stdout: stdout_log,
            stderr: stderr_log,
            readers: vec![stdout_reader, stderr_reader],
            output_reported: false,
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match url_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(url) => {
                    server.http_url = url;
                    return server;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // stdout closed without the line: the process is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let child = server.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("try_wait on server") {
                let (out, err) = server.collect_output();
                server.output_reported = true;
                panic!(
                    "server exited with {status} before printing a `{REMOTE_CACHE_LINE_PREFIX}...` line\n\
                     command: {} {}\n--- server stdout ---\n{out}\n--- server stderr ---\n{err}",
                    bin.display(),
                    args.join(" "),
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let (out, err) = server.collect_output();
                server.output_reported = true;
                panic!(
                    "server did not print a `{REMOTE_CACHE_LINE_PREFIX}...` line within {STARTUP_TIMEOUT:?}\n\
                     command: {} {}\n--- server stdout ---\n{out}\n--- server stderr ---\n{err}",
                    bin.display(),
                    args.join(" "),
                );
            }
        }
    }

    /// `grpc://127.0.0.1:PORT` (`grpcs://` with TLS) when the server was
    /// started with a gRPC listener (pass `--grpc_address 127.0.0.1:0`); it
    /// prints that line before the HTTP one.
    pub(crate) fn grpc_url(&self) -> Option<String> {
        let out = self.stdout.lock().unwrap();
        out.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("build --remote_cache=")?;
            (rest.starts_with("grpc://") || rest.starts_with("grpcs://"))
                .then(|| rest.trim().to_string())
        })
    }

    /// `http://127.0.0.1:PORT` for tonic clients (which want an http URI).
    pub(crate) fn grpc_endpoint(&self) -> String {
        let url = self
            .grpc_url()
            .expect("server started without a gRPC listener");
        url.replacen("grpcs://", "https://", 1)
            .replacen("grpc://", "http://", 1)
    }

    /// The `host:port` part of `http_url`.
    pub(crate) fn http_addr(&self) -> &str {
        self.http_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// The server's process id (for signals and /proc readings).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("server stopped").id()
    }

    /// What the server has written to stdout and stderr so far.
    pub(crate) fn output(&self) -> (String, String) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// The server's log (stderr) once `done` holds for it, or as it is
    /// after 30 s. The server writes log lines in batches from a thread of
    /// its own (they linger up to 20 ms) and a reader thread here copies
    /// them, so a line about something that just happened may not be here
    /// yet; a test that needs it waits for it, then asserts on what came.
    pub(crate) fn log_once(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.stderr.lock().unwrap().clone();
            if done(&log) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the reader threads (the process must have exited) and
    /// returns the complete output.
    fn collect_output(&mut self) -> (String, String) {
        join_bounded(
            self.readers.drain(..).collect(),
            Instant::now() + Duration::from_secs(5),
        );
        self.output()
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after a grace
    /// period) and returns the temporary `--dir` it owned, if any, so the
    /// caller can restart on it with [`Server::start_with_dir`].
    pub(crate) fn stop(mut self) -> Option<tempfile::TempDir> {
        self.terminate();
        self.collect_output();
        self.tempdir.take()
    }

    /// Like [`Server::stop`], for tests about shutdown and logs: how the
    /// process exited (`None`: it had to be killed) and all it wrote.
    pub(crate) fn stop_with_output(mut self) -> (Option<ExitStatus>, String, String) {
        let status = self.terminate();
        let (out, err) = self.collect_output();
        (status, out, err)
    }

    /// SIGTERM, then SIGKILL if the process has not exited in time.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// GET `path` (e.g. `/status`) on the HTTP listener.
    pub(crate) fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_request("GET", &format!("{}{path}", self.http_url), None)
    }

    /// `GET /status`, parsed as JSON (bazel-remote's fields: `CurrSize`,
    /// `MaxSize`, `NumFiles`, ...).
    pub(crate) fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "GET /status returned {code}: {text}");
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("GET /status returned invalid JSON ({e}): {text}"))
    }

    /// `NumFiles` from `GET /status`.
    pub(crate) fn num_files(&self) -> u64 {
        let status = self.status();
        status["NumFiles"]
            .as_u64()
            .unwrap_or_else(|| panic!("GET /status has no numeric NumFiles: {status}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (out, err) = self.collect_output();
        if thread::panicking() && !self.output_reported {
            eprintln!(
                "--- server ({}) stdout ---\n{out}\n--- server stderr ---\n{err}\n--- end of server output ---",
                self.http_url
            );
        }
    }
}

/// `build --remote_cache=http://127.0.0.1:40123` -> `http://127.0.0.1:40123`.
fn parse_remote_cache_line(line: &str) -> Option<String> {
    let line = line.trim();
    if !line.starts_with("build --remote_cache=http://")
        && !line.starts_with("build --remote_cache=https://")
    {
        return None;
    }
    let value = line["build --remote_cache=".len()..]
        .split_whitespace()
        .next()?
        .trim_matches(|c| c == '"' || c == '\'')
        .trim_end_matches('/');
    Some(value.to_string())
}

fn drain_in_background<R: Read + Send + 'static>(
    reader: R,
    log: Arc<Mutex<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

/// Joins the threads that finish before `deadline`; the others are left
/// running (detached), e.g. readers of a pipe a grandchild still holds open.
fn join_bounded(threads: Vec<thread::JoinHandle<()>>, deadline: Instant) {
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// One HTTP request with a 60 s time limit; returns (status, body).
/// Panics on connection errors.
pub(crate) fn http_request(method: &str, url: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = client.request(method.clone(), url);
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let code = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"));
        (code, bytes.to_vec())
    })
}

/// The result of [`run`].
pub(crate) struct RunOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl RunOutput {
    /// Panics with the command line and its output unless it exited 0.
    pub(crate) fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion with stdout/stderr captured. The command gets its
/// own process group; if it is still running after `timeout` the whole group
/// (including daemons/sandboxes it spawned in that group) is SIGKILLed and
/// this panics with the output so far.
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> RunOutput {
    let desc = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = [
        drain_in_background(child.stdout.take().unwrap(), Arc::clone(&stdout)),
        drain_in_background(child.stderr.take().unwrap(), Arc::clone(&stderr)),
    ];
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let pgid = child.id();
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            // Grandchildren may keep the pipes open; don't wait for them.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "{desc} did not finish within {timeout:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                stdout.lock().unwrap(),
                stderr.lock().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    // The pipes close when the process and anything that inherited them exit.
    // Bound the wait in case a daemon (e.g. a Bazel server) kept them open.
    join_bounded(readers.into(), Instant::now() + Duration::from_secs(30));
    let stdout = stdout.lock().unwrap().clone();
    let stderr = stderr.lock().unwrap().clone();
    RunOutput {
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// `program arg1 arg2 ...` for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Panics with an installation hint unless `program --version` (or the given
/// probe arguments) runs successfully. Returns the probe's stdout.
pub(crate) fn require_tool(program: &str, probe_args: &[&str], install_hint: &str) -> String {
    match Command::new(program)
        .args(probe_args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => panic!(
            "`{program} {}` failed ({}): {}{}\nInstall it with: {install_hint}",
            probe_args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("`{program}` is not available ({e}). Install it with: {install_hint}"),
    }
}

/// Recursively copies the directory `from` to `to` (which must not exist).
/// Regular files and directories only; symlinks are copied as symlinks.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.unwrap();
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            copy_dir(&src, &dst);
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src).unwrap();
            std::os::unix::fs::symlink(target, &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
        }
    }
}

/// The fixture directory `tests/e2e/<name>`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("e2e")
        .join(name)
}

/// Reads a file, panicking with its path on error.
pub(crate) fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Removes every variable whose name starts with `prefix` from `cmd`'s
/// environment (so the caller's settings, e.g. `CCACHE_*`, can't leak in).
pub(crate) fn env_remove_prefixed(cmd: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(prefix) {
            cmd.env_remove(&key);
        }
    }
}

/// Parses `key<TAB>value` lines (e.g. `ccache --print-stats`) into a map;
/// lines whose value is not an unsigned integer are skipped.
pub(crate) fn parse_tab_counters(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('\t')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// An HTTP PUT sent over a raw socket in two parts, so the test decides
/// when the upload completes.
pub(crate) struct SlowPut {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowPut {
    /// Sends the headers and the first `sent` bytes of `data`.
    pub(crate) fn start(addr: &str, data: &[u8], sent: usize) -> SlowPut {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let head = format!(
            "PUT /cas/{} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            hex(data),
            data.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&data[..sent]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        SlowPut {
            stream,
            rest: data[sent..].to_vec(),
        }
    }

    /// Sends the rest; returns the response status.
    pub(crate) fn finish(mut self) -> u16 {
        self.stream.write_all(&self.rest).unwrap();
        let mut buf = [0u8; 12];
        self.stream.read_exact(&mut buf).unwrap();
        std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
    }
}

/// A client for async tests: one request may take up to a minute.
pub(crate) fn async_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

impl Server {
    /// GET `path` from an async test: status and body.
    pub(crate) async fn get_async(&self, path: &str) -> (u16, Vec<u8>) {
        let r = async_client()
            .get(format!("{}{path}", self.http_url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    /// `GET /status` from an async test, parsed as JSON.
    pub(crate) async fn status_async(&self) -> serde_json::Value {
        let (code, body) = self.get_async("/status").await;
        assert_eq!(code, 200, "/status: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

/// Deterministic incompressible bytes (xorshift), so stored sizes are
/// predictable in zstd mode and every seed names a different blob.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Compressible bytes (text that compresses far below its size), unique
/// per seed.
pub(crate) fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = format!("seed {seed}\n").into_bytes();
    out.extend((0..len.saturating_sub(out.len())).map(|i| b"the quick brown fox "[i % 20]));
    out.truncate(len);
    out
}

/// The repository (the server crate's directory).
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The lowercase hex SHA-256 of `data`: the hash of `/cas/<hash>` and of
/// REAPI digests.
pub(crate) fn hex(data: &[u8]) -> String {
    Hash::of(data).to_hex()
}

/// The REAPI digest (SHA-256, size) of `data`.
pub(crate) fn digest(data: &[u8]) -> re::Digest {
    re::Digest {
        hash: hex(data),
        size_bytes: data.len() as i64,
    }
}

/// `/cas/<sha256>`: the HTTP path of `data` as a CAS blob.
pub(crate) fn cas_path(data: &[u8]) -> String {
    format!("/cas/{}", Hash::of(data))
}

/// A ByteStream client that sends and accepts messages of up to 64 MiB.
pub(crate) fn bytestream_client(channel: Channel) -> ByteStreamClient<Channel> {
    const MIB: usize = 1024 * 1024;
    ByteStreamClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

/// An htpasswd file `dir/htpasswd` with one `{SHA}` entry (Apache's
/// `htpasswd -s` format).
pub(crate) fn sha_htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    use sha1::Digest as _;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(password));
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{user}:{{SHA}}{hash}\n")).unwrap();
    path
}

/// An HTTP request from an async test (body read and dropped): the status.
pub(crate) async fn request(s: &Server, method: &str, path: &str, body: Option<&[u8]>) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = async_client().request(method, format!("{}{path}", s.http_url));
    if let Some(b) = body {
        req = req.body(b.to_vec());
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    resp.bytes().await.unwrap();
    code
}

impl Server {
    /// Like [`Server::start`], with a gRPC listener on a free port too
    /// (`--grpc_address 127.0.0.1:0`, before `extra`).
    pub(crate) fn start_grpc(extra: &[&str]) -> Server {
        let mut args = vec!["--grpc_address", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// A connected channel to the gRPC listener.
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc_endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

pub(crate) mod bazel_remote;
pub(crate) mod deploy;
pub(crate) mod origin;
pub(crate) mod pki;
pub(crate) mod prometheus;
pub(crate) mod s3;
pub(crate) mod tofu;
pub(crate) mod unit;
pub(crate) mod webdriver;
