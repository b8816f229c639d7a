//! The relay: the poll loop over the frontend ROUTERs and the targets'
//! DEALERs, and the pure request path it carries out.
//!
//! One thread runs a poll loop over the stop descriptor, the heartbeat
//! sockets (through [`crate::ha`]), up to two frontend ROUTERs (the primary
//! port while active, the secondary port while passive, both for a moment
//! during a takeover) and one DEALER per target. The loop only reads
//! sockets and carries out decisions; two pure machines make them:
//!
//! | file | what it owns |
//! | --- | --- |
//! | `mod.rs` | the loop: poll, read, hand events to the machines; sockets it opens |
//! | [`state`] | the request path, pure: `step(now, event) -> actions` for a request, a reply, a deadline, a blocked send, a drain; the status document (`state/status.rs`); tables in `state/tests.rs` |
//! | [`target`] | one target: its DEALER and its breaker, deadlines, waiting queue, counters |
//! | [`dealer`] | a target's DEALER and its socket monitor: a service that ends the handshake is told from one not running |
//! | [`send`] | carries out the request path's actions: the only code that sends on frontends and DEALERs |
//! | [`roles`] | steps the role machine ([`crate::ha::machine`]) and carries out its effects: bind, drain, publish, notify |
//! | [`reload`] | the target diff of a reloaded config (pure, tested) and applying it |
//! | [`loader`] | reads a reloaded config on a thread of its own (requests coalesced), waking the loop when done |
//! | [`snapshot`] | what `/status`, `/metrics` and the ready line show |
//! | [`drain`] | when a draining frontend closes (pure): behind a reply, after a quiet window, at `drain_timeout` |
//! | `breaker`, `inflight`, `limit`, `stats`, `watch`, `cork`, `queued` | small parts: circuit breaker, in-flight table and keys, rate limits, counters, config file watch, TCP_CORK, bytes a target's connection may hold |
//!
//! A request is parsed (pure code in `zbridge-protocol`), checked against
//! the rate limits, the target's in-flight cap and breaker, and sent to the
//! target's DEALER behind an 8-byte envelope: an in-flight
//! [`inflight::Key`]. REP and ROUTER backends echo the envelope before their
//! reply, which finds its client, and the frontend it came in on, through
//! the key. Targets never wait for each other.
//!
//! Invariant: every request read from a frontend gets exactly one reply
//! (the backend's or an error document), unless the client is gone.

mod breaker;
mod cork;
mod dealer;
mod drain;
mod inflight;
mod limit;
mod loader;
mod queued;
mod reload;
mod roles;
mod send;
mod snapshot;
mod state;
mod stats;
mod target;
mod watch;

use crate::config::{Config, LogLevel, Source};
use crate::curve;
use crate::ha::machine::{Effect, Event, Machine, Peer, Phase, Port};
use crate::ha::{Heartbeats, Probe};
use crate::monitor;
use crate::notify::Notifier;
use crate::stop::Stop;
use crate::streams::Streams;
use crate::throttle::LogThrottle;
use dealer::Dealer;
use roles::settings;
use send::{carry_out, send_waiting};
use serde_json::Value;
use state::{Action, Event as PathEvent, PeerBeat, State};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use zbridge_protocol::heartbeat::{Message, Role, State as PeerState};
use zbridge_protocol::time::later;
use zbridge_socket::handshakes::{self, Handshakes, Seen};
use zbridge_socket::sys::local_port_of;
use zbridge_socket::wait::{Item, Wait};
use zbridge_socket::{next_event, readable, recv_frames, watch, writable, HandshakeFailure};

/// Messages read from one socket before the loop looks at the others.
const BATCH: usize = 256;
/// How long start-up waits for backends to accept their connections.
const CONNECT_GRACE: Duration = Duration::from_millis(250);
/// How often the monitoring snapshot is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// How long a draining port keeps relaying new requests at most (bounded
/// by half of drain_timeout): long enough for lockstep clients to fall
/// quiet, short enough to hand the port on when they never do.
const RELAY_WHILE_DRAINING: Duration = Duration::from_secs(2);
/// How often a draining port's corked connections are flushed at least.
const CORK_FLUSH_EVERY: Duration = Duration::from_millis(1);
/// How often shed connections are logged at most.
const SHED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What `/health` says while the stream thread is gone.
const STREAMS_STOPPED: &str =
    "the stream thread has stopped: streams are not republished; restart the bridge";

