//! The relay: the only code that touches the frontend and backend sockets.
//!
//! One thread runs a poll loop over the frontend ROUTER, one DEALER per
//! target and the stop descriptor. A request is parsed (pure code in
//! `zbridge-protocol`), checked against the target's breaker and in-flight
//! cap, and sent to the target's DEALER behind an 8-byte envelope: an
//! in-flight [`Key`]. REP and ROUTER backends echo the envelope before their
//! reply, which finds its client through the key. Targets never wait for each
//! other: a slow backend only fills its own in-flight table entries.
//!
//! Invariant: every request read from the frontend gets exactly one reply
//! (the backend's or an error document), unless the client is gone.

mod breaker;
mod inflight;
mod stats;

use crate::config::{Config, Mode};
use crate::stop::Stop;
use breaker::{Admission, Breaker, Transition};
use inflight::{Deadlines, Key, Table};
use serde_json::json;
use stats::{Histogram, Stats};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use zbridge_protocol::{error_reply, parse_request, Action, ErrorCode, Request};

/// Messages read from one socket before the loop looks at the others.
const BATCH: usize = 256;
/// How long start-up waits for backends to accept their connections.
const CONNECT_GRACE: Duration = Duration::from_millis(250);

struct Backend {
    name: String,
    endpoint: String,
    request_timeout: Duration,
    breaker: Breaker,
    deadlines: Deadlines,
    /// Requests in flight, including those waiting for a connection.
    in_flight: usize,
    /// Requests held until a backend is connected, oldest first. An entry
    /// whose key has left the table (expired) is skipped.
    waiting: VecDeque<(Key, Vec<zmq::Message>)>,
    requests_total: u64,
    replies_total: u64,
    latency: Histogram,
}

/// A request sent to a backend and not yet answered.
struct Pending {
    client: zmq::Message,
    delimiter: bool,
    target: usize,
    sent: Instant,
    /// Not sent yet: no backend was connected.
    waiting: bool,
}

/// What to do with a request, once read.
enum Next {
    Reject(ErrorCode, String),
    Answer(Action),
    /// Forward body frames from `payload` on to backend `target`.
    Forward {
        target: usize,
        payload: usize,
    },
}

/// What the loop knows besides its sockets.
struct State {
    config: Config,
    role: Mode,
    frontend_port: u16,
    started: Instant,
    backends: Vec<Backend>,
    by_name: HashMap<String, usize>,
    table: Table<Pending>,
    stats: Stats,
    drain_deadline: Option<Instant>,
}

/// A bound relay, ready to run.
pub struct Relay {
    _context: zmq::Context,
    frontend: zmq::Socket,
    dealers: Vec<zmq::Socket>,
    state: State,
}

/// A target as the ready line reports it.
pub struct TargetReport {
    pub name: String,
    pub endpoint: String,
    pub connected: bool,
}

impl Relay {
    /// Bind the frontend for `role` and connect to every target. Returns
    /// once the frontend is bound and each backend connected or given
    /// [`CONNECT_GRACE`] to connect.
    pub fn bind(config: Config, role: Mode) -> anyhow::Result<Relay> {
        use anyhow::Context as _;
        let context = zmq::Context::new();
        let frontend = context.socket(zmq::ROUTER)?;
        frontend.set_router_mandatory(true)?;
        frontend.set_linger(1000)?;
        // Far above max_message_bytes, so that an oversized request still
        // gets its `too_large` reply while an absurd one is cut off by the
        // transport before it reaches memory.
        let ceiling = config.limits.max_message_bytes.saturating_mul(16);
        frontend.set_maxmsgsize(i64::try_from(ceiling).unwrap_or(i64::MAX))?;
        let ipv6 = config.bind_host.contains(':');
        frontend.set_ipv6(ipv6)?;
        let endpoint = config.frontend_endpoint(role);
        frontend.bind(&endpoint).with_context(|| {
            format!("cannot bind the frontend on {endpoint} (is another bridge running there?)")
        })?;
        let frontend_port = bound_port(&frontend)?;

        let mut dealers = Vec::new();
        let mut backends = Vec::new();
        let mut by_name = HashMap::new();
        for target in &config.targets {
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
            by_name.insert(target.name.clone(), backends.len());
            backends.push(Backend {
                name: target.name.clone(),
                endpoint: target.endpoint.clone(),
                request_timeout: target.request_timeout,
                breaker: Breaker::new(config.breaker_failure_threshold, config.breaker_open_wait),
                deadlines: Deadlines::default(),
                in_flight: 0,
                waiting: VecDeque::new(),
                requests_total: 0,
                replies_total: 0,
                latency: Histogram::default(),
            });
            dealers.push(dealer);
        }
        wait_connected(&dealers, CONNECT_GRACE)?;
        Ok(Relay {
            _context: context,
            frontend,
            dealers,
            state: State {
                config,
                role,
                frontend_port,
                started: Instant::now(),
                backends,
                by_name,
                table: Table::default(),
                stats: Stats::default(),
                drain_deadline: None,
            },
        })
    }

