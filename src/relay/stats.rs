//! Counters and latency histograms kept by the relay loop.
//!
//! Plain integers owned by the loop thread: no atomics on the hot path. The
//! status document is built from them on request.

use std::time::Duration;
use zbridge_protocol::ErrorCode;

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests_total: u64,
    /// Backend replies relayed to clients.
    pub replies_total: u64,
    pub errors_total: [u64; ErrorCode::ALL.len()],
    /// Backend replies whose request had already been answered (timeout).
    pub late_replies_total: u64,
    /// Backend messages without a valid bridge envelope.
    pub malformed_replies_total: u64,
    /// Replies that could not be delivered (client gone or not reading).
    pub dropped_replies_total: u64,
}

/// Latency histogram with buckets a quarter of a binary order wide (~19%),
/// from 1 µs to over an hour: fixed memory, percentiles within one bucket.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    /// Of every recorded duration, in microseconds.
    sum_us: u64,
}

const SUB_BUCKETS: u32 = 4;
const BUCKETS: usize = 32 * SUB_BUCKETS as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum_us: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
        self.buckets[Self::bucket(us).min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    fn bucket(us: u64) -> usize {
        let order = 63 - us.leading_zeros();
        // The two bits below the leading one pick the quarter.
        let quarter = if order >= 2 {
            (us >> (order - 2)) & 3
        } else {
            (us << (2 - order)) & 3
        };
        (order * SUB_BUCKETS) as usize + quarter as usize
    }

    /// The upper bound of bucket `i`, in microseconds.
    fn upper_us(i: usize) -> f64 {
        let order = (i / SUB_BUCKETS as usize) as i32;
        let quarter = (i % SUB_BUCKETS as usize) as f64;
        2f64.powi(order) * (1.0 + (quarter + 1.0) / 4.0)
    }

    /// As a Prometheus histogram: the sum in seconds, the count, and per
    /// bucket `(upper bound in seconds, count in it)` (not cumulative; the
    /// last bound is `f64::MAX`, +Inf). The bounds are the powers of two
    /// from 128 µs to 33.6 s, where quarter buckets end, so the counts are
    /// exact (a bucket holds the durations below its bound).
    pub fn prometheus(&self) -> (f64, u64, Vec<(f64, u64)>) {
        const FIRST_ORDER: usize = 6;
        const LAST_ORDER: usize = 24;
        let per_order = SUB_BUCKETS as usize;
        let mut out = Vec::with_capacity(LAST_ORDER - FIRST_ORDER + 2);
        for order in FIRST_ORDER..=LAST_ORDER {
            let from = if order == FIRST_ORDER {
                0
            } else {
                order * per_order
            };
            let to = (order + 1) * per_order;
            let upper_s = 2f64.powi(order as i32 + 1) / 1e6;
            out.push((upper_s, self.buckets[from..to].iter().sum()));
        }
        let rest = self.buckets[(LAST_ORDER + 1) * per_order..].iter().sum();
        out.push((f64::MAX, rest));
        (self.sum_us as f64 / 1e6, self.count, out)
    }

    /// The `q` quantile (0..=1) in milliseconds; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::upper_us(i) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_within_a_bucket_of_the_truth() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us * 10));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((5.0..=5.0 * 1.25).contains(&p50), "p50 {p50}");
        assert!((9.9..=9.9 * 1.25).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn prometheus_buckets_count_each_duration_below_its_bound() {
        let mut h = Histogram::default();
        for us in [5, 100, 127, 128, 1_000, 40_000_000] {
            h.record(Duration::from_micros(us));
        }
        let (sum, count, buckets) = h.prometheus();
        assert_eq!(count, 6);
        assert!((sum - 40.001360).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 6);
        let at = |bound: f64| {
            buckets
                .iter()
                .find(|b| (b.0 - bound).abs() < 1e-12)
                .unwrap()
                .1
        };
        assert_eq!(at(0.000128), 3, "5, 100 and 127 µs");
        assert_eq!(at(0.000256), 1, "128 µs");
        assert_eq!(at(0.001024), 1, "1 ms");
        assert_eq!(
            buckets.last(),
            Some(&(f64::MAX, 1)),
            "40 s is beyond 33.6 s"
        );
        assert_eq!(buckets[buckets.len() - 2].0, 33.554432);
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for us in 1..100_000u64 {
            let b = Histogram::bucket(us);
            assert!(b >= last);
            assert!(Histogram::upper_us(b) >= us as f64, "{us} in {b}");
            last = b;
        }
    }
}
