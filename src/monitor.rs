//! HTTP monitoring (DESIGN §5): `GET /health`, `/status`, `/metrics`.
//!
//! A thread serves them from a [`Snapshot`] that the relay loop replaces a
//! few times a second; it never touches a ZeroMQ socket and never waits on
//! the relay, so a slow scraper cannot slow the relay. `/metrics` is encoded
//! by `prometheus-client` (OpenMetrics text) from the same status document
//! that `/status` shows, so the two always agree.

use anyhow::anyhow;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the relay loop last published.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The status document, as `{"action":"status"}` answers it.
    pub status: Value,
    /// Per target, for `/metrics` only (buckets are no use in `/status`).
    pub durations: Vec<Durations>,
    /// A frontend is bound and the bridge is not stopping.
    pub serving: bool,
    /// What is broken while requests are still served (e.g. the stream
    /// thread stopped), for `/health`.
    pub problems: Vec<String>,
    pub taken: Instant,
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// One target's answered requests, bridge to backend and back, as a
/// Prometheus histogram.
#[derive(Debug, Clone)]
pub struct Durations {
    pub target: String,
    pub sum_s: f64,
    pub count: u64,
    /// `(upper bound in seconds, count in that bucket)`, not cumulative;
    /// the last bound is `f64::MAX` (+Inf).
    pub buckets: Vec<(f64, u64)>,
}

/// Every target's [`Durations`]: one histogram family, labelled by target.
#[derive(Debug)]
struct DurationFamily(Vec<Durations>);

