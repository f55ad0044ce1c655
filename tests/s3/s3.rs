//! The S3 proxy against a real S3 server that checks SigV4 signatures
//! (s3s-fs): two replicas sharing a bucket, bad credentials, crashes with
//! uploads queued, uploads finished at SIGTERM, an S3 outage, and corrupt
//! objects.

use std::time::{Duration, Instant};

use crate::support::async_client as client;
use crate::support::s3::S3Server;
use crate::support::{Server, cas_path as cas};
use bazel_cache_digest::Hash;

pub(super) fn start(
    s3: &S3Server,
    dir: Option<&std::path::Path>,
    extra: &[&str],
    secret: Option<&str>,
) -> Server {
    let mut args = s3.server_flags(secret.unwrap_or(&s3.secret_key), 4);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    match dir {
        Some(d) => Server::start_with_dir(d, &refs),
        None => Server::start(&refs),
    }
}

pub(super) async fn put(s: &Server, path: &str, body: &[u8]) -> u16 {
    client()
        .put(format!("{}{path}", s.http_url))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `/status` until `done` holds for its `Backend` section.
pub(super) async fn wait_backend(
    s: &Server,
    what: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let st = s.status_async().await;
        if done(&st["Backend"]) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; /status: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            (x >> (i % 3 * 8)) as u8 & 0x7f
        })
        .collect()
}

#[tokio::test]
async fn two_replicas_share_blobs_through_the_bucket() {
    let s3 = S3Server::start();
    for mode in ["zstd", "uncompressed"] {
        let a = start(
            &s3,
            None,
            &["--storage_mode", mode, "--disable_http_ac_validation"],
            None,
        );
        let small = blob(3000, 1 + mode.len() as u64);
        let big = blob(3 << 20, 2 + mode.len() as u64);
        let ac_key = format!("/ac/{}", Hash::of(mode.as_bytes()));
        assert_eq!(put(&a, &cas(&small), &small).await, 200);
        assert_eq!(put(&a, &cas(&big), &big).await, 200);
        assert_eq!(put(&a, &ac_key, b"action result bytes").await, 200);
        wait_backend(&a, "uploads", Duration::from_secs(30), |b| {
            b["UploadsPending"] == 0 && b["UploadsDone"] == 3
        })
        .await;

        // bazel-remote's key layout: cas.v2 in zstd mode, cas otherwise.
        let dir = if mode == "zstd" { "cas.v2" } else { "cas" };
        let h = Hash::of(&big).to_hex();
        let object = s3.object_path(&format!("{dir}/{}/{h}", &h[..2]));
        assert!(object.exists(), "{mode}: {} missing", object.display());
        if mode == "uncompressed" {
            assert_eq!(std::fs::read(&object).unwrap(), big);
        }

        // A second replica with an empty disk reads everything through S3.
        let b = start(
            &s3,
            None,
            &["--storage_mode", mode, "--disable_http_ac_validation"],
            None,
        );
        assert_eq!(b.get_async(&cas(&big)).await, (200, big.clone()), "{mode}");
        assert_eq!(
            b.get_async(&cas(&small)).await,
            (200, small.clone()),
            "{mode}"
        );
        assert_eq!(
            b.get_async(&ac_key).await,
            (200, b"action result bytes".to_vec()),
            "{mode}"
        );
        let st = b.status_async().await;
        assert_eq!(
            st["NumFiles"], 3,
            "{mode}: read-through stores locally: {st}"
        );
        assert_eq!(
            st["Backend"]["UploadsPending"], 0,
            "read-through must not re-upload"
        );
        assert!(st["Backend"]["Hits"].as_u64().unwrap() >= 3);
        // Misses stay misses.
        assert_eq!(b.get_async(&cas(b"never stored")).await.0, 404);
    }
}

