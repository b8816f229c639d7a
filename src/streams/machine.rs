//! The stream thread's decisions, as pure code: which prefixes to ask the
//! upstreams for, the numbers in each stamp, the refusal past
//! [`MAX_PREFIXES`], stalls, upstream sessions, which pub ports to bind
//! and when to retry, and the last values a new subscription gets and
//! when.
//!
//! [`Machine::step`] takes an [`Event`] at `now` and pushes the [`Action`]s
//! the loop must carry out; it never reads a clock or touches a socket.
//! Upstreams and pub ports are named by index (the config's order; 0 the
//! primary pub port, 1 the secondary). The stamp of a [`Action::Publish`]
//! is [`Machine::stamp`], written by the step that asked for it.
//!
//! Invariants: the upstream is asked for a prefix once, when it first
//! becomes wanted on some pub port, and told to drop it when no port wants
//! it any more (the last-value prefixes are asked for at [`Event::Start`]
//! and never dropped: libzmq's XSUB counts subscriptions, so a subscriber's
//! own subscribe and unsubscribe to the same prefix leave them in place);
//! a message is published only if some subscriber wants it, and then every
//! wanted prefix it matches counts one more.
//!
//! Replays (last values) are bounded per stream and pub port, whatever the
//! subscribers send: a prefix's last values go out on a port at most once
//! per [`REPLAY_WINDOW`], and all of a port's replays together cost at most
//! one full cache (`last_value_max_topics` messages, `last_value_max_bytes`
//! bytes) at once and one full cache per [`REPLAY_REFILL`] after that (a
//! token bucket in messages and one in bytes). A subscription whose replay
//! cannot go out at once is deferred, never dropped: its prefix waits in
//! the port's queue (oldest first, each prefix once, a prefix under a
//! queued one merged into it), and one replay serves every subscription to
//! it meanwhile (libzmq sends it to every subscriber of the prefix). A
//! queued prefix leaves the queue unreplayed only when no subscriber on
//! the port wants it any more, or the port closes.

use super::cache::Cache;
use super::replays::{Queue, Queued};
use crate::bucket::Bucket;
use crate::config::Rate;
use crate::throttle::LogThrottle;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use zbridge_protocol::stream::encode_stamp;

#[cfg(test)]
mod tests;

/// Prefixes remembered per stream. Numbers continue across an
/// unsubscribe and a new subscribe of the same prefix, so prefixes nobody
/// wants are kept until there are this many; then they are forgotten and
/// the stream draws a new source, which tells subscribers that its numbers
/// start again. More prefixes than this wanted at once are refused.
pub const MAX_PREFIXES: usize = 1024;
/// How often a pub port another process holds is tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(50);
/// How long a pub port may stay taken before that is an error.
const BIND_WARN_AFTER: Duration = Duration::from_secs(5);
/// How often a stalling subscriber (or a refused subscription, or a
/// deferred replay) is logged, per stream.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A prefix's last values go out on a pub port at most once per this
/// interval; subscriptions to it meanwhile share the next replay. Short
/// enough to be "at once" for a subscriber that joins just after another,
/// long enough that a flood of subscription messages gets ten replays a
/// second, not thousands.
pub const REPLAY_WINDOW: Duration = Duration::from_millis(100);
/// A stream's replay budget on a pub port holds one full cache and refills
/// at one full cache per this period: a lone subscription never waits (the
/// cache never holds more than its bounds), and a flood costs each
/// subscriber of the port at most what one subscription to everything a
/// second would.
pub const REPLAY_REFILL: Duration = Duration::from_secs(1);

/// One configured stream, as the machine needs it.
pub struct Settings {
    pub name: String,
    pub endpoint: String,
    /// The stream's first numbering source (random: see the stamp).
    pub source: u64,
    /// Topics under these prefixes keep their last value (none: off).
    pub last_value: Vec<Vec<u8>>,
    pub last_value_max_topics: usize,
    pub last_value_max_bytes: usize,
}

