//! One place for configuration: the resolved [`Config`] that the rest of the
//! server consumes, built once at start-up from the YAML file, `BAZEL_REMOTE_*`
//! environment variables and command-line flags (in that order of precedence:
//! file < env < flags), then validated.
//!
//! Key names, flag names and environment variable names are bazel-remote's, so
//! a deployment can swap the binary and keep its configuration.
//!
//! Entry points: [`from_process`] for the binary, [`from_args_and_env`] for
//! tests (the environment is injected so tests never touch the process's).
//!
//! Submodules: `options` (the one table of keys, flags and env vars), `cli`
//! (clap), `file` (the YAML schema), `sources` (reading and merging the three
//! sources), `defaults` (every built-in default and the connection timeouts,
//! applied by `resolve` and shown by `--help`), `resolve` (defaults and
//! validation), `listen` (bazel-remote's address notation), `error`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod cli;
pub(crate) mod defaults;
mod error;
mod file;
mod listen;
mod options;
mod resolve;
mod sources;

pub use bazel_cache_store::backend_url::{UrlBackendConfig, UrlProtocol};
pub use bazel_cache_store::proxy::PresenceCacheConfig;
pub use bazel_cache_store::s3::{BucketLookupType, S3AuthMethod, S3Config, S3SignatureType};
pub use error::{ConfigError, Location};

/// What the process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run the cache server (no subcommand).
    Serve,
    /// `check-config`: the configuration loaded and validated; report and exit.
    CheckConfig,
}

/// The outcome of reading the command line, environment and config file.
#[derive(Debug)]
pub struct Invocation {
    pub mode: Mode,
    pub config: Config,
    /// Things the operator should know but that are not errors (keys accepted
    /// for compatibility and ignored, deprecated keys shadowed by their
    /// replacement). Configuration is read before logging is set up, so the
    /// caller logs these once it is.
    pub notes: Vec<String>,
}

/// Parses the command line and the environment, plus the YAML file named by
/// `--config_file` or `BAZEL_REMOTE_CONFIG_FILE`, and validates the result.
///
/// `args` starts with the program name, like [`std::env::args_os`]. `env`
/// looks up an environment variable; `None` or an empty value means unset.
/// On success in serve mode the cache directory exists and is writable;
/// `check-config` leaves it alone (it validates where the config is built).
///
/// `--help`, `--version` and usage errors come back as [`ConfigError::Cli`];
/// [`ConfigError::exit`] prints them the way clap does.
pub fn from_args_and_env<I, T>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command_line = cli::parse(args)?;
    let config_file = command_line.config_file.or_else(|| {
        env(options::CONFIG_FILE_ENV)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    });
    let sources = sources::gather(config_file.as_deref(), &command_line.values, env)?;
    let check_dir = matches!(command_line.mode, Mode::Serve);
    let (config, notes) = resolve::resolve(sources, env, check_dir)?;
    Ok(Invocation {
        mode: command_line.mode,
        config,
        notes,
    })
}

/// [`from_args_and_env`] with the process's own arguments and environment.
pub fn from_process() -> Result<Invocation, ConfigError> {
    from_args_and_env(std::env::args_os(), &|name| std::env::var(name).ok())
}

/// The clap command, for rendering help or generating completions and man
/// pages; [`from_args_and_env`] is what parses it.
pub fn command() -> clap::Command {
    cli::command()
}

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

/// bazel-remote's `log_timezone`: timestamps in UTC, local time, or none
/// (when the log collector adds its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTimezone {
    #[default]
    Utc,
    Local,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub ca_file: Option<PathBuf>,
    pub min_version: String,
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
    /// Our extension: connections open at once per port (before the
    /// open-file limit lowers it at start).
    pub max_connections: usize,
    /// Our extension: accept to the first complete request head.
    pub request_head_timeout: Duration,
    /// Our extension: an HTTP/2 connection with no request in progress
    /// this long is closed.
    pub connection_idle_timeout: Duration,
    pub access_log_level: AccessLogLevel,
    pub log_format: LogFormat,
    pub log_timezone: LogTimezone,
    pub enable_endpoint_metrics: bool,
    /// The web console on `/` and `/ui/` of the HTTP port (`src/web/`).
    pub web_console: bool,
    /// Histogram buckets (seconds) for endpoint metrics, sorted ascending.
    pub endpoint_metrics_duration_buckets: Vec<f64>,
    /// Prefix HTTP metric names with `bazel_remote`.
    pub http_metrics_prefix: bool,
    pub disable_http_ac_validation: bool,
    pub disable_grpc_ac_deps_check: bool,
    pub enable_ac_key_instance_mangling: bool,
    pub experimental_remote_asset_api: bool,
    /// Hosts the Remote Asset downloader may reach whatever their addresses
    /// (and, when non-empty, the only ones it may reach).
    pub remote_asset_allowed_hosts: Vec<String>,
    pub htpasswd_file: Option<PathBuf>,
    pub allow_unauthenticated_reads: bool,
    pub tls: Option<TlsConfig>,
    pub s3_proxy: Option<S3Config>,
    /// Our extension (`s3_proxy.presence_cache_*`): backend existence
    /// answers remembered by each replica.
    pub presence_cache: PresenceCacheConfig,
    /// Our extension (`s3_proxy.update_timestamps_interval`): the least time
    /// between two refreshes of one object.
    pub update_timestamps_interval: Duration,
    /// Another HTTP cache as the backend (at most one backend is set).
    pub http_proxy: Option<UrlBackendConfig>,
    /// Another REAPI cache as the backend.
    pub grpc_proxy: Option<UrlBackendConfig>,
    pub num_uploaders: usize,
    pub max_queued_uploads: usize,
    /// Our extension: fsync each blob (and its directory) before it becomes
    /// visible, so an acknowledged write survives power loss. Default true.
    pub fsync: bool,
    /// Our extension: blob writes working on received bytes at once
    /// (default 256).
    pub max_concurrent_writes: usize,
    /// Our extension: bytes of zstd decoders, upload and download buffers
    /// held at once (`max_buffer_memory`, in GiB in the file; default 1).
    pub max_buffer_memory_bytes: u64,
    /// Our extension: bytes/s an upload body must bring over every
    /// `body_rate_window` of waiting on it; 0 = no rate check.
    pub body_min_rate: u64,
    pub body_rate_window: Duration,
}
