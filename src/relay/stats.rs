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
}

const SUB_BUCKETS: u32 = 4;
const BUCKETS: usize = 32 * SUB_BUCKETS as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS],
            count: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
        self.buckets[Self::bucket(us).min(BUCKETS - 1)] += 1;
        self.count += 1;
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