/// A bound frontend port.
pub(crate) struct Frontend {
    socket: zmq::Socket,
    /// The endpoint as bound, with the real port.
    endpoint: String,
    /// The plain endpoint bound beside a CURVE one (`plain_*_port`).
    plain: Option<String>,
    plain_port: Option<u16>,
    port: u16,
    /// Set while draining: when to close it ([`drain`]).
    drain: Option<drain::Drain>,
    /// libzmq's socket monitor: accepted and closed client connections.
    events: zmq::Socket,
    /// The client connections' descriptors (libzmq's), for [`cork`].
    connections: Vec<RawFd>,
    /// Connections that have not finished their handshake yet, and
    /// which of them failed it.
    handshakes: Handshakes,
}

/// What a frontend's socket monitor reported in one read.
#[derive(Default)]
struct Connections {
    /// Handshakes that failed: the peer, whether on the plain port, why.
    failed: Vec<(Option<std::net::SocketAddr>, bool, HandshakeFailure)>,
    /// Connections shut down before their handshake finished.
    shed: u64,
}

/// The frontends by [`Port`] index.
pub(crate) type Frontends = [Option<Frontend>; 2];

/// Where the loop reports what a script or test waits for: the ready line,
/// role changes, ports bound and released (one JSON object each).
pub type Events<'a> = &'a mut dyn FnMut(Value);

pub struct Relay {
    context: zmq::Context,
    frontends: Frontends,
    heartbeats: Heartbeats,
    /// Whether the peer's frontend still listens (two hosts).
    probe: Probe,
    /// The stream thread, when streams are configured; its pub ports
    /// follow the frontends.
    streams: Option<Streams>,
    machine: Machine,
    first_effects: Vec<Effect>,
    /// The request path, with the targets and their DEALERs.
    state: State<Dealer>,
    /// What the request path decided and the loop is to carry out (kept to
    /// reuse its memory).
    actions: Vec<Action>,
    ready: bool,
    exit: bool,
    /// Time spent working (not waiting in poll) since the last heartbeat.
    busy: Duration,
    last_beat: Instant,
    monitor: monitor::Shared,
    /// Where the events printed on stdout are recorded for `/events`.
    journal: monitor::SharedJournal,
    monitor_endpoint: String,
    next_snapshot: Instant,
    source: Source,
    set_level: Box<dyn Fn(LogLevel)>,
    /// Whether and when the config file changed.
    watch: watch::Watch,
    /// Reads reloaded configs off this thread.
    loader: loader::Loader,
    /// The stream thread was found stopped (logged once).
    streams_stopped: bool,
    /// When the attempt to take the primary port was last logged.
    take_log: LogThrottle,
    /// Who the ZAP handlers admit (CURVE on), and this context's handler.
    admission: Option<std::sync::Arc<curve::Admission>>,
    _zap: Option<curve::Zap>,
    /// systemd's notify socket and watchdog, pinged from this loop.
    notifier: Notifier,
    /// Most connections per frontend that may be waiting for their
    /// handshake (from the descriptor limit).
    pending_max: usize,
    shed_log: LogThrottle,
    /// The loop's wait: what it knows of each socket between rounds.
    wait: Wait,
}

