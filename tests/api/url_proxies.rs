//! `http_proxy` and `grpc_proxy`: two instances of the real server binary,
//! A (a plain disk cache, standing in for the old bazel-remote) and B
//! (empty, its proxy backend pointing at A).
//!
//! - read-through: a blob and an ActionResult put into A are served by B
//!   over HTTP and gRPC;
//! - write-behind: what is put into B reaches A;
//! - a backend answering wrong bytes is never served (a small HTTP server
//!   of this file plays the corrupt cache);
//! - A down: B answers misses, not errors, and still stores writes.

use std::time::{Duration, Instant};

use crate::support::{self, Server, digest, noise, request};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// How long an upload queued in B may take to reach A: a bound against
/// hangs, never a timing assertion.
const WRITE_BEHIND_LIMIT: Duration = Duration::from_secs(60);

/// An ActionResult with one output file and stdout, both CAS blobs.
fn action_result(output: &[u8], stdout: &[u8]) -> re::ActionResult {
    re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out/file".into(),
            digest: Some(digest(output)),
            ..Default::default()
        }],
        stdout_digest: Some(digest(stdout)),
        exit_code: 0,
        ..Default::default()
    }
}

/// An action digest (any hash names an action; the size is the Action's).
fn action_digest(seed: u64) -> re::Digest {
    digest(&noise(100, seed))
}

async fn put(server: &Server, path: &str, body: &[u8]) {
    let code = request(server, "PUT", path, Some(body)).await;
    assert_eq!(code, 200, "PUT {path} on {}", server.http_url);
}

async fn update_ac(server: &Server, action: &re::Digest, ar: &re::ActionResult) {
    let mut ac = ActionCacheClient::new(server.channel().await);
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(ar.clone()),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("UpdateActionResult on {}: {s:?}", server.http_url));
}

