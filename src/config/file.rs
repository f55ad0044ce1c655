//! The YAML schema, shared by the config file and by the values that flags and
//! environment variables contribute (those are converted to YAML values and
//! merged before this schema is applied, see `sources.rs`).
//!
//! Every field is optional so that a source can leave a key to a lower-
//! precedence source or to the built-in default; `resolve.rs` applies the
//! defaults and the rules between keys. Unknown keys are errors: a typo in a
//! config file must not silently fall back to a default.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_yaml_ng::{Mapping, Value};

use super::error::{ConfigError, Location};
use super::options::{UNSUPPORTED_MESSAGE, unsupported_message};
use bazel_cache_digest::GoDuration;

/// The top level of the config file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a mapping of configuration keys")]
pub(super) struct Schema {
    pub dir: Option<String>,
    pub max_size: Option<Gib>,
    pub max_size_hard_limit: Option<Gib>,
    pub storage_mode: Option<String>,
    pub zstd_implementation: Option<String>,
    pub max_blob_size: Option<Int>,
    pub max_proxy_blob_size: Option<Int>,
    pub fsync: Option<bool>,
    pub max_concurrent_writes: Option<Int>,
    pub max_buffer_memory: Option<Gib>,
    pub body_min_rate: Option<Int>,
    pub body_rate_window: Option<GoDuration>,

    pub http_address: Option<String>,
    pub grpc_address: Option<String>,
    pub profile_address: Option<String>,
    pub http_read_timeout: Option<GoDuration>,
    pub http_write_timeout: Option<GoDuration>,
    pub idle_timeout: Option<GoDuration>,
    pub max_connections: Option<Int>,
    pub request_head_timeout: Option<GoDuration>,
    pub connection_idle_timeout: Option<GoDuration>,

    pub htpasswd_file: Option<String>,
    pub allow_unauthenticated_reads: Option<bool>,
    pub min_tls_version: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,

    pub disable_http_ac_validation: Option<bool>,
    pub disable_grpc_ac_deps_check: Option<bool>,
    pub enable_ac_key_instance_mangling: Option<bool>,
    pub experimental_remote_asset_api: Option<bool>,
    pub remote_asset_allowed_hosts: Option<String>,

    pub access_log_level: Option<String>,
    pub log_timezone: Option<String>,
    pub log_format: Option<String>,
    pub enable_endpoint_metrics: Option<bool>,
    pub web_console: Option<bool>,
    pub endpoint_metrics_duration_buckets: Option<Vec<Seconds>>,
    pub http_metrics_prefix: Option<bool>,

    pub s3_proxy: Option<S3Schema>,
    pub http_proxy: Option<UrlProxySchema>,
    pub grpc_proxy: Option<UrlProxySchema>,
    pub num_uploaders: Option<Int>,
    pub max_queued_uploads: Option<Int>,

    // Deprecated listener keys, still found in older configs.
    pub host: Option<String>,
    pub port: Option<Int>,
    pub grpc_port: Option<Int>,
    #[expect(dead_code, reason = "accepted for bazel-remote compatibility, ignored")]
    pub profile_host: Option<String>,
    pub profile_port: Option<Int>,

    // bazel-remote features we do not implement: present = error.
    #[serde(default)]
    #[expect(dead_code, reason = "deserializing it is the error")]
    pub gcs_proxy: Unsupported,
    #[serde(default)]
    #[expect(dead_code, reason = "deserializing it is the error")]
    pub azblob_proxy: Unsupported,
    #[serde(default)]
    #[expect(dead_code, reason = "deserializing it is the error")]
    pub ldap: Unsupported,
}

/// The `s3_proxy:` block. Deliberately not `Debug`: it holds secrets.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a mapping of s3_proxy keys")]
pub(super) struct S3Schema {
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub auth_method: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub signature_type: Option<String>,
    pub iam_role_endpoint: Option<String>,
    pub aws_profile: Option<String>,
    pub aws_shared_credentials_file: Option<String>,
    pub key_version: Option<Int>,
    pub disable_ssl: Option<bool>,
    pub update_timestamps: Option<bool>,
    pub update_timestamps_interval: Option<GoDuration>,
    pub presence_cache_ttl: Option<GoDuration>,
    pub presence_cache_negative_ttl: Option<GoDuration>,
    pub presence_cache_max_entries: Option<Int>,
    pub bucket_lookup_type: Option<String>,
    pub max_idle_conns: Option<Int>,
}

