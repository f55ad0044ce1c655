//! The NixOS VM test vm-s3 (nix/tests/vm-s3.nix) mirrored against the real
//! binary, run the way the module's unit runs it: two replicas with their
//! own disks share one bucket of a real S3 server (s3s-fs, where the VM test
//! has MinIO); a blob written through one is read through the other. The
//! other mirrors are in tests/deploy/nix_module.rs.

use std::time::{Duration, Instant};

use bazel_cache_digest::Hash;

use crate::support::s3::S3Server;
use crate::support::unit::{Unit, blob, get, put, status};

/// vm-s3: the module's rendering of an S3 setup (typed keys, credentials
/// left to environmentFile), two replicas, one bucket.
#[tokio::test]
async fn vm_s3_mirror_two_replicas_share_a_bucket_with_credentials_from_the_environment() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.yaml");
    // What the module renders for vm-s3's settings (see nix/tests/vm-s3.nix).
    let yaml = format!(
        "dir: /var/lib/bazel-cache\nmax_size: 1\nhttp_address: 0.0.0.0:8080\n\
         grpc_address: 0.0.0.0:9092\nlog_timezone: none\n\
         s3_proxy:\n  auth_method: access_key\n  bucket: {bucket}\n  \
         bucket_lookup_type: path\n  disable_ssl: true\n  endpoint: {endpoint}\n",
        bucket = s3.bucket,
        endpoint = s3.endpoint
    );
    std::fs::write(&config, yaml).unwrap();
    let env = [
        ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
    ];
    let a = Unit::start(&config, &tmp.path().join("a"), &env);
    let b = Unit::start(&config, &tmp.path().join("b"), &env);

    let data = blob(300_000, 42);
    let path = format!("/cas/{}", Hash::of(&data));
    assert_eq!(
        put(&format!("{}{path}", a.http_url), data.clone()).await,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(&a).await;
        if st["Backend"]["UploadsDone"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "upload never finished: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&format!("{}{path}", b.http_url)).await, (200, data));
    let hits = status(&b).await["Backend"]["Hits"].as_u64().unwrap();
    assert!(hits >= 1, "replica b did not read through S3");
    a.stop();
    b.stop();
}
