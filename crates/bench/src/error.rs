//! Two kinds of failure: [`BenchError`] stops the run before or outside the
//! measurement (bad options, unreachable target, a prefill the server
//! refuses), [`OpError`] is one failed request during the measurement,
//! counted by [`OpError::kind`] in the report.

use std::fmt;

/// Why the load generator could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option has an unusable value.
    #[error("{flag}: {message}")]
    Usage { flag: &'static str, message: String },
    /// The target URL is malformed or uses an unknown scheme.
    #[error("target URL {url:?}: {message}")]
    Url { url: String, message: String },
    /// A TLS file could not be read or used.
    #[error("{flag} {path}: {message}")]
    TlsFile {
        flag: &'static str,
        path: String,
        message: String,
    },
    /// Connecting to the target or asking it for its capabilities failed.
    #[error("cannot use {target}: {message}")]
    Connect { target: String, message: String },
    /// `--metrics_url` or `--server_pid` cannot be read.
    #[error("cannot measure the server's CPU from {from}: {message}")]
    ServerCpu { from: String, message: String },
    /// Uploading the blobs that reads are made of failed.
    #[error("prefill: {0}")]
    Prefill(OpError),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// An HTTP answer other than the expected one.
    Http { status: u16, context: String },
    /// A gRPC call (or one blob of a batch) failed with this code.
    Grpc { code: tonic::Code, context: String },
    /// The connection failed or broke mid-request.
    Transport(String),
    /// A read returned bytes that do not hash to the blob's name.
    Corrupt { what: String },
    /// A read's zstd stream does not decode.
    Undecodable { what: String, message: String },
    /// A read returned the wrong number of bytes.
    WrongSize {
        what: String,
        expected: u64,
        got: u64,
    },
    /// The server answered something that contradicts what it was sent
    /// (a FindMissingBlobs answer naming a stored blob, a write committing
    /// the wrong size).
    WrongAnswer(String),
    /// No answer within `--timeout`.
    Timeout,
}

impl OpError {
    /// The category the report counts errors by: `HTTP 404`,
    /// `gRPC NotFound`, `transport`, `corrupt`, `wrong size`,
    /// `wrong answer`, `timeout`.
    pub(crate) fn kind(&self) -> String {
        match self {
            OpError::Http { status, .. } => format!("HTTP {status}"),
            OpError::Grpc { code, .. } => format!("gRPC {code:?}"),
            OpError::Transport(_) => "transport".to_owned(),
            OpError::Corrupt { .. } | OpError::Undecodable { .. } => "corrupt".to_owned(),
            OpError::WrongSize { .. } => "wrong size".to_owned(),
            OpError::WrongAnswer(_) => "wrong answer".to_owned(),
            OpError::Timeout => "timeout".to_owned(),
        }
    }

    /// Whether the server said it does not have what was asked for.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            OpError::Http { status: 404, .. }
                | OpError::Grpc {
                    code: tonic::Code::NotFound,
                    ..
                }
        )
    }

    pub(crate) fn undecodable(what: &str, message: String) -> OpError {
        OpError::Undecodable {
            what: what.to_owned(),
            message,
        }
    }

    pub(crate) fn grpc(context: impl Into<String>, status: &tonic::Status) -> OpError {
        let context = context.into();
        OpError::Grpc {
            code: status.code(),
            context: format!("{context}: {}", status.message()),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Http { status, context } => write!(f, "{context}: HTTP {status}"),
            OpError::Grpc { code, context } => write!(f, "{context} ({code:?})"),
            OpError::Transport(message) => f.write_str(message),
            OpError::Corrupt { what } => {
                write!(f, "{what}: the bytes read do not hash to the blob's name")
            }
            OpError::Undecodable { what, message } => write!(f, "{what}: {message}"),
            OpError::WrongSize {
                what,
                expected,
                got,
            } => write!(f, "{what}: {got} bytes read, expected {expected}"),
            OpError::WrongAnswer(message) => f.write_str(message),
            OpError::Timeout => f.write_str("no answer within --timeout"),
        }
    }
}

impl std::error::Error for OpError {}

/// An error and its causes on one line, which is where hyper and tonic put
/// the useful part ("connection refused", "invalid peer certificate"): the
/// workspace's one formatter, under the name this crate's callers use.
pub(crate) use bazel_cache_digest::error_chain as chain;
