//! The whole path (parse, explain, text) on small hand-written logs shaped
//! like Bazel 4.2.3's: a chain `src/a.txt → upper → count → report` plus an
//! independent `other`, in full logs (hits included) and incremental ones.

use crate::{ExecLog, Reason, Report, explain, parse_log};

const OUT: &str = "bazel-out/k8-fastbuild/bin";

/// One spawn as Bazel writes it; `inputs` are (path, hash, size).
struct S<'a> {
    target: &'a str,
    output: String,
    args: Vec<String>,
    env: Vec<(&'a str, &'a str)>,
    platform: Vec<(&'a str, &'a str)>,
    inputs: Vec<(String, String, u64)>,
    hit: bool,
}

impl<'a> S<'a> {
    fn new(target: &'a str, output: &str) -> S<'a> {
        S {
            target,
            output: format!("{OUT}/{output}"),
            args: vec!["/bin/bash".into(), "-c".into(), format!("make {output}")],
            env: vec![("PATH", "/bin:/usr/bin")],
            platform: vec![],
            inputs: vec![(
                "external/bazel_tools/tools/genrule/genrule-setup.sh".into(),
                "bed4".into(),
                858,
            )],
            hit: false,
        }
    }
    fn input(mut self, path: &str, hash: &str, size: u64) -> Self {
        self.inputs.push((path.to_owned(), hash.to_owned(), size));
        self
    }
    fn generated(self, output: &str, hash: &str, size: u64) -> Self {
        self.input(&format!("{OUT}/{output}"), hash, size)
    }
    fn hit(mut self) -> Self {
        self.hit = true;
        self
    }
    fn json(&self) -> String {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
                .collect::<Vec<_>>()
        };
        let inputs: Vec<_> = self
            .inputs
            .iter()
            .map(|(p, h, s)| {
                serde_json::json!({"path": p, "digest": {"hash": h, "sizeBytes": s.to_string(), "hashFunctionName": "SHA-256"}})
            })
            .collect();
        let spawn = serde_json::json!({
            "commandArgs": self.args,
            "environmentVariables": pairs(&self.env),
            "platform": {"properties": pairs(&self.platform)},
            "inputs": inputs,
            "listedOutputs": [self.output],
            "remotable": true,
            "cacheable": true,
            "timeoutMillis": "0",
            "progressMessage": format!("Executing genrule {}", self.target),
            "mnemonic": "Genrule",
            "actualOutputs": [{"path": self.output, "digest": {"hash": "00", "sizeBytes": "1"}}],
            "runner": if self.hit { "remote cache hit" } else { "linux-sandbox" },
            "remoteCacheHit": self.hit,
            "status": "",
            "exitCode": 0,
            "remoteCacheable": true,
        });
        serde_json::to_string_pretty(&spawn).unwrap()
    }
}

/// A log as Bazel writes it: the objects back to back.
fn log(spawns: &[S]) -> ExecLog {
    let text: String = spawns.iter().map(S::json).collect();
    parse_log(text.as_bytes()).unwrap()
}

/// The chain with `a.txt` at `a`, and what its outputs are then.
fn chain(a: (&str, u64), upper: &str, count: &str, hits: bool) -> Vec<S<'static>> {
    let hit = |s: S<'static>| if hits { s.hit() } else { s };
    vec![
        hit(S::new("//:other", "other.txt").input("src/b.txt", "bbbb", 6)),
        S::new("//:upper", "upper.txt").input("src/a.txt", a.0, a.1),
        S::new("//:count", "count.txt").generated("upper.txt", upper, a.1),
        S::new("//:report", "report.txt")
            .generated("count.txt", count, 2)
            .input("src/b.txt", "bbbb", 6),
    ]
}

fn reasons(report: &Report, output: &str) -> Vec<Reason> {
    let path = format!("{OUT}/{output}");
    report
        .misses
        .iter()
        .find(|m| m.primary_output == path)
        .unwrap_or_else(|| panic!("no miss for {path}: {report:#?}"))
        .reasons
        .clone()
}

fn order(report: &Report) -> Vec<(&str, bool)> {
    report
        .misses
        .iter()
        .map(|m| (m.target.as_deref().unwrap_or("?"), m.root_cause))
        .collect()
}

