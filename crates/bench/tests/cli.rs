//! The standalone `bazel-cache-bench` binary, run as users run it: its
//! help, its usage errors (status 2), and whole runs against a small
//! in-memory HTTP cache (bazel-remote's `PUT`/`GET`/`HEAD /cas/<sha256>`),
//! one honest (status 0) and one that corrupts what it serves (status 1).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BIN: &str = env!("CARGO_BIN_EXE_bazel-cache-bench");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run bazel-cache-bench")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit status, showing both streams when it is not `code`.
fn expect(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn help_names_the_standalone_program() {
    let output = run(&["--help"]);
    expect(&output, 0);
    let help = text(&output.stdout);
    assert!(
        help.contains("Usage: bazel-cache-bench [OPTIONS] <URL|--hash_rate>"),
        "{help}"
    );
    assert!(!help.contains("bazel-cache bench"), "{help}");
    for flag in [
        "--concurrency",
        "--sizes",
        "--mix",
        "--json",
        "--cacert",
        "--compressible",
        "--digest_function",
        "--hash_rate",
        "--metrics_url",
        "--server_pid",
        "ac-read",
        "write-zstd",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("The exit status is 0"), "{help}");
}

#[test]
fn bad_url_is_a_usage_error() {
    let output = run(&["ftp://cache.example:21"]);
    expect(&output, 2);
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        "bazel-cache-bench: target URL \"ftp://cache.example:21\": unknown scheme \"ftp\" \
         (expected http, https, grpc or grpcs)"
    );
}

#[test]
fn clap_errors_exit_2_and_name_the_program() {
    // No URL; a flag the server has but the load generator does not; the
    // subcommand word, which the standalone binary does not take.
    for args in [
        &[][..],
        &["http://h:1", "--dir", "/tmp"],
        &["bench", "http://h:1"],
    ] {
        let output = run(args);
        expect(&output, 2);
        let stderr = text(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("Usage: bazel-cache-bench "),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn invalid_option_values_name_the_flag() {
    let output = run(&["http://h:1", "--concurrency", "0"]);
    expect(&output, 2);
    assert_eq!(
        text(&output.stderr).trim_end(),
        "bazel-cache-bench: --concurrency: 0 is not between 1 and 100000"
    );
}

#[test]
fn unreachable_cache_exits_2() {
    // A port nothing listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = run(&[&url, "--requests", "1", "--warmup", "0s"]);
    expect(&output, 2);
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!("bazel-cache-bench: cannot use {url}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

/// An in-memory HTTP cache on a background thread; `corrupt` flips one
/// byte of every blob it serves (keeping the length).
struct Cache {
    addr: SocketAddr,
    blobs: Arc<Mutex<HashMap<String, Bytes>>>,
    puts: Arc<AtomicU64>,
}

impl Cache {
    fn start(corrupt: bool) -> Cache {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let blobs = Arc::new(Mutex::new(HashMap::new()));
        let puts = Arc::new(AtomicU64::new(0));
        let (b, p) = (blobs.clone(), puts.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (b, p) = (b.clone(), p.clone());
                    let service = service_fn(move |req| handle(req, b.clone(), p.clone(), corrupt));
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Cache { addr, blobs, puts }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn handle(
    req: Request<Incoming>,
    blobs: Arc<Mutex<HashMap<String, Bytes>>>,
    puts: Arc<AtomicU64>,
    corrupt: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        Ok(resp)
    };
    let Some(hash) = req.uri().path().strip_prefix("/cas/").map(str::to_owned) else {
        return answer(StatusCode::NOT_FOUND, Bytes::new());
    };
    match *req.method() {
        Method::PUT => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            blobs.lock().unwrap().insert(hash, body);
            puts.fetch_add(1, Ordering::Relaxed);
            answer(StatusCode::OK, Bytes::new())
        }
        Method::GET | Method::HEAD => {
            let found = blobs.lock().unwrap().get(&hash).cloned();
            match found {
                None => answer(StatusCode::NOT_FOUND, Bytes::new()),
                Some(_) if req.method() == Method::HEAD => answer(StatusCode::OK, Bytes::new()),
                Some(blob) if corrupt => {
                    let mut bad = blob.to_vec();
                    bad[0] ^= 1;
                    answer(StatusCode::OK, bad.into())
                }
                Some(blob) => answer(StatusCode::OK, blob),
            }
        }
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    }
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n--- stderr ---\n{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    })
}

#[test]
fn measures_a_cache_and_checks_its_writes() {
    let cache = Cache::start(false);
    let url = cache.url();
    let output = run(&[
        &url,
        "--requests",
        "60",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--sizes",
        "1KiB:1,100KiB:1",
        "--mix",
        "read:2,write:1,find:1",
        "--prefill",
        "5",
        "--seed",
        "7",
        "--json",
    ]);
    expect(&output, 0);
    let report = json(&output);
    assert_eq!(report["target"], url.as_str());
    assert_eq!(report["protocol"], "http");
    assert_eq!(report["total"]["requests"], 60);
    assert_eq!(report["errors"]["total"], 0);
    // Two sizes of five prefilled blobs, all missing from the empty cache.
    assert_eq!(report["prefill"]["blobs"], 10);
    assert_eq!(report["prefill"]["uploaded"], 10);
    let writes = &report["write_check"];
    let acknowledged = writes["acknowledged"].as_u64().unwrap();
    assert!(acknowledged > 0, "{report:#}");
    assert_eq!(writes["checked"], acknowledged);
    assert_eq!(writes["missing"], 0);
    assert_eq!(writes["read_back_failed"], 0);
    // What the cache saw: the prefill and every acknowledged write.
    assert_eq!(cache.puts.load(Ordering::Relaxed), 10 + acknowledged);
    assert_eq!(cache.blobs.lock().unwrap().len() as u64, 10 + acknowledged);
}

#[test]
fn corrupt_reads_fail_the_run() {
    let cache = Cache::start(true);
    let output = run(&[
        &cache.url(),
        "--requests",
        "20",
        "--warmup",
        "0s",
        "--mix",
        "read",
        "--prefill",
        "3",
    ]);
    expect(&output, 1);
    let report = text(&output.stdout);
    assert!(report.contains("corrupt"), "{report}");
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
}
