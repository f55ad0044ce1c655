//! Gathers the three sources (YAML file, `BAZEL_REMOTE_*` environment,
//! command-line flags) and merges them, key by key, into one YAML mapping:
//! file < environment < flags. Flag and environment strings are first turned
//! into typed YAML values (see [`Kind`]) so that a single schema (`file.rs`)
//! decides what every key may hold, wherever it came from.
//!
//! Unlike bazel-remote, environment variables still apply when a config file
//! is given: Kubernetes passes S3 credentials as environment variables next
//! to a ConfigMap-mounted file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Number, Value};

use super::error::ConfigError;
use super::file::{self, Schema};
use super::options::{BLOCKS, Kind, OPTIONS, Opt, UNSUPPORTED, by_yaml_key};

/// The merged sources, ready for `resolve.rs`.
pub(super) struct Sources {
    pub schema: Schema,
    pub provenance: Provenance,
}

/// Which source set each key, so an error can point at the right one.
#[derive(Default)]
pub(super) struct Provenance {
    file: Option<PathBuf>,
    /// YAML keys present in the file (`dir`, `s3_proxy.bucket`).
    file_keys: HashSet<String>,
    /// Flag key → the environment variable that set it.
    env: HashMap<&'static str, &'static str>,
    /// Flag keys given on the command line.
    flags: HashSet<&'static str>,
}

impl Provenance {
    /// The highest-precedence source of `yaml_key` (`max_size`,
    /// `s3_proxy.bucket`, `endpoint_metrics_duration_buckets[2]`), as it would
    /// be named to a user: `--max_size`, `BAZEL_REMOTE_MAX_SIZE` or
    /// `config file /etc/bazel-cache.yaml`.
    pub(super) fn origin(&self, yaml_key: &str) -> Option<String> {
        let yaml_key = yaml_key.split('[').next().unwrap_or(yaml_key);
        if let Some(opt) = by_yaml_key(yaml_key) {
            if self.flags.contains(opt.key) {
                return Some(format!("--{}", opt.key));
            }
            if let Some(var) = self.env.get(opt.key) {
                return Some((*var).to_owned());
            }
        }
        if self.file_keys.contains(yaml_key) {
            return self
                .file
                .as_ref()
                .map(|path| format!("config file {}", path.display()));
        }
        None
    }
}

