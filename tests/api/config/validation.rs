//! Validation: every refused configuration gives one error line naming the
//! key (and, from a file, its position).

use std::path::PathBuf;

use super::helpers::{Fixture, load};
use bazel_cache::config::S3AuthMethod;

#[test]
fn unknown_file_key_reports_line_and_column() {
    let fx = Fixture::new();
    let file = fx.file("dir: /x\nmax_size: 3\nmax_sise: 4\n");
    let err = fx.error(&["--config_file", &file], &[]);
    assert_eq!(
        err,
        format!(
            "config file {file}: line 3 column 1: max_sise: unknown key \
             (see `bazel-cache --help` for the supported keys)"
        )
    );
}

#[test]
fn wrong_type_in_file_names_key_and_position() {
    let fx = Fixture::new();
    let file = fx.file("s3_proxy:\n  endpoint: e\n  max_idle_conns: abc\n");
    let err = fx.error(&["--config_file", &file], &[]);
    assert_eq!(
        err,
        format!(
            "config file {file}: line 3 column 19: s3_proxy.max_idle_conns: \
             invalid type: string \"abc\", expected an integer"
        )
    );
}

#[test]
fn wrong_type_from_flag_or_env_names_the_source() {
    let fx = Fixture::new();
    assert_eq!(
        fx.error(&["--max_size", "lots"], &[]),
        "max_size: invalid number \"lots\" (set by --max_size)"
    );
    assert_eq!(
        fx.error(&[], &[("BAZEL_REMOTE_S3_MAX_IDLE_CONNS", "many")]),
        "s3_proxy.max_idle_conns: invalid integer \"many\" (set by BAZEL_REMOTE_S3_MAX_IDLE_CONNS)"
    );
    assert_eq!(
        fx.error(&["--fsync=maybe"], &[]),
        "fsync: invalid boolean \"maybe\" (expected true or false) (set by --fsync)"
    );
}

#[test]
fn max_size_must_be_positive() {
    let fx = Fixture::new();
    let file = fx.file("max_size: 0\n");
    assert_eq!(
        fx.error(&["--config_file", &file], &[]),
        format!("max_size: must be greater than 0 (set by config file {file})")
    );
    assert_eq!(
        fx.error(&["--max_size=-3"], &[]),
        "max_size: must be greater than 0 (set by --max_size)"
    );
    assert!(
        fx.error(&["--max_size=2", "--max_size_hard_limit=1"], &[])
            .starts_with("max_size_hard_limit: must not be smaller than max_size")
    );
}

#[test]
fn unwritable_dir() {
    // Tests run as root, which ignores permission bits: a path below a
    // regular file can never be created, whoever we are.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let dir = file.join("sub");
    let err = load(&["--dir", &dir.display().to_string()], &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("dir: {} is not writable: ", dir.display())),
        "{err}"
    );
    assert!(err.ends_with("(set by --dir)"), "{err}");
    // check-config validates a config where it is built (a Nix sandbox), not
    // where it runs: it neither creates nor probes the cache directory.
    let ok = load(&["check-config", "--dir", &dir.display().to_string()], &[]).unwrap();
    assert_eq!(ok.config.dir, dir);
    assert!(!dir.exists());
}

#[test]
fn bad_addresses() {
    let fx = Fixture::new();
    let err = fx.error(&["--http_address", "8080"], &[]);
    assert!(
        err.starts_with("http_address: \"8080\" must be [host]:port or unix:///path.sock"),
        "{err}"
    );
    let err = fx.error(&[], &[("BAZEL_REMOTE_GRPC_ADDRESS", "unix://")]);
    assert!(err.starts_with("grpc_address: "), "{err}");
    let err = fx.error(&["--port", "70000"], &[]);
    assert!(
        err.starts_with("port: must be between 0 and 65535"),
        "{err}"
    );
    let err = fx.error(&["--http_address", "localhost:99999"], &[]);
    assert!(err.starts_with("http_address: "), "{err}");
}

#[test]
fn http_and_grpc_port_conflict() {
    let fx = Fixture::new();
    let err = fx.error(&["--http_address", ":9092"], &[]);
    assert_eq!(
        err,
        "http_address: TCP port 9092 is used by both the HTTP and the gRPC listener (set by --http_address)"
    );
    let file = fx.file("http_address: 0.0.0.0:8080\ngrpc_port: 8080\n");
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(
        err.starts_with("grpc_port: TCP port 8080 is used by both"),
        "{err}"
    );
    // Port 0 picks a free port each time: no conflict.
    fx.config(
        &["--http_address=127.0.0.1:0", "--grpc_address=127.0.0.1:0"],
        &[],
    );
}

