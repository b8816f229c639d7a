//! The client's I/O thread: one poll loop over the command doorbell, a
//! DEALER and its socket monitor per bridge, and a SUB per heartbeat port.
//!
//! Each call gets a request id (`[0x00, id as 8 bytes]`, docs/PROTOCOL.md)
//! that stays the same over every attempt. A call is in one of two places:
//! sent to one endpoint (`at`), or parked until some endpoint connects.
//! Every attempt waits `request_timeout`; the deadlines are one FIFO queue,
//! and an entry whose attempt number no longer matches is stale.

use crate::breaker::{Breaker, BreakerState};
use crate::config::ClientConfig;
use crate::{Call, ClientError, Command, Event, Reply};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};
use zbridge_protocol::heartbeat::{Message, State, Verifier};
use zbridge_protocol::time::later;
use zbridge_protocol::{parse_error_reply, ErrorCode};
use zbridge_socket::wait::{Item, Wait};
use zbridge_socket::{next_event, recv_frames, watch, HandshakeFailure, HANDSHAKE_FAILED};

const PING: &[u8] = br#"{"action":"ping"}"#;

/// How long a new client waits for a higher-priority bridge to connect
/// before it uses a lower one.
const CONNECT_GRACE: Duration = Duration::from_millis(250);

pub(crate) struct Engine {
    config: ClientConfig,
    endpoints: Vec<Endpoint>,
    sources: Vec<Source>,
    verifier: Verifier,
    inbox: mpsc::Receiver<Command>,
    doorbell: UnixStream,
    rung: Arc<AtomicBool>,
    calls: HashMap<u64, Live, BuildHasherDefault<IdHasher>>,
    /// `(deadline, id, tries)` of every attempt, oldest first.
    deadlines: VecDeque<(Instant, u64, u32)>,
    /// Calls waiting for a bridge to connect.
    parked: Vec<u64>,
    overall: Breaker,
    /// Where the last call went, for failover and switch-back events.
    current: Option<usize>,
    /// Named by a failover notification: tried first while it is up.
    preferred: Option<usize>,
    next_id: u64,
    listeners: Vec<mpsc::Sender<Event>>,
    rng: u64,
    stopping: bool,
    /// The loop's wait: what it knows of each socket between rounds.
    wait: Wait,
    /// A reply's frames as libzmq holds them, kept between replies.
    frames: Vec<zmq::Message>,
    // Dropped last: closing a context waits for its sockets.
    _context: zmq::Context,
}

/// A call and where it is.
struct Live {
    call: Call,
    /// The endpoint of the attempt in flight; `None` while parked.
    at: Option<usize>,
    /// Attempts used: one per send, one per endpoint for a round in which
    /// none was reachable.
    tries: u32,
    /// Attempts actually sent.
    sent: u32,
    /// When the call was made.
    started: Instant,
}

struct Endpoint {
    url: String,
    host: String,
    port: u16,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    /// libzmq finished a handshake and has not reported a disconnect.
    connected: bool,
    /// Why the last handshake failed, since the last one that succeeded.
    failed: Option<HandshakeFailure>,
    /// In use. A bridge that failed is down until it has answered probes
    /// for `hold_down` (or a failover notification names it).
    up: bool,
    /// Down: since when every probe has been answered.
    answering_since: Option<Instant>,
    /// Just created and not connected yet: until then, calls wait for it
    /// rather than go to a lower-priority bridge.
    fresh_until: Option<Instant>,
    /// The probe in flight: its id and deadline.
    probe: Option<(u64, Instant)>,
    next_probe: Instant,
    breaker: Breaker,
}

/// A bridge's heartbeat PUB.
struct Source {
    host: String,
    socket: zmq::Socket,
    /// The frontend port it said it serves.
    port: Option<u16>,
    heard: Option<Instant>,
    silent: bool,
}

enum Pick {
    To(usize),
    /// No bridge is reachable: park.
    Wait,
    /// Reachable bridges, all with open breakers.
    Refused(Duration),
}