/// What happened, as the loop tells it.
#[derive(Debug)]
pub enum Event<'a> {
    /// The thread starts: last-value prefixes are asked for.
    Start,
    /// The relay wants pub port `usize` held (bound).
    Hold(usize),
    /// The relay wants pub port `usize` closed.
    Release(usize),
    /// A [`Action::Bind`] succeeded; the endpoint as bound.
    Bound(usize, String),
    /// A [`Action::Bind`] failed (another process holds the port?).
    BindFailed(usize, String),
    /// Time passed: a failed bind is retried when due.
    Tick,
    /// Upstream `usize` connected.
    UpstreamUp(usize),
    /// Upstream `usize` lost its connection (libzmq reconnects).
    UpstreamDown(usize),
    /// A subscriber connected to pub port `usize`.
    Joined(usize),
    /// A subscriber's connection to pub port `usize` closed.
    Left(usize),
    /// A subscription message read from pub port `port`.
    Subscription {
        port: usize,
        subscribe: bool,
        prefix: &'a [u8],
    },
    /// A message read from upstream `upstream`.
    Message {
        upstream: usize,
        frames: &'a [zmq::Message],
    },
    /// A publish of upstream `usize`'s message found a subscriber's queue
    /// full (it missed the message).
    Stalled(usize),
}

/// What the loop must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Bind pub port `usize`; the outcome comes back as [`Event::Bound`] or
    /// [`Event::BindFailed`].
    Bind(usize),
    /// Close pub port `usize`.
    Close(usize),
    /// Ask upstream `upstream` for `prefix` (or tell it to stop).
    Upstream {
        upstream: usize,
        subscribe: bool,
        prefix: Vec<u8>,
    },
    /// Send the event's frames with [`Machine::stamp`] on every bound port.
    Publish { upstream: usize },
    /// Send a last value, `frames` then `stamp`, on pub port `port`.
    Replay {
        port: usize,
        upstream: usize,
        frames: Vec<Vec<u8>>,
        stamp: Vec<u8>,
    },
}

/// One stream.
struct Upstream {
    settings: Settings,
    up: bool,
    source: u64,
    /// Connections to the upstream after the first (see the stamp).
    session: u32,
    connected_before: bool,
    prefixes: Vec<Prefix>,
    cache: Option<Cache>,
    received: u64,
    published: u64,
    /// Times a subscriber's queue was full (see the module doc of `streams`).
    stalls: u64,
    stall_log: LogThrottle,
    /// Subscriptions refused over MAX_PREFIXES.
    refused: u64,
    refusal_log: LogThrottle,
    replayed: u64,
    /// Per pub port, while bound (streams with last values): the replay
    /// budget and the prefixes waiting for their replay.
    replays: [Option<Replays>; 2],
    /// Subscriptions whose last values did not go out at once.
    deferred: u64,
    deferral_log: LogThrottle,
}

/// A stream's replays on one pub port.
struct Replays {
    messages: Bucket,
    bytes: Bucket,
    queue: Queue,
    /// When the next queued replay may go out (None: none waits).
    due: Option<Instant>,
    /// Until when the budget holds the oldest replay due: nothing goes out
    /// before (a subscription meanwhile only queues its prefix).
    short_until: Option<Instant>,
}

/// What became of a queued replay.
enum Try {
    Sent,
    /// Its prefix went out less than [`REPLAY_WINDOW`] ago: not before.
    Closed(Instant),
    /// The budget is short: it waits this long.
    Short(Duration),
}

/// A prefix some subscriber asked for, and its sequence number.
struct Prefix {
    bytes: Vec<u8>,
    seq: u64,
    /// Which pub ports have a subscriber to it.
    wanted_on: [bool; 2],
    /// When its last values last went out on each pub port.
    replayed_at: [Option<Instant>; 2],
}

impl Prefix {
    fn wanted(&self) -> bool {
        self.wanted_on.iter().any(|w| *w)
    }
}

/// A pub port: whether the relay wants it, and what it is.
#[derive(Default)]
struct PubPort {
    held: bool,
    /// The endpoint, while bound.
    bound: Option<String>,
    subscribers: u64,
    /// Since when it has failed to bind, and whether that was logged as an
    /// error.
    failing: Option<(Instant, bool)>,
}