/// Reads the file (if any) and the environment, and merges them with the
/// flag values already taken from the command line.
pub(super) fn gather(
    config_file: Option<&Path>,
    flags: &[(&'static Opt, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Sources, ConfigError> {
    let mut provenance = Provenance::default();

    for unsupported in UNSUPPORTED {
        if env_value(env, unsupported.env).is_some() {
            return Err(ConfigError::Invalid {
                key: unsupported.block.to_owned(),
                message: unsupported.message.to_owned(),
                origin: Some(unsupported.env.to_owned()),
            });
        }
    }

    let file_layer = match config_file {
        Some(path) => {
            let mapping = file::load(path)?;
            provenance.file = Some(path.to_owned());
            provenance.file_keys = yaml_keys(&mapping);
            mapping
        }
        None => Mapping::new(),
    };

    let mut env_values = Vec::new();
    for opt in OPTIONS {
        if let Some((var, value)) = opt
            .env
            .iter()
            .find_map(|var| env_value(env, var).map(|value| (*var, value)))
        {
            provenance.env.insert(opt.key, var);
            env_values.push((opt, value, var.to_owned()));
        }
    }
    let env_layer = layer(env_values)?;

    let flag_values = flags.iter().map(|(opt, value)| {
        provenance.flags.insert(opt.key);
        (*opt, value.clone(), format!("--{}", opt.key))
    });
    let flag_layer = layer(flag_values.collect())?;

    // A block (the S3 proxy, the HTTP or gRPC proxy) is on when the file
    // has it or another source sets one of its enabling keys (an endpoint,
    // a bucket, a URL); credentials or TLS files alone (a shared Kubernetes
    // secret, say) do not switch it on.
    let enabled: Vec<&str> = BLOCKS
        .iter()
        .filter(|(_, block, enabling)| {
            matches!(file_layer.get(*block), Some(Value::Mapping(_)))
                || [&env_layer, &flag_layer].into_iter().any(|layer| {
                    layer
                        .get(*block)
                        .and_then(Value::as_mapping)
                        .is_some_and(|b| enabling.iter().any(|k| b.contains_key(*k)))
                })
        })
        .map(|(_, block, _)| *block)
        .collect();

    let mut merged = file_layer;
    overlay(&mut merged, env_layer);
    overlay(&mut merged, flag_layer);
    for (_, block, _) in BLOCKS {
        if !enabled.contains(block) {
            merged.remove(*block);
        }
    }

    let schema = serde_path_to_error::deserialize(Value::Mapping(merged)).map_err(|err| {
        let key = err.path().to_string();
        ConfigError::Invalid {
            origin: provenance.origin(&key),
            message: err.into_inner().to_string(),
            key,
        }
    })?;
    Ok(Sources { schema, provenance })
}

/// An environment variable's value; empty counts as unset, because
/// orchestrators commonly render optional variables as empty strings.
fn env_value(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    env(var).filter(|value| !value.is_empty())
}

/// Builds a YAML mapping from `(option, raw string, source name)` triples.
fn layer(values: Vec<(&'static Opt, String, String)>) -> Result<Mapping, ConfigError> {
    let mut mapping = Mapping::new();
    for (opt, raw, origin) in values {
        let value = typed_value(opt.kind, &raw).map_err(|message| ConfigError::Invalid {
            key: opt.yaml_key(),
            message,
            origin: Some(origin),
        })?;
        match opt.yaml_path() {
            (Some(block), key) => {
                let entry = mapping
                    .entry(Value::from(block))
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
                if let Value::Mapping(inner) = entry {
                    inner.insert(Value::from(key), value);
                }
            }
            (None, key) => {
                mapping.insert(Value::from(key), value);
            }
        }
    }
    Ok(mapping)
}

/// Converts a flag or environment string into the YAML value its key's
/// schema type expects.
fn typed_value(kind: Kind, raw: &str) -> Result<Value, String> {
    match kind {
        // Durations are parsed by the schema's own type, like the file's.
        Kind::Str | Kind::Duration => Ok(Value::String(raw.to_owned())),
        Kind::Bool => parse_bool(raw)
            .map(Value::Bool)
            .ok_or_else(|| format!("invalid boolean {raw:?} (expected true or false)")),
        Kind::Int => raw
            .trim()
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .map_err(|_| format!("invalid integer {raw:?}")),
        Kind::Number => parse_number(raw).map(Value::Number),
        Kind::NumberList => raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| parse_number(item).map(Value::Number))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Sequence),
    }
}

/// Go's `strconv.ParseBool`, which is what bazel-remote's flags accept.
fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_number(raw: &str) -> Result<Number, String> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<i64>() {
        return Ok(n.into());
    }
    match raw.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n.into()),
        _ => Err(format!("invalid number {raw:?}")),
    }
}

