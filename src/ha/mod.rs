//! High availability: the role machine ([`machine`], pure) and the heartbeat
//! I/O ([`Heartbeats`]): a PUB socket that publishes this instance's
//! heartbeats and failover notifications, a SUB socket connected to the
//! peer's (with a socket monitor: a closed connection is the first sign
//! that the peer's process died), and the [`Verifier`] every received
//! message passes first. The relay loop polls the SUB socket and feeds
//! valid heartbeats to the machine. [`Probe`] asks the kernel whether the
//! peer's frontend still listens, for the two-host proof of death.

pub mod machine;

use crate::config::{tcp_endpoint, Config};
use crate::throttle::LogThrottle;
use anyhow::Context as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};
use zbridge_protocol::heartbeat::{
    Heartbeat, Message, Node, Notification, Rejected, Role, State, Verifier,
};
use zbridge_protocol::time::later;

/// What a heartbeat says about this instance, from the machine and relay.
pub struct Beat {
    pub role: Role,
    pub port: u16,
    pub load: f64,
    pub epoch: u64,
    pub state: State,
}

pub struct Heartbeats {
    publisher: zmq::Socket,
    subscriber: zmq::Socket,
    /// The subscriber's socket monitor: its connection to the peer closed.
    links: zmq::Socket,
    verifier: Verifier,
    token: Option<Vec<u8>>,
    node: Node,
    boot: String,
    seq: u64,
    started: Instant,
    interval: Duration,
    next_publish: Instant,
    /// Where this instance publishes, and where it listens for its peer.
    pub endpoint: String,
    pub peer_endpoint: String,
    pub rejected: [u64; Rejected::ALL.len()],
    reject_log: LogThrottle,
}

impl Heartbeats {
    pub fn new(context: &zmq::Context, config: &Config, now: Instant) -> anyhow::Result<Self> {
        let (own_port, peer_port) = config.heartbeat_ports();
        let publisher = context.socket(zmq::PUB)?;
        publisher.set_linger(500)?;
        publisher.set_handshake_ivl(config.handshake_ms())?;
        publisher.set_ipv6(config.bind_host.contains(':'))?;
        // CURVE: only holders of the pair's key (the peer) and of an
        // allowed client key hear this instance; it hears only a publisher
        // that proves it holds the pair's secret.
        if let Some(pair) = &config.curve {
            crate::curve::server(&publisher, pair)?;
        }
        let bind = tcp_endpoint(&config.bind_host, own_port);
        publisher.bind(&bind).map_err(|e| match e {
            zmq::Error::EADDRINUSE => anyhow::anyhow!(
                "cannot bind the heartbeat publisher on {bind}: port {own_port} is taken by another program, most likely another zbridge started with the same ports (`ss -ltnp 'sport = :{own_port}'` shows which process); give each instance its own --mode, or stop the other one"
            ),
            e => anyhow::Error::from(e)
                .context(format!("cannot bind the heartbeat publisher on {bind}")),
        })?;
        let own_port = zbridge_socket::bound_port(&publisher)?;
        let subscriber = context.socket(zmq::SUB)?;
        subscriber.set_linger(0)?;
        subscriber.set_ipv6(true)?;
        subscriber.set_subscribe(b"")?;
        // A peer that is gone must not be waited for: reconnect quickly.
        subscriber.set_reconnect_ivl(100)?;
        subscriber.set_reconnect_ivl_max(1000)?;
        if let Some(pair) = &config.curve {
            crate::curve::client(&subscriber, pair, &pair.public)?;
        }
        let links = zbridge_socket::watch(context, &subscriber, &[zmq::SocketEvent::DISCONNECTED])?;
        let peer_endpoint = tcp_endpoint(config.peer_host(), peer_port);
        subscriber.connect(&peer_endpoint).with_context(|| {
            format!("cannot connect to the peer's heartbeats at {peer_endpoint}")
        })?;
        Ok(Heartbeats {
            publisher,
            subscriber,
            links,
            verifier: Verifier::new(config.auth_token.clone(), config.heartbeat_max_skew),
            token: config.auth_token.clone(),
            node: config.node(),
            boot: boot_id(),
            seq: 0,
            started: now,
            interval: config.heartbeat_interval,
            next_publish: now,
            endpoint: tcp_endpoint(config.own_host(), own_port),
            peer_endpoint,
            rejected: [0; Rejected::ALL.len()],
            reject_log: LogThrottle::default(),
        })
    }

    pub fn subscriber(&self) -> &zmq::Socket {
        &self.subscriber
    }

    /// Readable when the connection to the peer's heartbeats changed.
    pub fn links(&self) -> &zmq::Socket {
        &self.links
    }