pub struct Machine {
    upstreams: Vec<Upstream>,
    ports: [PubPort; 2],
    /// `stream_hwm`, for the stall warning.
    hwm: i32,
    /// When the held ports that failed to bind are tried again.
    retry_at: Option<Instant>,
    stamp: Vec<u8>,
}

impl Machine {
    pub fn new(streams: Vec<Settings>, hwm: i32) -> Machine {
        let upstreams = streams
            .into_iter()
            .map(|settings| Upstream {
                up: false,
                source: settings.source,
                session: 0,
                connected_before: false,
                prefixes: Vec::new(),
                cache: (!settings.last_value.is_empty()).then(|| {
                    Cache::new(
                        settings.last_value_max_topics,
                        settings.last_value_max_bytes,
                    )
                }),
                received: 0,
                published: 0,
                stalls: 0,
                stall_log: LogThrottle::default(),
                refused: 0,
                refusal_log: LogThrottle::default(),
                replayed: 0,
                replays: [None, None],
                deferred: 0,
                deferral_log: LogThrottle::default(),
                settings,
            })
            .collect();
        Machine {
            upstreams,
            ports: Default::default(),
            hwm,
            retry_at: None,
            stamp: Vec::with_capacity(64),
        }
    }

    /// Any stream keeps last values: the pub ports must pass on every
    /// subscription, not only a prefix's first (ZMQ_XPUB_VERBOSE).
    pub fn replays(&self) -> bool {
        self.upstreams.iter().any(|u| u.cache.is_some())
    }

    /// The stamp of the last [`Action::Publish`].
    pub fn stamp(&self) -> &[u8] {
        &self.stamp
    }

    /// When [`Event::Tick`] is due: a bind to retry, or a deferred replay.
    pub fn next_deadline(&self) -> Option<Instant> {
        let replays = self
            .upstreams
            .iter()
            .flat_map(|u| u.replays.iter().flatten())
            .filter_map(|r| r.due);
        replays.chain(self.retry_at).min()
    }

    pub fn step(&mut self, now: Instant, event: Event<'_>, out: &mut Vec<Action>) {
        match event {
            Event::Start => {
                for (i, upstream) in self.upstreams.iter().enumerate() {
                    for prefix in &upstream.settings.last_value {
                        out.push(Action::Upstream {
                            upstream: i,
                            subscribe: true,
                            prefix: prefix.clone(),
                        });
                    }
                }
            }
            Event::Hold(port) => {
                self.ports[port].held = true;
                self.bind_held(out);
            }
            Event::Release(port) => {
                self.ports[port].held = false;
                self.ports[port].failing = None;
                self.close(port, out);
            }
            Event::Bound(port, endpoint) => {
                info!(%endpoint, "stream pub port bound");
                let p = &mut self.ports[port];
                p.bound = Some(endpoint);
                p.failing = None;
                p.subscribers = 0;
                for upstream in &mut self.upstreams {
                    upstream.replays[port] = upstream.cache.is_some().then(|| {
                        let (messages, bytes) = upstream.budget();
                        Replays {
                            messages: Bucket::full(messages, now),
                            bytes: Bucket::full(bytes, now),
                            queue: Queue::default(),
                            due: None,
                            short_until: None,
                        }
                    });
                }
            }
            Event::BindFailed(port, e) => self.bind_failed(now, port, &e),
            Event::Tick => {
                if self.retry_at.is_some_and(|t| now >= t) {
                    self.bind_held(out);
                }
                for (i, upstream) in self.upstreams.iter_mut().enumerate() {
                    for port in 0..2 {
                        let due = upstream.replays[port].as_ref().and_then(|r| r.due);
                        if due.is_some_and(|t| now >= t) {
                            upstream.replay_queued(now, i, port, out);
                        }
                    }
                }
            }
            Event::UpstreamUp(i) => {
                let u = &mut self.upstreams[i];
                if !u.up {
                    u.up = true;
                    if std::mem::replace(&mut u.connected_before, true) {
                        u.session = u.session.wrapping_add(1);
                    }
                    info!(stream = %u.settings.name, endpoint = %u.settings.endpoint, "stream upstream connected");
                }
            }
            Event::UpstreamDown(i) => {
                let u = &mut self.upstreams[i];
                if u.up {
                    u.up = false;
                    warn!(stream = %u.settings.name, endpoint = %u.settings.endpoint, "stream upstream lost; reconnecting (what it publishes meanwhile is lost; subscribers are told by the stamp's session)");
                }
            }
            Event::Joined(port) => {
                if self.ports[port].bound.is_some() {
                    self.ports[port].subscribers += 1;
                }
            }
            Event::Left(port) => {
                let p = &mut self.ports[port];
                p.subscribers = p.subscribers.saturating_sub(1);
            }
            Event::Subscription {
                port,
                subscribe,
                prefix,
            } => {
                if self.ports[port].bound.is_none() {
                    return;
                }
                for (i, upstream) in self.upstreams.iter_mut().enumerate() {
                    upstream.subscription(now, i, port, subscribe, prefix, out);
                }
            }
            Event::Message { upstream, frames } => {
                if self.upstreams[upstream].message(frames, &mut self.stamp) {
                    out.push(Action::Publish { upstream });
                }
            }
            Event::Stalled(i) => self.upstreams[i].stalled(now, self.hwm),
        }
    }

