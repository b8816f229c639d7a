//! The request path, as pure code: what happens to a request, a reply, a
//! deadline, a send that would block, a frontend that drains.
//!
//! [`State::step`] takes an [`Event`] at `now` and pushes the [`Action`]s the
//! poll loop must carry out (send a reply to a client, send a request to a
//! target); it never reads a clock or touches a socket. Frames travel as
//! opaque `zmq::Message`s, moved and never copied: an action's [`Body`] can
//! name the event's own frames by index ([`Body::Input`]), which the loop
//! moves onto the wire right after the step.
//!
//! It owns the targets ([`Target`]: each one's DEALER, a type parameter it
//! cannot use, and its breaker, deadlines and waiting queue), the in-flight
//! table, the rate limiter and the counters, and builds the status document
//! from them ([`status`]).
//!
//! Invariants: every request event gets exactly one reply action, now or
//! later (the backend's reply, an answer, or an error document), unless the
//! loop reports the reply dropped; a request is in the in-flight table from
//! the moment it is forwarded or parked until its reply, its deadline or
//! the end of its frontend's drain, and counted in its target's and its
//! frontend's `in_flight` exactly that long.

mod status;
#[cfg(test)]
mod tests;

pub(super) use status::{HaView, PeerBeat};

use super::breaker::{Admission, Breaker, State as BreakerState, Transition};
use super::inflight::{Key, Table};
use super::limit::{Limit, Limiter};
use super::stats::Stats;
use super::target::Target;
use crate::config::{self, Config};
use crate::ha::machine::Port;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use zbridge_protocol::time::later;
use zbridge_protocol::{
    error_reply, parse_request, Action as Ask, Envelope, ErrorCode, Rejection, Request,
};

/// What happened, as the loop tells the request path.
pub(super) enum Event<'a> {
    /// A message read from frontend `port`: the client's routing id, then
    /// what it sent. Actions may name these frames ([`Body::Input`]).
    Request(Port, &'a mut Vec<zmq::Message>),
    /// A message read from target `usize`'s DEALER.
    Reply(usize, &'a mut Vec<zmq::Message>),
    /// The target's DEALER can take a message: its oldest waiting request is
    /// sent (at most one action; the loop steps again until none is left or
    /// a send is [`Event::Blocked`]).
    Writable(usize),
    /// A [`Action::Forward`] could not be sent without blocking (no backend
    /// connected, or its queue is full); `frames` are its body, untouched.
    Blocked {
        target: usize,
        key: Key,
        frames: Vec<zmq::Message>,
    },
    /// A [`Action::Forward`] failed otherwise: its deadline will answer it.
    Failed {
        target: usize,
        key: Key,
        error: zmq::Error,
    },
    /// A [`Action::Reply`] could not be delivered (the client is gone).
    Dropped(zmq::Error),
    /// Time passed: answer the requests whose deadline is past.
    Tick,
    /// Frontend `port` drains: new requests on it are still relayed until
    /// `relay_until`, and get `draining` after it.
    Draining { port: Port, relay_until: Instant },
    /// Frontend `port` closes at the end of its drain: what is still in
    /// flight on it is answered with `draining`.
    Closed(Port),
}

/// What the loop must do. Feedback events ([`Event::Blocked`],
/// [`Event::Failed`], [`Event::Dropped`]) push no action.
#[derive(Debug)]
pub(super) enum Action {
    /// Send `[client id, envelope..., body...]` on the client's frontend.
    Reply { to: Client, body: Body },
    /// Send `[key, "", body...]` to `target`'s backend.
    Forward { target: usize, key: Key, body: Body },
}

/// The frames an action sends after its envelope.
#[derive(Debug)]
pub(super) enum Body {
    /// The event's frames from this index on.
    Input(usize),
    /// One frame the bridge wrote: an error document or an answer.
    One(zmq::Message),
    /// Frames held while the request waited for a backend.
    Held(Vec<zmq::Message>),
}

impl Body {
    /// The frames to send; `input` is the event's message.
    pub fn frames(self, input: &mut Vec<zmq::Message>) -> Frames<'_> {
        match self {
            Body::Input(from) => Frames::Input(input.drain(from.min(input.len())..)),
            Body::One(frame) => Frames::One(Some(frame)),
            Body::Held(frames) => Frames::Held(frames.into_iter()),
        }
    }
}

