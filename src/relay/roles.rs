//! The role machine's side of the loop: stepping it ([`Relay::handle`]) and
//! carrying out its effects: binding a frontend port, draining one and
//! closing it once quiet, publishing heartbeats, telling the peer, exiting.
//! The machine decides ([`crate::ha::machine`]); nothing here does.

use super::drain::{Drain, Seen, Verdict};
use super::send::carry_out;
use super::state::Event as PathEvent;
use super::{cork, open_frontend, readable, Events, Relay, RELAY_WHILE_DRAINING};
use crate::config::{tcp_endpoint, Config};
use crate::ha::machine::{Effect, Event, Phase, Port, Settings};
use crate::ha::Beat;
use serde_json::json;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};
use zbridge_protocol::heartbeat::Role;
use zbridge_protocol::time::later;

impl Relay {
    pub(super) fn on_stop(&mut self, now: Instant, events: Events) {
        if self.machine.phase() == Phase::Stopping {
            warn!("second stop request: answering what is in flight with `draining` now");
            for drain in self
                .frontends
                .iter_mut()
                .flatten()
                .filter_map(|f| f.drain.as_mut())
            {
                drain.until = now;
            }
            return;
        }
        info!(
            drain_timeout_s = self.state.config.drain_timeout.as_secs_f64(),
            "stop requested: draining (telling the peer, relaying what clients still send, closing each port right behind its last reply)"
        );
        self.notifier.stopping();
        self.handle(now, Event::Stop, events);
    }

    /// Step the machine and carry out what it decides.
    pub(super) fn handle(&mut self, now: Instant, event: Event, events: Events) {
        let effects = self.machine.step(now, event);
        if !effects.is_empty() {
            self.apply(now, effects, events);
        }
    }

    pub(super) fn apply(&mut self, now: Instant, effects: Vec<Effect>, events: Events) {
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
                        // New requests are relayed as usual for a while, so
                        // that a plain lockstep client is served until the
                        // port closes right behind a reply; after it (a port
                        // that never goes quiet) they get `draining`. The
                        // same window is how long a quiet port waits for its
                        // clients' next requests (see `drain`).
                        let window = (drain / 2).min(RELAY_WHILE_DRAINING);
                        let replies = self.state.replies_on(port);
                        frontend.drain = Some(Drain::new(now, later(now, drain), window, replies));
                        let relay_until = later(now, window);
                        cork::hold(&frontend.connections);
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
                    if self.ready {
                        let status = self.role_status();
                        self.notifier.status(&status);
                    }
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
    pub(super) fn bind(&mut self, port: Port, events: Events) -> bool {
        let config = &self.state.config;
        let endpoint = config.frontend_endpoint(port);
        let plain = config.plain_endpoint(port);
        match open_frontend(&self.context, config, &endpoint, plain.as_deref()) {
            Ok(frontend) => {
                info!(?port, endpoint = %frontend.endpoint, plain = ?frontend.plain, curve = config.curve.is_some(), "frontend bound");
                if let Some(streams) = &self.streams {
                    streams.hold(port);
                }
                events(
                    json!({"event": "bound", "port": port_name(port), "endpoint": frontend.endpoint, "plain": frontend.plain}),
                );
                self.frontends[port.index()] = Some(frontend);
                true
            }
            Err(zmq::Error::EADDRINUSE) => false,
            Err(e @ zmq::Error::EMFILE) => {
                error!(
                    ?port, %endpoint, error = %e,
                    descriptors = crate::limits::descriptors(),
                    "cannot bind the frontend: out of file descriptors (raise LimitNOFILE= or ulimit -n; see connections_shed_total and clients_connected); retrying"
                );
                false
            }
            Err(e) => {
                error!(?port, %endpoint, error = %e, "cannot bind the frontend");
                false
            }
        }
    }

    /// Close each draining frontend when [`Drain::look`] says so: right
    /// behind a reply, after a quiet window, with no client left, or at
    /// its drain deadline. Runs right after the replies of a round went
    /// out, so that a port can close behind the last one.
    pub(super) fn finish_drains(&mut self, now: Instant, events: Events) {
        for port in [Port::Primary, Port::Secondary] {
            let i = port.index();
            if self.frontends[i].as_ref().is_none_or(|f| f.drain.is_none()) {
                continue;
            }
            // Connections accepted since the last poll count too.
            self.track_connections(i);
            let in_flight = self.state.in_flight_on(port);
            let replies = self.state.replies_on(port);
            let Some(frontend) = &mut self.frontends[i] else {
                continue;
            };
            let Some(drain) = &mut frontend.drain else {
                continue;
            };
            let seen = Seen {
                replies,
                idle: in_flight == 0 && !readable(&frontend.socket),
                connections: frontend.connections.len(),
            };
            let verdict = drain.look(now, seen);
            if verdict == Verdict::Open {
                // Staying open: send this round's replies (see `cork`).
                cork::flush(&frontend.connections);
                continue;
            }
            debug!(
                ?port,
                ?verdict,
                connections = seen.connections,
                "closing the draining frontend"
            );
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
                if let Some(plain) = &frontend.plain {
                    let _ = frontend.socket.unbind(plain);
                }
                info!(?port, endpoint = %frontend.endpoint, "frontend released");
                events(
                    json!({"event": "released", "port": port_name(port), "endpoint": frontend.endpoint}),
                );
            }
            self.handle(now, Event::Released(port), events);
        }
    }

    /// The role, as `systemctl status` shows it.
    pub(super) fn role_status(&self) -> String {
        let ports: Vec<String> = (self.frontends.iter().flatten())
            .map(|f| f.port.to_string())
            .collect();
        format!(
            "{} (epoch {}), serving on port {}",
            role_name(self.machine.phase()),
            self.machine.epoch(),
            ports.join(" and ")
        )
    }

    pub(super) fn publish(&mut self, now: Instant) {
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
}

/// The role machine's settings from a config.
pub(super) fn settings(config: &Config) -> Settings {
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
pub(super) fn role_name(phase: Phase) -> &'static str {
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
