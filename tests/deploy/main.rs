//! The `deploy` test binary: the deployment kit (`deploy/`,
//! `examples/bazel-nix-workspace/`) and the Nix appliance, checked with what
//! runs here without OpenTofu, Kubernetes, Grafana, nixpkgs or Bazel 7:
//!
//! - `module`: the OpenTofu module is parsed with a real HCL parser and
//!   *evaluated* (variables with their defaults, validations, locals,
//!   resources, preconditions, outputs) by a small evaluator over hcl-rs
//!   (tests/support/tofu.rs), with the OpenTofu functions the module calls
//!   implemented there; its interface is the design document's;
//! - `server`: the ConfigMap it renders for the design document's usage
//!   block loads in the server's `check-config`;
//! - `example`: the example workspace shares the vm-rules-nixpkgs
//!   workspace's core;
//! - `nix_module`: every `.nix` file parses, the NixOS module's defaults
//!   match the copy `check-config` accepts, and the vm-basic scenario runs
//!   against the real binary (needs Debian's Nix 2.8, `nix-bin`).
//!
//! What needs more lives in other binaries: a real server from the rendered
//! config answering the probes, and the PrometheusRule and Grafana
//! dashboard against its `/metrics`, need s3s-fs (tests/s3/deploy/); the
//! example's `.bazelrc` flags and OpenTofu test rules in a real Bazel are
//! tests/clients/deploy/example.rs; the vm-s3 mirror is
//! tests/s3/nix_module.rs. What they share is tests/support/deploy.rs.

#[path = "../support/mod.rs"]
mod support;

mod example;
mod module;
mod nix_module;
mod server;
