//! The example workspace in a real Bazel (4.2.3): every flag of its
//! `.bazelrc` and CI template is one Bazel knows for that command (or on a
//! list of newer flags), and its OpenTofu test rules run around a stand-in
//! `tofu`. Both skip, saying so, where `bazel` is not installed. (The core
//! it shares with the vm-rules-nixpkgs workspace: tests/deploy/example.rs.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hcl::Value;

use crate::support::deploy::{example_dir, module_dir, read, render_ok};
use crate::support::tofu::{Module, s};
use crate::support::{self, repo};

/// Flags of the example that Bazel 4.2.3 does not know, each with the Bazel
/// release that brought it. The example targets Bazel 7 (.bazelversion).
const NEWER_FLAGS: &[(&str, &str)] = &[
    (
        "enable_bzlmod",
        "Bazel 6 (5: --experimental_enable_bzlmod); the default since 7",
    ),
    ("experimental_remote_cache_async", "Bazel 5.0"),
    (
        "remote_cache_compression",
        "Bazel 7 (5 and 6: --experimental_remote_cache_compression)",
    ),
];

/// One flag as written in an rc line or command: `(command, config, name,
/// where)`.
type FlagUse = (String, Option<String>, String, String);

/// The flags of `.bazelrc`-style lines (`command[:config] --flag[=v] ...`).
fn rc_flags(text: &str, origin: &str) -> Vec<FlagUse> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let head = words.next().unwrap();
        if head == "try-import" || head == "import" {
            continue;
        }
        let (command, config) = match head.split_once(':') {
            Some((c, cfg)) => (c.to_string(), Some(cfg.to_string())),
            None => (head.to_string(), None),
        };
        for w in words {
            let flag = w
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{origin}:{}: {w:?} is not a --flag", i + 1));
            let name = flag.split('=').next().unwrap().to_string();
            out.push((
                command.clone(),
                config.clone(),
                name,
                format!("{origin}:{}", i + 1),
            ));
        }
    }
    out
}

/// The rc lines the CI template appends to user.bazelrc and the flags of its
/// `bazel <command>` invocations.
fn ci_template_flags() -> Vec<FlagUse> {
    let path = example_dir().join(".gitlab/ci/jobs/bazel-build.gitlab-ci.yml");
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(&path)).unwrap();
    let mut out = Vec::new();
    let echo = regex::Regex::new(r#"^echo "(.*)" >> user\.bazelrc$"#).unwrap();
    for (job, def) in yaml.as_mapping().unwrap() {
        let job = job.as_str().unwrap();
        for key in ["before_script", "script"] {
            for line in def[key].as_sequence().into_iter().flatten() {
                let line = line.as_str().unwrap();
                if let Some(cap) = echo.captures(line) {
                    out.extend(rc_flags(&cap[1], &format!("{job} user.bazelrc")));
                } else if let Some(rest) = line.split_once("bazel ").map(|(_, r)| r) {
                    let mut words = rest.split_whitespace();
                    let command = words.next().unwrap().to_string();
                    for w in words.filter(|w| w.starts_with("--")) {
                        let name = w[2..].split('=').next().unwrap().to_string();
                        out.push((command.clone(), None, name, format!("{job}: {line}")));
                    }
                }
            }
        }
    }
    out
}

/// `FlagCollection` of Bazel's `help flags-as-proto` (src/main/protobuf/
/// bazel_flags.proto), the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct FlagCollection {
    #[prost(message, repeated, tag = "1")]
    flag_infos: Vec<FlagInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FlagInfo {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bool, tag = "2")]
    has_negative_flag: bool,
    #[prost(string, repeated, tag = "4")]
    commands: Vec<String>,
}

