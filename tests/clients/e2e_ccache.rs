//! End-to-end test with a real ccache (Debian 12: 4.7.5) using the server as
//! its remote storage with `layout=bazel` (entries under `/ac/<64 hex>`,
//! which are not ActionResults, hence `--disable_http_ac_validation`):
//!
//! 1. compile `tests/e2e/ccache/*.c` through ccache with an empty local cache
//!    dir: all misses, results written to the server;
//! 2. delete the local cache dir and compile again: every compilation must
//!    be a remote storage hit, and the object files byte-identical to the
//!    first ones.
//!
//! ccache reads no user configuration: `CCACHE_CONFIGPATH` points to an
//! empty file, every other `CCACHE_*` variable of the caller is removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::Server;

const SOURCES: &[&str] = &["util.c", "main.c"];
const TIMEOUT: Duration = Duration::from_secs(120);

fn cc() -> String {
    std::env::var("E2E_CC").unwrap_or_else(|_| "gcc".to_string())
}

struct Ccache {
    /// Sources are compiled from here (same relative paths both times).
    src: PathBuf,
    cache_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    remote_storage: String,
}

impl Ccache {
    fn command(&self) -> Command {
        let mut cmd = Command::new("ccache");
        support::env_remove_prefixed(&mut cmd, "CCACHE_");
        cmd.current_dir(&self.src)
            .env("CCACHE_DIR", &self.cache_dir)
            .env("CCACHE_CONFIGPATH", &self.config)
            .env("CCACHE_REMOTE_STORAGE", &self.remote_storage)
            .env("CCACHE_LOGFILE", &self.log)
            // Don't let the locale change compiler messages between runs.
            .env("LC_ALL", "C");
        cmd
    }

    /// Compiles every source into `obj_dir` (relative to `src`).
    fn compile_all(&self, obj_dir: &str) {
        std::fs::create_dir_all(self.src.join(obj_dir)).unwrap();
        for source in SOURCES {
            let object = format!("{obj_dir}/{}", source.replace(".c", ".o"));
            let mut cmd = self.command();
            cmd.args([&cc(), "-O2", "-Wall", "-c", source, "-o", &object]);
            let out = support::run(&mut cmd, TIMEOUT);
            out.assert_success(&support::describe(&cmd));
        }
    }

