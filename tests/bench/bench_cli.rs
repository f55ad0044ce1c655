//! `bazel-cache bench`, the load generator, run as users run it: the real
//! binary against a real server over HTTP and gRPC (plain, TLS, mTLS, basic
//! auth). Each test checks what the report says against what the server
//! saw (files stored, RPCs served, paths requested), that the report's
//! figures agree with each other, and that failures (corrupt blobs, refused
//! writes, unreachable or misconfigured targets) are counted or reported,
//! never hidden.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::pki::Ca;
use crate::support::{Server, sha_htpasswd as htpasswd};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "bench did not print JSON ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub(crate) fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "bench exit status\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }
}

/// Runs `bazel-cache bench ARGS` (always this build's binary, whatever
/// server `BAZEL_CACHE_E2E_SERVER` selects).
pub(crate) fn bench(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazel-cache"));
    cmd.arg("bench").args(args);
    let out = support::run(&mut cmd, TIMEOUT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

pub(crate) fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

pub(crate) fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

pub(crate) fn rows(report: &Value) -> &Vec<Value> {
    report["rows"].as_array().expect("rows")
}

/// The row for `op` and `size`.
pub(crate) fn row<'a>(report: &'a Value, op: &str, size: u64) -> &'a Value {
    rows(report)
        .iter()
        .find(|r| r["op"] == op && r["size"] == size)
        .unwrap_or_else(|| panic!("no {op} {size} row in {report}"))
}

