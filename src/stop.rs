//! A stop request as a pollable file descriptor.
//!
//! The relay loop sleeps in `zmq::poll`; a signal handler (or a test, or the
//! benchmark) wakes it by writing a byte to a socket pair that the loop polls
//! beside its ZeroMQ sockets. No flag checked on a timer, no lost wake-up.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Stop {
    read: UnixStream,
    /// SIGHUP arrived (it also wakes the poll, with EINTR).
    hangup: Arc<AtomicBool>,
}

impl Stop {
    /// Woken by SIGTERM and SIGINT; SIGHUP is caught so that it does not
    /// end the process (see [`Stop::take_hangup`]).
    pub fn on_signals() -> io::Result<Stop> {
        let (stop, write) = Stop::pair()?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&stop.hangup))?;
        Ok(stop)
    }

    /// Woken by a write to the returned stream.
    pub fn pair() -> io::Result<(Stop, UnixStream)> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let hangup = Arc::new(AtomicBool::new(false));
        Ok((Stop { read, hangup }, write))
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Whether SIGHUP arrived since the last call.
    pub fn take_hangup(&self) -> bool {
        self.hangup.swap(false, Ordering::Relaxed)
    }

    /// How many stop requests arrived since the last call.
    pub fn take(&mut self) -> usize {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok(k @ 1..) = self.read.read(&mut buf) {
            n += k;
        }
        n
    }
}
