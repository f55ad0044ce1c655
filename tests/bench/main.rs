//! The `bench` test binary: `bazel-cache bench` (the load generator)
//! against the real server binary: HTTP and gRPC mixes, verification of what
//! it reads back, refused writes, setup errors, TLS, basic auth and mTLS.

#[path = "../support/mod.rs"]
mod support;

mod bench_cli;
