//! The table of every configuration key, in one place.
//!
//! A key has three spellings that must stay in step: the YAML key, the
//! command-line flag and the environment variable(s). bazel-remote spells
//! them so that a flag is the YAML key (`max_size` ↔ `--max_size`,
//! `http_proxy.url` ↔ `--http_proxy.url`), except that the `s3_proxy:`
//! block's keys become `--s3.<key>` flags. This table
//! names each key once by its flag spelling; the CLI, the environment reader
//! and `--help` are all generated from it, so they cannot drift apart.
//! Defaults are rendered from the constants of `defaults.rs` that
//! `resolve.rs` applies.

use super::defaults::{self, numbers, seconds};

/// How a raw string from a flag or an environment variable is turned into a
/// YAML value before it is merged with the file. The file's own values are
/// typed by the YAML schema (`file.rs`); this only has to produce a value
/// that schema accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Any string; passed through.
    Str,
    /// Go `strconv.ParseBool` spellings (`true`, `1`, `t`, `false`, ...). As a
    /// flag it may be given bare (`--fsync` = `--fsync=true`).
    Bool,
    /// A signed integer.
    Int,
    /// An integer or decimal number (sizes in GiB).
    Number,
    /// A Go duration string or a bare number of seconds; parsed by the
    /// schema's duration type so both sources share one parser.
    Duration,
    /// Comma-separated numbers.
    NumberList,
}

/// An option's default as `--help` shows it (`[default: ...]`).
#[derive(Debug, Clone, Copy)]
pub(super) enum DefaultHelp {
    /// The value `resolve.rs` applies when the key is unset, spelled as a
    /// user would write it and rendered from the same constant of
    /// `defaults.rs` (a test sets each one explicitly and checks that
    /// nothing changes).
    Value(fn() -> String),
    /// What applies when unset, in words quoting constants of `defaults.rs`.
    Words(fn() -> String),
    /// Nothing from `defaults.rs` is applied: the feature stays off, the
    /// limit absent, the key is ignored (bazel-remote's profiling keys), or
    /// the value is found at start-up (the cache directory, the AWS
    /// credentials file).
    Unset(&'static str),
}

impl DefaultHelp {
    pub(super) fn text(&self) -> String {
        match self {
            DefaultHelp::Value(text) | DefaultHelp::Words(text) => text(),
            DefaultHelp::Unset(text) => (*text).to_owned(),
        }
    }
}

/// One configuration key.
#[derive(Debug)]
pub(super) struct Opt {
    /// The flag name without `--`, e.g. `max_size` or `s3.endpoint`.
    pub key: &'static str,
    /// Environment variables, first match wins.
    pub env: &'static [&'static str],
    pub kind: Kind,
    /// What the value is when nobody sets it, as shown in `--help`.
    pub default: DefaultHelp,
    pub help: &'static str,
    pub heading: &'static str,
}

impl Opt {
    /// Where this key lives in the YAML file: `(Some("s3_proxy"), "endpoint")`
    /// for `s3.endpoint`, `(None, "dir")` for `dir`.
    pub(super) fn yaml_path(&self) -> (Option<&'static str>, &'static str) {
        yaml_path(self.key)
    }

    /// The key as written in the YAML file and in error messages
    /// (`s3_proxy.endpoint`).
    pub(super) fn yaml_key(&self) -> String {
        match self.yaml_path() {
            (Some(block), key) => format!("{block}.{key}"),
            (None, key) => key.to_owned(),
        }
    }
}

/// The flags of the `s3_proxy:` block start with this.
pub(super) const S3_FLAG_PREFIX: &str = "s3.";
pub(super) const S3_BLOCK: &str = "s3_proxy";
pub(super) const HTTP_PROXY_BLOCK: &str = "http_proxy";
pub(super) const GRPC_PROXY_BLOCK: &str = "grpc_proxy";

/// The YAML blocks, each with the prefix of its flags and the keys that
/// switch it on when set by a flag or variable (credentials or TLS files
/// alone, from a shared secret say, do not).
pub(super) const BLOCKS: &[(&str, &str, &[&str])] = &[
    (S3_FLAG_PREFIX, S3_BLOCK, &["endpoint", "bucket"]),
    ("http_proxy.", HTTP_PROXY_BLOCK, &["url"]),
    ("grpc_proxy.", GRPC_PROXY_BLOCK, &["url"]),
];

