//! bazel-cache: a Bazel remote cache server, a drop-in for bazel-remote.
//!
//! This crate is the server: it reads the configuration, admits
//! connections, speaks the two protocols and hands every blob to the
//! storage crate. It holds no storage logic (`bazel-cache-store` does) and
//! no naming rules (`bazel-cache-digest` does). `docs/architecture.md` is
//! the map of the whole workspace; read it first.
//!
//! # Layout
//! - `main.rs`: the binary: config → logging → [`server::Server`]; signals,
//!   `check-config`, and `bench` handed to `bazel-cache-bench`.
//! - `server.rs`: start-up and shutdown: open the stores, bind, serve,
//!   drain; the idle timeout.
//! - `config/`: one validated `Config` from file < environment < flags;
//!   `options.rs` the table of every key, `defaults.rs` every default,
//!   `resolve.rs` validation; builds the store crate's config types.
//! - `listen/`: where connections are admitted: binding, the one accept
//!   loop with its TLS handshake (`accept.rs`), rustls and mTLS (`tls.rs`).
//! - `reload.rs`: the one watcher of files that change under a running
//!   server (htpasswd, TLS certificate and key).
//! - `auth/`: who may read and write: htpasswd entries, the rule both
//!   front ends apply, bcrypt off the async workers, cached verdicts.
//! - `http/`: bazel-remote's HTTP protocol (`/ac/`, `/cas/`, `/status`,
//!   `/metrics`), translated to store calls.
//! - `grpc/`: REAPI v2 cache services and ByteStream, translated likewise.
//! - `metrics/`: Prometheus `/metrics` and the access log, as layers and
//!   collectors around the front ends and over the stores' counters.
//! - `web/`: the web console (`/`, `/ui/`): overview, charts, action
//!   result explorer, cache-miss explanation; served by the HTTP front end.
//! - `log_writer.rs`: log lines written out in batches by a thread.
//! - `malloc_trim.rs`: gives memory freed after a burst back to the OS.
//! - `sd_notify.rs`: systemd readiness.

pub mod auth;
pub mod config;
pub mod grpc;
pub mod http;
pub(crate) mod listen;
pub mod log_writer;
pub mod malloc_trim;
pub(crate) mod metrics;
pub(crate) mod reload;
pub(crate) mod sd_notify;
pub mod server;
pub mod web;
