//! Turns the merged sources into a [`Config`]: applies built-in defaults,
//! checks every value and the rules between keys, and finally makes sure the
//! cache directory is usable. The first problem found is returned, naming
//! the key (in its YAML spelling) and, when known, the source that set it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults;
use super::error::ConfigError;
use super::file::{Gib, Int, S3Schema, Schema, Seconds, UrlProxySchema};
use super::listen::{join_host_port, parse_listen_addr, tcp_port};
use super::options::by_yaml_key;
use super::sources::{Provenance, Sources};
use super::{
    AccessLogLevel, BucketLookupType, Config, ListenAddr, LogFormat, LogTimezone,
    PresenceCacheConfig, S3AuthMethod, S3Config, S3SignatureType, StorageMode, TlsConfig,
    UrlBackendConfig, UrlProtocol,
};
use bazel_cache_digest::GoDuration;

const GIB: f64 = (1u64 << 30) as f64;

/// The resolved configuration plus notes for the operator (ignored
/// compatibility keys and the like) to be logged once logging is up.
/// `check_dir` is false for `check-config`, which validates a configuration
/// where it is built (a Nix sandbox, a CI job) rather than where it will run,
/// so the cache directory need not exist yet.
pub(super) fn resolve(
    sources: Sources,
    env: &dyn Fn(&str) -> Option<String>,
    check_dir: bool,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut resolver = Resolver {
        provenance: &sources.provenance,
        notes: Vec::new(),
        check_dir,
    };
    let config = resolver.config(sources.schema, env)?;
    Ok((config, resolver.notes))
}