impl EncodeMetric for DurationFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for d in &self.0 {
            encoder
                .encode_family(&labels(&[("target", &d.target)]))?
                .encode_histogram::<NoLabelSet>(d.sum_s, d.count, &d.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Serve on `bind` (`HOST:PORT`, port 0 for any) from a thread; returns the
/// bound port. `/health` says 503 when the snapshot is older than `stale`:
/// the relay loop is stuck.
pub fn start(bind: &str, shared: Shared, stale: Duration) -> anyhow::Result<u16> {
    let server = tiny_http::Server::http(bind)
        .map_err(|e| anyhow!("cannot bind the monitoring HTTP server on {bind}: {e}"))?;
    let port = server
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .ok_or_else(|| anyhow!("the monitoring server has no IP address"))?;
    std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let snapshot = shared.lock().map(|s| s.clone()).ok();
                let (code, content_type, body) = respond(request.url(), snapshot, stale);
                let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("a valid header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })?;
    Ok(port)
}

const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(url: &str, snapshot: Option<Snapshot>, stale: Duration) -> (u16, &'static str, String) {
    let Some(snapshot) = snapshot else {
        return (
            500,
            JSON,
            json!({"status": "error", "message": "no snapshot"}).to_string(),
        );
    };
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/health" => {
            let age = snapshot.taken.elapsed();
            let role = snapshot.status["role"].clone();
            if age > stale {
                let doc = json!({"status": "unavailable", "role": role,
                    "reason": format!("the relay loop has not reported for {:.1} s", age.as_secs_f64())});
                (503, JSON, doc.to_string())
            } else if !snapshot.serving {
                let doc = json!({"status": "unavailable", "role": role,
                    "reason": "no frontend port is bound (starting or stopping)"});
                (503, JSON, doc.to_string())
            } else {
                let mut doc = json!({"status": "ok", "role": role});
                if !snapshot.problems.is_empty() {
                    doc["problems"] = json!(snapshot.problems);
                }
                (200, JSON, doc.to_string())
            }
        }
        "/status" => (200, JSON, snapshot.status.to_string()),
        "/metrics" => (
            200,
            OPENMETRICS,
            metrics(&snapshot.status, snapshot.durations),
        ),
        _ => (
            404,
            JSON,
            json!({"status": "error", "message": format!("no such path {path:?}: try /health, /status or /metrics")})
                .to_string(),
        ),
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: &Value) {
    let c: Counter = Counter::default();
    c.inc_by(value.as_u64().unwrap_or(0));
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// A labelled counter family from a JSON object of numbers.
fn counters_by(registry: &mut Registry, name: &str, help: &str, label: &str, values: &Value) {
    let family = Family::<Labels, Counter>::default();
    for (key, value) in values.as_object().into_iter().flatten() {
        family
            .get_or_create(&labels(&[(label, key)]))
            .inc_by(value.as_u64().unwrap_or(0));
    }
    registry.register(name, help, family);
}

/// The OpenMetrics text for a status document and the targets' request
/// durations.
pub fn metrics(status: &Value, durations: Vec<Durations>) -> String {
    let mut registry = Registry::default();
    counter(
        &mut registry,
        "zbridge_requests",
        "Requests read from the frontends",
        &status["requests_total"],
    );
    counter(
        &mut registry,
        "zbridge_replies",
        "Backend replies relayed to clients",
        &status["replies_total"],
    );
    counters_by(
        &mut registry,
        "zbridge_errors",
        "Error replies, by error code",
        "code",
        &status["errors_total"],
    );
    counter(
        &mut registry,
        "zbridge_late_replies",
        "Backend replies that came after their request's deadline",
        &status["late_replies_total"],
    );
    counter(
        &mut registry,
        "zbridge_dropped_replies",
        "Replies whose client was gone",
        &status["dropped_replies_total"],
    );
    counter(
        &mut registry,
        "zbridge_failovers",
        "Takeovers of the primary port by this instance",
        &status["failovers_total"],
    );
    counter(
        &mut registry,
        "zbridge_primary_bind_failures",
        "Attempts to take a primary port another process held",
        &status["primary_bind_failures_total"],
    );
    counters_by(
        &mut registry,
        "zbridge_heartbeats_rejected",
        "Heartbeats rejected, by reason",
        "reason",
        &status["heartbeats_rejected_total"],
    );
    gauge(
        &mut registry,
        "zbridge_role",
        "1 while this instance is active, else 0",
        f64::from(u8::from(status["role"] == "active")),
    );
    gauge(
        &mut registry,
        "zbridge_clients_connected",
        "Client connections to the frontends",
        status["clients_connected"].as_f64().unwrap_or(0.0),
    );
    gauge(
        &mut registry,
        "zbridge_throughput_rps",
        "Requests per second over the last 10 s",
        status["throughput_rps"].as_f64().unwrap_or(0.0),
    );
    gauge(
        &mut registry,
        "zbridge_error_rate",
        "Fraction of requests answered with an error over the last 10 s",
        status["error_rate"].as_f64().unwrap_or(0.0),
    );
    gauge(
        &mut registry,
        "zbridge_epoch",
        "The role epoch this instance knows",
        status["epoch"].as_f64().unwrap_or(0.0),
    );
    gauge(
        &mut registry,
        "zbridge_uptime_seconds",
        "Seconds since start",
        status["uptime_s"].as_f64().unwrap_or(0.0),
    );
    gauge(
        &mut registry,
        "zbridge_peer_alive",
        "1 while the peer's heartbeats arrive, else 0",
        f64::from(u8::from(status["peer"]["alive"] == true)),
    );
    if let Some(age) = status["peer"]["last_heartbeat_age_s"].as_f64() {
        gauge(
            &mut registry,
            "zbridge_peer_last_heartbeat_age_seconds",
            "Seconds since the peer's last valid heartbeat",
            age,
        );
    }
    let requests = Family::<Labels, Counter>::default();
    let replies = Family::<Labels, Counter>::default();
    let in_flight = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let breaker_open = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let latency = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (name, target) in status["targets"].as_object().into_iter().flatten() {
        let t = labels(&[("target", name)]);
        requests
            .get_or_create(&t)
            .inc_by(target["requests_total"].as_u64().unwrap_or(0));
        replies
            .get_or_create(&t)
            .inc_by(target["replies_total"].as_u64().unwrap_or(0));
        in_flight
            .get_or_create(&t)
            .set(target["in_flight"].as_f64().unwrap_or(0.0));
        breaker_open
            .get_or_create(&t)
            .set(f64::from(u8::from(target["breaker"] != "closed")));
        for (quantile, key) in [("0.5", "p50"), ("0.99", "p99")] {
            if let Some(ms) = target["latency_ms"][key].as_f64() {
                latency
                    .get_or_create(&labels(&[("target", name), ("quantile", quantile)]))
                    .set(ms / 1000.0);
            }
        }
    }
    registry.register(
        "zbridge_target_requests",
        "Requests sent to a target's backend",
        requests,
    );
    registry.register(
        "zbridge_target_replies",
        "Replies from a target's backend",
        replies,
    );
    registry.register(
        "zbridge_target_in_flight",
        "Requests in flight to a target",
        in_flight,
    );
    registry.register(
        "zbridge_target_breaker_open",
        "1 while a target's circuit breaker is open or half-open",
        breaker_open,
    );
    registry.register(
        "zbridge_target_latency_seconds",
        "Round trip to a target's backend, since start",
        latency,
    );
    registry.register(
        "zbridge_request_duration_seconds",
        "Answered requests, from the bridge to the target's backend and back",
        DurationFamily(durations),
    );
    stream_metrics(&mut registry, status);
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        text = format!("# cannot encode metrics: {e}\n# EOF\n");
    }
    text
}

/// Per-stream counters and gauges (DESIGN §3b).
fn stream_metrics(registry: &mut Registry, status: &Value) {
    let Some(streams) = status["streams"].as_object() else {
        return;
    };
    let received = Family::<Labels, Counter>::default();
    let published = Family::<Labels, Counter>::default();
    let stalls = Family::<Labels, Counter>::default();
    let refused = Family::<Labels, Counter>::default();
    let up = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let subscriptions = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (name, stream) in streams {
        let s = labels(&[("stream", name)]);
        let count = |key: &str| stream[key].as_u64().unwrap_or(0);
        received.get_or_create(&s).inc_by(count("received_total"));
        published.get_or_create(&s).inc_by(count("published_total"));
        stalls
            .get_or_create(&s)
            .inc_by(count("subscriber_stalls_total"));
        refused
            .get_or_create(&s)
            .inc_by(count("subscriptions_refused_total"));
        up.get_or_create(&s)
            .set(f64::from(u8::from(stream["up"] == true)));
        subscriptions
            .get_or_create(&s)
            .set(count("subscriptions") as f64);
    }
    registry.register(
        "zbridge_stream_received",
        "Messages read from a stream's upstream",
        received,
    );
    registry.register(
        "zbridge_stream_published",
        "Messages republished on the pub ports",
        published,
    );
    registry.register(
        "zbridge_stream_subscriber_stalls",
        "Times a subscriber's queue was full at stream_hwm and it began losing messages",
        stalls,
    );
    registry.register(
        "zbridge_stream_subscriptions_refused",
        "Subscriptions refused because the stream had as many prefixes as it takes",
        refused,
    );
    registry.register(
        "zbridge_stream_up",
        "1 while the bridge is connected to the stream's upstream",
        up,
    );
    registry.register(
        "zbridge_stream_subscriptions",
        "Topic prefixes subscribed upstream for the bridge's subscribers",
        subscriptions,
    );
    gauge(
        registry,
        "zbridge_stream_subscribers",
        "Connections to this instance's pub ports",
        status["stream_subscribers"].as_f64().unwrap_or(0.0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(serving: bool, age: Duration) -> Option<Snapshot> {
        Some(Snapshot {
            status: json!({"role": "active", "requests_total": 7, "targets": {}}),
            durations: Vec::new(),
            serving,
            problems: Vec::new(),
            taken: Instant::now() - age,
        })
    }

    #[test]
    fn health_is_503_while_no_port_is_bound_or_the_loop_is_stuck() {
        let stale = Duration::from_secs(2);
        assert_eq!(
            respond("/health", snapshot(true, Duration::ZERO), stale).0,
            200
        );
        let (code, _, body) = respond("/health", snapshot(false, Duration::ZERO), stale);
        assert_eq!(code, 503);
        assert!(body.contains("no frontend port"), "{body}");
        let (code, _, body) = respond("/health?x=1", snapshot(true, Duration::from_secs(3)), stale);
        assert_eq!(code, 503);
        assert!(body.contains("has not reported"), "{body}");
    }

    #[test]
    fn metrics_are_openmetrics_text_named_with_the_prefix() {
        let text = metrics(
            &json!({"requests_total": 7, "role": "active", "errors_total": {"timeout": 2}}),
            vec![Durations {
                target: "pc2".into(),
                sum_s: 0.5,
                count: 3,
                buckets: vec![(0.001, 2), (0.5, 0), (f64::MAX, 1)],
            }],
        );
        for line in [
            "zbridge_request_duration_seconds_sum{target=\"pc2\"} 0.5",
            "zbridge_request_duration_seconds_count{target=\"pc2\"} 3",
            "zbridge_request_duration_seconds_bucket{le=\"0.001\",target=\"pc2\"} 2",
            "zbridge_request_duration_seconds_bucket{le=\"0.5\",target=\"pc2\"} 2",
            "zbridge_request_duration_seconds_bucket{le=\"+Inf\",target=\"pc2\"} 3",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains("zbridge_requests_total 7"), "{text}");
        assert!(
            text.contains("zbridge_errors_total{code=\"timeout\"} 2"),
            "{text}"
        );
        assert!(text.contains("zbridge_role 1"), "{text}");
        let text = metrics(
            &json!({"streams": {"dream": {"up": true, "subscriber_stalls_total": 3}}}),
            Vec::new(),
        );
        assert!(
            text.contains("zbridge_stream_subscriber_stalls_total{stream=\"dream\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("zbridge_stream_up{stream=\"dream\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