impl Engine {
    pub fn new(
        config: ClientConfig,
        inbox: mpsc::Receiver<Command>,
        doorbell: UnixStream,
        rung: Arc<AtomicBool>,
    ) -> std::io::Result<Engine> {
        let context = zmq::Context::new();
        let now = Instant::now();
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| open_endpoint(&context, url, &config, now))
            .collect::<zmq::Result<Vec<_>>>()?;
        let sources = config
            .heartbeat_endpoints
            .iter()
            .map(|url| open_source(&context, url, &config))
            .collect::<zmq::Result<Vec<_>>>()?;
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Ok(Engine {
            verifier: Verifier::new(
                config.auth_token.clone(),
                config.heartbeat_max_skew.as_secs_f64(),
            ),
            overall: Breaker::new(config.breaker, now),
            config,
            endpoints,
            sources,
            inbox,
            doorbell,
            rung,
            calls: HashMap::default(),
            deadlines: VecDeque::new(),
            parked: Vec::new(),
            current: None,
            preferred: None,
            next_id: 1,
            listeners: Vec::new(),
            rng: seed | 1,
            stopping: false,
            wait: Wait::default(),
            frames: Vec::new(),
            _context: context,
        })
    }

    pub fn run(mut self) {
        while !self.stopping {
            // Awake: callers need not ring the doorbell (a write and a
            // wake-up per call) until the flag is cleared before sleeping.
            self.rung.store(true, Ordering::SeqCst);
            self.take_commands();
            let now = Instant::now();
            self.tick(now);
            let mut deadline = self.poll_deadline(now);
            // A swap, not a store: reading a caller's `true` orders its
            // queued command before the queue is read again below.
            self.rung.swap(false, Ordering::SeqCst);
            // A command queued just before the flag was cleared rang no bell.
            if self.take_commands() {
                deadline = now;
            }
            if self.stopping {
                break;
            }
            if let Err(e) = self.poll(deadline) {
                warn!(error = %e, "zbridge client: poll failed; stopping");
                break;
            }
        }
        for (_, live) in self.calls.drain() {
            live.call.done.complete(Err(ClientError::Closed));
        }
    }

    /// Wait for a command, a reply, a monitor event or a heartbeat until
    /// `deadline`. The doorbell and the DEALERs are hot (calls ring the one
    /// and are sent on the others); monitors and heartbeat subscribers are
    /// asked only when their descriptor fires ([`zbridge_socket::wait`]).
    fn poll(&mut self, deadline: Instant) -> zmq::Result<()> {
        let mut items = Vec::with_capacity(1 + 2 * self.endpoints.len() + self.sources.len());
        items.push(Item::fd(self.doorbell.as_raw_fd(), true));
        for e in &self.endpoints {
            items.push(Item::socket(&e.socket, zmq::POLLIN, true));
            items.push(Item::socket(&e.monitor, zmq::POLLIN, false));
        }
        for s in &self.sources {
            items.push(Item::socket(&s.socket, zmq::POLLIN, false));
        }
        let readable: Vec<bool> = (self.wait.wait(&items, Some(deadline))?.iter())
            .map(|events| events.contains(zmq::POLLIN))
            .collect();
        drop(items);
        if readable[0] {
            // The commands are taken at the top of the loop.
            let mut sink = [0u8; 64];
            while matches!((&self.doorbell).read(&mut sink), Ok(n) if n > 0) {}
        }
        for i in 0..self.endpoints.len() {
            if readable[1 + 2 * i] {
                self.take_replies(i);
            }
            if readable[2 + 2 * i] {
                self.take_monitor_events(i);
            }
        }
        let first_source = 1 + 2 * self.endpoints.len();
        for s in 0..self.sources.len() {
            if readable[first_source + s] {
                self.take_heartbeats(s);
            }
        }
        Ok(())
    }

    /// Whether there were any.
    fn take_commands(&mut self) -> bool {
        let mut took = false;
        while let Ok(command) = self.inbox.try_recv() {
            took = true;
            match command {
                Command::Call(call) => self.submit(call, Instant::now()),
                Command::Listen(listener) => self.listeners.push(listener),
                Command::Stop => self.stopping = true,
            }
        }
        took
    }

    fn submit(&mut self, call: Call, now: Instant) {
        match self.overall.admit(now) {
            Err(retry_after) => {
                call.done
                    .complete(Err(ClientError::CircuitOpen { retry_after }));
                return;
            }
            Ok(Some(state)) => self.breaker_changed(None, state),
            Ok(None) => {}
        }
        let id = self.next_id;
        self.next_id += 1;
        self.calls.insert(
            id,
            Live {
                call,
                at: None,
                tries: 0,
                sent: 0,
                started: now,
            },
        );
        self.dispatch(id, now);
    }

    /// Send a call to the best endpoint, park it, or fail it fast.
    fn dispatch(&mut self, id: u64, now: Instant) {
        loop {
            match self.pick(now) {
                Pick::To(i) => {
                    let Some(live) = self.calls.get_mut(&id) else {
                        return;
                    };
                    match send_call(&self.endpoints[i].socket, id, &live.call) {
                        Ok(()) => {
                            live.at = Some(i);
                            live.sent += 1;
                            let deadline = later(now, self.config.request_timeout);
                            self.deadlines.push_back((deadline, id, live.tries));
                            self.note_current(i);
                            return;
                        }
                        Err(e) => {
                            // ZMQ_IMMEDIATE: no finished connection. The
                            // monitor's disconnect event moves the others.
                            debug!(endpoint = %self.endpoints[i].url, error = %e, "send failed");
                            self.endpoints[i].connected = false;
                            self.record(i, true, now);
                            self.mark_down(i, "not_connected", now, false);
                        }
                    }
                }
                Pick::Wait => {
                    let Some(live) = self.calls.get_mut(&id) else {
                        return;
                    };
                    live.at = None;
                    let deadline = later(now, self.config.request_timeout);
                    self.deadlines.push_back((deadline, id, live.tries));
                    self.parked.push(id);
                    return;
                }
                Pick::Refused(retry_after) => {
                    if let Some(live) = self.calls.remove(&id) {
                        live.call
                            .done
                            .complete(Err(ClientError::CircuitOpen { retry_after }));
                    }
                    return;
                }
            }
        }
    }

    /// The endpoint for the next attempt: the notified one, then the first
    /// one up, then a failed one that answers its probes; only connected
    /// ones, and only if their breaker lets the call through.
    fn pick(&mut self, now: Instant) -> Pick {
        let n = self.endpoints.len();
        let mut refused: Option<Duration> = None;
        for fallback in [false, true] {
            for i in self.preferred.into_iter().chain(0..n) {
                let e = &self.endpoints[i];
                if !fallback && e.up && !e.connected && e.fresh_until.is_some() {
                    // Still connecting for the first time: wait for it.
                    return Pick::Wait;
                }
                let candidate = e.connected
                    && if fallback {
                        !e.up && e.answering_since.is_some()
                    } else {
                        e.up
                    };
                if !candidate {
                    continue;
                }
                match self.endpoints[i].breaker.admit(now) {
                    Ok(changed) => {
                        if let Some(state) = changed {
                            self.breaker_changed(Some(i), state);
                        }
                        return Pick::To(i);
                    }
                    Err(wait) => refused = Some(refused.map_or(wait, |r| r.min(wait))),
                }
            }
        }
        match refused {
            Some(wait) => Pick::Refused(wait),
            None => Pick::Wait,
        }
    }

    fn note_current(&mut self, i: usize) {
        let from = self.current.replace(i);
        match from {
            Some(f) if f != i => {
                let (from, to) = (self.endpoints[f].url.clone(), self.endpoints[i].url.clone());
                self.emit(if i > f {
                    Event::FailedOver { from, to }
                } else {
                    Event::SwitchedBack { from, to }
                });
            }
            _ => {}
        }
    }

    /// Take an endpoint out of use; with `resend`, move its unanswered
    /// calls on at once (their answers will not come).
    fn mark_down(&mut self, i: usize, reason: &'static str, now: Instant, resend: bool) {
        let jitter = self.jitter();
        let e = &mut self.endpoints[i];
        e.answering_since = None;
        e.next_probe = later(now, jitter);
        if e.up {
            e.up = false;
            let endpoint = e.url.clone();
            self.emit(Event::EndpointDown { endpoint, reason });
        }
        if self.preferred == Some(i) {
            self.preferred = None;
        }
        if !resend {
            return;
        }
        let mut moved: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, live)| live.at == Some(i))
            .map(|(&id, _)| id)
            .collect();
        moved.sort_unstable();
        for id in moved {
            self.retry(id, 1, now);
        }
    }

    /// Count `used` attempts against a call, then send it again or fail it.
    fn retry(&mut self, id: u64, used: u32, now: Instant) {
        let limit = self.config.max_reconnect_attempts * self.endpoints.len() as u32;
        let Some(live) = self.calls.get_mut(&id) else {
            return;
        };
        live.at = None;
        live.tries += used;
        if live.tries < limit {
            return self.dispatch(id, now);
        }
        let Some(live) = self.calls.remove(&id) else {
            return;
        };
        let error = if live.sent > 0 {
            ClientError::Timeout {
                attempts: live.sent,
            }
        } else {
            let curve = self.config.curve.is_some();
            ClientError::AllBridgesDown {
                attempts: live.tries,
                endpoints: self.endpoints.iter().map(|e| e.url.clone()).collect(),
                waited: now.saturating_duration_since(live.started),
                handshakes: (self.endpoints.iter())
                    .filter_map(|e| Some(format!("{}: {}", e.url, advice(e.failed?, curve))))
                    .collect(),
            }
        };
        let target = live.call.target.as_deref().unwrap_or("(named in the JSON)");
        warn!(target_name = %target, error = %error, "request failed");
        live.call.done.complete(Err(error));
        self.record_overall(true, now);
    }

    fn tick(&mut self, now: Instant) {
        while let Some(&(deadline, id, tries)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(live) = self.calls.get(&id).filter(|l| l.tries == tries) else {
                continue;
            };
            match live.at {
                Some(i) => {
                    self.record(i, true, now);
                    if let Some(live) = self.calls.get_mut(&id) {
                        live.at = None;
                    }
                    self.mark_down(i, "no_answer", now, true);
                    self.retry(id, 1, now);
                }
                None => {
                    self.parked.retain(|&p| p != id);
                    let round = self.endpoints.len() as u32;
                    self.retry(id, round, now);
                }
            }
        }
        for i in 0..self.endpoints.len() {
            self.probe(i, now);
        }
        let mut grace_over = false;
        for e in &mut self.endpoints {
            if e.fresh_until.is_some_and(|t| now >= t) {
                e.fresh_until = None;
                grace_over = true;
            }
        }
        if grace_over {
            self.dispatch_parked(now);
        }
        for s in 0..self.sources.len() {
            let source = &mut self.sources[s];
            let silent = source
                .heard
                .is_some_and(|t| now.duration_since(t) > self.config.heartbeat_timeout);
            if !silent || source.silent {
                continue;
            }
            source.silent = true;
            let (host, port) = (source.host.clone(), source.port);
            warn!(%host, ?port, "zbridge client: a bridge's heartbeats stopped");
            for i in 0..self.endpoints.len() {
                let e = &self.endpoints[i];
                if e.up && e.host == host && Some(e.port) == port {
                    self.mark_down(i, "heartbeat_silence", now, true);
                }
            }
        }
    }

    /// Ask a failed endpoint whether it answers again.
    fn probe(&mut self, i: usize, now: Instant) {
        let jitter = self.jitter();
        let e = &mut self.endpoints[i];
        if let Some((_, deadline)) = e.probe {
            if now < deadline {
                return;
            }
            e.probe = None;
            e.answering_since = None;
            e.next_probe = later(now, jitter);
        }
        if e.up || !e.connected || now < e.next_probe {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let probe = [&request_id(id)[..], b"", PING];
        match e.socket.send_multipart(probe, zmq::DONTWAIT) {
            Ok(()) => e.probe = Some((id, later(now, self.config.request_timeout))),
            Err(_) => {
                e.answering_since = None;
                e.next_probe = later(now, jitter);
            }
        }
    }

    fn take_replies(&mut self, i: usize) {
        // The id and the delimiter are read where libzmq holds them; only
        // the body is copied out, into the caller's reply.
        let mut frames = std::mem::take(&mut self.frames);
        while matches!(
            recv_frames(&self.endpoints[i].socket, &mut frames),
            Ok(true)
        ) {
            let now = Instant::now();
            let id = match frames.as_slice() {
                [id, delimiter, _, ..] if delimiter.is_empty() => parse_request_id(id),
                _ => None,
            };
            let Some(id) = id else {
                debug!(endpoint = %self.endpoints[i].url, "dropped a message without a request id");
                continue;
            };
            let refusal = match &frames[2..] {
                [only] => parse_error_reply(&[&only[..]]),
                _ => None,
            };
            let draining = refusal
                .as_ref()
                .is_some_and(|r| r.code == ErrorCode::Draining);
            if self.endpoints[i].probe.is_some_and(|(p, _)| p == id) {
                self.on_probe_answer(i, draining, now);
                continue;
            }
            if !self.calls.contains_key(&id) {
                debug!(endpoint = %self.endpoints[i].url, "dropped a late answer: its call already has its result");
                continue;
            }
            if draining {
                // The bridge is stopping: the request did not run there.
                self.mark_down(i, "draining", now, false);
                if self.calls.get(&id).is_some_and(|l| l.at == Some(i)) {
                    self.retry(id, 1, now);
                }
                continue;
            }
            let Some(live) = self.calls.remove(&id) else {
                continue;
            };
            if live.at.is_none() {
                self.parked.retain(|&p| p != id);
            }
            self.record(i, false, now);
            self.record_overall(false, now);
            let result = match refusal {
                Some(r) => Err(ClientError::Bridge {
                    code: r.code,
                    message: r.message,
                }),
                None => Ok(Reply {
                    frames: frames[2..].iter().map(|f| f.to_vec()).collect(),
                    endpoint: self.endpoints[i].url.clone(),
                    attempts: live.sent,
                    elapsed: now.saturating_duration_since(live.call.submitted),
                }),
            };
            live.call.done.complete(result);
        }
        self.frames = frames;
    }

    fn on_probe_answer(&mut self, i: usize, draining: bool, now: Instant) {
        let jitter = self.jitter();
        let hold_down = self.config.hold_down;
        let e = &mut self.endpoints[i];
        e.probe = None;
        e.next_probe = later(now, jitter);
        if draining {
            e.answering_since = None;
            return;
        }
        let first = e.answering_since.is_none();
        let since = *e.answering_since.get_or_insert(now);
        if now.duration_since(since) >= hold_down {
            e.up = true;
            let endpoint = e.url.clone();
            self.emit(Event::EndpointUp { endpoint });
            self.dispatch_parked(now);
        } else if first {
            // A fallback for parked calls, should nothing be up.
            self.dispatch_parked(now);
        }
    }

    fn dispatch_parked(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.parked) {
            self.dispatch(id, now);
        }
    }

    fn take_monitor_events(&mut self, i: usize) {
        while let Some((event, value)) = next_event(&self.endpoints[i].monitor) {
            let now = Instant::now();
            match event {
                e if e == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() => {
                    self.endpoints[i].connected = true;
                    self.endpoints[i].failed = None;
                    self.endpoints[i].fresh_until = None;
                    let endpoint = self.endpoints[i].url.clone();
                    self.emit(Event::Connected { endpoint });
                    self.dispatch_parked(now);
                }
                e if e == zmq::SocketEvent::DISCONNECTED.to_raw() => {
                    self.endpoints[i].connected = false;
                    self.endpoints[i].probe = None;
                    let reason = match self.endpoints[i].failed {
                        Some(_) => "handshake_failed",
                        None => "disconnected",
                    };
                    self.mark_down(i, reason, now, true);
                }
                e => {
                    if let Some(failure) = HandshakeFailure::of(e, value) {
                        self.handshake_failed(i, failure);
                    }
                }
            }
        }
    }

    /// A bridge ended our handshake: said once per change (libzmq retries
    /// every 25 ms), and kept for the error of the calls that fail.
    fn handshake_failed(&mut self, i: usize, failure: HandshakeFailure) {
        let e = &mut self.endpoints[i];
        if e.failed.replace(failure) != Some(failure) {
            let why = advice(failure, self.config.curve.is_some());
            warn!(endpoint = %e.url, "zbridge client: the handshake failed: {why}");
        }
    }

    fn take_heartbeats(&mut self, s: usize) {
        while let Ok(frame) = self.sources[s].socket.recv_bytes(zmq::DONTWAIT) {
            let now = Instant::now();
            let wall = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            match self.verifier.verify(&frame, wall) {
                Ok(Message::Heartbeat(beat)) => {
                    // A port moves with the active role: whoever serves it
                    // now is the one whose silence counts for it.
                    let host = self.sources[s].host.clone();
                    for (j, other) in self.sources.iter_mut().enumerate() {
                        if j != s && other.host == host && other.port == Some(beat.port) {
                            other.port = None;
                        }
                    }
                    let source = &mut self.sources[s];
                    source.heard = Some(now);
                    source.port = Some(beat.port);
                    if std::mem::take(&mut source.silent) {
                        info!(host = %source.host, port = beat.port, "zbridge client: a bridge's heartbeats are back");
                    }
                    if beat.state == State::Leaving {
                        let host = source.host.clone();
                        if let Some(i) = self.endpoint_at(&host, beat.port) {
                            // It answers what it has; new calls go elsewhere.
                            self.mark_down(i, "leaving", now, false);
                        }
                    }
                }
                Ok(Message::FailoverNotification(note)) => {
                    let host = self.sources[s].host.clone();
                    let named = self
                        .endpoints
                        .iter()
                        .position(|e| note.endpoints.contains(&e.url))
                        .or_else(|| self.endpoint_at(&host, note.new_active_port));
                    info!(new_active = ?note.endpoints, epoch = note.epoch, "zbridge client: failover notification");
                    if let Some(i) = named {
                        self.preferred = Some(i);
                        let e = &mut self.endpoints[i];
                        if !e.up {
                            e.up = true;
                            let endpoint = e.url.clone();
                            self.emit(Event::EndpointUp { endpoint });
                        }
                        self.dispatch_parked(now);
                    }
                }
                Err(reason) => debug!(%reason, "zbridge client: ignored a heartbeat"),
            }
        }
    }

    fn endpoint_at(&self, host: &str, port: u16) -> Option<usize> {
        self.endpoints
            .iter()
            .position(|e| e.host == host && e.port == port)
    }

    fn record(&mut self, i: usize, failed: bool, now: Instant) {
        if let Some(state) = self.endpoints[i].breaker.record(failed, now) {
            self.breaker_changed(Some(i), state);
        }
    }

    fn record_overall(&mut self, failed: bool, now: Instant) {
        if let Some(state) = self.overall.record(failed, now) {
            self.breaker_changed(None, state);
        }
    }

    fn breaker_changed(&mut self, i: Option<usize>, state: BreakerState) {
        let endpoint = i.map(|i| self.endpoints[i].url.clone());
        self.emit(Event::Breaker { endpoint, state });
    }

    fn emit(&mut self, event: Event) {
        match &event {
            Event::Connected { endpoint } => debug!(%endpoint, "zbridge client: connected"),
            Event::EndpointDown { endpoint, reason } => {
                warn!(%endpoint, reason, "zbridge client: bridge out of use")
            }
            Event::EndpointUp { endpoint } => {
                info!(%endpoint, "zbridge client: bridge back in use")
            }
            Event::FailedOver { from, to } => warn!(%from, %to, "zbridge client: failed over"),
            Event::SwitchedBack { from, to } => info!(%from, %to, "zbridge client: switched back"),
            Event::Breaker { endpoint, state } => {
                let scope = endpoint.as_deref().unwrap_or("all bridges");
                info!(%scope, %state, "zbridge client: circuit breaker changed state")
            }
        }
        self.listeners.retain(|l| l.send(event.clone()).is_ok());
    }

    /// `reconnect_delay` ±20%.
    fn jitter(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let factor = 0.8 + 0.4 * (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        // Not `mul_f64`, which panics when a delay set in code overflows.
        let delay = self.config.reconnect_delay;
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(delay)
    }

    fn poll_deadline(&self, now: Instant) -> Instant {
        let mut next = now + Duration::from_secs(1);
        if let Some(&(deadline, _, _)) = self.deadlines.front() {
            next = next.min(deadline);
        }
        for e in &self.endpoints {
            if let Some(t) = e.fresh_until {
                next = next.min(t);
            }
            match e.probe {
                Some((_, deadline)) => next = next.min(deadline),
                None if !e.up && e.connected => next = next.min(e.next_probe),
                None => {}
            }
        }
        for s in &self.sources {
            if let (Some(heard), false) = (s.heard, s.silent) {
                next = next.min(later(
                    heard,
                    self.config
                        .heartbeat_timeout
                        .saturating_add(Duration::from_millis(1)),
                ));
            }
        }
        next
    }
}