/// The frames of a [`Body`], moved out one by one.
pub(super) enum Frames<'a> {
    Input(std::vec::Drain<'a, zmq::Message>),
    One(Option<zmq::Message>),
    Held(std::vec::IntoIter<zmq::Message>),
}

impl Iterator for Frames<'_> {
    type Item = zmq::Message;

    fn next(&mut self) -> Option<zmq::Message> {
        match self {
            Frames::Input(frames) => frames.next(),
            Frames::One(frame) => frame.take(),
            Frames::Held(frames) => frames.next(),
        }
    }
}

/// What a client put before its request and gets back before the reply.
#[derive(Debug)]
pub(super) enum Return {
    Bare,
    Delimiter,
    RequestId(zmq::Message),
}

impl Return {
    /// The frames that go back between the client's routing id and the
    /// reply's body.
    pub fn frames(self) -> impl Iterator<Item = zmq::Message> {
        let (id, delimiter) = match self {
            Return::Bare => (None, false),
            Return::Delimiter => (None, true),
            Return::RequestId(id) => (Some(id), true),
        };
        id.into_iter().chain(delimiter.then(zmq::Message::new))
    }
}

/// Where a reply goes.
#[derive(Debug)]
pub(super) struct Client {
    /// The frontend the request came in on, and its reply goes out on.
    pub port: Port,
    /// The client's routing id.
    pub id: zmq::Message,
    /// The envelope to put back before the reply.
    pub back: Return,
}

/// A request sent to a backend (or waiting for one) and not yet answered.
struct Pending {
    client: Client,
    target: usize,
    sent: Instant,
    /// Not sent yet: no backend was connected.
    waiting: bool,
}

/// A frontend port, as the request path sees it.
#[derive(Debug, Default, Clone, Copy)]
struct Front {
    /// Requests in flight that came in on it.
    in_flight: usize,
    /// Set while it drains: from then on new requests get `draining`.
    relay_until: Option<Instant>,
    /// Replies sent on it (the backend's, answers and error documents):
    /// a draining port closes right behind one ([`super::drain`]).
    replies: u64,
}

/// What to do with a request, once read.
enum Next {
    Reject(ErrorCode, String),
    Answer(Ask),
    /// Forward body frames from `payload` (an index into the event's
    /// frames) on to target `target`.
    Forward {
        target: usize,
        payload: usize,
    },
}

pub(super) struct State<D> {
    pub config: Config,
    started: Instant,
    pub targets: Vec<Target<D>>,
    by_name: HashMap<String, usize>,
    table: Table<Pending>,
    stats: Stats,
    fronts: [Front; 2],
    pub ha: HaView,
    /// The stream thread's part of the status document.
    pub streams: serde_json::Map<String, Value>,
    limiter: Limiter,
    /// Successful reloads.
    pub generation: u64,
    /// (when, requests_total, errors) samples of the last 10 s, for rates.
    window: VecDeque<(Instant, u64, u64)>,
}

impl<D> State<D> {
    /// The request path of `config`, whose targets' DEALERs are `dealers`,
    /// in the same order.
    pub fn new(config: Config, dealers: Vec<D>, now: Instant) -> State<D> {
        debug_assert_eq!(config.targets.len(), dealers.len());
        let mut state = State {
            limiter: limiter(&config, now),
            config,
            started: now,
            targets: Vec::new(),
            by_name: HashMap::new(),
            generation: 0,
            window: VecDeque::new(),
            table: Table::default(),
            stats: Stats::default(),
            fronts: [Front::default(); 2],
            ha: HaView::default(),
            streams: serde_json::Map::new(),
        };
        let targets = state.config.targets.clone();
        for (target, dealer) in targets.iter().zip(dealers) {
            state.add_target(target, dealer);
        }
        state
    }

