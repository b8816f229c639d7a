//! The libzmq socket helpers that the daemon (relay, HA, streams) and the
//! client library share, so that each exists once: socket monitors
//! ([`watch`], [`next_event`]), whole-message reads ([`recv_frames`]),
//! readiness ([`readable`], [`writable`]), the port a socket was bound
//! to ([`bound_port`]), why a handshake failed ([`HandshakeFailure`]),
//! which of a bound socket's connections failed theirs ([`handshakes`]),
//! and a wait that asks a socket for its state only when it may have
//! changed ([`wait`]).
//!
//! Unsafe code is denied here and forbidden in every other zbridge crate;
//! the calls that need it (socket options that neither the `zmq` crate nor
//! std wraps, poll(2)) live alone in [`sys`] with their SAFETY comments.
#![deny(unsafe_code)]

pub mod handshakes;
#[allow(unsafe_code)]
pub mod sys;
pub mod wait;

use std::sync::atomic::{AtomicU64, Ordering};

/// A PAIR socket that receives `socket`'s libzmq monitor events of the
/// kinds in `kinds`.
pub fn watch(
    context: &zmq::Context,
    socket: &zmq::Socket,
    kinds: &[zmq::SocketEvent],
) -> zmq::Result<zmq::Socket> {
    static MONITORS: AtomicU64 = AtomicU64::new(0);
    let endpoint = format!(
        "inproc://zbridge-monitor-{}",
        MONITORS.fetch_add(1, Ordering::Relaxed)
    );
    let mask = kinds.iter().fold(0, |mask, kind| mask | kind.to_raw());
    socket.monitor(&endpoint, i32::from(mask))?;
    let events = context.socket(zmq::PAIR)?;
    events.set_linger(0)?;
    events.connect(&endpoint)?;
    Ok(events)
}

/// Two connected inproc PAIR sockets of `context`, named after `what`:
/// the control line between a thread and the one that started it.
pub fn pipe(context: &zmq::Context, what: &str) -> zmq::Result<(zmq::Socket, zmq::Socket)> {
    static PIPES: AtomicU64 = AtomicU64::new(0);
    let endpoint = format!(
        "inproc://zbridge-{what}-{}",
        PIPES.fetch_add(1, Ordering::Relaxed)
    );
    let ours = context.socket(zmq::PAIR)?;
    ours.set_linger(0)?;
    ours.bind(&endpoint)?;
    let theirs = context.socket(zmq::PAIR)?;
    theirs.set_linger(0)?;
    theirs.connect(&endpoint)?;
    Ok((ours, theirs))
}

/// The monitor events that report a failed handshake.
pub const HANDSHAKE_FAILED: [zmq::SocketEvent; 3] = [
    zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL,
    zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
    zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
];

/// Why a ZMTP handshake failed, as a socket monitor reports it (each kind
/// is followed by a `DISCONNECTED` event of the same connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The server's ZAP handler refused the client (its status code; 400:
    /// a CURVE key not admitted).
    Refused(u32),
    /// The peers speak different security mechanisms: CURVE against none.
    Mechanism,
    /// A CURVE message that did not decrypt: the client has the wrong
    /// server key.
    Cryptographic,
    /// Another ZMTP protocol error (libzmq's code): a peer that is not a
    /// ZeroMQ socket of a kind that fits, an HTTP probe.
    Protocol(u32),
    /// The connection closed before the handshake finished (its errno): the
    /// other side hung up on us, or gave up.
    Closed(u32),
}

/// libzmq's ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC (zmq.h).
const ZMTP_CRYPTOGRAPHIC: u32 = 0x1100_0001;
/// libzmq's ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH (zmq.h).
const ZMTP_MECHANISM_MISMATCH: u32 = 0x1100_0002;

