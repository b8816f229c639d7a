//! Streams (DESIGN §3b): remote PUB services republished by the bridge.
//!
//! One thread owns every stream socket: an XSUB per configured stream,
//! connected to its upstream PUB, and an XPUB per pub port this instance
//! holds (the primary pub port while active, the secondary while passive,
//! both for a moment during a takeover). A subscription that arrives on an
//! XPUB is forwarded to every stream's XSUB, once per prefix however many
//! ports ask for it, so the upstream sends only what someone wants. A
//! message from an XSUB gets a stamp (`zbridge_protocol::stream`) with one
//! sequence number per subscribed prefix it matches, and goes out on every
//! XPUB held. The relay thread says which ports to hold ([`Streams::hold`],
//! [`Streams::release`]) as the role machine decides; a pub port another
//! process still holds is retried here. Nothing here is on the request
//! path: streams have their own thread and libzmq context (I/O thread),
//! so stream messages never queue with requests (they share only the CPU).
//!
//! Drops: an XPUB drops silently for a subscriber at its high-water mark
//! (`stream_hwm`). Each message is first offered with ZMQ_XPUB_NODROP set,
//! which refuses it when a matching subscriber's queue is full; that is a
//! stall, counted and logged, and the message is sent again without the
//! option so that subscribers with room still get it. libzmq then skips
//! the full subscriber without telling until it has caught up, so the
//! bridge counts stalls, not messages: what each subscriber lost shows as
//! a jump in its sequence numbers (zbridge-client reports it as a gap).

use crate::config::{Config, Port};
use crate::throttle::LogThrottle;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use zbridge_protocol::stream::encode_stamp;
use zbridge_socket::sys::set_xpub_nodrop;
use zbridge_socket::{next_event, recv_frames, watch};

/// Messages read from one upstream before the loop looks at the others.
const BATCH: usize = 256;
/// How often a pub port another process holds is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// How long a pub port may stay taken before that is an error.
const BIND_WARN_AFTER: Duration = Duration::from_secs(5);
/// How often the status document is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// Prefixes remembered per stream. Numbers continue across an
/// unsubscribe and a new subscribe of the same prefix, so prefixes nobody
/// wants are kept until there are this many; then they are forgotten and
/// the stream draws a new source, which tells subscribers that its numbers
/// start again. More prefixes than this wanted at once are refused.
const MAX_PREFIXES: usize = 1024;
/// Largest subscription message a subscriber may send.
const MAX_SUBSCRIPTION_BYTES: i64 = 4096;

/// The handle the relay keeps; dropping it stops the thread.
pub struct Streams {
    control: zmq::Socket,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<Map<String, Value>>>,
    /// The ZAP handler of the streams' context (CURVE on); after the
    /// thread in drop order.
    _zap: Option<crate::curve::Zap>,
}

impl Streams {
    /// Connect to every configured stream; `None` when there are none (no
    /// pub port is bound then). The streams get their own libzmq context,
    /// so their traffic has its own I/O thread, apart from the requests'.
    pub fn start(
        config: &Config,
        admission: Option<Arc<crate::curve::Admission>>,
    ) -> anyhow::Result<Option<Streams>> {
        if config.streams.is_empty() {
            return Ok(None);
        }
        let context = &zmq::Context::new();
        // CURVE pub ports: this context's own ZAP handler, the relay's rules.
        let zap = admission
            .map(|a| crate::curve::Zap::start(context, a))
            .transpose()?;
        let (control, theirs) = zbridge_socket::pipe(context, "streams-control")?;
        let status = Arc::new(Mutex::new(Map::new()));
        let mut worker = Worker::new(context, config, theirs, Arc::clone(&status))?;
        worker.publish_status(Instant::now());
        let thread = std::thread::Builder::new()
            .name("streams".into())
            .spawn(move || worker.run())?;
        Ok(Some(Streams {
            control,
            thread: Some(thread),
            status,
            _zap: zap,
        }))
    }

    /// Bind the pub port that goes with this frontend port (retried while
    /// another process holds it).
    pub fn hold(&self, port: Port) {
        self.command(b'h', port);
    }

    /// Close the pub port that goes with this frontend port.
    pub fn release(&self, port: Port) {
        self.command(b'r', port);
    }

