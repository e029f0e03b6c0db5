//! A histogram of durations made of atomics, for the request path.
//!
//! prometheus-client's own histogram takes a mutex per observation; this one takes none and
//! encodes through the same `EncodeMetric` interface.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of durations made of atomics: `observe` takes no lock.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// Per bucket, non-cumulative; one more than `bounds` for +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub(super) fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }))
    }

    pub(super) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .0
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.0.bounds.len());
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client makes the buckets cumulative itself: hand it per-bucket counts.
        // A scrape racing with requests may miss the ones in flight, which Prometheus tolerates.
        // The buckets live on the stack: a scrape encodes every histogram series.
        let mut buckets = [(0.0, 0); MAX_BUCKETS];
        let n = self.0.counts.len().min(MAX_BUCKETS);
        let mut count = 0;
        for (i, (slot, bucket)) in buckets.iter_mut().zip(&self.0.counts).enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            let bound = self.0.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, n);
        }
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets[..n], None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Room for the longest bucket list plus +Inf (checked where the bucket lists are defined).
pub(super) const MAX_BUCKETS: usize = 16;