#[test]
fn bazelrc_and_ci_flags_are_known_to_bazel() {
    let rc = read(example_dir().join(".bazelrc"));
    let mut flags = rc_flags(&rc, ".bazelrc");
    flags.extend(ci_template_flags());
    assert!(flags.len() > 30, "{flags:?}");

    // Configs: every --config=X names one the .bazelrc defines, and the
    // design's three are there.
    let defined: BTreeSet<String> = flags.iter().filter_map(|f| f.1.clone()).collect();
    for c in ["ci-internal", "remote", "ci"] {
        assert!(defined.contains(c), "config {c} of the design is missing");
    }
    let config_ref = regex::Regex::new(r"--config=([A-Za-z0-9_-]+)").unwrap();
    let ci = read(example_dir().join(".gitlab/ci/jobs/bazel-build.gitlab-ci.yml"));
    for cap in config_ref.captures_iter(&format!("{rc}\n{ci}")) {
        assert!(
            defined.contains(&cap[1]),
            "--config={} is not defined",
            &cap[1]
        );
    }
    // The endpoints are the module's outputs for the design's usage block.
    let module = Module::load(&module_dir());
    let r = render_ok(
        &module,
        &[
            ("enable_ingress", Value::Bool(true)),
            (
                "ingress_host",
                Value::from("bazel-cache.prod-cluster.example.com"),
            ),
        ],
    );
    let remote_cache = |config: &str| {
        let prefix = format!("build:{config} --remote_cache=");
        rc.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}"))
            .to_string()
    };
    assert_eq!(remote_cache("ci-internal"), s(r.output("grpc_endpoint")));
    assert_eq!(
        remote_cache("remote"),
        s(r.output("external_grpc_endpoint"))
    );

    // One Bazel run: every flag it knows, with the commands taking each.
    if Command::new("bazel").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: bazel is not installed (apt-get install bazel-bootstrap, or run scripts/test.sh); \
             the .bazelrc flags were not checked against Bazel"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bazel");
    cmd.current_dir(tmp.path())
        // The system bazelrc (Debian's --install_base) must stay.
        .arg("--nohome_rc")
        .arg(format!(
            "--output_user_root={}",
            tmp.path().join("root").display()
        ))
        .arg("--batch")
        .args(["help", "flags-as-proto"])
        .env_remove("USE_BAZEL_VERSION")
        .env_remove("BAZELISK_HOME");
    let out = support::run(&mut cmd, Duration::from_secs(180));
    out.assert_success("bazel help flags-as-proto");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out.stdout.trim())
        .expect("flags-as-proto prints base64");
    let known: BTreeMap<String, FlagInfo> = <FlagCollection as prost::Message>::decode(&bytes[..])
        .expect("a FlagCollection")
        .flag_infos
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
    assert!(known.contains_key("remote_cache"), "{} flags", known.len());

    let newer: BTreeMap<&str, &str> = NEWER_FLAGS.iter().copied().collect();
    let mut used_newer = BTreeSet::new();
    let mut problems = Vec::new();
    for (command, _, name, origin) in &flags {
        let info = known.get(name).or_else(|| {
            name.strip_prefix("no")
                .and_then(|positive| known.get(positive))
                .filter(|f| f.has_negative_flag)
        });
        match info {
            None if newer.contains_key(name.as_str()) => {
                used_newer.insert(name.as_str());
            }
            None => problems.push(format!(
                "{origin}: --{name} is unknown to Bazel 4.2.3 and not in NEWER_FLAGS"
            )),
            Some(_) if newer.contains_key(name.as_str()) => problems.push(format!(
                "--{name} is in NEWER_FLAGS but Bazel 4.2.3 knows it"
            )),
            Some(info) => {
                // `common` lines apply to every command that has the flag
                // (Bazel 7's rule); others need their command to have it.
                let ok = command == "common" || info.commands.iter().any(|c| c == command);
                if !ok {
                    problems.push(format!(
                        "{origin}: --{name} is not a `{command}` option (it is one of {:?})",
                        info.commands
                    ));
                }
            }
        }
    }
    for name in newer.keys() {
        if !used_newer.contains(name) {
            problems.push(format!("NEWER_FLAGS lists --{name}, which nothing uses"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "[deploy] {} flag uses checked against Bazel 4.2.3 ({} known flags); newer: {:?}",
        flags.len(),
        known.len(),
        NEWER_FLAGS
    );
}

/// A stand-in for `tofu` in the Bazel test below: it reports every call, has
/// `fmt -check` fail for a file containing `NOT FORMATTED`, and has
/// `validate` list the module copy it runs in.
const STAND_IN_TOFU: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "stand-in tofu: $*"
case "$1" in
  fmt)
    file="${!#}"
    if grep -q "NOT FORMATTED" "$file"; then echo "stand-in tofu: $file needs formatting"; exit 3; fi ;;
  init)
    mkdir .terraform ;;
  validate)
    echo "stand-in tofu: validating $(ls -A | LC_ALL=C sort | tr '\n' ' ')" ;;
esac
"#;

