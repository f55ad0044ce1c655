//! `bazel-cache explain-miss` on the execution logs of real Bazel 4.2.3
//! builds against the real server (HTTP), over the fixture
//! `tests/e2e/explain-workspace` (a chain `src/a.txt → upper → count →
//! report`, and `other`, which reads only `src/b.txt`):
//!
//! (a) two builds, each with an empty local state (`clean --expunge`
//!     between them, so the second asks the remote cache for everything),
//!     `src/a.txt` changed in between: the tool names that file with both
//!     digests as the root cause, lists `count` and `report` after it as
//!     depending on the changed outputs, and names no unchanged input;
//! (c) an incremental third build (same output base, `src/a.txt` changed
//!     again) whose log lists only what ran: still the file, both digests;
//! (b) two builds with `--action_env=FOO=1`, then `FOO=2` (empty local
//!     state each time): every action misses and names `FOO` with both
//!     values (text and `--json`).
//!
//! Every case runs the CLI binary and asserts on what it printed, which is
//! also echoed to stderr (`--nocapture` shows it).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::e2e_bazel::{Workspace, require_bazel};
use crate::support::{self, RunOutput, Server};

const OUT: &str = "bazel-out/k8-fastbuild/bin";

/// `bazel-cache explain-miss <args>`.
fn explain_miss(args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazel-cache"));
    cmd.arg("explain-miss").args(args);
    support::run(&mut cmd, Duration::from_secs(60))
}

/// The report for two logs, printed to stderr with `what`; panics unless
/// the tool exits 0.
fn report(what: &str, before: &Path, after: &Path) -> String {
    let out = explain_miss(&[before.to_str().unwrap(), after.to_str().unwrap()]);
    out.assert_success(&format!("bazel-cache explain-miss ({what})"));
    eprintln!(
        "[e2e_explain] {what}: bazel-cache explain-miss said:\n{}",
        out.stdout
    );
    out.stdout
}

/// One block of the text report: header, output, reasons.
#[derive(Debug)]
struct Block {
    header: String,
    output: String,
    reasons: Vec<String>,
}

/// The blocks and the summary line of a text report.
fn blocks(text: &str) -> (Vec<Block>, String) {
    let mut parts: Vec<&str> = text.trim_end().split("\n\n").collect();
    let summary = parts.pop().unwrap().to_owned();
    let blocks = parts
        .into_iter()
        .map(|part| {
            let mut lines = part.lines();
            let header = lines.next().unwrap().to_owned();
            let output = lines
                .next()
                .and_then(|l| l.strip_prefix("  output: "))
                .unwrap_or_else(|| panic!("no output line in {part:?}"))
                .to_owned();
            let reasons = lines
                .map(|l| {
                    l.strip_prefix("  - ")
                        .unwrap_or_else(|| panic!("not a reason line: {l:?}"))
                        .to_owned()
                })
                .collect();
            Block {
                header,
                output,
                reasons,
            }
        })
        .collect();
    (blocks, summary)
}

/// `sha256/size` of `content`, as the tool writes digests.
fn digest(content: &str) -> String {
    format!(
        "{}/{}",
        hex::encode(Sha256::digest(content.as_bytes())),
        content.len()
    )
}

/// Every input path of the second log's misses whose digest is the same
/// in the first log: none of them may appear in the report.
fn unchanged_inputs(before: &Path, after: &Path) -> BTreeSet<String> {
    let read = |p: &Path| bazel_cache_explain::parse_log(&support::read(p)).unwrap();
    let (before, after) = (read(before), read(after));
    let mut unchanged = BTreeSet::new();
    for spawn in after.spawns.iter().filter(|s| !s.remote_cache_hit) {
        let Some(counterpart) = before
            .spawns
            .iter()
            .find(|b| b.primary_output() == spawn.primary_output())
        else {
            continue;
        };
        for input in &spawn.inputs {
            if counterpart.inputs.contains(input) {
                unchanged.insert(input.path.clone());
            }
        }
    }
    unchanged
}

fn assert_names_no_unchanged_input(text: &str, before: &Path, after: &Path) {
    let unchanged = unchanged_inputs(before, after);
    assert!(
        unchanged.contains("src/b.txt"),
        "expected src/b.txt among the unchanged inputs: {unchanged:?}"
    );
    for block in blocks(text).0 {
        for reason in &block.reasons {
            let named = reason
                .split_whitespace()
                .map(|word| word.trim_matches([',', ':', '(', ')']))
                .find(|word| unchanged.contains(*word));
            assert!(
                named.is_none(),
                "the report names {named:?}, an input that did not change:\n{text}"
            );
        }
    }
}