impl Relay {
    /// Connect to every target (each gets [`CONNECT_GRACE`] to connect) and
    /// open the heartbeat sockets. Frontends are bound by [`Relay::run`], as
    /// the role machine decides.
    pub fn new(
        config: Config,
        source: Source,
        set_level: Box<dyn Fn(LogLevel)>,
    ) -> anyhow::Result<Relay> {
        let now = Instant::now();
        let context = zmq::Context::new();
        let admission = config
            .curve
            .as_ref()
            .map(|pair| curve::Admission::new(pair, config.curve_clients.as_ref()));
        let zap = admission
            .as_ref()
            .map(|a| curve::Zap::start(&context, std::sync::Arc::clone(a)))
            .transpose()?;
        let dealers = config
            .targets
            .iter()
            .map(|target| Dealer::open(&context, &config, target))
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_connected(&dealers, CONNECT_GRACE)?;
        let heartbeats = Heartbeats::new(&context, &config, now)?;
        let streams = Streams::start(&config, admission.clone())?;
        let (machine, first_effects) = Machine::new(settings(&config), now);
        let state = State::new(config, dealers, now);
        let monitor = std::sync::Arc::new(std::sync::Mutex::new(monitor::Snapshot {
            status: state.status(now),
            durations: state.durations(),
            serving: false,
            problems: Vec::new(),
            taken: now,
        }));
        let bind = state.config.monitor_bind();
        // Stale after a few heartbeat intervals without a refresh: the loop
        // is stuck.
        let stale = state
            .config
            .heartbeat_interval
            .saturating_mul(3)
            .max(Duration::from_secs(2));
        let journal = monitor::Journal::shared();
        let port = monitor::start(
            &bind,
            std::sync::Arc::clone(&monitor),
            std::sync::Arc::clone(&journal),
            stale,
        )?;
        let monitor_endpoint = format!(
            "http://{}",
            bind.rsplit_once(':')
                .map_or(bind.clone(), |(host, _)| format!("{host}:{port}"))
        );
        Ok(Relay {
            context,
            frontends: [None, None],
            heartbeats,
            probe: Probe::new()?,
            streams,
            machine,
            first_effects,
            state,
            actions: Vec::new(),
            ready: false,
            exit: false,
            busy: Duration::ZERO,
            last_beat: now,
            monitor,
            journal,
            monitor_endpoint,
            next_snapshot: now,
            watch: watch::Watch::new(source.stamp(), now),
            loader: loader::Loader::start(source.clone())?,
            source,
            set_level,
            streams_stopped: false,
            take_log: LogThrottle::default(),
            admission,
            _zap: zap,
            notifier: Notifier::from_env(now),
            pending_max: crate::limits::handshakes_waiting_max(),
            shed_log: LogThrottle::default(),
            wait: Wait::default(),
        })
    }

