//! bazel-cache: a Bazel remote cache server. See README.md and
//! ../shared/design/architecture.md for how the pieces fit.

pub mod config;
pub mod digest;
pub mod store;
