//! [`AtomicHistogram`]: latency distributions the store records (S3 requests)
//! and the server exports. It lives here, not in the server's metrics, so the
//! store never depends on the metrics code: the server reads
//! [`AtomicHistogram::snapshot`] at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// bazel-remote's default histogram buckets, in seconds (its
/// `endpoint_metrics_duration_buckets` default). Defined once, here, because
/// both the server's config (the default of that key) and its metrics use
/// it, and the store is the crate both already depend on.
pub const DEFAULT_BUCKETS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0];

/// A classic Prometheus histogram updated with atomics only: an observation
/// is one `fetch_add` on its bucket and a compare-and-swap on the sum.
/// `_count` is the sum of the bucket counts read at scrape time, so it always
/// equals the `+Inf` bucket.
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    /// Finite upper bounds, ascending.
    bounds: Box<[f64]>,
    /// One count per bound and one for `+Inf`; not cumulative.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (non-finite ones are dropped:
    /// `+Inf` is always there).
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram(Arc::new(HistogramCells {
            bounds: bounds.into(),
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, value: f64) {
        let cells = &*self.0;
        // First bucket whose upper bound is >= value (`le` is inclusive).
        let index = cells.bounds.partition_point(|b| *b < value);
        cells.counts[index].fetch_add(1, Ordering::Relaxed);
        let mut current = cells.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match cells.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// `(sum, count, [(upper bound, count in that bucket)])`, `+Inf` last.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let cells = &*self.0;
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(cells.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(cells.sum.load(Ordering::Relaxed));
        (sum, count, buckets)
    }
}
