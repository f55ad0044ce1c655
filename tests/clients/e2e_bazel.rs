//! End-to-end tests with a real Bazel (Debian 12's `bazel-bootstrap`, 4.2.3)
//! against the server, over HTTP and over gRPC.
//!
//! Both tests start with the same two steps ([`cold_then_all_hits`]):
//!
//! 1. build + test the fixture workspace `tests/e2e/bazel-workspace` against
//!    an empty cache: every action runs locally and is uploaded;
//! 2. wipe Bazel's local state (`clean --expunge`), build again: every
//!    cacheable action must be a remote cache hit, and the outputs (a 5 MiB
//!    file, an empty file, a C++ binary, ...) must be intact.
//!
//! Over HTTP (`--remote_cache=http://...`), then:
//!
//! 3. restart the server on the same `--dir`, wipe and build again: still
//!    all hits, so the cache survives a restart.
//!
//! Over gRPC (`--remote_cache=grpc://...`: Capabilities, ActionCache,
//! ContentAddressableStorage, ByteStream), then:
//!
//! 3. the HTTP port of the same server serves the blobs Bazel uploaded over
//!    gRPC (the 5 MiB one went through ByteStream), byte for byte;
//! 4. wipe and build with `--remote_download_minimal` ("builds without the
//!    bytes": outputs stay in the cache, only metadata is fetched): all hits;
//! 5. wipe and build over HTTP against the same server: all hits with intact
//!    outputs, so action-cache entries written over gRPC are valid over HTTP.
//!
//! Bazel runs in `--batch` mode (no Bazel server process can outlive the
//! test) with a private `--output_user_root` inside a temp dir, `--nohome_rc`
//! and `--disk_cache=` (so neither the user's Bazel state nor a disk cache
//! takes part). Every Bazel invocation has a time limit, and a build whose
//! output mentions a remote cache error fails the test even when Bazel
//! carried on without the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::{RunOutput, Server};
use sha2::{Digest, Sha256};

/// Per-invocation limit. A cold build of the fixture takes well under a
/// minute on 2 cores; this only guards against hangs.
const BAZEL_TIMEOUT: Duration = Duration::from_secs(300);

const BIG_SIZE: usize = 5 * 1024 * 1024;

fn bazel_program() -> String {
    std::env::var("BAZEL").unwrap_or_else(|_| "bazel".to_string())
}

/// A throw-away copy of the fixture workspace plus a private Bazel output
/// root, both inside one temp dir.
pub(super) struct Workspace {
    tmp: tempfile::TempDir,
    root: PathBuf,
    output_user_root: PathBuf,
    /// Extra Bazel startup options (e.g. a JVM trust store).
    startup_args: Vec<String>,
}

impl Workspace {
    pub(super) fn new() -> Workspace {
        Workspace::of("bazel-workspace")
    }

    /// A copy of the fixture workspace `tests/e2e/<fixture>`.
    pub(super) fn of(fixture: &str) -> Workspace {
        let tmp = tempfile::Builder::new()
            .prefix("bazel-cache-e2e-bazel.")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("ws");
        support::copy_dir(&support::fixture(fixture), &root);
        let output_user_root = tmp.path().join("bazel-root");
        std::fs::create_dir(&output_user_root).unwrap();
        Workspace {
            tmp,
            root,
            output_user_root,
            startup_args: Vec::new(),
        }
    }

    /// `bazel <startup options> <command> <args>` in the workspace.
    fn bazel(&self, command: &str, args: &[&str]) -> RunOutput {
        let mut cmd = Command::new(bazel_program());
        cmd.current_dir(&self.root)
            // Startup options. The system bazelrc (/etc/bazel/bazelrc, which
            // sets Debian's --install_base) must stay: no --nosystem_rc.
            .arg("--nohome_rc")
            .arg(format!(
                "--output_user_root={}",
                self.output_user_root.display()
            ))
            .arg("--batch")
            .args(&self.startup_args)
            .arg(command)
            .args(args)
            // The bazel wrapper script honours these; keep the caller's out.
            .env_remove("USE_BAZEL_VERSION")
            .env_remove("BAZELISK_HOME");
        let out = support::run(&mut cmd, BAZEL_TIMEOUT);
        eprintln!(
            "[e2e_bazel] {} ({:.1?}, {})",
            support::describe(&cmd),
            out.elapsed,
            out.status
        );
        out
    }

