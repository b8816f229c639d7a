//! What the relay loop knows besides its sockets: targets, the in-flight
//! table, counters; and what it does with a request, a reply or a deadline.
//! Sockets are lent to it by the loop for each call.

use super::breaker::{Admission, Breaker, Transition};
use super::inflight::{Deadlines, Key, Table};
use super::limit::{Limit, Limiter};
use super::stats::{Histogram, Stats};
use super::{send_envelope, send_routed, Frontends};
use crate::config::{Config, Target};
use crate::ha::machine::{Peer, Port};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use zbridge_protocol::heartbeat::{Node, Rejected};
use zbridge_protocol::time::later;
use zbridge_protocol::{
    error_reply, parse_request, Action, Envelope, ErrorCode, Rejection, Request,
};

pub(super) struct Backend {
    pub name: String,
    pub endpoint: String,
    request_timeout: Duration,
    breaker: Breaker,
    deadlines: Deadlines,
    /// Requests in flight, including those waiting for a connection.
    pub in_flight: usize,
    /// Removed or re-pointed by a reload: takes no new requests; its
    /// dealer is closed once what is in flight is answered.
    pub retired: bool,
    /// Requests held until a backend is connected, oldest first. An entry
    /// whose key has left the table (expired) is skipped.
    pub waiting: VecDeque<(Key, Vec<zmq::Message>)>,
    requests_total: u64,
    replies_total: u64,
    latency: Histogram,
}

/// A request sent to a backend and not yet answered.
pub(super) struct Pending {
    client: zmq::Message,
    back: Return,
    /// The frontend the request came in on, and its reply goes out on.
    frontend: Port,
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

/// The high-availability side of the status document, kept up to date by
/// the loop.
#[derive(Debug, Clone, Default)]
pub(super) struct HaView {
    pub role: &'static str,
    pub node: Option<Node>,
    pub epoch: u64,
    pub peer: Option<(Instant, Peer)>,
    pub peer_alive: bool,
    pub failovers: u64,
    pub bind_failures: u64,
    pub step_downs: u64,
    pub rejected: [u64; Rejected::ALL.len()],
    pub frontend_ports: Vec<u16>,
    pub clients_connected: u64,
}

pub(super) struct State {
    pub config: Config,
    started: Instant,
    pub backends: Vec<Backend>,
    by_name: HashMap<String, usize>,
    table: Table<Pending>,
    stats: Stats,
    /// Requests in flight by the frontend they came in on.
    pub front_in_flight: [usize; 2],
    pub ha: HaView,
    /// The stream thread's part of the status document.
    pub streams: serde_json::Map<String, Value>,
    limiter: Limiter,
    /// Successful reloads.
    pub generation: u64,
    /// (when, requests_total, errors) samples of the last 10 s, for rates.
    window: VecDeque<(Instant, u64, u64)>,
}

impl State {
    pub fn new(config: Config, now: Instant) -> State {
        let limiter = limiter(&config, now);
        let mut state = State {
            limiter,
            config,
            started: now,
            backends: Vec::new(),
            by_name: HashMap::new(),
            generation: 0,
            window: VecDeque::new(),
            table: Table::default(),
            stats: Stats::default(),
            front_in_flight: [0; 2],
            ha: HaView::default(),
            streams: serde_json::Map::new(),
        };
        for target in state.config.targets.clone() {
            state.add_backend(&target);
        }
        state
    }

    /// A new target; its index is the next dealer's.
    pub fn add_backend(&mut self, target: &Target) {
        self.by_name
            .insert(target.name.to_ascii_lowercase(), self.backends.len());
        self.backends.push(Backend {
            name: target.name.clone(),
            endpoint: target.endpoint.clone(),
            request_timeout: target.request_timeout,
            breaker: Breaker::new(
                self.config.breaker_failure_threshold,
                self.config.breaker_open_wait,
            ),
            deadlines: Deadlines::default(),
            in_flight: 0,
            retired: false,
            waiting: VecDeque::new(),
            requests_total: 0,
            replies_total: 0,
            latency: Histogram::default(),
        });
    }

