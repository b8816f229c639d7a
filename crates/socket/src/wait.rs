//! One wait over zmq sockets and plain descriptors that asks a zmq socket
//! for its state (`ZMQ_EVENTS`) only when that state may have changed.
//!
//! `zmq_poll` asks every zmq socket for `ZMQ_EVENTS` before it sleeps and
//! again after, and each ask is a poll(2) of the socket's mailbox: with
//! five sockets, a dozen syscalls per sleep, most of them for sockets that
//! had nothing to say (docs/PERFORMANCE.md, the cost model). A [`Wait`]
//! sleeps in one poll(2) over the plain descriptors and each socket's
//! signal descriptor (`ZMQ_FD`), and asks `ZMQ_EVENTS`
//!
//! - before it sleeps, of the *hot* sockets (those the caller reads or
//!   writes every round) and of any socket that was not quiet at the last
//!   wait;
//! - after it wakes, of the sockets whose descriptor fired;
//! - of every socket (a *sweep*) at the first wait, when the set of sockets
//!   changed, after a wait that reported a cold item (socket or plain
//!   descriptor) ready, and once the last wait's deadline has passed: the rounds
//!   in which the caller may have connected, opened or used a socket
//!   outside its hot set.
//!
//! Why the sweeps: `ZMQ_FD` signals only commands that reach the socket's
//! mailbox, and a pipe starts with its reader awake, so the first message
//! on a pipe that a `connect` (or a monitor) created sends no signal. A
//! `ZMQ_EVENTS` ask that finds the pipe empty puts its reader to sleep, and
//! from then on every message wakes the descriptor. A socket is quiet only
//! after such an ask, or while its descriptor has not fired since.

use std::os::fd::RawFd;
use std::time::Instant;

/// What a wait watches.
pub enum Source<'a> {
    /// A plain descriptor, watched for input.
    Fd(RawFd),
    Socket(&'a zmq::Socket),
}

/// One thing to watch and the events wanted of it (`POLLIN`, `POLLOUT`
/// for a socket; a plain descriptor is watched for input). `hot`: the
/// caller reads or writes it every round, so a hot socket is asked before
/// each sleep, and a hot item's readiness does not make the next wait
/// sweep.
pub struct Item<'a> {
    pub source: Source<'a>,
    pub wanted: zmq::PollEvents,
    pub hot: bool,
}

impl<'a> Item<'a> {
    pub fn fd(fd: RawFd, hot: bool) -> Self {
        Item {
            source: Source::Fd(fd),
            wanted: zmq::POLLIN,
            hot,
        }
    }

    pub fn socket(socket: &'a zmq::Socket, wanted: zmq::PollEvents, hot: bool) -> Self {
        Item {
            source: Source::Socket(socket),
            wanted,
            hot,
        }
    }
}

/// The wait's memory between calls (see the module doc).
#[derive(Default)]
pub struct Wait {
    fds: Vec<libc::pollfd>,
    ready: Vec<zmq::PollEvents>,
    /// Each socket's signal descriptor at the last wait, in order, and
    /// whether it was quiet.
    sockets: Vec<(RawFd, bool)>,
    sweep: bool,
    deadline: Option<Instant>,
}

