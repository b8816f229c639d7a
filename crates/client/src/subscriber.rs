//! A failover-aware subscriber to a bridge pair's streams (DESIGN §3b).
//!
//! It connects a SUB socket to every pub endpoint (the active's primary pub
//! port and the passive's secondary one) with the same topics, so the
//! passive's copy of each message is already here when the active dies.
//! [`crate::merge`] turns the copies into one ordered feed per (stream,
//! prefix). A bridge counts as gone when every connection that brought its
//! messages has dropped: libzmq's socket monitor reports a closed
//! connection at once, and ZMTP heartbeats close a silent one after
//! `heartbeat_timeout`. A takeover needs no notification here: the new
//! active is the bridge whose copies were arriving all along.
//!
//! Blocking, on the caller's thread: [`Subscriber::recv`] polls the sockets
//! until something is ready to deliver or the timeout passes.

use crate::merge::Merge;
pub use crate::merge::{Delivery, StreamMessage};
use crate::{ClientConfig, ClientError};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use zbridge_protocol::stream::parse_stamp;
use zbridge_protocol::time::later;
use zbridge_socket::{next_event, watch};

/// How long a move waits for the new bridge's copy of the last message.
const MOVE_GRACE: Duration = Duration::from_millis(200);

pub struct Subscriber {
    /// `None` only while dropped.
    context: Option<zmq::Context>,
    links: Vec<Link>,
    /// The process that opened the sockets: a forked child has copies of
    /// them but not libzmq's threads, and must never touch them.
    origin: crate::Origin,
    stream: Option<String>,
    /// Own topics, shortest first: a message is numbered under the first
    /// that it matches.
    topics: Vec<Vec<u8>>,
    merge: Merge,
    /// Which links each numbering source was heard on since they connected.
    heard: HashMap<u64, Vec<bool>>,
}

struct Link {
    endpoint: String,
    socket: zmq::Socket,
    events: zmq::Socket,
}

impl Subscriber {
    /// Subscribe to `topics` (prefixes; an empty one is everything) of
    /// `stream` (`None`: every stream) on every pub endpoint of `config`.
    pub fn connect(
        config: &ClientConfig,
        stream: Option<&str>,
        topics: &[Vec<u8>],
    ) -> std::io::Result<Subscriber> {
        let context = zmq::Context::new();
        let mut topics = topics.to_vec();
        if topics.is_empty() {
            topics.push(Vec::new());
        }
        topics.sort_by_key(Vec::len);
        topics.dedup();
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let mut links = Vec::new();
        for endpoint in &config.pub_endpoints {
            let setup = || -> zmq::Result<Link> {
                let socket = context.socket(zmq::SUB)?;
                socket.set_linger(0)?;
                socket.set_ipv6(true)?;
                socket.set_rcvhwm(100_000)?;
                // No backoff: a port taken over on the same host is found
                // within 25 ms.
                socket.set_reconnect_ivl(25)?;
                if let Some(keys) = &config.curve {
                    keys.apply(&socket)?;
                }
                socket.set_heartbeat_ivl(ms(config.heartbeat_timeout / 3))?;
                socket.set_heartbeat_timeout(ms(config.heartbeat_timeout))?;
                let events = watch(
                    &context,
                    &socket,
                    &[zmq::SocketEvent::CONNECTED, zmq::SocketEvent::DISCONNECTED],
                )?;
                for topic in &topics {
                    socket.set_subscribe(topic)?;
                }
                socket.connect(endpoint)?;
                Ok(Link {
                    endpoint: endpoint.clone(),
                    socket,
                    events,
                })
            };
            links.push(setup().map_err(|e| {
                std::io::Error::other(format!("cannot subscribe to {endpoint}: {e}"))
            })?);
        }
        Ok(Subscriber {
            context: Some(context),
            links,
            origin: crate::Origin::here(),
            stream: stream.map(str::to_string),
            topics,
            merge: Merge::default(),
            heard: HashMap::new(),
        })
    }

    /// Whether it can be read in this process: not in the child of a
    /// `fork(2)` made after it was opened.
    pub fn check(&self) -> Result<(), ClientError> {
        self.origin.check()
    }