    /// Never blocks: a stream thread that has stopped (or stopped reading)
    /// must not hang the relay at its next role change.
    fn command(&self, what: u8, port: Port) {
        if let Err(e) = self
            .control
            .send(&[what, port.index() as u8][..], zmq::DONTWAIT)
        {
            error!(error = %e, alive = self.alive(), "cannot reach the streams thread: its pub ports no longer follow the role");
        }
    }

    /// The stream thread is still running (it ends on a poll failure or a
    /// panic; nothing is republished after that).
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// `streams`, `pub_ports` and `stream_subscribers` for the status
    /// document.
    pub fn status(&self) -> Map<String, Value> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let _ = self.control.send(&b"s"[..], zmq::DONTWAIT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One configured stream.
struct Upstream {
    name: String,
    endpoint: String,
    socket: zmq::Socket,
    events: zmq::Socket,
    up: bool,
    source: u64,
    /// Connections to the upstream after the first (see the stamp).
    session: u32,
    connected_before: bool,
    prefixes: Vec<Prefix>,
    received: u64,
    published: u64,
    /// Times a subscriber's queue was full (see the module doc).
    stalls: u64,
    stall_log: LogThrottle,
    /// Subscriptions refused over MAX_PREFIXES.
    refused: u64,
    refusal_log: LogThrottle,
}

/// A prefix some subscriber asked for, and its sequence number.
struct Prefix {
    bytes: Vec<u8>,
    seq: u64,
    /// Which pub ports have a subscriber to it.
    wanted_on: [bool; 2],
}

impl Prefix {
    fn wanted(&self) -> bool {
        self.wanted_on.iter().any(|w| *w)
    }
}

/// A bound pub port.
struct PubPort {
    socket: zmq::Socket,
    events: zmq::Socket,
    endpoint: String,
    subscribers: u64,
}

struct Worker {
    context: zmq::Context,
    control: zmq::Socket,
    upstreams: Vec<Upstream>,
    pubs: [Option<PubPort>; 2],
    /// The pub ports the relay wants held.
    held: [bool; 2],
    endpoints: [String; 2],
    ipv6: bool,
    hwm: i32,
    /// ZMQ_HANDSHAKE_IVL of the pub ports, in ms (`handshake_timeout`).
    handshake_ms: i32,
    /// The pair's key: the pub ports are CURVE servers.
    curve: Option<crate::curve::KeyPair>,
    next_retry: Option<Instant>,
    /// Since when each held pub port has failed to bind, and whether that
    /// was logged as a warning.
    bind_failing: [Option<(Instant, bool)>; 2],
    status: Arc<Mutex<Map<String, Value>>>,
    next_status: Instant,
    stamp: Vec<u8>,
}

impl Worker {
    fn new(
        context: &zmq::Context,
        config: &Config,
        control: zmq::Socket,
        status: Arc<Mutex<Map<String, Value>>>,
    ) -> anyhow::Result<Worker> {
        use anyhow::Context as _;
        let mut upstreams = Vec::new();
        for stream in &config.streams {
            let socket = context.socket(zmq::XSUB)?;
            socket.set_linger(0)?;
            socket.set_ipv6(true)?;
            socket.set_rcvhwm(config.stream_hwm)?;
            // A silent upstream (a cut link) is found by ZMTP heartbeats on
            // the bridge's own timing, and the connection rebuilt.
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
            upstreams.push(Upstream {
                name: stream.name.clone(),
                endpoint: stream.endpoint.clone(),
                socket,
                events,
                up: false,
                source: random_source(),
                session: 0,
                connected_before: false,
                prefixes: Vec::new(),
                received: 0,
                published: 0,
                stalls: 0,
                stall_log: LogThrottle::default(),
                refused: 0,
                refusal_log: LogThrottle::default(),
            });
        }
        let now = Instant::now();
        Ok(Worker {
            context: context.clone(),
            control,
            upstreams,
            pubs: [None, None],
            held: [false; 2],
            endpoints: [
                config.pub_endpoint(Port::Primary),
                config.pub_endpoint(Port::Secondary),
            ],
            ipv6: config.bind_host.contains(':'),
            hwm: config.stream_hwm,
            handshake_ms: config.handshake_ms(),
            curve: config.curve.clone(),
            next_retry: None,
            bind_failing: [None; 2],
            status,
            next_status: now,
            stamp: Vec::with_capacity(64),
        })
    }

    fn run(mut self) {
        let mut frames = Vec::with_capacity(8);
        loop {
            let now = Instant::now();
            if self.next_retry.is_some_and(|t| now >= t) {
                self.bind_held(now);
            }
            if now >= self.next_status {
                self.publish_status(now);
            }
            let next = self.next_retry.into_iter().chain([self.next_status]).min();
            let timeout = next.map_or(-1, |t| {
                t.saturating_duration_since(now).as_micros().div_ceil(1000) as i64
            });
            let ready = match self.poll(timeout) {
                Ok(ready) => ready,
                Err(e) => {
                    error!(error = %e, "stream poll failed; streams stop");
                    return;
                }
            };
            if ready.control && !self.on_control(Instant::now()) {
                return;
            }
            for (i, readable) in ready.upstream_events.iter().enumerate() {
                if *readable {
                    self.on_upstream_events(i);
                }
            }
            for port in 0..2 {
                if ready.pub_events[port] {
                    self.on_pub_events(port);
                }
                if ready.subscriptions[port] {
                    self.on_subscriptions(port);
                }
            }
            for (i, readable) in ready.upstreams.iter().enumerate() {
                if !*readable {
                    continue;
                }
                for _ in 0..BATCH {
                    match recv_frames(&self.upstreams[i].socket, &mut frames) {
                        Ok(true) => self.forward(i, &mut frames),
                        Ok(false) => break,
                        Err(e) => {
                            warn!(stream = %self.upstreams[i].name, error = %e, "cannot read from the upstream");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn poll(&self, timeout_ms: i64) -> zmq::Result<Ready> {
        let mut items = vec![self.control.as_poll_item(zmq::POLLIN)];
        for upstream in &self.upstreams {
            items.push(upstream.socket.as_poll_item(zmq::POLLIN));
            items.push(upstream.events.as_poll_item(zmq::POLLIN));
        }
        let mut pub_index = [None; 2];
        for (port, held) in self.pubs.iter().enumerate() {
            if let Some(p) = held {
                pub_index[port] = Some(items.len());
                items.push(p.socket.as_poll_item(zmq::POLLIN));
                items.push(p.events.as_poll_item(zmq::POLLIN));
            }
        }
        match zmq::poll(&mut items, timeout_ms) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
        let mut ready = Ready {
            control: items[0].is_readable(),
            ..Ready::default()
        };
        for i in 0..self.upstreams.len() {
            ready.upstreams.push(items[1 + 2 * i].is_readable());
            ready.upstream_events.push(items[2 + 2 * i].is_readable());
        }
        for (port, index) in pub_index.iter().enumerate() {
            if let Some(j) = index {
                ready.subscriptions[port] = items[*j].is_readable();
                ready.pub_events[port] = items[*j + 1].is_readable();
            }
        }
        Ok(ready)
    }

    /// Carry out the relay's commands; `false` to stop.
    fn on_control(&mut self, now: Instant) -> bool {
        while let Ok(command) = self.control.recv_bytes(zmq::DONTWAIT) {
            let port = command.get(1).map_or(0, |p| usize::from(*p).min(1));
            match command.first() {
                Some(b'h') => {
                    self.held[port] = true;
                    self.bind_held(now);
                }
                Some(b'r') => {
                    self.held[port] = false;
                    self.bind_failing[port] = None;
                    self.close(port);
                }
                _ => return false,
            }
        }
        true
    }

    /// Bind every pub port the relay wants held and nobody else holds.
    fn bind_held(&mut self, now: Instant) {
        self.next_retry = None;
        for port in 0..2 {
            if !self.held[port] || self.pubs[port].is_some() {
                continue;
            }
            let endpoint = &self.endpoints[port];
            match open_pub(
                &self.context,
                endpoint,
                self.hwm,
                self.handshake_ms,
                self.ipv6,
                self.curve.as_ref(),
            ) {
                Ok(bound) => {
                    info!(endpoint = %bound.endpoint, "stream pub port bound");
                    self.pubs[port] = Some(bound);
                    self.bind_failing[port] = None;
                    self.next_status = now;
                }
                Err(e) => {
                    // The peer gives the port up as it stops: first an info
                    // line; a warning if it is still held after a while.
                    match &mut self.bind_failing[port] {
                        None => {
                            info!(%endpoint, error = %e, "stream pub port not free yet (the peer may be letting it go); retrying every 50 ms");
                            self.bind_failing[port] = Some((now, false));
                        }
                        Some((since, warned)) if !*warned && now >= *since + BIND_WARN_AFTER => {
                            *warned = true;
                            error!(%endpoint, error = %e, "cannot bind the stream pub port: another process holds it? streams are not served there; still retrying");
                        }
                        Some(_) => {}
                    }
                    self.next_retry = Some(now + RETRY_EVERY);
                }
            }
        }
    }

    /// Close a pub port, withdrawing its subscribers' prefixes upstream.
    fn close(&mut self, port: usize) {
        let Some(closed) = self.pubs[port].take() else {
            return;
        };
        for upstream in &mut self.upstreams {
            for prefix in &mut upstream.prefixes {
                if prefix.wanted_on[port] {
                    prefix.wanted_on[port] = false;
                    if !prefix.wanted() {
                        send_subscription(&upstream.socket, false, &prefix.bytes);
                    }
                }
            }
        }
        info!(endpoint = %closed.endpoint, "stream pub port released");
    }

    fn on_upstream_events(&mut self, i: usize) {
        let upstream = &mut self.upstreams[i];
        while let Some((event, _)) = next_event(&upstream.events) {
            if event == zmq::SocketEvent::CONNECTED.to_raw() && !upstream.up {
                upstream.up = true;
                if std::mem::replace(&mut upstream.connected_before, true) {
                    upstream.session = upstream.session.wrapping_add(1);
                }
                info!(stream = %upstream.name, endpoint = %upstream.endpoint, "stream upstream connected");
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() && upstream.up {
                upstream.up = false;
                warn!(stream = %upstream.name, endpoint = %upstream.endpoint, "stream upstream lost; reconnecting (what it publishes meanwhile is lost; subscribers are told by the stamp's session)");
            }
        }
        self.next_status = Instant::now();
    }

    fn on_pub_events(&mut self, port: usize) {
        let Some(bound) = &mut self.pubs[port] else {
            return;
        };
        while let Some((event, _)) = next_event(&bound.events) {
            if event == zmq::SocketEvent::ACCEPTED.to_raw() {
                bound.subscribers += 1;
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                bound.subscribers = bound.subscribers.saturating_sub(1);
            }
        }
    }

    /// Forward what subscribers on a port asked for (or withdrew).
    fn on_subscriptions(&mut self, port: usize) {
        loop {
            let Some(bound) = &self.pubs[port] else {
                return;
            };
            let Ok(message) = bound.socket.recv_bytes(zmq::DONTWAIT) else {
                return;
            };
            let (subscribe, prefix) = match message.split_first() {
                Some((1, prefix)) => (true, prefix),
                Some((0, prefix)) => (false, prefix),
                _ => continue,
            };
            for upstream in &mut self.upstreams {
                upstream.subscription(port, subscribe, prefix);
            }
        }
    }

    /// Stamp one upstream message and send it on every pub port held.
    fn forward(&mut self, i: usize, frames: &mut Vec<zmq::Message>) {
        let upstream = &mut self.upstreams[i];
        upstream.received += 1;
        let topic: &[u8] = frames.first().map_or(&[], |f| f);
        let mut matched = false;
        for prefix in &mut upstream.prefixes {
            if prefix.wanted() && topic.starts_with(&prefix.bytes) {
                prefix.seq += 1;
                matched = true;
            }
        }
        if !matched {
            // Sent before an unsubscribe reached the upstream: nobody
            // wants it.
            return;
        }
        let seqs = upstream
            .prefixes
            .iter()
            .filter(|p| p.wanted() && topic.starts_with(&p.bytes))
            .map(|p| (p.bytes.as_slice(), p.seq));
        encode_stamp(
            &mut self.stamp,
            upstream.source,
            upstream.session,
            &upstream.name,
            seqs,
        );
        upstream.published += 1;
        // The frames can be moved out for the last port held; the port
        // before it (during a takeover) gets copies.
        let last_held = self.pubs.iter().rposition(Option::is_some);
        for (port, bound) in self.pubs.iter_mut().enumerate() {
            let Some(bound) = bound else { continue };
            let owned = Some(port) == last_held;
            match publish(&mut bound.socket, frames, &self.stamp, owned) {
                Ok(true) => {}
                Ok(false) => upstream.stalled(self.hwm),
                Err(e) => warn!(stream = %upstream.name, error = %e, "cannot publish"),
            }
        }
    }

    fn publish_status(&mut self, now: Instant) {
        let mut streams = Map::new();
        for u in &self.upstreams {
            streams.insert(
                u.name.clone(),
                json!({
                    "endpoint": u.endpoint,
                    "up": u.up,
                    "source": format!("{:016x}", u.source),
                    "received_total": u.received,
                    "published_total": u.published,
                    "subscriber_stalls_total": u.stalls,
                    "subscriptions_refused_total": u.refused,
                    "subscriptions": u.prefixes.iter().filter(|p| p.wanted()).count(),
                }),
            );
        }
        let mut doc = Map::new();
        doc.insert("streams".into(), streams.into());
        let bound: Vec<Value> = self
            .pubs
            .iter()
            .flatten()
            .map(|p| p.endpoint.clone().into())
            .collect();
        doc.insert("pub_endpoints".into(), bound.into());
        let subscribers: u64 = self.pubs.iter().flatten().map(|p| p.subscribers).sum();
        doc.insert("stream_subscribers".into(), subscribers.into());
        if let Ok(mut shared) = self.status.lock() {
            *shared = doc;
        }
        self.next_status = now + STATUS_EVERY;
    }
}

/// How often a stalling subscriber (or a refused subscription) is logged,
/// per stream.
const STALL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Upstream {
    fn stalled(&mut self, hwm: i32) {
        self.stalls += 1;
        if self.stall_log.due(Instant::now(), STALL_LOG_EVERY) {
            warn!(
                stream = %self.name,
                stream_hwm = hwm,
                subscriber_stalls_total = self.stalls,
                "a subscriber is not keeping up: its queue is full and it loses messages until it catches up (it sees how many in the sequence numbers); raise stream_hwm or speed it up"
            );
        }
    }

    /// A subscriber on `port` asked for (or withdrew) `prefix`; the
    /// upstream hears of it when the first asks and when the last leaves.
    fn subscription(&mut self, port: usize, subscribe: bool, prefix: &[u8]) {
        let index = self.prefixes.iter().position(|p| p.bytes == prefix);
        if subscribe {
            let index = match index {
                Some(i) => i,
                None => {
                    if self.prefixes.len() >= MAX_PREFIXES {
                        self.prefixes.retain(Prefix::wanted);
                        self.source = random_source();
                        warn!(stream = %self.name, "too many prefixes: forgot those nobody wants; numbering starts again under a new source");
                    }
                    if self.prefixes.len() >= MAX_PREFIXES {
                        // All wanted: a subscriber asking for thousands of
                        // prefixes would cost every message a long scan.
                        self.refused += 1;
                        if self.refusal_log.due(Instant::now(), STALL_LOG_EVERY) {
                            warn!(stream = %self.name, prefix = %String::from_utf8_lossy(prefix), max = MAX_PREFIXES, subscriptions_refused_total = self.refused, "subscription refused: the stream has as many prefixes subscribed as it takes");
                        }
                        return;
                    }
                    self.prefixes.push(Prefix {
                        bytes: prefix.to_vec(),
                        seq: 0,
                        wanted_on: [false; 2],
                    });
                    self.prefixes.len() - 1
                }
            };
            let entry = &mut self.prefixes[index];
            let was_wanted = entry.wanted();
            entry.wanted_on[port] = true;
            if !was_wanted {
                send_subscription(&self.socket, true, prefix);
            }
        } else if let Some(entry) = index.map(|i| &mut self.prefixes[i]) {
            if entry.wanted_on[port] {
                entry.wanted_on[port] = false;
                if !entry.wanted() {
                    send_subscription(&self.socket, false, prefix);
                }
            }
        }
    }
}

#[derive(Default)]
struct Ready {
    control: bool,
    upstreams: Vec<bool>,
    upstream_events: Vec<bool>,
    subscriptions: [bool; 2],
    pub_events: [bool; 2],
}

fn open_pub(
    context: &zmq::Context,
    endpoint: &str,
    hwm: i32,
    handshake_ms: i32,
    ipv6: bool,
    curve: Option<&crate::curve::KeyPair>,
) -> zmq::Result<PubPort> {
    let mut socket = context.socket(zmq::XPUB)?;
    let events = watch(
        context,
        &socket,
        &[zmq::SocketEvent::ACCEPTED, zmq::SocketEvent::DISCONNECTED],
    )?;
    socket.set_linger(0)?;
    socket.set_sndhwm(hwm)?;
    socket.set_maxmsgsize(MAX_SUBSCRIPTION_BYTES)?;
    socket.set_handshake_ivl(handshake_ms)?;
    socket.set_ipv6(ipv6)?;
    set_xpub_nodrop(&mut socket, true)?;
    if let Some(pair) = curve {
        crate::curve::server(&socket, pair)?;
    }
    socket.bind(endpoint)?;
    let endpoint = socket
        .get_last_endpoint()?
        .unwrap_or_else(|_| endpoint.to_string());
    Ok(PubPort {
        socket,
        events,
        endpoint,
        subscribers: 0,
    })
}

/// Send `frames` and the stamp; `Ok(false)` when a subscriber's queue was
/// full (it missed this message). `owned`: the frames may be moved out (the last port).
fn publish(
    socket: &mut zmq::Socket,
    frames: &mut Vec<zmq::Message>,
    stamp: &[u8],
    owned: bool,
) -> zmq::Result<bool> {
    let first = frames.first().map_or(&[][..], |f| &f[..]);
    let complete = match socket.send(first, zmq::DONTWAIT | zmq::SNDMORE) {
        Ok(()) => true,
        Err(zmq::Error::EAGAIN) => {
            set_xpub_nodrop(socket, false)?;
            socket.send(first, zmq::SNDMORE)?;
            false
        }
        Err(e) => return Err(e),
    };
    if owned {
        for frame in frames.drain(..).skip(1) {
            socket.send(frame, zmq::SNDMORE)?;
        }
    } else {
        for frame in frames.iter().skip(1) {
            socket.send(&frame[..], zmq::SNDMORE)?;
        }
    }
    socket.send(stamp, 0)?;
    if !complete {
        set_xpub_nodrop(socket, true)?;
    }
    Ok(complete)
}

fn send_subscription(socket: &zmq::Socket, subscribe: bool, prefix: &[u8]) {
    let mut message = Vec::with_capacity(prefix.len() + 1);
    message.push(u8::from(subscribe));
    message.extend_from_slice(prefix);
    if let Err(e) = socket.send(message, zmq::DONTWAIT) {
        warn!(error = %e, "cannot forward a subscription upstream");
    }
}

/// A stream's numbering source: random, so that numbers from two bridges,
/// or from one bridge before and after a restart, are never mistaken for
/// one sequence.
fn random_source() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::File;

    /// A stream thread that has stopped never blocks the relay: its
    /// commands fail at once (they blocked for ever when the thread was
    /// gone), and the handle says it is no longer alive.
    #[test]
    fn a_stopped_stream_thread_never_blocks_the_relay() {
        let config = File::from_toml_str(
            "primary_pub_port = 0\nsecondary_pub_port = 0\n[streams.s]\nendpoint = \"tcp://127.0.0.1:9\"\n",
        )
        .and_then(|f| f.validate())
        .unwrap();
        let streams = Streams::start(&config, None).unwrap().unwrap();
        assert!(streams.alive());
        streams.control.send(&b"s"[..], 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while streams.alive() {
            assert!(Instant::now() < deadline, "the stream thread did not stop");
            std::thread::yield_now();
        }
        let started = Instant::now();
        // More commands than the control socket queues (1,000).
        for _ in 0..5_000 {
            streams.hold(Port::Primary);
            streams.release(Port::Secondary);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!streams.alive());
    }
}
