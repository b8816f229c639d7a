//! Deadline arithmetic that cannot panic.
//!
//! `Instant + Duration` panics when the sum does not fit the platform's
//! clock type, and config values become durations. The bridge and the
//! client bound every duration key (a week at most), so [`later`] is the
//! second fence: whatever duration reaches it, it returns the latest
//! instant it can represent instead of a panic.

use std::time::{Duration, Instant};

/// `now + wait`, or the furthest instant after `now` that can be
/// represented (so far away that it never comes) when the sum overflows.
pub fn later(now: Instant, wait: Duration) -> Instant {
    let mut wait = wait;
    loop {
        // Halving reaches zero, and `now + 0` always fits.
        match now.checked_add(wait) {
            Some(t) => return t,
            None => wait /= 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_as_usual_and_saturates_far_away_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        let far = later(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(1 << 40), "{far:?}");
        assert!(later(far, Duration::MAX) >= far);
    }
}