    /// `bazel test //...` against the remote cache (`http://...` or
    /// `grpc://...`), with `extra_args` (e.g. `--remote_download_minimal`)
    /// added; panics unless it succeeds without any remote cache error.
    /// `step` names the execution log file (`<tmp>/exec-<step>.json`).
    pub(super) fn build_and_test(
        &self,
        remote_cache: &str,
        step: &str,
        extra_args: &[&str],
    ) -> Build {
        self.run_against(remote_cache, "test", step, extra_args)
    }

    /// `bazel build //...`, as [`Workspace::build_and_test`] runs `test`
    /// (for a workspace without tests).
    pub(super) fn build(&self, remote_cache: &str, step: &str, extra_args: &[&str]) -> Build {
        self.run_against(remote_cache, "build", step, extra_args)
    }

    /// The workspace's root (its source files).
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn run_against(
        &self,
        remote_cache: &str,
        command: &str,
        step: &str,
        extra_args: &[&str],
    ) -> Build {
        let exec_log = self.tmp.path().join(format!("exec-{step}.json"));
        let remote_cache_flag = format!("--remote_cache={remote_cache}");
        let exec_log_flag = format!("--execution_log_json_file={}", exec_log.display());
        let mut args: Vec<&str> = vec![
            &remote_cache_flag,
            // Override any --disk_cache from a system bazelrc: only the
            // remote cache may serve hits.
            "--disk_cache=",
            // The fixture must build offline (local_repository stand-ins
            // for everything Bazel would otherwise download); make a
            // missing stand-in fail loudly even where there is internet.
            "--experimental_repository_disable_download",
            "--remote_upload_local_results",
            "--remote_accept_cached",
            "--remote_timeout=60",
            // Stable action keys: PATH etc. from the caller don't leak in.
            "--incompatible_strict_action_env",
            // Debian's system bazelrc turns this on; it floods stderr.
            "--nosandbox_debug",
            "--color=no",
            "--curses=no",
            "--show_progress_rate_limit=10",
            "--verbose_failures",
            "--test_output=errors",
            // Every spawn with its runner ("remote cache hit",
            // "linux-sandbox", ...) and output digests, for diagnostics.
            &exec_log_flag,
        ];
        args.extend_from_slice(extra_args);
        args.push("//...");
        let out = self.bazel(command, &args);
        out.assert_success(&format!("bazel {command} //..."));
        // Bazel carries on without the cache when an upload or download
        // fails (it only warns), so a successful build proves little.
        let errors = remote_cache_errors(&out);
        assert!(
            errors.is_empty(),
            "bazel {command} //... against {remote_cache} ({step}) reported remote cache errors:\n{}\n\
             --- start of bazel stderr ---\n{}",
            errors.join("\n"),
            head(&out.stderr, 60)
        );
        let stats = parse_process_stats(&out);
        Build {
            out,
            stats,
            exec_log,
        }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bazel-bin").join(name)
    }

