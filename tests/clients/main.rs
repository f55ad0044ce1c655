//! The `clients` test binary: real clients against the real server binary:
//! Bazel (Debian's Bazel 4.2.3, `bazel-bootstrap`) building the e2e
//! workspace over HTTP, gRPC, basic auth and TLS (`e2e_bazel`), ccache's
//! remote storage (`e2e_ccache`), migrating from bazel-remote with a new
//! cache in front of the old one (`e2e_migration`), Bazel's remote downloader over the Remote Asset API
//! (`e2e_remote_asset`), `bazel-cache explain-miss` on the execution logs of
//! real builds (`e2e_explain`), the web console in headless Chromium over
//! WebDriver after a real Bazel build (`web_browser`), and the deployment
//! kit's example workspace in that Bazel (`deploy::example`).
//! scripts/test.sh installs the tools. The `sandbox` nextest profile (.config/nextest.toml) leaves
//! this binary out: the Nix build sandbox has no Bazel 4.2.3 (the NixOS VM
//! tests run Bazel 7 instead).

#[path = "../support/mod.rs"]
mod support;

mod deploy {
    mod example;
}
mod e2e_bazel;
mod e2e_ccache;
mod e2e_explain;
mod e2e_migration;
mod e2e_remote_asset;
mod web_browser;