#[tokio::test]
async fn a_wrong_secret_is_reported_clearly_and_not_retried_forever() {
    let s3 = S3Server::start();
    let wrong = "definitely-not-the-secret";
    let s = start(&s3, None, &[], Some(wrong));
    let data = blob(1000, 3);
    // The write is acknowledged from local disk...
    assert_eq!(put(&s, &cas(&data), &data).await, 200);
    assert_eq!(s.get_async(&cas(&data)).await, (200, data.clone()));
    // ...the upload is refused by S3, counted, and given up after a few tries.
    let st = wait_backend(&s, "abandoned upload", Duration::from_secs(30), |b| {
        b["UploadsAbandoned"] == 1
    })
    .await;
    assert_eq!(st["Backend"]["UploadsPending"], 0);
    assert!(st["Backend"]["Errors"].as_u64().unwrap() >= 1);
    let refused = |log: &str| {
        log.contains("SignatureDoesNotMatch")
            || log.contains("InvalidAccessKeyId")
            || log.contains("403")
    };
    let stderr = s.log_once(refused);
    assert!(refused(&stderr), "{stderr}");
    assert!(!stderr.contains(wrong), "the secret leaked into the log");
    let reported = stderr.matches("S3 request failed").count();
    assert!(
        reported <= 2,
        "a refused credential should be logged once, not per attempt:\n{stderr}"
    );
}

#[tokio::test]
async fn acknowledged_uploads_survive_kill_9() {
    let mut s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    s3.stop();
    let blobs: Vec<Vec<u8>> = (0..20).map(|i| blob(2000 + i, 100 + i as u64)).collect();
    {
        let s = start(&s3, Some(dir.path()), &[], None);
        for b in &blobs {
            assert_eq!(put(&s, &cas(b), b).await, 200);
        }
        let st = s.status_async().await;
        assert_eq!(st["Backend"]["UploadsPending"], 20, "{st}");
        // Dropping a Server sends SIGKILL: no shutdown of any kind.
    }
    s3.restart();
    let s = start(&s3, Some(dir.path()), &[], None);
    wait_backend(
        &s,
        "queued uploads after restart",
        Duration::from_secs(60),
        |b| b["UploadsPending"] == 0,
    )
    .await;
    let fresh = start(&s3, None, &[], None);
    for b in &blobs {
        assert_eq!(fresh.get_async(&cas(b)).await, (200, b.clone()));
    }
}

/// SIGTERM with uploads queued: the server uploads them before it exits
/// (a Kubernetes pod's emptyDir goes with it), even with no restart.
#[tokio::test]
async fn sigterm_uploads_what_is_queued_before_exiting() {
    let s3 = S3Server::start();
    // One uploader and many blobs: uploads are still queued when the
    // signal comes.
    let args = s3.server_flags(&s3.secret_key, 1);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&refs);
    let blobs: Vec<Vec<u8>> = (0..60)
        .map(|i| crate::support::noise(512 * 1024, 300 + i))
        .collect();
    for b in &blobs {
        assert_eq!(put(&s, &cas(b), b).await, 200);
    }
    let st = s.status_async().await;
    let pending = st["Backend"]["UploadsPending"].as_u64().unwrap();
    assert!(pending > 0, "nothing queued at the signal: {st}");
    let (status, _, stderr) = s.stop_with_output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stderr}");
    assert!(
        !stderr.contains("uploads still queued at shutdown"),
        "{stderr}"
    );
    let fresh = start(&s3, None, &[], None);
    for b in &blobs {
        assert_eq!(fresh.get_async(&cas(b)).await, (200, b.clone()));
    }
}