    /// `bazel clean --expunge`, then check that no output base survived (so
    /// the next build has no local action cache or outputs to reuse).
    pub(super) fn expunge(&self) {
        self.bazel("clean", &["--expunge", "--color=no", "--curses=no"])
            .assert_success("bazel clean --expunge");
        let leftovers: Vec<PathBuf> = std::fs::read_dir(&self.output_user_root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("execroot").exists() || p.join("action_cache").exists())
            .collect();
        assert!(
            leftovers.is_empty(),
            "bazel clean --expunge left output bases behind: {leftovers:?}"
        );
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Bazel leaves read-only files and directories in its output base
        // (normally gone after the final `clean --expunge`, but not when a
        // step failed); make them writable so the temp dir can be removed.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.tmp.path())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// One `bazel test` run.
pub(super) struct Build {
    out: RunOutput,
    stats: ProcessStats,
    exec_log: PathBuf,
}

impl Build {
    /// The `--execution_log_json_file` this build wrote.
    pub(super) fn exec_log(&self) -> &Path {
        &self.exec_log
    }

    /// Processes that ran locally, remote cache hits, and Bazel's summary
    /// line (`INFO: 28 processes: ...`).
    pub(super) fn counts(&self) -> (u64, u64, &str) {
        (
            self.stats.executed(),
            self.stats.remote_cache_hits(),
            &self.stats.line,
        )
    }

    /// The spawns in the execution log that were not remote cache hits, one
    /// line each: runner, mnemonic, progress message, outputs with digests.
    fn spawns_not_from_cache(&self) -> Vec<String> {
        let text = match std::fs::read_to_string(&self.exec_log) {
            Ok(t) => t,
            Err(e) => return vec![format!("(cannot read {}: {e})", self.exec_log.display())],
        };
        // A stream of concatenated JSON objects (SpawnExec messages).
        let mut lines = Vec::new();
        for spawn in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
            let spawn = match spawn {
                Ok(s) => s,
                Err(e) => {
                    lines.push(format!("(execution log parse error: {e})"));
                    break;
                }
            };
            if spawn["remoteCacheHit"].as_bool() == Some(true) {
                continue;
            }
            let outputs: Vec<String> = spawn["actualOutputs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    format!(
                        "{} (sha256 {} size {})",
                        o["path"].as_str().unwrap_or("?"),
                        o["digest"]["hash"].as_str().unwrap_or("?"),
                        o["digest"]["sizeBytes"].as_str().unwrap_or("0"),
                    )
                })
                .collect();
            lines.push(format!(
                "runner={} mnemonic={} cacheable={} remotable={} {:?} outputs: {}",
                spawn["runner"].as_str().unwrap_or("?"),
                spawn["mnemonic"].as_str().unwrap_or("?"),
                spawn["cacheable"],
                spawn["remotable"],
                spawn["progressMessage"].as_str().unwrap_or(""),
                outputs.join(", ")
            ));
        }
        lines
    }
}

/// Parsed `INFO: 28 processes: 16 remote cache hit, 12 internal.`
#[derive(Debug)]
struct ProcessStats {
    line: String,
    total: u64,
    /// kind ("internal", "remote cache hit", "linux-sandbox", ...) -> count
    by_kind: BTreeMap<String, u64>,
}