    /// Relay until `stop` fires and every frontend is drained.
    pub fn run(mut self, stop: &mut Stop, events: Events) -> anyhow::Result<()> {
        // Every event also goes to `/events` (a few a minute at most: the
        // lock is never contended for long).
        let journal = std::sync::Arc::clone(&self.journal);
        let mut recorded = |event: Value| {
            if let Ok(mut journal) = journal.lock() {
                journal.record(monitor::unix_now(), &event);
            }
            events(event);
        };
        let events: Events = &mut recorded;
        let now = Instant::now();
        let first = std::mem::take(&mut self.first_effects);
        self.apply(now, first, events);
        info!(
            node = ?self.machine.node(),
            phase = self.machine.phase().as_str(),
            heartbeats = %self.heartbeats.endpoint,
            peer_heartbeats = %self.heartbeats.peer_endpoint,
            signed = self.state.config.auth_token.is_some(),
            "listening for the peer"
        );
        if let Some(watchdog) = self.notifier.watchdog() {
            info!(
                watchdog_s = watchdog.as_secs_f64(),
                "systemd's watchdog is on: the relay loop pings it; a loop stuck that long is killed"
            );
        }
        let mut frames = Vec::with_capacity(8);
        let mut ready = Readiness::default();
        loop {
            let now = Instant::now();
            self.notifier.ping(now);
            let actions = &mut self.actions;
            self.state.step(now, PathEvent::Tick, actions);
            carry_out(&mut self.state, &self.frontends, actions, now, &mut frames);
            self.finish_drains(now, events);
            self.handle(now, Event::Tick, events);
            if now >= self.heartbeats.next_publish() {
                self.publish(now);
            }
            if now >= self.next_snapshot {
                self.snapshot(now);
            }
            if self.source.path.is_some()
                && now >= self.watch.next_check()
                && self.watch.check(now, self.source.stamp())
            {
                self.reload("the config file changed");
            }
            self.close_drained_targets();
            if self.exit {
                break;
            }
            let deadline = self.poll_deadline(now);
            self.poll(stop, deadline, &mut ready)?;
            let woke = Instant::now();
            if ready.stop && stop.take() > 0 {
                self.on_stop(woke, events);
            }
            if ready.hangup && stop.take_hangup() {
                self.reload("SIGHUP");
            }
            if let Some(loaded) = ready.reloaded.then(|| self.loader.take()).flatten() {
                self.apply_reload(woke, loaded, events);
            }
            if ready.heartbeats {
                for message in self.heartbeats.receive(woke) {
                    let peer = match message {
                        Message::Heartbeat(h) => {
                            self.state.ha.peer_beat = Some(PeerBeat {
                                uptime_s: h.uptime,
                                load: h.load,
                                port: h.port,
                            });
                            Peer {
                                role: h.instance,
                                node: h.node,
                                epoch: h.epoch,
                                state: h.state,
                            }
                        }
                        // A notification says the sender became active.
                        Message::FailoverNotification(n) => Peer {
                            role: Role::Active,
                            node: n.node,
                            epoch: n.epoch,
                            state: PeerState::Running,
                        },
                    };
                    self.handle(woke, Event::Heard(peer), events);
                }
                self.sync_view(woke);
            }
            if ready.peer_link && self.heartbeats.peer_disconnected() {
                if self.machine.phase() == Phase::Passive {
                    info!(
                        peer = %self.heartbeats.peer_endpoint,
                        "the connection to the active peer closed: checking whether its process is gone"
                    );
                }
                self.handle(woke, Event::PeerDisconnected, events);
            }
            match ready.probe.then(|| self.probe.take()).flatten() {
                Some(true) => {
                    info!(
                        peer_host = %self.state.config.peer_host(),
                        port = self.state.config.primary_port,
                        "the peer's frontend refuses connections: its process is gone"
                    );
                    self.handle(woke, Event::PeerDown, events);
                }
                Some(false) => debug!(
                    peer_host = %self.state.config.peer_host(),
                    port = self.state.config.primary_port,
                    "the peer's frontend still answers a connect: no proof of death yet"
                ),
                None => {}
            }
            for (i, &ready) in ready.connections.iter().enumerate() {
                if ready {
                    self.track_connections(i);
                }
            }
            // Before the requests of this round: a client asking for the
            // status counts itself.
            self.state.ha.clients_connected = self
                .frontends
                .iter()
                .flatten()
                .map(|f| f.connections.len() as u64)
                .sum();
            for port in [Port::Primary, Port::Secondary] {
                if !ready.frontends[port.index()] {
                    continue;
                }
                for _ in 0..BATCH {
                    let Some(frontend) = &self.frontends[port.index()] else {
                        break;
                    };
                    if !recv_frames(&frontend.socket, &mut frames)? {
                        break;
                    }
                    let now = Instant::now();
                    let actions = &mut self.actions;
                    self.state
                        .step(now, PathEvent::Request(port, &mut frames), actions);
                    carry_out(&mut self.state, &self.frontends, actions, now, &mut frames);
                }
            }
            for target in 0..self.state.targets.len() {
                // A reload may have added targets since the poll.
                let (readable, writable) = ready.dealers.get(target).copied().unwrap_or_default();
                if writable {
                    let actions = &mut self.actions;
                    send_waiting(&mut self.state, &self.frontends, actions, woke, target);
                }
                if !readable {
                    continue;
                }
                for _ in 0..BATCH {
                    let Some(dealer) = &self.state.targets[target].dealer else {
                        break;
                    };
                    if !recv_frames(dealer, &mut frames)? {
                        break;
                    }
                    let now = Instant::now();
                    let actions = &mut self.actions;
                    self.state
                        .step(now, PathEvent::Reply(target, &mut frames), actions);
                    carry_out(&mut self.state, &self.frontends, actions, now, &mut frames);
                }
            }
            self.busy += woke.elapsed();
        }
        self.state.log_totals();
        Ok(())
    }