#[tokio::test]
async fn an_s3_outage_does_not_stop_the_cache_and_uploads_catch_up() {
    let mut s3 = S3Server::start();
    let s = start(&s3, None, &[], None);
    let before = blob(5000, 7);
    assert_eq!(put(&s, &cas(&before), &before).await, 200);
    wait_backend(&s, "first upload", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 1
    })
    .await;

    s3.stop();
    let during: Vec<Vec<u8>> = (0..5).map(|i| blob(4000, 20 + i)).collect();
    let started = Instant::now();
    for b in &during {
        assert_eq!(put(&s, &cas(b), b).await, 200);
        assert_eq!(s.get_async(&cas(b)).await, (200, b.clone()));
    }
    // A miss asks the dead backend, which must not hold the request long.
    assert_eq!(s.get_async(&cas(b"not anywhere")).await.0, 404);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "requests were held by the dead backend"
    );

    s3.restart();
    wait_backend(
        &s,
        "uploads after the outage",
        Duration::from_secs(90),
        |b| b["UploadsPending"] == 0 && b["UploadsDone"] == 6,
    )
    .await;
    let fresh = start(&s3, None, &[], None);
    for b in &during {
        assert_eq!(fresh.get_async(&cas(b)).await, (200, b.clone()));
    }
}

#[tokio::test]
async fn a_corrupt_object_is_never_served_or_kept() {
    let s3 = S3Server::start();
    for mode in ["uncompressed", "zstd"] {
        let a = start(&s3, None, &["--storage_mode", mode], None);
        let data = blob(50_000, 30 + mode.len() as u64);
        assert_eq!(put(&a, &cas(&data), &data).await, 200);
        wait_backend(&a, "upload", Duration::from_secs(30), |b| {
            b["UploadsDone"] == 1
        })
        .await;
        let dir = if mode == "zstd" { "cas.v2" } else { "cas" };
        let h = Hash::of(&data).to_hex();
        let object = s3.object_path(&format!("{dir}/{}/{h}", &h[..2]));
        let mut bytes = std::fs::read(&object).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&object, &bytes).unwrap();

        let b = start(&s3, None, &["--storage_mode", mode], None);
        assert_eq!(b.get_async(&cas(&data)).await.0, 404, "{mode}");
        let st = b.status_async().await;
        assert_eq!(st["NumFiles"], 0, "{mode}: {st}");
        assert_eq!(st["Backend"]["CorruptObjects"], 1, "{mode}: {st}");
    }
}

#[tokio::test]
async fn concurrent_misses_fetch_once_and_hits_refresh_timestamps() {
    let s3 = S3Server::start();
    let a = start(&s3, None, &["--storage_mode", "uncompressed"], None);
    let data = blob(200_000, 40);
    assert_eq!(put(&a, &cas(&data), &data).await, 200);
    wait_backend(&a, "upload", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 1
    })
    .await;
    let h = Hash::of(&data).to_hex();
    let object = s3.object_path(&format!("cas/{}/{h}", &h[..2]));
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&object)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let b = start(
        &s3,
        None,
        &["--storage_mode", "uncompressed", "--s3.update_timestamps"],
        None,
    );
    let path = cas(&data);
    let gets = (0..12).map(|_| b.get_async(&path));
    for (status, body) in futures_util::future::join_all(gets).await {
        assert_eq!(status, 200);
        assert_eq!(body, data);
    }
    let st = b.status_async().await;
    assert_eq!(
        st["Backend"]["Hits"], 1,
        "12 concurrent misses must share one download: {st}"
    );
    // update_timestamps: the hit refreshed the object's modification time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&object).unwrap().modified().unwrap() <= old + Duration::from_secs(60) {
        assert!(
            Instant::now() < deadline,
            "object timestamp was not refreshed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing in /status or the logs gives the credentials away.
    assert!(!st.to_string().contains(&s3.secret_key));
    let (out, err) = b.output();
    assert!(!out.contains(&s3.secret_key) && !err.contains(&s3.secret_key));
}

