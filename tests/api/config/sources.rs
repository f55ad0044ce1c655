//! Where configuration comes from: the design document's Kubernetes
//! ConfigMap, and precedence (file < environment < flags < defaults for
//! the rest).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::helpers::{Fixture, GIB, SECRET, tcp};
use bazel_cache::config::{
    AccessLogLevel, BucketLookupType, Mode, S3AuthMethod, S3SignatureType, StorageMode,
};

fn design_configmap() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/design-configmap.yaml")
        .display()
        .to_string()
}

const DESIGN_CREDENTIALS: [(&str, &str); 2] = [
    ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "minio-user"),
    ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", SECRET),
];

#[test]
fn design_configmap_loads_with_credentials_from_the_environment() {
    let fx = Fixture::new();
    let file_arg = format!("--config_file={}", design_configmap());
    // The Deployment passes exactly `--config_file=...`; `--dir` stands in for
    // the /data volume and proves that flags override the file.
    let invocation = fx.load(&[&file_arg], &DESIGN_CREDENTIALS).unwrap();
    assert_eq!(invocation.mode, Mode::Serve);
    let c = invocation.config;

    assert_eq!(c.dir, PathBuf::from(fx.dir()));
    assert!(c.dir.is_dir());
    assert_eq!(c.max_size_bytes, 100 * GIB);
    assert_eq!(c.http_address, tcp("0.0.0.0:8080"));
    assert_eq!(c.grpc_address, Some(tcp("0.0.0.0:9092")));
    assert_eq!(c.access_log_level, AccessLogLevel::None);
    assert!(c.enable_endpoint_metrics);
    assert_eq!(c.num_uploaders, 100);
    assert_eq!(c.max_queued_uploads, 1_000_000);

    let s3 = c.s3_proxy.expect("s3_proxy enabled by the file");
    assert_eq!(s3.endpoint, "minio.attic-cache.svc.cluster.local:9000");
    assert_eq!(s3.bucket, "bazel-cache");
    assert_eq!(s3.prefix, "");
    assert_eq!(s3.auth_method, S3AuthMethod::AccessKey);
    assert_eq!(s3.access_key_id.expose(), "minio-user");
    assert_eq!(s3.secret_access_key.expose(), SECRET);
    assert_eq!(s3.session_token.expose(), "");
    assert_eq!(s3.bucket_lookup_type, BucketLookupType::Path);
    assert!(s3.disable_ssl);
    assert!(s3.update_timestamps);
    assert_eq!(s3.max_idle_conns, 1024);
    assert_eq!(s3.signature_type, S3SignatureType::V4);
}

#[test]
fn design_configmap_via_env_var_config_file() {
    let fx = Fixture::new();
    let path = design_configmap();
    let mut env = DESIGN_CREDENTIALS.to_vec();
    env.push(("BAZEL_REMOTE_CONFIG_FILE", &path));
    let c = fx.config(&[], &env);
    assert_eq!(c.max_size_bytes, 100 * GIB);
    assert_eq!(c.s3_proxy.unwrap().access_key_id.expose(), "minio-user");
}

