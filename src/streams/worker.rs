//! The stream thread's loop: poll the sockets, turn what is ready into
//! [`Event`]s for the [`Machine`], carry out its [`Action`]s. It decides
//! nothing itself.

use super::machine::{Action, Event, Machine, Settings};
use super::sockets::{
    open_pub, open_upstream, publish, send_subscription, Frames, PubSettings, PubSocket,
    UpstreamSocket,
};
use crate::config::{Config, Port};
use crate::curve::Admission;
use crate::throttle::LogThrottle;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{error, warn};
use zbridge_socket::handshakes::Seen;
use zbridge_socket::wait::{Item, Wait};
use zbridge_socket::{next_event, recv_frames};

/// Messages read from one upstream (or subscriptions from one pub port)
/// before the loop looks at the others.
const BATCH: usize = 256;
/// How often the status document is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// At most one log line this often for connections shed.
const SHED_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Worker {
    context: zmq::Context,
    control: zmq::Socket,
    upstreams: Vec<UpstreamSocket>,
    names: Vec<String>,
    pubs: [Option<PubSocket>; 2],
    endpoints: [String; 2],
    pub_settings: PubSettings,
    machine: Machine,
    /// The machine's actions, and what carrying them out reports back;
    /// kept for their capacity.
    actions: Vec<Action>,
    feedback: Vec<Event<'static>>,
    status: Arc<Mutex<Map<String, Value>>>,
    next_status: Instant,
    /// The loop's wait: what it knows of each socket between rounds.
    wait: Wait,
    /// Where a CURVE pub port's failed handshakes are counted with the
    /// frontends' (`curve_refused_total`).
    admission: Option<Arc<Admission>>,
    /// Connections shut down on the pub ports before their handshake
    /// finished (too many waiting), and when that was last logged.
    shed: u64,
    shed_log: LogThrottle,
    waiting_max: usize,
}

impl Worker {
    pub fn new(
        context: &zmq::Context,
        config: &Config,
        control: zmq::Socket,
        status: Arc<Mutex<Map<String, Value>>>,
        admission: Option<Arc<Admission>>,
    ) -> anyhow::Result<Worker> {
        let mut upstreams = Vec::new();
        let mut settings = Vec::new();
        for stream in &config.streams {
            upstreams.push(open_upstream(context, config, stream)?);
            settings.push(Settings {
                name: stream.name.clone(),
                endpoint: stream.endpoint.clone(),
                source: random_source(),
                last_value: stream.last_value.clone(),
                last_value_max_topics: stream.last_value_max_topics,
                last_value_max_bytes: stream.last_value_max_bytes,
            });
        }
        let names = settings.iter().map(|s| s.name.clone()).collect();
        let machine = Machine::new(settings, config.stream_hwm);
        let mut worker = Worker {
            context: context.clone(),
            control,
            upstreams,
            names,
            pubs: [None, None],
            endpoints: [
                config.pub_endpoint(Port::Primary),
                config.pub_endpoint(Port::Secondary),
            ],
            pub_settings: PubSettings {
                hwm: config.stream_hwm,
                handshake_ms: config.handshake_ms(),
                ipv6: config.bind_host.contains(':'),
                curve: config.curve.clone(),
                verbose: machine.replays(),
            },
            machine,
            actions: Vec::new(),
            feedback: Vec::new(),
            status,
            next_status: Instant::now(),
            wait: Wait::default(),
            admission,
            shed: 0,
            shed_log: LogThrottle::default(),
            waiting_max: crate::limits::handshakes_waiting_max(),
        };
        worker.handle(Instant::now(), Event::Start);
        worker.publish_status(Instant::now());
        Ok(worker)
    }

