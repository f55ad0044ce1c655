//! [`S3Error`]: why an S3 call failed, and whether it is worth retrying.
//!
//! Kept apart from the client so the error's wording (which names the
//! operation and key, never credentials or signatures) and the retry policy
//! callers rely on ([`S3Error::is_retryable`]) are in one place.

use std::fmt::Write as _;
use std::io;

use http::StatusCode;

/// Why an S3 call failed. The messages name the operation and object key,
/// never credentials or signatures.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The `s3_proxy` configuration can't be used (reported by
    /// [`S3Client::new`](super::S3Client::new)).
    #[error("S3 configuration: {0}")]
    Config(String),
    #[error("S3 {op} {key:?}: invalid object key: {reason}")]
    InvalidKey {
        op: &'static str,
        key: String,
        reason: &'static str,
    },
    /// S3 answered with an error status (or with an `<Error>` document in a
    /// 200 answer, which CopyObject and CompleteMultipartUpload may do).
    #[error("S3 {op} {key}: HTTP {status}{}", describe_code(*.status, .code, .message))]
    Status {
        op: &'static str,
        key: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("S3 {op} {key}: timed out: {what}")]
    Timeout {
        op: &'static str,
        key: String,
        what: String,
    },
    /// Connecting, TLS, or the connection failing mid-request.
    #[error("S3 {op} {key}: connection error: {detail}")]
    Connection {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// Reading the local file being uploaded failed (or it is shorter than
    /// the length given).
    #[error("S3 {op} {key}: reading the local file: {source}")]
    File {
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    /// S3 answered successfully but not in the form expected.
    #[error("S3 {op} {key}: unexpected response: {detail}")]
    Protocol {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("S3 {op} {key}: signing the request: {detail}")]
    Signing {
        op: &'static str,
        key: String,
        detail: String,
    },
}

fn describe_code(status: u16, code: &Option<String>, message: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(reason) = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        let _ = write!(s, " {reason}");
    }
    match (code, message) {
        (Some(c), Some(m)) => {
            let _ = write!(s, ": {c}: {m}");
        }
        (Some(c), None) => {
            let _ = write!(s, ": {c}");
        }
        (None, Some(m)) => {
            let _ = write!(s, ": {m}");
        }
        (None, None) => {}
    }
    s
}

/// S3 error codes that are worth retrying even when the status isn't 5xx.
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
];

impl S3Error {
    /// Worth trying again later: 5xx, 429, SlowDown and similar S3 codes,
    /// timeouts, connection errors. Not: 4xx (auth, missing bucket),
    /// configuration, local file errors, malformed answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            S3Error::Status { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || *status == 408
                    || code
                        .as_deref()
                        .is_some_and(|c| RETRYABLE_CODES.contains(&c))
            }
            S3Error::Timeout { .. } | S3Error::Connection { .. } => true,
            S3Error::Config(_)
            | S3Error::InvalidKey { .. }
            | S3Error::File { .. }
            | S3Error::Protocol { .. }
            | S3Error::Signing { .. } => false,
        }
    }

    /// The HTTP status S3 answered with, for [`S3Error::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The S3 error code (`<Code>` of the XML error body), e.g.
    /// `SignatureDoesNotMatch`, `NoSuchBucket`, `AccessDenied`. HEAD answers
    /// have no body, hence no code.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_and_classification() {
        let e = S3Error::Status {
            op: "GET",
            key: "p/cas/ab/x".into(),
            status: 403,
            code: Some("AccessDenied".into()),
            message: Some("Access Denied".into()),
        };
        assert_eq!(
            e.to_string(),
            "S3 GET p/cas/ab/x: HTTP 403 Forbidden: AccessDenied: Access Denied"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.status(), Some(403));
        assert_eq!(e.code(), Some("AccessDenied"));
        let status = |status, code: Option<&str>| S3Error::Status {
            op: "PUT",
            key: "k".into(),
            status,
            code: code.map(str::to_owned),
            message: None,
        };
        assert!(status(503, Some("SlowDown")).is_retryable());
        assert!(status(500, None).is_retryable());
        assert!(status(429, None).is_retryable());
        assert!(status(400, Some("RequestTimeout")).is_retryable());
        assert!(status(200, Some("InternalError")).is_retryable());
        assert!(!status(404, Some("NoSuchBucket")).is_retryable());
        assert_eq!(
            status(404, None).to_string(),
            "S3 PUT k: HTTP 404 Not Found"
        );
    }
}