struct Resolver<'a> {
    provenance: &'a Provenance,
    notes: Vec<String>,
    check_dir: bool,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Resolver<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
            origin: self.provenance.origin(key),
        }
    }

    fn config(&mut self, s: Schema, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let (http_address, grpc_address) = self.listeners(&s)?;
        let max_size_bytes = self.gib(
            "max_size",
            s.max_size.unwrap_or(Gib(defaults::MAX_SIZE_GIB)),
        )?;
        let max_size_hard_limit_bytes = match s.max_size_hard_limit {
            // bazel-remote: -1 (its default) or any value <= 0 means no limit.
            Some(Gib(gib)) if gib > 0.0 => {
                let bytes = self.gib("max_size_hard_limit", Gib(gib))?;
                if bytes < max_size_bytes {
                    return Err(
                        self.invalid("max_size_hard_limit", "must not be smaller than max_size")
                    );
                }
                Some(bytes)
            }
            _ => None,
        };
        let storage_mode = self.choice(
            "storage_mode",
            s.storage_mode,
            &[
                ("zstd", StorageMode::Zstd),
                ("uncompressed", StorageMode::Uncompressed),
            ],
            defaults::STORAGE_MODE,
        )?;
        // Accepted so bazel-remote configs load; we have one zstd implementation.
        self.choice(
            "zstd_implementation",
            s.zstd_implementation,
            &[("go", ()), ("cgo", ())],
            defaults::ZSTD_IMPLEMENTATION,
        )?;

        let experimental_remote_asset_api = s
            .experimental_remote_asset_api
            .unwrap_or(defaults::EXPERIMENTAL_REMOTE_ASSET_API);
        if experimental_remote_asset_api && grpc_address.is_none() {
            return Err(self.invalid(
                "experimental_remote_asset_api",
                "needs gRPC, but gRPC is disabled",
            ));
        }
        if non_empty(s.profile_address).is_some_and(|addr| addr != "none")
            || s.profile_port.is_some_and(|Int(port)| port > 0)
        {
            self.notes.push(
                "profile_address/profile_port are ignored: bazel-cache has no Go profiling endpoint"
                    .to_owned(),
            );
        }

        let htpasswd_file = non_empty(s.htpasswd_file).map(PathBuf::from);
        let tls = self.tls(
            s.tls_cert_file,
            s.tls_key_file,
            s.tls_ca_file,
            s.min_tls_version,
        )?;
        let allow_unauthenticated_reads = s
            .allow_unauthenticated_reads
            .unwrap_or(defaults::ALLOW_UNAUTHENTICATED_READS);
        let mtls = tls.as_ref().is_some_and(|tls| tls.ca_file.is_some());
        if allow_unauthenticated_reads && htpasswd_file.is_none() && !mtls {
            return Err(self.invalid(
                "allow_unauthenticated_reads",
                "only makes sense with authentication (htpasswd_file or tls_ca_file)",
            ));
        }

        // bazel-remote's rule: one proxy backend at most.
        let backends: Vec<&str> = [
            ("s3_proxy", s.s3_proxy.is_some()),
            ("http_proxy", s.http_proxy.is_some()),
            ("grpc_proxy", s.grpc_proxy.is_some()),
        ]
        .into_iter()
        .filter_map(|(block, set)| set.then_some(block))
        .collect();
        if let [first, second, ..] = backends[..] {
            return Err(self.invalid(
                second,
                format!(
                    "at most one proxy backend may be set, and {first} is set too \
                     (one of s3_proxy, http_proxy, grpc_proxy)"
                ),
            ));
        }
        let (presence_cache, update_timestamps_interval) =
            self.proxy_tuning(s.s3_proxy.as_ref())?;
        let s3_proxy = s.s3_proxy.map(|s3| self.s3(s3)).transpose()?;
        let http_proxy = s
            .http_proxy
            .map(|b| self.url_backend(UrlProtocol::Http, b))
            .transpose()?;
        let grpc_proxy = s
            .grpc_proxy
            .map(|b| self.url_backend(UrlProtocol::Grpc, b))
            .transpose()?;
        let num_uploaders =
            self.count("num_uploaders", s.num_uploaders, defaults::NUM_UPLOADERS)?;
        if let [backend] = backends[..]
            && num_uploaders == 0
        {
            return Err(self.invalid(
                "num_uploaders",
                format!("must be at least 1 when a proxy backend ({backend}) is enabled"),
            ));
        }

        let max_blob_size = self.blob_size("max_blob_size", s.max_blob_size)?;
        let max_proxy_blob_size = self.blob_size("max_proxy_blob_size", s.max_proxy_blob_size)?;
        let max_queued_uploads = self.count(
            "max_queued_uploads",
            s.max_queued_uploads,
            defaults::MAX_QUEUED_UPLOADS,
        )?;
        let max_concurrent_writes = match self.count(
            "max_concurrent_writes",
            s.max_concurrent_writes,
            defaults::MAX_CONCURRENT_WRITES,
        )? {
            0 => return Err(self.invalid("max_concurrent_writes", "must be at least 1")),
            n => n,
        };
        let max_buffer_memory_bytes = self.gib(
            "max_buffer_memory",
            s.max_buffer_memory
                .unwrap_or(Gib(defaults::MAX_BUFFER_MEMORY_GIB)),
        )?;
        if max_buffer_memory_bytes < bazel_cache_store::budget::MIN_MAX_BUFFER_MEMORY {
            return Err(self.invalid(
                "max_buffer_memory",
                format!(
                    "must be at least {} (32 MiB): a zstd decoder at the largest window \
                     accepted takes 8.6 MiB",
                    defaults::MIN_BUFFER_MEMORY_GIB
                ),
            ));
        }
        let body_min_rate = self.count(
            "body_min_rate",
            s.body_min_rate,
            defaults::BODY_MIN_RATE as usize,
        )? as u64;
        let body_rate_window = match s.body_rate_window {
            None => defaults::BODY_RATE_WINDOW,
            Some(GoDuration(d)) if d.is_zero() => {
                return Err(self.invalid(
                    "body_rate_window",
                    "must be greater than 0 (body_min_rate 0 turns the rate check off)",
                ));
            }
            Some(GoDuration(d)) => d,
        };
        let access_log_level = self.choice(
            "access_log_level",
            s.access_log_level,
            &[("none", AccessLogLevel::None), ("all", AccessLogLevel::All)],
            defaults::ACCESS_LOG_LEVEL,
        )?;
        let log_format = self.choice(
            "log_format",
            s.log_format,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            defaults::LOG_FORMAT,
        )?;
        let log_timezone = self.choice(
            "log_timezone",
            s.log_timezone,
            &[
                ("UTC", LogTimezone::Utc),
                ("local", LogTimezone::Local),
                ("none", LogTimezone::None),
            ],
            defaults::LOG_TIMEZONE,
        )?;
        let endpoint_metrics_duration_buckets =
            self.buckets(s.endpoint_metrics_duration_buckets)?;

        let max_connections = match self.count(
            "max_connections",
            s.max_connections,
            defaults::MAX_CONNECTIONS,
        )? {
            0 => return Err(self.invalid("max_connections", "must be at least 1")),
            n => n,
        };
        let request_head_timeout = self.bound(
            "request_head_timeout",
            s.request_head_timeout,
            defaults::REQUEST_HEAD_TIMEOUT,
        )?;
        let connection_idle_timeout = self.bound(
            "connection_idle_timeout",
            s.connection_idle_timeout,
            defaults::CONNECTION_IDLE_TIMEOUT,
        )?;

        // Last: it creates the directory, which only a valid config should do.
        let dir = self.dir(s.dir, env)?;

        Ok(Config {
            dir,
            max_size_bytes,
            max_size_hard_limit_bytes,
            http_address,
            grpc_address,
            storage_mode,
            max_blob_size,
            max_proxy_blob_size,
            idle_timeout: timeout(s.idle_timeout),
            http_read_timeout: timeout(s.http_read_timeout),
            http_write_timeout: timeout(s.http_write_timeout),
            max_connections,
            request_head_timeout,
            connection_idle_timeout,
            access_log_level,
            log_format,
            log_timezone,
            enable_endpoint_metrics: s
                .enable_endpoint_metrics
                .unwrap_or(defaults::ENABLE_ENDPOINT_METRICS),
            web_console: s.web_console.unwrap_or(defaults::WEB_CONSOLE),
            endpoint_metrics_duration_buckets,
            http_metrics_prefix: s
                .http_metrics_prefix
                .unwrap_or(defaults::HTTP_METRICS_PREFIX),
            disable_http_ac_validation: s
                .disable_http_ac_validation
                .unwrap_or(defaults::DISABLE_HTTP_AC_VALIDATION),
            disable_grpc_ac_deps_check: s
                .disable_grpc_ac_deps_check
                .unwrap_or(defaults::DISABLE_GRPC_AC_DEPS_CHECK),
            enable_ac_key_instance_mangling: s
                .enable_ac_key_instance_mangling
                .unwrap_or(defaults::ENABLE_AC_KEY_INSTANCE_MANGLING),
            experimental_remote_asset_api,
            remote_asset_allowed_hosts: s
                .remote_asset_allowed_hosts
                .unwrap_or_default()
                .split(',')
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
            htpasswd_file,
            allow_unauthenticated_reads,
            tls,
            s3_proxy,
            presence_cache,
            update_timestamps_interval,
            http_proxy,
            grpc_proxy,
            num_uploaders,
            max_queued_uploads,
            fsync: s.fsync.unwrap_or(defaults::FSYNC),
            max_concurrent_writes,
            max_buffer_memory_bytes,
            body_min_rate,
            body_rate_window,
        })
    }

    /// GiB → bytes; must be positive.
    fn gib(&self, key: &str, Gib(gib): Gib) -> Result<u64> {
        let bytes = (gib * GIB).round();
        if gib <= 0.0 || bytes < 1.0 {
            return Err(self.invalid(key, "must be greater than 0"));
        }
        if bytes >= u64::MAX as f64 {
            return Err(self.invalid(key, format!("{gib} GiB is too large")));
        }
        Ok(bytes as u64)
    }

    /// One of a fixed set of spellings; an empty string counts as unset and
    /// means the spelling `default` (a constant of `defaults.rs`, which
    /// `--help` shows).
    fn choice<T: Copy>(
        &self,
        key: &str,
        value: Option<String>,
        choices: &[(&str, T)],
        default: &str,
    ) -> Result<T> {
        let value = non_empty(value).unwrap_or_else(|| default.to_owned());
        choices
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| {
                let names: Vec<_> = choices
                    .iter()
                    .map(|(name, _)| format!("{name:?}"))
                    .collect();
                self.invalid(
                    key,
                    format!("must be one of {}, not {value:?}", names.join(", ")),
                )
            })
    }

    /// A non-negative count with a default.
    fn count(&self, key: &str, value: Option<Int>, default: usize) -> Result<usize> {
        match value {
            None => Ok(default),
            Some(Int(n)) => {
                usize::try_from(n).map_err(|_| self.invalid(key, "must not be negative"))
            }
        }
    }

    /// A time limit that cannot be turned off (every connection is
    /// bounded): absent = `default`, zero refused.
    fn bound(&self, key: &str, value: Option<GoDuration>, default: Duration) -> Result<Duration> {
        match value {
            None => Ok(default),
            Some(GoDuration(d)) if d.is_zero() => Err(self.invalid(key, "must be greater than 0")),
            Some(GoDuration(d)) => Ok(d),
        }
    }

    /// A blob size limit in bytes; absent = unlimited.
    fn blob_size(&self, key: &str, value: Option<Int>) -> Result<u64> {
        match value {
            None => Ok(u64::MAX),
            Some(Int(n)) if n > 0 => Ok(n as u64),
            Some(_) => Err(self.invalid(key, "must be greater than 0")),
        }
    }

    fn port(&self, key: &str, Int(port): Int) -> Result<u16> {
        u16::try_from(port).map_err(|_| self.invalid(key, "must be between 0 and 65535"))
    }

    fn address(&self, key: &str, value: &str) -> Result<ListenAddr> {
        parse_listen_addr(value).map_err(|message| self.invalid(key, message))
    }

    /// HTTP and gRPC listeners. `http_address`/`grpc_address` win; the
    /// deprecated `host`, `port` and `grpc_port` only fill in when those are
    /// unset, as in bazel-remote.
    fn listeners(&mut self, s: &Schema) -> Result<(ListenAddr, Option<ListenAddr>)> {
        let host = s.host.as_deref().unwrap_or("");
        let http_address = s.http_address.as_deref().filter(|a| !a.is_empty());
        let grpc_address = s.grpc_address.as_deref().filter(|a| !a.is_empty());
        if http_address.is_some() && s.port.is_some() {
            self.notes
                .push("port is ignored because http_address is set".to_owned());
        }
        if grpc_address.is_some() && s.grpc_port.is_some() {
            self.notes
                .push("grpc_port is ignored because grpc_address is set".to_owned());
        }

        // A derived address can only fail because of `host`: the port has
        // been range-checked already.
        let http = match http_address {
            Some(addr) => self.address("http_address", addr)?,
            None => {
                let port = match s.port {
                    Some(port) => self.port("port", port)?,
                    None => defaults::HTTP_PORT,
                };
                self.address("host", &join_host_port(host, port))?
            }
        };
        let grpc = match (grpc_address, s.grpc_port) {
            (Some("none"), _) => None,
            (Some(addr), _) => Some(self.address("grpc_address", addr)?),
            (None, Some(port)) => match self.port("grpc_port", port)? {
                0 => None,
                port => Some(self.address("host", &join_host_port(host, port))?),
            },
            (None, None) => Some(self.address("host", &join_host_port(host, defaults::GRPC_PORT))?),
        };

        if let Some(grpc) = &grpc {
            let conflict = match (&http, grpc) {
                (ListenAddr::Unix(a), ListenAddr::Unix(b)) if a == b => {
                    Some(format!("socket {} is", a.display()))
                }
                _ => tcp_port(&http)
                    .filter(|port| tcp_port(grpc) == Some(*port))
                    .map(|port| format!("TCP port {port} is")),
            };
            if let Some(what) = conflict {
                // Blame the gRPC key the user set; if they set none, their
                // HTTP address collides with gRPC's default.
                let key = if grpc_address.is_some() {
                    "grpc_address"
                } else if s.grpc_port.is_some() {
                    "grpc_port"
                } else if http_address.is_some() {
                    "http_address"
                } else {
                    "port"
                };
                return Err(self.invalid(
                    key,
                    format!("{what} used by both the HTTP and the gRPC listener"),
                ));
            }
        }
        Ok((http, grpc))
    }

    fn tls(
        &self,
        cert: Option<String>,
        key: Option<String>,
        ca: Option<String>,
        min_version: Option<String>,
    ) -> Result<Option<TlsConfig>> {
        let min_version = self.choice(
            "min_tls_version",
            min_version,
            &[
                ("1.0", "1.0"),
                ("1.1", "1.1"),
                ("1.2", "1.2"),
                ("1.3", "1.3"),
            ],
            defaults::MIN_TLS_VERSION,
        )?;
        match (non_empty(cert), non_empty(key), non_empty(ca)) {
            (Some(cert), Some(key), ca) => Ok(Some(TlsConfig {
                cert_file: cert.into(),
                key_file: key.into(),
                ca_file: ca.map(PathBuf::from),
                min_version: min_version.to_owned(),
            })),
            (Some(_), None, _) => {
                Err(self.invalid("tls_key_file", "must be set when tls_cert_file is set"))
            }
            (None, Some(_), _) => {
                Err(self.invalid("tls_cert_file", "must be set when tls_key_file is set"))
            }
            (None, None, Some(_)) => Err(self.invalid(
                "tls_ca_file",
                "mTLS also needs the server's tls_cert_file and tls_key_file",
            )),
            (None, None, None) => Ok(None),
        }
    }

    fn buckets(&self, value: Option<Vec<Seconds>>) -> Result<Vec<f64>> {
        const KEY: &str = "endpoint_metrics_duration_buckets";
        let Some(value) = value else {
            return Ok(defaults::DURATION_BUCKETS.to_vec());
        };
        let mut buckets: Vec<f64> = value.into_iter().map(|seconds| seconds.0).collect();
        if buckets.is_empty() {
            return Err(self.invalid(KEY, "must list at least one bucket"));
        }
        if buckets.iter().any(|&b| b <= 0.0) {
            return Err(self.invalid(KEY, "buckets must be greater than 0"));
        }
        buckets.sort_by(f64::total_cmp);
        if buckets.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(self.invalid(KEY, "must not contain duplicate buckets"));
        }
        Ok(buckets)
    }

    fn s3(&self, s3: S3Schema) -> Result<S3Config> {
        // Says where the value can come from: credentials are usually
        // provided by environment variables, not the file.
        let required = |key: &str, value: Option<String>| {
            non_empty(value).ok_or_else(|| {
                let hint = match by_yaml_key(key) {
                    Some(opt) => format!(
                        " (set it in the s3_proxy block, with --{} or with {})",
                        opt.key, opt.env[0]
                    ),
                    None => String::new(),
                };
                self.invalid(key, format!("required by the S3 proxy{hint}"))
            })
        };

        let endpoint = required("s3_proxy.endpoint", s3.endpoint)?;
        let bucket = required("s3_proxy.bucket", s3.bucket)?;
        let auth_methods = [
            ("access_key", S3AuthMethod::AccessKey),
            ("iam_role", S3AuthMethod::IamRole),
            ("aws_credentials_file", S3AuthMethod::AwsCredentialsFile),
        ];
        let auth_method = required("s3_proxy.auth_method", s3.auth_method)?;
        let auth_method = self.choice(
            "s3_proxy.auth_method",
            Some(auth_method),
            &auth_methods,
            "required, never defaulted",
        )?;
        let (access_key_id, secret_access_key) = match auth_method {
            S3AuthMethod::AccessKey => (
                required("s3_proxy.access_key_id", s3.access_key_id)?,
                required("s3_proxy.secret_access_key", s3.secret_access_key)?,
            ),
            _ => (
                s3.access_key_id.unwrap_or_default(),
                s3.secret_access_key.unwrap_or_default(),
            ),
        };
        if let Some(Int(version)) = s3.key_version
            && version != defaults::S3_KEY_VERSION
        {
            return Err(self.invalid(
                "s3_proxy.key_version",
                format!(
                    "must be {} (the only key layout), not {version}",
                    defaults::S3_KEY_VERSION
                ),
            ));
        }

        Ok(S3Config {
            endpoint,
            bucket,
            prefix: s3.prefix.unwrap_or_default(),
            region: s3.region.unwrap_or_default(),
            auth_method,
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: s3.session_token.unwrap_or_default().into(),
            signature_type: self.choice(
                "s3_proxy.signature_type",
                s3.signature_type,
                &[
                    ("v2", S3SignatureType::V2),
                    ("v4", S3SignatureType::V4),
                    ("v4streaming", S3SignatureType::V4Streaming),
                    ("anonymous", S3SignatureType::Anonymous),
                ],
                defaults::S3_SIGNATURE_TYPE,
            )?,
            iam_role_endpoint: s3.iam_role_endpoint.unwrap_or_default(),
            aws_profile: non_empty(s3.aws_profile)
                .unwrap_or_else(|| defaults::S3_AWS_PROFILE.to_owned()),
            aws_shared_credentials_file: non_empty(s3.aws_shared_credentials_file)
                .map(PathBuf::from),
            disable_ssl: s3.disable_ssl.unwrap_or(defaults::S3_DISABLE_SSL),
            bucket_lookup_type: self.choice(
                "s3_proxy.bucket_lookup_type",
                s3.bucket_lookup_type,
                &[
                    ("auto", BucketLookupType::Auto),
                    ("dns", BucketLookupType::Dns),
                    ("path", BucketLookupType::Path),
                ],
                defaults::S3_BUCKET_LOOKUP_TYPE,
            )?,
            max_idle_conns: self.count(
                "s3_proxy.max_idle_conns",
                s3.max_idle_conns,
                defaults::S3_MAX_IDLE_CONNS,
            )?,
            update_timestamps: s3
                .update_timestamps
                .unwrap_or(defaults::S3_UPDATE_TIMESTAMPS),
        })
    }

    /// The proxy's own keys in the `s3_proxy` block: the presence cache
    /// and the timestamp refresh interval (defaults without the block).
    fn proxy_tuning(&self, s3: Option<&S3Schema>) -> Result<(PresenceCacheConfig, Duration)> {
        let lifecycle = defaults::S3_LIFECYCLE_MIN_EXPIRY;
        let ttl = |key: &str, value: Option<GoDuration>, default: Duration, why: &str| {
            let d = value.map_or(default, |GoDuration(d)| d);
            if d >= lifecycle {
                return Err(self.invalid(
                    key,
                    format!(
                        "must be less than {} (the shortest S3 lifecycle expiry): {why}",
                        defaults::seconds(lifecycle)
                    ),
                ));
            }
            Ok(d)
        };
        let positive_ttl = ttl(
            "s3_proxy.presence_cache_ttl",
            s3.and_then(|s| s.presence_cache_ttl),
            defaults::S3_PRESENCE_CACHE_TTL,
            "a cached \"present\" for an object the lifecycle rule deleted makes \
             FindMissingBlobs tell Bazel not to upload a blob that is gone",
        )?;
        let negative_ttl = ttl(
            "s3_proxy.presence_cache_negative_ttl",
            s3.and_then(|s| s.presence_cache_negative_ttl),
            defaults::S3_PRESENCE_CACHE_NEGATIVE_TTL,
            "other replicas' uploads stay invisible this long",
        )?;
        let max_entries = self.count(
            "s3_proxy.presence_cache_max_entries",
            s3.and_then(|s| s.presence_cache_max_entries),
            defaults::S3_PRESENCE_CACHE_MAX_ENTRIES,
        )?;
        let interval = self.bound(
            "s3_proxy.update_timestamps_interval",
            s3.and_then(|s| s.update_timestamps_interval),
            defaults::S3_UPDATE_TIMESTAMPS_INTERVAL,
        )?;
        if interval >= lifecycle {
            return Err(self.invalid(
                "s3_proxy.update_timestamps_interval",
                format!(
                    "must be less than {} (the shortest S3 lifecycle expiry), or objects in \
                     use expire between two refreshes",
                    defaults::seconds(lifecycle)
                ),
            ));
        }
        let presence = PresenceCacheConfig {
            positive_ttl,
            negative_ttl,
            max_entries,
        };
        Ok((presence, interval))
    }

    /// An `http_proxy:` or `grpc_proxy:` block, checked with bazel-remote's
    /// rules (`backend_url.rs`); the error names the block's URL key.
    fn url_backend(&self, protocol: UrlProtocol, b: UrlProxySchema) -> Result<UrlBackendConfig> {
        let block = format!("{}_proxy", protocol.scheme());
        let url_key = format!("{block}.url");
        let Some(url) = non_empty(b.url) else {
            let hint = by_yaml_key(&url_key)
                .map(|opt| {
                    format!(
                        " (set it in the {block} block, with --{} or with {})",
                        opt.key, opt.env[0]
                    )
                })
                .unwrap_or_default();
            return Err(self.invalid(&url_key, format!("required by the {block} backend{hint}")));
        };
        let path = |v: Option<String>| non_empty(v).map(PathBuf::from);
        UrlBackendConfig::parse(
            protocol,
            &url,
            path(b.cert_file),
            path(b.key_file),
            path(b.ca_file),
        )
        // Never echo the URL: it may hold a password.
        .map_err(|e| self.invalid(&url_key, e))
    }

    /// The cache directory: created if missing and proven writable now, so a
    /// read-only volume fails at start-up rather than on the first upload.
    fn dir(&self, dir: Option<String>, env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
        let dir = match non_empty(dir) {
            Some(dir) => PathBuf::from(dir),
            None => default_dir(env).ok_or_else(|| {
                self.invalid("dir", "not set, and neither XDG_CACHE_HOME nor HOME is set")
            })?,
        };
        if self.check_dir {
            ensure_writable(&dir).map_err(|err| {
                self.invalid("dir", format!("{} is not writable: {err}", dir.display()))
            })?;
        }
        Ok(dir)
    }
}