#[test]
fn a_changed_source_is_the_root_cause_and_its_consumers_follow() {
    let before = log(&chain(("a1", 6), "u1", "c1", false));
    let after = log(&chain(("a2", 7), "u2", "c2", true));
    let report = explain(&before, &after);
    assert_eq!(report.hits(), 1);
    assert_eq!(
        order(&report),
        [
            ("//:upper", true),
            ("//:count", false),
            ("//:report", false)
        ]
    );
    assert_eq!(
        reasons(&report, "upper.txt"),
        [Reason::InputChanged {
            path: "src/a.txt".into(),
            before: "a1/6".into(),
            after: "a2/7".into()
        }]
    );
    assert_eq!(
        reasons(&report, "count.txt"),
        [Reason::DependsOnChangedOutput {
            path: format!("{OUT}/upper.txt"),
            before: "u1/6".into(),
            after: "u2/7".into(),
            producer: Some("//:upper".into()),
        }]
    );
    // report.txt also reads src/b.txt, unchanged: never a reason.
    let report_reasons = reasons(&report, "report.txt");
    assert_eq!(report_reasons.len(), 1, "{report_reasons:?}");
    assert!(
        matches!(&report_reasons[0], Reason::DependsOnChangedOutput { path, .. } if path.ends_with("count.txt"))
    );
    assert_eq!(report.misses[1].depth, 1);
    assert_eq!(report.misses[2].depth, 2);

    let text = report.to_text();
    assert!(text.starts_with("ROOT CAUSE Genrule //:upper\n  output: bazel-out/k8-fastbuild/bin/upper.txt\n  - input src/a.txt changed: a1/6 -> a2/7\n"), "{text}");
    assert!(text.contains("dependent  Genrule //:count\n"), "{text}");
    assert!(!text.contains("src/b.txt"), "{text}");
    assert!(
        text.ends_with("4 actions in the second build: 1 remote cache hit, 3 missed (1 root cause, 2 dependent); 4 in the first\n"),
        "{text}"
    );
}

#[test]
fn misses_are_ordered_by_cause_then_depth_whatever_the_log_order() {
    let before = log(&chain(("a1", 6), "u1", "c1", false));
    let mut after = chain(("a2", 7), "u2", "c2", true);
    after.reverse();
    let report = explain(&before, &log(&after));
    assert_eq!(
        order(&report),
        [
            ("//:upper", true),
            ("//:count", false),
            ("//:report", false)
        ]
    );
}

#[test]
fn args_env_and_platform_are_named_with_both_values() {
    let before = log(&[S {
        env: vec![("FOO", "1"), ("PATH", "/bin"), ("GONE", "x")],
        platform: vec![("OSFamily", "Linux")],
        ..S::new("//:upper", "upper.txt").input("src/a.txt", "aa", 1)
    }]);
    let mut after = S {
        env: vec![("PATH", "/bin"), ("FOO", "2")],
        platform: vec![("OSFamily", "Linux"), ("pool", "big")],
        ..S::new("//:upper", "upper.txt").input("src/a.txt", "aa", 1)
    };
    after.args.push("-v".into());
    let report = explain(&before, &log(&[after]));
    assert_eq!(order(&report), [("//:upper", true)]);
    assert_eq!(
        reasons(&report, "upper.txt"),
        [
            Reason::PlatformChanged {
                name: "pool".into(),
                before: None,
                after: Some("big".into())
            },
            Reason::ArgumentsChanged {
                first_difference: 3,
                before: None,
                after: Some("-v".into())
            },
            Reason::EnvChanged {
                name: "FOO".into(),
                before: Some("1".into()),
                after: Some("2".into())
            },
            Reason::EnvChanged {
                name: "GONE".into(),
                before: Some("x".into()),
                after: None
            },
        ]
    );
    let text = report.to_text();
    assert!(
        text.contains("  - environment variable FOO: \"1\" -> \"2\"\n"),
        "{text}"
    );
}

#[test]
fn an_env_change_everywhere_makes_every_miss_a_root_cause() {
    let with_env = |v: &'static str, hits: bool| -> Vec<S<'static>> {
        chain(("a1", 6), "u1", "c1", hits)
            .into_iter()
            .map(|s| S {
                env: vec![("FOO", v), ("PATH", "/bin:/usr/bin")],
                ..s
            })
            .collect()
    };
    let report = explain(&log(&with_env("1", false)), &log(&with_env("2", false)));
    assert_eq!(report.misses.len(), 4);
    assert_eq!(report.root_causes(), 4);
    for m in &report.misses {
        assert_eq!(
            m.reasons,
            [Reason::EnvChanged {
                name: "FOO".into(),
                before: Some("1".into()),
                after: Some("2".into())
            }]
        );
    }
}

