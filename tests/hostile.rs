//! Hostile input on every endpoint, table-driven, against the real server
//! binary: each malformed request gets its documented status, none takes
//! the server down, none changes the store (`/status` counters and the
//! files under `dir` are compared before and after).
//!
//! This extends, and does not repeat, the malformed-request tables of
//! tests/http.rs (bad/short/uppercase hashes on PUT, digest mismatch, empty
//! body, max_blob_size, bad ActionResult bytes, gzip, bad
//! X-Digest-SizeBytes, corrupt zstd, POST/DELETE, unknown path, trailing
//! segment, traversal), tests/grpc.rs (batch statuses, bad digests in
//! FindMissing/GetActionResult, batch limits, GetTree not found and bad
//! token, invalid UpdateActionResult) and tests/grpc_bytestream.rs
//! (malformed resource names, write-protocol errors, offsets and limits).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bazel_cache::digest::Hash;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use bytes::{Buf, BufMut};
use common::Server;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use re::execution_client::ExecutionClient;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

fn hex(data: &[u8]) -> String {
    Hash::of(data).to_hex()
}

fn digest(data: &[u8]) -> re::Digest {
    re::Digest {
        hash: hex(data),
        size_bytes: data.len() as i64,
    }
}

/// What must not change: the `/status` counters and every file under the
/// blob directories (name and size), and no temp file may linger.
#[derive(Debug, PartialEq)]
struct Snapshot {
    counters: BTreeMap<&'static str, serde_json::Value>,
    files: BTreeMap<String, u64>,
}

fn files_under(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            files_under(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, e.metadata().unwrap().len());
        }
    }
}

fn snapshot(s: &Server) -> Snapshot {
    let status = s.status();
    let counters = ["NumFiles", "CurrSize", "UncompressedSize", "ReservedSize"]
        .into_iter()
        .map(|k| (k, status[k].clone()))
        .collect();
    let mut files = BTreeMap::new();
    for sub in ["ac", "cas", "tmp"] {
        files_under(&s.dir, &s.dir.join(sub), &mut files);
    }
    Snapshot { counters, files }
}

