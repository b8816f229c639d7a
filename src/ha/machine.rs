//! The role machine of DESIGN §2, as pure code: `step(now, event)` returns
//! the effects the I/O layer must carry out. It never reads a clock, binds a
//! port or sends a heartbeat; it decides.
//!
//! Invariants it keeps: it asks for the primary port only when no running
//! active peer has been heard for `heartbeat_timeout`, or the peer said it
//! is leaving, or the kernel has shown that the active's process is gone
//! (its heartbeat connection closed and, on two hosts, a connect to its
//! frontend was refused); on one host the port itself then decides who is
//! active. Two actives that hear each other resolve by epoch (a tie: the
//! primary node stays). A takeover raises the epoch above any epoch heard.

pub use crate::config::Port;
use std::time::{Duration, Instant};
use zbridge_protocol::heartbeat::{Node, Role, State};
use zbridge_protocol::time::later;

/// The first look again after a failed proof of death, and the widest gap
/// between looks (the gap doubles from one to the other).
const FIRST_RECHECK: Duration = Duration::from_millis(10);
const LAST_RECHECK: Duration = Duration::from_millis(250);

/// What the machine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Start-up of the primary node: waiting to hear its peer.
    Listening,
    Active,
    Passive,
    Stopping,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Listening => "listening",
            Phase::Active => "active",
            Phase::Passive => "passive",
            Phase::Stopping => "stopping",
        }
    }
}

/// A valid heartbeat from the peer, as the machine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    pub node: Node,
    pub epoch: u64,
    pub state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Time passed; check the deadlines.
    Tick,
    Heard(Peer),
    /// The result of a [`Effect::Bind`]: `true` bound, `false` in use.
    Bound(Port, bool),
    /// A port asked for with [`Effect::Drain`] is closed.
    Released(Port),
    /// The connection to the peer's heartbeat port closed: the peer's
    /// process may be gone (or a proxy, or the network, closed it).
    PeerDisconnected,
    /// The answer to [`Effect::ProbePeer`]: a connect to the peer's
    /// primary port was refused, so no process of the peer listens there.
    PeerDown,
    /// SIGTERM or SIGINT.
    Stop,
}

/// Why the role changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Start-up: no active peer heard within heartbeat_timeout.
    NoActivePeer,
    /// Start-up: the peer is active.
    PeerActive,
    /// The primary port is held by another process.
    PortHeld,
    /// No heartbeat from the active peer for heartbeat_timeout.
    PeerSilent,
    /// The active peer's process is gone, on the kernel's word.
    PeerDied,
    /// The active peer said it is stopping, or handing over.
    PeerLeaving,
    /// Two actives: the peer has the higher epoch (or the tie).
    HigherEpoch,
    /// `preempt`: giving the role back to the primary node.
    Preempt,
    Stop,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoActivePeer => "no_active_peer",
            Reason::PeerActive => "peer_active",
            Reason::PortHeld => "primary_port_held",
            Reason::PeerSilent => "peer_silent",
            Reason::PeerDied => "peer_died",
            Reason::PeerLeaving => "peer_leaving",
            Reason::HigherEpoch => "peer_has_higher_epoch",
            Reason::Preempt => "preempt",
            Reason::Stop => "stop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Bind this frontend port; answer with [`Event::Bound`].
    Bind(Port),
    /// Refuse new requests on this port with `draining`, answer those in
    /// flight (bounded by drain_timeout), close it; answer with
    /// [`Event::Released`].
    Drain(Port),
    /// Publish a heartbeat now (it carries [`Machine::state`]).
    PublishNow,
    /// Publish a failover notification.
    Notify,
    /// Find out whether the peer's process is gone (two hosts): connect
    /// to its primary port; answer [`Event::PeerDown`] if refused.
    ProbePeer,
    /// Everything is released: end the process.
    Exit,
    /// The role changed.
    Changed {
        from: Phase,
        to: Phase,
        reason: Reason,
        epoch: u64,
    },
    /// The passive wanted the primary port and could not bind it.
    BindFailed { port: Port, silent_for: Duration },
}

