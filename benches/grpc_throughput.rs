//! gRPC (REAPI v2) throughput and latency of the real server binary (a
//! child process on 127.0.0.1), measured with `bazel-cache bench`:
//!
//! - the matrix: PUT (BatchUpdateBlobs / ByteStream.Write for blobs over the
//!   batch limit) and GET (BatchReadBlobs / ByteStream.Read) of 4 KiB and
//!   1 MiB blobs at 1, 16 and 64 concurrent clients, one HTTP/2 connection
//!   each, one blob per call;
//! - batches as Bazel sends them: FindMissingBlobs of 1,000 digests (half
//!   present), BatchUpdateBlobs / BatchReadBlobs of 256 x 4 KiB, 16 calls in
//!   flight on one connection;
//! - ByteStream Write / Read of 64 MiB blobs, 4 streams on one connection.
//!
//! Every read is verified by hashing what comes back.
//!
//! Run: `cargo bench --bench grpc_throughput`
//! Knobs (env): BENCH_SECONDS (3 per phase, after 1 s of warm-up),
//! BENCH_CLIENTS (1,16,64), BENCH_CHUNK_KIB (1024, ByteStream message size),
//! BENCH_SERVER_ARGS (extra server flags), BENCH_SERVER (another binary).

mod support;

use support::{
    ServerProcess, cores, env_list, env_num, env_or, matrix, phase, print_header, print_row,
};

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 3).max(1);
    let clients = env_list("BENCH_CLIENTS", "1,16,64");
    let chunk = format!("{}KiB", env_num("BENCH_CHUNK_KIB", 1024).max(1));
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), &["--max_size", "20"]);
    let url = server.grpc().to_owned();
    println!(
        "bazel-cache gRPC benchmark: {url} ({}), server args [{}], {seconds} s per phase, {} cores shared by client and server",
        support::server_binary().display(),
        env_or("BENCH_SERVER_ARGS", "defaults"),
        cores(),
    );
    print_header();
    matrix("gRPC", &url, seconds, &clients, &["--chunk_size", &chunk]).await;

    let duration = format!("{seconds}s");
    let common = [
        "--duration",
        &duration,
        "--warmup",
        "1s",
        "--no_write_check",
        "--connections",
        "1",
    ];
    let batches = [
        ("FindMissingBlobs 1000 digests", "find", "1000"),
        ("BatchUpdateBlobs 256 x 4 KiB", "write", "256"),
        ("BatchReadBlobs 256 x 4 KiB", "read", "256"),
    ];
    println!("\n(batches: 16 calls in flight on one connection; blobs/s = req/s x blobs per call)");
    for (name, mix, batch) in batches {
        let mut args = vec![
            "--mix",
            mix,
            "--batch",
            batch,
            "--sizes",
            "4KiB",
            "--concurrency",
            "16",
        ];
        args.extend(common);
        let report = phase(&url, &args).await;
        print_row(name, &report);
        println!(
            "{:<36} {:>8} {:>11.0} blobs/s",
            "", "", report.total.blobs_per_second
        );
    }
    println!("\n(ByteStream: 4 streams on one connection, {chunk} messages)");
    for (name, mix) in [
        ("ByteStream.Write 64 MiB", "write"),
        ("ByteStream.Read 64 MiB", "read"),
    ] {
        let mut args = vec![
            "--mix",
            mix,
            "--sizes",
            "64MiB",
            "--concurrency",
            "4",
            "--chunk_size",
            &chunk,
        ];
        args.extend(common);
        let report = phase(&url, &args).await;
        print_row(name, &report);
    }
    println!("server RSS after the run: {} MiB", server.rss_kib() / 1024);
}
