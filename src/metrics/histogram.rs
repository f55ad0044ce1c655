//! The Prometheus encoding of the store's lock-free histogram, and the
//! constructor that gives every histogram of a family the same buckets.
//!
//! The histogram itself lives in the store crate (which records S3
//! latencies and must not depend on the server's metrics); this newtype is
//! the one place that knows how to write it in the text format.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::{MetricType, TypedMetric};

use bazel_cache_store::histogram::AtomicHistogram as StoreHistogram;

/// The store's lock-free histogram, encoded for Prometheus.
#[derive(Clone, Debug)]
pub(crate) struct AtomicHistogram(pub(super) StoreHistogram);

impl AtomicHistogram {
    pub(super) fn new(bounds: &[f64]) -> Self {
        AtomicHistogram(StoreHistogram::new(bounds))
    }

    pub(super) fn observe(&self, value: f64) {
        self.0.observe(value);
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.0.count()
    }

    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        self.0.snapshot()
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// Makes the histograms of a family, all with the same buckets.
#[derive(Clone, Debug)]
pub(super) struct Buckets(pub(super) Arc<[f64]>);

impl MetricConstructor<AtomicHistogram> for Buckets {
    fn new_metric(&self) -> AtomicHistogram {
        AtomicHistogram::new(&self.0)
    }
}

pub(super) type HistogramFamily<L> = Family<L, AtomicHistogram, Buckets>;

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::metrics::encode_for_test as render;

    #[test]
    fn atomic_histogram_encodes_cumulative_buckets() {
        let h = AtomicHistogram::new(&[1.0, 0.5, f64::INFINITY, 2.5]);
        for v in [0.1, 0.5, 0.7, 3.0, 100.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", h);
        let text = render(&registry);
        for line in [
            "t_seconds_bucket{le=\"0.5\"} 2\n",
            "t_seconds_bucket{le=\"1\"} 3\n",
            "t_seconds_bucket{le=\"2.5\"} 3\n",
            "t_seconds_bucket{le=\"+Inf\"} 5\n",
            "t_seconds_sum 104.3\n",
            "t_seconds_count 5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        assert_eq!(text.matches("le=\"+Inf\"").count(), 1, "{text}");
    }
}