    /// Whether the connection to the peer's heartbeat port closed since
    /// the last call.
    pub fn peer_disconnected(&self) -> bool {
        let mut closed = false;
        while let Some((event, _)) = zbridge_socket::next_event(&self.links) {
            closed |= event == zmq::SocketEvent::DISCONNECTED.to_raw();
        }
        closed
    }

    pub fn boot(&self) -> &str {
        &self.boot
    }

    pub fn next_publish(&self) -> Instant {
        self.next_publish
    }

    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Publish a heartbeat now; the next one is due an interval later.
    pub fn publish(&mut self, now: Instant, beat: Beat) {
        self.seq += 1;
        let message = Message::Heartbeat(Heartbeat {
            timestamp: unix_now(),
            instance: beat.role,
            port: beat.port,
            uptime: now.saturating_duration_since(self.started).as_secs(),
            load: beat.load,
            node: self.node,
            boot: self.boot.clone(),
            seq: self.seq,
            epoch: beat.epoch,
            state: beat.state,
        });
        self.send(&message);
        self.next_publish = later(now, self.interval);
    }

    /// Tell the peer and the clients that this instance took over.
    pub fn notify(&mut self, primary_port: u16, endpoint: String, epoch: u64) {
        self.seq += 1;
        let message = Message::FailoverNotification(Notification {
            timestamp: unix_now(),
            new_active_port: primary_port,
            old_active_port: primary_port,
            node: self.node,
            endpoints: vec![endpoint],
            boot: self.boot.clone(),
            seq: self.seq,
            epoch,
        });
        self.send(&message);
    }

    fn send(&self, message: &Message) {
        let frame = message.encode(self.token.as_deref());
        if let Err(e) = self.publisher.send(frame, zmq::DONTWAIT) {
            debug!(error = %e, "heartbeat not sent");
        }
    }

    /// The valid messages waiting on the subscriber. Invalid ones are
    /// counted by reason and logged at most once per interval.
    pub fn receive(&mut self, now: Instant) -> Vec<Message> {
        let mut valid = Vec::new();
        loop {
            let frame = match self.subscriber.recv_bytes(zmq::DONTWAIT) {
                Ok(frame) => frame,
                Err(zmq::Error::EINTR) => continue,
                Err(_) => break,
            };
            match self.verifier.verify(&frame, unix_now()) {
                Ok(message) if boot_of(&message) == self.boot => {}
                Ok(message) => valid.push(message),
                Err(reason) => {
                    self.rejected[reason.index()] += 1;
                    if self.reject_log.due(now, self.interval) {
                        warn!(
                            %reason,
                            from = %self.peer_endpoint,
                            rejected_total = self.rejected.iter().sum::<u64>(),
                            "rejected a heartbeat: it neither delays nor causes a failover"
                        );
                    }
                }
            }
        }
        valid
    }
}

/// A connect to the peer's primary port, on a thread of its own (a
/// connect to a dead host can take its whole timeout), reporting through
/// a socket pair the relay polls.
pub struct Probe {
    read: UnixStream,
    write: UnixStream,
    running: bool,
}

impl Probe {
    pub fn new() -> std::io::Result<Probe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        Ok(Probe {
            read,
            write,
            running: false,
        })
    }

    /// Readable when a probe has finished.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Connect to `host:port` within `timeout`, unless a probe runs.
    pub fn start(&mut self, host: &str, port: u16, timeout: Duration) {
        if self.running {
            return;
        }
        let Ok(mut write) = self.write.try_clone() else {
            return;
        };
        let host = host.to_string();
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let refused = refused(&host, port, timeout);
                let _ = write.write_all(&[u8::from(refused)]);
            });
        self.running = spawned.is_ok();
    }

    /// The finished probe's answer: `Some(true)` when the connect was
    /// refused (nothing listens there: the peer's process is gone).
    pub fn take(&mut self) -> Option<bool> {
        let mut answer = [0u8; 1];
        match (&self.read).read(&mut answer) {
            Ok(1) => {
                self.running = false;
                Some(answer[0] == 1)
            }
            _ => None,
        }
    }
}

/// Whether every address of `host:port` refused a connect: the kernel
/// answered that no process listens there. A connect that succeeds, times
/// out or fails otherwise (no route, a dead host) is no such answer.
fn refused(host: &str, port: u16, timeout: Duration) -> bool {
    let Ok(addresses) = (host, port).to_socket_addrs() else {
        return false;
    };
    let mut any = false;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => any = true,
            _ => return false,
        }
    }
    any
}

fn boot_of(message: &Message) -> &str {
    match message {
        Message::Heartbeat(h) => &h.boot,
        Message::FailoverNotification(n) => &n.boot,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A random id for this process, so that a restarted peer is told apart.
fn boot_id() -> String {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Unique enough without /dev/urandom: the pid and the clock.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64 ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
