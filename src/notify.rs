//! systemd's notify protocol (`sd_notify`), when `NOTIFY_SOCKET` is set:
//! `READY=1` once a frontend is bound, `STATUS=` with the role, `STOPPING=1`
//! when a stop begins, and `WATCHDOG=1` pings.
//!
//! The pings come from the relay loop itself ([`Notifier::ping`] runs each
//! round, and the loop's poll wakes up for [`Notifier::next_ping`]), never
//! from a timer thread: a loop that is stuck (deadlocked, SIGSTOPped, a
//! blocking call) stops pinging, and systemd's `WatchdogSec=` kills it so
//! that the passive takes over on the kernel's proof of death
//! (docs/HA.md). Without `NOTIFY_SOCKET` every call does nothing.

use std::time::{Duration, Instant};
use tracing::warn;
use zbridge_protocol::time::later;

pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    on: bool,
    /// How often to ping: a quarter of `WATCHDOG_USEC` (systemd asks for
    /// half at most), when the watchdog is on.
    every: Option<Duration>,
    next: Instant,
    /// A failed send was logged (once).
    failed: bool,
}

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`).
    pub fn from_env(now: Instant) -> Notifier {
        let on = std::env::var_os("NOTIFY_SOCKET").is_some();
        let every = sd_notify::watchdog_enabled()
            .filter(|_| on)
            .map(|timeout| (timeout / 4).max(Duration::from_millis(1)));
        Notifier {
            on,
            every,
            next: now,
            failed: false,
        }
    }

    /// The watchdog's timeout, if systemd set one.
    pub fn watchdog(&self) -> Option<Duration> {
        self.every.map(|every| every * 4)
    }

    /// Startup is done: a frontend is bound.
    pub fn ready(&mut self, status: &str) {
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
    }

    /// What `systemctl status` shows.
    pub fn status(&mut self, status: &str) {
        self.send(&[sd_notify::NotifyState::Status(status)]);
    }

    pub fn stopping(&mut self) {
        self.send(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping: handing over and draining"),
        ]);
    }

    /// Ping the watchdog if it is due.
    pub fn ping(&mut self, now: Instant) {
        let Some(every) = self.every else {
            return;
        };
        if now >= self.next {
            self.next = later(now, every);
            self.send(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// When the loop must wake up for the next ping.
    pub fn next_ping(&self) -> Option<Instant> {
        self.every.map(|_| self.next)
    }

    fn send(&mut self, state: &[sd_notify::NotifyState]) {
        if !self.on {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            if !std::mem::replace(&mut self.failed, true) {
                warn!(error = %e, socket = ?std::env::var_os("NOTIFY_SOCKET"), "cannot notify the service manager (NOTIFY_SOCKET): is it still running?");
            }
        }
    }
}