#[test]
fn an_incremental_second_log_lists_only_what_ran() {
    let before = log(&chain(("a1", 6), "u1", "c1", false));
    // The second build ran upper and count (count's output came out the
    // same, so report did not run) and nothing else.
    let after = log(&[
        S::new("//:count", "count.txt").generated("upper.txt", "u2", 6),
        S::new("//:upper", "upper.txt").input("src/a.txt", "a2", 6),
    ]);
    let report = explain(&before, &after);
    assert_eq!(order(&report), [("//:upper", true), ("//:count", false)]);
    assert_eq!(
        reasons(&report, "upper.txt"),
        [Reason::InputChanged {
            path: "src/a.txt".into(),
            before: "a1/6".into(),
            after: "a2/6".into()
        }]
    );
    assert!(report.to_text().contains("2 actions in the second build: 0 remote cache hits, 2 missed (1 root cause, 1 dependent); 4 in the first"));
}

#[test]
fn an_incremental_first_log_gives_not_in_first_log_without_error() {
    // The first log ran only `other`; the second is a full build.
    let before = log(&[S::new("//:other", "other.txt").input("src/b.txt", "bbbb", 6)]);
    let after = log(&chain(("a2", 7), "u2", "c2", true));
    let report = explain(&before, &after);
    assert_eq!(
        order(&report),
        [
            ("//:upper", true),
            ("//:count", false),
            ("//:report", false)
        ]
    );
    for m in &report.misses {
        assert_eq!(m.reasons, [Reason::NotInFirstLog]);
    }
}

#[test]
fn an_unchanged_miss_says_the_cache_lacked_it() {
    let before = log(&[S::new("//:upper", "upper.txt")
        .input("src/a.txt", "aa", 1)
        .hit()]);
    let after = log(&[S::new("//:upper", "upper.txt").input("src/a.txt", "aa", 1)]);
    let report = explain(&before, &after);
    assert_eq!(
        report.misses[0].reasons,
        [Reason::NoDifference {
            before_runner: "remote cache hit".into(),
            before_hit: true,
            before_exit_code: 0
        }]
    );
    assert!(report.misses[0].root_cause);
    assert!(report.to_text().contains("evicted"));
}

#[test]
fn added_and_removed_inputs_and_generated_ones() {
    let before = log(&[
        S::new("//:gen", "gen.txt"),
        S::new("//:use", "use.txt").input("src/old.h", "o", 1),
    ]);
    let after = log(&[
        S::new("//:gen", "gen.txt").hit(),
        S::new("//:use", "use.txt")
            .input("src/new.h", "n", 2)
            .generated("gen.txt", "g", 3),
    ]);
    let report = explain(&before, &after);
    assert_eq!(
        reasons(&report, "use.txt"),
        [
            Reason::InputAdded {
                path: format!("{OUT}/gen.txt"),
                digest: "g/3".into(),
                generated: true
            },
            Reason::InputAdded {
                path: "src/new.h".into(),
                digest: "n/2".into(),
                generated: false
            },
            Reason::InputRemoved {
                path: "src/old.h".into(),
                digest: "o/1".into(),
                generated: false
            },
        ]
    );
    assert!(report.misses[0].root_cause);
}

#[test]
fn only_a_generated_input_added_is_not_a_root_cause() {
    let before = log(&[S::new("//:gen", "gen.txt"), S::new("//:use", "use.txt")]);
    let after = log(&[
        S::new("//:gen", "gen.txt"),
        S::new("//:use", "use.txt").generated("gen.txt", "g", 3),
    ]);
    let report = explain(&before, &after);
    assert_eq!(order(&report), [("//:gen", true), ("//:use", false)]);
}

#[test]
fn a_different_digest_function_is_one_reason_not_every_input() {
    let before = log(&[S::new("//:upper", "upper.txt").input("src/a.txt", "aa", 1)]);
    let text = S::new("//:upper", "upper.txt")
        .input("src/a.txt", "bb", 1)
        .json()
        .replace("SHA-256", "BLAKE3");
    let report = explain(&before, &parse_log(text.as_bytes()).unwrap());
    assert_eq!(
        report.misses[0].reasons,
        [Reason::DigestFunctionChanged {
            before: "SHA-256".into(),
            after: "BLAKE3".into()
        }]
    );
}

#[test]
fn a_not_cacheable_action_says_so_first() {
    let before = log(&[S::new("//:t", "t.txt")]);
    let text = S::new("//:t", "t.txt")
        .json()
        .replace("\"remotable\": true", "\"remotable\": false");
    let after = parse_log(text.as_bytes()).unwrap();
    let report = explain(&before, &after);
    // Nothing else differs: the one reason, no "nothing differs".
    assert_eq!(
        report.misses[0].reasons,
        [Reason::NotCacheable {
            remotable: false,
            cacheable: true
        }]
    );
    assert!(report.misses[0].root_cause);
    // Without a counterpart, still a root cause of its own.
    let report = explain(&ExecLog::default(), &after);
    assert_eq!(report.misses[0].reasons.len(), 2);
    assert!(report.misses[0].root_cause);
}

