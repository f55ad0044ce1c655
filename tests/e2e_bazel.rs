//! End-to-end test with a real Bazel (Debian 12's `bazel-bootstrap`, 4.2.3)
//! against the server's HTTP cache:
//!
//! 1. build + test the fixture workspace `tests/e2e/bazel-workspace` with
//!    `--remote_cache=http://...`: every action runs locally and is uploaded;
//! 2. wipe Bazel's local state (`clean --expunge`), build again: every
//!    cacheable action must be a remote cache hit, and the outputs (a 5 MiB
//!    file, an empty file, a C++ binary, ...) must be intact;
//! 3. restart the server on the same `--dir`, wipe and build again: still
//!    all hits, so the cache survives a restart.
//!
//! Bazel runs in `--batch` mode (no Bazel server process can outlive the
//! test) with a private `--output_user_root` inside a temp dir, `--nohome_rc`
//! and `--disk_cache=` (so neither the user's Bazel state nor a disk cache
//! takes part). Every Bazel invocation has a time limit.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{RunOutput, Server};
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
struct Workspace {
    tmp: tempfile::TempDir,
    root: PathBuf,
    output_user_root: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::Builder::new()
            .prefix("bazel-cache-e2e-bazel.")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("ws");
        common::copy_dir(&common::fixture("bazel-workspace"), &root);
        let output_user_root = tmp.path().join("bazel-root");
        std::fs::create_dir(&output_user_root).unwrap();
        Workspace {
            tmp,
            root,
            output_user_root,
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
            .arg(command)
            .args(args)
            // The bazel wrapper script honours these; keep the caller's out.
            .env_remove("USE_BAZEL_VERSION")
            .env_remove("BAZELISK_HOME");
        let out = common::run(&mut cmd, BAZEL_TIMEOUT);
        eprintln!(
            "[e2e_bazel] {} ({:.1?}, {})",
            common::describe(&cmd),
            out.elapsed,
            out.status
        );
        out
    }

    /// `bazel test //...` against the remote cache; panics unless it succeeds.
    /// `step` names the execution log file (`<tmp>/exec-<step>.json`).
    fn build_and_test(&self, remote_cache: &str, step: &str) -> Build {
        let exec_log = self.tmp.path().join(format!("exec-{step}.json"));
        let remote_cache_flag = format!("--remote_cache={remote_cache}");
        let exec_log_flag = format!("--execution_log_json_file={}", exec_log.display());
        let out = self.bazel(
            "test",
            &[
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
                "//...",
            ],
        );
        out.assert_success("bazel test //...");
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
    fn expunge(&self) {
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
struct Build {
    out: RunOutput,
    stats: ProcessStats,
    exec_log: PathBuf,
}

impl Build {
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
fn check_outputs(ws: &Workspace) {
    let big = common::read(ws.bin("big.txt"));
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

    let digest = String::from_utf8(common::read(ws.bin("big.sha256"))).unwrap();
    assert_eq!(
        digest.trim(),
        hex::encode(Sha256::digest(&expected)),
        "big.sha256"
    );

    let hello_out = String::from_utf8(common::read(ws.bin("hello_out.txt"))).unwrap();
    assert_eq!(hello_out, "Hello, bazel-cache!\n5050\n", "hello_out.txt");

    // The linked binary came out of the cache: it must still be executable
    // and work.
    let hello = ws.bin("hello");
    let out = common::run(&mut Command::new(&hello), Duration::from_secs(30));
    out.assert_success(&hello.display().to_string());
    assert_eq!(
        out.stdout, "Hello, bazel-cache!\n5050\n",
        "output of bazel-bin/hello"
    );
}

/// Asserts that a build after wiping Bazel's local state was served entirely
/// from the remote cache: exactly the processes the cold build executed are
/// now remote cache hits, and nothing ran locally.
fn assert_all_remote_hits(what: &str, build: &Build, cold: &Build) {
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

#[test]
fn bazel_builds_are_served_from_the_remote_cache() {
    let version = common::require_tool(
        &bazel_program(),
        &["--version"],
        "apt-get install -y bazel-bootstrap",
    );
    eprintln!("[e2e_bazel] {}", version.trim());

    let server = Server::start(&[]);
    eprintln!(
        "[e2e_bazel] server at {} (dir {})",
        server.http_url,
        server.dir.display()
    );
    let ws = Workspace::new();

    // 1. Cold build: nothing in the cache yet, everything runs locally and
    //    gets uploaded.
    let cold = ws.build_and_test(&server.http_url, "1-cold");
    eprintln!("[e2e_bazel] cold build: {}", cold.stats.line);
    assert!(
        cold.stats.remote_cache_hits() == 0 && cold.stats.executed() > 0,
        "cold build against an empty cache: expected no remote cache hits and some executed processes, got: {}",
        cold.stats.line
    );
    check_outputs(&ws);

    let num_files = server.num_files();
    eprintln!(
        "[e2e_bazel] after cold build: /status NumFiles={num_files}, {} files under --dir",
        server_file_count(&server.dir)
    );
    assert!(
        num_files > 0,
        "the cold build uploaded nothing? /status: {}",
        server.status()
    );

    // 2. Wipe Bazel's local state and rebuild: all hits.
    ws.expunge();
    let warm = ws.build_and_test(&server.http_url, "2-expunged");
    assert_all_remote_hits("rebuild after clean --expunge", &warm, &cold);
    check_outputs(&ws);

    // 3. Restart the server on the same --dir: the cache must persist.
    let dir = server.stop().expect("Server::start owns its dir");
    let server = Server::start_with_dir(dir.path(), &[]);
    eprintln!("[e2e_bazel] restarted server at {}", server.http_url);
    let status = server.status();
    assert_eq!(
        status["NumFiles"].as_u64(),
        Some(num_files),
        "NumFiles changed across a restart: {status}"
    );
    ws.expunge();
    let restarted = ws.build_and_test(&server.http_url, "3-restarted");
    assert_all_remote_hits("rebuild after server restart", &restarted, &cold);
    check_outputs(&ws);

    ws.expunge();
    drop(server);
    drop(dir);
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
