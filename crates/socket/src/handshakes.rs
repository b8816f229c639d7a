//! A bound socket's connections that have not finished their ZMTP
//! handshake, as its monitor reports them, and which of them failed: the
//! relay's frontends and the stream pub ports read their monitors through
//! it, so that a refused client counts the same on both.
//!
//! libzmq reports a failed handshake in two events: the failure (its kind,
//! with no descriptor), then the `DISCONNECTED` of the connection (its
//! descriptor). The failure is held until a connection still waiting for
//! its handshake closes.

use crate::sys::{peer_of, shut_down};
use crate::HandshakeFailure;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The monitor events a bound socket's [`Handshakes`] reads: its
/// connections, and with CURVE the handshakes that fail before ZAP (a
/// client without CURVE, or with the wrong server key; which of the two
/// kinds libzmq reports depends on who closes first). ZAP's own refusals
/// are counted where ZAP answers.
pub fn events(curve: bool) -> Vec<zmq::SocketEvent> {
    let mut kinds = vec![
        zmq::SocketEvent::ACCEPTED,
        zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
        zmq::SocketEvent::DISCONNECTED,
    ];
    if curve {
        kinds.push(zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL);
        kinds.push(zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL);
    }
    kinds
}

/// A connection waiting for its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub fd: RawFd,
    /// Its peer's address: it tells a descriptor that libzmq closed and the
    /// kernel reused from the one accepted, and names a client whose
    /// handshake failed.
    pub peer: Option<SocketAddr>,
    /// Taken by a plain port beside a CURVE one.
    pub plain: bool,
}

/// What one monitor event meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Accepted(RawFd),
    /// A connection closed; with its failed handshake if it had one.
    Closed(RawFd, Option<(Pending, HandshakeFailure)>),
    /// A handshake finished, or a failure waiting for its connection.
    Nothing,
}

#[derive(Debug, Default)]
pub struct Handshakes {
    /// Oldest first.
    pending: VecDeque<Pending>,
    /// A failure reported, waiting for its connection's `DISCONNECTED`.
    failure: Option<HandshakeFailure>,
}

impl Handshakes {
    /// Take one monitor event (from [`crate::next_event`]); `plain` says
    /// whether an accepted descriptor came through a plain port.
    pub fn see(&mut self, event: u16, value: u32, plain: impl FnOnce(RawFd) -> bool) -> Seen {
        use zmq::SocketEvent as E;
        if let Some(failure) = HandshakeFailure::of(event, value) {
            self.failure = Some(failure);
            return Seen::Nothing;
        }
        let fd = RawFd::try_from(value).unwrap_or(-1);
        if event == E::ACCEPTED.to_raw() {
            self.pending.push_back(Pending {
                fd,
                peer: peer_of(fd),
                plain: plain(fd),
            });
            Seen::Accepted(fd)
        } else if event == E::HANDSHAKE_SUCCEEDED.to_raw() {
            self.pending.retain(|p| p.fd != fd);
            Seen::Nothing
        } else if event == E::DISCONNECTED.to_raw() {
            let failure = self.failure.take();
            let gone = (self.pending.iter().position(|p| p.fd == fd))
                .and_then(|at| self.pending.remove(at));
            Seen::Closed(fd, gone.zip(failure))
        } else {
            Seen::Nothing
        }
    }

    /// Shut down the oldest connections still waiting while more than
    /// `max` wait, so that working peers keep their descriptors; how many
    /// were shut down (a descriptor that libzmq closed meanwhile and the
    /// kernel reused for another peer is left alone).
    pub fn shed(&mut self, max: usize) -> u64 {
        let mut shed = 0;
        while self.pending.len() > max {
            let Some(Pending { fd, peer, .. }) = self.pending.pop_front() else {
                break;
            };
            if peer.is_some() && peer_of(fd) == peer {
                shut_down(fd);
                shed += 1;
            }
        }
        shed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmq::SocketEvent as E;

    const MISMATCH: u32 = 0x1100_0002;

    fn see(h: &mut Handshakes, event: E, value: u32) -> Seen {
        h.see(event.to_raw(), value, |fd| fd == 7)
    }

    #[test]
    fn a_failure_is_the_next_waiting_connection_to_close() {
        let mut h = Handshakes::default();
        assert_eq!(see(&mut h, E::ACCEPTED, 5), Seen::Accepted(5));
        assert_eq!(see(&mut h, E::ACCEPTED, 7), Seen::Accepted(7));
        assert_eq!(
            see(&mut h, E::HANDSHAKE_FAILED_PROTOCOL, MISMATCH),
            Seen::Nothing
        );
        let pending = Pending {
            fd: 7,
            peer: None,
            plain: true,
        };
        assert_eq!(
            see(&mut h, E::DISCONNECTED, 7),
            Seen::Closed(7, Some((pending, HandshakeFailure::Mechanism)))
        );
        // The failure went with that connection: the other closes clean.
        assert_eq!(see(&mut h, E::DISCONNECTED, 5), Seen::Closed(5, None));
    }

    #[test]
    fn a_connection_past_its_handshake_closes_without_a_failure() {
        let mut h = Handshakes::default();
        see(&mut h, E::ACCEPTED, 5);
        assert_eq!(see(&mut h, E::HANDSHAKE_SUCCEEDED, 5), Seen::Nothing);
        see(&mut h, E::HANDSHAKE_FAILED_NO_DETAIL, 104);
        assert_eq!(see(&mut h, E::DISCONNECTED, 5), Seen::Closed(5, None));
        // Nor does the next one inherit the failure.
        see(&mut h, E::ACCEPTED, 6);
        assert_eq!(see(&mut h, E::DISCONNECTED, 6), Seen::Closed(6, None));
    }

    #[test]
    fn shed_forgets_the_oldest_beyond_the_bound() {
        // Descriptors this process does not have: no peer, so nothing is
        // shut down, but the oldest are forgotten.
        let mut h = Handshakes::default();
        for fd in 900_001..=900_004 {
            see(&mut h, E::ACCEPTED, fd);
        }
        assert_eq!(h.shed(4), 0);
        assert_eq!(h.pending.len(), 4);
        assert_eq!(h.shed(2), 0);
        let left: Vec<RawFd> = h.pending.iter().map(|p| p.fd).collect();
        assert_eq!(left, [900_003, 900_004]);
    }

    #[test]
    fn shed_shuts_down_a_waiting_connection_past_the_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        use std::os::fd::AsRawFd;
        let fd = accepted.as_raw_fd();
        let mut h = Handshakes::default();
        see(&mut h, E::ACCEPTED, u32::try_from(fd).unwrap());
        assert_eq!(h.shed(0), 1);
        // The peer sees its connection end.
        use std::io::Read;
        let mut byte = [0u8; 1];
        assert_eq!((&client).read(&mut byte).unwrap(), 0);
    }
}
