//! A token bucket, as pure code (callers pass `now`): the rate limits'
//! buckets (`relay/limit.rs`, one token a request) and the streams' replay
//! budget (`streams/machine.rs`, one token a message or a byte).

use crate::config::Rate;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            last: now,
        }
    }

    pub fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last = now;
    }

    /// How long until there are `n` tokens (zero: there are now).
    pub fn wait(&mut self, n: f64, rate: Rate, now: Instant) -> Duration {
        self.refill(rate, now);
        if self.tokens >= n {
            return Duration::ZERO;
        }
        // Config keeps rates at 0.001/s or more: at most 1000 s a token;
        // the fallback only keeps a bad rate from panicking.
        Duration::try_from_secs_f64((n - self.tokens) / rate.per_second).unwrap_or(Duration::MAX)
    }

    /// Take one token, or say how long until there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        match self.wait(1.0, rate, now) {
            wait if wait.is_zero() => {
                self.tokens -= 1.0;
                Ok(())
            }
            wait => Err(wait),
        }
    }
}
