//! Config reloads read off the relay thread: reading the file and the
//! `curve_clients` directory, parsing and validating (10,000 key files take
//! about 0.2 s) happen on a thread of their own, the `config-loader`, and
//! the relay applies the result in one short step when it is woken
//! ([`Loader::fd`]).
//!
//! Requests coalesce: while a read is under way, any number of further
//! requests (a SIGHUP storm, a file changing again) leave one read pending,
//! started when the current one ends, so that the last change is always
//! read and the loader is never more than one read behind. A result not yet
//! applied is replaced by a newer one.

use crate::config::{Config, ConfigError, Source};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A config read by the loader, for the relay to apply.
pub struct Loaded {
    /// What asked for the first of the requests this read answers.
    pub why: &'static str,
    /// How many more requests this read answers (a storm, coalesced).
    pub coalesced: u64,
    pub config: Result<Config, ConfigError>,
}

#[derive(Default)]
struct Slot {
    /// A read asked for and not started: why, and the requests since.
    pending: Option<(&'static str, u64)>,
    /// A read done and not yet taken by the relay.
    done: Option<Loaded>,
    closed: bool,
}

impl Slot {
    fn ask(&mut self, why: &'static str) {
        match &mut self.pending {
            Some((_, more)) => *more += 1,
            None => self.pending = Some((why, 0)),
        }
    }

    /// A read is done: it replaces one not yet taken, and answers its
    /// requests too.
    fn finish(&mut self, mut loaded: Loaded) {
        if let Some(old) = self.done.take() {
            loaded.why = old.why;
            loaded.coalesced += old.coalesced + 1;
        }
        self.done = Some(loaded);
    }
}

struct Shared {
    slot: Mutex<Slot>,
    asked: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot holds plain data: a panic elsewhere leaves it usable.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Loader {
    shared: Arc<Shared>,
    /// Readable when a read is done (a byte per read).
    woken: UnixStream,
}

impl Loader {
    /// Start the loader thread for `source`.
    pub fn start(source: Source) -> std::io::Result<Loader> {
        let (woken, wake) = UnixStream::pair()?;
        woken.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            asked: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        // Not joined: a read stuck in a hung file system must not hold up
        // the bridge's exit.
        std::thread::Builder::new()
            .name("config-loader".into())
            .spawn(move || serve(&worker, &source, wake))?;
        Ok(Loader { shared, woken })
    }

    /// Ask for a reload; returns at once. `why` names the trigger in the
    /// log. A request while one is pending joins it.
    pub fn ask(&self, why: &'static str) {
        self.shared.lock().ask(why);
        self.shared.asked.notify_one();
    }

    /// Readable when a read is done.
    pub fn fd(&self) -> RawFd {
        self.woken.as_raw_fd()
    }

    /// The read done since the last call, if any.
    pub fn take(&mut self) -> Option<Loaded> {
        let mut bytes = [0u8; 64];
        while matches!(self.woken.read(&mut bytes), Ok(n) if n > 0) {}
        self.shared.lock().done.take()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.asked.notify_one();
    }
}

fn serve(shared: &Shared, source: &Source, mut wake: UnixStream) {
    loop {
        let (why, coalesced) = {
            let mut slot = shared.lock();
            loop {
                if slot.closed {
                    return;
                }
                if let Some(pending) = slot.pending.take() {
                    break pending;
                }
                slot = shared.asked.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let config = source.reload();
        shared.lock().finish(Loaded {
            why,
            coalesced,
            config,
        });
        // Full (the relay has bytes it has not read yet): it is woken
        // already.
        let _ = wake.write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use std::time::{Duration, Instant};

    fn loaded(why: &'static str, coalesced: u64) -> Loaded {
        Loaded {
            why,
            coalesced,
            config: Err(ConfigError::new("", "test")),
        }
    }

    #[test]
    fn a_storm_leaves_one_read_pending_and_an_untaken_result_is_replaced() {
        let mut slot = Slot::default();
        for _ in 0..100 {
            slot.ask("SIGHUP");
        }
        slot.ask("the config file changed");
        assert_eq!(slot.pending, Some(("SIGHUP", 100)));
        slot.finish(loaded("SIGHUP", 100));
        slot.finish(loaded("the config file changed", 2));
        let done = slot.done.take().unwrap();
        assert_eq!((done.why, done.coalesced), ("SIGHUP", 103));
    }

    #[test]
    fn a_read_is_done_off_the_calling_thread_and_wakes_it() {
        let source = Source {
            path: None,
            overrides: Overrides::default(),
            mode: None,
        };
        let mut loader = Loader::start(source).unwrap();
        assert!(loader.take().is_none());
        loader.ask("SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut items = [zmq::PollItem::from_fd(loader.fd(), zmq::POLLIN)];
        while zmq::poll(&mut items, 100).unwrap() == 0 {
            assert!(Instant::now() < deadline, "not woken");
        }
        let done = loader.take().expect("a read done when woken");
        assert_eq!((done.why, done.coalesced), ("SIGHUP", 0));
        assert!(done.config.is_ok(), "the defaults");
        assert!(loader.take().is_none());
    }
}