    /// A new target, with its DEALER; its index is the next one.
    pub fn add_target(&mut self, target: &config::Target, dealer: D) {
        self.by_name
            .insert(target.name.to_ascii_lowercase(), self.targets.len());
        let breaker = Breaker::new(
            self.config.breaker_failure_threshold,
            self.config.breaker_open_wait,
        );
        self.targets.push(Target::new(target, breaker, dealer));
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
        let target = &mut self.targets[index];
        target.retired = true;
        let key = target.name.to_ascii_lowercase();
        if self.by_name.get(&key) == Some(&index) {
            self.by_name.remove(&key);
        }
    }

    /// Apply a reloaded config to a kept target (same endpoint).
    pub fn update_target(&mut self, index: usize, target: &config::Target) {
        let kept = &mut self.targets[index];
        // The same target, perhaps spelled another way: shown as now written.
        kept.name.clone_from(&target.name);
        kept.request_timeout = target.request_timeout;
        kept.breaker.set(
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
        self.targets
            .iter_mut()
            .filter_map(|t| t.deadlines.next(table))
            .min()
    }

    /// Requests in flight that came in on `port`.
    pub fn in_flight_on(&self, port: Port) -> usize {
        self.fronts[port.index()].in_flight
    }

    /// Replies sent on `port` so far.
    pub fn replies_on(&self, port: Port) -> u64 {
        self.fronts[port.index()].replies
    }

    /// Push a reply to `to`, counted on its port.
    fn reply(&mut self, to: Client, body: Body, actions: &mut Vec<Action>) {
        self.fronts[to.port.index()].replies += 1;
        actions.push(Action::Reply { to, body });
    }

    /// Decide what `event` calls for; the actions are pushed on `actions`.
    pub fn step(&mut self, now: Instant, event: Event<'_>, actions: &mut Vec<Action>) {
        match event {
            Event::Request(port, frames) => self.on_request(now, port, frames, actions),
            Event::Reply(target, frames) => self.on_reply(now, target, frames, actions),
            Event::Writable(target) => self.send_waiting(target, actions),
            Event::Blocked {
                target,
                key,
                frames,
            } => {
                // Sent first in turn: the queue was empty, or this was its
                // head. Counted as sent when decided; not sent after all.
                let held = &mut self.targets[target];
                held.requests_total -= 1;
                held.queued.unsent(key);
                if let Some(pending) = self.table.get_mut(key) {
                    pending.waiting = true;
                }
                held.waiting.push_front((key, frames));
            }
            Event::Failed { target, key, error } => {
                let failed = &mut self.targets[target];
                failed.requests_total -= 1;
                failed.queued.unsent(key);
                warn!(target_name = %failed.name, error = %error, "cannot send to the backend");
                // Left in the table as waiting: its deadline answers it.
                if let Some(pending) = self.table.get_mut(key) {
                    pending.waiting = true;
                }
            }
            Event::Dropped(error) => {
                self.stats.dropped_replies_total += 1;
                debug!(error = %error, "reply dropped: the client is gone or not reading");
            }
            Event::Tick => self.expire(now, actions),
            Event::Draining { port, relay_until } => {
                self.fronts[port.index()].relay_until = Some(relay_until);
            }
            Event::Closed(port) => self.answer_left(port, actions),
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        port: Port,
        frames: &mut [zmq::Message],
        actions: &mut Vec<Action>,
    ) {
        self.stats.requests_total += 1;
        if frames.is_empty() {
            return;
        }
        let draining = self.fronts[port.index()]
            .relay_until
            .is_some_and(|until| now >= until);
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
        let id = take_frame(&mut frames[0]);
        let back = match envelope {
            Envelope::Bare => Return::Bare,
            Envelope::Delimiter => Return::Delimiter,
            Envelope::RequestId => Return::RequestId(
                frames
                    .get_mut(1)
                    .map(take_frame)
                    .unwrap_or_else(zmq::Message::new),
            ),
        };
        let to = Client { port, id, back };
        match next {
            Next::Reject(code, message) => self.reject(to, code, &message, actions),
            Next::Answer(ask) => {
                let body = Body::One(zmq::Message::from(self.answer(now, ask)));
                self.reply(to, body, actions);
            }
            // The parser's index counts from after the routing id.
            Next::Forward { target, payload } => match self.targets[target].dealer {
                Some(_) => self.forward(now, target, to, payload + 1, frames, actions),
                None => {
                    let message = format!(
                        "target {} is being reconfigured: retry",
                        self.targets[target].name
                    );
                    self.reject(to, ErrorCode::BackendUnavailable, &message, actions);
                }
            },
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
            Ok(Request::Action(ask)) => Next::Answer(ask),
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
            .map(|&i| self.targets[i].name.as_str())
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

    /// Admit a request to `target` (in-flight cap, breaker), enter it in the
    /// table with its deadline, and send it, or park it behind those
    /// already waiting for a backend.
    fn forward(
        &mut self,
        now: Instant,
        target: usize,
        to: Client,
        payload: usize,
        frames: &mut [zmq::Message],
        actions: &mut Vec<Action>,
    ) {
        let to_target = &mut self.targets[target];
        if to_target.in_flight >= self.config.max_in_flight {
            let message = format!(
                "target {} already has {} requests in flight (max_in_flight): the backend is not keeping up; retry later",
                to_target.name, to_target.in_flight
            );
            return self.reject(to, ErrorCode::BackendUnavailable, &message, actions);
        }
        match to_target.breaker.admit(now) {
            Admission::Refused { retry_after } => {
                let message = format!(
                    "target {} is failing, so its circuit breaker is open: retry in {:.1} s",
                    to_target.name,
                    retry_after.as_secs_f64()
                );
                return self.reject(to, ErrorCode::CircuitOpen, &message, actions);
            }
            Admission::Allowed(transition) => log_transition(to_target, transition),
        }
        // What a hung backend leaves unread stays in its connection: capped.
        // The half-open breaker's probe may go past the cap (up to twice
        // it), as its reply is what shows the queue gone; a refusal counts
        // as a failure, so that the breaker opens and a probe comes.
        let bytes: usize = frames.iter().skip(payload).map(|f| f.len()).sum();
        let (queued, cap) = (to_target.queued.bytes(), self.config.max_queued_bytes);
        let probe = to_target.breaker.state() == BreakerState::HalfOpen;
        if queued + bytes > if probe { cap.saturating_mul(2) } else { cap } {
            let transition = to_target.breaker.on_failure(now);
            log_transition(to_target, transition);
            let message = format!(
                "target {} holds {queued} bytes of requests its backend has not read (max_queued_bytes {cap}): the backend is hung or not keeping up; retry later",
                to_target.name
            );
            return self.reject(to, ErrorCode::BackendUnavailable, &message, actions);
        }
        let waiting = !to_target.waiting.is_empty();
        self.fronts[to.port.index()].in_flight += 1;
        let key = self.table.insert(Pending {
            client: to,
            target,
            sent: now,
            waiting,
        });
        to_target.in_flight += 1;
        to_target
            .deadlines
            .push(later(now, to_target.request_timeout), key);
        if waiting {
            // Keep the order: queue behind those already waiting.
            let body = frames.iter_mut().skip(payload).map(take_frame);
            to_target.waiting.push_back((key, body.collect()));
        } else {
            // Taken back if the send would block (Event::Blocked).
            to_target.requests_total += 1;
            to_target.queued.sent(key, bytes);
            actions.push(Action::Forward {
                target,
                key,
                body: Body::Input(payload),
            });
        }
    }

    /// Send the oldest request still waiting for `target`'s backend.
    fn send_waiting(&mut self, target: usize, actions: &mut Vec<Action>) {
        let held = &mut self.targets[target];
        while let Some((key, frames)) = held.waiting.pop_front() {
            // Expired while it waited: already answered.
            let Some(pending) = self.table.get_mut(key) else {
                continue;
            };
            pending.waiting = false;
            held.requests_total += 1;
            held.queued.sent(key, frames.iter().map(|f| f.len()).sum());
            actions.push(Action::Forward {
                target,
                key,
                body: Body::Held(frames),
            });
            return;
        }
    }

    /// Take a request out of the table and out of every count.
    fn take(&mut self, key: Key) -> Option<Pending> {
        let pending = self.table.remove(key)?;
        self.targets[pending.target].in_flight -= 1;
        self.fronts[pending.client.port.index()].in_flight -= 1;
        Some(pending)
    }

    fn on_reply(
        &mut self,
        now: Instant,
        target: usize,
        frames: &mut [zmq::Message],
        actions: &mut Vec<Action>,
    ) {
        let key = match frames {
            [key, delimiter, _, ..] if delimiter.is_empty() => Key::from_bytes(key),
            _ => None,
        };
        let Some(key) = key else {
            self.stats.malformed_replies_total += 1;
            debug!(target_name = %self.targets[target].name, frames = frames.len(), "dropped a backend message without a bridge envelope");
            return;
        };
        self.targets[target].queued.answered(key);
        let Some(pending) = self.take(key) else {
            self.stats.late_replies_total += 1;
            debug!(target_name = %self.targets[target].name, "dropped a late reply: its request was already answered");
            return;
        };
        let from = &mut self.targets[pending.target];
        from.replies_total += 1;
        from.latency
            .record(now.saturating_duration_since(pending.sent));
        let transition = from.breaker.on_success();
        log_transition(from, transition);
        self.stats.replies_total += 1;
        self.reply(pending.client, Body::Input(2), actions);
    }

    /// Answer every request whose deadline has passed.
    fn expire(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for target in 0..self.targets.len() {
            while let Some(key) = self.targets[target].deadlines.pop_expired(now, &self.table) {
                let Some(pending) = self.take(key) else {
                    continue;
                };
                let expired = &mut self.targets[target];
                let transition = expired.breaker.on_failure(now);
                log_transition(expired, transition);
                let timeout = expired.request_timeout.as_secs_f64();
                let (code, message) = if pending.waiting {
                    let why = expired
                        .refused
                        .unwrap_or("is the service running? The bridge keeps reconnecting");
                    (
                        ErrorCode::BackendUnavailable,
                        format!(
                            "target {} had no connected backend at {} for {timeout:.3} s (request_timeout): {why}",
                            expired.name, expired.endpoint
                        ),
                    )
                } else {
                    (
                        ErrorCode::Timeout,
                        format!(
                            "target {} did not answer within {timeout:.3} s (request_timeout); the request may still run there",
                            expired.name
                        ),
                    )
                };
                self.reject(pending.client, code, &message, actions);
            }
            // Requests that expired while waiting give back their frames:
            // a target that never connects holds only what is in flight.
            let table = &self.table;
            let queue = &mut self.targets[target].waiting;
            while queue
                .front()
                .is_some_and(|(key, _)| table.get(*key).is_none())
            {
                queue.pop_front();
            }
        }
    }

    /// At the end of a frontend's drain, answer what is still in flight on it.
    fn answer_left(&mut self, port: Port, actions: &mut Vec<Action>) {
        self.fronts[port.index()].relay_until = None;
        let left = self.table.remove_where(|p| p.client.port == port);
        if !left.is_empty() {
            warn!(
                unanswered = left.len(),
                ?port,
                "drain_timeout passed: answering the rest with `draining`"
            );
        }
        for pending in left {
            self.targets[pending.target].in_flight -= 1;
            self.fronts[port.index()].in_flight -= 1;
            let message = format!(
                "the bridge stopped before target {} answered: retry on the other bridge",
                self.targets[pending.target].name
            );
            self.reject(pending.client, ErrorCode::Draining, &message, actions);
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

    fn reject(&mut self, to: Client, code: ErrorCode, message: &str, actions: &mut Vec<Action>) {
        self.stats.errors_total[code.index()] += 1;
        debug!(error = %code, message, "request refused");
        let body = Body::One(zmq::Message::from(error_reply(code, message)));
        self.reply(to, body, actions);
    }
}

/// Move a frame out of the event's message, leaving an empty one.
fn take_frame(frame: &mut zmq::Message) -> zmq::Message {
    std::mem::replace(frame, zmq::Message::new())
}

fn limiter(config: &Config, now: Instant) -> Limiter {
    Limiter::new(
        config.rate_limit_per_client,
        config.rate_limit_global,
        config.rate_limit_clients,
        now,
    )
}

fn log_transition<D>(target: &Target<D>, transition: Option<Transition>) {
    if let Some(t) = transition {
        info!(
            target_name = %target.name,
            endpoint = %target.endpoint,
            from = %t.from,
            to = %t.to,
            reason = t.reason.as_str(),
            "circuit breaker changed state"
        );
    }
}
