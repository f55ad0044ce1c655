//! One place for configuration: the resolved [`Config`] that the rest of the
//! server consumes, built once at start-up from the YAML file, `BAZEL_REMOTE_*`
//! environment variables and command-line flags (in that order of precedence:
//! file < env < flags), then validated.
//!
//! Key names, flag names and environment variable names are bazel-remote's, so
//! a deployment can swap the binary and keep its configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where a listener binds: a TCP socket address or a Unix socket path
/// (bazel-remote's `unix:///path.sock` form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// How CAS blobs are kept on disk. AC entries are always stored as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageMode {
    #[default]
    Zstd,
    Uncompressed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogLevel {
    None,
    #[default]
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub ca_file: Option<PathBuf>,
    pub min_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3AuthMethod {
    AccessKey,
    IamRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BucketLookupType {
    #[default]
    Auto,
    Dns,
    Path,
}

/// The `s3_proxy:` block. Secrets are kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub auth_method: S3AuthMethod,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub iam_role_endpoint: String,
    pub disable_ssl: bool,
    pub bucket_lookup_type: BucketLookupType,
    pub max_idle_conns: usize,
    pub update_timestamps: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("auth_method", &self.auth_method)
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("disable_ssl", &self.disable_ssl)
            .field("bucket_lookup_type", &self.bucket_lookup_type)
            .field("max_idle_conns", &self.max_idle_conns)
            .field("update_timestamps", &self.update_timestamps)
            .finish()
    }
}

/// The validated configuration. Every field has its final value: defaults
/// have been applied and cross-field rules checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dir: PathBuf,
    /// `max_size` converted from GiB to bytes.
    pub max_size_bytes: u64,
    /// `max_size_hard_limit` (GiB) in bytes; `None` when not set (bazel-remote's -1).
    pub max_size_hard_limit_bytes: Option<u64>,
    pub http_address: ListenAddr,
    /// `None` when gRPC is disabled (`grpc_address: none` or `grpc_port: 0`).
    pub grpc_address: Option<ListenAddr>,
    pub storage_mode: StorageMode,
    /// Largest logical (uncompressed) blob accepted from clients, in bytes.
    pub max_blob_size: u64,
    pub max_proxy_blob_size: u64,
    /// Shut down after this long without a request; `None` = never.
    pub idle_timeout: Option<Duration>,
    pub http_read_timeout: Option<Duration>,
    pub http_write_timeout: Option<Duration>,
    pub access_log_level: AccessLogLevel,
    pub log_format: LogFormat,
    pub enable_endpoint_metrics: bool,
    pub disable_http_ac_validation: bool,
    pub disable_grpc_ac_deps_check: bool,
    pub enable_ac_key_instance_mangling: bool,
    pub htpasswd_file: Option<PathBuf>,
    pub allow_unauthenticated_reads: bool,
    pub tls: Option<TlsConfig>,
    pub s3_proxy: Option<S3Config>,
    pub num_uploaders: usize,
    pub max_queued_uploads: usize,
    /// Our extension: fsync each blob (and its directory) before it becomes
    /// visible, so an acknowledged write survives power loss. Default true.
    pub fsync: bool,
}