    pub fn frontend_port(&self) -> u16 {
        self.state.frontend_port
    }

    pub fn targets(&self) -> Vec<TargetReport> {
        self.state
            .backends
            .iter()
            .zip(&self.dealers)
            .map(|(b, d)| TargetReport {
                name: b.name.clone(),
                endpoint: b.endpoint.clone(),
                connected: writable(d),
            })
            .collect()
    }

    /// Relay until `stop` fires, then drain: answer what is in flight
    /// (bounded by `drain_timeout`) and return.
    pub fn run(mut self, stop: &mut Stop) -> anyhow::Result<()> {
        let Relay {
            frontend,
            dealers,
            state,
            ..
        } = &mut self;
        let mut items = Vec::with_capacity(dealers.len() + 2);
        items.push(zmq::PollItem::from_fd(stop.fd(), zmq::POLLIN));
        items.push(frontend.as_poll_item(zmq::POLLIN));
        items.extend(dealers.iter().map(|d| d.as_poll_item(zmq::POLLIN)));
        let mut frames = Vec::with_capacity(8);
        loop {
            let now = Instant::now();
            state.expire(frontend, now);
            if let Some(deadline) = state.drain_deadline {
                if state.table.len() == 0 || now >= deadline {
                    break;
                }
            }
            for (item, backend) in items[2..].iter_mut().zip(&state.backends) {
                let events = if backend.waiting.is_empty() {
                    zmq::POLLIN
                } else {
                    zmq::POLLIN | zmq::POLLOUT
                };
                item.set_events(events);
            }
            match zmq::poll(&mut items, state.poll_timeout_ms(now)) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if items[0].is_readable() && stop.take() > 0 {
                state.begin_drain(Instant::now());
            }
            if items[1].is_readable() {
                for _ in 0..BATCH {
                    if !recv_frames(frontend, &mut frames)? {
                        break;
                    }
                    state.on_request(frontend, dealers, &mut frames);
                }
            }
            for (target, dealer) in dealers.iter().enumerate() {
                if items[target + 2].is_writable() {
                    state.flush_waiting(dealer, target);
                }
                if !items[target + 2].is_readable() {
                    continue;
                }
                for _ in 0..BATCH {
                    if !recv_frames(dealer, &mut frames)? {
                        break;
                    }
                    state.on_reply(frontend, target, &mut frames);
                }
            }
        }
        state.finish(frontend);
        Ok(())
    }
}