/// Hashes the call ids, which count up from 1: one multiply spreads them
/// over the table (the default SipHash cost more than the rest of a
/// lookup). No adversary picks the ids.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

fn request_id(id: u64) -> [u8; 9] {
    let mut frame = [0u8; 9];
    frame[1..].copy_from_slice(&id.to_be_bytes());
    frame
}

fn parse_request_id(frame: &[u8]) -> Option<u64> {
    match frame {
        [0, id @ ..] => Some(u64::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

fn send_call(socket: &zmq::Socket, id: u64, call: &Call) -> zmq::Result<()> {
    socket.send(&request_id(id)[..], zmq::SNDMORE | zmq::DONTWAIT)?;
    socket.send(&b""[..], zmq::SNDMORE)?;
    let target = call.target.as_deref().map(str::as_bytes);
    let mut frames = target
        .into_iter()
        .chain(call.frames.iter().map(Vec::as_slice))
        .peekable();
    while let Some(frame) = frames.next() {
        let more = if frames.peek().is_some() {
            zmq::SNDMORE
        } else {
            0
        };
        socket.send(frame, more)?;
    }
    Ok(())
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("tcp://").unwrap_or(url);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.to_string(), port.parse().unwrap_or(0))
}

fn open_endpoint(
    context: &zmq::Context,
    url: &str,
    config: &ClientConfig,
    now: Instant,
) -> zmq::Result<Endpoint> {
    let socket = context.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.set_ipv6(true)?;
    // Queue nothing for a bridge that is not connected: a send fails at
    // once and the call goes elsewhere.
    socket.set_immediate(true)?;
    socket.set_sndhwm(100_000)?;
    socket.set_rcvhwm(100_000)?;
    // A bridge that takes over a port is found within 25 ms: no backoff.
    socket.set_reconnect_ivl(25)?;
    if let Some(keys) = &config.curve {
        keys.apply(&socket)?;
    }
    let mut kinds = vec![
        zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
        zmq::SocketEvent::DISCONNECTED,
    ];
    kinds.extend(HANDSHAKE_FAILED);
    let events = watch(context, &socket, &kinds)?;
    socket.connect(url)?;
    let (host, port) = host_port(url);
    Ok(Endpoint {
        url: url.to_string(),
        host,
        port,
        socket,
        monitor: events,
        connected: false,
        failed: None,
        up: true,
        answering_since: None,
        fresh_until: Some(later(now, config.request_timeout.min(CONNECT_GRACE))),
        probe: None,
        next_probe: now,
        breaker: Breaker::new(config.breaker, now),
    })
}

/// What a failed handshake means for a client, and what to check;
/// `curve`: whether this client uses CURVE.
fn advice(failure: HandshakeFailure, curve: bool) -> String {
    match (failure, curve) {
        (HandshakeFailure::Refused(status), _) => format!(
            "the bridge refused our CURVE key (ZAP status {status}): add our public key to the bridge's curve_clients directory, then reload it (SIGHUP)"
        ),
        (HandshakeFailure::Mechanism, true) => "the bridge does not use CURVE on this port (a plain port?): use its CURVE port, or drop curve_server_key from our config".into(),
        (HandshakeFailure::Mechanism, false) => "the bridge requires CURVE on this port: set curve_server_key (the bridges' public key) and our key pair (curve_secret_key_file) in our config".into(),
        (HandshakeFailure::Cryptographic, _) => "our CURVE handshake did not decrypt: curve_server_key is not the bridge's public key".into(),
        (HandshakeFailure::Closed(_), true) => "the bridge refused our CURVE handshake (it closed the connection): check that curve_server_key is the bridge's public key, and that our key is in its curve_clients".into(),
        (HandshakeFailure::Closed(_), false) => "the bridge closed the connection during the handshake: does it require CURVE (curve_server_key), and is this port a zbridge frontend?".into(),
        (HandshakeFailure::Protocol(code), _) => format!(
            "the handshake failed (ZMTP protocol error {code:#x}): is this port a zbridge frontend?"
        ),
    }
}

fn open_source(context: &zmq::Context, url: &str, config: &ClientConfig) -> zmq::Result<Source> {
    let socket = context.socket(zmq::SUB)?;
    if let Some(keys) = &config.curve {
        keys.apply(&socket)?;
    }
    socket.set_linger(0)?;
    socket.set_ipv6(true)?;
    socket.set_reconnect_ivl(100)?;
    socket.set_subscribe(b"")?;
    socket.connect(url)?;
    Ok(Source {
        host: host_port(url).0,
        socket,
        port: None,
        heard: None,
        silent: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_round_trip_and_others_are_refused() {
        for id in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            assert_eq!(parse_request_id(&request_id(id)), Some(id));
        }
        assert_eq!(parse_request_id(b"\x00short"), None);
        assert_eq!(parse_request_id(&[1; 9]), None);
    }

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            host_port("tcp://127.0.0.1:5600"),
            ("127.0.0.1".into(), 5600)
        );
        assert_eq!(host_port("tcp://[::1]:5601"), ("::1".into(), 5601));
    }
}
