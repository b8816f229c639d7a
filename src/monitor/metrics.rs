//! `/metrics`: the status document and the request-duration histograms as
//! a Prometheus exposition, in the format the scraper asks for.
//!
//! `prometheus-client` encodes OpenMetrics text only; [`text_format`]
//! rewrites its output into the Prometheus text format 0.0.4 for scrapers
//! (and `promtool check metrics`) that do not ask for OpenMetrics. Both
//! carry the same families and samples.

use prometheus_client::encoding::text::encode as encode_openmetrics;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::fmt::Write;
use std::sync::atomic::AtomicU64;

/// The two expositions a scraper can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
    /// `text/plain; version=0.0.4`, the Prometheus text format.
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it with a quality above
    /// zero and at least that of the text format (`text/plain`, `text/*`,
    /// `*/*`); the text format otherwise, and when there is no header.
    /// Prometheus itself sends e.g. `application/openmetrics-text;
    /// version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, q)| q.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The exposition of a status document and the targets' request durations.
pub fn metrics(status: &Value, durations: Vec<Durations>, format: Format) -> String {
    let text = openmetrics(status, durations);
    match format {
        Format::OpenMetrics => text,
        Format::Text => text_format(&text),
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition as
/// `prometheus-client` writes it (HELP, TYPE, UNIT, then samples, per
/// family; no timestamps, no exemplars: zbridge uses neither). HELP texts
/// are copied as they are: prometheus-client does not escape them, and
/// zbridge's need no escaping in either format.
///
/// What differs between the two: a counter family `x` has samples
/// `x_total` in both, but the text format names the family `x_total` in
/// HELP and TYPE, or its parsers take the samples for another, untyped
/// family without help; `unknown` is `untyped`; the text format has no
/// `# UNIT`, no `_created` samples and no `# EOF`.
pub fn text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family's HELP line waits for its TYPE, which says its name
    // (prometheus-client writes one after every HELP).
    let mut help: Option<&str> = None;
    let mut counter: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            counter = (kind == "counter").then(|| family.to_string());
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), kind),
                "unknown" => (family.to_string(), "untyped"),
                _ => (family.to_string(), kind),
            };
            if let Some(help) = help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        let created = counter
            .as_deref()
            .and_then(|family| sample.strip_prefix(family))
            == Some("_created");
        if !created {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

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
fn openmetrics(status: &Value, durations: Vec<Durations>) -> String {
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
    counter(
        &mut registry,
        "zbridge_curve_refused",
        "CURVE connections refused: a key not in curve_clients, a client without CURVE or with the wrong server key",
        &status["curve_refused_total"],
    );
    counter(
        &mut registry,
        "zbridge_plain_handshakes_failed",
        "Handshakes failed on a plain port (plain_primary_port, plain_secondary_port): CURVE clients there, probes",
        &status["plain_handshakes_failed_total"],
    );
    gauge(
        &mut registry,
        "zbridge_role",
        "1 while this instance is active, else 0",
        f64::from(u8::from(status["role"] == "active")),
    );
    counter(
        &mut registry,
        "zbridge_connections_shed",
        "Client connections shut down before their handshake finished (too many waiting at once)",
        &status["connections_shed_total"],
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
    let queued = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let breaker_open = Family::<Labels, Gauge<f64, AtomicU64>>::default();
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
        queued
            .get_or_create(&t)
            .set(target["queued_bytes"].as_f64().unwrap_or(0.0));
        breaker_open
            .get_or_create(&t)
            .set(f64::from(u8::from(target["breaker"] != "closed")));
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
        "zbridge_target_queued_bytes",
        "Bytes of requests sent to a target that no reply has shown read yet (max_queued_bytes caps them)",
        queued,
    );
    registry.register(
        "zbridge_target_breaker_open",
        "1 while a target's circuit breaker is open or half-open",
        breaker_open,
    );
    registry.register(
        "zbridge_request_duration_seconds",
        "Answered requests, from the bridge to the target's backend and back",
        DurationFamily(durations),
    );
    stream_metrics(&mut registry, status);
    let mut text = String::new();
    if let Err(e) = encode_openmetrics(&mut text, &registry) {
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
    let lv_topics = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let lv_bytes = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let lv_evicted = Family::<Labels, Counter>::default();
    let lv_too_large = Family::<Labels, Counter>::default();
    let lv_replayed = Family::<Labels, Counter>::default();
    let lv_deferred = Family::<Labels, Counter>::default();
    let lv_pending = Family::<Labels, Gauge<f64, AtomicU64>>::default();
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
        let kept = &stream["last_values"];
        if kept.is_object() {
            let count = |key: &str| kept[key].as_u64().unwrap_or(0);
            lv_topics.get_or_create(&s).set(count("topics") as f64);
            lv_bytes.get_or_create(&s).set(count("bytes") as f64);
            lv_evicted.get_or_create(&s).inc_by(count("evicted_total"));
            lv_too_large
                .get_or_create(&s)
                .inc_by(count("too_large_total"));
            lv_replayed
                .get_or_create(&s)
                .inc_by(count("replayed_total"));
            lv_deferred
                .get_or_create(&s)
                .inc_by(count("replays_deferred_total"));
            lv_pending
                .get_or_create(&s)
                .set(count("replays_pending") as f64);
        }
    }
    registry.register(
        "zbridge_stream_last_value_topics",
        "Topics whose last message the bridge keeps for new subscribers (last_value)",
        lv_topics,
    );
    registry.register(
        "zbridge_stream_last_value_bytes",
        "Bytes of last values kept (the frames' lengths; last_value_max_bytes bounds them)",
        lv_bytes,
    );
    registry.register(
        "zbridge_stream_last_value_evicted",
        "Last values dropped to stay within last_value_max_topics or last_value_max_bytes",
        lv_evicted,
    );
    registry.register(
        "zbridge_stream_last_value_too_large",
        "Messages not kept as a last value because they alone pass last_value_max_bytes",
        lv_too_large,
    );
    registry.register(
        "zbridge_stream_last_value_replayed",
        "Last values sent to new subscriptions",
        lv_replayed,
    );
    registry.register(
        "zbridge_stream_last_value_deferred",
        "Subscriptions whose last values did not go out at once (their prefix replayed under 100 ms before, or the pub port's replay budget spent); each is served by a later replay",
        lv_deferred,
    );
    registry.register(
        "zbridge_stream_last_value_pending",
        "Prefixes whose subscriptions wait for a deferred replay of their last values",
        lv_pending,
    );
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
    use serde_json::json;

    fn example() -> String {
        openmetrics(
            &json!({"requests_total": 7, "role": "active", "errors_total": {"timeout": 2},
                "targets": {"pc2": {"requests_total": 4, "in_flight": 1, "breaker": "closed",
                    "queued_bytes": 300, "latency_ms": {"p50": 1.0, "p99": 2.0}}}}),
            vec![Durations {
                target: "pc2".into(),
                sum_s: 0.5,
                count: 3,
                buckets: vec![(0.001, 2), (0.5, 0), (f64::MAX, 1)],
            }],
        )
    }

    #[test]
    fn metrics_are_openmetrics_text_named_with_the_prefix() {
        let text = example();
        for line in [
            "zbridge_request_duration_seconds_sum{target=\"pc2\"} 0.5",
            "zbridge_request_duration_seconds_count{target=\"pc2\"} 3",
            "zbridge_request_duration_seconds_bucket{le=\"0.001\",target=\"pc2\"} 2",
            "zbridge_request_duration_seconds_bucket{le=\"0.5\",target=\"pc2\"} 2",
            "zbridge_request_duration_seconds_bucket{le=\"+Inf\",target=\"pc2\"} 3",
            "# TYPE zbridge_requests counter",
            "zbridge_requests_total 7",
            "zbridge_errors_total{code=\"timeout\"} 2",
            "zbridge_target_requests_total{target=\"pc2\"} 4",
            "zbridge_target_queued_bytes{target=\"pc2\"} 300.0",
            "zbridge_role 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Only summaries may carry a quantile label; p50/p99 stay in
        // /status, the histogram above is what Prometheus gets.
        assert!(!text.contains("quantile"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let text = openmetrics(
            &json!({"streams": {"dream": {"up": true, "subscriber_stalls_total": 3,
                "last_values": {"topics": 2, "evicted_total": 5,
                    "replays_deferred_total": 7, "replays_pending": 1}}}}),
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
        for line in [
            "zbridge_stream_last_value_topics{stream=\"dream\"} 2.0",
            "zbridge_stream_last_value_evicted_total{stream=\"dream\"} 5",
            "zbridge_stream_last_value_deferred_total{stream=\"dream\"} 7",
            "zbridge_stream_last_value_pending{stream=\"dream\"} 1.0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn the_text_format_names_counter_families_with_total_and_drops_what_it_lacks() {
        let openmetrics = "\
# HELP x_requests Requests.
# TYPE x_requests counter
# UNIT x_requests requests
x_requests_total{code=\"a\"} 7
x_requests_created{code=\"a\"} 1.7e9
# HELP x_up 1 while up.
# TYPE x_up gauge
x_up 1
# HELP x_seconds Durations.
# TYPE x_seconds histogram
x_seconds_bucket{le=\"+Inf\"} 2
x_seconds_sum 0.5
x_seconds_count 2
# HELP x_odd Unknown.
# TYPE x_odd unknown
x_odd 3
# EOF
";
        let text = "\
# HELP x_requests_total Requests.
# TYPE x_requests_total counter
x_requests_total{code=\"a\"} 7
# HELP x_up 1 while up.
# TYPE x_up gauge
x_up 1
# HELP x_seconds Durations.
# TYPE x_seconds histogram
x_seconds_bucket{le=\"+Inf\"} 2
x_seconds_sum 0.5
x_seconds_count 2
# HELP x_odd Unknown.
# TYPE x_odd untyped
x_odd 3
";
        assert_eq!(text_format(openmetrics), text);
    }

    #[test]
    fn the_text_format_of_zbridge_metrics_keeps_every_sample() {
        let openmetrics = example();
        let text = text_format(&openmetrics);
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&text), samples(&openmetrics));
        for line in [
            "# HELP zbridge_requests_total Requests read from the frontends.",
            "# TYPE zbridge_requests_total counter",
            "# TYPE zbridge_errors_total counter",
            "# TYPE zbridge_role gauge",
            "# TYPE zbridge_request_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample of a family follows its TYPE line, under its name.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} under {family}");
            }
        }
    }

    #[test]
    fn openmetrics_only_when_the_scraper_prefers_it() {
        let cases = [
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            // Prometheus 2.x's default.
            (Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), Format::OpenMetrics),
            // A scrape config that prefers the text format.
            (Some("text/plain;version=0.0.4;q=1, application/openmetrics-text; version=1.0.0; q=0.5"), Format::Text),
            (Some("application/openmetrics-text;q=0, text/plain"), Format::Text),
            (Some("Application/OpenMetrics-Text; Q=0.9, */*;q=0.1"), Format::OpenMetrics),
            (Some("application/openmetrics-text;q=bad"), Format::Text),
        ];
        for (accept, format) in cases {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }
}
