//! Replicas over one bucket (issue 14), against s3s-fs: the presence cache
//! (repeated FindMissingBlobs reach S3 once per TTL, concurrent checks of
//! one digest send one HEAD, another replica's upload is seen after the
//! negative TTL), `update_timestamps` on every use (local hits,
//! FindMissingBlobs, GetActionResult), at most once per interval, and AC
//! entries whose blobs are gone from both tiers answered as misses.
//!
//! HEADs and refreshes are counted by the server's own S3 client
//! (`bazel_remote_s3_request_duration_seconds_count{operation=...}`), one
//! count per HTTP request it sent; objects' ages are the files' mtimes under
//! s3s-fs's root (a CopyObject onto itself sets it to now).

use std::time::{Duration, Instant, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

use super::s3::{blob, put, start, wait_backend};
use crate::support::prometheus::{Scrape, scrape, wait_metrics};
use crate::support::s3::S3Server;
use crate::support::{Server, cas_path as cas, digest};
use bazel_cache_digest::Hash;

/// Requests of one operation the server sent to S3 so far.
fn s3_requests(m: &Scrape, operation: &str) -> u64 {
    m.get(
        "bazel_remote_s3_request_duration_seconds_count",
        &[("operation", operation)],
    )
    .unwrap_or(0.0) as u64
}

async fn heads(s: &Server) -> u64 {
    s3_requests(&scrape(s).await, "head")
}

fn refreshes(m: &Scrape, outcome: &str) -> u64 {
    m.get(
        "bazel_cache_timestamp_refreshes_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0) as u64
}

async fn find_missing(ch: &Channel, digests: &[re::Digest]) -> Vec<re::Digest> {
    ContentAddressableStorageClient::new(ch.clone())
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: digests.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
}

/// Where s3s-fs keeps a CAS blob in uncompressed storage mode.
fn cas_object(s3: &S3Server, data: &[u8]) -> std::path::PathBuf {
    let h = Hash::of(data).to_hex();
    s3.object_path(&format!("cas/{}/{h}", &h[..2]))
}

/// Puts an object into the bucket as another replica would have.
fn put_object(s3: &S3Server, data: &[u8]) {
    let path = cas_object(s3, data);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Uncompressed storage (objects are the blobs' bytes) and a gRPC port.
const COMMON: [&str; 4] = [
    "--storage_mode",
    "uncompressed",
    "--grpc_address",
    "127.0.0.1:0",
];

/// A replica over `s3` with [`COMMON`] and `extra` flags, on `dir` (a
/// fresh one if `None`).
fn replica(s3: &S3Server, dir: Option<&std::path::Path>, extra: &[&str]) -> Server {
    let mut flags = COMMON.to_vec();
    flags.extend_from_slice(extra);
    start(s3, dir, &flags, None)
}

const HOUR_AGO: Duration = Duration::from_secs(3600);

fn age(path: &std::path::Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - HOUR_AGO)
        .unwrap();
}

/// Whether the object's mtime is recent (refreshed since [`age`]).
fn fresh(path: &std::path::Path) -> bool {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    mtime > SystemTime::now() - HOUR_AGO / 2
}

async fn wait_fresh(paths: &[&std::path::Path], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paths.iter().all(|p| fresh(p)) {
        assert!(Instant::now() < deadline, "{what}: not refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The figure of the closing note: a FindMissingBlobs of 1,000 digests
/// (half in the bucket, half nowhere) sent three times, with and without
/// the presence cache.
#[tokio::test]
async fn repeated_find_missing_reaches_s3_once_per_ttl() {
    let s3 = S3Server::start();
    let digests: Vec<re::Digest> = (0..1000u64)
        .map(|i| {
            let data = blob(100, 10_000 + i);
            if i % 2 == 0 {
                put_object(&s3, &data);
            }
            digest(&data)
        })
        .collect();
    let expected_missing: Vec<re::Digest> = digests.iter().skip(1).step_by(2).cloned().collect();
    let mut figures = Vec::new();
    for (label, extra) in [
        // TTLs far longer than the test: what is measured is the cache,
        // not how fast this machine is.
        (
            "with the presence cache",
            &["--s3.presence_cache_negative_ttl", "1h"][..],
        ),
        ("without it", &["--s3.presence_cache_max_entries", "0"][..]),
    ] {
        let s = replica(&s3, None, extra);
        let ch = s.channel().await;
        let mut per_call = Vec::new();
        for _ in 0..3 {
            let before = heads(&s).await;
            assert_eq!(
                find_missing(&ch, &digests).await,
                expected_missing,
                "{label}"
            );
            per_call.push(heads(&s).await - before);
        }
        figures.push((label, per_call));
    }
    eprintln!("HEADs sent for FindMissingBlobs of 1000 digests, called 3 times: {figures:?}");
    assert_eq!(figures[0].1, vec![1000, 0, 0], "{figures:?}");
    assert_eq!(figures[1].1, vec![1000, 1000, 1000], "{figures:?}");
}

#[tokio::test]
async fn concurrent_checks_of_one_digest_send_one_head() {
    let s3 = S3Server::start();
    let s = replica(&s3, None, &[]);
    let ch = s.channel().await;
    let absent = digest(b"in no tier at all");
    let checks = (0..24).map(|_| find_missing(&ch, std::slice::from_ref(&absent)));
    for missing in futures_util::future::join_all(checks).await {
        assert_eq!(missing, vec![absent.clone()]);
    }
    let m = scrape(&s).await;
    assert_eq!(s3_requests(&m, "head"), 1, "{}", m.text);
    // Each check either waited for that HEAD or found its answer cached.
    let coalesced = m.value("bazel_cache_presence_cache_coalesced_total", &[]);
    let cached = m.value(
        "bazel_cache_presence_cache_answers_total",
        &[("answer", "absent")],
    );
    assert_eq!(coalesced + cached, 23.0, "{}", m.text);
    assert_eq!(m.value("bazel_cache_presence_cache_heads_total", &[]), 1.0);
}

#[tokio::test]
async fn another_replicas_upload_is_found_after_the_negative_ttl() {
    let s3 = S3Server::start();
    let negative_ttl = Duration::from_secs(2);
    let s = replica(&s3, None, &["--s3.presence_cache_negative_ttl", "2s"]);
    let ch = s.channel().await;
    let data = blob(5000, 77);
    let d = digest(&data);
    // The answer was cached between these two instants.
    let asked = Instant::now();
    assert_eq!(
        find_missing(&ch, std::slice::from_ref(&d)).await,
        vec![d.clone()]
    );
    let answered = Instant::now();
    // Another replica uploads it.
    put_object(&s3, &data);
    let missing = find_missing(&ch, std::slice::from_ref(&d)).await;
    if asked.elapsed() < negative_ttl {
        assert_eq!(missing, vec![d.clone()], "the cached absence still holds");
        assert_eq!(heads(&s).await, 1, "answered from the cache");
    }
    tokio::time::sleep(negative_ttl.saturating_sub(answered.elapsed())).await;
    assert!(find_missing(&ch, std::slice::from_ref(&d)).await.is_empty());
    assert_eq!(heads(&s).await, 2, "asked again once the TTL was over");
    // Now present: no more HEADs within the positive TTL.
    assert!(find_missing(&ch, std::slice::from_ref(&d)).await.is_empty());
    assert_eq!(heads(&s).await, 2);
}

#[tokio::test]
async fn update_timestamps_refreshes_every_use_at_most_once_per_interval() {
    let s3 = S3Server::start();
    let a = replica(&s3, None, &[]);
    let local = blob(4000, 90);
    let remote_only = blob(4000, 91);
    assert_eq!(put(&a, &cas(&local), &local).await, 200);
    assert_eq!(put(&a, &cas(&remote_only), &remote_only).await, 200);
    wait_backend(&a, "uploads", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 2
    })
    .await;
    drop(a);

    // B holds `local` on its disk (read through S3 by an earlier run of
    // it); `remote_only` is only in the bucket.
    let dir = tempfile::tempdir().unwrap();
    let earlier = replica(&s3, Some(dir.path()), &[]);
    assert_eq!(earlier.get_async(&cas(&local)).await, (200, local.clone()));
    earlier.stop();
    let hourly = [
        "--s3.update_timestamps",
        "--s3.update_timestamps_interval",
        "1h",
    ];
    let b = replica(&s3, Some(dir.path()), &hourly);
    let local_obj = cas_object(&s3, &local);
    let remote_obj = cas_object(&s3, &remote_only);
    age(&local_obj);
    age(&remote_obj);

    // A local hit refreshes the object.
    assert_eq!(b.get_async(&cas(&local)).await, (200, local.clone()));
    wait_fresh(&[&local_obj], "local hit").await;
    assert_eq!(s3_requests(&scrape(&b).await, "get"), 0, "a local hit");
    // FindMissingBlobs: a digest found in the bucket (a HEAD) is refreshed,
    // the one found locally was refreshed within the interval: skipped.
    let ch = b.channel().await;
    let before = refreshes(&scrape(&b).await, "skipped");
    assert!(
        find_missing(&ch, &[digest(&local), digest(&remote_only)])
            .await
            .is_empty()
    );
    wait_fresh(&[&remote_obj], "FindMissingBlobs").await;
    let m = wait_metrics(&b, "two refreshes", Duration::from_secs(20), |m| {
        s3_requests(m, "copy") == 2
    })
    .await;
    assert_eq!(refreshes(&m, "queued"), 2, "{}", m.text);
    assert_eq!(refreshes(&m, "skipped"), before + 1, "{}", m.text);

    // Within the interval, more uses send nothing: the decision is taken
    // on the request path (counted as skipped before the answer).
    age(&local_obj);
    age(&remote_obj);
    for _ in 0..3 {
        assert_eq!(b.get_async(&cas(&local)).await.0, 200);
        assert!(
            find_missing(&ch, &[digest(&local), digest(&remote_only)])
                .await
                .is_empty()
        );
    }
    let m = scrape(&b).await;
    assert_eq!(refreshes(&m, "skipped"), before + 1 + 9, "{}", m.text);
    assert_eq!(refreshes(&m, "queued"), 2);
    assert_eq!(s3_requests(&m, "copy"), 2);
    assert!(!fresh(&local_obj) && !fresh(&remote_obj));

    // A replica started with a short interval refreshes again after it.
    b.stop();
    let every_second = [
        "--s3.update_timestamps",
        "--s3.update_timestamps_interval",
        "1s",
    ];
    let b = replica(&s3, Some(dir.path()), &every_second);
    assert_eq!(b.get_async(&cas(&local)).await.0, 200);
    wait_fresh(&[&local_obj], "first use after restart").await;
    age(&local_obj);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(b.get_async(&cas(&local)).await.0, 200);
    wait_fresh(&[&local_obj], "use after the interval").await;
}

/// An ActionResult naming `outputs` as output files.
fn action_result(outputs: &[&[u8]]) -> re::ActionResult {
    re::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, data)| re::OutputFile {
                path: format!("out/{i}"),
                digest: Some(digest(data)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

async fn get_action_result(ch: &Channel, action: &[u8]) -> Result<re::ActionResult, tonic::Status> {
    ActionCacheClient::new(ch.clone())
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(digest(action)),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn get_action_result_refreshes_the_entry_and_its_blobs() {
    let s3 = S3Server::start();
    let a = replica(&s3, None, &[]);
    let output = blob(6000, 95);
    let action = b"action 95".to_vec();
    let ar = action_result(&[&output]);
    assert_eq!(put(&a, &cas(&output), &output).await, 200);
    let ac_path = format!("/ac/{}", Hash::of(&action));
    assert_eq!(put(&a, &ac_path, &ar.encode_to_vec()).await, 200);
    wait_backend(&a, "uploads", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 2
    })
    .await;
    drop(a);
    let ac_obj = s3.object_path(&format!(
        "ac/{}/{}",
        &Hash::of(&action).to_hex()[..2],
        Hash::of(&action)
    ));
    let out_obj = cas_object(&s3, &output);
    assert!(ac_obj.exists(), "{}", ac_obj.display());

    // Through S3 (a fresh replica: the entry downloaded, the blob HEADed)
    // and then from local disk (the same replica restarted).
    let dir = tempfile::tempdir().unwrap();
    for tier in ["through S3", "local hit"] {
        let b = replica(&s3, Some(dir.path()), &["--s3.update_timestamps"]);
        age(&ac_obj);
        age(&out_obj);
        let ch = b.channel().await;
        assert_eq!(get_action_result(&ch, &action).await.unwrap(), ar, "{tier}");
        wait_fresh(&[&ac_obj, &out_obj], tier).await;
        if tier == "local hit" {
            let m = scrape(&b).await;
            assert_eq!(
                s3_requests(&m, "get") + s3_requests(&m, "head"),
                0,
                "{tier}"
            );
        } else {
            // Download the output too, for the local round.
            assert_eq!(b.get_async(&cas(&output)).await.0, 200);
        }
        b.stop();
    }
}

#[tokio::test]
async fn an_ac_entry_whose_blob_is_gone_from_both_tiers_is_a_miss() {
    let s3 = S3Server::start();
    let a = replica(&s3, None, &[]);
    let kept = blob(2000, 120);
    let lost = blob(2000, 121);
    let (complete, broken) = (b"complete action".to_vec(), b"broken action".to_vec());
    for data in [&kept, &lost] {
        assert_eq!(put(&a, &cas(data), data).await, 200);
    }
    let complete_ar = action_result(&[&kept]);
    let broken_ar = action_result(&[&kept, &lost]);
    for (action, ar) in [(&complete, &complete_ar), (&broken, &broken_ar)] {
        let path = format!("/ac/{}", Hash::of(action));
        assert_eq!(put(&a, &path, &ar.encode_to_vec()).await, 200);
    }
    wait_backend(&a, "uploads", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 4
    })
    .await;
    drop(a);
    // The lifecycle rule (or anything) deleted `lost` from the bucket; the
    // replica that wrote it is gone with its disk.
    std::fs::remove_file(cas_object(&s3, &lost)).unwrap();

    let b = replica(&s3, None, &[]);
    let ch = b.channel().await;
    let http_ac = |action: &[u8]| format!("/ac/{}", Hash::of(action));
    assert_eq!(b.get_async(&http_ac(&broken)).await.0, 404, "HTTP");
    let status = get_action_result(&ch, &broken).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "gRPC: {status:?}");
    // The entry itself is fine and was fetched: only its blob is missing.
    assert_eq!(
        b.get_async(&http_ac(&complete)).await,
        (200, complete_ar.encode_to_vec())
    );
    assert_eq!(
        get_action_result(&ch, &complete).await.unwrap(),
        complete_ar
    );
}