impl ProcessStats {
    fn count(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    fn remote_cache_hits(&self) -> u64 {
        self.count("remote cache hit")
    }

    /// Processes that ran on this machine (any local strategy: linux-sandbox,
    /// processwrapper-sandbox, local, worker, ...), i.e. neither cache hits
    /// nor Bazel-internal actions.
    fn executed(&self) -> u64 {
        self.by_kind
            .iter()
            .filter(|(kind, _)| !matches!(kind.as_str(), "internal" | "remote cache hit"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Finds the last `INFO: N processes...` line in Bazel's output. Handles
/// `INFO: 0 processes.` and `INFO: 5 processes: 2 remote cache hit, 3 internal.`
fn parse_process_stats(out: &RunOutput) -> ProcessStats {
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("INFO: ") && l.contains(" process"))
        .rfind(|l| {
            let rest = &l["INFO: ".len()..];
            let mut words = rest.split_whitespace();
            words.next().is_some_and(|n| n.parse::<u64>().is_ok())
                && words
                    .next()
                    .is_some_and(|w| w.trim_end_matches(['.', ':']) == "processes"
                        || w.trim_end_matches(['.', ':']) == "process")
        })
        .unwrap_or_else(|| {
            panic!(
                "no `INFO: N processes: ...` line in Bazel's output\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.stdout, out.stderr
            )
        })
        .to_string();

    let rest = &line["INFO: ".len()..];
    let (head, tail) = match rest.split_once(':') {
        Some((h, t)) => (h, t),
        None => (rest.trim_end_matches('.'), ""),
    };
    let total: u64 = head
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse process count in {line:?}"));
    let mut by_kind = BTreeMap::new();
    for part in tail.trim().trim_end_matches('.').split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (n, kind) = part
            .split_once(' ')
            .unwrap_or_else(|| panic!("cannot parse {part:?} in {line:?}"));
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("cannot parse count {n:?} in {line:?}"));
        *by_kind.entry(kind.trim().to_string()).or_insert(0) += n;
    }
    let sum: u64 = by_kind.values().sum();
    assert_eq!(sum, total, "process kinds don't add up in {line:?}");
    ProcessStats {
        line,
        total,
        by_kind,
    }
}

/// The remote cache errors in Bazel's output, deduplicated and counted, in
/// order of first appearance: each `WARNING: Writing to Remote Cache:` (or
/// `Reading from`, or an `ERROR:` naming the remote cache) with the exception
/// line after it, and every distinct `Caused by: ...` line of those stack
/// traces, e.g. `Caused by: io.grpc.StatusRuntimeException: UNIMPLEMENTED: ...`
/// (the gRPC status the server answered).
fn remote_cache_errors(out: &RunOutput) -> Vec<String> {
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut found: Vec<(String, usize)> = Vec::new();
    let mut note = |s: String| match found.iter_mut().find(|(k, _)| *k == s) {
        Some((_, n)) => *n += 1,
        None => found.push((s, 1)),
    };
    let mut in_report = false;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("WARNING:") || line.starts_with("ERROR:") || line.starts_with("INFO:") {
            in_report =
                !line.starts_with("INFO:") && line.to_ascii_lowercase().contains("remote cache");
            if in_report {
                // `WARNING: Writing to Remote Cache:` has the exception on
                // the next line.
                match lines.get(i + 1) {
                    Some(next) if line.ends_with(':') => note(format!("{line} {next}")),
                    _ => note(line.to_string()),
                }
            }
        } else if in_report && line.starts_with("Caused by:") {
            note(line.to_string());
        }
    }
    found
        .into_iter()
        .map(|(s, n)| {
            if n > 1 {
                format!("{s}  [{n} times]")
            } else {
                s
            }
        })
        .collect()
}

/// The first `n` lines of `text`.
fn head(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text.lines().take(n + 1).collect();
    if lines.len() > n {
        lines[n] = "...";
    }
    lines.join("\n")
}

/// The expected content of `big.txt`: `seq 1 1000000` cut to 5 MiB.
fn expected_big() -> Vec<u8> {
    let mut v = Vec::with_capacity(BIG_SIZE + 16);
    let mut i = 1u64;
    while v.len() < BIG_SIZE {
        v.extend_from_slice(format!("{i}\n").as_bytes());
        i += 1;
    }
    v.truncate(BIG_SIZE);
    v
}

/// Checks every output of the fixture after a (cached) build.
pub(super) fn check_outputs(ws: &Workspace) {
    let big = support::read(ws.bin("big.txt"));
    assert_eq!(big.len(), BIG_SIZE, "big.txt has the wrong size");
    let expected = expected_big();
    if big != expected {
        let first_diff = big.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "big.txt differs from the expected content (first difference at byte {first_diff:?})"
        );
    }

    let empty_path = ws.bin("empty.txt");
    let meta =
        std::fs::metadata(&empty_path).unwrap_or_else(|e| panic!("{}: {e}", empty_path.display()));
    assert!(
        meta.is_file(),
        "{} is not a regular file",
        empty_path.display()
    );
    assert_eq!(meta.len(), 0, "empty.txt is not empty");