    /// Wait for any socket or descriptor until `deadline`. The frontends
    /// and DEALERs are hot (read and written every round); the heartbeat
    /// sockets and the socket monitors are asked only when their
    /// descriptor fires or in a sweep ([`zbridge_socket::wait`]).
    fn poll(
        &mut self,
        stop: &Stop,
        deadline: Option<Instant>,
        ready: &mut Readiness,
    ) -> anyhow::Result<()> {
        let mut items = Vec::with_capacity(self.state.targets.len() + 10);
        items.push(Item::fd(stop.fd(), false));
        items.push(Item::fd(stop.hangup_fd(), false));
        items.push(Item::socket(
            self.heartbeats.subscriber(),
            zmq::POLLIN,
            false,
        ));
        items.push(Item::socket(self.heartbeats.links(), zmq::POLLIN, false));
        items.push(Item::fd(self.probe.fd(), false));
        items.push(Item::fd(self.loader.fd(), false));
        let mut front_index = [None; 2];
        for (i, frontend) in self.frontends.iter().enumerate() {
            if let Some(f) = frontend {
                front_index[i] = Some(items.len());
                items.push(Item::socket(&f.socket, zmq::POLLIN, true));
                items.push(Item::socket(&f.events, zmq::POLLIN, false));
            }
        }
        let first_dealer = items.len();
        for target in &self.state.targets {
            let Some(dealer) = &target.dealer else {
                continue;
            };
            let events = if target.waiting.is_empty() {
                zmq::POLLIN
            } else {
                zmq::POLLIN | zmq::POLLOUT
            };
            items.push(Item::socket(dealer, events, true));
        }
        let events = self.wait.wait(&items, deadline)?;
        let readable = |i: usize| events[i].contains(zmq::POLLIN);
        ready.stop = readable(0);
        ready.hangup = readable(1);
        ready.heartbeats = readable(2);
        ready.peer_link = readable(3);
        ready.probe = readable(4);
        ready.reloaded = readable(5);
        for (i, index) in front_index.iter().enumerate() {
            ready.frontends[i] = index.is_some_and(readable);
            ready.connections[i] = index.is_some_and(|j| readable(j + 1));
        }
        ready.dealers.clear();
        ready
            .dealers
            .resize(self.state.targets.len(), (false, false));
        // The items follow the dealers that are open, in order.
        let open = (self.state.targets.iter().enumerate()).filter(|(_, t)| t.dealer.is_some());
        for ((target, _), events) in open.zip(&events[first_dealer..]) {
            ready.dealers[target] = (events.contains(zmq::POLLIN), events.contains(zmq::POLLOUT));
        }
        Ok(())
    }

    /// The next deadline of the loop: a timer, a drain, a role change, a
    /// heartbeat, a snapshot, a watchdog ping, a config file check.
    fn poll_deadline(&mut self, now: Instant) -> Option<Instant> {
        // A draining port's corked replies wait for the next round.
        let drains = self
            .frontends
            .iter()
            .flatten()
            .filter_map(|f| f.drain.as_ref())
            .map(|drain| drain.next_deadline().min(later(now, CORK_FLUSH_EVERY)));
        self.state
            .next_deadline()
            .into_iter()
            .chain(drains)
            .chain(self.machine.next_deadline())
            .chain([self.heartbeats.next_publish(), self.next_snapshot])
            .chain(self.notifier.next_ping())
            .chain(
                self.source
                    .path
                    .is_some()
                    .then_some(self.watch.next_check()),
            )
            .min()
    }

    /// Read frontend `i`'s socket monitor: connections accepted and closed,
    /// handshakes failed.
    fn track_connections(&mut self, i: usize) {
        if let Some(frontend) = &mut self.frontends[i] {
            let Connections { failed, shed } = count_connections(frontend, self.pending_max);
            if let Some(admission) = &self.admission {
                for (peer, plain, failure) in failed {
                    admission.handshake_failed(peer, plain, failure);
                }
            }
            if shed > 0 {
                self.state.ha.connections_shed += shed;
                if self.shed_log.due(Instant::now(), SHED_LOG_EVERY) {
                    warn!(
                        port = frontend.port,
                        pending_max = self.pending_max,
                        connections_shed_total = self.state.ha.connections_shed,
                        "closed client connections that had not finished their handshake: too many were open at once (a peer connecting and saying nothing?); descriptors are kept for working clients"
                    );
                }
            }
        }
    }

    /// Close the dealers of retired targets once nothing is in flight to them.
    fn close_drained_targets(&mut self) {
        for target in &mut self.state.targets {
            if target.drained() && target.dealer.take().is_some() {
                info!(target_name = %target.name, endpoint = %target.endpoint, "retired target closed");
            }
        }
    }
}