    /// Bind every pub port the relay wants held and that is not bound.
    fn bind_held(&mut self, out: &mut Vec<Action>) {
        self.retry_at = None;
        for (port, p) in self.ports.iter().enumerate() {
            if p.held && p.bound.is_none() {
                out.push(Action::Bind(port));
            }
        }
    }

    fn bind_failed(&mut self, now: Instant, port: usize, e: &str) {
        // The peer gives the port up as it stops: first an info line; an
        // error if it is still held after a while.
        match &mut self.ports[port].failing {
            None => {
                info!(port, error = %e, "stream pub port not free yet (the peer may be letting it go); retrying every 50 ms");
                self.ports[port].failing = Some((now, false));
            }
            Some((since, warned)) if !*warned && now >= *since + BIND_WARN_AFTER => {
                *warned = true;
                error!(port, error = %e, "cannot bind the stream pub port: another process holds it? streams are not served there; still retrying");
            }
            Some(_) => {}
        }
        self.retry_at = Some(now + RETRY_EVERY);
    }

    /// Close a pub port, withdrawing its subscribers' prefixes upstream.
    fn close(&mut self, port: usize, out: &mut Vec<Action>) {
        let Some(endpoint) = self.ports[port].bound.take() else {
            return;
        };
        self.ports[port].subscribers = 0;
        out.push(Action::Close(port));
        for (i, upstream) in self.upstreams.iter_mut().enumerate() {
            // What waited for a replay there is dropped with the port.
            upstream.replays[port] = None;
            for prefix in &mut upstream.prefixes {
                prefix.replayed_at[port] = None;
                if std::mem::take(&mut prefix.wanted_on[port]) && !prefix.wanted() {
                    out.push(Action::Upstream {
                        upstream: i,
                        subscribe: false,
                        prefix: prefix.bytes.clone(),
                    });
                }
            }
        }
        info!(%endpoint, "stream pub port released");
    }

    /// `streams`, `pub_endpoints` and `stream_subscribers` for the status
    /// document.
    pub fn status(&self) -> Map<String, Value> {
        let mut streams = Map::new();
        for u in &self.upstreams {
            let mut doc = json!({
                "endpoint": u.settings.endpoint,
                "up": u.up,
                "source": format!("{:016x}", u.source),
                "received_total": u.received,
                "published_total": u.published,
                "subscriber_stalls_total": u.stalls,
                "subscriptions_refused_total": u.refused,
                "subscriptions": u.prefixes.iter().filter(|p| p.wanted()).count(),
            });
            if let Some(cache) = &u.cache {
                let c = cache.counts();
                doc["last_values"] = json!({
                    "topics": c.topics,
                    "bytes": c.bytes,
                    "max_topics": u.settings.last_value_max_topics,
                    "max_bytes": u.settings.last_value_max_bytes,
                    "evicted_total": c.evicted,
                    "too_large_total": c.too_large,
                    "replayed_total": u.replayed,
                    "replays_deferred_total": u.deferred,
                    "replays_pending": u.pending(),
                });
            }
            streams.insert(u.settings.name.clone(), doc);
        }
        let mut doc = Map::new();
        doc.insert("streams".into(), streams.into());
        let bound: Vec<Value> = self
            .ports
            .iter()
            .filter_map(|p| p.bound.clone().map(Value::from))
            .collect();
        doc.insert("pub_endpoints".into(), bound.into());
        let subscribers: u64 = self.ports.iter().map(|p| p.subscribers).sum();
        doc.insert("stream_subscribers".into(), subscribers.into());
        doc
    }
}