async fn get_ac(server: &Server, action: &re::Digest) -> Result<re::ActionResult, tonic::Status> {
    let mut ac = ActionCacheClient::new(server.channel().await);
    ac.get_action_result(re::GetActionResultRequest {
        action_digest: Some(action.clone()),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn bytestream_read(server: &Server, data: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let mut client = support::bytestream_client(server.channel().await);
    let d = digest(data);
    let mut stream = client
        .read(bs::ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            read_offset: 0,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

async fn missing(server: &Server, blobs: &[&[u8]]) -> Vec<re::Digest> {
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    cas.find_missing_blobs(re::FindMissingBlobsRequest {
        blob_digests: blobs.iter().map(|b| digest(b)).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
}

/// `/metrics` of `server`, parsed.
async fn scrape(server: &Server) -> support::prometheus::Scrape {
    let (code, body) = server.get_async("/metrics").await;
    assert_eq!(code, 200);
    support::prometheus::Scrape::new(String::from_utf8(body).unwrap())
}

/// Waits until `GET path` on `server` answers 200 and returns the body.
async fn eventually_get(server: &Server, path: &str) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let (code, body) = server.get_async(path).await;
        if code == 200 {
            return body;
        }
        assert!(
            start.elapsed() < WRITE_BEHIND_LIMIT,
            "{path} never reached {} (last answer {code})",
            server.http_url
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts a blob of `size` bytes, a small one and an ActionResult naming
/// both into `b`; all of them must reach `a` (write-behind). The large
/// blob compresses, so B stores it zstd-compressed and decodes it as it
/// uploads.
async fn writes_reach_the_backend(b: &Server, a: &Server, size: usize, seed: u64) {
    let output = support::text(size, seed);
    let stdout = noise(25, seed + 1);
    put(b, &support::cas_path(&output), &output).await;
    put(b, &support::cas_path(&stdout), &stdout).await;
    let ar = action_result(&output, &stdout);
    let action = action_digest(seed + 2);
    update_ac(b, &action, &ar).await;
    assert!(eventually_get(a, &support::cas_path(&output)).await == output);
    assert!(eventually_get(a, &support::cas_path(&stdout)).await == stdout);
    let ac = eventually_get(a, &format!("/ac/{}", action.hash)).await;
    assert_eq!(re::ActionResult::decode(ac.as_slice()).unwrap(), ar);
}

/// A fills with a blob, the ActionResult naming it (and its stdout), and a
/// blob no ActionResult names.
struct Filled {
    output: Vec<u8>,
    stdout: Vec<u8>,
    loose: Vec<u8>,
    action: re::Digest,
    ar: re::ActionResult,
}

async fn fill(a: &Server, seed: u64) -> Filled {
    let output = noise(300_000, seed);
    let stdout = noise(50, seed + 1);
    let loose = noise(70_000, seed + 2);
    for blob in [&output, &stdout, &loose] {
        put(a, &support::cas_path(blob), blob).await;
    }
    let ar = action_result(&output, &stdout);
    let action = action_digest(seed);
    update_ac(a, &action, &ar).await;
    Filled {
        output,
        stdout,
        loose,
        action,
        ar,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_reads_through_and_writes_behind_to_the_old_cache() {
    let a = Server::start_grpc(&[]);
    let f = fill(&a, 1).await;
    let b = Server::start_grpc(&["--http_proxy.url", &a.http_url]);

    // Read-through over HTTP: a blob by hash, the ActionResult by key.
    let (code, body) = b.get_async(&support::cas_path(&f.loose)).await;
    assert_eq!(code, 200);
    assert!(body == f.loose, "the loose blob came back different");
    let (code, body) = b.get_async(&format!("/ac/{}", f.action.hash)).await;
    assert_eq!(code, 200);
    assert_eq!(re::ActionResult::decode(body.as_slice()).unwrap(), f.ar);

    // Over gRPC: GetActionResult (its outputs checked through A), the
    // output by ByteStream, presence by FindMissingBlobs.
    assert_eq!(get_ac(&b, &f.action).await.unwrap(), f.ar);
    assert!(bytestream_read(&b, &f.output).await.unwrap() == f.output);
    assert!(missing(&b, &[&f.stdout, &f.loose]).await.is_empty());
    let absent = noise(10, 99);
    assert_eq!(missing(&b, &[&absent]).await, vec![digest(&absent)]);
    assert_eq!(b.get_async(&support::cas_path(&absent)).await.0, 404);

    // Write-behind: a blob and an ActionResult put into B reach A.
    writes_reach_the_backend(&b, &a, 700_000, 7).await;

    let status = b.status_async().await;
    assert_eq!(status["Backend"]["Type"], "http", "{status}");
    assert_eq!(status["Backend"]["CorruptObjects"], 0, "{status}");
    // bazel-remote's http_proxy counters.
    let m = scrape(&b).await;
    assert!(m.value("bazel_remote_http_cache_hits", &[]) >= 4.0);
    assert!(m.value("bazel_remote_http_cache_misses", &[]) >= 1.0);
    assert_eq!(
        m.value("bazel_cache_http_proxy_upload_queue_length", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_proxy_reads_through_and_writes_behind_to_the_old_cache() {
    let a = Server::start_grpc(&[]);
    let f = fill(&a, 11).await;
    let a_grpc = a.grpc_url().unwrap();
    let b = Server::start_grpc(&["--grpc_proxy.url", &a_grpc]);

    // REAPI names blobs by hash and size: the ActionResult fetched through
    // B tells it the sizes of its outputs, which then read through.
    assert_eq!(get_ac(&b, &f.action).await.unwrap(), f.ar);
    assert!(bytestream_read(&b, &f.output).await.unwrap() == f.output);
    let (code, body) = b.get_async(&support::cas_path(&f.stdout)).await;
    assert_eq!(code, 200);
    assert!(body == f.stdout);
    // FindMissingBlobs carries sizes: a blob no ActionResult names is
    // found in A, then read by ByteStream.
    assert!(missing(&b, &[&f.loose]).await.is_empty());
    assert!(bytestream_read(&b, &f.loose).await.unwrap() == f.loose);
    let absent = noise(10, 98);
    assert_eq!(missing(&b, &[&absent]).await, vec![digest(&absent)]);
    let status = bytestream_read(&b, &absent).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // The HTTP side of B reads ActionResults through A by key.
    let other = fill(&a, 21).await;
    let (code, body) = b.get_async(&format!("/ac/{}", other.action.hash)).await;
    assert_eq!(code, 200);
    assert_eq!(re::ActionResult::decode(body.as_slice()).unwrap(), other.ar);
    assert!(b.get_async(&support::cas_path(&other.output)).await.1 == other.output);

    // Write-behind: ByteStream Write and UpdateActionResult reach A (the
    // ActionResult once its outputs are there: A checks them).
    writes_reach_the_backend(&b, &a, 600_000, 17).await;

    let status = b.status_async().await;
    assert_eq!(status["Backend"]["Type"], "grpc", "{status}");
    let m = scrape(&b).await;
    assert!(m.value("bazel_remote_grpc_cache_hits", &[]) >= 4.0);
    assert!(m.value("bazel_remote_grpc_cache_misses", &[]) >= 1.0);
}

/// An HTTP "cache" that answers every HEAD and GET with 200 and `body`,
/// whatever was asked: a corrupt backend. Returns its base URL.
async fn corrupt_cache(body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let is_head = head.starts_with(b"HEAD ");
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                if !is_head {
                    answer.extend_from_slice(&body);
                }
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_answer_from_the_backend_is_never_served() {
    let wanted = noise(5_000, 31);
    // Same length, different bytes: only the hash can tell.
    let mut wrong = wanted.clone();
    wrong[0] ^= 1;
    let url = corrupt_cache(wrong).await;
    let b = Server::start_grpc(&["--http_proxy.url", &url]);

    assert_eq!(b.get_async(&support::cas_path(&wanted)).await.0, 404);
    assert_eq!(
        request(&b, "HEAD", &support::cas_path(&wanted), None).await,
        404
    );
    let status = bytestream_read(&b, &wanted).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = b.status_async().await;
    assert!(
        status["Backend"]["CorruptObjects"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(
        status["NumFiles"], 0,
        "nothing corrupt was stored: {status}"
    );
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_cache_down_means_misses_not_errors() {
    let port = closed_port();
    for args in [
        [
            "--http_proxy.url".to_owned(),
            format!("http://127.0.0.1:{port}"),
        ],
        [
            "--grpc_proxy.url".to_owned(),
            format!("grpc://127.0.0.1:{port}"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let b = Server::start_grpc(&args);
        let blob = noise(1_000, 41);
        let action = action_digest(42);

        assert_eq!(
            b.get_async(&support::cas_path(&blob)).await.0,
            404,
            "{args:?}"
        );
        assert_eq!(b.get_async(&format!("/ac/{}", action.hash)).await.0, 404);
        let status = get_ac(&b, &action).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{args:?}: {status:?}");
        assert_eq!(missing(&b, &[&blob]).await, vec![digest(&blob)]);

        // Writes are stored locally (and queued for when A is back).
        put(&b, &support::cas_path(&blob), &blob).await;
        let (code, body) = b.get_async(&support::cas_path(&blob)).await;
        assert_eq!(code, 200, "{args:?}");
        assert!(body == blob);
        assert!(missing(&b, &[&blob]).await.is_empty());
        let status = b.status_async().await;
        assert_eq!(status["Backend"]["CorruptObjects"], 0, "{status}");
    }
}

/// B reads through A for one filled entry (the ActionResult by key over
/// HTTP, then its output and a blob by FindMissingBlobs and ByteStream).
async fn reads_through(b: &Server, f: &Filled) -> bool {
    let (code, body) = b.get_async(&format!("/ac/{}", f.action.hash)).await;
    if code != 200 {
        return false;
    }
    assert_eq!(re::ActionResult::decode(body.as_slice()).unwrap(), f.ar);
    assert!(b.get_async(&support::cas_path(&f.output)).await.1 == f.output);
    assert!(missing(b, &[&f.loose]).await.is_empty());
    assert!(bytestream_read(b, &f.loose).await.unwrap() == f.loose);
    true
}

/// A, filled, then restarted on its directory with `args` (TLS, auth).
async fn filled_then_restarted(seed: u64, args: &[&str]) -> (Server, Filled, tempfile::TempDir) {
    let a = Server::start_grpc(&[]);
    let f = fill(&a, seed).await;
    let dir = a.stop().expect("Server::start owns its dir");
    let mut all = vec!["--grpc_address", "127.0.0.1:0"];
    all.extend_from_slice(args);
    (Server::start_with_dir(dir.path(), &all), f, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_the_old_cache_with_its_ca_and_a_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let ca = support::pki::Ca::new(pki_dir.path(), "ca");
    let server = ca.server("a");
    let client = ca.client("b");
    let ca_pem = ca.pem().display().to_string();
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let (a, f, _dir) = filled_then_restarted(
        51,
        &[
            "--tls_cert_file",
            server.cert.to_str().unwrap(),
            "--tls_key_file",
            server.key.to_str().unwrap(),
            "--tls_ca_file",
            &ca_pem,
        ],
    )
    .await;
    assert!(a.http_url.starts_with("https://"), "{}", a.http_url);
    let a_grpc = a.grpc_url().unwrap();
    assert!(a_grpc.starts_with("grpcs://"), "{a_grpc}");

    for (flag, url) in [("http_proxy", &a.http_url), ("grpc_proxy", &a_grpc)] {
        let b = Server::start_grpc(&[
            &format!("--{flag}.url={url}"),
            &format!("--{flag}.ca_file={ca_pem}"),
            &format!("--{flag}.cert_file={cert}"),
            &format!("--{flag}.key_file={key}"),
        ]);
        assert!(
            reads_through(&b, &f).await,
            "{flag} over TLS with a client certificate"
        );
        // Without the client certificate A refuses the handshake: misses.
        let b = Server::start_grpc(&[
            &format!("--{flag}.url={url}"),
            &format!("--{flag}.ca_file={ca_pem}"),
        ]);
        assert!(
            !reads_through(&b, &f).await,
            "{flag} without a client certificate"
        );
        assert_eq!(b.get_async(&support::cas_path(&f.loose)).await.0, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_the_url_user_info() {
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = support::sha_htpasswd(secrets.path(), "ci", "p@ss:word");
    let (a, f, _dir) =
        filled_then_restarted(61, &["--htpasswd_file", htpasswd.to_str().unwrap()]).await;
    assert_eq!(a.get_async(&support::cas_path(&f.loose)).await.0, 401);
    let with = |user_info: &str, url: &str| url.replacen("://", &format!("://{user_info}@"), 1);
    let a_grpc = a.grpc_url().unwrap();
    for (flag, url) in [("http_proxy", &a.http_url), ("grpc_proxy", &a_grpc)] {
        // Percent-encoded in the URL, decoded before it is sent.
        let b = Server::start_grpc(&[&format!("--{flag}.url={}", with("ci:p%40ss%3Aword", url))]);
        assert!(
            reads_through(&b, &f).await,
            "{flag} with the right password"
        );
        // The whole log, flushed at the stop (lines are written in batches).
        let (_, _, stderr) = b.stop_with_output();
        assert!(
            !stderr.contains("p@ss:word") && !stderr.contains("p%40ss"),
            "{stderr}"
        );
        let b = Server::start_grpc(&[&format!("--{flag}.url={}", with("ci:wrong", url))]);
        assert!(!reads_through(&b, &f).await, "{flag} with a wrong password");
    }
}

/// BLAKE3 entries cross both proxies under their BLAKE3 names: read
/// through from the old cache, and written behind to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_entries_cross_both_proxies() {
    use bazel_cache_digest::{DigestFunction, Hash};
    let b3 = |data: &[u8]| Hash::of_with(DigestFunction::Blake3, data);
    for kind in ["http", "grpc"] {
        let a = Server::start_grpc(&[]);
        let url = match kind {
            "http" => a.http_url.clone(),
            _ => a.grpc_url().unwrap(),
        };
        let flag = format!("--{kind}_proxy.url");
        let b = Server::start_grpc(&[&flag, &url]);

        // Read-through: an output and the ActionResult naming it, both
        // BLAKE3, stored in A only.
        let output = noise(200_000, 41);
        put(&a, &format!("/blake3/cas/{}", b3(&output)), &output).await;
        let ar = re::ActionResult {
            output_files: vec![re::OutputFile {
                path: "out".into(),
                digest: Some(re::Digest {
                    hash: b3(&output).to_hex(),
                    size_bytes: output.len() as i64,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let action = b3(format!("{kind} action").as_bytes());
        put(&a, &format!("/blake3/ac/{action}"), &ar.encode_to_vec()).await;
        // The ActionResult first (over gRPC its outputs' sizes come with it).
        let (code, body) = b.get_async(&format!("/blake3/ac/{action}")).await;
        assert_eq!(code, 200, "{kind}");
        assert_eq!(re::ActionResult::decode(body.as_slice()).unwrap(), ar);
        let (code, body) = b.get_async(&format!("/blake3/cas/{}", b3(&output))).await;
        assert_eq!(code, 200, "{kind}");
        assert!(body == output, "{kind}: the output came back different");
        // Under the SHA-256 namespace the same hex is nothing, in A too.
        assert_eq!(b.get_async(&format!("/cas/{}", b3(&output))).await.0, 404);

        // Write-behind: a BLAKE3 blob put into B reaches A under BLAKE3.
        let written = support::text(300_000, 43);
        put(&b, &format!("/blake3/cas/{}", b3(&written)), &written).await;
        let path = format!("/blake3/cas/{}", b3(&written));
        assert!(eventually_get(&a, &path).await == written, "{kind}");
        assert_eq!(a.get_async(&format!("/cas/{}", b3(&written))).await.0, 404);
    }
}
