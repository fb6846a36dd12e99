//! The invalidation-lag histogram that the summary reads its quantiles
//! from. The Prometheus recorder keeps its own copy of every sample (with
//! the same bucket bounds), but its histograms cannot be read back, and
//! `metrics_util`'s readable one (`storage::Histogram`) records through
//! `&mut self`: the workers would share it behind a lock. This one is a
//! fixed array of atomics, recorded into by every worker without a lock.

use std::sync::atomic::AtomicU64;

use super::{bump, read};

/// Upper bounds (ms) of the invalidation-lag histogram buckets.
pub const LAG_BUCKETS_MS: [u64; 16] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    3_600_000,
];

/// A histogram with fixed buckets ([`LAG_BUCKETS_MS`] plus overflow).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, value: u64) {
        let i = LAG_BUCKETS_MS.partition_point(|&b| b < value);
        bump(&self.buckets[i], 1);
        bump(&self.sum, value);
    }

    /// Cumulative counts per bucket (the last one is +Inf), and the sum.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += read(b);
                total
            })
            .collect();
        (cumulative, read(&self.sum))
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), or `None`
    /// when empty; `u64::MAX` stands for the overflow bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let (cumulative, _) = self.snapshot();
        let total = *cumulative.last()?;
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let i = cumulative.iter().position(|&c| c >= rank)?;
        Some(LAG_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let h = Histogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for v in [0, 3, 3, 7, 40] {
            h.record(v);
        }
        h.record(10_000_000);
        assert_eq!(h.quantile_bound(0.5), Some(5));
        assert_eq!(h.quantile_bound(1.0), Some(u64::MAX));
        let (cumulative, sum) = h.snapshot();
        assert_eq!(*cumulative.last().unwrap(), 6);
        assert_eq!(sum, 10_000_053);
    }
}
