//! The status document (DESIGN §5), the `/metrics` latencies and the ping
//! answer, built from the request path's counters and the HA view the loop
//! keeps up to date. Pure: times are measured from the `now` passed in.

use super::State;
use crate::ha::machine::Peer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use zbridge_protocol::heartbeat::{Node, Rejected};
use zbridge_protocol::{Action as Ask, ErrorCode};

/// The window of `throughput_rps` and `error_rate`.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The high-availability side of the status document, kept up to date by
/// the loop.
#[derive(Debug, Clone, Default)]
pub(in crate::relay) struct HaView {
    pub role: &'static str,
    pub node: Option<Node>,
    pub epoch: u64,
    pub peer: Option<(Instant, Peer)>,
    pub peer_alive: bool,
    /// What the peer's last heartbeat said of itself.
    pub peer_beat: Option<PeerBeat>,
    pub failovers: u64,
    pub bind_failures: u64,
    pub step_downs: u64,
    pub rejected: [u64; Rejected::ALL.len()],
    pub frontend_ports: Vec<u16>,
    pub clients_connected: u64,
    /// Client connections shut down before their handshake finished.
    pub connections_shed: u64,
}

/// A heartbeat's word on its sender, shown in `peer` of the status.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::relay) struct PeerBeat {
    pub uptime_s: u64,
    /// The sender's relay loop's busy fraction, 0..1.
    pub load: f64,
    /// The frontend port it serves in its role.
    pub port: u16,
}

impl<D> State<D> {
    /// The body of the answer to a bridge action.
    pub(super) fn answer(&self, now: Instant, ask: Ask) -> Vec<u8> {
        let doc = match ask {
            Ask::Ping => json!({
                "status": "ok", "action": "pong", "role": self.ha.role, "node": self.ha.node,
            }),
            Ask::Status => self.status(now),
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
        self.targets
            .iter()
            .filter(|t| !t.retired)
            .map(|t| {
                let (sum_s, count, buckets) = t.latency.prometheus();
                crate::monitor::Durations {
                    target: t.name.clone(),
                    sum_s,
                    count,
                    buckets,
                }
            })
            .collect()
    }

    /// The status document (DESIGN §5).
    pub fn status(&self, now: Instant) -> Value {
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
            .targets
            .iter()
            .filter(|t| !t.retired)
            .map(|t| {
                let doc = json!({
                    "endpoint": t.endpoint,
                    "in_flight": t.in_flight,
                    "waiting_for_backend": t.waiting.iter().filter(|(k, _)| self.table.get(*k).is_some()).count(),
                    "queued_bytes": t.queued.bytes(),
                    "queued_requests": t.queued.requests(),
                    "breaker": t.breaker.state().as_str(),
                    "requests_total": t.requests_total,
                    "replies_total": t.replies_total,
                    "latency_ms": {"p50": t.latency.quantile_ms(0.5), "p99": t.latency.quantile_ms(0.99)},
                    "handshake_refused": t.refused,
                });
                (t.name.clone(), doc)
            })
            .collect();
        let peer = self.ha.peer.map(|(at, p)| {
            let mut doc = json!({
                "role": p.role,
                "node": p.node,
                "epoch": p.epoch,
                "state": p.state,
                "last_heartbeat_age_s": now.saturating_duration_since(at).as_secs_f64(),
                "alive": self.ha.peer_alive,
            });
            if let Some(beat) = self.ha.peer_beat {
                doc["uptime_s"] = beat.uptime_s.into();
                doc["load"] = beat.load.into();
                doc["port"] = beat.port.into();
            }
            doc
        });
        let (throughput, error_rate) = self.rates();
        let mut doc = json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.ha.node,
            "role": self.ha.role,
            "epoch": self.ha.epoch,
            "uptime_s": now.saturating_duration_since(self.started).as_secs_f64(),
            "frontend_ports": self.ha.frontend_ports,
            "peer": peer.unwrap_or(json!({"alive": false})),
            "redundancy": if self.ha.peer_alive { "ok" } else { "degraded" },
            "failovers_total": self.ha.failovers,
            "primary_bind_failures_total": self.ha.bind_failures,
            "step_downs_total": self.ha.step_downs,
            "heartbeats_rejected_total": rejected,
            "clients_connected": self.ha.clients_connected,
            "connections_shed_total": self.ha.connections_shed,
            "throughput_rps": throughput,
            "error_rate": error_rate,
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