    let digest = String::from_utf8(support::read(ws.bin("big.sha256"))).unwrap();
    assert_eq!(
        digest.trim(),
        hex::encode(Sha256::digest(&expected)),
        "big.sha256"
    );

    let hello_out = String::from_utf8(support::read(ws.bin("hello_out.txt"))).unwrap();
    assert_eq!(hello_out, "Hello, bazel-cache!\n5050\n", "hello_out.txt");

    // The linked binary came out of the cache: it must still be executable
    // and work.
    let hello = ws.bin("hello");
    let out = support::run(&mut Command::new(&hello), Duration::from_secs(30));
    out.assert_success(&hello.display().to_string());
    assert_eq!(
        out.stdout, "Hello, bazel-cache!\n5050\n",
        "output of bazel-bin/hello"
    );
}

/// Asserts that a build after wiping Bazel's local state was served entirely
/// from the remote cache: exactly the processes the cold build executed are
/// now remote cache hits, and nothing ran locally.
pub(super) fn assert_all_remote_hits(what: &str, build: &Build, cold: &Build) {
    let stats = &build.stats;
    eprintln!("[e2e_bazel] {what}: {}", stats.line);
    if stats.executed() != 0 || stats.remote_cache_hits() != cold.stats.executed() {
        panic!(
            "{what}: expected all {} cacheable processes to be remote cache hits and none to run locally.\n\
             cold build: {}\n{what}: {}\nparsed: {:?}\n\
             --- spawns that were not remote cache hits ---\n{}\n--- bazel stderr ---\n{}",
            cold.stats.executed(),
            cold.stats.line,
            stats.line,
            stats.by_kind,
            build.spawns_not_from_cache().join("\n"),
            build.out.stderr
        );
    }
    let all = format!("{}\n{}", build.out.stdout, build.out.stderr);
    assert!(
        all.lines()
            .any(|l| l.starts_with("//:greet_test") && l.contains("(cached) PASSED")),
        "{what}: expected `//:greet_test (cached) PASSED`\n--- bazel output ---\n{all}"
    );
}

