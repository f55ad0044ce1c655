//! Why did my build miss the cache? Given the execution logs of two Bazel
//! builds of the same targets (`--execution_log_json_file`), lists the
//! actions of the second build that were not remote cache hits and, for
//! each, what differs from the first build: platform properties, the
//! command line, environment variables, input files. The action whose own
//! inputs or settings changed (the root cause) comes before the actions
//! that missed only because they consume its changed output.
//!
//! The logs usually come from two machines (CI and a laptop), each listing
//! every action, hits included; a log of an incremental build lists only
//! what ran, and both shapes are handled. The server binary runs this as
//! `bazel-cache explain-miss` ([`cli`]); the web console's `/ui/explain`
//! renders a [`Report`] from its public fields.
//!
//! Both [`parse_log`] and [`explain`] are CPU-bound and synchronous (a
//! 90 MB log takes seconds): an async caller runs them on a blocking
//! thread.
//!
//! # Layout
//!
//! * `log.rs`: [`ExecLog`], [`Spawn`] and the rest of the log's messages, as
//!   Bazel 4.2.3 writes them (newer fields tolerated).
//! * `parse.rs`: [`parse_log`] (a stream of JSON objects), [`ParseError`],
//!   size limits, reading a file.
//! * `compare.rs`: what differs between two runs of one action.
//! * `reason.rs`: [`Reason`], one difference, and how it reads.
//! * `explain.rs`: [`explain`]: matching actions by primary output, root
//!   causes vs dependent misses, the order; [`Report`] and [`Miss`].
//! * `report.rs`: [`Report::to_text`].
//! * `cli.rs`: the `explain-miss` command line.

pub mod cli;
mod compare;
mod explain;
mod log;
mod parse;
mod reason;
mod report;

pub use explain::{Miss, Report, explain};
pub use log::{Digest, ExecLog, File, NameValue, Platform, Spawn};
pub use parse::{DEFAULT_MAX_LOG_BYTES, ParseError, parse_log, parse_log_limited, read_log_file};
pub use reason::Reason;

#[cfg(test)]
mod tests;