    pub fn run(mut self) {
        let mut frames = Vec::with_capacity(8);
        loop {
            let now = Instant::now();
            if self.machine.next_deadline().is_some_and(|t| now >= t) {
                self.handle(now, Event::Tick);
            }
            if now >= self.next_status {
                self.publish_status(now);
            }
            let next = self
                .machine
                .next_deadline()
                .map_or(self.next_status, |t| t.min(self.next_status));
            let ready = match self.poll(next) {
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
            // One clock reading for the messages of a round: the machine
            // uses it only to pace its warnings.
            let now = Instant::now();
            for (i, readable) in ready.upstreams.iter().enumerate() {
                if !*readable {
                    continue;
                }
                for _ in 0..BATCH {
                    match recv_frames(&self.upstreams[i].socket, &mut frames) {
                        Ok(true) => {
                            let event = Event::Message {
                                upstream: i,
                                frames: &frames,
                            };
                            self.machine.step(now, event, &mut self.actions);
                            self.carry_out(now, &mut frames);
                        }
                        Ok(false) => break,
                        Err(e) => {
                            warn!(stream = %self.names[i], error = %e, "cannot read from the upstream");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Wait until `deadline` for a control message, a stream message, a
    /// subscription or a monitor event. The upstream SUBs and the pub
    /// sockets are hot (read and sent on every round); the control pipe
    /// and the monitors are asked only when their descriptor fires
    /// ([`zbridge_socket::wait`]).
    fn poll(&mut self, deadline: Instant) -> zmq::Result<Ready> {
        let mut items = vec![Item::socket(&self.control, zmq::POLLIN, false)];
        for upstream in &self.upstreams {
            items.push(Item::socket(&upstream.socket, zmq::POLLIN, true));
            items.push(Item::socket(&upstream.events, zmq::POLLIN, false));
        }
        let mut pub_index = [None; 2];
        for (port, bound) in self.pubs.iter().enumerate() {
            if let Some(p) = bound {
                pub_index[port] = Some(items.len());
                items.push(Item::socket(&p.socket, zmq::POLLIN, true));
                items.push(Item::socket(&p.events, zmq::POLLIN, false));
            }
        }
        let events = self.wait.wait(&items, Some(deadline))?;
        let readable = |i: usize| events[i].contains(zmq::POLLIN);
        let mut ready = Ready {
            control: readable(0),
            ..Ready::default()
        };
        for i in 0..self.upstreams.len() {
            ready.upstreams.push(readable(1 + 2 * i));
            ready.upstream_events.push(readable(2 + 2 * i));
        }
        for (port, index) in pub_index.iter().enumerate() {
            if let Some(j) = index {
                ready.subscriptions[port] = readable(*j);
                ready.pub_events[port] = readable(*j + 1);
            }
        }
        Ok(ready)
    }

    /// Step the machine with an event that carries no frames, and carry
    /// out what it says.
    fn handle(&mut self, now: Instant, event: Event<'_>) {
        self.machine.step(now, event, &mut self.actions);
        self.carry_out(now, &mut Vec::new());
    }

    /// Carry out the machine's actions; `frames` is the message of the
    /// event that asked for them. What that reports (a bind's outcome, a
    /// stall) is stepped in turn.
    fn carry_out(&mut self, now: Instant, frames: &mut Vec<zmq::Message>) {
        while !self.actions.is_empty() {
            let mut actions = std::mem::take(&mut self.actions);
            for action in actions.drain(..) {
                self.carry_out_one(now, action, frames);
            }
            self.actions = actions;
            let mut feedback = std::mem::take(&mut self.feedback);
            for event in feedback.drain(..) {
                self.machine.step(now, event, &mut self.actions);
            }
            self.feedback = feedback;
        }
    }

    fn carry_out_one(&mut self, now: Instant, action: Action, frames: &mut Vec<zmq::Message>) {
        match action {
            Action::Publish { upstream } => {
                // The frames can be moved out for the last port bound; the
                // port before it (during a takeover) gets copies.
                let last = self.pubs.iter().rposition(Option::is_some);
                for (port, bound) in self.pubs.iter_mut().enumerate() {
                    let Some(bound) = bound else { continue };
                    let read = Frames::Read(frames, Some(port) == last);
                    let sent = publish(&mut bound.socket, read, self.machine.stamp());
                    let name = &self.names[upstream];
                    reported(sent, upstream, name, "cannot publish", &mut self.feedback);
                }
            }
            Action::Replay {
                port,
                upstream,
                frames,
                stamp,
            } => {
                let Some(bound) = &mut self.pubs[port] else {
                    return;
                };
                let sent = publish(&mut bound.socket, Frames::Kept(&frames), &stamp);
                let name = &self.names[upstream];
                reported(
                    sent,
                    upstream,
                    name,
                    "cannot send a last value",
                    &mut self.feedback,
                );
            }
            Action::Upstream {
                upstream,
                subscribe,
                prefix,
            } => send_subscription(&self.upstreams[upstream].socket, subscribe, &prefix),
            Action::Bind(port) => {
                let endpoint = &self.endpoints[port];
                match open_pub(&self.context, endpoint, &self.pub_settings) {
                    Ok((bound, endpoint)) => {
                        self.pubs[port] = Some(bound);
                        self.feedback.push(Event::Bound(port, endpoint));
                        self.next_status = now;
                    }
                    Err(e) => self
                        .feedback
                        .push(Event::BindFailed(port, format!("{endpoint}: {e}"))),
                }
            }
            Action::Close(port) => {
                self.pubs[port] = None;
                self.next_status = now;
            }
        }
    }

    /// Carry out the relay's commands; `false` to stop.
    fn on_control(&mut self, now: Instant) -> bool {
        while let Ok(command) = self.control.recv_bytes(zmq::DONTWAIT) {
            let port = command.get(1).map_or(0, |p| usize::from(*p).min(1));
            match command.first() {
                Some(b'h') => self.handle(now, Event::Hold(port)),
                Some(b'r') => self.handle(now, Event::Release(port)),
                _ => return false,
            }
        }
        true
    }

    fn on_upstream_events(&mut self, i: usize) {
        let now = Instant::now();
        while let Some((event, _)) = next_event(&self.upstreams[i].events) {
            if event == zmq::SocketEvent::CONNECTED.to_raw() {
                self.handle(now, Event::UpstreamUp(i));
            } else if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                self.handle(now, Event::UpstreamDown(i));
            }
        }
        self.next_status = now;
    }

    /// Read a pub port's monitor: subscribers joining and leaving, failed
    /// handshakes (counted with the frontends'), and connections shed
    /// when too many wait for their handshake.
    fn on_pub_events(&mut self, port: usize) {
        let now = Instant::now();
        while let Some(seen) = self.next_pub_event(port) {
            match seen {
                Seen::Accepted(_) => self.handle(now, Event::Joined(port)),
                Seen::Closed(_, failed) => {
                    if let (Some((gone, failure)), Some(admission)) = (failed, &self.admission) {
                        admission.handshake_failed(gone.peer, false, failure);
                    }
                    self.handle(now, Event::Left(port));
                }
                Seen::Nothing => {}
            }
        }
        let waiting_max = self.waiting_max;
        let shed = (self.pubs[port].as_mut()).map_or(0, |b| b.handshakes.shed(waiting_max));
        if shed > 0 {
            self.shed += shed;
            if self.shed_log.due(now, SHED_LOG_EVERY) {
                warn!(
                    endpoint = %self.endpoints[port],
                    waiting_max,
                    connections_shed_total = self.shed,
                    "closed subscriber connections on a pub port that had not finished their handshake: too many were open at once (a peer connecting and saying nothing?); descriptors are kept for working subscribers"
                );
            }
        }
    }

    fn next_pub_event(&mut self, port: usize) -> Option<Seen> {
        let bound = self.pubs[port].as_mut()?;
        let (event, value) = next_event(&bound.events)?;
        Some(bound.handshakes.see(event, value, |_| false))
    }

    /// Hand what subscribers on a port asked for (or withdrew) to the
    /// machine: at most a batch a round, so that a subscriber flooding
    /// subscription messages cannot hold the upstreams' messages back.
    fn on_subscriptions(&mut self, port: usize) {
        for _ in 0..BATCH {
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
            let event = Event::Subscription {
                port,
                subscribe,
                prefix,
            };
            self.handle(Instant::now(), event);
        }
    }

    fn publish_status(&mut self, now: Instant) {
        let mut doc = self.machine.status();
        // Counted with the frontends' by the relay's snapshot.
        doc.insert("pub_connections_shed_total".into(), self.shed.into());
        if let Ok(mut shared) = self.status.lock() {
            *shared = doc;
        }
        self.next_status = now + STATUS_EVERY;
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

/// A stream's first numbering source: random, so that numbers from two
/// bridges, or from one bridge before and after a restart, are never
/// mistaken for one sequence.
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

/// What a publish on a pub port says: a stall goes back to the machine as
/// an event, an error is logged with `what` went wrong.
fn reported(
    sent: zmq::Result<bool>,
    upstream: usize,
    name: &str,
    what: &str,
    feedback: &mut Vec<Event<'static>>,
) {
    match sent {
        Ok(true) => {}
        Ok(false) => feedback.push(Event::Stalled(upstream)),
        Err(e) => warn!(stream = %name, error = %e, "{what}"),
    }
}