#[test]
fn empty_logs_and_all_hits_explain_nothing() {
    let empty = ExecLog::default();
    let report = explain(&empty, &empty);
    assert!(report.misses.is_empty());
    assert_eq!(
        report.to_text(),
        "0 actions in the second build: 0 remote cache hits, 0 missed (0 root causes, 0 dependent); 0 in the first\n"
    );
    let hits = log(&chain(("a", 1), "u", "c", false)
        .into_iter()
        .map(S::hit)
        .collect::<Vec<_>>());
    let report = explain(&empty, &hits);
    assert_eq!(report.hits(), 4);
    assert!(report.to_text().contains("nothing to explain"));
}

#[test]
fn the_report_serializes_for_the_web_page() {
    let report = explain(
        &log(&chain(("a1", 6), "u1", "c1", false)),
        &log(&chain(("a2", 7), "u2", "c2", true)),
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["misses"][0]["reasons"][0]["kind"], "input_changed");
    assert_eq!(json["misses"][0]["reasons"][0]["path"], "src/a.txt");
    assert_eq!(json["misses"][0]["root_cause"], true);
    assert_eq!(json["cache_hits"], 1);
}

/// A cycle (which Bazel never builds) must neither hang nor panic.
#[test]
fn a_cycle_of_misses_terminates() {
    let before = log(&[S::new("//:x", "x.txt"), S::new("//:y", "y.txt")]);
    let after = log(&[
        S::new("//:x", "x.txt").generated("y.txt", "y", 1),
        S::new("//:y", "y.txt").generated("x.txt", "x", 1),
    ]);
    let report = explain(&before, &after);
    assert_eq!(report.misses.len(), 2);
}

#[test]
fn different_configurations_are_named_once() {
    let before = log(&chain(("a1", 6), "u1", "c1", false));
    let text: String = chain(("a1", 6), "u1", "c1", false)
        .iter()
        .map(S::json)
        .collect::<String>()
        .replace("k8-fastbuild", "k8-opt");
    let report = explain(&before, &parse_log(text.as_bytes()).unwrap());
    assert_eq!(report.misses.len(), 4);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].starts_with(
            "the builds share no output directory (first: bazel-out/k8-fastbuild; second: bazel-out/k8-opt)"
        ),
        "{}",
        report.notes[0]
    );
    assert!(
        report
            .to_text()
            .contains("\nnote: the builds share no output directory")
    );
    // Matching builds get no note.
    let report = explain(&before, &before);
    assert!(report.notes.is_empty());
}

/// Real Bazel 4.2.3 logs of a C++ build (testdata/README.md): both compiles
/// of the edited file are root causes naming it, the links and the genrule
/// that runs the binary depend on them, the unchanged header and main.cc
/// are never named.
#[test]
fn a_real_cpp_build_with_an_edited_source() {
    let before = parse_log(include_bytes!("../testdata/cc-before.json")).unwrap();
    let after = parse_log(include_bytes!("../testdata/cc-after.json")).unwrap();
    let report = explain(&before, &after);
    let text = report.to_text();
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ROOT") || l.starts_with("dependent"))
        .collect();
    assert_eq!(
        headers,
        [
            "ROOT CAUSE CppCompile: Compiling src/greet.cc [for host]",
            "ROOT CAUSE CppCompile: Compiling src/greet.cc",
            "dependent  CppLink: Linking hello [for host]",
            "dependent  CppLink: Linking hello",
            "dependent  Genrule //:hello_out",
        ],
        "{text}"
    );
    for miss in &report.misses[..2] {
        assert_eq!(miss.reasons.len(), 1, "{text}");
        assert!(
            matches!(&miss.reasons[0], Reason::InputChanged { path, before, after }
                if path == "src/greet.cc" && before.ends_with("/204") && after.ends_with("/204") && before != after),
            "{text}"
        );
    }
    assert!(
        text.contains("  - depends on bazel-out/host/bin/hello (output of Linking hello [for host]), which changed: "),
        "{text}"
    );
    for unchanged in [
        "src/greet.h",
        "src/main.cc",
        "hello-2.params",
        "genrule-setup.sh",
    ] {
        assert!(!text.contains(unchanged), "{unchanged} named:\n{text}");
    }
    assert!(text.ends_with("7 actions in the second build: 2 remote cache hits, 5 missed (2 root causes, 3 dependent); 7 in the first\n"), "{text}");
}