/// Which sockets the last poll found ready.
#[derive(Default)]
struct Readiness {
    stop: bool,
    hangup: bool,
    /// The heartbeat subscriber's monitor has events.
    peer_link: bool,
    probe: bool,
    /// The loader has read a config.
    reloaded: bool,
    heartbeats: bool,
    frontends: [bool; 2],
    /// A frontend's socket monitor has events.
    connections: [bool; 2],
    /// (readable, writable) per target.
    dealers: Vec<(bool, bool)>,
}

fn open_frontend(
    context: &zmq::Context,
    config: &Config,
    endpoint: &str,
    plain: Option<&str>,
) -> zmq::Result<Frontend> {
    let socket = context.socket(zmq::ROUTER)?;
    let kinds = handshakes::events(config.curve.is_some());
    let events = watch(context, &socket, &kinds)?;
    socket.set_router_mandatory(true)?;
    socket.set_linger(1000)?;
    // Above max_message_bytes, so that an oversized request still gets its
    // `too_large` reply while an absurd one is cut off by the transport
    // before it reaches memory.
    socket.set_maxmsgsize(i64::try_from(config.max_transport_bytes).unwrap_or(i64::MAX))?;
    socket.set_ipv6(config.bind_host.contains(':'))?;
    socket.set_handshake_ivl(config.handshake_ms())?;
    if let Some(pair) = &config.curve {
        curve::server(&socket, pair)?;
    }
    socket.bind(endpoint)?;
    let bound = socket
        .get_last_endpoint()?
        .unwrap_or_else(|_| endpoint.to_string());
    // The plain port after the CURVE one: the CURVE port is the lock.
    let plain = match plain {
        Some(plain) if config.curve.is_some() => {
            curve::plain(&socket)?;
            socket.bind(plain)?;
            Some(plain.to_string())
        }
        _ => None,
    };
    let plain_port = plain
        .as_deref()
        .and_then(|p| p.rsplit(':').next()?.parse().ok());
    let port = bound
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Ok(Frontend {
        socket,
        endpoint: bound,
        plain,
        plain_port,
        port,
        drain: None,
        events,
        connections: Vec::new(),
        handshakes: Handshakes::default(),
    })
}

/// Track accepted and closed client connections from the socket monitor
/// (each event carries the connection's descriptor); a connection accepted
/// while the port drains is corked like the others. Connections that have
/// not finished their handshake beyond `pending_max` are shut down, oldest
/// first: a flood of peers that connect and say nothing cannot take the
/// descriptors that clients and the monitoring server need (each would
/// otherwise hold one for `handshake_timeout`). Returns the handshakes that
/// failed (watched with CURVE on) and the connections shut down.
fn count_connections(frontend: &mut Frontend, pending_max: usize) -> Connections {
    let mut tally = Connections::default();
    let plain_port = frontend.plain_port;
    let plain = |fd| plain_port.is_some() && local_port_of(fd) == plain_port;
    while let Some((event, value)) = next_event(&frontend.events) {
        match frontend.handshakes.see(event, value, plain) {
            Seen::Accepted(fd) => {
                frontend.connections.push(fd);
                if frontend.drain.is_some() {
                    cork::hold(&[fd]);
                }
            }
            Seen::Closed(fd, failed) => {
                frontend.connections.retain(|&c| c != fd);
                // A shed connection is no longer waiting: counted as shed.
                if let Some((gone, failure)) = failed {
                    tally.failed.push((gone.peer, gone.plain, failure));
                }
            }
            Seen::Nothing => {}
        }
    }
    tally.shed = frontend.handshakes.shed(pending_max);
    tally
}

/// Wait until every dealer has a connected backend, or `grace` passes.
fn wait_connected(dealers: &[Dealer], grace: Duration) -> zmq::Result<()> {
    let deadline = Instant::now() + grace;
    loop {
        let mut items: Vec<_> = dealers
            .iter()
            .filter(|d| !writable(d))
            .map(|d| d.as_poll_item(zmq::POLLOUT))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if items.is_empty() || left.is_zero() {
            return Ok(());
        }
        zmq::poll(&mut items, left.as_millis().max(1) as i64)?;
    }
}
