//! A failure-rate circuit breaker, as a pure state machine (callers pass
//! `now`, so tests drive time by hand).
//!
//! Closed: calls flow; when at least `min_calls` of the last `window`
//! outcomes are known and the share of failures reaches `failure_rate`, it
//! opens. Open: calls fail fast until `open_wait` has passed, then it is
//! half-open and lets `half_open_probes` calls through. All of them
//! succeeding closes it (with a clean window); one failing opens it again.

use crate::config::BreakerConfig;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        })
    }
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Recent outcomes while closed, `true` = failure.
    outcomes: VecDeque<bool>,
    failures: u32,
    opened_at: Instant,
    /// Half-open: probes let through, and how many succeeded.
    probes_out: u32,
    probes_ok: u32,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            outcomes: VecDeque::with_capacity(config.window as usize),
            failures: 0,
            opened_at: now,
            probes_out: 0,
            probes_ok: 0,
        }
    }

    /// Whether a call may go through now; `Err` carries how long until
    /// the breaker goes half-open. May move Open to HalfOpen (returned).
    pub fn admit(&mut self, now: Instant) -> Result<Option<BreakerState>, Duration> {
        match self.state {
            BreakerState::Closed => Ok(None),
            BreakerState::Open => {
                let waited = now.saturating_duration_since(self.opened_at);
                if waited < self.config.open_wait {
                    return Err(self.config.open_wait - waited);
                }
                self.state = BreakerState::HalfOpen;
                self.probes_out = 1;
                self.probes_ok = 0;
                Ok(Some(BreakerState::HalfOpen))
            }
            BreakerState::HalfOpen if self.probes_out < self.config.half_open_probes => {
                self.probes_out += 1;
                Ok(None)
            }
            BreakerState::HalfOpen => Err(Duration::ZERO),
        }
    }

    /// Record an outcome; returns the new state if it changed.
    pub fn record(&mut self, failed: bool, now: Instant) -> Option<BreakerState> {
        match self.state {
            BreakerState::Closed => {
                if self.outcomes.len() == self.config.window as usize
                    && self.outcomes.pop_front() == Some(true)
                {
                    self.failures -= 1;
                }
                self.outcomes.push_back(failed);
                self.failures += u32::from(failed);
                let known = self.outcomes.len() as u32;
                let rate = f64::from(self.failures) / f64::from(known.max(1));
                if failed && known >= self.config.min_calls && rate >= self.config.failure_rate {
                    return Some(self.open(now));
                }
                None
            }
            BreakerState::HalfOpen if failed => Some(self.open(now)),
            BreakerState::HalfOpen => {
                self.probes_ok += 1;
                if self.probes_ok < self.config.half_open_probes {
                    return None;
                }
                self.state = BreakerState::Closed;
                self.outcomes.clear();
                self.failures = 0;
                Some(BreakerState::Closed)
            }
            // An answer to a call let through before it opened.
            BreakerState::Open => None,
        }
    }

    fn open(&mut self, now: Instant) -> BreakerState {
        self.state = BreakerState::Open;
        self.opened_at = now;
        BreakerState::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(now: Instant) -> Breaker {
        Breaker::new(
            BreakerConfig {
                failure_rate: 0.5,
                window: 4,
                min_calls: 2,
                open_wait: Duration::from_secs(1),
                half_open_probes: 2,
            },
            now,
        )
    }

    #[test]
    fn opens_on_the_failure_rate_not_on_one_failure() {
        let t = Instant::now();
        let mut b = breaker(t);
        assert_eq!(b.record(true, t), None, "one outcome is below min_calls");
        assert_eq!(b.record(false, t), None);
        assert_eq!(b.record(false, t), None);
        assert_eq!(b.record(true, t), Some(BreakerState::Open), "2 of 4 failed");
        assert_eq!(
            b.admit(t + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t = Instant::now();
        let mut b = breaker(t);
        for failed in [true, false, false, false, false, true] {
            assert_eq!(b.record(failed, t), None, "at most 1 of the last 4 failed");
        }
        assert_eq!(b.state, BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_probes_through_and_closes_when_all_succeed() {
        let t = Instant::now();
        let mut b = breaker(t);
        b.record(true, t);
        b.record(true, t);
        assert_eq!(b.state, BreakerState::Open);
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Ok(Some(BreakerState::HalfOpen)));
        assert_eq!(b.admit(later), Ok(None), "the second probe");
        assert_eq!(b.admit(later), Err(Duration::ZERO), "no third");
        assert_eq!(b.record(false, later), None);
        assert_eq!(b.record(false, later), Some(BreakerState::Closed));
        assert_eq!(b.record(true, later), None, "a clean window after closing");
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_full_wait() {
        let t = Instant::now();
        let mut b = breaker(t);
        b.record(true, t);
        b.record(true, t);
        let later = t + Duration::from_secs(1);
        b.admit(later).unwrap();
        assert_eq!(b.record(true, later), Some(BreakerState::Open));
        assert!(b.admit(later + Duration::from_millis(999)).is_err());
        assert!(b.admit(later + Duration::from_secs(1)).is_ok());
    }
}
