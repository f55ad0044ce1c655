//! Why one action missed: what differs between its two runs, each as a
//! [`Reason`] a person can read (`Display`) and a page can render (public
//! fields). Digests are written `hash/size`.

use serde::Serialize;

/// One thing that differs (or the lack of a counterpart to compare with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The action was never looked up in the remote cache (a `no-cache`,
    /// `no-remote` or `no-remote-cache` tag, or a spawn Bazel does not
    /// cache); what else differs does not matter for it.
    NotCacheable { remotable: bool, cacheable: bool },
    /// A platform property (part of the action's key) differs.
    PlatformChanged {
        name: String,
        before: Option<String>,
        after: Option<String>,
    },
    /// The command line differs, first at argument `first_difference`
    /// (0-based); `None` where one command line is shorter.
    ArgumentsChanged {
        first_difference: usize,
        before: Option<String>,
        after: Option<String>,
    },
    /// An environment variable differs (`None`: unset in that build).
    EnvChanged {
        name: String,
        before: Option<String>,
        after: Option<String>,
    },
    /// The builds hashed files with different digest functions (SHA-256,
    /// BLAKE3, ...), so every input differs; the inputs are not listed.
    DigestFunctionChanged { before: String, after: String },
    /// A source file (no action of either build produced it) changed.
    InputChanged {
        path: String,
        before: String,
        after: String,
    },
    /// An input only the second build has; `generated` when an action of
    /// either build produces it.
    InputAdded {
        path: String,
        digest: String,
        generated: bool,
    },
    /// An input only the first build had.
    InputRemoved {
        path: String,
        digest: String,
        generated: bool,
    },
    /// The action's outputs other than the primary one differ (output
    /// paths are part of the key).
    OutputsChanged {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// An input produced by another action changed: this action missed
    /// because that one's output did. `producer` is that action's target
    /// (else its progress message, else its primary output) when a log
    /// has it.
    DependsOnChangedOutput {
        path: String,
        before: String,
        after: String,
        producer: Option<String>,
    },
    /// The first log has no action with this primary output: a new action,
    /// or the first log came from an incremental build that did not run it.
    NotInFirstLog,
    /// Nothing the log shows differs: the same action was in the first
    /// build, yet the cache did not have its result.
    NoDifference {
        before_runner: String,
        before_hit: bool,
        before_exit_code: i32,
    },
}

impl Reason {
    /// Whether this difference is the action's own (a root cause) rather
    /// than inherited from another action's changed output.
    pub fn is_own(&self) -> bool {
        match self {
            Reason::DependsOnChangedOutput { .. } => false,
            Reason::InputAdded { generated, .. } | Reason::InputRemoved { generated, .. } => {
                !generated
            }
            _ => true,
        }
    }
}

/// Arguments longer than this are shown around their first difference.
const ARG_SHOWN: usize = 120;

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NotCacheable {
                remotable,
                cacheable,
            } => {
                let what = match (remotable, cacheable) {
                    (false, false) => "neither remotable nor cacheable",
                    (false, true) => "not remotable",
                    _ => "not cacheable",
                };
                write!(
                    f,
                    "never looked up in the remote cache: the action is {what} \
                     (a no-cache / no-remote tag, or an action Bazel does not cache)"
                )
            }
            Reason::PlatformChanged {
                name,
                before,
                after,
            } => write!(
                f,
                "platform property {name}: {} -> {}",
                value(before),
                value(after)
            ),
            Reason::ArgumentsChanged {
                first_difference,
                before,
                after,
            } => {
                let (b, a) = excerpts(before.as_deref(), after.as_deref());
                write!(
                    f,
                    "command line differs at argument {first_difference}: {b} -> {a}"
                )
            }
            Reason::EnvChanged {
                name,
                before,
                after,
            } => write!(
                f,
                "environment variable {name}: {} -> {}",
                value(before),
                value(after)
            ),
            Reason::DigestFunctionChanged { before, after } => write!(
                f,
                "the builds use different digest functions ({before} -> {after}): \
                 every input differs (--digest_function)"
            ),
            Reason::InputChanged {
                path,
                before,
                after,
            } => write!(f, "input {path} changed: {before} -> {after}"),
            Reason::InputAdded {
                path,
                digest,
                generated,
            } => write!(
                f,
                "{}input {path} added ({digest})",
                generated_word(*generated)
            ),
            Reason::InputRemoved {
                path,
                digest,
                generated,
            } => write!(
                f,
                "{}input {path} removed (was {digest})",
                generated_word(*generated)
            ),
            Reason::OutputsChanged { added, removed } => {
                write!(f, "outputs differ:")?;
                for a in added {
                    write!(f, " +{a}")?;
                }
                for r in removed {
                    write!(f, " -{r}")?;
                }
                Ok(())
            }
            Reason::DependsOnChangedOutput {
                path,
                before,
                after,
                producer,
            } => {
                write!(f, "depends on {path}")?;
                if let Some(p) = producer {
                    write!(f, " (output of {p})")?;
                }
                write!(f, ", which changed: {before} -> {after}")
            }
            Reason::NotInFirstLog => f.write_str(
                "not in the first log: a new action, or the first build did not run it \
                 (a log of an incremental build lists only what ran)",
            ),
            Reason::NoDifference {
                before_runner,
                before_hit,
                before_exit_code,
            } => {
                f.write_str("nothing in the logs differs from the first build, ")?;
                if *before_hit {
                    f.write_str(
                        "where it was a remote cache hit: the result has left the cache since \
                         (evicted?)",
                    )
                } else if *before_exit_code != 0 {
                    write!(
                        f,
                        "where it failed (exit code {before_exit_code}): failed actions are \
                         not cached"
                    )
                } else {
                    write!(
                        f,
                        "where it ran ({before_runner}): its result was not uploaded \
                         (--remote_upload_local_results=false, a failed upload) or has left \
                         the cache since"
                    )
                }
            }
        }
    }
}