/// Timings and settings the machine needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub node: Node,
    pub preempt: bool,
    /// The peer runs on this host: after a takeover the secondary port is
    /// released so that the peer can rejoin there.
    pub same_host: bool,
    pub heartbeat_timeout: Duration,
    /// Retry interval for a port that the peer is about to release.
    pub fast_retry: Duration,
    /// How long a peer that said it is leaving may take to release.
    pub leave_window: Duration,
}

pub struct Machine {
    settings: Settings,
    phase: Phase,
    epoch: u64,
    started: Instant,
    /// Last evidence that an active peer lives (or when we became passive).
    active_seen: Instant,
    peer: Option<(Instant, Peer)>,
    /// The peer announced it is leaving: take over fast until then.
    peer_leaving_until: Option<Instant>,
    bind_pending: [bool; 2],
    holding: [bool; 2],
    /// Asked to drain and not yet released.
    draining: [bool; 2],
    /// A bind of the primary port on the kernel's word that the active's
    /// process is gone (its heartbeat connection closed): on one host the
    /// bind itself is the proof, so its failure is no alarm.
    proving: bool,
    /// The active peer's process is gone (one host: its port was free;
    /// two hosts: its frontend refused a connect).
    peer_died: bool,
    /// A failed bind of the secondary port was reported (once per wait).
    secondary_wait_told: bool,
    /// The peer's death was proven (a takeover on the kernel's word): it is
    /// not alive, whatever its last heartbeat's age, until it is heard again.
    peer_gone: bool,
    /// After the active's heartbeat connection closed and the proof failed:
    /// when to look again, and the gap after that. A killed process's
    /// sockets close one after the other, so the first look can come while
    /// its frontend still listens; looks go on, further and further apart,
    /// until the active is heard again or the timeout takes over.
    recheck: Option<(Instant, Duration)>,
    /// When to try the primary (or secondary) port again.
    retry_at: [Option<Instant>; 2],
    /// Draining the primary port to hand it to the primary node.
    handing_over: bool,
    failovers: u64,
    bind_failures: u64,
    step_downs: u64,
}

impl Machine {
    /// A machine starting in `phase` (the primary node listens first; the
    /// secondary starts passive), and its first effects.
    pub fn new(settings: Settings, now: Instant) -> (Machine, Vec<Effect>) {
        let listening = settings.node == Node::Primary;
        let mut machine = Machine {
            settings,
            phase: if listening {
                Phase::Listening
            } else {
                Phase::Passive
            },
            epoch: 0,
            started: now,
            active_seen: now,
            peer: None,
            peer_leaving_until: None,
            bind_pending: [false; 2],
            holding: [false; 2],
            draining: [false; 2],
            proving: false,
            peer_died: false,
            secondary_wait_told: false,
            peer_gone: false,
            recheck: None,
            retry_at: [None; 2],
            handing_over: false,
            failovers: 0,
            bind_failures: 0,
            step_downs: 0,
        };
        let mut effects = Vec::new();
        if !listening {
            machine.bind(Port::Secondary, &mut effects);
        }
        (machine, effects)
    }

