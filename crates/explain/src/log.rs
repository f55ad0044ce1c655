//! What one build ran: the `SpawnExec` messages of Bazel's execution log, as
//! `--execution_log_json_file` writes them (protobuf's JSON mapping, so
//! camelCase names and 64-bit integers as strings). Only what the cache key
//! of an action is made of, and what says whether it hit, is kept; unknown
//! fields are ignored and absent ones default, so logs of newer Bazel
//! versions (which add `targetLabel`, `digest`, `metrics`, ...) parse too.

use serde::{Deserialize, Deserializer, Serialize};

/// The spawns of one build, in the order Bazel logged them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecLog {
    pub spawns: Vec<Spawn>,
}

/// One spawn (a process Bazel ran, or looked up in a cache instead).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Spawn {
    pub command_args: Vec<String>,
    pub environment_variables: Vec<NameValue>,
    pub platform: Platform,
    pub inputs: Vec<File>,
    pub listed_outputs: Vec<String>,
    pub remotable: bool,
    pub cacheable: bool,
    pub progress_message: String,
    pub mnemonic: String,
    pub actual_outputs: Vec<File>,
    /// Bazel 4.2.3 writes `"remote cache hit"` for hits and the strategy
    /// that ran the process (`linux-sandbox`, `processwrapper-sandbox`,
    /// `local`, `worker`, `remote`) otherwise.
    pub runner: String,
    pub remote_cache_hit: bool,
    pub status: String,
    pub exit_code: i32,
    /// Newer Bazel only; 4.2.3 names the target in `progressMessage` alone.
    pub target_label: String,
}

/// An environment variable or a platform property.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Platform {
    pub properties: Vec<NameValue>,
}

/// An input or output file and its digest (absent for a directory input).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct File {
    pub path: String,
    pub digest: Option<Digest>,
    pub is_tool: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Digest {
    pub hash: String,
    /// An int64, which protobuf's JSON mapping writes as a string; a number
    /// is accepted too.
    #[serde(deserialize_with = "int_or_string")]
    pub size_bytes: i64,
    /// `SHA-256` in Bazel 4.2.3; empty in some newer logs.
    pub hash_function_name: String,
}

impl Digest {
    /// Whether both name the same content (the hash function's name is
    /// not compared: a different function gives a different hash anyway).
    pub fn same_content(&self, other: &Digest) -> bool {
        self.hash == other.hash && self.size_bytes == other.size_bytes
    }
}

/// `hash/size`, as bazel-remote and Bazel's own messages write digests.
impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.hash, self.size_bytes)
    }
}

impl Spawn {
    /// What identifies the action across builds and machines: its primary
    /// output. Bazel lists outputs sorted by path in the execution log, and
    /// the smallest is taken whatever the order, so two Bazel versions that
    /// order differently still agree. Falls back to the outputs Bazel
    /// saw, then to the mnemonic and progress message (a spawn without
    /// outputs, which no real action is).
    pub fn primary_output(&self) -> String {
        let smallest = |files: &mut dyn Iterator<Item = &str>| files.min().map(str::to_owned);
        smallest(&mut self.listed_outputs.iter().map(String::as_str))
            .or_else(|| smallest(&mut self.actual_outputs.iter().map(|f| f.path.as_str())))
            .unwrap_or_else(|| format!("({} {})", self.mnemonic, self.progress_message))
    }

    /// The target's label: `targetLabel` when the log has it, else the
    /// first label in the progress message (`Executing genrule //:upper`,
    /// `Testing //pkg:test`); `Compiling src/a.cc` names none.
    pub fn target(&self) -> Option<String> {
        if !self.target_label.is_empty() {
            return Some(self.target_label.clone());
        }
        self.progress_message
            .split_whitespace()
            .find(|word| word.contains("//") && (word.starts_with("//") || word.starts_with('@')))
            .map(|word| word.trim_end_matches([',', ';', ']', ')']).to_owned())
    }

    /// The action for a person: its target, else its progress message
    /// (`Compiling src/a.cc [for host]`: C++ actions name no label in
    /// Bazel 4.2.3), else its primary output.
    pub fn describe(&self) -> String {
        self.target()
            .or_else(|| (!self.progress_message.is_empty()).then(|| self.progress_message.clone()))
            .unwrap_or_else(|| self.primary_output())
    }

    /// Every path this spawn writes.
    pub fn outputs(&self) -> impl Iterator<Item = &str> {
        self.listed_outputs
            .iter()
            .map(String::as_str)
            .chain(self.actual_outputs.iter().map(|f| f.path.as_str()))
    }
}

fn int_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Str(String),
    }
    match IntOrString::deserialize(deserializer)? {
        IntOrString::Int(n) => Ok(n),
        IntOrString::Str(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("sizeBytes {s:?} is not an integer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(listed: &[&str], progress: &str) -> Spawn {
        Spawn {
            listed_outputs: listed.iter().map(|s| s.to_string()).collect(),
            progress_message: progress.to_owned(),
            ..Spawn::default()
        }
    }

    #[test]
    fn the_primary_output_is_the_smallest_listed_path() {
        assert_eq!(spawn(&["b/y", "a/x"], "").primary_output(), "a/x");
        let mut s = spawn(&[], "Linking x");
        s.mnemonic = "CppLink".into();
        assert_eq!(s.primary_output(), "(CppLink Linking x)");
        s.actual_outputs.push(File {
            path: "out/x".into(),
            ..File::default()
        });
        assert_eq!(s.primary_output(), "out/x");
    }

    #[test]
    fn the_target_comes_from_the_label_or_the_progress_message() {
        assert_eq!(
            spawn(&[], "Executing genrule //:upper").target().as_deref(),
            Some("//:upper")
        );
        assert_eq!(
            spawn(&[], "Testing @repo//pkg:t;").target().as_deref(),
            Some("@repo//pkg:t")
        );
        assert_eq!(spawn(&[], "Compiling src/a.cc").target(), None);
        let mut s = spawn(&[], "Executing genrule //:upper");
        s.target_label = "//x:y".into();
        assert_eq!(s.target().as_deref(), Some("//x:y"));
    }

    #[test]
    fn an_action_is_described_by_label_then_message_then_output() {
        assert_eq!(spawn(&["o"], "Testing //:t").describe(), "//:t");
        assert_eq!(
            spawn(&["o"], "Linking hello [for host]").describe(),
            "Linking hello [for host]"
        );
        assert_eq!(spawn(&["o"], "").describe(), "o");
    }
}