fn generated_word(generated: bool) -> &'static str {
    if generated { "generated " } else { "" }
}

fn value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "(unset)".to_owned(),
    }
}

/// Two differing arguments as shown: whole when short, otherwise a window
/// around their first differing character, marked with `…`.
fn excerpts(before: Option<&str>, after: Option<&str>) -> (String, String) {
    let (b, a) = (before.unwrap_or(""), after.unwrap_or(""));
    let common = b
        .char_indices()
        .zip(a.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| b.len().min(a.len()));
    let show = |v: Option<&str>| match v {
        None => "(absent)".to_owned(),
        Some(s) if s.chars().count() <= ARG_SHOWN => format!("{s:?}"),
        Some(s) => format!("{:?}", window(s, common)),
    };
    (show(before), show(after))
}

/// Up to 40 characters before byte `at` (a char boundary of both strings'
/// common prefix) and 80 from it.
fn window(s: &str, at: usize) -> String {
    let at = at.min(s.len());
    let start = s[..at].char_indices().rev().nth(39).map_or(0, |(i, _)| i);
    let end = s[at..]
        .char_indices()
        .nth(80)
        .map_or(s.len(), |(i, _)| at + i);
    format!(
        "{}{}{}",
        if start > 0 { "…" } else { "" },
        &s[start..end],
        if end < s.len() { "…" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_arguments_are_shown_around_their_first_difference() {
        let prefix = "x".repeat(200);
        let r = Reason::ArgumentsChanged {
            first_difference: 2,
            before: Some(format!("{prefix}AAA tail")),
            after: Some(format!("{prefix}BBB tail")),
        };
        let text = r.to_string();
        assert!(
            text.starts_with("command line differs at argument 2: \"…"),
            "{text}"
        );
        assert!(text.contains("AAA tail\" -> \"…"), "{text}");
        assert!(text.ends_with("BBB tail\""), "{text}");
        assert!(text.len() < 200, "{text}");
        let short = Reason::ArgumentsChanged {
            first_difference: 3,
            before: None,
            after: Some("-O2".into()),
        };
        assert_eq!(
            short.to_string(),
            "command line differs at argument 3: (absent) -> \"-O2\""
        );
        // Multi-byte characters around the cut never split.
        let wide = "é".repeat(300);
        let r = Reason::ArgumentsChanged {
            first_difference: 0,
            before: Some(format!("{wide}a")),
            after: Some(format!("{wide}b")),
        };
        assert!(r.to_string().contains("é"));
    }

    #[test]
    fn env_and_inputs_read_as_a_person_would_say_them() {
        let r = Reason::EnvChanged {
            name: "FOO".into(),
            before: Some("1".into()),
            after: None,
        };
        assert_eq!(r.to_string(), "environment variable FOO: \"1\" -> (unset)");
        let r = Reason::InputChanged {
            path: "src/a.txt".into(),
            before: "aa/1".into(),
            after: "bb/2".into(),
        };
        assert_eq!(r.to_string(), "input src/a.txt changed: aa/1 -> bb/2");
        let r = Reason::DependsOnChangedOutput {
            path: "bazel-out/x".into(),
            before: "aa/1".into(),
            after: "bb/2".into(),
            producer: Some("//:x".into()),
        };
        assert_eq!(
            r.to_string(),
            "depends on bazel-out/x (output of //:x), which changed: aa/1 -> bb/2"
        );
        assert!(!r.is_own());
    }
}
