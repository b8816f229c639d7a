//! The config file watcher's decision, as pure code (callers pass `now`
//! and the file's [`Stamp`]): reload a changed file only once it has stopped
//! changing.
//!
//! An editor or `cp` writes a file in steps; a watcher that reloads at the
//! first new modification time may read it half-written. So a changed
//! stamp (size and modification time) is looked at again [`SETTLE`] later,
//! and the file is reloaded only if the stamp is still the same. A reload
//! for any reason ([`Watch::read`]) takes the file as seen.

use crate::config::Stamp;
use std::time::{Duration, Instant};
use zbridge_protocol::time::later;

/// How often the file is looked at while it does not change.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long a changed file must keep its stamp before it is reloaded.
pub const SETTLE: Duration = Duration::from_millis(500);

pub struct Watch {
    /// The file as last read.
    read: Option<Stamp>,
    /// The file at the last look.
    seen: Option<Stamp>,
    next: Instant,
}

impl Watch {
    pub fn new(stamp: Option<Stamp>, now: Instant) -> Watch {
        Watch {
            read: stamp,
            seen: stamp,
            next: later(now, EVERY),
        }
    }

    /// When to look at the file again.
    pub fn next_check(&self) -> Instant {
        self.next
    }

    /// Look at the file: `true` when it differs from what was read and
    /// has held still since the last look, so it is time to reload.
    pub fn check(&mut self, now: Instant, stamp: Option<Stamp>) -> bool {
        let still = stamp == self.seen;
        self.seen = stamp;
        let changed = stamp != self.read;
        self.next = later(now, if changed { SETTLE } else { EVERY });
        changed && still
    }

    /// The file was just read, as it was at `stamp`.
    pub fn read(&mut self, stamp: Option<Stamp>) {
        self.read = stamp;
        self.seen = stamp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn stamp(len: u64, ms: u64) -> Option<Stamp> {
        Some(Stamp {
            len,
            modified: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        })
    }

    #[test]
    fn a_change_is_reloaded_once_it_holds_still_for_one_look() {
        let t0 = Instant::now();
        let mut w = Watch::new(stamp(100, 1), t0);
        assert_eq!(w.next_check(), t0 + EVERY);
        assert!(!w.check(t0 + EVERY, stamp(100, 1)), "unchanged");
        assert_eq!(w.next_check(), t0 + EVERY * 2);
        // Being written: a new stamp at every look.
        let t = t0 + EVERY * 2;
        assert!(!w.check(t, stamp(0, 2)));
        assert_eq!(w.next_check(), t + SETTLE, "looks again soon");
        assert!(!w.check(t + SETTLE, stamp(40, 3)));
        // Done: the same stamp twice.
        assert!(!w.check(t + SETTLE * 2, stamp(120, 4)));
        assert!(w.check(t + SETTLE * 3, stamp(120, 4)));
        w.read(stamp(120, 4));
        assert!(!w.check(t + SETTLE * 4, stamp(120, 4)));
        assert_eq!(w.next_check(), t + SETTLE * 4 + EVERY);
    }

    #[test]
    fn a_file_read_by_sighup_is_not_reloaded_again_and_a_removed_file_is_a_change() {
        let t0 = Instant::now();
        let mut w = Watch::new(stamp(100, 1), t0);
        assert!(!w.check(t0 + EVERY, stamp(90, 2)));
        w.read(stamp(90, 2));
        assert!(!w.check(t0 + EVERY + SETTLE, stamp(90, 2)));
        assert!(!w.check(t0 + EVERY * 2, None));
        assert!(w.check(t0 + EVERY * 2 + SETTLE, None));
    }
}