/// The report on two logs (each with the content `src/a.txt` had) says:
/// `upper` missed first (its source changed, both digests named), then
/// `count` and `report` as dependents of the outputs above them, and no
/// unchanged input.
fn assert_chain_explained(
    what: &str,
    (before, a_before): (&Path, &str),
    (after, a_after): (&Path, &str),
    summary: &str,
) {
    let text = &report(what, before, after);
    assert_names_no_unchanged_input(text, before, after);
    let (blocks, got_summary) = blocks(text);
    assert_eq!(got_summary, summary, "{text}");
    let shape: Vec<(&str, &str)> = blocks
        .iter()
        .map(|b| (b.header.as_str(), b.output.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("ROOT CAUSE Genrule //:upper", &*format!("{OUT}/upper.txt")),
            ("dependent  Genrule //:count", &*format!("{OUT}/count.txt")),
            (
                "dependent  Genrule //:report",
                &*format!("{OUT}/report.txt")
            ),
        ],
        "{text}"
    );
    assert_eq!(
        blocks[0].reasons,
        [format!(
            "input src/a.txt changed: {} -> {}",
            digest(a_before),
            digest(a_after)
        )],
        "{text}"
    );
    for (block, input, producer) in [
        (&blocks[1], "upper.txt", "//:upper"),
        (&blocks[2], "count.txt", "//:count"),
    ] {
        assert_eq!(block.reasons.len(), 1, "{text}");
        let prefix = format!("depends on {OUT}/{input} (output of {producer}), which changed: ");
        assert!(block.reasons[0].starts_with(&prefix), "{text}");
    }
}

#[test]
fn explain_miss_names_the_changed_file_and_the_changed_env() {
    require_bazel();
    let server = Server::start(&[]);
    let cache = server.http_url.as_str();
    let ws = Workspace::of("explain-workspace");
    let a = ws.root().join("src/a.txt");
    let (a1, a2, a3) = ("hello\n", "hello, world\n", "bye\n");

    // (a) Two builds from an empty local state, src/a.txt changed between.
    std::fs::write(&a, a1).unwrap();
    let first = ws.build(cache, "a1", &[]);
    ws.expunge();
    std::fs::write(&a, a2).unwrap();
    let second = ws.build(cache, "a2", &[]);
    assert_chain_explained(
        "(a) source changed",
        (first.exec_log(), a1),
        (second.exec_log(), a2),
        "4 actions in the second build: 1 remote cache hit, 3 missed \
         (1 root cause, 2 dependent); 4 in the first",
    );

    // (c) Incremental: the same output base, src/a.txt changed again; the
    //     log lists only the three actions that ran.
    std::fs::write(&a, a3).unwrap();
    let third = ws.build(cache, "a3-incremental", &[]);
    assert_chain_explained(
        "(c) incremental",
        (second.exec_log(), a2),
        (third.exec_log(), a3),
        "3 actions in the second build: 0 remote cache hits, 3 missed \
         (1 root cause, 2 dependent); 4 in the first",
    );

    // (b) --action_env=FOO=1, then FOO=2, each from an empty local state:
    //     every action's key changed, each for FOO alone.
    ws.expunge();
    let foo1 = ws.build(cache, "foo1", &["--action_env=FOO=1"]);
    ws.expunge();
    let foo2 = ws.build(cache, "foo2", &["--action_env=FOO=2"]);
    let text = report("(b) --action_env", foo1.exec_log(), foo2.exec_log());
    let (blocks, summary) = blocks(&text);
    assert_eq!(
        summary,
        "4 actions in the second build: 0 remote cache hits, 4 missed \
         (4 root causes, 0 dependent); 4 in the first",
        "{text}"
    );
    for block in &blocks {
        assert!(block.header.starts_with("ROOT CAUSE Genrule //:"), "{text}");
        assert_eq!(
            block.reasons,
            ["environment variable FOO: \"1\" -> \"2\""],
            "{text}"
        );
    }
    assert_names_no_unchanged_input(&text, foo1.exec_log(), foo2.exec_log());

    // The same as JSON, for scripts (and the web page's data).
    let out = explain_miss(&[
        "--json",
        foo1.exec_log().to_str().unwrap(),
        foo2.exec_log().to_str().unwrap(),
    ]);
    out.assert_success("bazel-cache explain-miss --json");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let misses = json["misses"].as_array().unwrap();
    assert_eq!(misses.len(), 4, "{json}");
    for miss in misses {
        assert_eq!(
            miss["reasons"],
            serde_json::json!([{"kind": "env_changed", "name": "FOO", "before": "1", "after": "2"}]),
            "{json}"
        );
    }
    ws.expunge();
}

/// Bad input: one line naming the file and the reason, exit status 2.
#[test]
fn explain_miss_refuses_bad_logs_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, "").unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "truncated.json",
            b"{\n  \"commandArgs\": [\"/bin/bash\",",
            "spawn 1 of the execution log, line 2 column",
        ),
        (
            "compact.log",
            &[0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x00],
            "compact execution logs are not supported; use --execution_log_json_file",
        ),
        (
            "binary.log",
            b"\x85\x03\x0a\x09/bin/bash",
            "not a JSON execution log",
        ),
    ];
    for (name, content, reason) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, content).unwrap();
        let out = explain_miss(&[good.to_str().unwrap(), bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{name}");
        let line = out.stderr.trim_end();
        assert!(!line.contains('\n'), "{name}: more than one line: {line}");
        assert!(
            line.starts_with(&format!("bazel-cache explain-miss: {}: ", bad.display())),
            "{name}: {line}"
        );
        assert!(line.contains(reason), "{name}: {line}");
    }
    let out = explain_miss(&[
        good.to_str().unwrap(),
        "--max-log-size",
        "1",
        good.to_str().unwrap(),
    ]);
    out.assert_success("two empty logs");
    let out = explain_miss(&["--help"]);
    out.assert_success("explain-miss --help");
    assert!(
        out.stdout.contains("--execution_log_json_file"),
        "{}",
        out.stdout
    );
    let out = explain_miss(&[good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
}
