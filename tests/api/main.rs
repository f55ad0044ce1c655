//! The `api` test binary: the real server binary, started per test on a
//! fresh directory, as its clients meet it: the HTTP and gRPC front ends,
//! ByteStream, authentication and TLS, the command line and configuration,
//! logs, metrics, lifecycle, limits and hostile input. Needs `openssl`,
//! `htpasswd` (apache2-utils) and `curl`; nothing else outside the
//! repository. One module per area (each was its own binary before).
//!
//! `limits::privileged` needs root (it mounts a tmpfs); the `sandbox`
//! nextest profile (.config/nextest.toml) leaves it out.

#[path = "../support/mod.rs"]
mod support;

mod adopt;
mod auth;
mod auth_flood;
mod blake3;
mod chunking;
mod cli;
mod config;
mod current_clients;
mod grpc;
mod grpc_bytestream;
mod hostile;
mod http;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod remote_asset;
mod url_proxies;
mod web;