/// build/tofu.bzl and tofu/modules/BUILD.bazel of the example, unchanged, in
/// a real Bazel (4.2.3: the rules are plain Starlark) with `@opentofu` built
/// from the example's own build_file_content around a stand-in tofu: the
/// format test runs tofu on every file and fails for a badly formatted one
/// (the design's version checked nothing), the validate test runs
/// `init -backend=false` and `validate` in a writable copy of the module with
/// its links resolved (the design's version could not find the module).
#[test]
fn tofu_rules_run_tofu_on_every_file_and_on_a_module_copy() {
    if Command::new("bazel").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: bazel is not installed (run scripts/test.sh); the tofu rules were not run"
        );
        return;
    }
    let ex = example_dir();
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    for f in [
        "build/BUILD.bazel",
        "build/tofu.bzl",
        "tofu/modules/BUILD.bazel",
    ] {
        write(&ws.join(f), &read(ex.join(f)));
    }
    std::os::unix::fs::symlink(module_dir(), ws.join("tofu/modules/bazel-cache")).unwrap();
    write(
        &ws.join("tofu/modules/other/bad.tf"),
        "# NOT FORMATTED\nlocals {\nx=1\n}\n",
    );

    // @opentofu as the example's MODULE.bazel defines it, around the stand-in.
    let module_bazel = read(ex.join("MODULE.bazel"));
    let build_file = module_bazel
        .split_once("attr = \"opentofu\",")
        .and_then(|(_, rest)| rest.split_once("build_file_content = \"\"\""))
        .and_then(|(_, rest)| rest.split_once("\"\"\""))
        .expect("the opentofu package's build_file_content")
        .0;
    let tofu_repo = tmp.path().join("opentofu");
    write(&tofu_repo.join("WORKSPACE"), "");
    write(&tofu_repo.join("BUILD.bazel"), build_file);
    write(&tofu_repo.join("bin/tofu"), STAND_IN_TOFU);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tofu_repo.join("bin/tofu"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // Offline: the e2e fixture's stand-ins for what Bazel 4.2.3's tests would
    // download (see tests/e2e/bazel-workspace/WORKSPACE).
    let third_party = repo().join("tests/e2e/bazel-workspace/third_party");
    let mut workspace = format!(
        "local_repository(name = \"opentofu\", path = \"{}\")\n",
        tofu_repo.display()
    );
    for r in ["rules_cc", "rules_java", "remote_coverage_tools"] {
        workspace += &format!(
            "local_repository(name = \"{r}\", path = \"{}\")\n",
            third_party.join(r).display()
        );
    }
    write(&ws.join("WORKSPACE"), &workspace);

    let mut cmd = Command::new("bazel");
    cmd.current_dir(&ws)
        .arg("--nohome_rc")
        .arg(format!(
            "--output_user_root={}",
            tmp.path().join("root").display()
        ))
        .arg("--batch")
        .args([
            "test",
            "//tofu/modules:all_module_tests",
            "--keep_going",
            "--test_output=all",
            "--disk_cache=",
            "--nosandbox_debug",
            "--experimental_repository_disable_download",
            "--color=no",
            "--curses=no",
        ])
        .env_remove("USE_BAZEL_VERSION")
        .env_remove("BAZELISK_HOME");
    let out = support::run(&mut cmd, Duration::from_secs(300));
    let log = format!("{}\n{}", out.stdout, out.stderr);
    // bad.tf makes the format test, and so the run, fail (exit 3: tests
    // failed); the validate test passes.
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("//tofu/modules:fmt_test") && log.contains("FAILED"),
        "{log}"
    );
    assert!(
        log.contains("ERROR: tofu/modules/other/bad.tf is not formatted"),
        "{log}"
    );
    let module = Module::load(&module_dir());
    for (file, _) in &module.files {
        let call =
            format!("stand-in tofu: fmt -check -diff -no-color tofu/modules/bazel-cache/{file}");
        assert!(log.contains(&call), "no `{call}` in\n{log}");
    }
    assert!(
        log.contains("stand-in tofu: init -backend=false -input=false -no-color"),
        "{log}"
    );
    let validating = log
        .lines()
        .find_map(|l| l.strip_prefix("stand-in tofu: validating "))
        .unwrap_or_else(|| panic!("validate did not run:\n{log}"));
    // The copy holds the whole module (links resolved), and init could
    // write into it.
    let listed: BTreeSet<String> = validating.split_whitespace().map(String::from).collect();
    let mut expected: BTreeSet<String> = std::fs::read_dir(module_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    expected.insert(".terraform".into());
    assert_eq!(listed, expected, "{log}");
    assert!(
        log.contains("//tofu/modules:bazel-cache_validate") && log.contains("PASSED"),
        "{log}"
    );
}
