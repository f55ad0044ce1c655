//! Upload order against s3s-fs: an AC entry reaches the bucket only after
//! the CAS blobs it references (crates/store/src/proxy/ordering.rs), across
//! a kill -9; an AC entry whose blobs never arrive is abandoned, not retried
//! forever; a blob stored locally but not queued is uploaded for its AC
//! entry's sake.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bazel_cache_digest::{BlobKey, Hash};
use bazel_cache_store::disk::{DiskConfig, DiskStore};
use bazel_cache_store::proxy::{ProxyConfig, ProxyStore};
use bazel_cache_store::s3::{S3Backend, S3Client};
use bazel_cache_store::{Encoding, PutBody, PutRequest, Store};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use crate::support::prometheus::Scrape;
use crate::support::s3::S3Server;
use crate::support::{Server, cas_path, digest, noise};

const MIB: usize = 1 << 20;

fn start(s3: &S3Server, dir: &std::path::Path) -> Server {
    let args = s3.server_flags(&s3.secret_key, 4);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with_dir(dir, &refs)
}

/// An ActionResult with `outputs` as output files and `stdout`.
fn action_result(outputs: &[&[u8]], stdout: &[u8]) -> re::ActionResult {
    re::ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, o)| re::OutputFile {
                path: format!("out/{i}"),
                digest: Some(digest(o)),
                ..Default::default()
            })
            .collect(),
        stdout_digest: Some(digest(stdout)),
        ..Default::default()
    }
}

/// The bucket's file of a CAS blob, in either storage mode's layout.
fn cas_objects(s3: &S3Server, hash: &Hash) -> [PathBuf; 2] {
    let h = hash.to_hex();
    ["cas", "cas.v2"].map(|dir| s3.object_path(&format!("{dir}/{}/{h}", &h[..2])))
}

fn ac_object(s3: &S3Server, hash: &Hash) -> PathBuf {
    let h = hash.to_hex();
    s3.object_path(&format!("ac/{}/{h}", &h[..2]))
}