/// The figures of a report must agree with each other.
pub(crate) fn check_consistent(report: &Value) {
    let elapsed = f(report, "elapsed_seconds");
    assert!(elapsed > 0.0, "{report}");
    // --batch 0: one blob per ByteStream call.
    let batch = u(report, "batch").max(1);
    let mut sum = (0, 0, 0, 0);
    for r in rows(report).iter().chain(report["ops"].as_array().unwrap()) {
        let (requests, blobs, bytes, errors) = (
            u(r, "requests"),
            u(r, "blobs"),
            u(r, "bytes"),
            u(r, "errors"),
        );
        assert!(errors <= requests, "{r}");
        assert!(blobs <= (requests - errors) * batch, "{r}");
        assert!(blobs >= requests - errors, "{r}");
        let rate = f(r, "requests_per_second");
        assert!(
            (rate - requests as f64 / elapsed).abs() < 1e-6 * rate.max(1.0),
            "{r}"
        );
        let mib = f(r, "mib_per_second");
        assert!(
            (mib - bytes as f64 / elapsed / 1048576.0).abs() < 1e-6 * mib.max(1.0),
            "{r}"
        );
        if let Some(size) = r["size"].as_u64() {
            // Reads and writes move whole blobs (zstd ones count the blob,
            // not the stream); finds move none; ActionResults are a few
            // hundred bytes, whatever the size of the blob they name.
            let op = r["op"].as_str().unwrap();
            if op.starts_with("ac-") {
                assert!(bytes >= blobs * 100 && bytes <= blobs * 1000, "{r}");
            } else {
                let expected = if op == "find" { 0 } else { blobs * size };
                assert_eq!(bytes, expected, "{r}");
            }
            sum = (
                sum.0 + requests,
                sum.1 + blobs,
                sum.2 + bytes,
                sum.3 + errors,
            );
        }
        let l = &r["latency"];
        if requests > errors {
            let (p50, p99, p999, max) = (
                f(l, "p50_ms"),
                f(l, "p99_ms"),
                f(l, "p999_ms"),
                f(l, "max_ms"),
            );
            assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{r}");
        }
    }
    let total = &report["total"];
    assert_eq!(
        (
            u(total, "requests"),
            u(total, "blobs"),
            u(total, "bytes"),
            u(total, "errors")
        ),
        sum,
        "{report}"
    );
    let by_kind: u64 = report["errors"]["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_kind, sum.3, "{report}");
    assert_eq!(u(&report["errors"], "total"), sum.3, "{report}");
}

pub(crate) fn write_blobs(report: &Value) -> u64 {
    rows(report)
        .iter()
        .filter(|r| r["op"] == "write")
        .map(|r| u(r, "blobs"))
        .sum()
}

#[test]
fn http_mixed_load_is_measured_verified_and_stored() {
    let server = Server::start(&["--max_size", "1"]);
    let url = server.http_url.clone();
    let args = [
        url.as_str(),
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--sizes",
        "4KiB:3,300KiB:1",
        "--mix",
        "read:6,write:3,find:1",
        "--prefill",
        "20",
        "--json",
    ];
    let run = bench(&args);
    let report = run.expect(0).json();
    check_consistent(&report);
    assert_eq!(report["protocol"], "http");
    assert_eq!(u(&report["prefill"], "blobs"), 40);
    assert_eq!(u(&report["prefill"], "uploaded"), 40);
    assert_eq!(u(&report["errors"], "total"), 0);
    for op in ["read", "write", "find"] {
        assert!(u(row(&report, op, 4096), "requests") > 0, "{op}: {report}");
    }
    // Every acknowledged write is a file in the store, beside the prefill.
    let written = write_blobs(&report);
    let check = &report["write_check"];
    assert_eq!(u(check, "acknowledged"), written);
    assert_eq!(u(check, "missing"), 0);
    assert!(u(check, "read_back") > 0 && u(check, "read_back_failed") == 0);
    assert_eq!(server.num_files(), 40 + written);

    // A second run finds the prefill stored and uploads nothing; a request
    // count is exact.
    let mut args = args.to_vec();
    args[1..3].copy_from_slice(&["--requests", "30"]);
    let report = bench(&args).expect(0).json();
    check_consistent(&report);
    assert_eq!(u(&report["prefill"], "uploaded"), 0);
    assert_eq!(u(&report["total"], "requests"), 30);
    assert_eq!(server.num_files(), 40 + written + write_blobs(&report));
}

#[test]
fn the_prefill_asks_again_when_its_uploads_evict_other_prefilled_blobs() {
    // Room for 12 blobs of 256 KiB. Eight prefilled blobs, then six other
    // blobs: the two oldest prefilled ones are evicted, and the rest are
    // now the least recently used (a read moves a blob up at most once a
    // minute). Uploading the two missing ones evicts two more, and so on.
    let server = Server::start(&[
        "--max_size",
        "0.0029296875",
        "--storage_mode",
        "uncompressed",
    ]);
    let url = server.http_url.clone();
    let run = |extra: &[&str]| {
        let mut args = vec![
            url.as_str(),
            "--sizes",
            "256KiB",
            "--concurrency",
            "1",
            "--warmup",
            "0s",
            "--prefill",
            "8",
            "--json",
        ];
        args.extend_from_slice(extra);
        bench(&args).expect(0).json()
    };
    let first = run(&["--mix", "read", "--requests", "1"]);
    assert_eq!(u(&first["prefill"], "uploaded"), 8);
    assert_eq!(u(&first["prefill"], "rounds"), 1);
    run(&["--mix", "write", "--requests", "6"]);
    assert_eq!(server.num_files(), 12);

    let report = run(&["--mix", "read", "--requests", "64"]);
    check_consistent(&report);
    // Every read found its blob: the prefill went on until none was missing.
    assert_eq!(u(&report["errors"], "total"), 0, "{report}");
    assert!(u(&report["prefill"], "rounds") >= 2, "{report}");
    assert!(u(&report["prefill"], "uploaded") >= 4, "{report}");
}

#[test]
fn http_instance_name_and_url_path_prefix_the_requests() {
    let server = Server::start(&[]);
    let url = format!("{}/team-a/", server.http_url);
    bench(&[
        &url,
        "--instance_name",
        "ci",
        "--requests",
        "10",
        "--warmup",
        "0s",
        "--prefill",
        "3",
        "--mix",
        "read:1,write:1",
    ])
    .expect(0);
    // The access log names every path the server was asked for.
    let cas = |log: &str| log.lines().filter(|l| l.contains("/cas/")).count();
    let log = server.log_once(|log| cas(log) >= 13);
    let cas_lines: Vec<&str> = log.lines().filter(|l| l.contains("/cas/")).collect();
    assert!(cas_lines.len() >= 13, "{log}");
    for line in cas_lines {
        assert!(line.contains("/team-a/ci/cas/"), "{line}");
    }
}

/// Asserts the server answered each of `methods` with OK at least once.
pub(crate) fn assert_served(server: &Server, methods: &[&str]) {
    let served = grpc_methods_served(server);
    for method in methods {
        assert!(
            served.iter().any(|m| m == method),
            "{method} not served: {served:?}"
        );
    }
}

/// Names of gRPC methods the server answered with OK at least once, from
/// its endpoint metrics.
fn grpc_methods_served(server: &Server) -> Vec<String> {
    let (code, body) = server.get("/metrics");
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    let mut methods = Vec::new();
    for line in text.lines() {
        if !line.starts_with("grpc_server_handled_total{") || !line.contains("grpc_code=\"OK\"") {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let method = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        if value > 0.0 {
            methods.push(method.to_owned());
        }
    }
    methods
}

#[test]
fn grpc_uses_batches_for_small_blobs_and_bytestream_for_large_ones() {
    let server = Server::start(&["--grpc_address", "127.0.0.1:0", "--enable_endpoint_metrics"]);
    let url = server.grpc_url().unwrap();
    let run = bench(&[
        &url,
        "--requests",
        "60",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--sizes",
        "4KiB:2,5MiB:1",
        "--mix",
        "read:5,write:3,find:2",
        "--batch",
        "4",
        "--prefill",
        "6",
        "--instance_name",
        "main/ci",
        "--chunk_size",
        "256KiB",
        "--json",
    ]);
    let report = run.expect(0).json();
    check_consistent(&report);
    assert_eq!(report["protocol"], "grpc");
    assert_eq!(u(&report, "connections"), 2);
    assert_eq!(u(&report["total"], "requests"), 60);
    // Our server announces 3.75 MiB: 4 KiB blobs travel four to a call,
    // 5 MiB blobs one per ByteStream call.
    assert_eq!(u(&report, "batch_limit_bytes"), 3_932_160);
    let small_reads = row(&report, "read", 4096);
    assert_eq!(u(small_reads, "blobs"), 4 * u(small_reads, "requests"));
    let big_reads = row(&report, "read", 5 << 20);
    assert_eq!(u(big_reads, "blobs"), u(big_reads, "requests"));
    assert_eq!(u(&report["prefill"], "uploaded"), 12);
    assert_eq!(server.num_files(), 12 + write_blobs(&report));
    assert_served(
        &server,
        &[
            "GetCapabilities",
            "FindMissingBlobs",
            "BatchUpdateBlobs",
            "BatchReadBlobs",
            "Write",
            "Read",
        ],
    );
}

/// Flips one byte in every stored CAS file (uncompressed storage keeps
/// them as sent).
fn corrupt_every_blob(dir: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(dir.join("cas")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let mut data = std::fs::read(&path).unwrap();
            data[100] ^= 0xff;
            std::fs::write(&path, data).unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn corrupt_blobs_are_caught_on_read_over_http_and_grpc() {
    let server = Server::start(&[
        "--storage_mode",
        "uncompressed",
        "--grpc_address",
        "127.0.0.1:0",
    ]);
    let http = server.http_url.clone();
    let grpc = server.grpc_url().unwrap();
    let common = ["--mix", "read", "--prefill", "8", "--warmup", "0s"];
    let mut first = vec![http.as_str(), "--requests", "1"];
    first.extend(common);
    bench(&first).expect(0);
    assert_eq!(corrupt_every_blob(&server.dir), 8);

    for url in [&http, &grpc] {
        let mut args = vec![url.as_str(), "--requests", "40", "--json"];
        args.extend(common);
        let run = bench(&args);
        let report = run.expect(1).json();
        check_consistent(&report);
        assert_eq!(u(&report["prefill"], "uploaded"), 0, "{url}");
        assert_eq!(u(&report["errors"], "total"), 40, "{url}: {report}");
        assert_eq!(u(&report["errors"]["by_kind"], "corrupt"), 40, "{url}");
        let sample = report["errors"]["samples"][0].as_str().unwrap();
        assert!(
            sample.contains("do not hash to the blob's name"),
            "{sample}"
        );
    }
    // The text report says so too.
    let mut args = vec![http.as_str(), "--requests", "5"];
    args.extend(common);
    let run = bench(&args);
    run.expect(1);
    assert!(
        run.stdout.contains("errors   5 (corrupt × 5)"),
        "{}",
        run.stdout
    );
}

#[test]
fn refused_writes_are_counted_by_status_and_the_rest_stored() {
    let server = Server::start(&["--max_blob_size", "10000", "--grpc_address", "127.0.0.1:0"]);
    for (url, refused) in [
        (server.http_url.clone(), "HTTP 400"),
        (server.grpc_url().unwrap(), "gRPC InvalidArgument"),
    ] {
        let before = server.num_files();
        let report = bench(&[
            &url,
            "--mix",
            "write",
            "--sizes",
            "4KiB:1,64KiB:1",
            "--requests",
            "40",
            "--warmup",
            "0s",
            "--json",
        ])
        .expect(1)
        .json();
        check_consistent(&report);
        let big = row(&report, "write", 65536);
        let small = row(&report, "write", 4096);
        assert!(
            u(big, "requests") > 0 && u(small, "requests") > 0,
            "{report}"
        );
        assert_eq!(u(big, "errors"), u(big, "requests"), "{url}: {report}");
        let kinds = report["errors"]["by_kind"].as_object().unwrap();
        assert!(
            u(&report["errors"]["by_kind"], refused) > 0,
            "{url}: {report}"
        );
        if url.starts_with("grpc") {
            // Each refusal is a per-blob status; nothing else fails.
            assert_eq!(u(small, "errors"), 0, "{url}: {report}");
            assert_eq!(kinds.len(), 1, "{url}: {report}");
        } else {
            // The server answers 400 before reading the body, with
            // `Connection: close`: no other request may fail because of it.
            // (The refused upload itself may see its connection reset while
            // it still sends the body; that counts as a transport error.)
            assert_eq!(u(small, "errors"), 0, "{url}: {report}");
            assert!(
                kinds.keys().all(|k| k == refused || k == "transport"),
                "{url}: {report}"
            );
        }
        // Exactly the acknowledged writes were stored.
        assert_eq!(
            u(&report["write_check"], "acknowledged"),
            u(small, "blobs"),
            "{url}"
        );
        assert_eq!(server.num_files(), before + u(small, "blobs"), "{url}");
    }
}

#[test]
fn setup_problems_stop_the_run_with_one_line() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = Server::start(&[]);
    let http_port = server.http_addr().rsplit(':').next().unwrap().to_owned();
    for (args, fragment) in [
        (
            vec![format!("http://127.0.0.1:{closed}")],
            "Connection refused",
        ),
        (
            vec![format!("grpc://127.0.0.1:{closed}")],
            "cannot use grpc://",
        ),
        // A gRPC client at an HTTP/1.1 port.
        (
            vec![
                format!("grpc://127.0.0.1:{http_port}"),
                "--timeout".into(),
                "5s".into(),
            ],
            "cannot use",
        ),
        (vec!["mqtt://h:1".into()], "unknown scheme"),
        (
            vec![server.http_url.clone(), "--sizes".into(), "4KB".into()],
            "--sizes: unknown unit",
        ),
        (
            vec![server.http_url.clone(), "--cacert".into(), "/x.pem".into()],
            "need an https://",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = bench(&args);
        run.expect(2);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        let line = run.stderr.trim();
        assert!(!line.contains('\n'), "{args:?}: {line}");
        assert!(line.starts_with("bazel-cache bench: "), "{args:?}: {line}");
        assert!(line.contains(fragment), "{args:?}: {line}");
    }
}

fn with_credentials(url: &str, userinfo: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    format!("{scheme}://{userinfo}@{rest}")
}

#[test]
fn tls_and_basic_auth_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "bench-ca");
    let leaf = ca.server("bench-server");
    let file = htpasswd(dir.path(), "ci", "s3cr%t");
    let server = Server::start(&[
        "--grpc_address",
        "127.0.0.1:0",
        "--tls_cert_file",
        leaf.cert.to_str().unwrap(),
        "--tls_key_file",
        leaf.key.to_str().unwrap(),
        "--htpasswd_file",
        file.to_str().unwrap(),
    ]);
    let cacert = ca.pem();
    let cacert = cacert.to_str().unwrap();
    let https = server.http_url.clone();
    let grpcs = server.grpc_url().unwrap();
    assert!(https.starts_with("https://") && grpcs.starts_with("grpcs://"));
    let load = [
        "--requests",
        "20",
        "--warmup",
        "0s",
        "--prefill",
        "4",
        "--mix",
        "read:1,write:1",
        "--json",
    ];
    for url in [&https, &grpcs] {
        // The password's % is escaped in the URL, as in Bazel's.
        let good = with_credentials(url, "ci:s3cr%25t");
        let mut args = vec![good.as_str(), "--cacert", cacert];
        args.extend(load);
        let report = bench(&args).expect(0).json();
        check_consistent(&report);
        assert!(u(&report["write_check"], "acknowledged") > 0, "{report}");
        assert!(
            !report.to_string().contains("s3cr"),
            "the password leaks into the report: {report}"
        );

        let refused = if url.starts_with("https") {
            "HTTP 401"
        } else {
            "Unauthenticated"
        };
        for userinfo in [None, Some("ci:wrong")] {
            let target = userinfo.map_or_else(|| url.to_string(), |u| with_credentials(url, u));
            let run = bench(&[&target, "--cacert", cacert, "--requests", "1"]);
            run.expect(2);
            assert!(run.stderr.contains(refused), "{target}: {}", run.stderr);
            assert!(!run.stderr.contains("wrong"), "{}", run.stderr);
        }
        // Without our CA the server's certificate is not trusted.
        let run = bench(&[&good, "--requests", "1"]);
        run.expect(2);
        assert!(
            run.stderr.to_lowercase().contains("certificate"),
            "{url}: {}",
            run.stderr
        );
    }
}

#[test]
fn mtls_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "mtls-ca");
    let leaf = ca.server("mtls-server");
    let client = ca.client("mtls-client");
    let server = Server::start(&[
        "--grpc_address",
        "127.0.0.1:0",
        "--tls_cert_file",
        leaf.cert.to_str().unwrap(),
        "--tls_key_file",
        leaf.key.to_str().unwrap(),
        "--tls_ca_file",
        ca.pem().to_str().unwrap(),
    ]);
    let cacert = ca.pem();
    let (cert, key) = (client.cert.to_str().unwrap(), client.key.to_str().unwrap());
    for url in [server.http_url.clone(), server.grpc_url().unwrap()] {
        let base = [url.as_str(), "--cacert", cacert.to_str().unwrap()];
        let mut args = base.to_vec();
        args.extend([
            "--cert",
            cert,
            "--key",
            key,
            "--requests",
            "10",
            "--warmup",
            "0s",
        ]);
        args.extend(["--prefill", "2", "--mix", "read:1,write:1"]);
        bench(&args).expect(0);
        let mut args = base.to_vec();
        args.extend(["--requests", "1", "--timeout", "10s"]);
        bench(&args).expect(2);
    }
}