/// The `http_proxy:` and `grpc_proxy:` blocks (bazel-remote's
/// `URLBackendConfig`). Not `Debug`: the URL may hold a password.
#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of url, cert_file, key_file, ca_file"
)]
pub(super) struct UrlProxySchema {
    pub url: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_file: Option<String>,
}

/// An integer. Range checks (non-negative, positive) happen in `resolve.rs`
/// where the key name is at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}

/// A size in GiB: bazel-remote takes integers, we also take decimals (0.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Gib(pub f64);

impl<'de> Deserialize<'de> for Gib {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(FiniteVisitor("a number of GiB"))
            .map(Gib)
    }
}

/// A histogram bucket bound in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Seconds(pub f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(FiniteVisitor("a number of seconds"))
            .map(Seconds)
    }
}

/// Accepts any finite number, integer or not; names what it expected.
struct FiniteVisitor(&'static str);

impl Visitor<'_> for FiniteVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(E::custom(format!("{v} is not a finite number")))
        }
    }
}

/// A bazel-remote block we do not implement. Absent is fine; any value, even
/// an empty one, is an error at that key, so a deployment relying on the
/// feature fails at start-up instead of running without it.
#[derive(Default)]
pub(super) struct Unsupported;

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Going through the deserializer (rather than failing outright) lets
        // serde_yaml_ng attach the block's own line and column.
        deserializer.deserialize_any(RejectVisitor)
    }
}

struct RejectVisitor;

macro_rules! reject_scalars {
    ($($method:ident($ty:ty)),*) => {$(
        fn $method<E: de::Error>(self, _: $ty) -> Result<Unsupported, E> {
            Err(E::custom(UNSUPPORTED_MESSAGE))
        }
    )*};
}

impl<'de> Visitor<'de> for RejectVisitor {
    type Value = Unsupported;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("nothing (the key is not supported)")
    }

    reject_scalars!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_f64(f64),
        visit_str(&str)
    );

    fn visit_unit<E: de::Error>(self) -> Result<Unsupported, E> {
        Err(E::custom(UNSUPPORTED_MESSAGE))
    }

    fn visit_none<E: de::Error>(self) -> Result<Unsupported, E> {
        Err(E::custom(UNSUPPORTED_MESSAGE))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Unsupported, A::Error> {
        Err(de::Error::custom(UNSUPPORTED_MESSAGE))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Unsupported, A::Error> {
        Err(de::Error::custom(UNSUPPORTED_MESSAGE))
    }
}

/// Reads the config file, checks it against the schema (so errors carry
/// line and column) and returns it as an untyped mapping ready to be merged
/// with the other sources.
pub(super) fn load(path: &Path) -> Result<Mapping, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        location: None,
        key: None,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|err| file_error(err.to_string()))?;

    let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize::<_, Schema>(deserializer)
        .map_err(|err| yaml_error(path, &err))?;

    match serde_yaml_ng::from_str::<Value>(&text).map_err(|err| file_error(err.to_string()))? {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(mapping) => Ok(mapping),
        // The schema accepted it, so it is a mapping; be defensive anyway.
        _ => Err(file_error("expected a mapping of keys to values".into())),
    }
}