    /// The index of the live target `name`.
    /// Names match without regard to case, as in the original bridge.
    pub fn target_index(&self, name: &str) -> Option<usize> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_name.get(&name.to_ascii_lowercase()).copied()
        } else {
            self.by_name.get(name).copied()
        }
    }

    /// Take a target out of service: requests in flight to it are still
    /// answered; new ones no longer reach it.
    pub fn retire(&mut self, index: usize) {
        let backend = &mut self.backends[index];
        backend.retired = true;
        let key = backend.name.to_ascii_lowercase();
        if self.by_name.get(&key) == Some(&index) {
            self.by_name.remove(&key);
        }
    }

    /// Apply a reloaded config to a kept target (same endpoint).
    pub fn update_backend(&mut self, index: usize, target: &Target) {
        let backend = &mut self.backends[index];
        // The same target, perhaps spelled another way: shown as now written.
        backend.name.clone_from(&target.name);
        backend.request_timeout = target.request_timeout;
        backend.breaker.set(
            self.config.breaker_failure_threshold,
            self.config.breaker_open_wait,
        );
    }

    /// Take a reloaded config: limits, timeouts, rate limits.
    pub fn set_config(&mut self, config: Config, now: Instant) {
        let rates_changed = (
            config.rate_limit_per_client,
            config.rate_limit_global,
            config.rate_limit_clients,
        ) != (
            self.config.rate_limit_per_client,
            self.config.rate_limit_global,
            self.config.rate_limit_clients,
        );
        self.config = config;
        if rates_changed {
            self.limiter = limiter(&self.config, now);
        }
        self.generation += 1;
    }

    /// The earliest request deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let table = &self.table;
        self.backends
            .iter_mut()
            .filter_map(|b| b.deadlines.next(table))
            .min()
    }

    pub fn on_request(
        &mut self,
        frontends: &Frontends,
        port: Port,
        dealers: &[Option<zmq::Socket>],
        frames: &mut Vec<zmq::Message>,
    ) {
        self.stats.requests_total += 1;
        let now = Instant::now();
        let draining = frontends[port.index()]
            .as_ref()
            .is_none_or(|f| f.draining_until.is_some() && now >= f.relay_until);
        let limited = match self.limiter.enabled() {
            true => self.limiter.admit(&frames[0], now).err(),
            false => None,
        };
        let is_target = |frame: &[u8]| {
            std::str::from_utf8(frame).is_ok_and(|name| self.target_index(name).is_some())
        };
        let parsed = parse_request(&frames[1..], &self.config.limits, is_target);
        let envelope = parsed.envelope;
        let next = match (limited, parsed.request) {
            (Some((limit, wait)), _) => {
                Next::Reject(ErrorCode::RateLimited, self.rate_limited(limit, wait))
            }
            (None, request) => self.next(request, draining),
        };
        let mut frames = frames.drain(..);
        let Some(client) = frames.next() else { return };
        let back = match envelope {
            Envelope::Bare => Return::Bare,
            Envelope::Delimiter => Return::Delimiter,
            Envelope::RequestId => {
                Return::RequestId(frames.next().unwrap_or_else(zmq::Message::new))
            }
        };
        // Frames left before the payload: the delimiter of an envelope.
        let taken = usize::from(envelope == Envelope::RequestId);
        let to = (port, client, back);
        match next {
            Next::Reject(code, message) => self.reject(frontends, to, code, &message),
            Next::Answer(action) => {
                let body = self.answer(action);
                self.send_reply(frontends, to, [zmq::Message::from(body)]);
            }
            Next::Forward { target, payload } => {
                let payload = frames.skip(payload - taken);
                match &dealers[target] {
                    Some(dealer) => self.forward(frontends, dealer, target, to, payload),
                    None => {
                        let message = format!(
                            "target {} is being reconfigured: retry",
                            self.backends[target].name
                        );
                        self.reject(frontends, to, ErrorCode::BackendUnavailable, &message);
                    }
                }
            }
        }
    }

    /// What to do with a request that passed the rate limits.
    fn next(&self, request: Result<Request<'_>, Rejection>, draining: bool) -> Next {
        match request {
            Err(rejection) => Next::Reject(rejection.code, rejection.message),
            Ok(_) if draining => Next::Reject(
                ErrorCode::Draining,
                "this bridge is handing over or shutting down and takes no new requests here: send it to the other bridge".to_string(),
            ),
            Ok(Request::Action(action)) => Next::Answer(action),
            Ok(Request::Forward { target, payload }) => match self.target_index(&target) {
                Some(target) => Next::Forward { target, payload },
                None => Next::Reject(ErrorCode::UnknownTarget, self.unknown_target(&target)),
            },
        }
    }

    fn rate_limited(&self, limit: Limit, wait: Duration) -> String {
        let (what, key, rate) = match limit {
            Limit::Client => (
                "this client is over its",
                "rate_limit_per_client",
                self.config.rate_limit_per_client,
            ),
            Limit::Global => (
                "the bridge is over its global",
                "rate_limit_global",
                self.config.rate_limit_global,
            ),
        };
        format!(
            "{what} rate limit of {} requests/s ({key}): slow down; a request may pass again in {} ms",
            rate.map_or(0.0, |r| r.per_second),
            wait.as_millis().max(1)
        )
    }

    fn unknown_target(&self, target: &str) -> String {
        let mut names: Vec<&str> = self
            .by_name
            .values()
            .map(|&i| self.backends[i].name.as_str())
            .collect();
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
        frontends: &Frontends,
        dealer: &zmq::Socket,
        target: usize,
        to: Client,
        payload: impl Iterator<Item = zmq::Message>,
    ) {
        let now = Instant::now();
        let backend = &mut self.backends[target];
        if backend.in_flight >= self.config.max_in_flight {
            let message = format!(
                "target {} already has {} requests in flight (max_in_flight): the backend is not keeping up; retry later",
                backend.name, backend.in_flight
            );
            return self.reject(frontends, to, ErrorCode::BackendUnavailable, &message);
        }
        match backend.breaker.admit(now) {
            Admission::Refused { retry_after } => {
                let message = format!(
                    "target {} is failing, so its circuit breaker is open: retry in {:.1} s",
                    backend.name,
                    retry_after.as_secs_f64()
                );
                return self.reject(frontends, to, ErrorCode::CircuitOpen, &message);
            }
            Admission::Allowed(transition) => log_transition(backend, transition),
        }
        let (frontend, client, back) = to;
        let key = self.table.insert(Pending {
            client,
            back,
            frontend,
            target,
            sent: now,
            waiting: false,
        });
        self.front_in_flight[frontend.index()] += 1;
        let backend = &mut self.backends[target];
        backend.in_flight += 1;
        backend
            .deadlines
            .push(later(now, backend.request_timeout), key);
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
    pub fn flush_waiting(&mut self, dealer: &zmq::Socket, target: usize) {
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

    /// Take a request out of the table and out of every count.
    fn take(&mut self, key: Key) -> Option<Pending> {
        let pending = self.table.remove(key)?;
        self.backends[pending.target].in_flight -= 1;
        self.front_in_flight[pending.frontend.index()] -= 1;
        Some(pending)
    }

    pub fn on_reply(
        &mut self,
        frontends: &Frontends,
        target: usize,
        frames: &mut Vec<zmq::Message>,
    ) {
        let key = match frames.as_slice() {
            [key, delimiter, _, ..] if delimiter.is_empty() => Key::from_bytes(key),
            _ => None,
        };
        let Some(key) = key else {
            self.stats.malformed_replies_total += 1;
            debug!(target_name = %self.backends[target].name, frames = frames.len(), "dropped a backend message without a bridge envelope");
            return;
        };
        let Some(pending) = self.take(key) else {
            self.stats.late_replies_total += 1;
            debug!(target_name = %self.backends[target].name, "dropped a late reply: its request was already answered");
            return;
        };
        let backend = &mut self.backends[pending.target];
        backend.replies_total += 1;
        backend.latency.record(pending.sent.elapsed());
        let transition = backend.breaker.on_success();
        log_transition(backend, transition);
        self.stats.replies_total += 1;
        let to = (pending.frontend, pending.client, pending.back);
        self.send_reply(frontends, to, frames.drain(2..));
    }

    /// Answer every request whose deadline has passed.
    pub fn expire(&mut self, frontends: &Frontends, now: Instant) {
        for target in 0..self.backends.len() {
            while let Some(key) = self.backends[target]
                .deadlines
                .pop_expired(now, &self.table)
            {
                let Some(pending) = self.take(key) else {
                    continue;
                };
                let backend = &mut self.backends[target];
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
                let to = (pending.frontend, pending.client, pending.back);
                self.reject(frontends, to, code, &message);
            }
        }
    }

    /// At the end of a frontend's drain, answer what is still in flight on it.
    pub fn answer_left(&mut self, frontends: &Frontends, port: Port) {
        let left = self.table.remove_where(|p| p.frontend == port);
        if !left.is_empty() {
            warn!(
                unanswered = left.len(),
                ?port,
                "drain_timeout passed: answering the rest with `draining`"
            );
        }
        for pending in left {
            self.backends[pending.target].in_flight -= 1;
            self.front_in_flight[port.index()] -= 1;
            let message = format!(
                "the bridge stopped before target {} answered: retry on the other bridge",
                self.backends[pending.target].name
            );
            let to = (pending.frontend, pending.client, pending.back);
            self.reject(frontends, to, ErrorCode::Draining, &message);
        }
    }

    pub fn log_totals(&self) {
        info!(
            requests_total = self.stats.requests_total,
            replies_total = self.stats.replies_total,
            errors_total = self.stats.errors_total.iter().sum::<u64>(),
            "stopped"
        );
    }

    fn reject(&mut self, frontends: &Frontends, to: Client, code: ErrorCode, message: &str) {
        self.stats.errors_total[code.index()] += 1;
        debug!(error = %code, message, "request refused");
        let body = zmq::Message::from(error_reply(code, message));
        self.send_reply(frontends, to, [body]);
    }

    fn send_reply(
        &mut self,
        frontends: &Frontends,
        (port, client, back): Client,
        body: impl IntoIterator<Item = zmq::Message>,
    ) {
        let sent = match &frontends[port.index()] {
            Some(frontend) => send_routed(&frontend.socket, client, back, body),
            None => Err(zmq::Error::ENOTSOCK),
        };
        if let Err(e) = sent {
            self.stats.dropped_replies_total += 1;
            debug!(error = %e, "reply dropped: the client is gone or not reading");
        }
    }

    fn answer(&self, action: Action) -> Vec<u8> {
        let doc = match action {
            Action::Ping => json!({
                "status": "ok", "action": "pong", "role": self.ha.role, "node": self.ha.node,
            }),
            Action::Status => self.status(),
        };
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Record the counters for the 10 s rates; called a few times a second.
    pub fn sample(&mut self, now: Instant) {
        let errors = self.stats.errors_total.iter().sum();
        self.window
            .push_back((now, self.stats.requests_total, errors));
        while self
            .window
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.window.pop_front();
        }
    }

    /// Requests per second, and the fraction of them answered with an
    /// error, over the samples of the last 10 s.
    fn rates(&self) -> (f64, f64) {
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return (0.0, 0.0);
        };
        let seconds = last.0.saturating_duration_since(first.0).as_secs_f64();
        let requests = last.1 - first.1;
        let errors = last.2 - first.2;
        if seconds == 0.0 || requests == 0 {
            return (0.0, 0.0);
        }
        (requests as f64 / seconds, errors as f64 / requests as f64)
    }

    /// Each target's answered requests, for `/metrics`.
    pub fn durations(&self) -> Vec<crate::monitor::Durations> {
        self.backends
            .iter()
            .filter(|b| !b.retired)
            .map(|b| {
                let (sum_s, count, buckets) = b.latency.prometheus();
                crate::monitor::Durations {
                    target: b.name.clone(),
                    sum_s,
                    count,
                    buckets,
                }
            })
            .collect()
    }

    /// The status document (DESIGN §5).
    pub fn status(&self) -> Value {
        let errors: serde_json::Map<String, Value> = ErrorCode::ALL
            .iter()
            .map(|c| {
                (
                    c.as_str().to_string(),
                    self.stats.errors_total[c.index()].into(),
                )
            })
            .collect();
        let rejected: serde_json::Map<String, Value> = Rejected::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), self.ha.rejected[r.index()].into()))
            .collect();
        let targets: serde_json::Map<String, Value> = self
            .backends
            .iter()
            .filter(|b| !b.retired)
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
        let peer = self.ha.peer.map(|(at, p)| {
            json!({
                "role": p.role,
                "node": p.node,
                "epoch": p.epoch,
                "state": p.state,
                "last_heartbeat_age_s": at.elapsed().as_secs_f64(),
                "alive": self.ha.peer_alive,
            })
        });
        let mut doc = json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.ha.node,
            "role": self.ha.role,
            "epoch": self.ha.epoch,
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "frontend_ports": self.ha.frontend_ports,
            "peer": peer.unwrap_or(json!({"alive": false})),
            "redundancy": if self.ha.peer_alive { "ok" } else { "degraded" },
            "failovers_total": self.ha.failovers,
            "primary_bind_failures_total": self.ha.bind_failures,
            "step_downs_total": self.ha.step_downs,
            "heartbeats_rejected_total": rejected,
            "clients_connected": self.ha.clients_connected,
            "throughput_rps": self.rates().0,
            "error_rate": self.rates().1,
            "requests_total": self.stats.requests_total,
            "replies_total": self.stats.replies_total,
            "errors_total": errors,
            "late_replies_total": self.stats.late_replies_total,
            "malformed_replies_total": self.stats.malformed_replies_total,
            "dropped_replies_total": self.stats.dropped_replies_total,
            "rate_limited_clients_tracked": self.limiter.clients(),
            "config_generation": self.generation,
            "targets": targets,
        });
        if let Value::Object(doc) = &mut doc {
            doc.extend(self.streams.clone());
        }
        doc
    }
}

/// Where a reply goes: the frontend, the client's routing id, and the
/// envelope to put back before the reply.
type Client = (Port, zmq::Message, Return);

/// What a client put before its request and gets back before the reply.
pub(super) enum Return {
    Bare,
    Delimiter,
    RequestId(zmq::Message),
}

/// The window of `throughput_rps` and `error_rate`.
const RATE_WINDOW: Duration = Duration::from_secs(10);

fn limiter(config: &Config, now: Instant) -> Limiter {
    Limiter::new(
        config.rate_limit_per_client,
        config.rate_limit_global,
        config.rate_limit_clients,
        now,
    )
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
