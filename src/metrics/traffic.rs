//! Cumulative request counters per protocol for the web console's charts
//! (`src/web/history.rs` samples them every 10 s): requests, bytes in and
//! out, and a latency histogram of power-of-two microsecond buckets. Kept
//! apart from the Prometheus series because those exist only with
//! `enable_endpoint_metrics`, while the console's charts must work by
//! default; each request costs four relaxed atomic additions, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: bucket `i` counts requests that took less than `2^i`
/// µs (the last one everything longer). Factor-2 resolution is coarse for
/// a Prometheus histogram but enough for a p99 line on a chart.
pub(crate) const LATENCY_BUCKETS: usize = 32;

/// One protocol's counters (HTTP cache requests or gRPC calls).
#[derive(Default)]
pub(crate) struct ProtocolTraffic {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// A copy of [`ProtocolTraffic`] at one moment; differences of two are a
/// window's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProtocolCounts {
    pub(crate) requests: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) latency: [u64; LATENCY_BUCKETS],
}

impl Default for ProtocolCounts {
    fn default() -> Self {
        ProtocolCounts {
            requests: 0,
            bytes_in: 0,
            bytes_out: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

fn bucket_of(elapsed: Duration) -> usize {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    // The smallest i with micros < 2^i.
    let i = (u64::BITS - micros.leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS - 1)
}

/// The upper bound of latency bucket `i`.
pub(crate) fn bucket_bound(i: usize) -> Duration {
    Duration::from_micros(1u64 << i.min(63))
}

impl ProtocolTraffic {
    pub(crate) fn record(&self, bytes_in: u64, bytes_out: u64, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if bytes_in > 0 {
            self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        }
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
        self.latency[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> ProtocolCounts {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProtocolCounts {
            requests: n(&self.requests),
            bytes_in: n(&self.bytes_in),
            bytes_out: n(&self.bytes_out),
            latency: std::array::from_fn(|i| n(&self.latency[i])),
        }
    }
}

impl ProtocolCounts {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &ProtocolCounts) -> ProtocolCounts {
        ProtocolCounts {
            requests: self.requests.saturating_sub(earlier.requests),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            latency: std::array::from_fn(|i| self.latency[i].saturating_sub(earlier.latency[i])),
        }
    }

    /// The upper bound of the bucket holding the 99th percentile; `None`
    /// without requests.
    pub(crate) fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(bucket_bound(LATENCY_BUCKETS - 1))
    }
}

/// Both protocols' counters.
#[derive(Default)]
pub(crate) struct Traffic {
    pub(crate) http: ProtocolTraffic,
    pub(crate) grpc: ProtocolTraffic,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_p99() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(1)), 1);
        assert_eq!(bucket_of(Duration::from_micros(1000)), 10);
        assert!(Duration::from_micros(1000) < bucket_bound(10));
        assert_eq!(bucket_of(Duration::from_secs(1 << 40)), LATENCY_BUCKETS - 1);
        let t = ProtocolTraffic::default();
        let before = t.counts();
        assert_eq!(before.p99(), None);
        for _ in 0..99 {
            t.record(10, 20, Duration::from_micros(100));
        }
        t.record(0, 0, Duration::from_millis(100));
        let window = t.counts().since(&before);
        assert_eq!(
            (window.requests, window.bytes_in, window.bytes_out),
            (100, 990, 1980)
        );
        // 99 of 100 took 100 µs: the p99 is in their bucket (< 128 µs).
        assert_eq!(window.p99(), Some(Duration::from_micros(128)));
        t.record(0, 0, Duration::from_millis(100));
        t.record(0, 0, Duration::from_millis(100));
        assert_eq!(t.counts().since(&before).p99(), Some(bucket_bound(17)));
    }
}