/// Turns a schema error into `config file P: line L column C: key: message`.
///
/// serde_yaml_ng's own message already embeds the position and, for values,
/// the parent path; both are lifted into structured fields so the rendered
/// line says each thing once.
fn yaml_error(path: &Path, err: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> ConfigError {
    let inner = err.inner();
    let location = inner.location().map(|loc| Location {
        line: loc.line(),
        column: loc.column(),
    });
    let key_path = err.path().to_string();
    let key = (key_path != ".").then_some(key_path);

    let mut message = inner.to_string();
    if let Some(loc) = location {
        let at = format!(" at line {} column {}", loc.line, loc.column);
        if let Some(pos) = message.find(&at) {
            message.replace_range(pos..pos + at.len(), "");
        }
    }
    if let Some(key) = &key {
        let parent = key.rfind(['.', '[']).map(|i| &key[..i]);
        for prefix in [Some(key.as_str()), parent].into_iter().flatten() {
            if let Some(rest) = message.strip_prefix(&format!("{prefix}: ")) {
                message = rest.to_owned();
                break;
            }
        }
    }
    if message.starts_with("unknown field `") {
        message = "unknown key (see `bazel-cache --help` for the supported keys)".to_owned();
    }

    // Our own text, whole: what to use instead of an unsupported block.
    let message = match &key {
        Some(block) if message == UNSUPPORTED_MESSAGE => unsupported_message(block).to_owned(),
        _ => printable(&message),
    };
    ConfigError::File {
        path: path.to_owned(),
        location,
        // The key is the file's own text: keep the error on one line and short.
        key: key.map(|k| printable(&k)),
        message,
    }
}

/// `text` with control characters escaped (`\n`) and cut to 120 characters,
/// for echoing file content in a one-line error.
fn printable(text: &str) -> String {
    const MAX: usize = 120;
    let mut out: String = text
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .take(MAX)
        .collect();
    if out.chars().count() == MAX && text.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Found by the config_yaml fuzz target: a flow-mapping key spanning
    /// lines came back verbatim, newlines and all.
    #[test]
    fn a_multi_line_unknown_key_is_reported_on_one_short_line() {
        let key = format!("a{}b", "\n".repeat(5)) + &"x".repeat(300);
        let err = load_str(&format!("{{{key}: 1}}\n")).unwrap_err();
        assert!(!err.contains('\n'), "{err:?}");
        assert!(
            err.contains("a\\n"),
            "the line breaks are shown escaped: {err}"
        );
        assert!(err.contains("unknown key"), "{err}");
        assert!(err.len() < 400, "{err}");
    }

    /// Loads `yaml` from a temporary file; errors are rendered with the
    /// random path replaced by `F` so assertions can match the whole line.
    fn load_str(yaml: &str) -> Result<Mapping, String> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(yaml.as_bytes()).unwrap();
        load(file.path()).map_err(|err| {
            err.to_string()
                .replace(&*file.path().to_string_lossy(), "F")
        })
    }

    fn error_text(yaml: &str) -> String {
        match load_str(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(text) => text,
        }
    }

    #[test]
    fn unknown_key_reports_line_column_and_path() {
        assert_eq!(
            error_text("dir: /x\nmax_sise: 3\n"),
            "config file F: line 2 column 1: max_sise: unknown key (see `bazel-cache --help` for the supported keys)"
        );
        assert_eq!(
            error_text("dir: /x\ns3_proxy:\n  bucket: b\n  buckit: c\n"),
            "config file F: line 4 column 3: s3_proxy.buckit: unknown key (see `bazel-cache --help` for the supported keys)"
        );
    }

    #[test]
    fn wrong_type_reports_key_once() {
        assert_eq!(
            error_text("s3_proxy:\n  max_idle_conns: abc\n"),
            "config file F: line 2 column 19: s3_proxy.max_idle_conns: invalid type: string \"abc\", expected an integer"
        );
        assert_eq!(
            error_text("max_size: big\n"),
            "config file F: line 1 column 11: max_size: invalid type: string \"big\", expected a number of GiB"
        );
        assert_eq!(
            error_text("endpoint_metrics_duration_buckets: [1, x]\n"),
            "config file F: line 1 column 40: endpoint_metrics_duration_buckets[1]: invalid type: string \"x\", expected a number of seconds"
        );
        assert!(
            error_text("fsync: yes\n")
                .contains("fsync: invalid type: string \"yes\", expected a boolean")
        );
        assert!(
            error_text("idle_timeout: 5parsecs\n")
                .contains("idle_timeout: unknown unit \"parsecs\"")
        );
    }

    #[test]
    fn unsupported_blocks_are_rejected_even_when_empty() {
        for (block, alternative) in [
            ("gcs_proxy", "storage.googleapis.com"),
            ("azblob_proxy", "S3 gateway"),
            ("ldap", "htpasswd_file"),
        ] {
            for body in [":\n  url: x\n", ":\n"] {
                let text = error_text(&format!("dir: /x\n{block}{body}"));
                assert!(
                    text.contains(&format!("{block}: not supported by bazel-cache")),
                    "{text}"
                );
                assert!(text.contains(alternative), "{text}");
            }
        }
        // The URL proxies are blocks of their own, checked key by key.
        let text = error_text("grpc_proxy:\n  url: grpc://h:1\n  crt_file: x\n");
        assert!(text.contains("grpc_proxy.crt_file: unknown key"), "{text}");
    }

    #[test]
    fn syntax_errors_and_non_mappings_are_reported() {
        assert!(error_text("dir: [\n").starts_with("config file F: "));
        assert!(error_text("- a\n- b\n").contains("expected a mapping of configuration keys"));
    }

    #[test]
    fn empty_file_is_an_empty_mapping() {
        assert!(load_str("").unwrap().is_empty());
        assert!(load_str("# only a comment\n").unwrap().is_empty());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/bazel-cache.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config file /nonexistent/bazel-cache.yaml: No such file"),
            "{err}"
        );
    }
}
