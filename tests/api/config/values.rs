//! Defaults when nothing is given, and the values each key accepts: sizes,
//! Go durations, addresses and sockets, TLS and auth, logging, metrics and
//! compatibility keys.

use std::path::PathBuf;
use std::time::Duration;

use super::helpers::{Fixture, GIB, load, tcp};
use bazel_cache::config::{AccessLogLevel, ListenAddr, LogFormat, LogTimezone, Mode, StorageMode};

#[test]
fn defaults_when_nothing_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().display().to_string();
    let invocation = load(&[], &[("XDG_CACHE_HOME", &xdg)]).unwrap();
    assert_eq!(invocation.mode, Mode::Serve);
    assert!(invocation.notes.is_empty(), "{:?}", invocation.notes);
    let c = invocation.config;

    assert_eq!(c.dir, tmp.path().join("bazel-cache"));
    assert!(c.dir.is_dir(), "default dir created");
    assert_eq!(c.max_size_bytes, 5 * GIB);
    assert_eq!(c.max_size_hard_limit_bytes, None);
    assert_eq!(c.http_address, tcp("0.0.0.0:8080"));
    assert_eq!(c.grpc_address, Some(tcp("0.0.0.0:9092")));
    assert_eq!(c.storage_mode, StorageMode::Zstd);
    assert_eq!(c.max_blob_size, u64::MAX);
    assert_eq!(c.max_proxy_blob_size, u64::MAX);
    assert_eq!(c.idle_timeout, None);
    assert_eq!(c.http_read_timeout, None);
    assert_eq!(c.http_write_timeout, None);
    assert_eq!(c.access_log_level, AccessLogLevel::All);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_timezone, LogTimezone::Utc);
    assert!(!c.enable_endpoint_metrics);
    assert_eq!(
        c.endpoint_metrics_duration_buckets,
        [0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    );
    assert!(!c.http_metrics_prefix);
    assert!(!c.disable_http_ac_validation);
    assert!(!c.disable_grpc_ac_deps_check);
    assert!(!c.enable_ac_key_instance_mangling);
    assert!(!c.experimental_remote_asset_api);
    assert!(c.remote_asset_allowed_hosts.is_empty());
    assert_eq!(c.htpasswd_file, None);
    assert!(!c.allow_unauthenticated_reads);
    assert_eq!(c.tls, None);
    assert_eq!(c.s3_proxy, None);
    assert_eq!(c.num_uploaders, 100);
    assert_eq!(c.max_queued_uploads, 1_000_000);
    assert!(c.fsync);
}

#[test]
fn default_dir_falls_back_to_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().display().to_string();
    let c = load(&[], &[("HOME", &home)]).unwrap().config;
    assert_eq!(c.dir, tmp.path().join(".cache/bazel-cache"));

    let err = load(&[], &[]).unwrap_err().to_string();
    assert!(err.starts_with("dir: not set"), "{err}");
}

#[test]
fn max_size_accepts_fractions_and_hard_limit() {
    let fx = Fixture::new();
    let c = fx.config(&["--max_size=0.5", "--max_size_hard_limit", "1"], &[]);
    assert_eq!(c.max_size_bytes, GIB / 2);
    assert_eq!(c.max_size_hard_limit_bytes, Some(GIB));
    let c = fx.config(&["--max_size_hard_limit=-1"], &[]);
    assert_eq!(c.max_size_hard_limit_bytes, None);
}

#[test]
fn go_durations_from_every_source() {
    let fx = Fixture::new();
    let file = fx.file("idle_timeout: 1h30m\nhttp_write_timeout: 45\n");
    let c = fx.config(
        &["--config_file", &file],
        &[("BAZEL_REMOTE_HTTP_READ_TIMEOUT", "2.5s")],
    );
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(5400)));
    assert_eq!(c.http_write_timeout, Some(Duration::from_secs(45)));
    assert_eq!(c.http_read_timeout, Some(Duration::from_millis(2500)));

    let c = fx.config(
        &[
            "--config_file",
            &file,
            "--idle_timeout=0",
            "--http_write_timeout",
            "0s",
        ],
        &[],
    );
    assert_eq!(c.idle_timeout, None, "0 means no timeout");
    assert_eq!(c.http_write_timeout, None);

    let err = fx.error(&["--idle_timeout", "5 minutes"], &[]);
    assert!(err.starts_with("idle_timeout: "), "{err}");
    assert!(err.ends_with("(set by --idle_timeout)"), "{err}");
}

#[test]
fn grpc_can_be_disabled() {
    let fx = Fixture::new();
    let file = fx.file("grpc_port: 0\n");
    let c = fx.config(&["--config_file", &file], &[]);
    assert_eq!(c.grpc_address, None, "grpc_port: 0");

    let c = fx.config(&["--grpc_address", "none"], &[]);
    assert_eq!(c.grpc_address, None, "grpc_address: none");

    let c = fx.config(&[], &[("BAZEL_REMOTE_GRPC_PORT", "0")]);
    assert_eq!(c.grpc_address, None, "BAZEL_REMOTE_GRPC_PORT=0");
}

