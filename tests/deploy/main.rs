//! The deployment kit (`deploy/`, `examples/bazel-nix-workspace/`) against
//! what can run here: no OpenTofu, Kubernetes, Grafana or Bazel 7 exist on
//! this machine, so
//!
//! - the OpenTofu module is parsed with a real HCL parser and *evaluated*
//!   (variables with their defaults, validations, locals, resources,
//!   preconditions, outputs) by a small evaluator over hcl-rs, with the
//!   OpenTofu functions the module calls implemented here;
//! - the ConfigMap it renders for the design document's usage block loads in
//!   the server's `check-config`, and a real server started from it serves
//!   the Deployment's probe paths and ports (with basic auth on, so the
//!   probes are shown to need no credentials);
//! - every metric the PrometheusRule and the Grafana dashboard query is
//!   exported by a running server (with S3 behind it, s3s-fs), with the
//!   labels the queries match and group on and a type that fits the
//!   function applied (PromQL parsed by promql-parser);
//! - every flag of the example `.bazelrc` and CI template is one that the
//!   real Bazel 4.2.3 knows for that command, or on a list of newer flags,
//!   each with the release that brought it (one `bazel help flags-as-proto`);
//! - the example's OpenTofu test rules run in that Bazel around a stand-in
//!   `tofu`, and the example shares the vm-rules-nixpkgs workspace's core.
//!
//! The module evaluator is `tofu.rs`; the PromQL checks live with the
//! Prometheus helpers in `tests/common/prometheus.rs`. The two Bazel tests
//! skip, saying so, where `bazel` is not installed; the S3 ones need s3s-fs
//! (`.ci/run` installs both).

#[path = "../common/mod.rs"]
mod common;
mod example;
mod module;
mod monitoring;
mod server;
mod tofu;

use std::path::{Path, PathBuf};

use hcl::Value;
use hcl::eval::{Context, Evaluate};
use tofu::{Module, Rendered, render};

// ---------------------------------------------------------------------------
// Where things are
// ---------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn module_dir() -> PathBuf {
    repo().join("deploy/tofu/modules/bazel-cache")
}

fn dashboard_path() -> PathBuf {
    repo().join("deploy/grafana/bazel-cache.json")
}

fn example_dir() -> PathBuf {
    repo().join("examples/bazel-nix-workspace")
}

fn read(path: impl AsRef<Path>) -> String {
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
fn design_section_2() -> String {
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
fn design_part<'a>(section: &'a str, from: &str, to: Option<&str>) -> &'a str {
    let start = section.find(from).unwrap_or_else(|| panic!("{from:?}")) + from.len();
    let rest = &section[start..];
    match to {
        Some(to) => &rest[..rest.find(to).unwrap_or_else(|| panic!("{to:?}"))],
        None => rest,
    }
}

/// The inputs of the design's usage block (main.tf's header comment), as a
/// team would have written them; `source` left out.
fn design_usage_inputs() -> Vec<(String, Value)> {
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
fn inputs_with(extra: &[(&str, Value)]) -> Vec<(String, Value)> {
    let mut inputs = design_usage_inputs();
    for (k, v) in extra {
        inputs.retain(|(name, _)| name != k);
        inputs.push((k.to_string(), v.clone()));
    }
    inputs
}

fn render_ok(module: &Module, extra: &[(&str, Value)]) -> Rendered {
    render(module, &inputs_with(extra)).unwrap_or_else(|e| panic!("render {extra:?}: {e}"))
}