    fn stats(&self) -> HashMap<String, u64> {
        let mut cmd = self.command();
        cmd.arg("--print-stats");
        let out = support::run(&mut cmd, TIMEOUT);
        out.assert_success("ccache --print-stats");
        let stats = support::parse_tab_counters(&out.stdout);
        assert!(
            stats.contains_key("remote_storage_hit"),
            "ccache --print-stats has no remote_storage_hit counter:\n{}",
            out.stdout
        );
        stats
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Only the non-zero counters, sorted, for messages.
fn nonzero(stats: &HashMap<String, u64>) -> String {
    let mut v: Vec<_> = stats
        .iter()
        .filter(|(k, v)| **v != 0 && !k.ends_with("_timestamp"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    v.join(" ")
}

fn ccache_version() -> (u32, u32) {
    let text = support::require_tool("ccache", &["--version"], "apt-get install -y ccache");
    // "ccache version 4.7.5"
    let version = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("cannot parse `ccache --version`: {text}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn ccache_hits_the_remote_cache_after_wiping_the_local_one() {
    let (major, minor) = ccache_version();
    // `remote_storage` (formerly `secondary_storage`) and its counter names
    // are those of ccache >= 4.6 (Debian 12 ships 4.7.5).
    assert!(
        (major, minor) >= (4, 6),
        "ccache {major}.{minor} is too old: need >= 4.6 (remote_storage, layout=bazel)"
    );
    support::require_tool(&cc(), &["--version"], "apt-get install -y gcc");

    let server = Server::start(&["--disable_http_ac_validation"]);
    eprintln!("[e2e_ccache] server at {}", server.http_url);

    let tmp = tempfile::Builder::new()
        .prefix("bazel-cache-e2e-ccache.")
        .tempdir()
        .unwrap();
    let src = tmp.path().join("src");
    support::copy_dir(&support::fixture("ccache"), &src);
    let config = tmp.path().join("ccache.conf");
    std::fs::write(&config, "").unwrap();
    let ccache = Ccache {
        src,
        cache_dir: tmp.path().join("ccache-dir"),
        config,
        log: tmp.path().join("ccache.log"),
        // Generous timeouts: the defaults (100 ms connect, 10 s operation)
        // are tight for a loaded CI machine.
        remote_storage: format!(
            "{}|layout=bazel|connect-timeout=5000|operation-timeout=60000",
            server.http_url
        ),
    };
    let n = SOURCES.len() as u64;

    // 1. Cold: local and remote misses; each compilation writes a manifest
    //    and a result to the remote storage.
    ccache.compile_all("obj1");
    let cold = ccache.stats();
    eprintln!("[e2e_ccache] cold compile: {}", nonzero(&cold));
    let get = |s: &HashMap<String, u64>, k: &str| s.get(k).copied().unwrap_or(0);
    assert!(
        get(&cold, "cache_miss") == n
            && get(&cold, "remote_storage_miss") == n
            && get(&cold, "remote_storage_write") >= n
            && get(&cold, "remote_storage_error") == 0
            && get(&cold, "remote_storage_timeout") == 0,
        "cold compile: expected {n} misses, {n}+ remote writes and no remote errors; got {}\n--- ccache log ---\n{}",
        nonzero(&cold),
        ccache.log()
    );
    let num_files = server.num_files();
    eprintln!("[e2e_ccache] after cold compile: /status NumFiles={num_files}");
    assert!(
        num_files > 0,
        "ccache uploaded nothing? /status: {}",
        server.status()
    );

    // 2. Wipe the local cache (it also holds the statistics), compile again.
    std::fs::remove_dir_all(&ccache.cache_dir).unwrap();
    ccache.compile_all("obj2");
    let warm = ccache.stats();
    eprintln!(
        "[e2e_ccache] after wiping the local cache: {}",
        nonzero(&warm)
    );
    assert!(
        get(&warm, "remote_storage_hit") == n
            && get(&warm, "direct_cache_hit") + get(&warm, "preprocessed_cache_hit") == n
            && get(&warm, "cache_miss") == 0
            && get(&warm, "local_storage_hit") == 0
            && get(&warm, "remote_storage_error") == 0
            && get(&warm, "remote_storage_timeout") == 0,
        "rebuild with an empty local cache: expected {n} remote storage hits and no misses; got {}\n--- ccache log ---\n{}",
        nonzero(&warm),
        ccache.log()
    );

    // The objects that came from the server are the ones that were uploaded.
    let obj1 = files_in(&ccache.src.join("obj1"));
    let obj2 = files_in(&ccache.src.join("obj2"));
    assert_eq!(obj1.len(), SOURCES.len(), "{obj1:?}");
    assert_eq!(obj2.len(), SOURCES.len(), "{obj2:?}");
    for (a, b) in obj1.iter().zip(&obj2) {
        assert_eq!(a.file_name(), b.file_name());
        let (da, db) = (support::read(a), support::read(b));
        assert!(!da.is_empty(), "{} is empty", a.display());
        assert!(
            da == db,
            "{} ({} bytes) and {} ({} bytes) differ",
            a.display(),
            da.len(),
            b.display(),
            db.len()
        );
    }

    // And they still link into a working program.
    let exe = ccache.src.join("prog");
    let mut link = Command::new(cc());
    link.current_dir(&ccache.src)
        .args(["obj2/main.o", "obj2/util.o", "-o"])
        .arg(&exe);
    support::run(&mut link, TIMEOUT).assert_success("link");
    let out = support::run(&mut Command::new(&exe), TIMEOUT);
    out.assert_success("prog");
    assert_eq!(out.stdout, "fib(40) = 102334155\nreverse = ehcacc\n");
}