/// The operations issue 13 added (action cache, zstd transfers over both
/// protocols, ByteStream for small blobs) succeed with every read verified,
/// and the report gives the server's CPU per operation from its
/// `process_cpu_seconds_total`, or from /proc with `--server_pid`, or says
/// why it has none.
#[test]
fn action_cache_zstd_and_server_cpu_per_operation() {
    let server = Server::start(&["--grpc_address", "127.0.0.1:0", "--enable_endpoint_metrics"]);
    let http = server.http_url.clone();
    let grpc = server.grpc_url().unwrap();
    let metrics = format!("{http}/metrics");
    let load = [
        "--requests",
        "200",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--sizes",
        "4KiB:1,300KiB:1",
        "--mix",
        "read-zstd:1,write-zstd:1,ac-read:1,ac-write:1",
        "--prefill",
        "6",
        "--compressible",
        "--json",
    ];
    for (url, extra) in [
        (&http, &[][..]),
        // Small blobs through ByteStream too: compressed-blobs/zstd/ both ways.
        (
            &grpc,
            &["--metrics_url", metrics.as_str(), "--batch", "0"][..],
        ),
    ] {
        let mut args = vec![url.as_str()];
        args.extend(load);
        args.extend(extra);
        let report = bench(&args).expect(0).json();
        check_consistent(&report);
        assert_eq!(u(&report["errors"], "total"), 0, "{url}: {report}");
        for op in ["read-zstd", "write-zstd", "ac-read", "ac-write"] {
            for size in [4096, 300 << 10] {
                let r = row(&report, op, size);
                assert!(u(r, "requests") > 0, "{url} {op} {size}: {report}");
                assert_eq!(u(r, "blobs"), u(r, "requests"), "{url} {op} {size}");
            }
        }
        // Two sizes of six blobs, and an ActionResult naming each.
        assert_eq!(u(&report["prefill"], "blobs"), 12, "{url}");
        assert_eq!(u(&report["prefill"], "action_results"), 12, "{url}");
        // Blobs written as zstd read back plain, ActionResults read back.
        let check = &report["write_check"];
        assert!(u(check, "acknowledged") > 0, "{url}: {report}");
        assert_eq!(u(check, "missing"), 0, "{url}: {report}");
        assert!(u(check, "read_back") > 0, "{url}: {report}");
        assert_eq!(u(check, "read_back_failed"), 0, "{url}: {report}");
        let cpu = &report["server_cpu"];
        assert!(
            cpu["source"]
                .as_str()
                .unwrap()
                .starts_with(&format!("process_cpu_seconds_total at {metrics}")),
            "{url}: {cpu}"
        );
        assert!(cpu["unavailable"].is_null(), "{url}: {cpu}");
        for key in ["seconds", "cores", "per_request_us", "per_blob_us"] {
            assert!(f(cpu, key) >= 0.0, "{url}: {key} in {cpu}");
        }
        let blob_writes = rows(&report)
            .iter()
            .filter(|r| r["op"] == "write-zstd")
            .map(|r| u(r, "blobs"))
            .sum::<u64>();
        assert!(blob_writes > 0);
    }
    assert_served(
        &server,
        &["GetActionResult", "UpdateActionResult", "Read", "Write"],
    );

    // The text report says it too; with --server_pid from /proc.
    let pid = server.pid().to_string();
    for (url, cpu_args, source) in [
        (&http, &[][..], "process_cpu_seconds_total"),
        (&grpc, &["--server_pid", pid.as_str()][..], "/proc: process"),
    ] {
        let mut args = vec![url.as_str(), "--requests", "20", "--warmup", "0s"];
        args.extend(["--mix", "ac-read", "--prefill", "2"]);
        args.extend(cpu_args);
        let run = bench(&args);
        run.expect(0);
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("server   CPU "))
            .unwrap_or_else(|| panic!("no server CPU line in\n{}", run.stdout));
        assert!(line.contains(" per request"), "{line}");
        assert!(line.contains(source), "{line}");
        assert!(
            run.stdout.lines().any(|l| l.starts_with("ac-read ")),
            "{}",
            run.stdout
        );
    }

    // gRPC without a metrics page: no figure, and the report says why.
    let report = bench(&[&grpc, "--requests", "5", "--warmup", "0s", "--json"])
        .expect(0)
        .json();
    let cpu = &report["server_cpu"];
    assert!(cpu["seconds"].is_null(), "{cpu}");
    assert!(
        cpu["unavailable"]
            .as_str()
            .unwrap()
            .contains("--metrics_url"),
        "{cpu}"
    );
    // An explicit source that cannot be read stops the run.
    let run = bench(&[
        &grpc,
        "--metrics_url",
        &format!("{http}/status"),
        "--requests",
        "1",
    ]);
    run.expect(2);
    assert!(
        run.stderr.contains("cannot measure the server's CPU from"),
        "{}",
        run.stderr
    );
}
