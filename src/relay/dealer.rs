//! A target's DEALER and its socket monitor, which tells a service that
//! refuses the bridge's handshake (a PUB where a REP was meant, CURVE on
//! one side only) from one that is not running, so that the requests
//! waiting for it are told which.

use crate::config::{Config, Target};
use crate::curve;
use std::ops::Deref;
use zbridge_socket::{next_event, watch, HandshakeFailure, HANDSHAKE_FAILED};

/// The DEALER (what the loop sends and reads on, through `Deref`) and its
/// handshakes.
pub(crate) struct Dealer {
    socket: zmq::Socket,
    events: zmq::Socket,
    /// Whether the bridge has a CURVE key for this target.
    curve: bool,
    /// A TCP connection is up and its handshake has not finished.
    handshaking: bool,
    /// The failure libzmq reported for the handshake under way.
    failure: Option<HandshakeFailure>,
}

impl Deref for Dealer {
    type Target = zmq::Socket;

    fn deref(&self) -> &zmq::Socket {
        &self.socket
    }
}

impl Dealer {
    /// A DEALER connected to `target`'s backend.
    pub fn open(
        context: &zmq::Context,
        config: &Config,
        target: &Target,
    ) -> anyhow::Result<Dealer> {
        use anyhow::Context as _;
        let socket = context.socket(zmq::DEALER)?;
        socket.set_immediate(true)?;
        socket.set_linger(0)?;
        socket.set_ipv6(true)?;
        let hwm = i32::try_from(config.max_in_flight.saturating_mul(2)).unwrap_or(i32::MAX);
        socket.set_sndhwm(hwm)?;
        socket.set_rcvhwm(hwm)?;
        let mut curve = false;
        if let (Some(pair), Some(server)) = (&config.curve, &target.curve_server_key) {
            curve::client(&socket, pair, server)?;
            curve = true;
        }
        let mut kinds = vec![
            zmq::SocketEvent::CONNECTED,
            zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
            zmq::SocketEvent::DISCONNECTED,
        ];
        kinds.extend(HANDSHAKE_FAILED);
        let events = watch(context, &socket, &kinds)?;
        socket.connect(&target.endpoint).with_context(|| {
            format!(
                "cannot connect target {} to {}",
                target.name, target.endpoint
            )
        })?;
        Ok(Dealer {
            socket,
            events,
            curve,
            handshaking: false,
            failure: None,
        })
    }

    /// Read the monitor's events: `Some(refused)` when what the service
    /// did with our last handshake changed (`None`: it succeeded; else why
    /// it was ended), `None` when nothing changed.
    pub fn handshakes(&mut self) -> Option<Option<&'static str>> {
        let mut changed = None;
        while let Some((event, value)) = next_event(&self.events) {
            if let Some(failure) = HandshakeFailure::of(event, value) {
                self.failure = Some(failure);
            } else if event == zmq::SocketEvent::CONNECTED.to_raw() {
                (self.handshaking, self.failure) = (true, None);
            } else if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
                self.handshaking = false;
                changed = Some(None);
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() && self.handshaking {
                self.handshaking = false;
                changed = Some(Some(refused_why(self.failure.take(), self.curve)));
            }
        }
        changed
    }
}

/// What a service that ended the bridge's handshake is likely to be.
/// `None`: libzmq reported no cause, which it does for a socket type that
/// cannot talk to a DEALER (the READY command names it).
fn refused_why(failure: Option<HandshakeFailure>, curve: bool) -> &'static str {
    match (failure, curve) {
        (None | Some(HandshakeFailure::Protocol(_)), _) | (Some(HandshakeFailure::Closed(_)), false) => "the service accepts connections but ends the ZeroMQ handshake: is it a REP or ROUTER socket (a PUB, PUSH or SUB cannot answer; a PUB belongs in [streams])?",
        (Some(HandshakeFailure::Mechanism), false) => "the service wants CURVE: give the target its curve_server_key (and the bridge curve_secret_key_file)",
        (Some(HandshakeFailure::Mechanism), true) => "the service does not use CURVE: remove the target's curve_server_key",
        (Some(HandshakeFailure::Refused(_)), _) => "the service refused the bridge's CURVE key: admit bridge.key.pub there",
        (Some(HandshakeFailure::Cryptographic | HandshakeFailure::Closed(_)), true) => "the service ended our CURVE handshake: is the target's curve_server_key the service's public key?",
        (Some(HandshakeFailure::Cryptographic), false) => "the service's handshake did not decrypt: give the target its curve_server_key",
    }
}