async fn wait_backend(s: &Server, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = s.status_async().await;
        if done(&st["Backend"]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; /status: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac_entries_reach_the_bucket_after_their_outputs_even_after_kill_9() {
    let mut s3 = S3Server::start();
    // Everything is queued while S3 is down, then the server is killed:
    // the reloaded queue lists AC entries first (key order).
    s3.stop();
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = [16 * MIB, 4 * MIB, 3 * MIB, 300_000, 5000, 700]
        .iter()
        .enumerate()
        .map(|(i, &n)| noise(n, 900 + i as u64))
        .collect();
    let actions = [
        action_result(&[&blobs[0], &blobs[1]], &blobs[4]),
        action_result(&[&blobs[2], &blobs[3]], &blobs[5]),
    ];
    let mut expected = Vec::new();
    {
        let s = start(&s3, dir.path());
        for b in &blobs {
            assert_eq!(
                crate::support::request(&s, "PUT", &cas_path(b), Some(b)).await,
                200
            );
        }
        for (i, ar) in actions.iter().enumerate() {
            let key = Hash::of(format!("action {i}").as_bytes());
            let bytes = ar.encode_to_vec();
            let path = format!("/ac/{key}");
            assert_eq!(
                crate::support::request(&s, "PUT", &path, Some(&bytes)).await,
                200
            );
            let outputs: Vec<Hash> = ar
                .output_files
                .iter()
                .filter_map(|f| f.digest.as_ref())
                .chain(ar.stdout_digest.as_ref())
                .map(|d| {
                    Hash::from_hex(bazel_cache_digest::DigestFunction::Sha256, &d.hash).unwrap()
                })
                .collect();
            expected.push((key, bytes, outputs));
        }
        let st = s.status_async().await;
        assert_eq!(st["Backend"]["UploadsPending"], 8, "{st}");
        // Dropping a Server sends SIGKILL.
    }
    s3.restart();

    // Watch the bucket while the restarted server uploads: whenever an AC
    // object exists, every blob it references must exist already.
    let stop = Arc::new(AtomicBool::new(false));
    let watched: Vec<(PathBuf, Vec<[PathBuf; 2]>)> = expected
        .iter()
        .map(|(key, _, outputs)| {
            (
                ac_object(&s3, key),
                outputs.iter().map(|h| cas_objects(&s3, h)).collect(),
            )
        })
        .collect();
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut violations = std::collections::BTreeSet::new();
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                polls += 1;
                for (ac, outputs) in &watched {
                    if !ac.exists() {
                        continue;
                    }
                    for objects in outputs {
                        if !objects.iter().any(|p| p.exists()) {
                            violations.insert(format!(
                                "{} exists before {}",
                                ac.display(),
                                objects[1].display()
                            ));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (violations, polls)
        })
    };
    let s = start(&s3, dir.path());
    wait_backend(&s, "the reloaded queue to drain", |b| {
        b["UploadsPending"] == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (violations, polls) = watcher.join().unwrap();
    assert!(polls > 0);
    assert!(
        violations.is_empty(),
        "AC entries reached the bucket before their outputs: {violations:?}"
    );
    let st = s.status_async().await;
    assert_eq!(st["Backend"]["UploadsDone"], 8, "{st}");
    assert_eq!(st["Backend"]["UploadsAbandoned"], 0, "{st}");
    // Both entries were set aside behind their queued blobs, none waits now.
    let (code, body) = s.get_async("/metrics").await;
    assert_eq!(code, 200);
    let m = Scrape::new(String::from_utf8(body).unwrap());
    assert!(m.value("bazel_cache_s3_ac_upload_waits_total", &[]) >= 2.0);
    assert_eq!(m.value("bazel_cache_s3_ac_uploads_waiting", &[]), 0.0);

    // A replica with an empty disk gets every AC entry and its outputs
    // through the bucket.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = start(&s3, fresh_dir.path());
    for (key, bytes, _) in &expected {
        assert!(ac_object(&s3, key).exists());
        assert_eq!(
            fresh.get_async(&format!("/ac/{key}")).await,
            (200, bytes.clone())
        );
    }
    for b in &blobs {
        assert_eq!(fresh.get_async(&cas_path(b)).await, (200, b.clone()));
    }
}

fn put_request(key: BlobKey, bytes: &[u8]) -> PutRequest {
    PutRequest {
        key,
        size: Some(bytes.len() as u64),
        encoding: Encoding::Identity,
        body: PutBody::bytes(bytes.to_vec()),
    }
}

/// The proxy as a library (to bound its checks at 2): an AC entry naming a
/// blob that exists nowhere is abandoned after its checks; one naming a
/// blob this replica stores but never queued gets that blob uploaded first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ac_entry_whose_outputs_never_arrive_is_abandoned() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(
        DiskStore::open(DiskConfig::new(dir.path(), 1 << 30))
            .await
            .unwrap(),
    );
    let backend = Arc::new(S3Backend::new(
        S3Client::new(&s3.config()).unwrap(),
        String::new(),
        true,
    ));
    let proxy = ProxyStore::start(
        disk.clone(),
        backend,
        ProxyConfig {
            update_timestamps: false,
            update_timestamps_interval: std::time::Duration::from_secs(3600),
            num_uploaders: 2,
            max_queued_uploads: 100,
            max_proxy_blob_size: u64::MAX,
            ac_output_checks: 2,
        },
        dir.path(),
    )
    .unwrap();

    // Stored here before the proxy saw it: never queued.
    let unqueued = noise(20_000, 31);
    disk.put(put_request(BlobKey::cas(Hash::of(&unqueued)), &unqueued))
        .await
        .unwrap();
    let nowhere = noise(1000, 32);
    let stdout = noise(500, 33);
    proxy
        .put(put_request(BlobKey::cas(Hash::of(&stdout)), &stdout))
        .await
        .unwrap();

    let orphan = action_result(&[&nowhere], &stdout).encode_to_vec();
    let orphan_key = Hash::of(b"orphan");
    let rescued = action_result(&[&unqueued], &stdout).encode_to_vec();
    let rescued_key = Hash::of(b"rescued");
    for (key, bytes) in [(orphan_key, &orphan), (rescued_key, &rescued)] {
        proxy
            .put(put_request(BlobKey::ac(key), bytes))
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.queue_stats().pending.load(Ordering::Relaxed) > 0 {
        assert!(
            Instant::now() < deadline,
            "queue never drained: {}",
            proxy.status_json()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = proxy.status_json();
    assert_eq!(st["UploadsAbandoned"], 1, "{st}");
    assert_eq!(st["UploadsWaitingForBlobs"], 0, "{st}");
    // stdout, the rescued blob and its AC entry.
    assert_eq!(st["UploadsDone"], 3, "{st}");
    assert!(!ac_object(&s3, &orphan_key).exists());
    assert!(ac_object(&s3, &rescued_key).exists());
    assert!(cas_objects(&s3, &Hash::of(&unqueued))[1].exists());
    // Abandoned for the bucket, still served from the local cache.
    assert!(
        proxy
            .contains(&BlobKey::ac(orphan_key))
            .await
            .unwrap()
            .is_some()
    );
}
