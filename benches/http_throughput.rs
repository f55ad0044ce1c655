//! HTTP throughput and latency of the real server binary (a child process
//! on 127.0.0.1), measured with `bazel-cache bench`: PUT and GET of 4 KiB
//! and 1 MiB blobs at 1, 16 and 64 concurrent clients (one keep-alive
//! connection each). Every GET is verified by hashing the body.
//!
//! Run: `cargo bench --bench http_throughput`
//! Knobs (env): BENCH_SECONDS (3 per phase, after 1 s of warm-up),
//! BENCH_CLIENTS (1,16,64), BENCH_SERVER_ARGS (extra server flags, e.g.
//! `--fsync=false --storage_mode uncompressed` or
//! `--enable_endpoint_metrics`), BENCH_SERVER (another server binary).
//! The server runs with its defaults otherwise (fsync on, zstd storage).

mod support;

use support::{ServerProcess, cores, env_list, env_num, env_or, matrix, print_header};

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 3).max(1);
    let clients = env_list("BENCH_CLIENTS", "1,16,64");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), &["--max_size", "20"]);
    println!(
        "bazel-cache HTTP benchmark: {} ({}), server args [{}], {seconds} s per phase, {} cores shared by client and server",
        server.http,
        support::server_binary().display(),
        env_or("BENCH_SERVER_ARGS", "defaults"),
        cores(),
    );
    print_header();
    matrix("HTTP", &server.http, seconds, &clients, &[]).await;
    println!("server RSS after the run: {} MiB", server.rss_kib() / 1024);
}