/// Waits until a write refused mid-body has released its temp file and
/// reservation (it does so as its task ends, just after the response),
/// then compares with `before`.
fn assert_unchanged(s: &Server, before: &Snapshot, what: &str) {
    let mut now = snapshot(s);
    for _ in 0..100 {
        if now == *before {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = snapshot(s);
    }
    assert_eq!(now, *before, "{what}: the store changed");
}

/// The server process is still there and answering.
/// The server process is still there and answering, and nothing in it
/// panicked (a panicking request task does not take the process down, so
/// its log is where a panic shows).
fn assert_alive(s: &Server) {
    assert!(
        Path::new(&format!("/proc/{}", s.pid())).exists(),
        "server process is gone"
    );
    let _ = s.status();
    let (_, log) = s.output();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

// ------------------------------------------------------------------ HTTP

/// Sends raw bytes on a fresh connection and returns the status code of
/// the answer (0 when the server closed the connection without one) and
/// the response head.
fn raw(s: &Server, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(s.http_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (431, 400) and close before reading it all.
    let _ = conn.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A zstd stream of `len` zero bytes: tiny on the wire, large decoded.
fn zstd_bomb(len: usize) -> Vec<u8> {
    zstd::encode_all(&vec![0u8; len][..], 19).unwrap()
}

#[test]
fn hostile_http_requests_get_their_status_and_change_nothing() {
    let s = Server::start(&["--max_blob_size", "1048576"]);
    // Something stored, so "nothing changed" also means "nothing lost".
    let kept = common::noise(5000, 1);
    let kept_hex = hex(&kept);
    let (code, _) = common::http_request(
        "PUT",
        &format!("{}/cas/{kept_hex}", s.http_url),
        Some(kept.clone()),
    );
    assert_eq!(code, 200);
    let before = snapshot(&s);

    let body = common::noise(3000, 2);
    let h = hex(&body);
    let n = body.len().to_string();
    let ar_abs = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "/etc/passwd".into(),
            digest: Some(digest(&kept)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let ar_bad_digest = re::ActionResult {
        stdout_digest: Some(re::Digest {
            hash: "../../etc/passwd".into(),
            size_bytes: 1,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let ar_negative = re::ActionResult {
        output_directories: vec![re::OutputDirectory {
            path: "d".into(),
            tree_digest: Some(re::Digest {
                hash: kept_hex.clone(),
                size_bytes: -5,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let bomb = zstd_bomb(8 * MIB);
    let long_instance = "a".repeat(8000);
    let many_headers: Vec<(&str, String)> =
        (0..200).map(|_| ("X-Many", "header".to_string())).collect();

    // (what, raw request, expected status; 0 = connection closed unanswered)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // /status and /metrics: read-only pages.
        ("PUT /status", request("PUT", "/status", &[], b"{}"), 405),
        ("POST /status", request("POST", "/status", &[], b""), 405),
        (
            "DELETE /metrics",
            request("DELETE", "/metrics", &[], b""),
            405,
        ),
        ("PUT /metrics", request("PUT", "/metrics", &[], b"x"), 405),
        (
            "/status/extra",
            request("GET", "/status/extra", &[], b""),
            404,
        ),
        ("/metricsx", request("GET", "/metricsx", &[], b""), 404),
        // Unknown paths and methods.
        ("root", request("GET", "/", &[], b""), 404),
        ("/ac alone", request("GET", "/ac", &[], b""), 400),
        ("/cas/ no hash", request("GET", "/cas/", &[], b""), 400),
        (
            "PATCH /cas",
            request("PATCH", &format!("/cas/{h}"), &[], &body),
            405,
        ),
        (
            "OPTIONS /ac",
            request("OPTIONS", &format!("/ac/{h}"), &[], b""),
            405,
        ),
        (
            "made-up method",
            request("FROB", &format!("/cas/{h}"), &[], b""),
            405,
        ),
        // Bad digests on reads (tests/http.rs covers them on PUT).
        (
            "GET bad hex",
            request("GET", &format!("/cas/{}", "g".repeat(64)), &[], b""),
            400,
        ),
        (
            "HEAD short hash",
            request("HEAD", "/ac/abcdef", &[], b""),
            400,
        ),
        (
            "GET 65 chars",
            request("GET", &format!("/ac/{h}0"), &[], b""),
            400,
        ),
        (
            "GET escaped hash",
            request("GET", &format!("/cas/%{}", &h[1..]), &[], b""),
            400,
        ),
        // Instance names.
        (
            "instance with %20",
            request("GET", &format!("/team%20a/cas/{h}"), &[], b""),
            400,
        ),
        (
            "instance with $",
            request("GET", &format!("/te$am/cas/{h}"), &[], b""),
            400,
        ),
        (
            "instance .. deep",
            request("PUT", &format!("/a/b/../../cas/{h}"), &[], &body),
            400,
        ),
        (
            "long instance",
            request("GET", &format!("/{long_instance}/cas/{h}"), &[], b""),
            404,
        ),
        // Sizes that disagree with the body.
        (
            "X-Digest-SizeBytes too small",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("X-Digest-SizeBytes", "10".into())],
                &body,
            ),
            400,
        ),
        (
            "X-Digest-SizeBytes over max_blob_size",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("X-Digest-SizeBytes", "99999999999".into())],
                &body,
            ),
            400,
        ),
        (
            "Content-Length over max_blob_size, no body",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Length", "2000000".into())],
                b"",
            ),
            400,
        ),
        (
            "negative Content-Length",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Length", "-1".into())],
                &body,
            ),
            400,
        ),
        (
            "two Content-Lengths",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[
                    ("Content-Length", n.clone()),
                    ("Content-Length", "7".into()),
                ],
                &body,
            ),
            400,
        ),
        (
            "bad chunked framing",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Transfer-Encoding", "chunked".into())],
                b"zz\r\nnot hex\r\n0\r\n\r\n",
            ),
            400,
        ),
        // Bodies that hash wrong, decode wrong or decode too large.
        (
            "empty-blob name, non-empty body",
            request("PUT", &format!("/cas/{}", hex(b"")), &[], &body),
            400,
        ),
        (
            "zstd body of other bytes",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[
                    ("Content-Encoding", "zstd".into()),
                    ("X-Digest-SizeBytes", n.clone()),
                ],
                &zstd::encode_all(&common::noise(3000, 3)[..], 1).unwrap(),
            ),
            400,
        ),
        (
            "zstd bomb to /cas",
            request(
                "PUT",
                &format!("/cas/{}", hex(&vec![0u8; 8 * MIB])),
                &[("Content-Encoding", "zstd".into())],
                &bomb,
            ),
            400,
        ),
        (
            "zstd bomb to /ac",
            request(
                "PUT",
                &format!("/ac/{h}"),
                &[("Content-Encoding", "zstd".into())],
                &bomb,
            ),
            400,
        ),
        (
            "truncated zstd",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Encoding", "zstd".into())],
                &zstd::encode_all(&body[..], 1).unwrap()[..100],
            ),
            400,
        ),
        (
            "Content-Encoding twice",
            request(
                "PUT",
                &format!("/cas/{h}"),
                &[("Content-Encoding", "zstd, gzip".into())],
                &body,
            ),
            400,
        ),
        // ActionResults that decode but are invalid.
        (
            "AC absolute output path",
            request("PUT", &format!("/ac/{h}"), &[], &ar_abs),
            400,
        ),
        (
            "AC bad digest",
            request("PUT", &format!("/ac/{h}"), &[], &ar_bad_digest),
            400,
        ),
        (
            "AC negative size",
            request("PUT", &format!("/ac/{h}"), &[], &ar_negative),
            400,
        ),
        (
            "AC X-Digest-SizeBytes mismatch",
            request(
                "PUT",
                &format!("/ac/{h}"),
                &[("X-Digest-SizeBytes", "1".into())],
                &ar_abs,
            ),
            400,
        ),
        // Malformed HTTP itself (hyper's answers).
        (
            "huge header",
            request("GET", "/status", &[("X-Big", "b".repeat(512 * 1024))], b""),
            431,
        ),
        (
            "200 headers",
            request("GET", "/status", &many_headers, b""),
            431,
        ),
        (
            "garbage request line",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in path",
            b"GET /a b/cas/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/0.9", b"GET /status\r\n\r\n".to_vec(), 400),
    ];
    let mut failures = Vec::new();
    for (what, req, want) in &cases {
        let (got, head) = raw(&s, req);
        if got != *want {
            failures.push(format!("{what}: expected {want}, got {got}: {head:?}"));
        }
        if *want == 405 && !head.to_ascii_lowercase().contains("\r\nallow: ") {
            failures.push(format!("{what}: 405 without Allow: {head:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_alive(&s);
    assert_unchanged(&s, &before, "hostile HTTP requests");
    let (code, got) = common::http_request("GET", &format!("{}/cas/{kept_hex}", s.http_url), None);
    assert_eq!((code, got), (200, kept));
}

// ------------------------------------------------------------------ gRPC

/// Runs `f` on a thread of its own: the blocking helpers of tests/common
/// start their own runtime, which cannot nest in the test's.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap())
}

/// Sends protobuf bytes as they are, so a test can send what no typed
/// client would (truncated fields, wrong wire types).
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// A unary call with a raw body to `path`.
async fn raw_unary(
    ch: &Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// One hostile call and the code it must get.
struct Case {
    what: String,
    want: Code,
    got: Result<(), tonic::Status>,
}

fn case<T>(what: impl Into<String>, want: Code, got: Result<T, tonic::Status>) -> Case {
    Case {
        what: what.into(),
        want,
        got: got.map(|_| ()),
    }
}

const FIND_MISSING: &str =
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";
const BATCH_UPDATE: &str =
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs";
const UPDATE_AC: &str = "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult";
const QUERY_WRITE: &str = "/google.bytestream.ByteStream/QueryWriteStatus";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grpc_requests_get_their_status_and_change_nothing() {
    let s = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let ch = Channel::from_shared(s.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch.clone());
    let mut bs = ByteStreamClient::new(ch.clone());
    // A stored blob, an ActionResult over it, and a garbage "directory".
    let kept = common::noise(4000, 1);
    let garbage = b"\xff\xff\xff not a Directory".to_vec();
    let resp = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: [&kept, &garbage]
                .into_iter()
                .map(|b| re::batch_update_blobs_request::Request {
                    digest: Some(digest(b)),
                    data: b.clone(),
                    compressor: 0,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.responses
            .iter()
            .all(|r| r.status.as_ref().unwrap().code == 0)
    );
    let before = off_runtime(|| snapshot(&s));

    let other = common::noise(3000, 2);
    let blake3 = re::digest_function::Value::Blake3 as i32;
    let negative = re::Digest {
        hash: hex(&kept),
        size_bytes: -1,
    };
    let huge = re::Digest {
        hash: hex(b"huge"),
        size_bytes: i64::MAX,
    };
    let mut cases = Vec::new();

    // ActionCache.
    let get = |d: Option<re::Digest>, f: i32, instance: &str| re::GetActionResultRequest {
        action_digest: d,
        digest_function: f,
        instance_name: instance.into(),
        ..Default::default()
    };
    cases.push(case(
        "Get: no digest",
        Code::InvalidArgument,
        ac.get_action_result(get(None, 0, "")).await,
    ));
    cases.push(case(
        "Get: negative size",
        Code::InvalidArgument,
        ac.get_action_result(get(Some(negative.clone()), 0, ""))
            .await,
    ));
    cases.push(case(
        "Get: blake3",
        Code::InvalidArgument,
        ac.get_action_result(get(Some(digest(&kept)), blake3, ""))
            .await,
    ));
    cases.push(case(
        "Get: unknown digest function",
        Code::InvalidArgument,
        ac.get_action_result(get(Some(digest(&kept)), 999, ""))
            .await,
    ));
    cases.push(case(
        "Get: traversal instance",
        Code::NotFound,
        ac.get_action_result(get(Some(digest(&kept)), 0, "../../etc"))
            .await,
    ));
    let update =
        |d: Option<re::Digest>, f: i32, ar: re::ActionResult| re::UpdateActionResultRequest {
            action_digest: d,
            digest_function: f,
            action_result: Some(ar),
            ..Default::default()
        };
    let good_ar = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(digest(&kept)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let bad_file_digest = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out".into(),
            digest: Some(re::Digest {
                hash: "xyz".into(),
                size_bytes: 3,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let bad_tree = re::ActionResult {
        output_directories: vec![re::OutputDirectory {
            path: "d".into(),
            tree_digest: Some(negative.clone()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let empty_symlink = re::ActionResult {
        output_symlinks: vec![re::OutputSymlink {
            path: String::new(),
            target: "x".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let garbage_tree = re::ActionResult {
        output_directories: vec![re::OutputDirectory {
            path: "d".into(),
            tree_digest: Some(digest(&garbage)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let key = digest(b"an action");
    cases.push(case(
        "Update: no digest",
        Code::InvalidArgument,
        ac.update_action_result(update(None, 0, good_ar.clone()))
            .await,
    ));
    cases.push(case(
        "Update: blake3",
        Code::InvalidArgument,
        ac.update_action_result(update(Some(key.clone()), blake3, good_ar.clone()))
            .await,
    ));
    cases.push(case(
        "Update: bad file digest",
        Code::InvalidArgument,
        ac.update_action_result(update(Some(key.clone()), 0, bad_file_digest))
            .await,
    ));
    cases.push(case(
        "Update: negative tree size",
        Code::InvalidArgument,
        ac.update_action_result(update(Some(key.clone()), 0, bad_tree))
            .await,
    ));
    cases.push(case(
        "Update: empty symlink path",
        Code::InvalidArgument,
        ac.update_action_result(update(Some(key.clone()), 0, empty_symlink))
            .await,
    ));
    cases.push(case(
        "Update: Tree that is not a Tree",
        Code::FailedPrecondition,
        ac.update_action_result(update(Some(key.clone()), 0, garbage_tree))
            .await,
    ));

    // ContentAddressableStorage.
    let find = |digests: Vec<re::Digest>| re::FindMissingBlobsRequest {
        blob_digests: digests,
        ..Default::default()
    };
    cases.push(case(
        "FindMissing: negative size",
        Code::InvalidArgument,
        cas.find_missing_blobs(find(vec![digest(&kept), negative.clone()]))
            .await,
    ));
    cases.push(case(
        "FindMissing: empty hash",
        Code::InvalidArgument,
        cas.find_missing_blobs(find(vec![re::Digest {
            hash: String::new(),
            size_bytes: 0,
        }]))
        .await,
    ));
    let batch_update =
        |reqs: Vec<re::batch_update_blobs_request::Request>, f: i32| re::BatchUpdateBlobsRequest {
            requests: reqs,
            digest_function: f,
            ..Default::default()
        };
    let blob = |d: Option<re::Digest>, data: Vec<u8>, compressor: i32| {
        re::batch_update_blobs_request::Request {
            digest: d,
            data,
            compressor,
        }
    };
    cases.push(case(
        "BatchUpdate: blake3",
        Code::InvalidArgument,
        cas.batch_update_blobs(batch_update(
            vec![blob(Some(digest(&other)), other.clone(), 0)],
            blake3,
        ))
        .await,
    ));
    // Per-blob refusals: the call succeeds, each blob has its own status.
    let zstd = re::compressor::Value::Zstd as i32;
    let mut wrong_size = digest(&other);
    wrong_size.size_bytes -= 1;
    let per_blob = cas
        .batch_update_blobs(batch_update(
            vec![
                blob(None, other.clone(), 0),
                blob(Some(negative.clone()), kept.clone(), 0),
                blob(Some(wrong_size), other.clone(), 0),
                blob(Some(digest(&other)), other.clone(), zstd),
                blob(Some(digest(&vec![0u8; 2 * MIB])), zstd_bomb(64 * MIB), zstd),
                // Larger than the cache: refused before reading (a digest
                // of any size is a valid claim for an upload to make).
                blob(Some(huge.clone()), b"tiny".to_vec(), 0),
            ],
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<Code> = per_blob
        .responses
        .iter()
        .map(|r| Code::from_i32(r.status.as_ref().unwrap().code))
        .collect();
    let want = vec![
        Code::InvalidArgument,   // no digest
        Code::InvalidArgument,   // negative size
        Code::InvalidArgument,   // size mismatch
        Code::InvalidArgument,   // "zstd" that is not zstd
        Code::InvalidArgument,   // zstd that decodes past its declared size
        Code::ResourceExhausted, // 8 EiB declared: cannot fit the cache
    ];
    if codes != want {
        cases.push(Case {
            what: format!(
                "BatchUpdate per-blob statuses {codes:?}: {:?}",
                per_blob.responses
            ),
            want: Code::Ok,
            got: Err(tonic::Status::unknown("mismatch")),
        });
    }
    let batch_read = |digests: Vec<re::Digest>| re::BatchReadBlobsRequest {
        digests,
        ..Default::default()
    };
    cases.push(case(
        "BatchRead: negative size",
        Code::InvalidArgument,
        cas.batch_read_blobs(batch_read(vec![negative.clone()]))
            .await,
    ));
    let tree = |root: Option<re::Digest>, size: i32, token: &str| re::GetTreeRequest {
        root_digest: root,
        page_size: size,
        page_token: token.into(),
        ..Default::default()
    };
    cases.push(case(
        "GetTree: no root",
        Code::InvalidArgument,
        cas.get_tree(tree(None, 0, "")).await,
    ));
    cases.push(case(
        "GetTree: negative page size",
        Code::InvalidArgument,
        cas.get_tree(tree(Some(digest(&kept)), -1, "")).await,
    ));
    cases.push(case(
        "GetTree: negative token",
        Code::InvalidArgument,
        cas.get_tree(tree(Some(digest(&kept)), 0, "-1")).await,
    ));
    cases.push(case(
        "GetTree: bad root hash",
        Code::InvalidArgument,
        cas.get_tree(tree(
            Some(re::Digest {
                hash: "zz".into(),
                size_bytes: 1,
            }),
            0,
            "",
        ))
        .await,
    ));
    cases.push(case(
        "GetTree: blake3",
        Code::InvalidArgument,
        cas.get_tree(re::GetTreeRequest {
            root_digest: Some(digest(&kept)),
            digest_function: blake3,
            ..Default::default()
        })
        .await,
    ));
    // A root that is not a Directory is left out, as a missing one is.
    let mut stream = cas
        .get_tree(tree(Some(digest(&garbage)), 0, ""))
        .await
        .unwrap()
        .into_inner();
    let page = stream.message().await.unwrap().unwrap();
    assert!(
        page.directories.is_empty() && page.next_page_token.is_empty(),
        "{page:?}"
    );

    // ByteStream.
    let long = format!("blobs/{}/{}/{}", hex(&kept), kept.len(), "x".repeat(MIB));
    let read = |name: String, offset: i64, limit: i64| ReadRequest {
        resource_name: name,
        read_offset: offset,
        read_limit: limit,
    };
    let read_result = |r: Result<tonic::Response<tonic::Streaming<_>>, tonic::Status>| async move {
        let mut stream = r?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    };
    let huge_offset = read(format!("blobs/{}/{}", hex(&kept), kept.len()), i64::MAX, 0);
    cases.push(case(
        "Read: offset past the end",
        Code::OutOfRange,
        read_result(bs.read(huge_offset).await).await,
    ));
    let r = read_result(bs.read(read(long.clone(), 0, 0)).await).await;
    if let Err(e) = &r {
        assert!(
            e.message().len() < 4096,
            "Read error of {} bytes for a 1 MiB name",
            e.message().len()
        );
    }
    cases.push(case("Read: 1 MiB resource name", Code::InvalidArgument, r));
    let r = bs
        .query_write_status(QueryWriteStatusRequest {
            resource_name: format!("uploads/u/blobs/{}/{}", hex(&kept), "9".repeat(MIB)),
        })
        .await;
    if let Err(e) = &r {
        assert!(
            e.message().len() < 4096,
            "QueryWriteStatus error of {} bytes",
            e.message().len()
        );
    }
    cases.push(case(
        "QueryWriteStatus: 1 MiB size segment",
        Code::InvalidArgument,
        r,
    ));
    let write = |name: String, offset: i64, data: Vec<u8>| {
        futures_util::stream::iter(vec![WriteRequest {
            resource_name: name,
            write_offset: offset,
            finish_write: true,
            data,
        }])
    };
    let upload = |d: &re::Digest| format!("uploads/7c9e-0001/blobs/{}/{}", d.hash, d.size_bytes);
    cases.push(case(
        "Write: 8 EiB declared",
        Code::ResourceExhausted,
        bs.write(write(upload(&huge), 0, b"tiny".to_vec())).await,
    ));
    cases.push(case(
        "Write: huge first offset",
        Code::InvalidArgument,
        bs.write(write(upload(&digest(&other)), i64::MAX, other.clone()))
            .await,
    ));
    let bomb_name = format!(
        "uploads/7c9e-0002/compressed-blobs/zstd/{}/{}",
        hex(&vec![0u8; MIB]),
        MIB
    );
    cases.push(case(
        "Write: zstd bomb past its size",
        Code::InvalidArgument,
        bs.write(write(bomb_name, 0, zstd_bomb(64 * MIB))).await,
    ));

    // Malformed protobuf, unknown methods and services.
    let truncated_field = vec![0x0a, 0xff, 0xff, 0xff, 0x0f]; // field 1, length 4 GiB, no bytes
    let wrong_wire_type = vec![0x0d, 0x01, 0x02]; // field 1 as fixed32, truncated
    cases.push(case(
        "FindMissing: truncated protobuf",
        Code::Internal,
        raw_unary(&ch, FIND_MISSING, truncated_field.clone()).await,
    ));
    cases.push(case(
        "BatchUpdate: wrong wire type",
        Code::Internal,
        raw_unary(&ch, BATCH_UPDATE, wrong_wire_type.clone()).await,
    ));
    cases.push(case(
        "UpdateActionResult: truncated varint",
        Code::Internal,
        raw_unary(&ch, UPDATE_AC, vec![0x08, 0xff]).await,
    ));
    cases.push(case(
        "QueryWriteStatus: bytes that are not UTF-8",
        Code::Internal,
        raw_unary(&ch, QUERY_WRITE, vec![0x0a, 0x02, 0xff, 0xfe]).await,
    ));
    cases.push(case(
        "unknown CAS method",
        Code::Unimplemented,
        raw_unary(
            &ch,
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/Nope",
            vec![],
        )
        .await,
    ));
    cases.push(case(
        "unknown service",
        Code::Unimplemented,
        raw_unary(&ch, "/no.such.Service/Call", vec![]).await,
    ));
    let mut exec = ExecutionClient::new(ch.clone());
    let r = exec.execute(re::ExecuteRequest::default()).await;
    cases.push(case("Execution (not offered)", Code::Unimplemented, r));
    cases.push(case(
        "SplitBlob (not offered)",
        Code::Unimplemented,
        cas.split_blob(re::SplitBlobRequest {
            blob_digest: Some(digest(&kept)),
            ..Default::default()
        })
        .await,
    ));
    let mut caps = CapabilitiesClient::new(ch.clone());
    cases.push(case(
        "Capabilities: odd instance name",
        Code::Ok,
        caps.get_capabilities(re::GetCapabilitiesRequest {
            instance_name: "../\u{0}/x".into(),
        })
        .await,
    ));

    let failures: Vec<String> = cases
        .iter()
        .filter(|c| c.got.as_ref().err().map_or(Code::Ok, |e| e.code()) != c.want)
        .map(|c| format!("{}: expected {:?}, got {:?}", c.what, c.want, c.got))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // HTTP/1.1 and garbage on the gRPC port: refused, nothing else.
    let grpc_addr = s.grpc_endpoint().trim_start_matches("http://").to_string();
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"\x00\x01\x02 garbage \xff"[..],
    ] {
        let mut conn = TcpStream::connect(&grpc_addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = conn.write_all(bytes);
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
    }

    drop((cas, ac, bs, ch));
    off_runtime(|| {
        assert_alive(&s);
        assert_unchanged(&s, &before, "hostile gRPC requests");
    });
}

/// Answers found wrong by the table above, kept out of it until fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn batch_read_with_sizes_that_overflow_is_refused_without_a_panic() {
    let s = Server::start(&["--grpc_address", "127.0.0.1:0"]);
    let ch = Channel::from_shared(s.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut cas = ContentAddressableStorageClient::new(ch);
    let huge = re::Digest {
        hash: hex(b"huge"),
        size_bytes: i64::MAX,
    };
    // 2 × (2^63 - 1) + 3 = 2^64 + 1: wraps to 1 in a release build, so the
    // batch limit is bypassed; a debug build panics in the handler.
    let r = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![huge.clone(), huge, digest(b"abc")],
            ..Default::default()
        })
        .await;
    assert_eq!(
        r.as_ref().map(|_| ()).map_err(|e| e.code()),
        Err(Code::InvalidArgument),
        "{r:?}"
    );
    off_runtime(|| assert_alive(&s));
}
