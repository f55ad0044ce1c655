//! The `bench` test binary: `bazel-cache bench` (the load generator)
//! against the real server binary: HTTP and gRPC mixes, verification of what
//! it reads back, refused writes, setup errors, TLS, basic auth and mTLS;
//! BLAKE3 loads (`--digest_function blake3`) and `--hash_rate`.

#[path = "../support/mod.rs"]
mod support;

mod bench_cli;
mod digest_function;
