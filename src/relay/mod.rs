//! The relay: the only code that touches the frontend, backend and
//! heartbeat sockets.
//!
//! One thread runs a poll loop over the stop descriptor, the heartbeat
//! subscriber, up to two frontend ROUTERs (the primary port while active,
//! the secondary port while passive, both for a moment during a takeover)
//! and one DEALER per target. A request is parsed (pure code in
//! `zbridge-protocol`), checked against the target's breaker and in-flight
//! cap, and sent to the target's DEALER behind an 8-byte envelope: an
//! in-flight [`inflight::Key`]. REP and ROUTER backends echo the envelope
//! before their reply, which finds its client, and the frontend it came in
//! on, through the key. Targets never wait for each other.
//!
//! The role machine ([`crate::ha::machine`]) decides; this loop carries out
//! its effects: binding a frontend port, draining one (new requests there get
//! `draining`, those in flight are answered, then it is closed), publishing.
//!
//! Invariant: every request read from a frontend gets exactly one reply
//! (the backend's or an error document), unless the client is gone.

mod breaker;
mod cork;
mod inflight;
mod limit;
mod reload;
mod state;
mod stats;
mod target;
mod watch;

use crate::config::{tcp_endpoint, Config, LogLevel, Source, Target};
use crate::ha::machine::{Effect, Event, Machine, Peer, Phase, Port, Settings};
use crate::ha::{Beat, Heartbeats, Probe};
use crate::monitor;
use crate::stop::Stop;
use crate::streams::Streams;
use crate::throttle::LogThrottle;
use inflight::Key;
use serde_json::{json, Value};
use state::{Action, Event as PathEvent, Return, State};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};
use zbridge_protocol::heartbeat::{Message, Role, State as PeerState};
use zbridge_protocol::time::later;
use zbridge_socket::{next_event, readable, recv_frames, watch, writable};

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
/// What `/health` says while the stream thread is gone.
const STREAMS_STOPPED: &str =
    "the stream thread has stopped: streams are not republished; restart the bridge";