#[test]
fn tls_half_set() {
    let fx = Fixture::new();
    assert_eq!(
        fx.error(&["--tls_cert_file=/c.pem"], &[]),
        "tls_key_file: must be set when tls_cert_file is set"
    );
    assert_eq!(
        fx.error(&[], &[("BAZEL_REMOTE_TLS_KEY_FILE", "/k.pem")]),
        "tls_cert_file: must be set when tls_key_file is set"
    );
    assert_eq!(
        fx.error(&["--tls_ca_file=/ca.pem"], &[]),
        "tls_ca_file: mTLS also needs the server's tls_cert_file and tls_key_file (set by --tls_ca_file)"
    );
    assert!(
        fx.error(&["--allow_unauthenticated_reads"], &[])
            .starts_with("allow_unauthenticated_reads: only makes sense with authentication")
    );
}

#[test]
fn bad_enum_values() {
    let fx = Fixture::new();
    assert_eq!(
        fx.error(&[], &[("BAZEL_REMOTE_STORAGE_MODE", "gzip")]),
        "storage_mode: must be one of \"zstd\", \"uncompressed\", not \"gzip\" (set by BAZEL_REMOTE_STORAGE_MODE)"
    );
    for (args, key) in [
        (&["--access_log_level=some"][..], "access_log_level"),
        (&["--log_format=xml"], "log_format"),
        (&["--log_timezone=CET"], "log_timezone"),
        (&["--zstd_implementation=rust"], "zstd_implementation"),
        (&["--min_tls_version=1.4"], "min_tls_version"),
    ] {
        let err = fx.error(args, &[]);
        assert!(err.starts_with(&format!("{key}: must be one of ")), "{err}");
    }
}

#[test]
fn blob_size_limits_must_be_positive() {
    let fx = Fixture::new();
    assert_eq!(
        fx.error(&["--max_blob_size=0"], &[]),
        "max_blob_size: must be greater than 0 (set by --max_blob_size)"
    );
    assert!(
        fx.error(&["--max_proxy_blob_size=-1"], &[])
            .starts_with("max_proxy_blob_size: must be greater than 0")
    );
    let c = fx.config(&["--max_blob_size=1048576"], &[]);
    assert_eq!(c.max_blob_size, 1 << 20);
}

#[test]
fn s3_block_validation() {
    let fx = Fixture::new();
    let base = "s3_proxy:\n  endpoint: e:9000\n  bucket: b\n";

    let file = fx.file(base);
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(err.starts_with("s3_proxy.auth_method: required"), "{err}");

    let file = fx.file(&format!("{base}  auth_method: password\n"));
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(
        err.starts_with(
            "s3_proxy.auth_method: must be one of \"access_key\", \"iam_role\", \
             \"aws_credentials_file\", not \"password\""
        ),
        "{err}"
    );

    let file = fx.file(&format!(
        "{base}  auth_method: iam_role\n  bucket_lookup_type: vhost\n"
    ));
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(
        err.starts_with("s3_proxy.bucket_lookup_type: must be one of \"auto\", \"dns\", \"path\""),
        "{err}"
    );

    let file = fx.file(&format!(
        "{base}  auth_method: iam_role\n  key_version: 1\n"
    ));
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(err.starts_with("s3_proxy.key_version: must be 2"), "{err}");

    let file = fx.file(&format!(
        "{base}  auth_method: aws_credentials_file\n  aws_shared_credentials_file: /creds\n"
    ));
    let s3 = fx.config(&["--config_file", &file], &[]).s3_proxy.unwrap();
    assert_eq!(s3.auth_method, S3AuthMethod::AwsCredentialsFile);
    assert_eq!(s3.aws_profile, "default");
    assert_eq!(
        s3.aws_shared_credentials_file,
        Some(PathBuf::from("/creds"))
    );
}

#[test]
fn unsupported_proxy_blocks_are_rejected() {
    let fx = Fixture::new();
    for block in ["gcs_proxy", "azblob_proxy", "ldap"] {
        let file = fx.file(&format!("max_size: 1\n{block}:\n  url: http://x\n"));
        let err = fx.error(&["--config_file", &file], &[]);
        assert!(
            err.starts_with(&format!(
                "config file {file}: line 3 column 3: {block}: not supported by bazel-cache"
            )),
            "{err}"
        );
    }
    let err = fx.error(&[], &[("BAZEL_REMOTE_GCS_BUCKET", "b")]);
    assert!(
        err.starts_with("gcs_proxy: not supported by bazel-cache; use s3_proxy"),
        "{err}"
    );
    assert!(err.ends_with("(set by BAZEL_REMOTE_GCS_BUCKET)"), "{err}");
}

