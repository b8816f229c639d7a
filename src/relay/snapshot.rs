//! What the monitoring server and the ready line show: the snapshot the
//! loop refreshes every 100 ms (the status document, the latencies, whether
//! the bridge serves), the HA view copied into it, and the ready event.

use super::roles::role_name;
use super::{writable, Events, Relay, SNAPSHOT_EVERY, STREAMS_STOPPED};
use crate::ha::machine::{Phase, Port};
use crate::monitor;
use serde_json::json;
use std::time::Instant;
use tracing::{error, info, warn};

impl Relay {
    /// Refresh what the monitoring server shows.
    pub(super) fn snapshot(&mut self, now: Instant) {
        self.state.sample(now);
        self.read_handshakes();
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
        // With the stream thread's part: CURVE refusals (ZAP handlers and
        // failed handshakes), and failed handshakes on a plain port.
        let admission = self.admission.as_deref();
        let refused = admission.map_or(0, |a| a.refused());
        let plain_failed = admission.map_or(0, |a| a.plain_failed());
        self.state
            .streams
            .insert("curve_refused_total".into(), refused.into());
        self.state
            .streams
            .insert("plain_handshakes_failed_total".into(), plain_failed.into());
        // Connections shed on the pub ports count with the frontends'.
        let pub_shed = (self.state.streams.remove("pub_connections_shed_total"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        self.sync_view(now);
        let mut status = self.state.status(now);
        status["connections_shed_total"] = (self.state.ha.connections_shed + pub_shed).into();
        // Whether each target's DEALER can take a message now (a connected
        // backend with room in its queue): one getsockopt per target.
        for target in self.state.targets.iter().filter(|t| !t.retired) {
            let connected = target.dealer.as_deref().is_some_and(writable);
            if let Some(doc) = status["targets"].get_mut(&target.name) {
                doc["connected"] = connected.into();
            }
        }
        let snapshot = monitor::Snapshot {
            status,
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
    /// What each target's service did with the bridge's handshakes: a
    /// service that ends them is said once, and again once it accepts.
    fn read_handshakes(&mut self) {
        for target in &mut self.state.targets {
            let Some(refused) = target.dealer.as_mut().and_then(|d| d.handshakes()) else {
                continue;
            };
            if refused == target.refused {
                continue;
            }
            match refused {
                Some(why) => {
                    warn!(target_name = %target.name, endpoint = %target.endpoint, why, "the target's service ends the bridge's handshake: requests for it wait, then get backend_unavailable")
                }
                None if target.refused.is_some() => {
                    info!(target_name = %target.name, endpoint = %target.endpoint, "the target's service accepts the bridge's handshake again")
                }
                None => {}
            }
            target.refused = refused;
        }
    }

    pub(super) fn sync_view(&mut self, now: Instant) {
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

    pub(super) fn report_ready(&mut self, port: Port, events: Events) {
        let frontend = self.frontends[port.index()]
            .as_ref()
            .map(|f| f.endpoint.clone());
        let mut targets = serde_json::Map::new();
        for target in &self.state.targets {
            let connected = target.dealer.as_deref().is_some_and(writable);
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
        let status = self.role_status();
        self.notifier.ready(&status);
    }
}