impl HandshakeFailure {
    /// The failure a monitor event reports, if it reports one.
    pub fn of(event: u16, value: u32) -> Option<HandshakeFailure> {
        use zmq::SocketEvent as E;
        Some(match event {
            e if e == E::HANDSHAKE_FAILED_AUTH.to_raw() => HandshakeFailure::Refused(value),
            e if e == E::HANDSHAKE_FAILED_NO_DETAIL.to_raw() => HandshakeFailure::Closed(value),
            e if e == E::HANDSHAKE_FAILED_PROTOCOL.to_raw() => match value {
                ZMTP_MECHANISM_MISMATCH => HandshakeFailure::Mechanism,
                ZMTP_CRYPTOGRAPHIC => HandshakeFailure::Cryptographic,
                code => HandshakeFailure::Protocol(code),
            },
            _ => return None,
        })
    }
}

/// The next monitor event waiting on `events` (from [`watch`]): its raw
/// number (`zmq::SocketEvent::from_raw` panics on kinds it does not know)
/// and its value (for connection events, the connection's descriptor).
pub fn next_event(events: &zmq::Socket) -> Option<(u16, u32)> {
    loop {
        let event = match events.recv_multipart(zmq::DONTWAIT) {
            Ok(event) => event,
            Err(zmq::Error::EINTR) => continue,
            Err(_) => return None,
        };
        if let Some(head) = event.first().and_then(|f| f.get(..6)) {
            let id = u16::from_le_bytes([head[0], head[1]]);
            let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
            return Some((id, value));
        }
    }
}

/// Read one whole message without blocking; `false` when none is waiting.
///
/// A signal that interrupts a read (EINTR) is not an error: the read is
/// tried again, so a flood of signals (SIGHUP reloads) cannot end a loop.
pub fn recv_frames(socket: &zmq::Socket, frames: &mut Vec<zmq::Message>) -> zmq::Result<bool> {
    frames.clear();
    let mut flags = zmq::DONTWAIT;
    loop {
        let mut frame = zmq::Message::new();
        match socket.recv(&mut frame, flags) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) if frames.is_empty() => return Ok(false),
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
        // The rest of a multipart message is already here: frames arrive
        // whole or not at all.
        flags = 0;
        let more = frame.get_more();
        frames.push(frame);
        if !more {
            return Ok(true);
        }
    }
}

/// The port a socket was bound to, from its last endpoint.
pub fn bound_port(socket: &zmq::Socket) -> std::io::Result<u16> {
    let endpoint = socket
        .get_last_endpoint()
        .map_err(std::io::Error::other)?
        .map_err(|_| std::io::Error::other("libzmq reported a non-UTF-8 endpoint"))?;
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("cannot read the port of {endpoint}")))
}

/// Whether a whole message waits to be read.
pub fn readable(socket: &zmq::Socket) -> bool {
    socket.get_events().is_ok_and(|e| e.contains(zmq::POLLIN))
}

/// Whether a message can be sent without blocking.
pub fn writable(socket: &zmq::Socket) -> bool {
    socket.get_events().is_ok_and(|e| e.contains(zmq::POLLOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_port_is_read_back_and_a_connect_is_watched() {
        let context = zmq::Context::new();
        let server = context.socket(zmq::ROUTER).unwrap();
        server.bind("tcp://127.0.0.1:0").unwrap();
        let port = bound_port(&server).unwrap();
        assert_ne!(port, 0);
        let events = watch(&context, &server, &[zmq::SocketEvent::ACCEPTED]).unwrap();
        let client = context.socket(zmq::DEALER).unwrap();
        client.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        client.send_multipart([&b"a"[..], b"b"], 0).unwrap();
        // A blocking poll with a deadline: the accept and the message come.
        let mut items = [events.as_poll_item(zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 5000).unwrap(), 1);
        let (id, fd) = next_event(&events).unwrap();
        assert_eq!(id, zmq::SocketEvent::ACCEPTED.to_raw());
        assert!(fd > 2, "a connection's descriptor: {fd}");
        let mut items = [server.as_poll_item(zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut items, 5000).unwrap(), 1);
        assert!(readable(&server));
        let mut frames = Vec::new();
        assert!(recv_frames(&server, &mut frames).unwrap());
        let bodies: Vec<&[u8]> = frames[1..].iter().map(|f| &f[..]).collect();
        assert_eq!(bodies, [&b"a"[..], b"b"]);
        assert!(!recv_frames(&server, &mut frames).unwrap());
        assert!(frames.is_empty());
        assert!(writable(&client));
    }
}