impl Wait {
    /// Wait until an item has an event it wants, or `deadline` passes
    /// (never: `None`). Returns each item's events, in order.
    pub fn wait(
        &mut self,
        items: &[Item],
        deadline: Option<Instant>,
    ) -> zmq::Result<&[zmq::PollEvents]> {
        let now = Instant::now();
        // Each descriptor once: a socket's ZMQ_FD, read here, also says
        // whether the sockets are the last wait's.
        self.fds.clear();
        for item in items {
            let fd = match item.source {
                Source::Fd(fd) => fd,
                Source::Socket(socket) => socket.get_fd()?,
            };
            self.fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let socket_fds = (items.iter().zip(&self.fds))
            .filter(|(item, _)| matches!(item.source, Source::Socket(_)))
            .map(|(_, fd)| fd.fd);
        let same_sockets = socket_fds.eq(self.sockets.iter().map(|&(fd, _)| fd));
        let sweep = std::mem::take(&mut self.sweep)
            || self.deadline.is_some_and(|d| now >= d)
            || !same_sockets;
        self.deadline = deadline;
        self.ready.clear();
        let mut ready_now = false;
        let mut quiet = self.sockets.iter().map(|&(_, quiet)| quiet);
        for item in items {
            let mut ready = zmq::PollEvents::empty();
            if let Source::Socket(socket) = item.source {
                let was_quiet = quiet.next().unwrap_or(false);
                if sweep || item.hot || !was_quiet {
                    ready = events_of(socket)? & item.wanted;
                }
            }
            ready_now |= !ready.is_empty();
            self.ready.push(ready);
        }
        let timeout_ms = match deadline {
            _ if ready_now => 0,
            None => -1,
            // Rounded up, so that the caller never spins on a deadline a
            // few microseconds away.
            Some(d) => d
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000)
                .try_into()
                .unwrap_or(i32::MAX),
        };
        crate::sys::poll(&mut self.fds, timeout_ms)
            .map_err(|e| zmq::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        self.sockets.clear();
        for ((item, fd), ready) in items.iter().zip(&self.fds).zip(&mut self.ready) {
            let fired = fd.revents != 0;
            match item.source {
                Source::Fd(_) if fired => *ready = item.wanted,
                Source::Fd(_) => {}
                Source::Socket(socket) => {
                    if fired {
                        *ready = events_of(socket)? & item.wanted;
                    }
                    self.sockets.push((fd.fd, ready.is_empty()));
                }
            }
            self.sweep |= !item.hot && !ready.is_empty();
        }
        Ok(&self.ready)
    }
}

/// A socket's `ZMQ_EVENTS`. libzmq looks at the socket's mailbox with a
/// poll(2), which a signal with a handler can interrupt (EINTR): that
/// ask is made again, as `zmq_poll`'s callers went on after an
/// interrupted poll, and never stops the caller's loop.
fn events_of(socket: &zmq::Socket) -> zmq::Result<zmq::PollEvents> {
    loop {
        match socket.get_events() {
            Err(zmq::Error::EINTR) => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A PUSH bound at a fresh inproc endpoint and a PULL connected to it:
    /// the PULL's pipe is one that `connect` made, whose first message
    /// sends no signal.
    fn pair(context: &zmq::Context, name: &str) -> (zmq::Socket, zmq::Socket) {
        let push = context.socket(zmq::PUSH).unwrap();
        push.bind(&format!("inproc://wait-{name}")).unwrap();
        let pull = context.socket(zmq::PULL).unwrap();
        pull.connect(&format!("inproc://wait-{name}")).unwrap();
        (push, pull)
    }

    fn far() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(10))
    }

    #[test]
    fn a_connected_pipes_first_message_wakes_a_cold_socket() {
        let context = zmq::Context::new();
        let (push, pull) = pair(&context, "first");
        let mut wait = Wait::default();
        let items = [Item::socket(&pull, zmq::POLLIN, false)];
        // The first wait sweeps: the empty pipe's reader goes to sleep.
        assert!(wait.wait(&items, Some(Instant::now())).unwrap()[0].is_empty());
        push.send("hello", 0).unwrap();
        let started = Instant::now();
        let ready = wait.wait(&items, far()).unwrap()[0];
        assert_eq!(ready, zmq::POLLIN);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woke by the deadline only"
        );
    }