    /// The next message, gap or move, waiting up to `timeout`; `None` when
    /// nothing came.
    pub fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Delivery>> {
        self.check().map_err(std::io::Error::other)?;
        let deadline = later(Instant::now(), timeout);
        loop {
            let now = Instant::now();
            self.merge.tick(now, MOVE_GRACE);
            if let Some(delivery) = self.merge.next() {
                log(&delivery);
                return Ok(Some(delivery));
            }
            if now >= deadline {
                return Ok(None);
            }
            let wake = self
                .merge
                .next_deadline(MOVE_GRACE)
                .map_or(deadline, |t| t.min(deadline));
            let wait = wake.saturating_duration_since(now).as_millis().max(1) as i64;
            let mut items: Vec<zmq::PollItem> = self
                .links
                .iter()
                .flat_map(|l| {
                    [
                        l.socket.as_poll_item(zmq::POLLIN),
                        l.events.as_poll_item(zmq::POLLIN),
                    ]
                })
                .collect();
            match zmq::poll(&mut items, wait) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(std::io::Error::other(format!("poll failed: {e}"))),
            }
            let ready: Vec<(bool, bool)> = items
                .chunks(2)
                .map(|c| (c[0].is_readable(), c[1].is_readable()))
                .collect();
            drop(items);
            let now = Instant::now();
            // Messages first: what arrived before a disconnect is delivered
            // before the move it causes.
            for (i, (data, _)) in ready.iter().enumerate() {
                if *data {
                    self.read(i, now);
                }
            }
            for (i, (_, events)) in ready.iter().enumerate() {
                if *events {
                    self.link_events(i, now);
                }
            }
        }
    }

    fn read(&mut self, i: usize, now: Instant) {
        for _ in 0..1024 {
            let Ok(mut frames) = self.links[i].socket.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            let Some(stamp_frame) = frames.pop() else {
                continue;
            };
            let Some(stamp) = parse_stamp(&stamp_frame) else {
                warn!(endpoint = %self.links[i].endpoint, "a message without a zbridge stamp: not a bridge's pub port?");
                continue;
            };
            if self.stream.as_deref().is_some_and(|s| s != stamp.stream) {
                continue;
            }
            let topic = frames.first().map_or(&[][..], |f| f.as_slice());
            let Some((prefix, seq)) = self
                .topics
                .iter()
                .filter(|t| topic.starts_with(t))
                .find_map(|t| stamp.seq(t).map(|seq| (t.clone(), seq)))
            else {
                continue;
            };
            let heard = self
                .heard
                .entry(stamp.source)
                .or_insert_with(|| vec![false; self.links.len()]);
            heard[i] = true;
            let message = StreamMessage {
                stream: stamp.stream.to_string(),
                prefix,
                seq,
                source: stamp.source,
                session: stamp.session,
                frames,
                last_value: stamp.last_value,
            };
            self.merge.message(now, MOVE_GRACE, message);
        }
    }

    fn link_events(&mut self, i: usize, now: Instant) {
        while let Some((id, _)) = next_event(&self.links[i].events) {
            if id == zmq::SocketEvent::CONNECTED.to_raw() {
                info!(endpoint = %self.links[i].endpoint, "subscribed");
            } else if id == zmq::SocketEvent::DISCONNECTED.to_raw() {
                info!(endpoint = %self.links[i].endpoint, "pub connection lost; reconnecting");
                let mut gone = Vec::new();
                for (source, heard) in &mut self.heard {
                    if std::mem::take(&mut heard[i]) && heard.iter().all(|h| !h) {
                        gone.push(*source);
                    }
                }
                for source in gone {
                    self.heard.remove(&source);
                    self.merge.source_down(now, MOVE_GRACE, source);
                }
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if self.check().is_err() {
            // A forked child's copies: closing them would wait for libzmq
            // threads that live in the parent only.
            std::mem::forget(std::mem::take(&mut self.links));
            std::mem::forget(self.context.take());
        }
    }
}

fn log(delivery: &Delivery) {
    match delivery {
        Delivery::Gap {
            stream,
            prefix,
            missed,
        } => warn!(
            %stream,
            prefix = %String::from_utf8_lossy(prefix),
            missed = missed.map_or("unknown".to_string(), |n| n.to_string()),
            "stream gap: messages were lost"
        ),
        Delivery::Moved {
            stream,
            prefix,
            from,
            to,
        } => info!(
            %stream,
            prefix = %String::from_utf8_lossy(prefix),
            from = format!("{from:016x}"),
            to = format!("{to:016x}"),
            "stream moved to the other bridge"
        ),
        Delivery::Message(_) => {}
    }
}
