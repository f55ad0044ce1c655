//! What of the Nix appliance (flake.nix, flake/, nix/, nixos-modules/) can
//! be checked on a machine without nixpkgs or a binary cache, i.e. CI's
//! Debian with only Debian's Nix 2.8 (`nix-bin`):
//!
//! - every `.nix` file parses (`nix-instantiate --parse`);
//! - `tests/nix/module-defaults.yaml`, the copy of what the NixOS module
//!   renders for its defaults, still equals `nixos-modules/defaults.nix`
//!   (evaluated by Nix, without nixpkgs), and the module takes its defaults
//!   from there;
//! - `bazel-cache check-config`, which the module runs on its rendered file
//!   at build time, accepts that copy and the design document's ConfigMap
//!   (with the Deployment's credentials in the environment), and rejects a
//!   typo the way a `nixos-rebuild` would then fail;
//! - the scenarios of the NixOS VM tests (nix/tests/), run here against the
//!   real binary the way the module's unit runs it (`support::unit`): a
//!   config file, no HOME, credentials only in the environment (what
//!   `environmentFile` gives):
//!   * vm-basic: `/status`, `/metrics` and gRPC health answer, a blob
//!     survives a SIGTERM and a restart (Bazel builds over HTTP and gRPC are
//!     tests/clients/e2e_bazel.rs);
//!   * vm-s3: two replicas with their own disks share one bucket; a blob
//!     written through one is read through the other (against s3s-fs, a
//!     real S3 server, where the VM test has MinIO): tests/s3/nix_module.rs.
//!
//! vm-rules-nixpkgs cannot run here (it needs nixpkgs and a Bazel with
//! Bzlmod; Debian has Bazel 4.2.3); its closest mirror is the gRPC test of
//! tests/clients/e2e_bazel.rs (a C++ build, expunged, rebuilt from cache
//! alone).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bazel_cache_digest::Hash;

use crate::support::unit::{Unit, blob, get, put, status};
use crate::support::{self, repo};

const NIX_HINT: &str = "apt-get install nix-bin (scripts/test.sh does)";

fn nix_instantiate() -> Command {
    support::require_tool("nix-instantiate", &["--version"], NIX_HINT);
    let mut cmd = Command::new("nix-instantiate");
    // Evaluation must not need a Nix store (a fresh CI machine has none,
    // and a Nix sandbox none writable), nor channels or NIX_PATH.
    cmd.args(["--option", "store", "dummy://"])
        .env_remove("NIX_PATH")
        .current_dir(repo());
    cmd
}

/// The `.nix` files of the repository (the flake, its parts, the module,
/// the VM tests, the Bazel workspace's, the test harness), skipping build
/// output and VCS directories.
fn nix_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().unwrap().is_dir() {
                if !matches!(name.as_ref(), "target" | ".git" | "node_modules")
                    && !name.starts_with("bazel-")
                {
                    walk(&path, out);
                }
            } else if name.ends_with(".nix") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(repo(), &mut out);
    out.sort();
    out
}

#[test]
fn every_nix_file_parses() {
    let files = nix_files();
    for required in [
        "flake.nix",
        "nixos-modules/bazel-cache.nix",
        "nixos-modules/defaults.nix",
        "tests/nix/eval-module.nix",
    ] {
        assert!(
            files.contains(&repo().join(required)),
            "{required} not found among {files:?}"
        );
    }
    for file in &files {
        let out = support::run(
            nix_instantiate().arg("--parse").arg(file),
            Duration::from_secs(60),
        );
        out.assert_success(&format!("nix-instantiate --parse {}", file.display()));
    }
}

fn yaml_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn module_defaults_yaml() -> PathBuf {
    repo().join("tests/nix/module-defaults.yaml")
}