fn server_file_count(dir: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let ty = e.file_type().unwrap();
                if ty.is_dir() {
                    walk(&e.path(), n);
                } else {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// Logs Bazel's version; panics with an installation hint when it is missing.
pub(super) fn require_bazel() {
    let version = support::require_tool(
        &bazel_program(),
        &["--version"],
        "apt-get install -y bazel-bootstrap",
    );
    eprintln!("[e2e_bazel] {}", version.trim());
}

/// What [`cold_then_all_hits`] learnt.
struct Baseline {
    /// The cold build: `stats.executed()` is the number of cacheable
    /// processes every later build must find in the cache.
    cold: Build,
    /// `NumFiles` from `/status` after the cold build.
    num_files: u64,
}

/// Steps 1 and 2 of both tests, against `remote_cache` (the server's
/// `http://` or `grpc://` URL): a cold build against the empty cache runs
/// and uploads everything; after `clean --expunge` a rebuild is served
/// entirely from the cache, with intact outputs. `label` prefixes the step
/// names (execution log files).
fn cold_then_all_hits(
    server: &Server,
    ws: &Workspace,
    remote_cache: &str,
    label: &str,
    extra_args: &[&str],
) -> Baseline {
    eprintln!(
        "[e2e_bazel] {label}: server at {remote_cache} (dir {})",
        server.dir.display()
    );

    // 1. Cold build: nothing in the cache yet, everything runs locally and
    //    gets uploaded.
    let cold = ws.build_and_test(remote_cache, &format!("{label}-1-cold"), extra_args);
    eprintln!("[e2e_bazel] {label}: cold build: {}", cold.stats.line);
    assert!(
        cold.stats.remote_cache_hits() == 0 && cold.stats.executed() > 0,
        "{label}: cold build against an empty cache: expected no remote cache hits and some executed processes, got: {}",
        cold.stats.line
    );
    check_outputs(ws);

    // (/status needs a client certificate on a TLS port: count files then.)
    let num_files = if server.http_url.starts_with("https://") {
        server_file_count(&server.dir) as u64
    } else {
        server.num_files()
    };
    eprintln!(
        "[e2e_bazel] {label}: after cold build: NumFiles={num_files}, {} files under --dir",
        server_file_count(&server.dir)
    );
    assert!(num_files > 0, "{label}: the cold build uploaded nothing?");

    // 2. Wipe Bazel's local state and rebuild: all hits.
    ws.expunge();
    let warm = ws.build_and_test(remote_cache, &format!("{label}-2-expunged"), extra_args);
    assert_all_remote_hits(
        &format!("{label}: rebuild after clean --expunge"),
        &warm,
        &cold,
    );
    check_outputs(ws);

    Baseline { cold, num_files }
}

/// `GET /cas/<sha256>` on the server's HTTP port must return `expected`.
fn assert_http_serves_blob(server: &Server, what: &str, expected: &[u8]) {
    let hash = hex::encode(Sha256::digest(expected));
    let (code, body) = server.get(&format!("/cas/{hash}"));
    assert_eq!(
        code,
        200,
        "GET /cas/{hash} ({what}, {} bytes): {}",
        expected.len(),
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    assert!(
        body == expected,
        "GET /cas/{hash} ({what}): got {} bytes that differ from the {} expected",
        body.len(),
        expected.len()
    );
}

#[test]
fn bazel_builds_are_served_from_the_remote_cache() {
    require_bazel();
    let server = Server::start(&[]);
    let ws = Workspace::new();

    // 1. + 2.
    let Baseline { cold, num_files } =
        cold_then_all_hits(&server, &ws, &server.http_url, "http", &[]);

    // 3. Restart the server on the same --dir: the cache must persist.
    let dir = server.stop().expect("Server::start owns its dir");
    let server = Server::start_with_dir(dir.path(), &[]);
    eprintln!("[e2e_bazel] http: restarted server at {}", server.http_url);
    let status = server.status();
    assert_eq!(
        status["NumFiles"].as_u64(),
        Some(num_files),
        "NumFiles changed across a restart: {status}"
    );
    ws.expunge();
    let restarted = ws.build_and_test(&server.http_url, "http-3-restarted", &[]);
    assert_all_remote_hits("http: rebuild after server restart", &restarted, &cold);
    check_outputs(&ws);

    ws.expunge();
    drop(server);
    drop(dir);
}

#[test]
fn bazel_builds_over_grpc_are_served_from_the_remote_cache() {
    require_bazel();
    let server = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let grpc_url = server
        .grpc_url()
        .expect("the server printed no `build --remote_cache=grpc://...` line");
    let ws = Workspace::new();

    // 1. + 2. over gRPC.
    let Baseline { cold, .. } = cold_then_all_hits(&server, &ws, &grpc_url, "grpc", &[]);

    // 3. The HTTP port serves what Bazel uploaded over gRPC: the 5 MiB
    //    output (more than a gRPC batch carries, so it went through
    //    ByteStream) and a small one.
    assert_http_serves_blob(&server, "big.txt", &expected_big());
    assert_http_serves_blob(&server, "hello_out.txt", b"Hello, bazel-cache!\n5050\n");

    // 4. Builds without the bytes: metadata only, outputs stay remote.
    ws.expunge();
    let minimal = ws.build_and_test(&grpc_url, "grpc-3-minimal", &["--remote_download_minimal"]);
    assert_all_remote_hits(
        "grpc: rebuild with --remote_download_minimal",
        &minimal,
        &cold,
    );
    let big = ws.bin("big.txt");
    assert!(
        !big.exists(),
        "grpc: --remote_download_minimal downloaded {} anyway: is the flag in effect?",
        big.display()
    );

    // 5. The same server over HTTP: the action-cache entries and blobs
    //    written over gRPC serve an HTTP build, all hits, intact outputs.
    ws.expunge();
    let http = ws.build_and_test(&server.http_url, "grpc-4-http", &[]);
    assert_all_remote_hits("grpc: HTTP rebuild after the gRPC builds", &http, &cold);
    check_outputs(&ws);

    ws.expunge();
}

/// An htpasswd file with one MD5-crypt user, written by `openssl passwd`.
fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let out = Command::new("openssl")
        .args(["passwd", "-apr1", password])
        .output()
        .expect("run openssl");
    assert!(out.status.success());
    let path = dir.join("htpasswd");
    let line = format!("{user}:{}", String::from_utf8(out.stdout).unwrap());
    std::fs::write(&path, line).unwrap();
    path
}

/// Basic auth as Bazel users write it: credentials in the cache URL
/// (`--remote_cache=http://user:pass@host:port`).
#[test]
fn bazel_with_basic_auth_in_the_http_url() {
    require_bazel();
    let secrets = tempfile::tempdir().unwrap();
    let file = htpasswd(secrets.path(), "ci", "s3cr3t-pass");
    let server = Server::start(&["--htpasswd_file", file.to_str().unwrap()]);
    let url = server
        .http_url
        .replacen("http://", "http://ci:s3cr3t-pass@", 1);
    let ws = Workspace::new();
    cold_then_all_hits(&server, &ws, &url, "http-basic-auth", &[]);
    ws.expunge();
}

/// HTTPS with basic auth in the URL. Bazel's HTTP cache client trusts the
/// JVM's trust store, so the private CA goes in through
/// `--host_jvm_args=-Djavax.net.ssl.trustStore=...` (a PKCS#12 store made
/// with the JDK's `keytool`).
///
/// Not covered with Bazel here, because Debian's Bazel 4.2.3 cannot: gRPC
/// over TLS (`grpcs://`) crashes the client at start ("JDK provider does not
/// support ALPN protocol": the package is built without netty-tcnative), and
/// its HTTP cache client does not send `--tls_client_certificate` (mTLS).
/// tests/api/auth.rs covers both with rustls and curl clients.
#[test]
fn bazel_over_https_with_basic_auth() {
    require_bazel();
    let secrets = tempfile::tempdir().unwrap();
    let file = htpasswd(secrets.path(), "ci", "s3cr3t-pass");
    let ca = support::pki::Ca::new(secrets.path(), "ca");
    let server_cert = ca.server("server");
    let trust_store = secrets.path().join("trust.p12");
    let keytool = Command::new("keytool")
        .args([
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-storetype",
            "PKCS12",
        ])
        .args(["-storepass", "changeit", "-file"])
        .arg(ca.pem())
        .arg("-keystore")
        .arg(&trust_store)
        .output()
        .expect("run keytool (from the JDK that bazel-bootstrap depends on)");
    assert!(
        keytool.status.success(),
        "{}",
        String::from_utf8_lossy(&keytool.stderr)
    );
    let server = Server::start(&[
        "--htpasswd_file",
        file.to_str().unwrap(),
        "--tls_cert_file",
        server_cert.cert.to_str().unwrap(),
        "--tls_key_file",
        server_cert.key.to_str().unwrap(),
    ]);
    assert!(
        server.http_url.starts_with("https://"),
        "{}",
        server.http_url
    );
    let url = server
        .http_url
        .replacen("https://", "https://ci:s3cr3t-pass@", 1);
    let mut ws = Workspace::new();
    ws.startup_args = vec![
        format!(
            "--host_jvm_args=-Djavax.net.ssl.trustStore={}",
            trust_store.display()
        ),
        "--host_jvm_args=-Djavax.net.ssl.trustStorePassword=changeit".to_string(),
    ];
    cold_then_all_hits(&server, &ws, &url, "https-basic-auth", &[]);
    ws.expunge();
}

#[test]
fn process_stats_parsing() {
    fn parse(line: &str) -> ProcessStats {
        parse_process_stats(&RunOutput {
            status: std::process::ExitStatus::default(),
            stdout: String::new(),
            stderr: format!(
                "INFO: Elapsed time: 1.0s\n{line}\nINFO: Build completed successfully, 28 total actions\n"
            ),
            elapsed: Duration::ZERO,
        })
    }
    let s = parse("INFO: 28 processes: 16 remote cache hit, 12 internal.");
    assert_eq!((s.total, s.remote_cache_hits(), s.executed()), (28, 16, 0));
    let s = parse("INFO: 28 processes: 12 internal, 16 linux-sandbox.");
    assert_eq!((s.total, s.remote_cache_hits(), s.executed()), (28, 0, 16));
    let s = parse(
        "INFO: 9 processes: 2 remote cache hit, 3 internal, 1 local, 3 processwrapper-sandbox.",
    );
    assert_eq!((s.total, s.remote_cache_hits(), s.executed()), (9, 2, 4));
    let s = parse("INFO: 0 processes.");
    assert_eq!((s.total, s.executed()), (0, 0));
    let s = parse("INFO: 1 process: 1 internal.");
    assert_eq!((s.total, s.executed()), (1, 0));
}

#[test]
fn remote_cache_error_summary() {
    fn errors(stderr: &str) -> Vec<String> {
        remote_cache_errors(&RunOutput {
            status: std::process::ExitStatus::default(),
            stdout: String::new(),
            stderr: stderr.to_string(),
            elapsed: Duration::ZERO,
        })
    }
    // What Bazel 4.2.3 printed against a server without ByteStream.
    let trace = "WARNING: Writing to Remote Cache:\n\
        com.google.devtools.build.lib.remote.BulkTransferException: 3 errors during bulk transfer\n\
        \tat com.google.devtools.build.lib.remote.RemoteCache.waitForBulkTransfer(RemoteCache.java:291)\n\
        Caused by: java.io.IOException: io.grpc.StatusRuntimeException: UNIMPLEMENTED: soon\n\
        \tat com.google.devtools.build.lib.remote.ByteStreamUploader.lambda(ByteStreamUploader.java:1)\n\
        \tCaused by: io.grpc.StatusRuntimeException: UNIMPLEMENTED: soon\n\
        \t\tat io.grpc.Status.asRuntimeException(Status.java:526)\n";
    let out = format!(
        "INFO: Analyzed 7 targets (18 packages loaded, 105 targets configured).\n{trace}\
         [3 / 20] Executing genrule //:big\n{trace}\
         INFO: 28 processes: 12 internal, 16 linux-sandbox.\n\
         Caused by: something unrelated after the report\n"
    );
    assert_eq!(
        errors(&out),
        [
            "WARNING: Writing to Remote Cache: com.google.devtools.build.lib.remote.BulkTransferException: 3 errors during bulk transfer  [2 times]",
            "Caused by: java.io.IOException: io.grpc.StatusRuntimeException: UNIMPLEMENTED: soon  [2 times]",
            "Caused by: io.grpc.StatusRuntimeException: UNIMPLEMENTED: soon  [2 times]",
        ]
    );
    assert_eq!(
        errors("WARNING: Remote Cache: UNAVAILABLE: io exception\n[1 / 2] x\n"),
        ["WARNING: Remote Cache: UNAVAILABLE: io exception"]
    );
    // A clean build, and warnings that have nothing to do with the cache.
    assert!(errors("INFO: Build completed successfully, 28 total actions\n").is_empty());
    assert!(errors("WARNING: some/BUILD:1:1: target is deprecated\n").is_empty());
}