impl Upstream {
    fn stalled(&mut self, now: Instant, hwm: i32) {
        self.stalls += 1;
        if self.stall_log.due(now, LOG_EVERY) {
            warn!(
                stream = %self.settings.name,
                stream_hwm = hwm,
                subscriber_stalls_total = self.stalls,
                "a subscriber is not keeping up: its queue is full and it loses messages until it catches up (it sees how many in the sequence numbers); raise stream_hwm or speed it up"
            );
        }
    }

    /// Keep the message's last value, number it and write its stamp into
    /// `stamp`; `true` to publish it (some subscriber wants it).
    fn message(&mut self, frames: &[zmq::Message], stamp: &mut Vec<u8>) -> bool {
        self.received += 1;
        let topic: &[u8] = frames.first().map_or(&[], |f| f);
        if let Some(cache) = &mut self.cache {
            if self
                .settings
                .last_value
                .iter()
                .any(|p| topic.starts_with(p))
            {
                cache.store(frames);
            }
        }
        let mut matched = false;
        for prefix in &mut self.prefixes {
            if prefix.wanted() && topic.starts_with(&prefix.bytes) {
                prefix.seq += 1;
                matched = true;
            }
        }
        if !matched {
            // Sent before an unsubscribe reached the upstream, or kept
            // for its last value only: nobody wants it.
            return false;
        }
        let numbering = (self.source, self.session);
        write_stamp(
            &self.settings.name,
            numbering,
            &self.prefixes,
            topic,
            false,
            stamp,
        );
        self.published += 1;
        true
    }

    /// A subscriber on `port` asked for (or withdrew) `prefix`; the
    /// upstream hears of it when the first asks and when the last leaves.
    /// An accepted subscribe gets the last values under `prefix`.
    fn subscription(
        &mut self,
        now: Instant,
        me: usize,
        port: usize,
        subscribe: bool,
        prefix: &[u8],
        out: &mut Vec<Action>,
    ) {
        let index = self.prefixes.iter().position(|p| p.bytes == prefix);
        if !subscribe {
            if let Some(entry) = index.map(|i| &mut self.prefixes[i]) {
                let was_wanted_here = std::mem::take(&mut entry.wanted_on[port]);
                if was_wanted_here && !entry.wanted() {
                    out.push(Action::Upstream {
                        upstream: me,
                        subscribe: false,
                        prefix: prefix.to_vec(),
                    });
                }
                if let Some(replays) = self.replays[port].as_mut().filter(|_| was_wanted_here) {
                    // Its replay is not sent; what waited merged into it
                    // still is, now if it may.
                    replays.queue.withdraw(prefix, window(&self.prefixes, port));
                    self.replay_queued(now, me, port, out);
                }
            }
            return;
        }
        let index = match index {
            Some(i) => i,
            None => {
                if self.prefixes.len() >= MAX_PREFIXES {
                    self.prefixes.retain(Prefix::wanted);
                    self.source = next_source(self.source);
                    warn!(stream = %self.settings.name, "too many prefixes: forgot those nobody wants; numbering starts again under a new source");
                }
                if self.prefixes.len() >= MAX_PREFIXES {
                    // All wanted: a subscriber asking for thousands of
                    // prefixes would cost every message a long scan.
                    self.refused += 1;
                    if self.refusal_log.due(now, LOG_EVERY) {
                        warn!(stream = %self.settings.name, prefix = %String::from_utf8_lossy(prefix), max = MAX_PREFIXES, subscriptions_refused_total = self.refused, "subscription refused: the stream has as many prefixes subscribed as it takes");
                    }
                    return;
                }
                self.prefixes.push(Prefix {
                    bytes: prefix.to_vec(),
                    seq: 0,
                    wanted_on: [false; 2],
                    replayed_at: [None; 2],
                });
                self.prefixes.len() - 1
            }
        };
        let entry = &mut self.prefixes[index];
        let was_wanted = entry.wanted();
        entry.wanted_on[port] = true;
        if !was_wanted {
            out.push(Action::Upstream {
                upstream: me,
                subscribe: true,
                prefix: prefix.to_vec(),
            });
        }
        self.ask_replay(now, me, port, prefix, out);
    }