#[test]
fn design_configmap_without_credentials_names_the_missing_one() {
    let fx = Fixture::new();
    let file_arg = format!("--config_file={}", design_configmap());
    let err = fx.error(&[&file_arg], &[]);
    assert!(
        err.starts_with("s3_proxy.access_key_id: required by the S3 proxy"),
        "{err}"
    );
    assert!(err.contains("BAZEL_REMOTE_S3_ACCESS_KEY_ID"), "{err}");

    let err = fx.error(
        &[&file_arg],
        &[("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "minio-user")],
    );
    assert!(
        err.starts_with("s3_proxy.secret_access_key: required"),
        "{err}"
    );
    assert!(err.contains("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY"), "{err}");
}

#[test]
fn flags_beat_environment_beats_file() {
    let fx = Fixture::new();
    let file = fx.file(
        "max_size: 10\n\
         storage_mode: uncompressed\n\
         access_log_level: none\n\
         idle_timeout: 1m\n\
         fsync: true\n\
         s3_proxy:\n  \
           endpoint: file-endpoint:9000\n  \
           bucket: file-bucket\n  \
           region: file-region\n  \
           prefix: file-prefix\n  \
           auth_method: iam_role\n  \
           max_idle_conns: 7\n",
    );
    let env = [
        ("BAZEL_REMOTE_MAX_SIZE", "20"),
        ("BAZEL_REMOTE_ACCESS_LOG_LEVEL", "all"),
        ("BAZEL_REMOTE_FSYNC", "false"),
        ("BAZEL_REMOTE_S3_REGION", "env-region"),
        ("BAZEL_REMOTE_S3_PREFIX", "env-prefix"),
        ("BAZEL_REMOTE_S3_BUCKET", "env-bucket"),
    ];
    let c = fx.config(
        &[
            "--config_file",
            &file,
            "--max_size",
            "30",
            "--s3.prefix=flag-prefix",
            "--fsync",
        ],
        &env,
    );
    assert_eq!(c.max_size_bytes, 30 * GIB, "flag over env over file");
    assert_eq!(c.storage_mode, StorageMode::Uncompressed, "file only");
    assert_eq!(c.access_log_level, AccessLogLevel::All, "env over file");
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)), "file only");
    assert!(c.fsync, "flag over env");
    let s3 = c.s3_proxy.unwrap();
    assert_eq!(s3.endpoint, "file-endpoint:9000", "file only");
    assert_eq!(s3.bucket, "env-bucket", "env over file");
    assert_eq!(s3.region, "env-region", "env over file");
    assert_eq!(s3.prefix, "flag-prefix", "flag over env over file");
    assert_eq!(s3.max_idle_conns, 7, "file only");
    assert_eq!(s3.auth_method, S3AuthMethod::IamRole);
}

#[test]
fn s3_flag_beats_s3_environment_variable() {
    let fx = Fixture::new();
    let c = fx.config(
        &[
            "--s3.endpoint",
            "flag:9000",
            "--s3.auth_method=access_key",
            "--s3.access_key_id=flag-id",
        ],
        &[
            ("BAZEL_REMOTE_S3_ENDPOINT", "env:9000"),
            ("BAZEL_REMOTE_S3_BUCKET", "b"),
            ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "env-id"),
            ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    let s3 = c.s3_proxy.unwrap();
    assert_eq!(s3.endpoint, "flag:9000");
    assert_eq!(s3.bucket, "b");
    assert_eq!(s3.access_key_id.expose(), "flag-id");
    assert_eq!(s3.secret_access_key.expose(), SECRET);
}

#[test]
fn s3_is_enabled_by_endpoint_or_bucket_but_not_by_credentials() {
    let fx = Fixture::new();
    let creds_only = fx.config(&[], &DESIGN_CREDENTIALS);
    assert_eq!(creds_only.s3_proxy, None);

    let err = fx.error(&["--s3.bucket", "b"], &DESIGN_CREDENTIALS);
    assert!(err.starts_with("s3_proxy.endpoint: required"), "{err}");
    assert!(err.contains("--s3.endpoint"), "{err}");

    let err = fx.error(&[], &[("BAZEL_REMOTE_S3_ENDPOINT", "e:9000")]);
    assert!(err.starts_with("s3_proxy.bucket: required"), "{err}");
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let fx = Fixture::new();
    let file = fx.file("max_size: 3\n");
    let c = fx.config(
        &["--config_file", &file],
        &[
            ("BAZEL_REMOTE_MAX_SIZE", ""),
            ("BAZEL_REMOTE_S3_ENDPOINT", ""),
        ],
    );
    assert_eq!(c.max_size_bytes, 3 * GIB);
    assert_eq!(c.s3_proxy, None);
}

#[test]
fn bazel_remote_misspelled_env_var_is_honoured() {
    let fx = Fixture::new();
    let c = fx.config(&[], &[("BAZEL_REMOTE_DISABLE_GRPS_AC_DEPS_CHECK", "true")]);
    assert!(c.disable_grpc_ac_deps_check);
    // bazel-remote's name for allow_unauthenticated_reads (invalid here
    // without authentication, which proves it was read).
    let err = fx.error(&[], &[("BAZEL_REMOTE_UNAUTHENTICATED_READS", "1")]);
    assert!(err.starts_with("allow_unauthenticated_reads: "), "{err}");
    assert!(
        err.ends_with("(set by BAZEL_REMOTE_UNAUTHENTICATED_READS)"),
        "{err}"
    );
}