    /// Apply new timings and `preempt` from a reloaded config.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = Settings {
            node: self.settings.node,
            ..settings
        };
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The role to publish: active while holding the primary port as the
    /// active, including while stopping (its `leaving` heartbeat must say
    /// that the active is going).
    pub fn role(&self) -> Role {
        match self.phase {
            Phase::Active => Role::Active,
            Phase::Stopping if self.holding[Port::Primary.index()] => Role::Active,
            _ => Role::Passive,
        }
    }

    pub fn state(&self) -> State {
        if self.phase == Phase::Stopping {
            State::Leaving
        } else if self.handing_over {
            State::Handover
        } else {
            State::Running
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn node(&self) -> Node {
        self.settings.node
    }

    pub fn peer(&self) -> Option<(Instant, Peer)> {
        self.peer
    }

    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    pub fn bind_failures(&self) -> u64 {
        self.bind_failures
    }

    pub fn step_downs(&self) -> u64 {
        self.step_downs
    }

    /// Whether a heartbeat from the peer arrived within the timeout and
    /// its death has not been proven since.
    pub fn peer_alive(&self, now: Instant) -> bool {
        !self.peer_gone
            && self.peer.is_some_and(|(at, _)| {
                now.saturating_duration_since(at) < self.settings.heartbeat_timeout
            })
    }

    /// The next instant at which a [`Event::Tick`] can change something.
    pub fn next_deadline(&self) -> Option<Instant> {
        let failover = match self.phase {
            Phase::Listening => Some(later(self.started, self.settings.heartbeat_timeout)),
            Phase::Passive if !self.holding[Port::Primary.index()] => {
                Some(match self.peer_leaving_until {
                    Some(_) => self.retry_at[0].unwrap_or(self.active_seen),
                    None => later(self.active_seen, self.settings.heartbeat_timeout)
                        .max(self.retry_at[0].unwrap_or(self.active_seen)),
                })
            }
            _ => None,
        };
        let (secondary, recheck) = match self.phase {
            Phase::Passive => (
                self.retry_at[Port::Secondary.index()],
                self.recheck.map(|(at, _)| at),
            ),
            _ => (None, None),
        };
        failover.into_iter().chain(secondary).chain(recheck).min()
    }

    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Tick => self.tick(now, &mut effects),
            Event::Heard(peer) => self.heard(now, peer, &mut effects),
            Event::Bound(port, ok) => self.bound(now, port, ok, &mut effects),
            Event::Released(port) => {
                self.holding[port.index()] = false;
                self.draining[port.index()] = false;
                if port == Port::Primary {
                    self.handing_over = false;
                }
                // A passive serves on the secondary port: one that was
                // lingering after a takeover when the role went back is
                // needed again.
                if port == Port::Secondary && self.phase == Phase::Passive {
                    self.bind(Port::Secondary, &mut effects);
                }
                self.exit_if_done(&mut effects);
            }
            Event::Stop => self.stop(&mut effects),
            Event::PeerDisconnected => self.disconnected(now, &mut effects),
            Event::PeerDown => {
                if self.waiting_for_active(now) {
                    self.peer_died = true;
                    self.bind(Port::Primary, &mut effects);
                }
            }
        }
        effects
    }

    /// Passive, without the primary port, and the last word from the peer
    /// was a running active heard within the timeout: the state in which
    /// proof of its death means a takeover now rather than at the timeout.
    fn waiting_for_active(&self, now: Instant) -> bool {
        self.phase == Phase::Passive
            && !self.holding[Port::Primary.index()]
            && self.peer_alive(now)
            && self
                .peer
                .is_some_and(|(_, p)| p.role == Role::Active && p.state == State::Running)
    }

    /// The peer's heartbeat connection closed. On one host, try the
    /// primary port at once: free means the active's process is gone (the
    /// kernel closed its sockets), held means it is not (a closed
    /// connection alone is no proof). On two hosts, ask for a probe of the
    /// peer's frontend.
    fn disconnected(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if !self.waiting_for_active(now) {
            return;
        }
        self.prove(effects);
        self.recheck = Some((later(now, FIRST_RECHECK), FIRST_RECHECK));
    }

    fn prove(&mut self, effects: &mut Vec<Effect>) {
        if self.settings.same_host {
            self.proving = true;
            self.bind(Port::Primary, effects);
        } else {
            effects.push(Effect::ProbePeer);
        }
    }

    fn tick(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let due = |at: Option<Instant>| at.is_none_or(|t| now >= t);
        if let Some((at, gap)) = self.recheck {
            if now >= at {
                self.recheck = None;
                if self.waiting_for_active(now) {
                    self.prove(effects);
                    let gap = (gap * 2).min(LAST_RECHECK);
                    self.recheck = Some((later(now, gap), gap));
                }
            }
        }
        match self.phase {
            Phase::Listening if now >= later(self.started, self.settings.heartbeat_timeout) => {
                self.bind(Port::Primary, effects);
            }
            Phase::Passive if !self.holding[0] && due(self.retry_at[0]) => {
                if self.peer_leaving_until.is_some_and(|t| now >= t) {
                    self.peer_leaving_until = None;
                }
                let silent = now >= later(self.active_seen, self.settings.heartbeat_timeout);
                if silent || self.peer_leaving_until.is_some() {
                    self.bind(Port::Primary, effects);
                }
            }
            _ => {}
        }
        let secondary = Port::Secondary.index();
        if self.phase == Phase::Passive
            && !self.holding[secondary]
            && self.retry_at[secondary].is_some_and(|t| now >= t)
        {
            self.bind(Port::Secondary, effects);
        }
    }

    fn heard(&mut self, now: Instant, peer: Peer, effects: &mut Vec<Effect>) {
        self.peer = Some((now, peer));
        self.peer_gone = false;
        let running_active = peer.role == Role::Active && peer.state == State::Running;
        let leaving = peer.state != State::Running;
        if running_active {
            self.active_seen = now;
            self.peer_leaving_until = None;
            self.recheck = None;
        }
        match self.phase {
            Phase::Listening if running_active => {
                self.epoch = self.epoch.max(peer.epoch);
                self.change(Phase::Passive, Reason::PeerActive, effects);
                self.bind(Port::Secondary, effects);
            }
            // A passive or leaving peer: no active to wait for.
            Phase::Listening => self.bind(Port::Primary, effects),
            Phase::Passive
                if (leaving && peer.role == Role::Active) || peer.state == State::Handover =>
            {
                if self.peer_leaving_until.is_none() {
                    self.peer_leaving_until = Some(later(now, self.settings.leave_window));
                    self.retry_at[0] = None;
                }
                self.bind(Port::Primary, effects);
            }
            Phase::Active if running_active => {
                let peer_wins = peer.epoch > self.epoch
                    || (peer.epoch == self.epoch && peer.node == Node::Primary);
                if peer_wins && peer.node != self.settings.node {
                    self.epoch = peer.epoch;
                    self.step_downs += 1;
                    self.give_up_primary(now, Reason::HigherEpoch, effects);
                }
            }
            // After a takeover on one host the active kept relaying on the
            // secondary port too; the peer is back and needs it.
            Phase::Active
                if self.settings.same_host
                    && peer.role == Role::Passive
                    && peer.node != self.settings.node
                    && self.holding[Port::Secondary.index()]
                    && !(self.settings.preempt
                        && self.settings.node == Node::Secondary
                        && peer.node == Node::Primary) =>
            {
                self.drain(Port::Secondary, effects);
            }
            Phase::Active
                if self.settings.preempt
                    && self.settings.node == Node::Secondary
                    && peer.node == Node::Primary
                    && peer.role == Role::Passive
                    && peer.state == State::Running
                    && !self.handing_over =>
            {
                self.handing_over = true;
                self.give_up_primary(now, Reason::Preempt, effects);
            }
            _ => {}
        }
    }

    /// Leave the active role: drain the primary port, serve on the
    /// secondary; the failover timer starts again from now.
    fn give_up_primary(&mut self, now: Instant, reason: Reason, effects: &mut Vec<Effect>) {
        self.active_seen = now;
        self.change(Phase::Passive, reason, effects);
        self.drain(Port::Primary, effects);
        if !self.holding[Port::Secondary.index()] {
            self.bind(Port::Secondary, effects);
        }
    }

    fn bound(&mut self, now: Instant, port: Port, ok: bool, effects: &mut Vec<Effect>) {
        let i = port.index();
        self.bind_pending[i] = false;
        if ok {
            self.holding[i] = true;
            self.retry_at[i] = None;
            if port == Port::Secondary {
                self.secondary_wait_told = false;
            }
        }
        match (port, ok, self.phase) {
            (_, true, Phase::Stopping) => self.drain(port, effects),
            (Port::Primary, true, Phase::Listening) => {
                self.epoch += 1;
                self.change(Phase::Active, Reason::NoActivePeer, effects);
            }
            (Port::Primary, true, Phase::Passive) => {
                let reason = if self.peer_leaving_until.take().is_some() {
                    Reason::PeerLeaving
                } else if self.proving || self.peer_died {
                    self.peer_gone = true;
                    Reason::PeerDied
                } else {
                    Reason::PeerSilent
                };
                self.proving = false;
                self.peer_died = false;
                self.recheck = None;
                let heard = self.peer.map_or(0, |(_, p)| p.epoch);
                self.epoch = self.epoch.max(heard) + 1;
                self.failovers += 1;
                self.change(Phase::Active, reason, effects);
                effects.push(Effect::Notify);
                // The secondary port stays open and relays: its clients
                // lose nothing. It is released when the peer comes back.
            }
            (Port::Primary, false, Phase::Listening) => {
                self.active_seen = now;
                self.change(Phase::Passive, Reason::PortHeld, effects);
                self.bind(Port::Secondary, effects);
            }
            // Held after a closed heartbeat connection: the active's
            // process is alive after all. No alarm; the timeout still runs.
            (Port::Primary, false, _) if std::mem::take(&mut self.proving) => {}
            // The peer said it is leaving and has not released the port
            // yet: expected, retried soon, no alarm.
            (Port::Primary, false, _) if self.peer_leaving_until.is_some() => {
                self.retry_at[i] = Some(later(now, self.settings.fast_retry));
            }
            (Port::Primary, false, _) => {
                self.bind_failures += 1;
                effects.push(Effect::BindFailed {
                    port,
                    silent_for: now.saturating_duration_since(self.active_seen),
                });
                self.retry_at[i] = Some(later(now, self.settings.heartbeat_timeout));
            }
            (Port::Secondary, false, _) => {
                // The peer holds it until it has drained: retry soon, and
                // say so once, not at every retry.
                if !std::mem::replace(&mut self.secondary_wait_told, true) {
                    effects.push(Effect::BindFailed {
                        port,
                        silent_for: Duration::ZERO,
                    });
                }
                self.retry_at[i] = Some(later(now, self.settings.fast_retry));
            }
            (_, true, _) => {}
        }
    }

    fn stop(&mut self, effects: &mut Vec<Effect>) {
        if self.phase == Phase::Stopping {
            return;
        }
        self.change(Phase::Stopping, Reason::Stop, effects);
        for port in [Port::Primary, Port::Secondary] {
            if self.holding[port.index()] {
                self.drain(port, effects);
            }
        }
        self.exit_if_done(effects);
    }

    fn exit_if_done(&mut self, effects: &mut Vec<Effect>) {
        if self.phase == Phase::Stopping
            && self.holding == [false; 2]
            && self.bind_pending == [false; 2]
        {
            effects.push(Effect::Exit);
        }
    }

    /// Ask for a held port to be drained and closed, once.
    fn drain(&mut self, port: Port, effects: &mut Vec<Effect>) {
        if !std::mem::replace(&mut self.draining[port.index()], true) {
            effects.push(Effect::Drain(port));
        }
    }

    fn bind(&mut self, port: Port, effects: &mut Vec<Effect>) {
        let i = port.index();
        if !self.bind_pending[i] && !self.holding[i] {
            self.bind_pending[i] = true;
            self.retry_at[i] = None;
            effects.push(Effect::Bind(port));
        }
    }

    /// Change the role, and tell the peer at once rather than at the next
    /// interval: a role (and its epoch) nobody heard cannot be resolved.
    fn change(&mut self, to: Phase, reason: Reason, effects: &mut Vec<Effect>) {
        let from = std::mem::replace(&mut self.phase, to);
        effects.push(Effect::Changed {
            from,
            to,
            reason,
            epoch: self.epoch,
        });
        effects.push(Effect::PublishNow);
    }
}

#[cfg(test)]
mod tests;