#[test]
fn body_progress_keys_from_every_source() {
    use std::time::Duration;
    let fx = Fixture::new();
    let c = fx.config(&[], &[]);
    assert_eq!(c.body_min_rate, 256);
    assert_eq!(c.body_rate_window, Duration::from_secs(30));
    let file = fx.file("body_min_rate: 1000\nbody_rate_window: 1m\n");
    let c = fx.config(
        &["--config_file", &file],
        &[("BAZEL_REMOTE_BODY_RATE_WINDOW", "45s")],
    );
    assert_eq!(c.body_min_rate, 1000);
    assert_eq!(c.body_rate_window, Duration::from_secs(45), "env over file");
    // 0 turns the rate check off; a zero window or a negative rate is refused.
    assert_eq!(fx.config(&["--body_min_rate=0"], &[]).body_min_rate, 0);
    assert_eq!(
        fx.error(&["--body_rate_window=0s"], &[]),
        "body_rate_window: must be greater than 0 (body_min_rate 0 turns the rate check off) \
         (set by --body_rate_window)"
    );
    assert!(
        fx.error(&["--body_min_rate=-1"], &[])
            .starts_with("body_min_rate: must not be negative"),
    );
}

#[test]
fn max_buffer_memory_from_every_source() {
    let fx = Fixture::new();
    assert_eq!(fx.config(&[], &[]).max_buffer_memory_bytes, 1 << 30);
    let file = fx.file("max_buffer_memory: 0.5\n");
    assert_eq!(
        fx.config(&["--config_file", &file], &[])
            .max_buffer_memory_bytes,
        512 << 20
    );
    assert_eq!(
        fx.config(
            &["--config_file", &file],
            &[("BAZEL_REMOTE_MAX_BUFFER_MEMORY", "2")]
        )
        .max_buffer_memory_bytes,
        2 << 30,
        "env over file"
    );
    assert_eq!(
        fx.config(&["--max_buffer_memory=0.03125"], &[])
            .max_buffer_memory_bytes,
        32 << 20
    );
    // Less than one decoder at the largest window (and a few buffers) is refused.
    assert_eq!(
        fx.error(&["--max_buffer_memory=0.01"], &[]),
        "max_buffer_memory: must be at least 0.03125 (32 MiB): a zstd decoder at the largest \
         window accepted takes 8.6 MiB (set by --max_buffer_memory)"
    );
    assert!(
        fx.error(&["--max_buffer_memory=0"], &[])
            .starts_with("max_buffer_memory: must be greater than 0"),
    );
}

#[test]
fn presence_cache_and_refresh_interval_from_every_source() {
    use std::time::Duration;
    let fx = Fixture::new();
    let s3 = [
        "--s3.endpoint=e:9000",
        "--s3.bucket=b",
        "--s3.auth_method=iam_role",
    ];
    let c = fx.config(&s3, &[]);
    assert_eq!(c.presence_cache.positive_ttl, Duration::from_secs(600));
    assert_eq!(c.presence_cache.negative_ttl, Duration::from_secs(10));
    assert_eq!(c.presence_cache.max_entries, 250_000);
    assert_eq!(c.update_timestamps_interval, Duration::from_secs(3600));

    let file = fx.file(
        "s3_proxy:\n  endpoint: e:9000\n  bucket: b\n  auth_method: iam_role\n  \
         presence_cache_ttl: 5m\n  presence_cache_negative_ttl: 0s\n  \
         presence_cache_max_entries: 1000\n  update_timestamps_interval: 2h\n",
    );
    let c = fx.config(
        &["--config_file", &file, "--s3.presence_cache_max_entries=0"],
        &[("BAZEL_REMOTE_S3_PRESENCE_CACHE_TTL", "90")],
    );
    assert_eq!(
        c.presence_cache.positive_ttl,
        Duration::from_secs(90),
        "env over file"
    );
    assert_eq!(c.presence_cache.negative_ttl, Duration::ZERO);
    assert_eq!(c.presence_cache.max_entries, 0, "flag over file");
    assert!(!c.presence_cache.enabled());
    assert_eq!(c.update_timestamps_interval, Duration::from_secs(7200));

    // A day or more is refused: lifecycle expiries are whole days.
    let err = fx.error(&[&s3[..], &["--s3.presence_cache_ttl=24h"]].concat(), &[]);
    assert!(
        err.starts_with(
            "s3_proxy.presence_cache_ttl: must be less than 86400s (the shortest S3 lifecycle \
             expiry): a cached \"present\" for an object the lifecycle rule deleted"
        ),
        "{err}"
    );
    assert!(err.ends_with("(set by --s3.presence_cache_ttl)"), "{err}");
    for (flag, refusal) in [
        (
            "--s3.presence_cache_negative_ttl=48h",
            "s3_proxy.presence_cache_negative_ttl: must be less than",
        ),
        (
            "--s3.update_timestamps_interval=0s",
            "s3_proxy.update_timestamps_interval: must be greater than 0",
        ),
        (
            "--s3.update_timestamps_interval=30h",
            "s3_proxy.update_timestamps_interval: must be less than",
        ),
        (
            "--s3.presence_cache_max_entries=-1",
            "s3_proxy.presence_cache_max_entries: must not be negative",
        ),
    ] {
        let err = fx.error(&[&s3[..], &[flag]].concat(), &[]);
        assert!(err.starts_with(refusal), "{flag}: {err}");
    }
}