    #[test]
    fn a_quiet_cold_socket_is_woken_by_its_descriptor_not_by_a_sweep() {
        let context = zmq::Context::new();
        let (hot_push, hot) = pair(&context, "hot");
        let (cold_push, cold) = pair(&context, "cold");
        let mut wait = Wait::default();
        let items = [
            Item::socket(&hot, zmq::POLLIN, true),
            Item::socket(&cold, zmq::POLLIN, false),
        ];
        hot_push.send("a", 0).unwrap();
        // A sweep (the first wait); only the hot socket has something.
        let ready = wait.wait(&items, far()).unwrap().to_vec();
        assert_eq!(ready, [zmq::POLLIN, zmq::PollEvents::empty()]);
        hot.recv_bytes(0).unwrap();
        // No sweep now (same sockets, deadline ahead, nothing cold was
        // ready): the cold socket is not asked, its descriptor must fire.
        cold_push.send("b", 0).unwrap();
        let started = Instant::now();
        let ready = wait.wait(&items, far()).unwrap().to_vec();
        assert_eq!(ready, [zmq::PollEvents::empty(), zmq::POLLIN]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_hot_socket_with_a_message_does_not_sleep() {
        let context = zmq::Context::new();
        let (push, pull) = pair(&context, "ready");
        let mut wait = Wait::default();
        let items = [Item::socket(&pull, zmq::POLLIN, true)];
        push.send("a", 0).unwrap();
        push.send("b", 0).unwrap();
        assert_eq!(wait.wait(&items, None).unwrap()[0], zmq::POLLIN);
        pull.recv_bytes(0).unwrap();
        // The second message raised no signal (the reader was awake), but
        // a hot socket is asked before the wait sleeps.
        assert_eq!(wait.wait(&items, None).unwrap()[0], zmq::POLLIN);
    }

    #[test]
    fn a_plain_descriptor_and_a_writable_socket() {
        let context = zmq::Context::new();
        let (push, _pull) = pair(&context, "out");
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut wait = Wait::default();
        let items = [
            Item::fd(reader.as_raw_fd(), false),
            Item::socket(&push, zmq::POLLOUT, true),
        ];
        let ready = wait.wait(&items, far()).unwrap().to_vec();
        assert_eq!(ready, [zmq::PollEvents::empty(), zmq::POLLOUT]);
        writer.write_all(b"x").unwrap();
        let items = [Item::fd(reader.as_raw_fd(), false)];
        assert_eq!(wait.wait(&items, far()).unwrap()[0], zmq::POLLIN);
    }

    /// Signals with a handler (as a Python agent's process has) land on
    /// the waiting thread while it asks its sockets: an interrupted ask is
    /// asked again, never an error (which stops a client's I/O thread).
    #[test]
    #[allow(unsafe_code)]
    fn signals_landing_on_the_waiting_thread_are_not_errors() {
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: a handler that does nothing, without SA_RESTART (as
        // Python installs its own), for a signal only this test sends.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as *const () as usize;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
                0
            );
        }
        let context = zmq::Context::new();
        let pairs: Vec<_> = (0..64)
            .map(|i| pair(&context, &format!("signals-{i}")))
            .collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        // The waiter lives until the signals have stopped.
        let (stopped, signals_stopped) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                // SAFETY: this thread's own handle, for pthread_kill below.
                tx.send(unsafe { libc::pthread_self() }).unwrap();
                let mut wait = Wait::default();
                let items: Vec<_> = (pairs.iter())
                    .map(|(_, pull)| Item::socket(pull, zmq::POLLIN, true))
                    .collect();
                let started = Instant::now();
                let mut result = Ok(());
                while result.is_ok() && started.elapsed() < Duration::from_secs(2) {
                    result = wait.wait(&items, Some(Instant::now())).map(|_| ());
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = signals_stopped.recv();
                result
            })
        };
        let thread = rx.recv().unwrap();
        let mut sent = 0u64;
        while !done.load(std::sync::atomic::Ordering::Relaxed) && sent < 2_000_000 {
            // SAFETY: the waiter is alive until it hears `stopped`.
            unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
            sent += 1;
        }
        stopped.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()), "after {sent} signals");
    }

    #[test]
    fn nothing_ready_waits_until_the_deadline() {
        let context = zmq::Context::new();
        let (_push, pull) = pair(&context, "idle");
        let mut wait = Wait::default();
        let items = [Item::socket(&pull, zmq::POLLIN, false)];
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(wait.wait(&items, Some(deadline)).unwrap()[0].is_empty());
        assert!(Instant::now() >= deadline);
    }
}