impl State {
    fn node(&self) -> &'static str {
        match self.config.mode {
            Some(Mode::Passive) => "secondary",
            _ => "primary",
        }
    }

    fn role(&self) -> &'static str {
        match self.role {
            Mode::Active => "active",
            Mode::Passive => "passive",
        }
    }

    fn poll_timeout_ms(&mut self, now: Instant) -> i64 {
        let table = &self.table;
        let next = self
            .backends
            .iter_mut()
            .filter_map(|b| b.deadlines.next(table))
            .chain(self.drain_deadline)
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

    fn begin_drain(&mut self, now: Instant) {
        match self.drain_deadline {
            None => {
                info!(
                    in_flight = self.table.len(),
                    drain_timeout_s = self.config.drain_timeout.as_secs_f64(),
                    "stop requested: refusing new requests, draining those in flight"
                );
                self.drain_deadline = Some(now + self.config.drain_timeout);
            }
            Some(_) => {
                warn!(
                    in_flight = self.table.len(),
                    "second stop request: answering what is in flight with `draining` now"
                );
                self.drain_deadline = Some(now);
            }
        }
    }

    fn on_request(
        &mut self,
        frontend: &zmq::Socket,
        dealers: &[zmq::Socket],
        frames: &mut Vec<zmq::Message>,
    ) {
        self.stats.requests_total += 1;
        let parsed = parse_request(&frames[1..], &self.config.limits);
        let delimiter = parsed.delimiter;
        let next = match parsed.request {
            Err(rejection) => Next::Reject(rejection.code, rejection.message),
            Ok(_) if self.drain_deadline.is_some() => Next::Reject(
                ErrorCode::Draining,
                "this bridge is shutting down and takes no new requests: send it to the other bridge".to_string(),
            ),
            Ok(Request::Action(action)) => Next::Answer(action),
            Ok(Request::Forward { target, payload }) => match self.by_name.get(target.as_ref()) {
                Some(&target) => Next::Forward { target, payload },
                None => Next::Reject(ErrorCode::UnknownTarget, self.unknown_target(&target)),
            },
        };
        let mut frames = frames.drain(..);
        let Some(client) = frames.next() else { return };
        match next {
            Next::Reject(code, message) => self.reject(frontend, client, delimiter, code, &message),
            Next::Answer(action) => {
                let body = self.answer(action);
                self.send_reply(frontend, client, delimiter, [zmq::Message::from(body)]);
            }
            Next::Forward { target, payload } => {
                let payload = frames.skip(payload);
                self.forward(
                    frontend,
                    &dealers[target],
                    target,
                    client,
                    delimiter,
                    payload,
                );
            }
        }
    }

    fn unknown_target(&self, target: &str) -> String {
        let mut names: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
        names.sort_unstable();
        let shown: String = target.chars().take(64).collect();
        format!(
            "no target named {shown:?} on this bridge; configured targets: {}",
            if names.is_empty() {
                "none (add [targets.NAME] to the config)".to_string()
            } else {
                names.join(", ")
            }
        )
    }

    fn forward(
        &mut self,
        frontend: &zmq::Socket,
        dealer: &zmq::Socket,
        target: usize,
        client: zmq::Message,
        delimiter: bool,
        payload: impl Iterator<Item = zmq::Message>,
    ) {
        let now = Instant::now();
        let backend = &mut self.backends[target];
        if backend.in_flight >= self.config.max_in_flight {
            let message = format!(
                "target {} already has {} requests in flight (max_in_flight): the backend is not keeping up; retry later",
                backend.name, backend.in_flight
            );
            return self.reject(
                frontend,
                client,
                delimiter,
                ErrorCode::BackendUnavailable,
                &message,
            );
        }
        match backend.breaker.admit(now) {
            Admission::Refused { retry_after } => {
                let message = format!(
                    "target {} is failing, so its circuit breaker is open: retry in {:.1} s",
                    backend.name,
                    retry_after.as_secs_f64()
                );
                return self.reject(
                    frontend,
                    client,
                    delimiter,
                    ErrorCode::CircuitOpen,
                    &message,
                );
            }
            Admission::Allowed(transition) => log_transition(backend, transition),
        }
        let key = self.table.insert(Pending {
            client,
            delimiter,
            target,
            sent: now,
            waiting: false,
        });
        let backend = &mut self.backends[target];
        backend.in_flight += 1;
        backend.deadlines.push(now + backend.request_timeout, key);
        let mut payload = payload;
        let sent = if backend.waiting.is_empty() {
            send_envelope(dealer, key, &mut payload)
        } else {
            // Keep the order: queue behind those already waiting.
            Err(zmq::Error::EAGAIN)
        };
        match sent {
            Ok(()) => backend.requests_total += 1,
            Err(zmq::Error::EAGAIN) => {
                // No backend connected (ZMQ_IMMEDIATE): hold the request
                // until one is, or until its deadline.
                if let Some(pending) = self.table.get_mut(key) {
                    pending.waiting = true;
                }
                backend.waiting.push_back((key, payload.collect()));
            }
            Err(e) => {
                // Left in the table as waiting: its deadline answers it.
                warn!(target_name = %backend.name, error = %e, "cannot send to the backend");
                if let Some(pending) = self.table.get_mut(key) {
                    pending.waiting = true;
                }
            }
        }
    }

    /// Send the requests that waited for a backend, now that one is
    /// connected, in the order they came.
    fn flush_waiting(&mut self, dealer: &zmq::Socket, target: usize) {
        let backend = &mut self.backends[target];
        while let Some((key, frames)) = backend.waiting.pop_front() {
            let Some(pending) = self.table.get_mut(key) else {
                continue;
            };
            let mut frames = frames.into_iter();
            match send_envelope(dealer, key, &mut frames) {
                Ok(()) => {
                    pending.waiting = false;
                    backend.requests_total += 1;
                }
                Err(zmq::Error::EAGAIN) => {
                    backend.waiting.push_front((key, frames.collect()));
                    return;
                }
                Err(e) => {
                    warn!(target_name = %backend.name, error = %e, "cannot send to the backend");
                }
            }
        }
    }

    fn on_reply(&mut self, frontend: &zmq::Socket, target: usize, frames: &mut Vec<zmq::Message>) {
        let key = match frames.as_slice() {
            [key, delimiter, _, ..] if delimiter.is_empty() => Key::from_bytes(key),
            _ => None,
        };
        let Some(key) = key else {
            self.stats.malformed_replies_total += 1;
            debug!(target = %self.backends[target].name, frames = frames.len(), "dropped a backend message without a bridge envelope");
            return;
        };
        let Some(pending) = self.table.remove(key) else {
            self.stats.late_replies_total += 1;
            debug!(target = %self.backends[target].name, "dropped a late reply: its request was already answered");
            return;
        };
        let backend = &mut self.backends[pending.target];
        backend.in_flight -= 1;
        backend.replies_total += 1;
        backend.latency.record(pending.sent.elapsed());
        let transition = backend.breaker.on_success();
        log_transition(backend, transition);
        self.stats.replies_total += 1;
        self.send_reply(
            frontend,
            pending.client,
            pending.delimiter,
            frames.drain(2..),
        );
    }

    /// Answer every request whose deadline has passed with `timeout`.
    fn expire(&mut self, frontend: &zmq::Socket, now: Instant) {
        for target in 0..self.backends.len() {
            while let Some(key) = self.backends[target]
                .deadlines
                .pop_expired(now, &self.table)
            {
                let Some(pending) = self.table.remove(key) else {
                    continue;
                };
                let backend = &mut self.backends[target];
                backend.in_flight -= 1;
                let transition = backend.breaker.on_failure(now);
                log_transition(backend, transition);
                let timeout = backend.request_timeout.as_secs_f64();
                let (code, message) = if pending.waiting {
                    (
                        ErrorCode::BackendUnavailable,
                        format!(
                            "target {} had no connected backend at {} for {timeout:.3} s (request_timeout): is the service running? The bridge keeps reconnecting",
                            backend.name, backend.endpoint
                        ),
                    )
                } else {
                    (
                        ErrorCode::Timeout,
                        format!(
                            "target {} did not answer within {timeout:.3} s (request_timeout); the request may still run there",
                            backend.name
                        ),
                    )
                };
                self.reject(frontend, pending.client, pending.delimiter, code, &message);
            }
        }
    }

    /// At the end of a drain, answer whatever is still in flight.
    fn finish(&mut self, frontend: &zmq::Socket) {
        let left: Vec<Pending> = self.table.drain().collect();
        if !left.is_empty() {
            warn!(
                unanswered = left.len(),
                "drain_timeout passed: answering the rest with `draining`"
            );
        }
        for pending in left {
            let message = format!(
                "the bridge stopped before target {} answered: retry on the other bridge",
                self.backends[pending.target].name
            );
            self.reject(
                frontend,
                pending.client,
                pending.delimiter,
                ErrorCode::Draining,
                &message,
            );
        }
        info!(
            requests_total = self.stats.requests_total,
            replies_total = self.stats.replies_total,
            errors_total = self.stats.errors_total.iter().sum::<u64>(),
            "stopped"
        );
    }

    fn reject(
        &mut self,
        frontend: &zmq::Socket,
        client: zmq::Message,
        delimiter: bool,
        code: ErrorCode,
        message: &str,
    ) {
        self.stats.errors_total[code.index()] += 1;
        debug!(error = %code, message, "request refused");
        let body = zmq::Message::from(error_reply(code, message));
        self.send_reply(frontend, client, delimiter, [body]);
    }

    fn send_reply(
        &mut self,
        frontend: &zmq::Socket,
        client: zmq::Message,
        delimiter: bool,
        body: impl IntoIterator<Item = zmq::Message>,
    ) {
        if let Err(e) = send_routed(frontend, client, delimiter, body) {
            self.stats.dropped_replies_total += 1;
            debug!(error = %e, "reply dropped: the client is gone or not reading");
        }
    }

    fn answer(&self, action: Action) -> Vec<u8> {
        let doc = match action {
            Action::Ping => json!({
                "status": "ok", "action": "pong", "role": self.role(), "node": self.node(),
            }),
            Action::Status => self.status(),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The status document (DESIGN §5).
    fn status(&self) -> serde_json::Value {
        let errors: serde_json::Map<String, serde_json::Value> = ErrorCode::ALL
            .iter()
            .map(|c| {
                (
                    c.as_str().to_string(),
                    self.stats.errors_total[c.index()].into(),
                )
            })
            .collect();
        let targets: serde_json::Map<String, serde_json::Value> = self
            .backends
            .iter()
            .map(|b| {
                let doc = json!({
                    "endpoint": b.endpoint,
                    "in_flight": b.in_flight,
                    "waiting_for_backend": b.waiting.iter().filter(|(k, _)| self.table.get(*k).is_some()).count(),
                    "breaker": b.breaker.state().as_str(),
                    "requests_total": b.requests_total,
                    "replies_total": b.replies_total,
                    "latency_ms": {"p50": b.latency.quantile_ms(0.5), "p99": b.latency.quantile_ms(0.99)},
                });
                (b.name.clone(), doc)
            })
            .collect();
        json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.node(),
            "role": self.role(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "frontend_ports": [self.frontend_port],
            "draining": self.drain_deadline.is_some(),
            "requests_total": self.stats.requests_total,
            "replies_total": self.stats.replies_total,
            "errors_total": errors,
            "late_replies_total": self.stats.late_replies_total,
            "malformed_replies_total": self.stats.malformed_replies_total,
            "dropped_replies_total": self.stats.dropped_replies_total,
            "targets": targets,
        })
    }
}

fn log_transition(backend: &Backend, transition: Option<Transition>) {
    if let Some(t) = transition {
        info!(
            target_name = %backend.name,
            endpoint = %backend.endpoint,
            from = %t.from,
            to = %t.to,
            reason = t.reason.as_str(),
            "circuit breaker changed state"
        );
    }
}

/// Read one whole message without blocking; `false` when none is waiting.
fn recv_frames(socket: &zmq::Socket, frames: &mut Vec<zmq::Message>) -> zmq::Result<bool> {
    frames.clear();
    let mut flags = zmq::DONTWAIT;
    loop {
        let mut frame = zmq::Message::new();
        match socket.recv(&mut frame, flags) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) if frames.is_empty() => return Ok(false),
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

/// Send a reply to a client through the ROUTER, mirroring its delimiter.
fn send_routed(
    frontend: &zmq::Socket,
    client: zmq::Message,
    delimiter: bool,
    body: impl IntoIterator<Item = zmq::Message>,
) -> zmq::Result<()> {
    // ROUTER_MANDATORY: an unreachable client fails here, before any frame
    // of the message is queued.
    frontend.send(client, zmq::SNDMORE | zmq::DONTWAIT)?;
    if delimiter {
        frontend.send(&b""[..], zmq::SNDMORE)?;
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

fn bound_port(socket: &zmq::Socket) -> anyhow::Result<u16> {
    let endpoint = socket
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("libzmq reported a non-UTF-8 endpoint"))?;
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read the port of {endpoint}"))
}

fn writable(socket: &zmq::Socket) -> bool {
    socket
        .get_events()
        .map(|e| e.contains(zmq::POLLOUT))
        .unwrap_or(false)
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
