//! The Remote Asset API (Fetch, Push) against the real server binary and a
//! local origin (`support::origin`): downloads stored in the CAS and read
//! back over ByteStream, checksums, the size limit, header qualifiers,
//! answers from the cache with the origin down, the SSRF address policy,
//! auth, and Push records.

use base64::Engine as _;
use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::ReadRequest;
use sha2::Digest as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::origin::{Origin, Reply};
use crate::support::{self, Server, digest};
use asset::fetch_client::FetchClient;
use asset::push_client::PushClient;

fn sri256(data: &[u8]) -> String {
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
    )
}

fn q(name: &str, value: &str) -> asset::Qualifier {
    asset::Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

fn fetch_req(uris: &[String], qualifiers: Vec<asset::Qualifier>) -> asset::FetchBlobRequest {
    asset::FetchBlobRequest {
        uris: uris.to_vec(),
        qualifiers,
        ..Default::default()
    }
}

async fn fetch(channel: &Channel, req: asset::FetchBlobRequest) -> asset::FetchBlobResponse {
    FetchClient::new(channel.clone())
        .fetch_blob(req)
        .await
        .unwrap()
        .into_inner()
}

fn code(resp: &asset::FetchBlobResponse) -> Code {
    Code::from(resp.status.as_ref().map_or(0, |s| s.code))
}

fn message(resp: &asset::FetchBlobResponse) -> String {
    resp.status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

async fn bytestream_read(channel: &Channel, d: &re::Digest) -> Vec<u8> {
    read_name(channel, &format!("blobs/{}/{}", d.hash, d.size_bytes)).await
}

async fn read_name(channel: &Channel, name: &str) -> Vec<u8> {
    let mut stream = support::bytestream_client(channel.clone())
        .read(ReadRequest {
            resource_name: name.to_string(),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend_from_slice(&chunk.data);
    }
    out
}

/// A server with the API on, allowed to reach the local origin.
fn server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--experimental_remote_asset_api",
        "--remote_asset_allowed_hosts",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    Server::start_grpc(&args)
}

#[tokio::test]
async fn fetched_blob_is_stored_readable_and_served_with_the_origin_down() {
    let body = support::noise(300_000, 1);
    let mut origin = Origin::start(&[
        ("/file.tar", Reply::Body(body.clone())),
        ("/moved", Reply::Redirect("/file.tar".into())),
    ]);
    let s = server(&[]);
    let ch = s.channel().await;
    let uris = vec![format!("{}/moved", origin.url)];
    let sri = vec![q("checksum.sri", &sri256(&body))];
    let resp = fetch(&ch, fetch_req(&uris, sri.clone())).await;
    assert_eq!(code(&resp), Code::Ok, "{}", message(&resp));
    assert_eq!(resp.blob_digest, Some(digest(&body)));
    assert_eq!(resp.uri, uris[0]);
    assert!(bytestream_read(&ch, &digest(&body)).await == body);
    let requests = origin.requests();
    assert_eq!(requests.len(), 2, "redirect then the file: {requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.contains("user-agent: bazel-cache/"))
    );

    origin.stop();
    // From the record (same URI and qualifiers), and from the CAS by the
    // SRI's SHA-256 (another URI).
    let again = fetch(&ch, fetch_req(&uris, sri.clone())).await;
    assert_eq!(code(&again), Code::Ok, "{}", message(&again));
    assert_eq!(again.blob_digest, Some(digest(&body)));
    let elsewhere = vec![format!("{}/mirror/file.tar", origin.url)];
    let by_hash = fetch(&ch, fetch_req(&elsewhere, sri)).await;
    assert_eq!(code(&by_hash), Code::Ok, "{}", message(&by_hash));
    // Without any record or checksum, a dead origin is NOT_FOUND, naming why.
    let dead = fetch(&ch, fetch_req(&elsewhere, vec![])).await;
    assert_eq!(code(&dead), Code::NotFound);
    assert!(
        message(&dead).contains("mirror/file.tar"),
        "{}",
        message(&dead)
    );
}

#[tokio::test]
async fn canonical_id_records_outlive_the_url() {
    let body = b"canonical content".to_vec();
    let mut origin = Origin::start(&[("/v1", Reply::Body(body.clone()))]);
    let s = server(&[]);
    let ch = s.channel().await;
    let id = vec![q("bazel.canonical_id", "my-archive-1.0")];
    let first = fetch(&ch, fetch_req(&[format!("{}/v1", origin.url)], id.clone())).await;
    assert_eq!(code(&first), Code::Ok, "{}", message(&first));
    origin.stop();
    let moved = fetch(&ch, fetch_req(&[format!("{}/v2", origin.url)], id)).await;
    assert_eq!(code(&moved), Code::Ok, "{}", message(&moved));
    assert_eq!(moved.blob_digest, Some(digest(&body)));
}

#[tokio::test]
async fn a_wrong_checksum_is_not_found_and_nothing_is_stored() {
    let body = b"the real content".to_vec();
    let origin = Origin::start(&[("/f", Reply::Body(body.clone()))]);
    let s = server(&[]);
    let ch = s.channel().await;
    let uris = vec![format!("{}/f", origin.url)];
    let resp = fetch(
        &ch,
        fetch_req(&uris, vec![q("checksum.sri", &sri256(b"other"))]),
    )
    .await;
    assert_eq!(code(&resp), Code::NotFound);
    assert!(
        message(&resp).contains("checksum.sri"),
        "{}",
        message(&resp)
    );
    assert_eq!(s.get_async(&support::cas_path(&body)).await.0, 404);
    // One of several SRIs matching is enough; sha512 counts too.
    let sha512 = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&body))
    );
    let two = format!("{} {sha512}", sri256(b"other"));
    let ok = fetch(&ch, fetch_req(&uris, vec![q("checksum.sri", &two)])).await;
    assert_eq!(code(&ok), Code::Ok, "{}", message(&ok));
    assert_eq!(s.get_async(&support::cas_path(&body)).await.0, 200);
    // A malformed SRI is the client's mistake: an RPC error.
    let bad = FetchClient::new(ch.clone())
        .fetch_blob(fetch_req(&uris, vec![q("checksum.sri", "md5-xyz")]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let none = FetchClient::new(ch)
        .fetch_blob(fetch_req(&[], vec![]))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn downloads_over_max_blob_size_are_refused() {
    let body = support::noise(5000, 2);
    let origin = Origin::start(&[
        ("/big", Reply::Body(body.clone())),
        ("/unsized", Reply::Unsized(body.clone())),
    ]);
    let s = server(&["--max_blob_size", "4096"]);
    let ch = s.channel().await;
    // Refused by its Content-Length, and counted while streaming.
    for path in ["/big", "/unsized"] {
        let resp = fetch(&ch, fetch_req(&[format!("{}{path}", origin.url)], vec![])).await;
        assert_eq!(code(&resp), Code::NotFound, "{path}");
        assert!(
            message(&resp).contains("max_blob_size"),
            "{path}: {}",
            message(&resp)
        );
    }
    assert_eq!(s.get_async(&support::cas_path(&body)).await.0, 404);
    // The same body, small enough, is fetched without a Content-Length too.
    let small = support::noise(4000, 3);
    let small_origin = Origin::start(&[("/unsized", Reply::Unsized(small.clone()))]);
    let resp = fetch(
        &ch,
        fetch_req(&[format!("{}/unsized", small_origin.url)], vec![]),
    )
    .await;
    assert_eq!(code(&resp), Code::Ok, "{}", message(&resp));
    assert_eq!(resp.blob_digest, Some(digest(&small)));
}

#[tokio::test]
async fn header_qualifiers_are_sent() {
    let origin = Origin::start(&[("/h", Reply::Body(b"h".to_vec()))]);
    let s = server(&[]);
    let ch = s.channel().await;
    let resp = fetch(
        &ch,
        fetch_req(
            &[format!("{}/h", origin.url)],
            vec![
                q("http_header:Authorization", "Bearer token-1"),
                q("http_header_url:0:X-Only-First", "yes"),
            ],
        ),
    )
    .await;
    assert_eq!(code(&resp), Code::Ok, "{}", message(&resp));
    let head = &origin.requests()[0];
    assert!(head.contains("authorization: bearer token-1"), "{head}");
    assert!(head.contains("x-only-first: yes"), "{head}");
}

#[tokio::test]
async fn loopback_link_local_and_unlisted_hosts_are_refused() {
    let origin = Origin::start(&[("/f", Reply::Body(b"secret".to_vec()))]);
    let port = origin.url.rsplit(':').next().unwrap().to_owned();
    let s = Server::start_grpc(&["--experimental_remote_asset_api"]);
    let ch = s.channel().await;
    for uri in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("{}/f", origin.url),
        format!("http://localhost:{port}/f"),
        format!("http://[::1]:{port}/f"),
    ] {
        let resp = fetch(&ch, fetch_req(std::slice::from_ref(&uri), vec![])).await;
        assert_eq!(code(&resp), Code::NotFound, "{uri}");
        assert!(
            message(&resp).contains("remote_asset_allowed_hosts"),
            "{uri}: {}",
            message(&resp)
        );
    }
    assert!(origin.requests().is_empty());
    drop(s);
    // With an allow-list, only the hosts listed.
    let s = Server::start_grpc(&[
        "--experimental_remote_asset_api",
        "--remote_asset_allowed_hosts",
        "mirror.example",
    ]);
    let resp = fetch(
        &s.channel().await,
        fetch_req(&[format!("{}/f", origin.url)], vec![]),
    )
    .await;
    assert_eq!(code(&resp), Code::NotFound);
    assert!(message(&resp).contains("not in remote_asset_allowed_hosts"));
    assert!(origin.requests().is_empty());
}

/// grpc.health.v1 Check of `service`: its status number, or the RPC error.
async fn health(s: &Server, service: &str) -> Result<i32, Code> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(s.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| e.code())
}

