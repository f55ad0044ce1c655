//! `bazel-cache bench --digest_function blake3` against the real server:
//! every operation over HTTP (`/blake3/cas/`, `/blake3/ac/`) and gRPC
//! (`digest_function` fields, `blobs/blake3/` resource names) succeeds with
//! every read verified by BLAKE3, both protocols name the same blobs, and
//! the SHA-256 names of the same bytes are other blobs. And `--hash_rate`,
//! which measures this machine rather than a cache.

use crate::bench_cli::{assert_served, bench, check_consistent, f, rows, u, write_blobs};
use crate::support::Server;
use serde_json::Value;

/// The ops row (all sizes) of `op`.
fn op_row<'a>(report: &'a Value, op: &str) -> &'a Value {
    report["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .find(|r| r["op"] == op)
        .unwrap_or_else(|| panic!("no {op} row in {report}"))
}

const SIZES: &str = "4KiB:3,300KiB:1";
const OPS: [&str; 7] = [
    "read",
    "write",
    "find",
    "read-zstd",
    "write-zstd",
    "ac-read",
    "ac-write",
];

#[test]
fn blake3_loads_over_http_and_grpc_are_verified_and_stored_apart_from_sha256() {
    let server = Server::start(&["--grpc_address", "127.0.0.1:0", "--enable_endpoint_metrics"]);
    let http = server.http_url.clone();
    let grpc = server.grpc_url().unwrap();
    let mix = OPS.map(|op| format!("{op}:1")).join(",");
    for (url, prefill_uploaded) in [(&http, 12), (&grpc, 0)] {
        let report = bench(&[
            url,
            "--digest-function",
            "blake3",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "4",
            "--sizes",
            SIZES,
            "--mix",
            &mix,
            "--prefill",
            "6",
            "--json",
        ])
        .expect(0)
        .json();
        check_consistent(&report);
        assert_eq!(report["digest_function"], "blake3", "{url}");
        assert_eq!(u(&report["errors"], "total"), 0, "{url}: {report}");
        for op in OPS {
            assert!(
                u(op_row(&report, op), "requests") > 0,
                "{url} {op}: {report}"
            );
        }
        // Reads moved whole blobs, each hashed with BLAKE3 against its name.
        for op in ["read", "read-zstd"] {
            let r = op_row(&report, op);
            assert!(u(r, "bytes") >= 4096 * u(r, "blobs"), "{url} {op}: {r}");
        }
        // Two sizes of six blobs: the HTTP run stores them, the gRPC run
        // finds the same BLAKE3 names stored.
        assert_eq!(u(&report["prefill"], "blobs"), 12, "{url}");
        assert_eq!(
            u(&report["prefill"], "uploaded"),
            prefill_uploaded,
            "{url}: {report}"
        );
        assert_eq!(u(&report["prefill"], "action_results"), 12, "{url}");
        let check = &report["write_check"];
        assert!(write_blobs(&report) > 0, "{url}: {report}");
        assert!(u(check, "acknowledged") > 0, "{url}: {report}");
        assert_eq!(u(check, "missing"), 0, "{url}: {report}");
        assert!(u(check, "read_back") > 0, "{url}: {report}");
        assert_eq!(u(check, "read_back_failed"), 0, "{url}: {report}");
        assert!(f(&report["total"], "blobs_per_second") > 0.0, "{url}");
    }

    // The same bytes named by SHA-256 are other blobs: a SHA-256 run finds
    // none of its prefill stored; its reads are verified with SHA-256.
    let report = bench(&[
        &http,
        "--requests",
        "20",
        "--warmup",
        "0s",
        "--sizes",
        SIZES,
        "--mix",
        "read",
        "--prefill",
        "6",
        "--json",
    ])
    .expect(0)
    .json();
    assert_eq!(report["digest_function"], "sha256");
    assert_eq!(u(&report["prefill"], "uploaded"), 12, "{report}");
    assert!(
        rows(&report).iter().all(|r| u(r, "errors") == 0),
        "{report}"
    );

    // The text report names the function.
    let run = bench(&[
        &grpc,
        "--digest_function",
        "BLAKE3",
        "--requests",
        "5",
        "--warmup",
        "0s",
        "--mix",
        "read",
        "--prefill",
        "2",
    ]);
    run.expect(0);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("load ") && l.ends_with("; digests blake3")),
        "{}",
        run.stdout
    );

    // What the server saw: BLAKE3 paths over HTTP, the REAPI calls over gRPC.
    let paths = ["/blake3/cas/", "/blake3/ac/"];
    let log = server.log_once(|log| paths.iter().all(|p| log.contains(p)));
    for path in paths {
        assert!(log.lines().any(|l| l.contains(path)), "no {path} in\n{log}");
    }
    assert_served(
        &server,
        &[
            "GetCapabilities",
            "FindMissingBlobs",
            "BatchUpdateBlobs",
            "BatchReadBlobs",
            "GetActionResult",
            "UpdateActionResult",
        ],
    );
}

#[test]
fn hash_rate_reports_both_functions_without_a_cache() {
    let run = bench(&["--hash_rate", "--duration", "200ms", "--json"]);
    let report = run.expect(0).json();
    let rates = report["rates"].as_array().expect("rates");
    let names: Vec<&str> = rates
        .iter()
        .map(|r| r["function"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sha256", "blake3"], "{report}");
    for r in rates {
        assert!(f(r, "mib_per_second") > 0.0, "{report}");
    }
    assert_eq!(u(&report, "buffer_bytes"), 1 << 20);

    let run = bench(&["--hash-rate", "--duration", "100ms"]);
    run.expect(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("sha256 ") && lines[0].ends_with(" MiB/s"),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("blake3 ") && lines[1].ends_with(" MiB/s"),
        "{}",
        run.stdout
    );

    // A cache and --hash_rate, or neither: a usage error.
    for args in [&["--hash_rate", "http://127.0.0.1:1"][..], &["--json"][..]] {
        let run = bench(args);
        run.expect(2);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    let run = bench(&["--hash_rate", "--duration", "0s"]);
    run.expect(2);
    assert!(run.stderr.contains("--duration"), "{}", run.stderr);
}
