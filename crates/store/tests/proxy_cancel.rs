//! A client that disconnects during a read-through leaves nothing behind.
//!
//! The backend is the real S3 client pointed at a TCP server that accepts
//! and never answers (a hung S3 endpoint), so the download is stuck inside
//! the client's request exactly as it would be in production. The reader
//! gives up (as a request future does when its client goes away); the
//! proxy must forget the download, and a later reader must start afresh.

use std::sync::Arc;
use std::time::Duration;

use bazel_cache_digest::{BlobKey, Hash};
use bazel_cache_store::Store;
use bazel_cache_store::disk::{DiskConfig, DiskStore};
use bazel_cache_store::proxy::{DEFAULT_AC_OUTPUT_CHECKS, ProxyConfig, ProxyStore};
use bazel_cache_store::s3::client::S3ClientOptions;
use bazel_cache_store::s3::{
    BucketLookupType, S3AuthMethod, S3Backend, S3Client, S3Config, S3SignatureType,
};

fn s3_config(endpoint: String) -> S3Config {
    S3Config {
        endpoint,
        bucket: "bucket".into(),
        prefix: String::new(),
        region: "us-east-1".into(),
        auth_method: S3AuthMethod::AccessKey,
        access_key_id: "AKIATEST".into(),
        secret_access_key: "secret".into(),
        session_token: Default::default(),
        signature_type: S3SignatureType::V4,
        iam_role_endpoint: String::new(),
        aws_profile: "default".into(),
        aws_shared_credentials_file: None,
        disable_ssl: true,
        bucket_lookup_type: BucketLookupType::Path,
        max_idle_conns: 4,
        update_timestamps: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_read_through_leaves_no_download_behind() {
    // Accepts connections and holds them open without a byte of answer.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = hung.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hung.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(
        DiskStore::open(DiskConfig::new(dir.path(), 1 << 30))
            .await
            .unwrap(),
    );
    let client = S3Client::with_options(
        &s3_config(endpoint),
        S3ClientOptions {
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(300),
            ..S3ClientOptions::default()
        },
    )
    .unwrap();
    let backend = Arc::new(S3Backend::new(client, String::new(), false));
    let proxy = ProxyStore::start(
        disk.clone(),
        backend,
        ProxyConfig {
            update_timestamps: false,
            update_timestamps_interval: Duration::from_secs(3600),
            num_uploaders: 1,
            max_queued_uploads: 100,
            max_proxy_blob_size: u64::MAX,
            ac_output_checks: DEFAULT_AC_OUTPUT_CHECKS,
        },
        dir.path(),
    )
    .unwrap();

    let key = BlobKey::cas(Hash::of(b"only in the bucket"));
    for attempt in 1..=2 {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(300), proxy.get(&key, false)).await;
        assert!(gave_up.is_err(), "the hung backend cannot answer");
        assert_eq!(
            proxy.downloads_in_flight(),
            0,
            "attempt {attempt}: the abandoned download is forgotten"
        );
    }
    // Each reader started its own download (none waited on a dead one).
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "a second reader asks the backend again"
    );
    server.abort();
}
