//! What the deployment-kit checks share (tests/deploy, and the parts of
//! them that need s3s-fs in tests/s3/deploy or Bazel in
//! tests/clients/deploy): where the module, dashboard and example are, the
//! design document's section 2 and its usage block, rendering the module
//! for it, and a server started from the rendered ConfigMap.

use std::path::{Path, PathBuf};

use hcl::Value;
use hcl::eval::{Context, Evaluate};

use super::s3::S3Server;
use super::tofu::{Module, Rendered, at, render, s};
use super::{Server, repo};

// ---------------------------------------------------------------------------
// Where things are
// ---------------------------------------------------------------------------

pub(crate) fn module_dir() -> PathBuf {
    repo().join("deploy/tofu/modules/bazel-cache")
}

pub(crate) fn dashboard_path() -> PathBuf {
    repo().join("deploy/grafana/bazel-cache.json")
}

pub(crate) fn example_dir() -> PathBuf {
    repo().join("examples/bazel-nix-workspace")
}

pub(crate) fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The design document's section 2 (the module it describes)
// ---------------------------------------------------------------------------

/// Section 2 of the design document, read from the document beside the
/// repository (`../shared/design/`, as CI lays it out) when it is there;
/// `tests/fixtures/design-module-tf.txt` is a copy for checkouts without it
/// and must not drift from the original.
pub(crate) fn design_section_2() -> String {
    let copy = read(repo().join("tests/fixtures/design-module-tf.txt"));
    match std::fs::read_to_string(repo().join("../shared/design/remote-cache-design.txt")) {
        Ok(doc) => {
            let start = doc
                .find("2. bazel-remote Module Design\n")
                .expect("section 2 of the design document");
            let end = doc
                .find("3. rules_nixpkgs Integration Patterns\n")
                .expect("section 3 of the design document");
            let section = doc[start..end].to_string();
            assert_eq!(
                section, copy,
                "tests/fixtures/design-module-tf.txt differs from the design document"
            );
            section
        }
        Err(_) => copy,
    }
}

/// The text between two headings of section 2.
pub(crate) fn design_part<'a>(section: &'a str, from: &str, to: Option<&str>) -> &'a str {
    let start = section.find(from).unwrap_or_else(|| panic!("{from:?}")) + from.len();
    let rest = &section[start..];
    match to {
        Some(to) => &rest[..rest.find(to).unwrap_or_else(|| panic!("{to:?}"))],
        None => rest,
    }
}

/// The inputs of the design's usage block (main.tf's header comment), as a
/// team would have written them; `source` left out.
pub(crate) fn design_usage_inputs() -> Vec<(String, Value)> {
    let section = design_section_2();
    let main_tf = design_part(
        &section,
        "2.2 Main Configuration (main.tf)\n",
        Some("terraform {"),
    );
    let uncommented: String = main_tf
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let block = &uncommented[uncommented
        .find("module \"bazel_cache\"")
        .expect("the usage block")..];
    let block = &block[..block.find("\n}").expect("end of the usage block") + 2];
    let body = hcl::parse(block).expect("the usage block parses as HCL");
    let module = body.blocks().next().expect("a module block");
    module
        .body()
        .attributes()
        .filter(|a| a.key.as_str() != "source")
        .map(|a| {
            let v = a.expr.evaluate(&Context::new()).expect("a literal");
            (a.key.as_str().to_string(), v)
        })
        .collect()
}

/// The usage block's inputs plus `extra` (which override).
pub(crate) fn inputs_with(extra: &[(&str, Value)]) -> Vec<(String, Value)> {
    let mut inputs = design_usage_inputs();
    for (k, v) in extra {
        inputs.retain(|(name, _)| name != k);
        inputs.push((k.to_string(), v.clone()));
    }
    inputs
}

pub(crate) fn render_ok(module: &Module, extra: &[(&str, Value)]) -> Rendered {
    render(module, &inputs_with(extra)).unwrap_or_else(|e| panic!("render {extra:?}: {e}"))
}

// ---------------------------------------------------------------------------
// The rendered ConfigMap, served
// ---------------------------------------------------------------------------

/// The ConfigMap's `config.yaml`.
pub(crate) fn config_yaml(r: &Rendered) -> &str {
    s(at(
        r.resource("kubernetes_config_map.config"),
        "data.config.yaml",
    ))
}

/// Starts the server on the rendered config, as the pod would, except that
/// it listens on 127.0.0.1 with free ports, keeps its data in a temporary
/// `dir`, and finds S3 at s3s-fs with its credentials (flags override the
/// file). Returns the server and the config file's directory.
pub(crate) fn start_from_config(
    yaml: &str,
    s3: &S3Server,
    extra: &[&str],
) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let file = file.display().to_string();
    let mut args = vec![
        "--config_file",
        &file,
        "--http_address",
        "127.0.0.1:0",
        "--grpc_address",
        "127.0.0.1:0",
        "--max_size",
        "1",
        "--s3.endpoint",
        &s3.endpoint,
        "--s3.bucket",
        &s3.bucket,
        "--s3.access_key_id",
        &s3.access_key,
        "--s3.secret_access_key",
        &s3.secret_key,
    ];
    args.extend_from_slice(extra);
    (Server::start(&args), dir)
}