/// A bound frontend port.
pub(crate) struct Frontend {
    socket: zmq::Socket,
    /// The endpoint as bound, with the real port.
    endpoint: String,
    port: u16,
    /// Set while draining: closed once its clients are quiet (nothing in
    /// flight on it, no request waiting to be read), or at this deadline.
    draining_until: Option<Instant>,
    /// libzmq's socket monitor: accepted and closed client connections.
    events: zmq::Socket,
    /// The client connections' descriptors (libzmq's), for [`cork`].
    connections: Vec<RawFd>,
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
    state: State<zmq::Socket>,
    /// What the request path decided and the loop is to carry out (kept to
    /// reuse its memory).
    actions: Vec<Action>,
    ready: bool,
    exit: bool,
    /// Time spent working (not waiting in poll) since the last heartbeat.
    busy: Duration,
    last_beat: Instant,
    monitor: monitor::Shared,
    monitor_endpoint: String,
    next_snapshot: Instant,
    source: Source,
    set_level: Box<dyn Fn(LogLevel)>,
    /// Whether and when the config file changed.
    watch: watch::Watch,
    /// The stream thread was found stopped (logged once).
    streams_stopped: bool,
    /// When the attempt to take the primary port was last logged.
    take_log: LogThrottle,
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
        let dealers = config
            .targets
            .iter()
            .map(|target| open_dealer(&context, &config, target))
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_connected(&dealers, CONNECT_GRACE)?;
        let heartbeats = Heartbeats::new(&context, &config, now)?;
        let streams = Streams::start(&config)?;
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
        let port = monitor::start(&bind, std::sync::Arc::clone(&monitor), stale)?;
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
            monitor_endpoint,
            next_snapshot: now,
            watch: watch::Watch::new(source.stamp(), now),
            source,
            set_level,
            streams_stopped: false,
            take_log: LogThrottle::default(),
        })
    }

    /// Relay until `stop` fires and every frontend is drained.
    pub fn run(mut self, stop: &mut Stop, events: Events) -> anyhow::Result<()> {
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
        let mut frames = Vec::with_capacity(8);
        let mut ready = Readiness::default();
        loop {
            let now = Instant::now();
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
                self.reload(now, "the config file changed", events);
            }
            self.close_drained_targets();
            if self.exit {
                break;
            }
            let timeout = self.poll_timeout_ms(now);
            self.poll(stop, timeout, &mut ready)?;
            let woke = Instant::now();
            if ready.stop && stop.take() > 0 {
                self.on_stop(woke, events);
            }
            if ready.hangup && stop.take_hangup() {
                self.reload(woke, "SIGHUP", events);
            }
            if ready.heartbeats {
                for message in self.heartbeats.receive(woke) {
                    let peer = match message {
                        Message::Heartbeat(h) => Peer {
                            role: h.instance,
                            node: h.node,
                            epoch: h.epoch,
                            state: h.state,
                        },
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
            for (ready, frontend) in ready.connections.iter().zip(&mut self.frontends) {
                if let (true, Some(frontend)) = (ready, frontend) {
                    count_connections(frontend);
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

    /// Wait for any socket or the stop descriptor, up to `timeout_ms`.
    fn poll(&self, stop: &Stop, timeout_ms: i64, ready: &mut Readiness) -> anyhow::Result<()> {
        let mut items = Vec::with_capacity(self.state.targets.len() + 9);
        items.push(zmq::PollItem::from_fd(stop.fd(), zmq::POLLIN));
        items.push(zmq::PollItem::from_fd(stop.hangup_fd(), zmq::POLLIN));
        items.push(self.heartbeats.subscriber().as_poll_item(zmq::POLLIN));
        items.push(self.heartbeats.links().as_poll_item(zmq::POLLIN));
        items.push(zmq::PollItem::from_fd(self.probe.fd(), zmq::POLLIN));
        let mut front_index = [None; 2];
        for (i, frontend) in self.frontends.iter().enumerate() {
            if let Some(f) = frontend {
                front_index[i] = Some(items.len());
                items.push(f.socket.as_poll_item(zmq::POLLIN));
                items.push(f.events.as_poll_item(zmq::POLLIN));
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
            items.push(dealer.as_poll_item(events));
        }
        match zmq::poll(&mut items, timeout_ms) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        ready.stop = items[0].is_readable();
        ready.hangup = items[1].is_readable();
        ready.heartbeats = items[2].is_readable();
        ready.peer_link = items[3].is_readable();
        ready.probe = items[4].is_readable();
        for (i, index) in front_index.iter().enumerate() {
            ready.frontends[i] = index.is_some_and(|j| items[j].is_readable());
            ready.connections[i] = index.is_some_and(|j| items[j + 1].is_readable());
        }
        ready.dealers.clear();
        ready
            .dealers
            .resize(self.state.targets.len(), (false, false));
        // The items follow the dealers that are open, in order.
        let open = (self.state.targets.iter().enumerate()).filter(|(_, t)| t.dealer.is_some());
        for ((target, _), item) in open.zip(&items[first_dealer..]) {
            ready.dealers[target] = (item.is_readable(), item.is_writable());
        }
        Ok(())
    }

    fn poll_timeout_ms(&mut self, now: Instant) -> i64 {
        // A draining port's corked replies wait for the next round.
        let drains = self
            .frontends
            .iter()
            .flatten()
            .filter_map(|f| f.draining_until)
            .map(|until| until.min(later(now, CORK_FLUSH_EVERY)));
        let next = self
            .state
            .next_deadline()
            .into_iter()
            .chain(drains)
            .chain(self.machine.next_deadline())
            .chain([self.heartbeats.next_publish(), self.next_snapshot])
            .chain(
                self.source
                    .path
                    .is_some()
                    .then_some(self.watch.next_check()),
            )
            .min();
        match next {
            None => -1,
            // Round up so that the loop never spins on a deadline a few
            // microseconds away.
            Some(deadline) => deadline
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000) as i64,
        }
    }

    fn on_stop(&mut self, now: Instant, events: Events) {
        if self.machine.phase() == Phase::Stopping {
            warn!("second stop request: answering what is in flight with `draining` now");
            for frontend in self.frontends.iter_mut().flatten() {
                frontend.draining_until = Some(now);
            }
            return;
        }
        info!(
            drain_timeout_s = self.state.config.drain_timeout.as_secs_f64(),
            "stop requested: telling the peer, refusing new requests, draining those in flight"
        );
        self.handle(now, Event::Stop, events);
    }

    /// Step the machine and carry out what it decides.
    fn handle(&mut self, now: Instant, event: Event, events: Events) {
        let effects = self.machine.step(now, event);
        if !effects.is_empty() {
            self.apply(now, effects, events);
        }
    }

    fn apply(&mut self, now: Instant, effects: Vec<Effect>, events: Events) {
        for effect in effects {
            match effect {
                Effect::Bind(port) => {
                    // A leaving peer's port is retried every few ms: said once.
                    if port == Port::Primary
                        && self.machine.phase() == Phase::Passive
                        && self.take_log.due(now, self.state.config.heartbeat_timeout)
                    {
                        info!(
                            peer = %self.heartbeats.peer_endpoint,
                            "no running active peer: trying to take the primary port"
                        );
                    }
                    let bound = self.bind(port, events);
                    self.handle(now, Event::Bound(port, bound), events);
                    if bound && !self.ready {
                        self.ready = true;
                        self.report_ready(port, events);
                    }
                }
                Effect::Drain(port) => match &mut self.frontends[port.index()] {
                    Some(frontend) => {
                        // The primary pub port goes at once, so that the
                        // peer can bind it; the secondary one stays until
                        // the frontend goes, so that subscribers there
                        // keep receiving until they have found the primary.
                        if let (Some(streams), Port::Primary) = (&self.streams, port) {
                            streams.release(port);
                        }
                        let drain = self.state.config.drain_timeout;
                        frontend.draining_until = Some(later(now, drain));
                        cork::hold(&frontend.connections);
                        // New requests are relayed as usual for a while, so
                        // that a plain lockstep client is served until the
                        // port closes right behind a reply; after it (a port
                        // that never goes quiet) they get `draining`.
                        let relay_until = later(now, (drain / 2).min(RELAY_WHILE_DRAINING));
                        let draining = PathEvent::Draining { port, relay_until };
                        self.state.step(now, draining, &mut self.actions);
                    }
                    None => self.handle(now, Event::Released(port), events),
                },
                Effect::PublishNow => self.publish(now),
                Effect::ProbePeer => {
                    let config = &self.state.config;
                    debug!(
                        peer = %self.heartbeats.peer_endpoint,
                        "checking whether the active peer's process is gone"
                    );
                    let timeout = config.heartbeat_timeout.min(Duration::from_secs(2));
                    self.probe
                        .start(config.peer_host(), config.primary_port, timeout);
                }
                Effect::Notify => {
                    let port = self.frontends[Port::Primary.index()]
                        .as_ref()
                        .map_or(self.state.config.primary_port, |f| f.port);
                    let endpoint = tcp_endpoint(self.state.config.own_host(), port);
                    self.heartbeats.notify(port, endpoint, self.machine.epoch());
                }
                Effect::Exit => self.exit = true,
                Effect::Changed {
                    from,
                    to,
                    reason,
                    epoch,
                } => {
                    info!(
                        from = from.as_str(),
                        to = to.as_str(),
                        reason = reason.as_str(),
                        epoch,
                        failovers_total = self.machine.failovers(),
                        "role changed"
                    );
                    events(json!({
                        "event": "role", "from": from.as_str(), "to": to.as_str(),
                        "reason": reason.as_str(), "epoch": epoch,
                    }));
                    self.next_snapshot = now;
                }
                Effect::BindFailed {
                    port: Port::Primary,
                    silent_for,
                } => {
                    warn!(
                        silent_for_s = silent_for.as_secs_f64(),
                        bind_failures_total = self.machine.bind_failures(),
                        "cannot bind the primary port: another process holds it (the active may be hung); staying passive, retrying"
                    );
                    events(json!({"event": "bind_failed", "port": "primary"}));
                }
                Effect::BindFailed {
                    port: Port::Secondary,
                    ..
                } => info!("the secondary port is still held (the peer is draining it); retrying"),
            }
        }
        self.sync_view(now);
    }

    /// Bind a frontend port; `false` when the address is in use.
    fn bind(&mut self, port: Port, events: Events) -> bool {
        let config = &self.state.config;
        let endpoint = config.frontend_endpoint(port);
        match open_frontend(&self.context, config, &endpoint) {
            Ok(frontend) => {
                info!(?port, endpoint = %frontend.endpoint, "frontend bound");
                if let Some(streams) = &self.streams {
                    streams.hold(port);
                }
                events(
                    json!({"event": "bound", "port": port_name(port), "endpoint": frontend.endpoint}),
                );
                self.frontends[port.index()] = Some(frontend);
                true
            }
            Err(zmq::Error::EADDRINUSE) => false,
            Err(e) => {
                error!(?port, %endpoint, error = %e, "cannot bind the frontend");
                false
            }
        }
    }

    /// Close each draining frontend once nothing is in flight on it, or its
    /// drain deadline has passed.
    fn finish_drains(&mut self, now: Instant, events: Events) {
        for port in [Port::Primary, Port::Secondary] {
            let i = port.index();
            let idle = self.state.in_flight_on(port) == 0;
            // Quiet: nothing in flight and no request waiting to be read.
            // This runs right after the replies of the last round were
            // sent, so a lockstep client's port closes right behind its
            // reply, before it can send the next request into it.
            let Some(frontend) = &self.frontends[i] else {
                continue;
            };
            let Some(until) = frontend.draining_until else {
                continue;
            };
            let quiet = idle && !readable(&frontend.socket);
            if now < until && !quiet {
                // Staying open: send this round's replies (see `cork`).
                cork::flush(&frontend.connections);
                continue;
            }
            // Answered on the frontend before it closes.
            let actions = &mut self.actions;
            self.state.step(now, PathEvent::Closed(port), actions);
            carry_out(
                &mut self.state,
                &self.frontends,
                actions,
                now,
                &mut Vec::new(),
            );
            if let Some(streams) = &self.streams {
                streams.release(port);
            }
            if let Some(frontend) = self.frontends[i].take() {
                let _ = frontend.socket.unbind(&frontend.endpoint);
                info!(?port, endpoint = %frontend.endpoint, "frontend released");
                events(
                    json!({"event": "released", "port": port_name(port), "endpoint": frontend.endpoint}),
                );
            }
            self.handle(now, Event::Released(port), events);
        }
    }

    fn publish(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_beat);
        let load = if elapsed.is_zero() {
            0.0
        } else {
            (self.busy.as_secs_f64() / elapsed.as_secs_f64()).clamp(0.0, 1.0)
        };
        self.busy = Duration::ZERO;
        self.last_beat = now;
        let role = self.machine.role();
        let port = match role {
            Role::Active => Port::Primary,
            Role::Passive => Port::Secondary,
        };
        let port = self.frontends[port.index()]
            .as_ref()
            .map_or(self.state.config.frontend_port(port), |f| f.port);
        self.heartbeats.publish(
            now,
            Beat {
                role,
                port,
                load,
                epoch: self.machine.epoch(),
                state: self.machine.state(),
            },
        );
    }

    /// Re-read the config and apply what can change while running.
    fn reload(&mut self, now: Instant, why: &str, events: Events) {
        // What is read now need not be read again by the file watcher.
        self.watch.read(self.source.stamp());
        let new = match self.source.reload(&self.state.config) {
            Ok(config) => config,
            Err(e) => {
                error!(
                    key = %e.key,
                    error = %e,
                    trigger = why,
                    "config reload rejected: the running config stays"
                );
                events(json!({"event": "reload_rejected", "key": e.key, "message": e.message}));
                return;
            }
        };
        let old = &self.state.config;
        let restart = old.restart_keys_changed(&new);
        for key in &restart {
            warn!(
                key,
                "changed in the config, but takes effect only after a restart"
            );
        }
        let new = old.with_restart_keys_of(new);
        // Targets: kept, re-pointed (a new dealer; the old one stays until
        // its requests are answered), added, removed. Nothing changes until
        // every new dealer is open: a refused reload leaves all as it was.
        let reload::Plan { retired, added } = reload::plan(&self.state, &new.targets);
        let mut opened = Vec::new();
        for target in added {
            match open_dealer(&self.context, &new, target) {
                Ok(dealer) => opened.push((target, dealer)),
                Err(e) => {
                    let key = format!("targets.{}", target.name);
                    error!(
                        key = %key,
                        error = %e,
                        trigger = why,
                        "config reload rejected: the running config stays"
                    );
                    events(
                        json!({"event": "reload_rejected", "key": key, "message": e.to_string()}),
                    );
                    return;
                }
            }
        }
        (self.set_level)(new.log_level);
        self.heartbeats.set_interval(new.heartbeat_interval);
        self.machine.set_settings(settings(&new));
        for i in retired {
            self.state.retire(i);
        }
        self.state.set_config(new.clone(), now);
        for target in &new.targets {
            if let Some(i) = self.state.target_index(&target.name) {
                self.state.update_target(i, target);
            }
        }
        for (target, dealer) in opened {
            self.state.add_target(target, dealer);
        }
        let generation = self.state.generation;
        info!(
            generation,
            trigger = why,
            targets = ?new.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            restart_needed = ?restart,
            "config reloaded"
        );
        events(json!({"event": "reloaded", "generation": generation, "restart_needed": restart}));
        self.next_snapshot = now;
    }

    /// Close the dealers of retired targets once nothing is in flight to them.
    fn close_drained_targets(&mut self) {
        for target in &mut self.state.targets {
            if target.drained() && target.dealer.take().is_some() {
                info!(target_name = %target.name, endpoint = %target.endpoint, "retired target closed");
            }
        }
    }

    /// Refresh what the monitoring server shows.
    fn snapshot(&mut self, now: Instant) {
        self.state.sample(now);
        // The stream thread refreshes its part every 100 ms too.
        let mut problems = Vec::new();
        if let Some(streams) = &self.streams {
            self.state.streams = streams.status();
            if !streams.alive() {
                if !self.streams_stopped {
                    self.streams_stopped = true;
                    error!("the stream thread has stopped: streams are no longer republished (requests are still relayed); restart the bridge");
                }
                self.state
                    .streams
                    .insert("stream_thread".into(), "stopped".into());
                problems.push(STREAMS_STOPPED.to_string());
            }
        }
        self.sync_view(now);
        let snapshot = monitor::Snapshot {
            status: self.state.status(now),
            durations: self.state.durations(),
            serving: self.machine.phase() != Phase::Stopping
                && self.frontends.iter().any(Option::is_some),
            problems,
            taken: now,
        };
        if let Ok(mut shared) = self.monitor.lock() {
            *shared = snapshot;
        }
        self.next_snapshot = now + SNAPSHOT_EVERY;
    }

    /// Copy what the status document shows of the HA side.
    fn sync_view(&mut self, now: Instant) {
        let view = &mut self.state.ha;
        view.role = role_name(self.machine.phase());
        view.node = Some(self.machine.node());
        view.epoch = self.machine.epoch();
        view.peer = self.machine.peer();
        view.peer_alive = self.machine.peer_alive(now);
        view.failovers = self.machine.failovers();
        view.bind_failures = self.machine.bind_failures();
        view.step_downs = self.machine.step_downs();
        view.rejected = self.heartbeats.rejected;
        view.frontend_ports = self.frontends.iter().flatten().map(|f| f.port).collect();
    }

    fn report_ready(&self, port: Port, events: Events) {
        let frontend = self.frontends[port.index()]
            .as_ref()
            .map(|f| f.endpoint.clone());
        let mut targets = serde_json::Map::new();
        for target in &self.state.targets {
            let connected = target.dealer.as_ref().is_some_and(writable);
            info!(target_name = %target.name, endpoint = %target.endpoint, connected, "target");
            targets.insert(
                target.name.clone(),
                json!({"endpoint": target.endpoint, "connected": connected}),
            );
        }
        info!(
            version = env!("CARGO_PKG_VERSION"),
            role = role_name(self.machine.phase()),
            frontend = frontend.as_deref().unwrap_or(""),
            pid = std::process::id(),
            "zbridge ready"
        );
        events(json!({
            "event": "ready",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "node": self.machine.node(),
            "role": role_name(self.machine.phase()),
            "frontend": frontend,
            "heartbeat": self.heartbeats.endpoint,
            "monitor": self.monitor_endpoint,
            "boot": self.heartbeats.boot(),
            "targets": targets,
        }));
    }
}

/// The role machine's settings from a config.
fn settings(config: &Config) -> Settings {
    Settings {
        node: config.node(),
        preempt: config.preempt,
        same_host: config.primary_host == config.secondary_host,
        heartbeat_timeout: config.heartbeat_timeout,
        fast_retry: (config.heartbeat_interval / 10)
            .clamp(Duration::from_millis(5), Duration::from_millis(50)),
        leave_window: config
            .drain_timeout
            .saturating_add(config.heartbeat_timeout.saturating_mul(2)),
    }
}

/// The role as the status document and the events name it.
fn role_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Active => "active",
        Phase::Passive => "passive",
        Phase::Listening => "starting",
        Phase::Stopping => "stopping",
    }
}

fn port_name(port: Port) -> &'static str {
    match port {
        Port::Primary => "primary",
        Port::Secondary => "secondary",
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
    heartbeats: bool,
    frontends: [bool; 2],
    /// A frontend's socket monitor has events.
    connections: [bool; 2],
    /// (readable, writable) per target.
    dealers: Vec<(bool, bool)>,
}

/// Carry out the request path's actions, in order, and tell it what could
/// not be sent. `input` is the message of the event that led to them (whose
/// frames [`state::Body::Input`] moves out). Returns whether a send to a
/// backend would have blocked.
fn carry_out(
    state: &mut State<zmq::Socket>,
    frontends: &Frontends,
    actions: &mut Vec<Action>,
    now: Instant,
    input: &mut Vec<zmq::Message>,
) -> bool {
    let mut blocked = false;
    for action in actions.drain(..) {
        let failed = match action {
            Action::Reply {
                port,
                client,
                back,
                body,
            } => {
                let sent = match &frontends[port.index()] {
                    Some(frontend) => {
                        send_routed(&frontend.socket, client, back, body.frames(input))
                    }
                    None => Err(zmq::Error::ENOTSOCK),
                };
                sent.err().map(PathEvent::Dropped)
            }
            Action::Forward { target, key, body } => match &state.targets[target].dealer {
                Some(dealer) => {
                    let mut frames = body.frames(input);
                    match send_envelope(dealer, key, &mut frames) {
                        Ok(()) => None,
                        Err(zmq::Error::EAGAIN) => {
                            blocked = true;
                            let frames = frames.collect();
                            Some(PathEvent::Blocked {
                                target,
                                key,
                                frames,
                            })
                        }
                        Err(error) => Some(PathEvent::Failed { target, key, error }),
                    }
                }
                None => Some(PathEvent::Failed {
                    target,
                    key,
                    error: zmq::Error::ENOTSOCK,
                }),
            },
        };
        if let Some(event) = failed {
            // Feedback pushes no action.
            state.step(now, event, &mut Vec::new());
        }
    }
    blocked
}

/// Send the requests that waited for `target`'s backend, in the order they
/// came, until none is left or one would block again.
fn send_waiting(
    state: &mut State<zmq::Socket>,
    frontends: &Frontends,
    actions: &mut Vec<Action>,
    now: Instant,
    target: usize,
) {
    loop {
        state.step(now, PathEvent::Writable(target), actions);
        if actions.is_empty() || carry_out(state, frontends, actions, now, &mut Vec::new()) {
            return;
        }
    }
}

fn open_frontend(context: &zmq::Context, config: &Config, endpoint: &str) -> zmq::Result<Frontend> {
    let socket = context.socket(zmq::ROUTER)?;
    let events = watch(
        context,
        &socket,
        &[zmq::SocketEvent::ACCEPTED, zmq::SocketEvent::DISCONNECTED],
    )?;
    socket.set_router_mandatory(true)?;
    socket.set_linger(1000)?;
    // Above max_message_bytes, so that an oversized request still gets its
    // `too_large` reply while an absurd one is cut off by the transport
    // before it reaches memory.
    socket.set_maxmsgsize(i64::try_from(config.max_transport_bytes).unwrap_or(i64::MAX))?;
    socket.set_ipv6(config.bind_host.contains(':'))?;
    socket.bind(endpoint)?;
    let bound = socket
        .get_last_endpoint()?
        .unwrap_or_else(|_| endpoint.to_string());
    let port = bound
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Ok(Frontend {
        socket,
        endpoint: bound,
        port,
        draining_until: None,
        events,
        connections: Vec::new(),
    })
}

/// Track accepted and closed client connections from the socket monitor
/// (each event carries the connection's descriptor); a connection accepted
/// while the port drains is corked like the others.
fn count_connections(frontend: &mut Frontend) {
    while let Some((event, value)) = next_event(&frontend.events) {
        let fd = RawFd::try_from(value).unwrap_or(-1);
        if event == zmq::SocketEvent::ACCEPTED.to_raw() {
            frontend.connections.push(fd);
            if frontend.draining_until.is_some() {
                cork::hold(&[fd]);
            }
        } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
            frontend.connections.retain(|&c| c != fd);
        }
    }
}

/// Send `[key, "", payload...]` to a backend; fails at once with EAGAIN when
/// no backend is connected (ZMQ_IMMEDIATE) or its queue is full.
///
/// On EAGAIN nothing of `payload` has been taken, so the caller can keep it.
fn send_envelope<I: Iterator<Item = zmq::Message>>(
    dealer: &zmq::Socket,
    key: Key,
    payload: &mut I,
) -> zmq::Result<()> {
    dealer.send(&key.to_bytes()[..], zmq::SNDMORE | zmq::DONTWAIT)?;
    let mut payload = payload.peekable();
    let mut flags = if payload.peek().is_some() {
        zmq::SNDMORE
    } else {
        0
    };
    dealer.send(&b""[..], flags)?;
    while let Some(frame) = payload.next() {
        flags = if payload.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        dealer.send(frame, flags)?;
    }
    Ok(())
}

/// Send a reply to a client through a ROUTER, mirroring its envelope.
fn send_routed(
    frontend: &zmq::Socket,
    client: zmq::Message,
    back: Return,
    body: impl IntoIterator<Item = zmq::Message>,
) -> zmq::Result<()> {
    // ROUTER_MANDATORY: an unreachable client fails here, before any frame
    // of the message is queued.
    frontend.send(client, zmq::SNDMORE | zmq::DONTWAIT)?;
    match back {
        Return::Bare => {}
        Return::Delimiter => frontend.send(&b""[..], zmq::SNDMORE)?,
        Return::RequestId(id) => {
            frontend.send(id, zmq::SNDMORE)?;
            frontend.send(&b""[..], zmq::SNDMORE)?;
        }
    }
    let mut body = body.into_iter().peekable();
    while let Some(frame) = body.next() {
        let flags = if body.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        frontend.send(frame, flags)?;
    }
    Ok(())
}

/// A DEALER to a target's backend.
fn open_dealer(
    context: &zmq::Context,
    config: &Config,
    target: &Target,
) -> anyhow::Result<zmq::Socket> {
    use anyhow::Context as _;
    let dealer = context.socket(zmq::DEALER)?;
    dealer.set_immediate(true)?;
    dealer.set_linger(0)?;
    dealer.set_ipv6(true)?;
    let hwm = i32::try_from(config.max_in_flight.saturating_mul(2)).unwrap_or(i32::MAX);
    dealer.set_sndhwm(hwm)?;
    dealer.set_rcvhwm(hwm)?;
    dealer.connect(&target.endpoint).with_context(|| {
        format!(
            "cannot connect target {} to {}",
            target.name, target.endpoint
        )
    })?;
    Ok(dealer)
}

/// Wait until every dealer has a connected backend, or `grace` passes.
fn wait_connected(dealers: &[zmq::Socket], grace: Duration) -> zmq::Result<()> {
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