/// `$XDG_CACHE_HOME/bazel-cache`, else `$HOME/.cache/bazel-cache`. A
/// relative XDG_CACHE_HOME is invalid per the XDG spec and is ignored.
fn default_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let xdg = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute());
    let cache_home = xdg.or_else(|| {
        env("HOME")
            .filter(|home| !home.is_empty())
            .map(|home| Path::new(&home).join(".cache"))
    })?;
    Some(cache_home.join("bazel-cache"))
}

fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let probe = dir.join(format!(".bazel-cache-write-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

fn timeout(value: Option<GoDuration>) -> Option<Duration> {
    value.map(|d| d.0).filter(|d| !d.is_zero())
}

/// bazel-remote reads every string key with Go's zero-value semantics: an
/// empty string is the same as not setting it.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_prefers_absolute_xdg_cache_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = env(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(default_dir(&both), Some("/xdg/bazel-cache".into()));
        let relative_xdg = env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")]);
        assert_eq!(
            default_dir(&relative_xdg),
            Some("/home/u/.cache/bazel-cache".into())
        );
        assert_eq!(default_dir(&env(&[])), None);
    }

    #[test]
    fn ensure_writable_creates_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_writable(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "probe left behind"
        );

        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure_writable(&file).is_err());
        assert!(ensure_writable(&file.join("sub")).is_err());
    }
}
