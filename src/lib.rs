//! bazel-cache: a Bazel remote cache server. See README.md and
//! ../shared/design/architecture.md for how the pieces fit.

pub mod ac;
pub mod auth;
pub mod bench;
pub mod config;
pub mod digest;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod sd_notify;
pub mod server;
pub mod store;
pub mod tls;