#[test]
fn rendered_defaults_copy_equals_nix_defaults() {
    let out = support::run(
        nix_instantiate().args(["--eval", "--strict", "--json", "nixos-modules/defaults.nix"]),
        Duration::from_secs(60),
    );
    out.assert_success("nix-instantiate --eval nixos-modules/defaults.nix");
    let from_nix: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(from_nix.is_object(), "{from_nix}");
    let copy = yaml_file(&module_defaults_yaml());
    assert_eq!(
        copy, from_nix,
        "tests/nix/module-defaults.yaml is out of step with nixos-modules/defaults.nix"
    );

    // The module's typed options take their defaults from that file and
    // nowhere else, so the copy is what the module renders.
    let module = std::fs::read_to_string(repo().join("nixos-modules/bazel-cache.nix")).unwrap();
    assert!(module.contains("defaults = import ./defaults.nix;"));
    for key in from_nix.as_object().unwrap().keys() {
        assert!(
            module.contains(&format!("default = defaults.{key};")),
            "nixos-modules/bazel-cache.nix: option {key} does not default to defaults.{key}"
        );
    }
    // The unit has no HOME, so the binary's HOME-based default must never
    // be needed.
    assert!(copy["dir"].as_str().is_some_and(|d| d.starts_with('/')));
}

/// `bazel-cache check-config --config_file <file>` with HOME unset (as in
/// the module's build sandbox and its unit), plus `env`.
fn check_config(file: &Path, env: &[(&str, &str)]) -> support::RunOutput {
    let mut cmd = Command::new(support::server_binary());
    cmd.args(["check-config", "--config_file"])
        .arg(file)
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME");
    for (key, _) in std::env::vars() {
        if key.starts_with("BAZEL_REMOTE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    support::run(&mut cmd, Duration::from_secs(30))
}

#[test]
fn check_config_accepts_the_module_defaults() {
    let out = check_config(&module_defaults_yaml(), &[]);
    out.assert_success("check-config on tests/nix/module-defaults.yaml");
    assert!(
        out.stdout.contains("configuration is valid"),
        "{}",
        out.stdout
    );
}

#[test]
fn check_config_accepts_the_design_configmap_with_the_deployments_credentials() {
    let configmap = repo().join("tests/fixtures/design-configmap.yaml");
    let out = check_config(
        &configmap,
        &[
            ("BAZEL_REMOTE_S3_ACCESS_KEY_ID", "from-the-secret"),
            ("BAZEL_REMOTE_S3_SECRET_ACCESS_KEY", "from-the-secret-too"),
        ],
    );
    out.assert_success("check-config on the design ConfigMap");
    assert!(
        out.stdout.contains("configuration is valid"),
        "{}",
        out.stdout
    );

    // Without the Secret's variables the same file is refused, naming the
    // key: the check is real, and the module supplies placeholders for
    // exactly these when environmentFile promises them.
    let out = check_config(&configmap, &[]);
    assert!(!out.status.success(), "accepted without credentials");
    assert!(
        out.stderr.contains("s3_proxy.access_key_id"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_config_rejects_a_typo_as_the_module_build_would() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    let text = std::fs::read_to_string(module_defaults_yaml()).unwrap();
    std::fs::write(&file, text.replace("max_size:", "max_sise:")).unwrap();
    let out = check_config(&file, &[]);
    assert!(!out.status.success(), "a typo passed check-config");
    assert!(out.stderr.contains("max_sise"), "{}", out.stderr);
}

/// vm-basic's probes and restart, on the module's default configuration.
#[tokio::test]
async fn vm_basic_mirror_module_defaults_serve_probes_and_keep_the_index_across_a_restart() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let dir = tempfile::tempdir().unwrap();
    let unit = Unit::start(&module_defaults_yaml(), dir.path(), &[]);

    let st = status(&unit).await;
    assert_eq!(st["NumFiles"], 0, "{st}");
    assert_eq!(st["MaxSize"], 5u64 << 30, "max_size from the module: {st}");
    let (code, metrics) = get(&format!("{}/metrics", unit.http_url)).await;
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("bazel_remote_disk_cache_entries"),
        "{metrics}"
    );

    let grpc = unit.grpc_url.clone().expect("no gRPC .bazelrc line");
    let channel = tonic::transport::Channel::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let data = blob(100_000, 7);
    let path = format!("/cas/{}", Hash::of(&data));
    assert_eq!(
        put(&format!("{}{path}", unit.http_url), data.clone()).await,
        200
    );
    unit.stop();

    let unit = Unit::start(&module_defaults_yaml(), dir.path(), &[]);
    assert_eq!(
        status(&unit).await["NumFiles"],
        1,
        "index lost in the restart"
    );
    assert_eq!(get(&format!("{}{path}", unit.http_url)).await, (200, data));
    unit.stop();
}
