//! The configuration loader, fed arbitrary YAML files: the whole path the
//! binary takes for `bazel-cache check-config --config_file FILE` (schema
//! check with line/column errors, merge with the other sources, defaults
//! and validation). Checks: no panic, a refusal is one line (it is all an
//! operator sees in a crash-looping pod's log), and an accepted
//! configuration keeps the invariants the server relies on.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use bazel_cache::config::{self, ConfigError};
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for every input (the loader
/// takes a path, as the binary does). In /dev/shm when there is one, so the
/// rewrite costs no disk I/O.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!(
            "bazel-cache-fuzz-config-{}.yaml",
            std::process::id()
        ))
    })
}

/// The environment the loader sees: none of the process's variables, so
/// the result depends on the input alone.
fn env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/nonexistent-home".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let path = config_path();
    let mut file = std::fs::File::create(path).expect("create the config file");
    file.write_all(data).expect("write the config file");
    drop(file);
    let args = [
        "bazel-cache",
        "check-config",
        "--config_file",
        path.to_str().expect("UTF-8 temp path"),
    ];
    match config::from_args_and_env(args, &env) {
        Ok(invocation) => {
            let c = invocation.config;
            assert!(c.max_size_bytes > 0, "accepted max_size 0");
            assert!(c.max_blob_size > 0, "accepted max_blob_size 0");
            let buckets = &c.endpoint_metrics_duration_buckets;
            assert!(
                buckets.iter().all(|b| b.is_finite()) && buckets.windows(2).all(|w| w[0] < w[1]),
                "histogram buckets not finite and strictly ascending: {buckets:?}"
            );
        }
        Err(ConfigError::Cli(e)) => panic!("the fixed command line was refused: {e}"),
        Err(e) => {
            let message = e.to_string();
            assert!(!message.trim().is_empty(), "empty error");
            assert!(
                !message.trim_end().contains('\n'),
                "error is not one line: {message:?}"
            );
        }
    }
});