#[tokio::test]
async fn off_by_default_and_a_write_under_auth() {
    let s = Server::start_grpc(&[]);
    let err = FetchClient::new(s.channel().await)
        .fetch_blob(fetch_req(&["http://x/".into()], vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(
        health(&s, "build.bazel.remote.asset.v1.Fetch").await,
        Err(Code::NotFound)
    );
    drop(s);
    let on = server(&[]);
    for service in [
        "build.bazel.remote.asset.v1.Fetch",
        "build.bazel.remote.asset.v1.Push",
    ] {
        assert_eq!(health(&on, service).await, Ok(1), "{service} SERVING");
    }
    drop(on);

    let origin = Origin::start(&[("/f", Reply::Body(b"f".to_vec()))]);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = support::sha_htpasswd(dir.path(), "user", "pw");
    let s = server(&[
        "--htpasswd_file",
        htpasswd.to_str().unwrap(),
        "--allow_unauthenticated_reads",
    ]);
    let ch = s.channel().await;
    let uris = vec![format!("{}/f", origin.url)];
    let anonymous = FetchClient::new(ch.clone())
        .fetch_blob(fetch_req(&uris, vec![]))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert!(origin.requests().is_empty());
    let mut req = tonic::Request::new(fetch_req(&uris, vec![]));
    let basic = base64::engine::general_purpose::STANDARD.encode("user:pw");
    req.metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    let resp = FetchClient::new(ch)
        .fetch_blob(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), Code::Ok, "{}", message(&resp));
}

#[tokio::test]
async fn pushed_records_answer_fetches() {
    let s = server(&[]);
    let ch = s.channel().await;
    let mut push = PushClient::new(ch.clone());
    let body = b"pushed blob".to_vec();
    let uris = vec!["http://127.0.0.1:9/never-fetched".to_owned()];
    let missing = push
        .push_blob(asset::PushBlobRequest {
            uris: uris.clone(),
            blob_digest: Some(digest(&body)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);

    re::content_addressable_storage_client::ContentAddressableStorageClient::new(ch.clone())
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest(&body)),
                data: body.clone(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    push.push_blob(asset::PushBlobRequest {
        uris: uris.clone(),
        blob_digest: Some(digest(&body)),
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = fetch(&ch, fetch_req(&uris, vec![])).await;
    assert_eq!(code(&resp), Code::Ok, "{}", message(&resp));
    assert_eq!(resp.blob_digest, Some(digest(&body)));

    // Directories: NOT_FOUND until pushed (the blob stands in for a root
    // Directory message: the server only checks that it is in the CAS).
    let mut fetch_dir = FetchClient::new(ch.clone());
    let dir_req = asset::FetchDirectoryRequest {
        uris: uris.clone(),
        ..Default::default()
    };
    let before = fetch_dir
        .fetch_directory(dir_req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.status.unwrap().code, Code::NotFound as i32);
    push.push_directory(asset::PushDirectoryRequest {
        uris,
        root_directory_digest: Some(digest(&body)),
        ..Default::default()
    })
    .await
    .unwrap();
    let after = fetch_dir
        .fetch_directory(dir_req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.status.unwrap().code, 0);
    assert_eq!(after.root_directory_digest, Some(digest(&body)));
}

/// `digest_function: BLAKE3`: the download is named and stored with BLAKE3
/// (the SRI still checks SHA-256), and its record answers BLAKE3 requests
/// only: a SHA-256 request for the same URI downloads again.
#[tokio::test]
async fn blake3_fetches_name_the_blob_with_blake3() {
    use bazel_cache_digest::{DigestFunction, Hash};
    let body = support::noise(100_000, 31);
    let mut origin = Origin::start(&[("/f", Reply::Body(body.clone()))]);
    let s = server(&[]);
    let ch = s.channel().await;
    let uris = vec![format!("{}/f", origin.url)];
    let mut req = fetch_req(&uris, vec![q("checksum.sri", &sri256(&body))]);
    req.digest_function = re::digest_function::Value::Blake3 as i32;
    let resp = fetch(&ch, req.clone()).await;
    assert_eq!(code(&resp), Code::Ok, "{}", message(&resp));
    let b3 = re::Digest {
        hash: Hash::of_with(DigestFunction::Blake3, &body).to_hex(),
        size_bytes: body.len() as i64,
    };
    assert_eq!(resp.blob_digest, Some(b3.clone()));
    let name = format!("blobs/blake3/{}/{}", b3.hash, b3.size_bytes);
    assert!(read_name(&ch, &name).await == body);
    assert_eq!(origin.requests().len(), 1);
    // Again under BLAKE3: from the record, no download.
    let again = fetch(&ch, req).await;
    assert_eq!(again.blob_digest, Some(b3));
    assert_eq!(origin.requests().len(), 1);
    // Under SHA-256 the BLAKE3 record does not answer: downloaded again,
    // named with SHA-256.
    let sha = fetch(&ch, fetch_req(&uris, vec![])).await;
    assert_eq!(code(&sha), Code::Ok, "{}", message(&sha));
    assert_eq!(sha.blob_digest, Some(digest(&body)));
    assert_eq!(origin.requests().len(), 2);
    origin.stop();
}
