//! The example workspace: the core it shares with the vm-rules-nixpkgs
//! workspace. (Its Bazel flags and its OpenTofu test rules in a real Bazel:
//! tests/clients/deploy/example.rs.)

use std::path::PathBuf;

use crate::support::deploy::{dashboard_path, example_dir, module_dir, read};
use crate::support::repo;

/// The example shares the vm-rules-nixpkgs workspace's core: the linked
/// files are that workspace's, and every statement of its MODULE.bazel
/// (besides `module()`) is in the example's, word for word.
#[test]
fn shares_the_rules_nixpkgs_core() {
    let ex = example_dir();
    let e2e = repo().join("tests/e2e/rules-nixpkgs");
    let real = |p: PathBuf| {
        p.canonicalize()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    for f in [
        "nix_cc.bzl",
        "nixpkgs.nix",
        "BUILD.bazel",
        "hello.cc",
        "greeting.cc",
        "greeting.h",
        "flake.lock",
    ] {
        assert_eq!(real(ex.join(f)), real(e2e.join(f)), "{f}");
    }
    assert_eq!(
        real(ex.join("tofu/modules/bazel-cache")),
        real(module_dir()),
        "the tofu tests run over the project's module"
    );
    assert_eq!(
        real(module_dir().join("dashboards/bazel-cache.json")),
        real(dashboard_path()),
        "the module ships the one dashboard"
    );

    /// Top-level statements of a MODULE.bazel, whitespace-normalized,
    /// without comments and the docstring.
    fn statements(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = String::new();
        let mut depth = 0i32;
        let mut in_doc = false;
        for line in text.lines() {
            let t = line.trim();
            if in_doc {
                in_doc = !t.contains("\"\"\"");
                continue;
            }
            if t.starts_with("\"\"\"") && depth == 0 {
                in_doc = !(t.len() > 3 && t[3..].contains("\"\"\""));
                continue;
            }
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
            let t = t.split(" #").next().unwrap();
            current.push_str(t);
            current.push(' ');
            depth += t.matches(['(', '[', '{']).count() as i32;
            depth -= t.matches([')', ']', '}']).count() as i32;
            if depth == 0 {
                out.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
                current.clear();
            }
        }
        out
    }
    let ours = statements(&read(ex.join("MODULE.bazel")));
    let core = statements(&read(e2e.join("MODULE.bazel")));
    assert!(core.len() >= 10, "{core:#?}");
    for statement in core.iter().filter(|s| !s.starts_with("module(")) {
        assert!(
            ours.contains(statement),
            "the example's MODULE.bazel lacks the core statement\n  {statement}\nof tests/e2e/rules-nixpkgs/MODULE.bazel"
        );
    }
    // The tofu tests name only modules that exist.
    let build = read(ex.join("tofu/modules/BUILD.bazel"));
    let list = build
        .split_once("MODULES = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .expect("MODULES")
        .0;
    for module in regex::Regex::new(r#""([^"]+)""#)
        .unwrap()
        .captures_iter(list)
    {
        assert!(
            ex.join("tofu/modules")
                .join(&module[1])
                .join("main.tf")
                .is_file(),
            "module {}",
            &module[1]
        );
    }
}
