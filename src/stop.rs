//! A stop request, and a reload request, as pollable file descriptors.
//!
//! The relay loop sleeps in `zmq::poll`; a signal handler (or a test, or the
//! benchmark) wakes it by writing a byte to a socket pair that the loop polls
//! beside its ZeroMQ sockets. No flag checked on a timer, no lost wake-up.
//!
//! Signals are taken by one thread of their own, which does nothing else:
//! [`Stop::on_signals`] blocks them in the calling thread (and so in every
//! thread it starts later), so no read, send or poll of the relay is ever
//! interrupted by one (EINTR). A send interrupted that way lost its frame,
//! and with it a request, when a SIGHUP arrived under load.

use nix::sys::signal::{SigSet, Signal};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

pub struct Stop {
    read: UnixStream,
    /// SIGHUP: a byte each, read by [`Stop::take_hangup`].
    hangup: UnixStream,
    hangup_write: UnixStream,
}

impl Stop {
    /// Woken by SIGTERM and SIGINT; SIGHUP asks for a reload (see
    /// [`Stop::take_hangup`]). Call before any other thread is started.
    pub fn on_signals() -> io::Result<Stop> {
        let (stop, write) = Stop::pair()?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        signal_hook::low_level::pipe::register(
            signal_hook::consts::SIGHUP,
            stop.hangup_write.try_clone()?,
        )?;
        // Started before the signals are blocked here, so it alone keeps
        // them unblocked: the kernel runs the handlers on it.
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(|| loop {
                std::thread::park();
            })?;
        let mut blocked = SigSet::empty();
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            blocked.add(signal);
        }
        blocked.thread_block().map_err(io::Error::from)?;
        Ok(stop)
    }

    /// Woken by a write to the returned stream.
    pub fn pair() -> io::Result<(Stop, UnixStream)> {
        let (read, write) = UnixStream::pair()?;
        let (hangup, hangup_write) = UnixStream::pair()?;
        for stream in [&read, &write, &hangup, &hangup_write] {
            stream.set_nonblocking(true)?;
        }
        Ok((
            Stop {
                read,
                hangup,
                hangup_write,
            },
            write,
        ))
    }

    /// Readable when a stop request is waiting.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Readable when a reload request is waiting.
    pub fn hangup_fd(&self) -> RawFd {
        self.hangup.as_raw_fd()
    }

    /// Whether SIGHUP arrived since the last call.
    pub fn take_hangup(&mut self) -> bool {
        drain(&mut self.hangup) > 0
    }

    /// How many stop requests arrived since the last call.
    pub fn take(&mut self) -> usize {
        drain(&mut self.read)
    }
}

/// Read what is waiting; how many bytes.
fn drain(stream: &mut UnixStream) -> usize {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while let Ok(k @ 1..) = stream.read(&mut buf) {
        n += k;
    }
    n
}
