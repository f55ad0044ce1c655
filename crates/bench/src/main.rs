//! `bazel-cache-bench`: the load generator on its own, for measuring any
//! Bazel remote cache without installing the server. It takes what
//! `bazel-cache bench` takes after `bench` (`bazel-cache-bench --help`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any thread starts: 1 MiB gRPC messages are encoded into
    // buffers of their own (bazel-cache-malloc says what that costs).
    bazel_cache_malloc::tune();
    match bazel_cache_bench::from_standalone_command_line(std::env::args_os()) {
        Ok(args) => bazel_cache_bench::main_named(env!("CARGO_BIN_NAME"), args),
        // Help (status 0) or a usage error (status 2), printed by clap.
        Err(e) => e.exit(),
    }
}
