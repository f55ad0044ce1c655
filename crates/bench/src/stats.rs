//! What the measurement records: per row (operation × blob size) the
//! requests, blobs, bytes and errors, and every successful request's
//! latency, kept exactly (8 bytes a request) so percentiles are exact
//! nearest-rank values rather than histogram buckets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::error::OpError;

/// How many error messages are kept per row, as examples for the report.
const SAMPLES: usize = 3;

/// One worker's (or, merged, the whole run's) record of one row.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Requests finished, successful or not.
    pub requests: u64,
    /// Blobs moved or looked up by successful requests.
    pub blobs: u64,
    /// Payload bytes of successful requests.
    pub bytes: u64,
    /// Latency of each successful request, in nanoseconds.
    pub latencies: Vec<u64>,
    /// Failed requests by [`OpError::kind`].
    pub errors: BTreeMap<String, u64>,
    /// The first few error messages.
    pub samples: Vec<String>,
}

impl Recorder {
    pub(crate) fn record(
        &mut self,
        blobs: u64,
        bytes: u64,
        latency: Duration,
        result: Result<(), OpError>,
    ) {
        self.requests += 1;
        match result {
            Ok(()) => {
                self.blobs += blobs;
                self.bytes += bytes;
                self.latencies
                    .push(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
            }
            Err(e) => {
                *self.errors.entry(e.kind()).or_default() += 1;
                if self.samples.len() < SAMPLES {
                    self.samples.push(e.to_string());
                }
            }
        }
    }

    pub(crate) fn merge(&mut self, other: Recorder) {
        self.requests += other.requests;
        self.blobs += other.blobs;
        self.bytes += other.bytes;
        self.latencies.extend(other.latencies);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for s in other.samples {
            if self.samples.len() < SAMPLES {
                self.samples.push(s);
            }
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Sorts `latencies` (nanoseconds) and summarises them; all zero when
    /// there are none.
    pub(crate) fn of(latencies: &mut [u64]) -> Latency {
        if latencies.is_empty() {
            return Latency::default();
        }
        latencies.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        let sum: u128 = latencies.iter().map(|&l| u128::from(l)).sum();
        Latency {
            mean_ms: sum as f64 / latencies.len() as f64 / 1e6,
            p50_ms: ms(percentile(latencies, 0.50)),
            p99_ms: ms(percentile(latencies, 0.99)),
            p999_ms: ms(percentile(latencies, 0.999)),
            max_ms: ms(latencies[latencies.len() - 1]),
        }
    }
}

/// The nearest-rank `q` quantile (0 < q ≤ 1) of ascending `sorted`: the
/// smallest value with at least a fraction `q` of the values at or below
/// it. 0 for no values.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[], 0.5), 0);
        // With fewer than 1000 samples p999 is the maximum.
        let few: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&few, 0.999), 10);
        assert_eq!(percentile(&few, 0.5), 5);
    }

    #[test]
    fn summary_in_milliseconds() {
        let mut v = vec![3_000_000, 1_000_000, 2_000_000];
        let l = Latency::of(&mut v);
        assert_eq!(l.p50_ms, 2.0);
        assert_eq!(l.max_ms, 3.0);
        assert_eq!(l.mean_ms, 2.0);
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn errors_are_counted_by_kind_and_merged() {
        let mut a = Recorder::default();
        a.record(1, 10, Duration::from_millis(1), Ok(()));
        a.record(1, 10, Duration::from_millis(1), Err(OpError::Timeout));
        let mut b = Recorder::default();
        b.record(
            1,
            10,
            Duration::from_millis(1),
            Err(OpError::Http {
                status: 404,
                context: "GET /cas/x".into(),
            }),
        );
        b.record(1, 10, Duration::from_millis(1), Err(OpError::Timeout));
        a.merge(b);
        assert_eq!((a.requests, a.blobs, a.bytes), (4, 1, 10));
        assert_eq!(a.latencies.len(), 1);
        assert_eq!(a.errors["timeout"], 2);
        assert_eq!(a.errors["HTTP 404"], 1);
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.samples.len(), 3);
    }
}