/// Overlays `top` onto `base`: top-level keys are replaced, blocks
/// (`s3_proxy`, `http_proxy`, `grpc_proxy`) are merged key by key so that, for example, a credential from the
/// environment joins the file's endpoint and bucket.
fn overlay(base: &mut Mapping, top: Mapping) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Value::Mapping(base_block)), Value::Mapping(top_block)) => {
                base_block.extend(top_block);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The dotted keys of a file mapping, one level deep (the only nesting the
/// schema has).
fn yaml_keys(mapping: &Mapping) -> HashSet<String> {
    let mut keys = HashSet::new();
    for (key, value) in mapping {
        let Some(key) = key.as_str() else { continue };
        keys.insert(key.to_owned());
        if let Value::Mapping(block) = value {
            keys.extend(
                block
                    .keys()
                    .filter_map(Value::as_str)
                    .map(|inner| format!("{key}.{inner}")),
            );
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_a_schema_key() {
        // A typo in the option table would make its flag and env var fail
        // with "unknown field" at run time; catch it here instead.
        for opt in OPTIONS {
            let sample = match opt.kind {
                Kind::Str => "x",
                Kind::Bool => "true",
                Kind::Int | Kind::Number => "1",
                Kind::Duration => "1s",
                Kind::NumberList => "1,2",
            };
            let mapping = layer(vec![(opt, sample.to_owned(), "test".to_owned())]).unwrap();
            if let Err(err) = serde_yaml_ng::from_value::<Schema>(Value::Mapping(mapping)) {
                panic!("option {} does not fit the schema: {err}", opt.key);
            }
        }
    }

    #[test]
    fn every_schema_key_is_an_option() {
        // serde lists the known fields when it meets an unknown one.
        let probe = |yaml: &str| match serde_yaml_ng::from_str::<Schema>(yaml) {
            Ok(_) => panic!("probe accepted"),
            Err(err) => err.to_string(),
        };
        let unsupported: Vec<_> = UNSUPPORTED.iter().map(|u| u.block).collect();
        let mut probes = vec![(None, probe("zz_probe: 1"))];
        for (_, block, _) in BLOCKS {
            probes.push((Some(*block), probe(&format!("{block}: {{zz_probe: 1}}"))));
        }
        for (block, message) in probes {
            let fields: Vec<_> = message.split('`').skip(3).step_by(2).collect();
            let expected_at_least = match block {
                None => 40,
                Some("s3_proxy") => 15,
                Some(_) => 4,
            };
            assert!(fields.len() >= expected_at_least, "probe found {fields:?}");
            for field in fields {
                let is_block = BLOCKS.iter().any(|(_, b, _)| *b == field);
                if block.is_none() && (is_block || unsupported.contains(&field)) {
                    continue;
                }
                let yaml_key = match block {
                    Some(block) => format!("{block}.{field}"),
                    None => field.to_owned(),
                };
                assert!(by_yaml_key(&yaml_key).is_some(), "no option for {yaml_key}");
            }
        }
    }

    #[test]
    fn typed_values() {
        assert_eq!(typed_value(Kind::Bool, "T"), Ok(Value::Bool(true)));
        assert_eq!(typed_value(Kind::Bool, "0"), Ok(Value::Bool(false)));
        assert!(typed_value(Kind::Bool, "yes").is_err());
        assert_eq!(typed_value(Kind::Int, "-1"), Ok(Value::Number((-1).into())));
        assert!(typed_value(Kind::Int, "1.5").is_err());
        assert_eq!(
            typed_value(Kind::Number, "0.5"),
            Ok(Value::Number(0.5.into()))
        );
        assert!(typed_value(Kind::Number, "inf").is_err());
        assert_eq!(
            typed_value(Kind::NumberList, "1, 2.5,"),
            Ok(Value::Sequence(vec![
                Value::Number(1.into()),
                Value::Number(2.5.into())
            ]))
        );
    }

    #[test]
    fn overlay_merges_the_s3_block_and_replaces_the_rest() {
        let mut base: Mapping =
            serde_yaml_ng::from_str("dir: /a\ns3_proxy: {bucket: b, region: r}").unwrap();
        let top: Mapping =
            serde_yaml_ng::from_str("dir: /b\ns3_proxy: {region: s, access_key_id: k}").unwrap();
        overlay(&mut base, top);
        let expected: Mapping =
            serde_yaml_ng::from_str("dir: /b\ns3_proxy: {bucket: b, region: s, access_key_id: k}")
                .unwrap();
        assert_eq!(base, expected);
    }
}
