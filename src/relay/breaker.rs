//! A per-target circuit breaker, as a pure state machine.
//!
//! Closed: requests flow; `threshold` consecutive failures open it. Open:
//! requests fail fast with `circuit_open` until `open_wait` has passed, then
//! the next request goes through as the one probe (half-open). The probe's
//! success closes the breaker, its failure opens it again. The breaker never
//! reads a clock: callers pass `now`, so tests drive time by hand.

use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `threshold` failures in a row while closed.
    FailureThreshold,
    /// `open_wait` passed; one probe may go through.
    OpenWaitElapsed,
    /// The half-open probe succeeded.
    ProbeSucceeded,
    /// The half-open probe failed.
    ProbeFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FailureThreshold => "failure_threshold",
            Reason::OpenWaitElapsed => "open_wait_elapsed",
            Reason::ProbeSucceeded => "probe_succeeded",
            Reason::ProbeFailed => "probe_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    threshold: u32,
    open_wait: Duration,
}

/// The answer to "may this request go to the backend?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed(Option<Transition>),
    /// Fail fast; the breaker allows a probe after this long.
    Refused {
        retry_after: Duration,
    },
}

impl Breaker {
    pub fn new(threshold: u32, open_wait: Duration) -> Self {
        Breaker {
            state: State::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probe_in_flight: false,
            threshold: threshold.max(1),
            open_wait,
        }
    }

    /// New settings from a reloaded config; the state is kept.
    pub fn set(&mut self, threshold: u32, open_wait: Duration) {
        self.threshold = threshold.max(1);
        self.open_wait = open_wait;
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Allowed(None),
            State::Open => {
                let opened = self.opened_at.unwrap_or(now);
                let elapsed = now.saturating_duration_since(opened);
                if elapsed >= self.open_wait {
                    self.probe_in_flight = true;
                    Admission::Allowed(Some(self.go(State::HalfOpen, Reason::OpenWaitElapsed)))
                } else {
                    Admission::Refused {
                        retry_after: self.open_wait - elapsed,
                    }
                }
            }
            State::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                Admission::Allowed(None)
            }
            State::HalfOpen => Admission::Refused {
                retry_after: Duration::ZERO,
            },
        }
    }

    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        match self.state {
            State::HalfOpen => {
                self.probe_in_flight = false;
                self.opened_at = None;
                Some(self.go(State::Closed, Reason::ProbeSucceeded))
            }
            // A late success of a request sent before the breaker opened
            // proves little; only the probe may close it.
            State::Closed | State::Open => None,
        }
    }

    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Closed => {
                self.consecutive_failures += 1;
                (self.consecutive_failures >= self.threshold).then(|| {
                    self.opened_at = Some(now);
                    self.go(State::Open, Reason::FailureThreshold)
                })
            }
            State::HalfOpen => {
                self.probe_in_flight = false;
                self.opened_at = Some(now);
                Some(self.go(State::Open, Reason::ProbeFailed))
            }
            State::Open => None,
        }
    }

    fn go(&mut self, to: State, reason: Reason) -> Transition {
        let from = std::mem::replace(&mut self.state, to);
        Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(3, WAIT);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(
            b.on_failure(t0),
            Some(Transition {
                from: State::Closed,
                to: State::Open,
                reason: Reason::FailureThreshold
            })
        );
        b
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, WAIT);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.on_success(), None);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn open_refuses_until_the_wait_is_over() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert_eq!(
            b.admit(t0 + Duration::from_millis(500)),
            Admission::Refused {
                retry_after: Duration::from_millis(1500)
            }
        );
        assert_eq!(b.on_failure(t0), None, "failures while open change nothing");
        assert_eq!(b.on_success(), None, "late successes do not close it");
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn one_probe_then_close_on_success() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let later = t0 + WAIT;
        assert_eq!(
            b.admit(later),
            Admission::Allowed(Some(Transition {
                from: State::Open,
                to: State::HalfOpen,
                reason: Reason::OpenWaitElapsed
            }))
        );
        assert!(matches!(b.admit(later), Admission::Refused { .. }));
        assert_eq!(
            b.on_success(),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed,
                reason: Reason::ProbeSucceeded
            })
        );
        assert_eq!(b.admit(later), Admission::Allowed(None));
    }

    #[test]
    fn failed_probe_reopens_for_a_full_wait() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let later = t0 + WAIT;
        b.admit(later);
        assert_eq!(
            b.on_failure(later),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Open,
                reason: Reason::ProbeFailed
            })
        );
        assert_eq!(
            b.admit(later + Duration::from_secs(1)),
            Admission::Refused {
                retry_after: Duration::from_secs(1)
            }
        );
    }
}
