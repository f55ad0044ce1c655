//! What current REAPI clients rely on: keepalive pings on an idle or busy
//! channel (Bazel 9 pings every few seconds, calls or not), batch reads
//! compressed only where it pays, and a Capabilities answer whose every
//! announced feature works.

use std::time::{Duration, Instant};

use crate::grpc::upload;
use crate::grpc_bytestream::helpers as bytestream;
use crate::support::prometheus::Scrape;
use crate::support::{self, Server, digest, hex};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::{Channel, Endpoint};

const ZSTD: i32 = re::compressor::Value::Zstd as i32;
const IDENTITY: i32 = re::compressor::Value::Identity as i32;

/// The server's metrics, scraped off the test's runtime (the blocking
/// helper starts its own).
fn scrape(s: &Server) -> Scrape {
    let (status, body) = std::thread::scope(|t| t.spawn(|| s.get("/metrics")).join().unwrap());
    assert_eq!(status, 200);
    Scrape::new(String::from_utf8(body).unwrap())
}

fn grpc_connections(m: &Scrape, name: &str) -> f64 {
    m.value(name, &[("port", "grpc")])
}

async fn find_missing(cas: &mut ContentAddressableStorageClient<Channel>, d: re::Digest) {
    cas.find_missing_blobs(re::FindMissingBlobsRequest {
        blob_digests: vec![d],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// `blob` read with BatchReadBlobs (accepting `accept`), decoded.
async fn read_one(
    cas: &mut ContentAddressableStorageClient<Channel>,
    blob: &[u8],
    accept: Vec<i32>,
) -> Vec<u8> {
    let r = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(blob)],
            acceptable_compressors: accept,
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses
        .remove(0);
    assert_eq!(r.status.unwrap().code, 0);
    match r.compressor {
        ZSTD => zstd::decode_all(&r.data[..]).unwrap(),
        _ => r.data,
    }
}

/// A client pinging every second, idle (no call in flight) and busy, keeps
/// its one connection: no GOAWAY, no reset, no flood counted, and a call
/// after it succeeds on the same channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_every_second_keep_the_connection() {
    let s = Server::start_grpc(&[]);
    let channel = Endpoint::from_shared(s.grpc_endpoint())
        .unwrap()
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .unwrap();
    let mut cas = ContentAddressableStorageClient::new(channel);
    find_missing(&mut cas, digest(b"first")).await;
    let before = scrape(&s);
    assert_eq!(
        grpc_connections(&before, "bazel_cache_connections_accepted_total"),
        1.0
    );

    // Idle: only pings for a while.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Busy: calls back to back while the pings go on.
    let busy = Instant::now();
    let mut calls = 0;
    while busy.elapsed() < Duration::from_millis(2500) {
        find_missing(&mut cas, digest(format!("busy {calls}").as_bytes())).await;
        calls += 1;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    find_missing(&mut cas, digest(b"last")).await;

    let after = scrape(&s);
    for name in [
        "bazel_cache_connections_accepted_total",
        "bazel_cache_connections_open",
    ] {
        assert_eq!(grpc_connections(&after, name), 1.0, "{name}");
    }
    assert_eq!(
        grpc_connections(&after, "bazel_cache_connections_floods_total"),
        0.0
    );
    let timeouts = after.matching(
        "bazel_cache_connections_timeouts_total",
        &[("port", "grpc")],
    );
    assert!(!timeouts.is_empty());
    assert!(timeouts.iter().all(|t| t.value == 0.0), "{timeouts:?}");
}

/// With zstd accepted, a blob under the threshold comes back IDENTITY, a
/// large compressible one zstd, an incompressible one IDENTITY; each
/// decodes to its bytes.
#[tokio::test]
async fn batch_reads_compress_only_blobs_worth_it() {
    let s = Server::start_grpc(&[]);
    let mut cas = ContentAddressableStorageClient::new(s.channel().await);
    let min = bazel_cache::grpc::BATCH_COMPRESS_MIN_SIZE as usize;
    let small = support::text(min - 1, 1);
    let large = support::text(64 * 1024, 2);
    let random = support::noise(8 * 1024, 3);
    let blobs = [&small, &large, &random];
    upload(&mut cas, &[&small, &large, &random]).await;

    let resp = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: blobs.iter().map(|b| digest(b)).collect(),
            acceptable_compressors: vec![ZSTD],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<i32> = resp.responses.iter().map(|r| r.compressor).collect();
    assert_eq!(got, vec![IDENTITY, ZSTD, IDENTITY]);
    for (r, blob) in resp.responses.iter().zip(blobs) {
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        let data = match r.compressor {
            ZSTD => zstd::decode_all(&r.data[..]).unwrap(),
            _ => r.data.clone(),
        };
        assert_eq!(&data, blob);
    }
    assert!(resp.responses[1].data.len() < large.len() / 10);
}

/// Every feature Capabilities announces works (the fields themselves are
/// asserted in `grpc::capabilities_announce_the_cache`): SHA-256 named in
/// requests, action-cache updates, absolute symlink targets, zstd in
/// ByteStream and in both batch directions, and a batch of exactly
/// `max_batch_total_size_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_announced_capability_works() {
    let s = Server::start_grpc(&[]);
    let ch = s.channel().await;
    let cache = CapabilitiesClient::new(ch.clone())
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cache_capabilities
        .unwrap();
    let sha256 = re::digest_function::Value::Sha256 as i32;
    let max_batch = cache.max_batch_total_size_bytes as usize;

    let mut cas =
        ContentAddressableStorageClient::new(ch.clone()).max_decoding_message_size(2 * max_batch);
    let mut ac = ActionCacheClient::new(ch.clone());
    let mut bs = support::bytestream_client(ch);

    // zstd in BatchUpdateBlobs, read back zstd and plain, found by a
    // request naming SHA-256.
    let text = support::text(10_000, 4);
    let resp = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest(&text)),
                data: zstd::encode_all(&text[..], 3).unwrap(),
                compressor: ZSTD,
            }],
            digest_function: sha256,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    let missing = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&text)],
            digest_function: sha256,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.missing_blob_digests.is_empty());
    for accept in [vec![ZSTD], vec![]] {
        assert_eq!(read_one(&mut cas, &text, accept).await, text);
    }

    // zstd in ByteStream: write compressed-blobs/zstd, read it both ways.
    let blob = support::text(300_000, 5);
    let packed = zstd::encode_all(&blob[..], 3).unwrap();
    bytestream::write(
        &mut bs,
        &bytestream::upload_name(&blob, true),
        &packed,
        64 * 1024,
    )
    .await
    .unwrap();
    let plain = bytestream::read_name(&blob);
    assert_eq!(bytestream::read(&mut bs, &plain).await.unwrap(), blob);
    let compressed = plain.replacen("blobs/", "compressed-blobs/zstd/", 1);
    let got = bytestream::read(&mut bs, &compressed).await.unwrap();
    assert_eq!(zstd::decode_all(&got[..]).unwrap(), blob);

    // Action-cache updates, with an absolute symlink target (ALLOWED).
    let action = re::Digest {
        hash: hex(b"capabilities action"),
        size_bytes: 19,
    };
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out/text".into(),
            digest: Some(digest(&text)),
            ..Default::default()
        }],
        output_symlinks: vec![re::OutputSymlink {
            path: "out/link".into(),
            target: "/usr/bin/env".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(result.clone()),
        digest_function: sha256,
        ..Default::default()
    })
    .await
    .unwrap();
    let got = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(action),
            digest_function: sha256,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, result);

    // A batch of exactly max_batch_total_size_bytes, both ways.
    let full = support::noise(max_batch, 6);
    upload(&mut cas, &[&full]).await;
    assert!(read_one(&mut cas, &full, vec![]).await == full);
}