pub(super) fn yaml_path(flag_key: &'static str) -> (Option<&'static str>, &'static str) {
    BLOCKS
        .iter()
        .find_map(|(prefix, block, _)| flag_key.strip_prefix(prefix).map(|key| (Some(*block), key)))
        .unwrap_or((None, flag_key))
}

/// The inverse of [`Opt::yaml_key`]: finds the option for `s3_proxy.endpoint`
/// or `dir`.
pub(super) fn by_yaml_key(yaml_key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|opt| opt.yaml_key() == yaml_key)
}

const STORAGE: &str = "Storage";
const LISTEN: &str = "Listeners";
const AUTH: &str = "Authentication and TLS";
const BEHAVIOUR: &str = "Cache behaviour";
const LOGS: &str = "Logging and metrics";
const S3: &str = "S3 proxy";
const URL_PROXY: &str = "HTTP and gRPC proxy (another cache as the backend)";
const DEPRECATED: &str = "Deprecated (accepted for compatibility)";

/// The environment variable that names the YAML file. Not part of [`OPTIONS`]
/// because it chooses a source instead of setting a key.
pub(super) const CONFIG_FILE_ENV: &str = "BAZEL_REMOTE_CONFIG_FILE";

/// Every key bazel-cache understands, in `--help` order.
pub(super) static OPTIONS: &[Opt] = &[
    // Storage
    Opt {
        key: "dir",
        env: &["BAZEL_REMOTE_DIR"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("$XDG_CACHE_HOME/bazel-cache, else $HOME/.cache/bazel-cache"),
        help: "Directory where the cache contents are stored. Created if missing.",
        heading: STORAGE,
    },
    Opt {
        key: "max_size",
        env: &["BAZEL_REMOTE_MAX_SIZE"],
        kind: Kind::Number,
        default: DefaultHelp::Value(|| numbers(&[defaults::MAX_SIZE_GIB])),
        help: "Maximum size of the disk cache in GiB; decimals such as 0.5 are allowed.",
        heading: STORAGE,
    },
    Opt {
        key: "max_size_hard_limit",
        env: &["BAZEL_REMOTE_MAX_SIZE_HARD_LIMIT"],
        kind: Kind::Number,
        default: DefaultHelp::Unset("-1, ie no hard limit"),
        help: "Size in GiB, including files queued for eviction, above which writes are \
               rejected. A reasonable value is 5% above --max_size.",
        heading: STORAGE,
    },
    Opt {
        key: "storage_mode",
        env: &["BAZEL_REMOTE_STORAGE_MODE"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::STORAGE_MODE.to_owned()),
        help: "Format of CAS blobs on disk: \"zstd\" or \"uncompressed\".",
        heading: STORAGE,
    },
    Opt {
        key: "zstd_implementation",
        env: &["BAZEL_REMOTE_ZSTD_IMPLEMENTATION"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::ZSTD_IMPLEMENTATION.to_owned()),
        help: "Accepted for compatibility (\"go\" or \"cgo\") and ignored.",
        heading: STORAGE,
    },
    Opt {
        key: "max_blob_size",
        env: &["BAZEL_REMOTE_MAX_BLOB_SIZE"],
        kind: Kind::Int,
        default: DefaultHelp::Unset("unlimited"),
        help: "Largest logical (uncompressed) blob in bytes accepted from clients.",
        heading: STORAGE,
    },
    Opt {
        key: "max_proxy_blob_size",
        env: &["BAZEL_REMOTE_MAX_PROXY_BLOB_SIZE"],
        kind: Kind::Int,
        default: DefaultHelp::Unset("unlimited"),
        help: "Largest logical (uncompressed) blob in bytes downloaded from the proxy backend.",
        heading: STORAGE,
    },
    Opt {
        key: "max_concurrent_writes",
        env: &["BAZEL_REMOTE_MAX_CONCURRENT_WRITES"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::MAX_CONCURRENT_WRITES.to_string()),
        help: "Blob writes working on received bytes at once (hashing, compressing, writing, \
               fsync; HTTP, gRPC and S3 read-through); a write waiting on its client holds no \
               slot. More wait for a slot in arrival order, up to a minute, then get 503 / \
               UNAVAILABLE.",
        heading: STORAGE,
    },
    Opt {
        key: "max_buffer_memory",
        env: &["BAZEL_REMOTE_MAX_BUFFER_MEMORY"],
        kind: Kind::Number,
        default: DefaultHelp::Value(|| numbers(&[defaults::MAX_BUFFER_MEMORY_GIB])),
        help: "Memory in GiB (0.25 = 256 MiB) that requests may hold at once in zstd decoders, \
               upload buffers and download buffers. A request that finds it taken waits up to \
               2 s, then gets 503 + Retry-After / RESOURCE_EXHAUSTED (counted in \
               bazel_cache_memory_refused_total). At least 0.03125 (32 MiB).",
        heading: STORAGE,
    },
    Opt {
        key: "fsync",
        env: &["BAZEL_REMOTE_FSYNC"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::FSYNC.to_string()),
        help: "Flush each blob to stable storage before acknowledging the write, so an \
               acknowledged write survives power loss.",
        heading: STORAGE,
    },
    // Listeners
    Opt {
        key: "http_address",
        env: &["BAZEL_REMOTE_HTTP_ADDRESS"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| format!("0.0.0.0:{}", defaults::HTTP_PORT)),
        help: "HTTP listener: [host]:port for TCP (empty host = all interfaces) or \
               unix:///path.sock.",
        heading: LISTEN,
    },
    Opt {
        key: "grpc_address",
        env: &["BAZEL_REMOTE_GRPC_ADDRESS"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| format!("0.0.0.0:{}", defaults::GRPC_PORT)),
        help: "gRPC listener: [host]:port for TCP or unix:///path.sock; \"none\" disables gRPC.",
        heading: LISTEN,
    },
    Opt {
        key: "profile_address",
        env: &["BAZEL_REMOTE_PROFILE_ADDRESS"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "Accepted for compatibility and ignored: bazel-cache has no Go profiling endpoint.",
        heading: LISTEN,
    },
    Opt {
        key: "http_read_timeout",
        env: &["BAZEL_REMOTE_HTTP_READ_TIMEOUT"],
        kind: Kind::Duration,
        default: DefaultHelp::Words(|| {
            format!(
                "{} for headers, {} for a stalled body",
                seconds(defaults::HEADER_READ_TIMEOUT),
                seconds(defaults::BODY_STALL_TIMEOUT)
            )
        }),
        help: "Time allowed to send the request headers, and the longest an upload body may \
               stall without a byte before it is abandoned; a Go duration (30s, 1h30m) or seconds.",
        heading: LISTEN,
    },
    Opt {
        key: "body_min_rate",
        env: &["BAZEL_REMOTE_BODY_MIN_RATE"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::BODY_MIN_RATE.to_string()),
        help: "Least bytes per second an upload body (HTTP PUT, gRPC ByteStream Write) must bring, \
               averaged over every --body_rate_window of waiting on it; a slower body is \
               abandoned and counted in bazel_cache_uploads_cut_total. 0 turns the check off \
               (the http_read_timeout stall limit still applies).",
        heading: LISTEN,
    },
    Opt {
        key: "body_rate_window",
        env: &["BAZEL_REMOTE_BODY_RATE_WINDOW"],
        kind: Kind::Duration,
        default: DefaultHelp::Value(|| seconds(defaults::BODY_RATE_WINDOW)),
        help: "The window --body_min_rate is averaged over (only time spent waiting on the \
               client counts); a Go duration (30s, 1m) or seconds.",
        heading: LISTEN,
    },
    Opt {
        key: "http_write_timeout",
        env: &["BAZEL_REMOTE_HTTP_WRITE_TIMEOUT"],
        kind: Kind::Duration,
        default: DefaultHelp::Unset("0s, ie disabled"),
        help: "Accepted for bazel-remote compatibility; not enforced.",
        heading: LISTEN,
    },
    Opt {
        key: "idle_timeout",
        env: &["BAZEL_REMOTE_IDLE_TIMEOUT"],
        kind: Kind::Duration,
        default: DefaultHelp::Unset("0s, ie disabled"),
        help: "Shut the server down after this long without a request.",
        heading: LISTEN,
    },
    Opt {
        key: "max_connections",
        env: &["BAZEL_REMOTE_MAX_CONNECTIONS"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::MAX_CONNECTIONS.to_string()),
        help: "Connections open at once on each port (HTTP, gRPC); more are closed as soon as \
               accepted. Lowered at start to fit the open-file limit.",
        heading: LISTEN,
    },
    Opt {
        key: "request_head_timeout",
        env: &["BAZEL_REMOTE_REQUEST_HEAD_TIMEOUT"],
        kind: Kind::Duration,
        default: DefaultHelp::Value(|| seconds(defaults::REQUEST_HEAD_TIMEOUT)),
        help: "Time from accepting a connection (TLS handshake included) to its first complete \
               request head (HTTP/1 headers or the HTTP/2 preface); a Go duration or seconds.",
        heading: LISTEN,
    },
    Opt {
        key: "connection_idle_timeout",
        env: &["BAZEL_REMOTE_CONNECTION_IDLE_TIMEOUT"],
        kind: Kind::Duration,
        default: DefaultHelp::Value(|| seconds(defaults::CONNECTION_IDLE_TIMEOUT)),
        help: "Close an HTTP/2 connection (gRPC, or HTTP/2 on the HTTP port) with no request in \
               progress for this long; HTTP/1 connections idle for --http_read_timeout's header \
               time.",
        heading: LISTEN,
    },
    // Authentication and TLS
    Opt {
        key: "htpasswd_file",
        env: &["BAZEL_REMOTE_HTPASSWD_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "Path to an .htpasswd file enabling HTTP basic authentication.",
        heading: AUTH,
    },
    Opt {
        key: "allow_unauthenticated_reads",
        env: &["BAZEL_REMOTE_UNAUTHENTICATED_READS"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::ALLOW_UNAUTHENTICATED_READS.to_string()),
        help: "When authentication is enabled (--htpasswd_file or --tls_ca_file), let \
               unauthenticated clients read.",
        heading: AUTH,
    },
    Opt {
        key: "min_tls_version",
        env: &["BAZEL_REMOTE_MIN_TLS_VERSION"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::MIN_TLS_VERSION.to_owned()),
        help: "Lowest TLS version accepted from clients: 1.0, 1.1, 1.2 or 1.3.",
        heading: AUTH,
    },
    Opt {
        key: "tls_ca_file",
        env: &["BAZEL_REMOTE_TLS_CA_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "CA that signs client certificates; enables mTLS. Needs --tls_cert_file and \
               --tls_key_file.",
        heading: AUTH,
    },
    Opt {
        key: "tls_cert_file",
        env: &["BAZEL_REMOTE_TLS_CERT_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "PEM certificate of the server; enables TLS together with --tls_key_file.",
        heading: AUTH,
    },
    Opt {
        key: "tls_key_file",
        env: &["BAZEL_REMOTE_TLS_KEY_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "PEM private key of the server; enables TLS together with --tls_cert_file.",
        heading: AUTH,
    },
    // Cache behaviour
    Opt {
        key: "disable_http_ac_validation",
        env: &["BAZEL_REMOTE_DISABLE_HTTP_AC_VALIDATION"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::DISABLE_HTTP_AC_VALIDATION.to_string()),
        help: "Store ActionResults uploaded over HTTP without checking that they parse.",
        heading: BEHAVIOUR,
    },
    Opt {
        key: "disable_grpc_ac_deps_check",
        // bazel-remote's variable has a typo ("GRPS"); accept it first for
        // drop-in compatibility and the corrected spelling too.
        env: &[
            "BAZEL_REMOTE_DISABLE_GRPS_AC_DEPS_CHECK",
            "BAZEL_REMOTE_DISABLE_GRPC_AC_DEPS_CHECK",
        ],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::DISABLE_GRPC_AC_DEPS_CHECK.to_string()),
        help: "Answer gRPC GetActionResult without checking that the referenced blobs exist.",
        heading: BEHAVIOUR,
    },
    Opt {
        key: "enable_ac_key_instance_mangling",
        env: &["BAZEL_REMOTE_ENABLE_AC_KEY_INSTANCE_MANGLING"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::ENABLE_AC_KEY_INSTANCE_MANGLING.to_string()),
        help: "Mix a non-empty instance name into ActionCache keys.",
        heading: BEHAVIOUR,
    },
    Opt {
        key: "experimental_remote_asset_api",
        env: &["BAZEL_REMOTE_EXPERIMENTAL_REMOTE_ASSET_API"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::EXPERIMENTAL_REMOTE_ASSET_API.to_string()),
        help: "Serve the experimental Remote Asset API (needs gRPC).",
        heading: BEHAVIOUR,
    },
    Opt {
        key: "remote_asset_allowed_hosts",
        env: &["BAZEL_REMOTE_REMOTE_ASSET_ALLOWED_HOSTS"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("any host with only public addresses"),
        help: "Comma-separated hosts the Remote Asset API may download from. When set, only \
               these, whatever their addresses (loopback and private ones included); when \
               unset, any host whose addresses are all public.",
        heading: BEHAVIOUR,
    },
    // Logging and metrics
    Opt {
        key: "access_log_level",
        env: &["BAZEL_REMOTE_ACCESS_LOG_LEVEL"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::ACCESS_LOG_LEVEL.to_owned()),
        help: "Access log verbosity: \"none\" or \"all\".",
        heading: LOGS,
    },
    Opt {
        key: "log_timezone",
        env: &["BAZEL_REMOTE_LOG_TIMEZONE"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::LOG_TIMEZONE.to_owned()),
        help: "Timezone of log timestamps: \"UTC\", \"local\" or \"none\" (no timestamps).",
        heading: LOGS,
    },
    Opt {
        key: "log_format",
        env: &["BAZEL_REMOTE_LOG_FORMAT"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::LOG_FORMAT.to_owned()),
        help: "Log output format: \"text\" or \"json\".",
        heading: LOGS,
    },
    Opt {
        key: "web_console",
        env: &["BAZEL_REMOTE_WEB_CONSOLE"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::WEB_CONSOLE.to_string()),
        help: "Serve the web console (/ and /ui/) on the HTTP port.",
        heading: LOGS,
    },
    Opt {
        key: "enable_endpoint_metrics",
        env: &["BAZEL_REMOTE_ENABLE_ENDPOINT_METRICS"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::ENABLE_ENDPOINT_METRICS.to_string()),
        help: "Export per-endpoint HTTP/gRPC metrics.",
        heading: LOGS,
    },
    Opt {
        key: "endpoint_metrics_duration_buckets",
        env: &["BAZEL_REMOTE_ENDPOINT_METRICS_DURATION_BUCKETS"],
        kind: Kind::NumberList,
        default: DefaultHelp::Value(|| numbers(&defaults::DURATION_BUCKETS)),
        help: "Histogram buckets in seconds for endpoint metrics, comma-separated.",
        heading: LOGS,
    },
    Opt {
        key: "http_metrics_prefix",
        env: &["BAZEL_REMOTE_HTTP_METRICS_PREFIX"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::HTTP_METRICS_PREFIX.to_string()),
        help: "Prefix HTTP metric names with \"bazel_remote\".",
        heading: LOGS,
    },
    // S3 proxy
    Opt {
        key: "s3.endpoint",
        env: &["BAZEL_REMOTE_S3_ENDPOINT"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "S3/MinIO endpoint (host:port). Setting it or --s3.bucket enables the S3 proxy.",
        heading: S3,
    },
    Opt {
        key: "s3.bucket",
        env: &["BAZEL_REMOTE_S3_BUCKET"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "S3/MinIO bucket.",
        heading: S3,
    },
    Opt {
        key: "s3.bucket_lookup_type",
        env: &["BAZEL_REMOTE_S3_BUCKET_LOOKUP_TYPE"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::S3_BUCKET_LOOKUP_TYPE.to_owned()),
        help: "Bucket addressing: \"auto\", \"dns\" (virtual host) or \"path\".",
        heading: S3,
    },
    Opt {
        key: "s3.prefix",
        env: &["BAZEL_REMOTE_S3_PREFIX"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("\"\""),
        help: "Prefix of the object keys in the bucket.",
        heading: S3,
    },
    Opt {
        key: "s3.auth_method",
        env: &["BAZEL_REMOTE_S3_AUTH_METHOD"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none, required"),
        help: "Authentication: \"access_key\", \"iam_role\" or \"aws_credentials_file\".",
        heading: S3,
    },
    Opt {
        key: "s3.access_key_id",
        env: &["BAZEL_REMOTE_S3_ACCESS_KEY_ID"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "Access key id (auth_method access_key).",
        heading: S3,
    },
    Opt {
        key: "s3.secret_access_key",
        env: &["BAZEL_REMOTE_S3_SECRET_ACCESS_KEY"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "Secret access key (auth_method access_key). Prefer the environment variable: \
               flags are visible to other local users.",
        heading: S3,
    },
    Opt {
        key: "s3.session_token",
        env: &["BAZEL_REMOTE_S3_SESSION_TOKEN"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "Optional session token (auth_method access_key).",
        heading: S3,
    },
    Opt {
        key: "s3.signature_type",
        env: &["BAZEL_REMOTE_S3_SIGNATURE_TYPE"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::S3_SIGNATURE_TYPE.to_owned()),
        help: "Request signing (auth_method access_key): \"v2\", \"v4\", \"v4streaming\" or \
               \"anonymous\".",
        heading: S3,
    },
    Opt {
        key: "s3.aws_shared_credentials_file",
        env: &[
            "BAZEL_REMOTE_S3_AWS_SHARED_CREDENTIALS_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ],
        kind: Kind::Str,
        default: DefaultHelp::Unset("~/.aws/credentials"),
        help: "AWS credentials file (auth_method aws_credentials_file).",
        heading: S3,
    },
    Opt {
        key: "s3.aws_profile",
        env: &["BAZEL_REMOTE_S3_AWS_PROFILE", "AWS_PROFILE"],
        kind: Kind::Str,
        default: DefaultHelp::Value(|| defaults::S3_AWS_PROFILE.to_owned()),
        help: "Profile within the AWS credentials file (auth_method aws_credentials_file).",
        heading: S3,
    },
    Opt {
        key: "s3.iam_role_endpoint",
        env: &["BAZEL_REMOTE_S3_IAM_ROLE_ENDPOINT"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("the AWS standard locations"),
        help: "Endpoint serving IAM security credentials (auth_method iam_role).",
        heading: S3,
    },
    Opt {
        key: "s3.region",
        env: &["BAZEL_REMOTE_S3_REGION"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("\"\""),
        help: "AWS region.",
        heading: S3,
    },
    Opt {
        key: "s3.disable_ssl",
        env: &["BAZEL_REMOTE_S3_DISABLE_SSL"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::S3_DISABLE_SSL.to_string()),
        help: "Talk plain HTTP to the endpoint.",
        heading: S3,
    },
    Opt {
        key: "s3.update_timestamps",
        env: &["BAZEL_REMOTE_S3_UPDATE_TIMESTAMPS"],
        kind: Kind::Bool,
        default: DefaultHelp::Value(|| defaults::S3_UPDATE_TIMESTAMPS.to_string()),
        help: "Refresh an object's timestamp when a build uses it (for bucket lifecycle rules): a \
               hit, local or through S3, a digest FindMissingBlobs finds, an AC entry \
               GetActionResult serves and the blobs it names; in the background, at most once \
               per object per --s3.update_timestamps_interval.",
        heading: S3,
    },
    Opt {
        key: "s3.update_timestamps_interval",
        env: &["BAZEL_REMOTE_S3_UPDATE_TIMESTAMPS_INTERVAL"],
        kind: Kind::Duration,
        default: DefaultHelp::Value(|| seconds(defaults::S3_UPDATE_TIMESTAMPS_INTERVAL)),
        help: "With --s3.update_timestamps, the least time between two refreshes of one object \
               by this replica; below a day (the shortest lifecycle expiry). A Go duration (1h) \
               or seconds.",
        heading: S3,
    },
    Opt {
        key: "s3.presence_cache_ttl",
        env: &["BAZEL_REMOTE_S3_PRESENCE_CACHE_TTL"],
        kind: Kind::Duration,
        default: DefaultHelp::Value(|| seconds(defaults::S3_PRESENCE_CACHE_TTL)),
        help: "How long an S3 answer \"present\" (a HEAD, an upload, a download) is believed \
               before S3 is asked again; 0 = never cached. Must stay well below the bucket's \
               lifecycle expiry (refused from a day): a cached \"present\" for an expired \
               object makes FindMissingBlobs tell Bazel not to upload a blob that is gone.",
        heading: S3,
    },
    Opt {
        key: "s3.presence_cache_negative_ttl",
        env: &["BAZEL_REMOTE_S3_PRESENCE_CACHE_NEGATIVE_TTL"],
        kind: Kind::Duration,
        default: DefaultHelp::Value(|| seconds(defaults::S3_PRESENCE_CACHE_NEGATIVE_TTL)),
        help: "How long an S3 answer \"absent\" is believed (another replica's upload is seen \
               this late); 0 = never cached.",
        heading: S3,
    },
    Opt {
        key: "s3.presence_cache_max_entries",
        env: &["BAZEL_REMOTE_S3_PRESENCE_CACHE_MAX_ENTRIES"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::S3_PRESENCE_CACHE_MAX_ENTRIES.to_string()),
        help: "Most S3 existence answers remembered (about 80 bytes each), the oldest dropped \
               first; 0 turns the presence cache off.",
        heading: S3,
    },
    Opt {
        key: "s3.key_version",
        env: &["BAZEL_REMOTE_S3_KEY_VERSION"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::S3_KEY_VERSION.to_string()),
        help: "Deprecated; only 2 is accepted.",
        heading: S3,
    },
    Opt {
        key: "s3.max_idle_conns",
        env: &["BAZEL_REMOTE_S3_MAX_IDLE_CONNS"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::S3_MAX_IDLE_CONNS.to_string()),
        help: "Idle connections kept open to the endpoint.",
        heading: S3,
    },
    Opt {
        key: "http_proxy.url",
        env: &["BAZEL_REMOTE_HTTP_PROXY_URL"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "HTTP cache to use as the proxy backend, http[s]://[user:password@]host:port[/path] \
               (user:password: basic authentication). Setting it enables the HTTP proxy.",
        heading: URL_PROXY,
    },
    Opt {
        key: "http_proxy.cert_file",
        env: &["BAZEL_REMOTE_HTTP_PROXY_CERT_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "PEM client certificate for mTLS to the HTTP proxy backend; needs \
               --http_proxy.key_file and a https URL.",
        heading: URL_PROXY,
    },
    Opt {
        key: "http_proxy.key_file",
        env: &["BAZEL_REMOTE_HTTP_PROXY_KEY_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "PEM private key for mTLS to the HTTP proxy backend; needs --http_proxy.cert_file.",
        heading: URL_PROXY,
    },
    Opt {
        key: "http_proxy.ca_file",
        env: &["BAZEL_REMOTE_HTTP_PROXY_CA_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("the system CA store"),
        help: "PEM CA that signs the HTTP proxy backend's certificate (https URLs).",
        heading: URL_PROXY,
    },
    Opt {
        key: "grpc_proxy.url",
        env: &["BAZEL_REMOTE_GRPC_PROXY_URL"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "gRPC cache to use as the proxy backend, grpc[s]://[user:password@]host:port \
               (user:password: basic authentication). Setting it enables the gRPC proxy.",
        heading: URL_PROXY,
    },
    Opt {
        key: "grpc_proxy.cert_file",
        env: &["BAZEL_REMOTE_GRPC_PROXY_CERT_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "PEM client certificate for mTLS to the gRPC proxy backend; needs \
               --grpc_proxy.key_file and a grpcs URL.",
        heading: URL_PROXY,
    },
    Opt {
        key: "grpc_proxy.key_file",
        env: &["BAZEL_REMOTE_GRPC_PROXY_KEY_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("none"),
        help: "PEM private key for mTLS to the gRPC proxy backend; needs --grpc_proxy.cert_file.",
        heading: URL_PROXY,
    },
    Opt {
        key: "grpc_proxy.ca_file",
        env: &["BAZEL_REMOTE_GRPC_PROXY_CA_FILE"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("the system CA store"),
        help: "PEM CA that signs the gRPC proxy backend's certificate (grpcs URLs).",
        heading: URL_PROXY,
    },
    Opt {
        key: "num_uploaders",
        env: &["BAZEL_REMOTE_NUM_UPLOADERS"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::NUM_UPLOADERS.to_string()),
        help: "Parallel uploads to the proxy backend.",
        heading: S3,
    },
    Opt {
        key: "max_queued_uploads",
        env: &["BAZEL_REMOTE_MAX_QUEUED_UPLOADS"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::MAX_QUEUED_UPLOADS.to_string()),
        help: "Uploads waiting for the proxy backend; when full, new uploads are skipped.",
        heading: S3,
    },
    // Deprecated
    Opt {
        key: "host",
        env: &["BAZEL_REMOTE_HOST"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("\"\", ie all interfaces"),
        help: "Use --http_address/--grpc_address. Host for --port and --grpc_port.",
        heading: DEPRECATED,
    },
    Opt {
        key: "port",
        env: &["BAZEL_REMOTE_PORT"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::HTTP_PORT.to_string()),
        help: "Use --http_address. HTTP port, used when --http_address is not set.",
        heading: DEPRECATED,
    },
    Opt {
        key: "grpc_port",
        env: &["BAZEL_REMOTE_GRPC_PORT"],
        kind: Kind::Int,
        default: DefaultHelp::Value(|| defaults::GRPC_PORT.to_string()),
        help: "Use --grpc_address. gRPC port, used when --grpc_address is not set; 0 disables \
               gRPC.",
        heading: DEPRECATED,
    },
    Opt {
        key: "profile_host",
        env: &["BAZEL_REMOTE_PROFILE_HOST"],
        kind: Kind::Str,
        default: DefaultHelp::Unset("127.0.0.1"),
        help: "Accepted for compatibility and ignored.",
        heading: DEPRECATED,
    },
    Opt {
        key: "profile_port",
        env: &["BAZEL_REMOTE_PROFILE_PORT"],
        kind: Kind::Int,
        default: DefaultHelp::Unset("0"),
        help: "Accepted for compatibility and ignored.",
        heading: DEPRECATED,
    },
];

/// bazel-remote features bazel-cache does not implement. Each is named by the
/// YAML block, the flag and the environment variable that switch it on in
/// bazel-remote, so that a configuration relying on one fails loudly instead
/// of starting a server that silently behaves differently, with what to use
/// instead.
pub(super) struct Unsupported {
    pub block: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub message: &'static str,
}

pub(super) static UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        block: "gcs_proxy",
        flag: "gcs_proxy.bucket",
        env: "BAZEL_REMOTE_GCS_BUCKET",
        message: "not supported by bazel-cache; use s3_proxy with GCS's S3-compatible XML API: \
                  endpoint storage.googleapis.com, the bucket, auth_method access_key with an \
                  HMAC key of a service account as access_key_id/secret_access_key",
    },
    Unsupported {
        block: "azblob_proxy",
        flag: "azblob.tenant_id",
        env: "BAZEL_REMOTE_AZBLOB_TENANT_ID",
        message: "not supported by bazel-cache; Azure Blob Storage has no S3-compatible API: \
                  put an S3 gateway in front of the container and use s3_proxy, or keep a \
                  bazel-remote with azblob_proxy and point grpc_proxy or http_proxy at it",
    },
    Unsupported {
        block: "ldap",
        flag: "ldap.url",
        env: "BAZEL_REMOTE_LDAP_URL",
        message: "not supported by bazel-cache (authentication: htpasswd_file or tls_ca_file)",
    },
];

/// What the config file says for an unsupported block: the schema only
/// knows that it is unsupported; `file.rs` swaps in the block's message.
pub(super) const UNSUPPORTED_MESSAGE: &str = "not supported by bazel-cache";

/// The message for the unsupported `block`.
pub(super) fn unsupported_message(block: &str) -> &'static str {
    UNSUPPORTED
        .iter()
        .find(|u| u.block == block)
        .map_or(UNSUPPORTED_MESSAGE, |u| u.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_and_env_vars_are_unique() {
        let mut keys = HashSet::new();
        let mut envs = HashSet::new();
        for opt in OPTIONS {
            assert!(keys.insert(opt.key), "duplicate key {}", opt.key);
            assert!(!opt.env.is_empty(), "{} has no env var", opt.key);
            for env in opt.env {
                assert!(envs.insert(*env), "duplicate env var {env}");
            }
        }
    }

    #[test]
    fn s3_flags_map_to_the_s3_proxy_block() {
        let opt = by_yaml_key("s3_proxy.max_idle_conns").unwrap();
        assert_eq!(opt.key, "s3.max_idle_conns");
        assert_eq!(opt.yaml_path(), (Some("s3_proxy"), "max_idle_conns"));
        assert_eq!(by_yaml_key("dir").unwrap().yaml_path(), (None, "dir"));
        assert!(by_yaml_key("s3.endpoint").is_none());
        let opt = by_yaml_key("grpc_proxy.ca_file").unwrap();
        assert_eq!(opt.key, "grpc_proxy.ca_file");
        assert_eq!(opt.env, ["BAZEL_REMOTE_GRPC_PROXY_CA_FILE"]);
        assert_eq!(
            by_yaml_key("http_proxy.url").unwrap().yaml_path(),
            (Some("http_proxy"), "url")
        );
    }
}
