//! Warnings about something that can repeat thousands of times a second
//! (a rejected heartbeat, a stalled subscriber) are logged at most once per
//! interval, each with the running count, so the log stays readable.

use std::time::{Duration, Instant};

/// When a throttled warning was last logged.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle(Option<Instant>);

impl LogThrottle {
    /// Whether to log now: nothing logged within `every` before `now`. If
    /// so, the interval starts again.
    pub fn due(&mut self, now: Instant, every: Duration) -> bool {
        if self
            .0
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_time_then_once_per_interval() {
        let every = Duration::from_secs(10);
        let start = Instant::now();
        let mut throttle = LogThrottle::default();
        assert!(throttle.due(start, every));
        assert!(!throttle.due(start + Duration::from_secs(9), every));
        assert!(throttle.due(start + every, every));
        assert!(!throttle.due(start + every, every));
    }
}
