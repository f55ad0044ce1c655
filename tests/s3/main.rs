//! The `s3` test binary: everything that needs a real S3 server, `s3s-fs`
//! (`cargo install s3s-fs@0.14.1 --locked --features binary`; scripts/test.sh
//! installs it; see tests/support/s3.rs): the S3 client (`s3_client`), the
//! proxy backend (`s3`), its upload order (`upload_order`), three replicas
//! restarted in turn under load (`rolling_restart`), replicas over one
//! bucket (`presence`: the presence cache, timestamp refreshes, AC
//! completeness across tiers), the S3 metrics and the design's alert rules
//! (`metrics`), the deployment kit's probes, alerts and dashboard against a
//! server with S3 behind it (`deploy`), and the vm-s3 mirror
//! (`nix_module`). The `sandbox` nextest profile (.config/nextest.toml)
//! leaves this binary out: nixpkgs has no s3s-fs.
//!
//! The S3 client over https with a private CA is tests/s3_tls.rs, a binary
//! of its own (it sets a process environment variable).

#[path = "../support/mod.rs"]
mod support;

mod deploy {
    mod monitoring;
    mod server;
}
mod metrics;
mod nix_module;
mod presence;
mod rolling_restart;
mod s3;
mod s3_client;
mod upload_order;
mod web;
