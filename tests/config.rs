//! Configuration loading as the binary does it: command line + injected
//! environment + YAML file, through `bazel_cache::config::from_args_and_env`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bazel_cache::config::{
    self, AccessLogLevel, BucketLookupType, Config, ConfigError, Invocation, ListenAddr, LogFormat,
    LogTimezone, Mode, S3AuthMethod, S3SignatureType, StorageMode,
};

const GIB: u64 = 1 << 30;
const SECRET: &str = "wJalrXUtnFEMI-very-secret";
const TOKEN: &str = "session-token-very-secret";

/// A scratch directory holding the cache dir and config files of one test.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A writable cache directory (created by the config loader).
    fn dir(&self) -> String {
        self.tmp.path().join("cache").display().to_string()
    }

    /// Writes a config file and returns its path.
    fn file(&self, yaml: &str) -> String {
        let path = self.tmp.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        path.display().to_string()
    }

    /// Loads with `--dir <scratch>` added, so the writability check passes.
    fn load(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let dir = self.dir();
        let mut all = vec!["--dir", &dir];
        all.extend_from_slice(args);
        load(&all, env)
    }

    fn config(&self, args: &[&str], env: &[(&str, &str)]) -> Config {
        match self.load(args, env) {
            Ok(invocation) => invocation.config,
            Err(err) => panic!("{args:?} {env:?}: {err}"),
        }
    }

    fn error(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        match self.load(args, env) {
            Ok(invocation) => panic!("accepted: {:?}", invocation.config),
            Err(err) => err.to_string(),
        }
    }
}

/// Loads exactly `args` (after the program name) with only `env` set.
fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let argv = std::iter::once("bazel-cache").chain(args.iter().copied());
    config::from_args_and_env(argv, &|name| env.get(name).cloned())
}

fn design_configmap() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/design-configmap.yaml")
        .display()
        .to_string()
}

fn tcp(addr: &str) -> ListenAddr {
    ListenAddr::Tcp(addr.parse::<SocketAddr>().unwrap())
}

const DESIGN_CREDENTIALS: [(&str, &str); 2] = [
    ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "minio-user"),
    ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", SECRET),
];

// ---------------------------------------------------------------------------
// The design document's Kubernetes ConfigMap

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
    assert_eq!(s3.access_key_id, "minio-user");
    assert_eq!(s3.secret_access_key, SECRET);
    assert_eq!(s3.session_token, "");
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
    assert_eq!(c.s3_proxy.unwrap().access_key_id, "minio-user");
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

// ---------------------------------------------------------------------------
// Precedence: file < environment < flags < (defaults for the rest)

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
    assert_eq!(s3.access_key_id, "flag-id");
    assert_eq!(s3.secret_access_key, SECRET);
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

// ---------------------------------------------------------------------------
// Defaults

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

// ---------------------------------------------------------------------------
// Values

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
    assert_eq!(invocation.notes.len(), 1, "{:?}", invocation.notes);
    assert!(invocation.notes[0].contains("profile_address"));
}