    /// The budget of each pub port's replays: messages, and bytes.
    fn budget(&self) -> (Rate, Rate) {
        let per = |bound: usize| Rate {
            per_second: bound as f64 / REPLAY_REFILL.as_secs_f64(),
            burst: bound as f64,
        };
        (
            per(self.settings.last_value_max_topics),
            per(self.settings.last_value_max_bytes),
        )
    }

    /// Prefixes waiting for their replay, on both ports.
    fn pending(&self) -> usize {
        self.replays.iter().flatten().map(|r| r.queue.len()).sum()
    }

    /// An accepted subscription to `prefix` on `port` wants its last
    /// values: they go out now if the prefix's window is open and the
    /// budget allows and no replay is held for the budget; otherwise the
    /// prefix is queued (merged, if it or one it is under waits already),
    /// counted and logged.
    fn ask_replay(
        &mut self,
        now: Instant,
        me: usize,
        port: usize,
        prefix: &[u8],
        out: &mut Vec<Action>,
    ) {
        let opens = window(&self.prefixes, port)(prefix).flatten();
        let Some(replays) = &mut self.replays[port] else {
            return;
        };
        let short = replays.short_until.is_some_and(|t| now < t);
        let tried = match replays.queue.push(prefix, opens) {
            Some(at) if !short => self.try_replay(now, me, port, at, out),
            _ => None,
        };
        let Some(replays) = &mut self.replays[port] else {
            return;
        };
        match tried {
            Some(Try::Sent) => return,
            Some(Try::Closed(open)) => {
                replays.due = Some(replays.due.map_or(open, |d| d.min(open)))
            }
            Some(Try::Short(wait)) => {
                replays.short_until = Some(now + wait);
                replays.due = Some(replays.due.map_or(now + wait, |d| d.min(now + wait)));
            }
            None => {}
        }
        self.deferred += 1;
        if self.deferral_log.due(now, LOG_EVERY) {
            warn!(
                stream = %self.settings.name,
                port,
                replays_deferred_total = self.deferred,
                replays_pending = self.pending(),
                "subscriptions ask for last values faster than they are replayed (a prefix at most every 100 ms, one full cache a second per pub port): theirs go out later, one replay for all that asked meanwhile; a few after a failover are normal, thousands a second are a subscriber flooding subscription messages"
            );
        }
    }

    /// Send the queued replays on `port` that are due, oldest first, while
    /// the budget lasts; set when the next is due.
    fn replay_queued(&mut self, now: Instant, me: usize, port: usize, out: &mut Vec<Action>) {
        let held = |r: &Replays| r.short_until.is_some_and(|t| now < t);
        if self.cache.is_none() || self.replays[port].as_ref().is_none_or(held) {
            return;
        }
        let mut due: Option<Instant> = None;
        let mut short_until = None;
        let mut i = 0;
        loop {
            let Some(replays) = &self.replays[port] else {
                return;
            };
            let Some(queued) = replays.queue.get(i) else {
                break;
            };
            if let Some(open) = queued.opens.filter(|t| now < *t) {
                due = Some(due.map_or(open, |d| d.min(open)));
                i += 1;
                continue;
            }
            match self.try_replay(now, me, port, i, out) {
                Some(Try::Sent) | None => {}
                Some(Try::Closed(open)) => {
                    due = Some(due.map_or(open, |d| d.min(open)));
                    i += 1;
                }
                Some(Try::Short(wait)) => {
                    // The oldest waits for the budget; nothing overtakes it.
                    short_until = Some(now + wait);
                    due = Some(due.map_or(now + wait, |d| d.min(now + wait)));
                    break;
                }
            }
        }
        if let Some(replays) = &mut self.replays[port] {
            replays.due = due;
            replays.short_until = short_until;
        }
    }