#[tokio::test]
async fn grpc_find_missing_sees_blobs_that_are_only_in_s3() {
    use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
    let s3 = S3Server::start();
    let a = start(&s3, None, &[], None);
    let data = blob(10_000, 50);
    assert_eq!(put(&a, &cas(&data), &data).await, 200);
    wait_backend(&a, "upload", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 1
    })
    .await;

    let b = start(&s3, None, &["--grpc_address", "127.0.0.1:0"], None);
    let ch = tonic::transport::Channel::from_shared(b.grpc_endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut cas_client =
        re::content_addressable_storage_client::ContentAddressableStorageClient::new(ch);
    let present = re::Digest {
        hash: Hash::of(&data).to_hex(),
        size_bytes: data.len() as i64,
    };
    let absent = re::Digest {
        hash: Hash::of(b"nowhere").to_hex(),
        size_bytes: 7,
    };
    let missing = cas_client
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![present, absent.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![absent]);
    // HEAD only: nothing was downloaded into B's disk.
    assert_eq!(b.status_async().await["NumFiles"], 0);
}

/// The design document's Deployment: a ConfigMap-rendered config file plus
/// S3 credentials only in BAZEL_REMOTE_S3_* environment variables.
#[tokio::test]
async fn the_design_deployment_gets_its_credentials_from_the_environment() {
    use std::io::{BufRead, BufReader};
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let design = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/design-configmap.yaml"
    ))
    .unwrap();
    let config = design
        .replace("minio.attic-cache.svc.cluster.local:9000", &s3.endpoint)
        .replace("\"bazel-cache\"", &format!("\"{}\"", s3.bucket))
        .replace(
            "\"/data\"",
            &format!("\"{}\"", dir.path().join("data").display()),
        )
        .replace("\"0.0.0.0:8080\"", "\"127.0.0.1:0\"")
        .replace("\"grpc_port\": 9092", "\"grpc_port\": 0");
    assert_ne!(config, design);
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bazel-cache"))
        .arg(format!("--config_file={}", file.display()))
        .env("BAZEL_REMOTE_S3_ACCESS_KEY_ID", &s3.access_key)
        .env("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", &s3.secret_key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let url = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("build --remote_cache=").map(str::to_string))
        .expect("server printed no .bazelrc line");
    let data = blob(8000, 60);
    let r = client()
        .put(format!("{url}{}", cas(&data)))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = Hash::of(&data).to_hex();
    let object = s3.object_path(&format!("cas.v2/{}/{h}", &h[..2]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !object.exists() {
        assert!(
            Instant::now() < deadline,
            "upload with env credentials never reached S3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// BLAKE3 entries go to the bucket under `blake3/` (SHA-256 keys keep
/// bazel-remote's layout), and a second replica reads them back through
/// S3 by their BLAKE3 names only.
#[tokio::test]
async fn blake3_entries_have_their_own_bucket_namespace() {
    use bazel_cache_digest::DigestFunction;
    let s3 = S3Server::start();
    let a = start(&s3, None, &[], None);
    let data = blob(200_000, 77);
    let h = Hash::of_with(DigestFunction::Blake3, &data).to_hex();
    let sha = Hash::of(&data).to_hex();
    assert_eq!(put(&a, &format!("/blake3/cas/{h}"), &data).await, 200);
    assert_eq!(put(&a, &format!("/cas/{sha}"), &data).await, 200);
    wait_backend(&a, "uploads", Duration::from_secs(30), |b| {
        b["UploadsPending"] == 0 && b["UploadsDone"] == 2
    })
    .await;
    // zstd storage mode (the default): cas.v2 in both namespaces.
    let object = s3.object_path(&format!("blake3/cas.v2/{}/{h}", &h[..2]));
    assert!(object.exists(), "{} missing", object.display());
    let sha_object = s3.object_path(&format!("cas.v2/{}/{sha}", &sha[..2]));
    assert!(sha_object.exists(), "{} missing", sha_object.display());
    assert!(!s3.object_path(&format!("cas.v2/{}/{h}", &h[..2])).exists());

    let b = start(&s3, None, &[], None);
    assert_eq!(
        b.get_async(&format!("/blake3/cas/{h}")).await,
        (200, data.clone())
    );
    // The BLAKE3 hex read as SHA-256 names nothing, locally or in the bucket.
    assert_eq!(b.get_async(&format!("/cas/{h}")).await.0, 404);
}