// ---------------------------------------------------------------------------
// Validation: one error line naming the key

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
    for block in [
        "gcs_proxy",
        "http_proxy",
        "grpc_proxy",
        "azblob_proxy",
        "ldap",
    ] {
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
        err.starts_with("gcs_proxy: not supported by bazel-cache"),
        "{err}"
    );
    assert!(err.ends_with("(set by BAZEL_REMOTE_GCS_BUCKET)"), "{err}");
    let err = fx.error(&["--http_proxy.url=http://x"], &[]);
    assert!(
        err.starts_with("http_proxy: not supported by bazel-cache"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Secrets

#[test]
fn secrets_stay_out_of_debug_help_and_errors() {
    let fx = Fixture::new();
    let env = [
        ("BAZEL_REMOTE_S3_ENDPOINT", "e:9000"),
        ("BAZEL_REMOTE_S3_BUCKET", "b"),
        ("BAZEL_REMOTE_S3_AUTH_METHOD", "access_key"),
        ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "id"),
        ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", SECRET),
        ("BAZEL_REMOTE_S3_SESSION_TOKEN", TOKEN),
    ];
    let invocation = fx.load(&[], &env).unwrap();
    let s3 = invocation.config.s3_proxy.as_ref().unwrap();
    assert_eq!(
        (s3.secret_access_key.as_str(), s3.session_token.as_str()),
        (SECRET, TOKEN)
    );
    let debug = format!("{invocation:?} {:#?}", invocation.config);
    assert!(!debug.contains(SECRET) && !debug.contains(TOKEN), "{debug}");

    // An unrelated error while the secrets are set, from env and from flags.
    let mut bad = env.to_vec();
    bad.push(("BAZEL_REMOTE_S3_BUCKET_LOOKUP_TYPE", "bogus"));
    let err = fx.error(&[], &bad);
    assert!(!err.contains(SECRET) && !err.contains(TOKEN), "{err}");
    let secret_flag = format!("--s3.secret_access_key={SECRET}");
    let err = fx.error(&[&secret_flag, "--s3.bucket=b", "--max_size=0"], &[]);
    assert!(!err.contains(SECRET), "{err}");
    // A secret of the wrong type in the file is not echoed either.
    let file = fx.file(&format!("s3_proxy:\n  secret_access_key: [{SECRET}]\n"));
    let err = fx.error(&["--config_file", &file], &[]);
    assert!(err.contains("s3_proxy.secret_access_key"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    // --help names the variables but shows no values, even when they are set.
    let help = help_text(&env);
    assert!(help.contains("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY"), "{help}");
    assert!(!help.contains(SECRET) && !help.contains(TOKEN));
}

// ---------------------------------------------------------------------------
// Command line

fn help_text(env: &[(&str, &str)]) -> String {
    match load(&["--help"], env) {
        Err(ConfigError::Cli(err)) => {
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
            err.to_string()
        }
        other => panic!("--help gave {:?}", other.map(|i| i.config)),
    }
}

#[test]
fn help_documents_every_option_with_env_and_default() {
    let help = help_text(&[]);
    let command = config::command();
    let mut documented = 0;
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        assert!(
            help.contains(&format!("--{long}")),
            "--{long} missing from help"
        );
        let text = arg.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(text.contains("[env: BAZEL_REMOTE_"), "--{long}: {text}");
        assert!(text.contains("[default: "), "--{long}: {text}");
        documented += 1;
    }
    assert!(documented >= 50, "only {documented} options documented");
    for needle in [
        "--s3.endpoint",
        "BAZEL_REMOTE_UNAUTHENTICATED_READS",
        "check-config",
        "--fsync",
    ] {
        assert!(help.contains(needle), "{needle} missing");
    }
}

#[test]
fn help_and_version_exit_zero_usage_errors_exit_two() {
    let help = load(&["--help"], &[]).unwrap_err();
    assert_eq!(help.exit_code(), 0);
    assert_eq!(help.to_string(), "command line: help requested");
    assert_eq!(load(&["--version"], &[]).unwrap_err().exit_code(), 0);
    assert_eq!(
        load(&["check-config", "--help"], &[])
            .unwrap_err()
            .exit_code(),
        0
    );
    let err = load(&["--no_such_flag"], &[]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "command line: unexpected argument '--no_such_flag' found"
    );
    // Configuration errors exit 1.
    assert_eq!(load(&["--max_size=0"], &[]).unwrap_err().exit_code(), 1);
}

#[test]
fn check_config_mode_with_flags_before_or_after() {
    let fx = Fixture::new();
    let file = fx.file("max_size: 2\n");
    let dir = fx.dir();
    for args in [
        vec!["check-config", "--config_file", &file, "--dir", &dir],
        vec!["--config_file", &file, "check-config", "--dir", &dir],
        vec!["--config_file", &file, "--dir", &dir, "check-config"],
    ] {
        let invocation = load(&args, &[]).unwrap();
        assert_eq!(invocation.mode, Mode::CheckConfig, "{args:?}");
        assert_eq!(invocation.config.max_size_bytes, 2 * GIB, "{args:?}");
    }
    // check-config validates like serve does.
    let err = load(&["check-config", "--dir", &dir, "--max_size", "0"], &[]).unwrap_err();
    assert!(err.to_string().starts_with("max_size: "), "{err}");
}
