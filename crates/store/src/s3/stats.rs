//! [`S3RequestStats`]: how every S3 request ended and how long it took, per
//! operation, for the server's metrics (read at scrape time). Recorded in
//! one place, `S3Client::exchange` (`exchange.rs`), so each HTTP request is
//! counted exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::exchange::Op;
use crate::histogram::AtomicHistogram;

/// Upper bounds (seconds) of the S3 request latency histogram: from a
/// same-rack MinIO (milliseconds) to the 30 s request timeout.
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every request this client made, for metrics (read at scrape time): how
/// it ended and how long it took, per operation.
#[derive(Debug)]
pub struct S3RequestStats {
    /// Answered as expected.
    pub ok: AtomicU64,
    /// Answered 404 where that means "absent" (HEAD, GET: a cache miss).
    pub not_found: AtomicU64,
    /// Failed: connection, timeout, signing, any other error answer, or an
    /// `<Error>` document in a 200 answer.
    pub errors: AtomicU64,
    /// Time to the answer (for uploads: sending the body, then the answer;
    /// for GET: the response head, not the streamed body), per operation.
    latency: Vec<AtomicHistogram>,
}

impl S3RequestStats {
    pub(super) fn new() -> Self {
        S3RequestStats {
            ok: AtomicU64::new(0),
            not_found: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Op::ALL
                .iter()
                .map(|_| AtomicHistogram::new(&LATENCY_BUCKETS))
                .collect(),
        }
    }

    /// `(operation, histogram)` for each S3 operation.
    pub fn latencies(&self) -> impl Iterator<Item = (&'static str, &AtomicHistogram)> {
        Op::ALL
            .iter()
            .zip(&self.latency)
            .map(|(op, h)| (op.metric_label(), h))
    }

    pub(super) fn record(&self, op: Op, elapsed: Duration, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::NotFound => &self.not_found,
            Outcome::Error => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let index = Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every Op is in ALL");
        self.latency[index].observe(elapsed.as_secs_f64());
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    Ok,
    NotFound,
    Error,
}

/// What an operation's successful result says: absent (404) or not.
pub(super) trait Found {
    fn found(&self) -> bool {
        true
    }
}

impl Found for () {}
impl Found for String {}
impl<T> Found for Option<T> {
    fn found(&self) -> bool {
        self.is_some()
    }
}
