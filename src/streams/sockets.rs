//! The stream sockets: an upstream's XSUB, a pub port's XPUB, and the
//! sends on them. No decisions here; [`super::worker`] calls these as the
//! machine's actions say.

use crate::config::{Config, Stream};
use std::time::Duration;
use tracing::{info, warn};
use zbridge_socket::handshakes::{self, Handshakes};
use zbridge_socket::sys::set_xpub_nodrop;
use zbridge_socket::watch;

/// Largest subscription message a subscriber may send.
const MAX_SUBSCRIPTION_BYTES: i64 = 4096;

/// A configured stream's XSUB and its monitor.
pub struct UpstreamSocket {
    pub socket: zmq::Socket,
    pub events: zmq::Socket,
}

/// Connect an XSUB to `stream`'s publisher.
pub fn open_upstream(
    context: &zmq::Context,
    config: &Config,
    stream: &Stream,
) -> anyhow::Result<UpstreamSocket> {
    use anyhow::Context as _;
    let socket = context.socket(zmq::XSUB)?;
    socket.set_linger(0)?;
    socket.set_ipv6(true)?;
    socket.set_rcvhwm(config.stream_hwm)?;
    // A silent upstream (a cut link) is found by ZMTP heartbeats on the
    // bridge's own timing, and the connection rebuilt.
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    socket.set_heartbeat_ivl(ms(config.heartbeat_interval))?;
    socket.set_heartbeat_timeout(ms(config.heartbeat_timeout))?;
    if let (Some(pair), Some(server)) = (&config.curve, &stream.curve_server_key) {
        crate::curve::client(&socket, pair, server)?;
    }
    let events = watch(
        context,
        &socket,
        &[zmq::SocketEvent::CONNECTED, zmq::SocketEvent::DISCONNECTED],
    )?;
    socket.connect(&stream.endpoint).with_context(|| {
        format!(
            "cannot connect stream {} to {}",
            stream.name, stream.endpoint
        )
    })?;
    info!(stream = %stream.name, endpoint = %stream.endpoint, "stream upstream connecting");
    Ok(UpstreamSocket { socket, events })
}

/// How the pub ports are opened.
pub struct PubSettings {
    pub hwm: i32,
    /// ZMQ_HANDSHAKE_IVL, in ms (`handshake_timeout`).
    pub handshake_ms: i32,
    pub ipv6: bool,
    /// The pair's key: the pub ports are CURVE servers.
    pub curve: Option<crate::curve::KeyPair>,
    /// Pass on every subscription, not only a prefix's first (streams
    /// with last values replay them to each new subscriber).
    pub verbose: bool,
}

/// A bound pub port, its monitor, and its connections' handshakes.
pub struct PubSocket {
    pub socket: zmq::Socket,
    pub events: zmq::Socket,
    pub handshakes: Handshakes,
}

/// Bind a pub port; the endpoint as bound comes back too.
pub fn open_pub(
    context: &zmq::Context,
    endpoint: &str,
    settings: &PubSettings,
) -> zmq::Result<(PubSocket, String)> {
    let mut socket = context.socket(zmq::XPUB)?;
    let events = watch(
        context,
        &socket,
        &handshakes::events(settings.curve.is_some()),
    )?;
    socket.set_linger(0)?;
    socket.set_sndhwm(settings.hwm)?;
    socket.set_maxmsgsize(MAX_SUBSCRIPTION_BYTES)?;
    socket.set_handshake_ivl(settings.handshake_ms)?;
    socket.set_ipv6(settings.ipv6)?;
    socket.set_xpub_verbose(settings.verbose)?;
    set_xpub_nodrop(&mut socket, true)?;
    if let Some(pair) = &settings.curve {
        crate::curve::server(&socket, pair)?;
    }
    socket.bind(endpoint)?;
    let bound = socket
        .get_last_endpoint()?
        .unwrap_or_else(|_| endpoint.to_string());
    let handshakes = Handshakes::default();
    Ok((
        PubSocket {
            socket,
            events,
            handshakes,
        },
        bound,
    ))
}

/// Frames to publish: the event's own (moved out for the last port) or a
/// last value's (copied).
pub enum Frames<'a> {
    Read(&'a mut Vec<zmq::Message>, bool),
    Kept(&'a [Vec<u8>]),
}

/// Send `frames` and the stamp; `Ok(false)` when a subscriber's queue was
/// full (it missed this message): the message is offered with
/// ZMQ_XPUB_NODROP, which refuses it then, and sent again without it so
/// that subscribers with room still get it.
pub fn publish(socket: &mut zmq::Socket, frames: Frames<'_>, stamp: &[u8]) -> zmq::Result<bool> {
    let first = match &frames {
        Frames::Read(read, _) => read.first().map_or(&[][..], |f| &f[..]),
        Frames::Kept(kept) => kept.first().map_or(&[][..], |f| &f[..]),
    };
    let complete = match socket.send(first, zmq::DONTWAIT | zmq::SNDMORE) {
        Ok(()) => true,
        Err(zmq::Error::EAGAIN) => {
            set_xpub_nodrop(socket, false)?;
            socket.send(first, zmq::SNDMORE)?;
            false
        }
        Err(e) => return Err(e),
    };
    match frames {
        Frames::Read(read, true) => {
            for frame in read.drain(..).skip(1) {
                socket.send(frame, zmq::SNDMORE)?;
            }
        }
        Frames::Read(read, false) => {
            for frame in read.iter().skip(1) {
                socket.send(&frame[..], zmq::SNDMORE)?;
            }
        }
        Frames::Kept(kept) => {
            for frame in kept.iter().skip(1) {
                socket.send(&frame[..], zmq::SNDMORE)?;
            }
        }
    }
    socket.send(stamp, 0)?;
    if !complete {
        set_xpub_nodrop(socket, true)?;
    }
    Ok(complete)
}

/// Ask an upstream for a prefix, or tell it to stop.
pub fn send_subscription(socket: &zmq::Socket, subscribe: bool, prefix: &[u8]) {
    let mut message = Vec::with_capacity(prefix.len() + 1);
    message.push(u8::from(subscribe));
    message.extend_from_slice(prefix);
    if let Err(e) = socket.send(message, zmq::DONTWAIT) {
        warn!(error = %e, "cannot forward a subscription upstream");
    }
}