#[test]
fn deprecated_host_and_ports() {
    let fx = Fixture::new();
    let c = fx.config(&["--host", "127.0.0.1", "--port", "9000"], &[]);
    assert_eq!(c.http_address, tcp("127.0.0.1:9000"));
    assert_eq!(c.grpc_address, Some(tcp("127.0.0.1:9092")));

    let file = fx.file("host: 127.0.0.1\nport: 8081\ngrpc_port: 9093\n");
    let c = fx.config(&["--config_file", &file], &[]);
    assert_eq!(c.http_address, tcp("127.0.0.1:8081"));
    assert_eq!(c.grpc_address, Some(tcp("127.0.0.1:9093")));

    let invocation = fx
        .load(&["--http_address", ":7000", "--port", "9000"], &[])
        .unwrap();
    assert_eq!(invocation.config.http_address, tcp("0.0.0.0:7000"));
    assert_eq!(
        invocation.notes,
        ["port is ignored because http_address is set"]
    );
}

#[test]
fn unix_sockets_and_ipv6() {
    let fx = Fixture::new();
    let c = fx.config(
        &[
            "--http_address=unix:///run/bc/http.sock",
            "--grpc_address",
            "[::1]:9092",
        ],
        &[],
    );
    assert_eq!(c.http_address, ListenAddr::Unix("/run/bc/http.sock".into()));
    assert_eq!(c.grpc_address, Some(tcp("[::1]:9092")));
}

#[test]
fn tls_and_auth() {
    let fx = Fixture::new();
    let c = fx.config(
        &[
            "--tls_cert_file=/c.pem",
            "--tls_key_file=/k.pem",
            "--tls_ca_file=/ca.pem",
            "--min_tls_version=1.2",
            "--allow_unauthenticated_reads",
        ],
        &[],
    );
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert_file, PathBuf::from("/c.pem"));
    assert_eq!(tls.key_file, PathBuf::from("/k.pem"));
    assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.pem")));
    assert_eq!(tls.min_version, "1.2");
    assert!(c.allow_unauthenticated_reads);

    let c = fx.config(
        &["--htpasswd_file=/h", "--allow_unauthenticated_reads=true"],
        &[],
    );
    assert_eq!(c.htpasswd_file, Some(PathBuf::from("/h")));
    assert!(c.allow_unauthenticated_reads);
}

#[test]
fn logging_and_metrics_keys() {
    let fx = Fixture::new();
    let file = fx.file(
        "log_format: json\nlog_timezone: local\nhttp_metrics_prefix: true\n\
         endpoint_metrics_duration_buckets: [10, 0.1, 1]\n",
    );
    let c = fx.config(&["--config_file", &file], &[]);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_timezone, LogTimezone::Local);
    assert!(c.http_metrics_prefix);
    assert_eq!(c.endpoint_metrics_duration_buckets, [0.1, 1.0, 10.0]);

    let c = fx.config(&[], &[("BAZEL_REMOTE_LOG_FORMAT", "json")]);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn compatibility_keys_are_accepted() {
    let fx = Fixture::new();
    let file = fx.file(
        "zstd_implementation: cgo\nprofile_address: 127.0.0.1:6060\n\
         profile_host: 127.0.0.1\nprofile_port: 0\nexperimental_remote_asset_api: true\n",
    );
    let invocation = fx.load(&["--config_file", &file], &[]).unwrap();
    assert!(invocation.config.experimental_remote_asset_api);
    // Our allow-list: a comma-separated string, from any source.
    let c = fx.config(
        &[],
        &[(
            "BAZEL_REMOTE_REMOTE_ASSET_ALLOWED_HOSTS",
            "127.0.0.1, mirror.example,",
        )],
    );
    assert_eq!(
        c.remote_asset_allowed_hosts,
        ["127.0.0.1", "mirror.example"]
    );
    assert_eq!(invocation.notes.len(), 1, "{:?}", invocation.notes);
    assert!(invocation.notes[0].contains("profile_address"));
}

#[test]
fn connection_limits_from_every_source_and_never_off() {
    let fx = Fixture::new();
    let c = fx.config(&[], &[]);
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.request_head_timeout, Duration::from_secs(10));
    assert_eq!(c.connection_idle_timeout, Duration::from_secs(600));

    let file = fx.file("max_connections: 50\nconnection_idle_timeout: 1h\n");
    let c = fx.config(
        &["--config_file", &file, "--request_head_timeout=2.5s"],
        &[("BAZEL_REMOTE_CONNECTION_IDLE_TIMEOUT", "90s")],
    );
    assert_eq!(c.max_connections, 50);
    assert_eq!(c.request_head_timeout, Duration::from_millis(2500));
    assert_eq!(
        c.connection_idle_timeout,
        Duration::from_secs(90),
        "env over file"
    );

    for (args, key) in [
        (&["--max_connections=0"][..], "max_connections"),
        (&["--max_connections=-1"][..], "max_connections"),
        (&["--request_head_timeout=0"][..], "request_head_timeout"),
        (
            &["--connection_idle_timeout=0s"][..],
            "connection_idle_timeout",
        ),
    ] {
        let err = fx.error(args, &[]);
        assert!(err.starts_with(&format!("{key}: ")), "{err}");
    }
}