    /// Replay the queued prefix at `i` on `port` if its window is open and
    /// the budget allows (sent: it leaves the queue, with what was merged
    /// into it). `None`: it was no longer wanted, and left the queue.
    fn try_replay(
        &mut self,
        now: Instant,
        me: usize,
        port: usize,
        i: usize,
        out: &mut Vec<Action>,
    ) -> Option<Try> {
        let (message_rate, byte_rate) = self.budget();
        let (Some(cache), Some(replays)) = (&self.cache, &mut self.replays[port]) else {
            return None;
        };
        let prefix = &replays.queue.get(i)?.prefix;
        let Some(entry) = self
            .prefixes
            .iter_mut()
            .find(|p| p.bytes == *prefix && p.wanted_on[port])
        else {
            // Its subscribers left (withdrawn then already: a guard).
            let prefix = prefix.clone();
            let window = window(&self.prefixes, port);
            replays.queue.withdraw(&prefix, window);
            return None;
        };
        if let Some(open) = entry.replayed_at[port].map(|t| t + REPLAY_WINDOW) {
            if now < open {
                return Some(Try::Closed(open));
            }
        }
        let (n, bytes) = cache.cost(prefix);
        // Never more than a full bucket: the cache's bounds cap it anyway.
        let n = (n as f64).min(message_rate.burst);
        let bytes = (bytes as f64).min(byte_rate.burst);
        let wait = replays
            .messages
            .wait(n, message_rate, now)
            .max(replays.bytes.wait(bytes, byte_rate, now));
        if !wait.is_zero() {
            return Some(Try::Short(wait));
        }
        replays.messages.tokens -= n;
        replays.bytes.tokens -= bytes;
        entry.replayed_at[port] = Some(now);
        let Queued { prefix, .. } = replays.queue.remove(i)?;
        let before = out.len();
        for frames in cache.matching(&prefix) {
            let mut stamp = Vec::new();
            write_stamp(
                &self.settings.name,
                (self.source, self.session),
                &self.prefixes,
                &frames[0],
                true,
                &mut stamp,
            );
            out.push(Action::Replay {
                port,
                upstream: me,
                frames: frames.to_vec(),
                stamp,
            });
        }
        self.replayed += (out.len() - before) as u64;
        Some(Try::Sent)
    }
}

/// For a prefix: `None` if no subscriber on `port` wants it, else when
/// its replay window there opens (`None`: open).
fn window(prefixes: &[Prefix], port: usize) -> impl Fn(&[u8]) -> Option<Option<Instant>> + '_ {
    move |prefix| {
        let p = prefixes
            .iter()
            .find(|p| p.bytes == prefix && p.wanted_on[port])?;
        Some(p.replayed_at[port].map(|t| t + REPLAY_WINDOW))
    }
}

/// The stamp of a message with `topic` from stream `name` (numbered under
/// `(source, session)`): the number of every wanted prefix it matches.
fn write_stamp(
    name: &str,
    (source, session): (u64, u32),
    prefixes: &[Prefix],
    topic: &[u8],
    last_value: bool,
    stamp: &mut Vec<u8>,
) {
    let seqs = prefixes
        .iter()
        .filter(|p| p.wanted() && topic.starts_with(&p.bytes))
        .map(|p| (p.bytes.as_slice(), p.seq));
    encode_stamp(stamp, source, session, name, seqs, last_value);
}

/// The source a stream draws when its numbering starts again: a step of
/// splitmix64 from the last, so it stays as unpredictable as the first
/// (drawn at random when the thread starts) and never repeats it.
fn next_source(source: u64) -> u64 {
    let mut z = source.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
