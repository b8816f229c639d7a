//! `/history`: one sample a second of what the relay did, the last
//! [`CAPACITY`] of them (15 minutes), for the operator's page's charts and
//! for scripts.
//!
//! The [`Sampler`] runs on the monitor's thread, never on the relay's: once
//! a second it reads the snapshot the relay loop already publishes (the
//! status document and the `/metrics` histograms) and turns the difference
//! from the previous one into rates: requests, errors and stream messages
//! per second, and the p50 and p99 latency of the requests answered in that
//! second (from the histogram buckets' growth, interpolated within a
//! bucket, which is a power of two wide). The same difference says what
//! changed (a breaker, the peer, a stream, CURVE refusals, rejected
//! heartbeats): those go to the [`super::journal`].
//!
//! Memory is fixed by the ring: [`CAPACITY`] samples of
//! `size_of::<Sample>()` bytes plus a small record per target and per
//! stream (a name shared by all samples, and three numbers); see
//! [`tests::memory_per_sample`] for the figures. Pure: the caller passes
//! the snapshot and the time.

use super::metrics::Durations;
use super::Snapshot;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Samples kept: 15 minutes at one a second.
pub const CAPACITY: usize = 900;

pub type Shared = Arc<Mutex<History>>;

/// The ring of samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    seq: u64,
    /// Unix seconds.
    time: f64,
    role: Role,
    peer_alive: bool,
    requests_per_s: f32,
    errors_per_s: f32,
    /// NaN when nothing was answered in that second.
    p50_ms: f32,
    p99_ms: f32,
    in_flight: u32,
    clients: u32,
    targets: Box<[TargetSample]>,
    streams: Box<[StreamSample]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Passive,
    Other,
}

#[derive(Debug, Clone)]
struct TargetSample {
    name: Arc<str>,
    requests_per_s: f32,
    p99_ms: f32,
    in_flight: u32,
}

#[derive(Debug, Clone)]
struct StreamSample {
    name: Arc<str>,
    messages_per_s: f32,
}

impl History {
    pub fn shared() -> Shared {
        Arc::new(Mutex::new(History::default()))
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The `/history` document: the samples with a `seq` above `since`,
    /// oldest first.
    pub fn document(&self, since: u64) -> Value {
        let samples: Vec<Value> = self
            .samples
            .iter()
            .filter(|s| s.seq > since)
            .map(Sample::to_json)
            .collect();
        let seq = self.samples.back().map_or(since, |s| s.seq);
        json!({"interval_s": 1, "capacity": CAPACITY, "seq": seq, "samples": samples})
    }
}

impl Sample {
    fn to_json(&self) -> Value {
        let targets: Map<String, Value> = self
            .targets
            .iter()
            .map(|t| {
                let doc = json!({
                    "requests_per_s": round(t.requests_per_s),
                    "p99_ms": ms(t.p99_ms),
                    "in_flight": t.in_flight,
                });
                (t.name.to_string(), doc)
            })
            .collect();
        let streams: Map<String, Value> = self
            .streams
            .iter()
            .map(|s| {
                let doc = json!({"messages_per_s": round(s.messages_per_s)});
                (s.name.to_string(), doc)
            })
            .collect();
        json!({
            "seq": self.seq,
            "time": (self.time * 1000.0).round() / 1000.0,
            "role": match self.role {
                Role::Active => "active",
                Role::Passive => "passive",
                Role::Other => "other",
            },
            "peer_alive": self.peer_alive,
            "requests_per_s": round(self.requests_per_s),
            "errors_per_s": round(self.errors_per_s),
            "p50_ms": ms(self.p50_ms),
            "p99_ms": ms(self.p99_ms),
            "in_flight": self.in_flight,
            "clients": self.clients,
            "targets": targets,
            "streams": streams,
        })
    }
}

fn round(x: f32) -> f64 {
    (f64::from(x) * 1000.0).round() / 1000.0
}

fn ms(x: f32) -> Value {
    if x.is_nan() {
        Value::Null
    } else {
        json!(round(x))
    }
}

/// What the sampler keeps of the previous snapshot.
#[derive(Debug)]
struct Seen {
    taken: Instant,
    status: Value,
    durations: Vec<Durations>,
}

/// Turns snapshots into samples and events; owned by the monitor thread.
#[derive(Debug, Default)]
pub struct Sampler {
    seen: Option<Seen>,
    seq: u64,
    /// Names shared by every sample that shows them.
    names: Vec<Arc<str>>,
}

impl Sampler {
    /// Look at `snapshot`, taken at unix time `time`: the sample of the
    /// time since the last look (none the first time, or when the relay
    /// has not published since) and the events that changes between the
    /// two make.
    pub fn observe(&mut self, snapshot: Snapshot, time: f64) -> (Option<Sample>, Vec<Value>) {
        let now = Seen {
            taken: snapshot.taken,
            status: snapshot.status,
            durations: snapshot.durations,
        };
        let Some(before) = self.seen.take() else {
            self.seen = Some(now);
            return (None, Vec::new());
        };
        let seconds = now
            .taken
            .saturating_duration_since(before.taken)
            .as_secs_f64();
        if seconds <= 0.0 {
            self.seen = Some(before);
            return (None, Vec::new());
        }
        let events = changes(&before.status, &now.status);
        let sample = self.sample(&before, &now, seconds, time);
        self.seen = Some(now);
        (Some(sample), events)
    }

    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.iter().find(|n| &***n == name) {
            return Arc::clone(known);
        }
        let name: Arc<str> = Arc::from(name);
        // Names of targets and streams retired by reloads fall out of the
        // ring with their samples; the list is trimmed to what is in use.
        if self.names.len() >= 256 {
            self.names.retain(|n| Arc::strong_count(n) > 1);
        }
        self.names.push(Arc::clone(&name));
        name
    }

    fn sample(&mut self, before: &Seen, now: &Seen, seconds: f64, time: f64) -> Sample {
        let (b, n) = (&before.status, &now.status);
        let rate = |a: &Value, z: &Value| {
            z.as_u64()
                .unwrap_or(0)
                .saturating_sub(a.as_u64().unwrap_or(0)) as f64
                / seconds
        };
        let errors = |doc: &Value| -> u64 {
            doc["errors_total"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
        };
        let mut all = Vec::new();
        let mut targets = Vec::new();
        for (name, target) in n["targets"].as_object().into_iter().flatten() {
            let grown = grown(&before.durations, &now.durations, name);
            let doc = TargetSample {
                name: self.name(name),
                requests_per_s: rate(
                    &b["targets"][name]["requests_total"],
                    &target["requests_total"],
                ) as f32,
                p99_ms: quantile_ms(&grown, 0.99),
                in_flight: target["in_flight"].as_u64().unwrap_or(0) as u32,
            };
            merge(&mut all, &grown);
            targets.push(doc);
        }
        let mut streams = Vec::new();
        for (name, stream) in n["streams"].as_object().into_iter().flatten() {
            streams.push(StreamSample {
                name: self.name(name),
                messages_per_s: rate(
                    &b["streams"][name]["published_total"],
                    &stream["published_total"],
                ) as f32,
            });
        }
        self.seq += 1;
        Sample {
            seq: self.seq,
            time,
            role: match n["role"].as_str() {
                Some("active") => Role::Active,
                Some("passive") => Role::Passive,
                _ => Role::Other,
            },
            peer_alive: n["peer"]["alive"] == true,
            requests_per_s: rate(&b["requests_total"], &n["requests_total"]) as f32,
            errors_per_s: (errors(n).saturating_sub(errors(b)) as f64 / seconds) as f32,
            p50_ms: quantile_ms(&all, 0.5),
            p99_ms: quantile_ms(&all, 0.99),
            in_flight: targets.iter().map(|t| t.in_flight).sum(),
            clients: n["clients_connected"].as_u64().unwrap_or(0) as u32,
            targets: targets.into(),
            streams: streams.into(),
        }
    }
}

/// Record a sample and its events.
pub fn record(
    history: &Shared,
    journal: &super::journal::Shared,
    time: f64,
    (sample, events): (Option<Sample>, Vec<Value>),
) {
    if let (Some(sample), Ok(mut history)) = (sample, history.lock()) {
        history.push(sample);
    }
    if events.is_empty() {
        return;
    }
    if let Ok(mut journal) = journal.lock() {
        for event in &events {
            journal.record(time, event);
        }
    }
}

/// `(upper bound in seconds, requests)` per bucket answered between the
/// two histograms of `target`.
fn grown(before: &[Durations], now: &[Durations], target: &str) -> Vec<(f64, u64)> {
    let Some(now) = now.iter().find(|d| d.target == target) else {
        return Vec::new();
    };
    let before = before.iter().find(|d| d.target == target);
    now.buckets
        .iter()
        .enumerate()
        .map(|(i, (bound, count))| {
            let was = before
                .and_then(|b| b.buckets.get(i))
                .filter(|(b, _)| b == bound)
                .map_or(0, |(_, c)| *c);
            (*bound, count.saturating_sub(was))
        })
        .collect()
}

/// Add `more` into `all` (same bounds: every target's histogram has them).
fn merge(all: &mut Vec<(f64, u64)>, more: &[(f64, u64)]) {
    if all.is_empty() {
        all.extend_from_slice(more);
        return;
    }
    for ((bound, count), (more_bound, more_count)) in all.iter_mut().zip(more) {
        if bound == more_bound {
            *count += more_count;
        }
    }
}

/// The `q` quantile in milliseconds of non-cumulative buckets, linear
/// within the bucket it falls in; NaN when they are empty. A quantile in
/// the last (+Inf) bucket is its lower bound.
fn quantile_ms(buckets: &[(f64, u64)], q: f64) -> f32 {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return f32::NAN;
    }
    let rank = (total as f64 * q).ceil().max(1.0);
    let (mut seen, mut lower) = (0.0, 0.0);
    for (upper, count) in buckets {
        let count = *count as f64;
        if count > 0.0 && seen + count >= rank {
            if *upper == f64::MAX {
                return (lower * 1e3) as f32;
            }
            let within = (rank - seen) / count;
            return ((lower + (upper - lower) * within) * 1e3) as f32;
        }
        seen += count;
        lower = *upper;
    }
    (lower * 1e3) as f32
}

/// The events that the differences between two status documents make.
fn changes(before: &Value, now: &Value) -> Vec<Value> {
    let mut events = Vec::new();
    for (name, target) in now["targets"].as_object().into_iter().flatten() {
        let (from, to) = (&before["targets"][name]["breaker"], &target["breaker"]);
        if let (Some(from), Some(to)) = (from.as_str(), to.as_str()) {
            if from != to {
                // The breaker's transitions are fixed by their ends (a
                // sample may have missed a half-open in between).
                let reason = match (from, to) {
                    (_, "half_open") => "open_wait_elapsed",
                    ("half_open", "open") => "probe_failed",
                    (_, "open") => "failure_threshold",
                    _ => "probe_succeeded",
                };
                events.push(json!({
                    "event": "breaker", "target": name, "endpoint": target["endpoint"],
                    "from": from, "to": to, "reason": reason,
                }));
            }
        }
    }
    let alive = |doc: &Value| doc["peer"]["alive"] == true;
    if alive(before) != alive(now) {
        let peer = &now["peer"];
        events.push(json!({
            "event": "peer", "alive": alive(now), "node": peer["node"], "role": peer["role"],
            "last_heartbeat_age_s": peer["last_heartbeat_age_s"],
        }));
    }
    for (name, stream) in now["streams"].as_object().into_iter().flatten() {
        let was = &before["streams"][name]["up"];
        if was.is_boolean() && *was != stream["up"] {
            events.push(json!({
                "event": "stream", "stream": name, "endpoint": stream["endpoint"], "up": stream["up"],
            }));
        }
    }
    let grew = |a: &Value, z: &Value| {
        z.as_u64()
            .unwrap_or(0)
            .saturating_sub(a.as_u64().unwrap_or(0))
    };
    let refused = grew(&before["curve_refused_total"], &now["curve_refused_total"]);
    if refused > 0 {
        events.push(json!({
            "event": "curve_refused", "count": refused, "total": now["curve_refused_total"],
        }));
    }
    for (reason, total) in now["heartbeats_rejected_total"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let count = grew(&before["heartbeats_rejected_total"][reason], total);
        if count > 0 {
            events.push(json!({
                "event": "heartbeats_rejected", "reason": reason, "count": count, "total": total,
            }));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot(status: Value, taken: Instant, answered: &[(f64, u64)]) -> Snapshot {
        Snapshot {
            status,
            durations: vec![Durations {
                target: "pc2".into(),
                sum_s: 0.0,
                count: answered.iter().map(|(_, c)| c).sum(),
                buckets: answered.to_vec(),
            }],
            serving: true,
            problems: Vec::new(),
            taken,
        }
    }

    fn status(requests: u64, errors: u64, breaker: &str, alive: bool) -> Value {
        json!({
            "role": "active", "requests_total": requests, "clients_connected": 2,
            "errors_total": {"timeout": errors, "unknown_target": 0},
            "peer": {"alive": alive, "node": "secondary", "role": "passive"},
            "targets": {"pc2": {"requests_total": requests, "in_flight": 3, "breaker": breaker,
                                 "endpoint": "tcp://127.0.0.1:1"}},
            "streams": {"dw": {"up": true, "published_total": requests * 2}},
            "curve_refused_total": errors,
            "heartbeats_rejected_total": {"bad_auth": 0, "stale": errors},
        })
    }

    const BOUNDS: [f64; 3] = [0.001, 0.002, f64::MAX];

    #[test]
    fn a_sample_holds_the_rates_and_latencies_of_the_last_second() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        let first = snapshot(
            status(100, 1, "closed", true),
            t0,
            &[(BOUNDS[0], 50), (BOUNDS[1], 0), (BOUNDS[2], 0)],
        );
        assert!(sampler.observe(first, 1000.0).0.is_none());
        // 200 requests in 2 s; 100 answered, all between 1 and 2 ms.
        let later = t0 + Duration::from_secs(2);
        let second = snapshot(
            status(300, 5, "closed", true),
            later,
            &[(BOUNDS[0], 50), (BOUNDS[1], 100), (BOUNDS[2], 0)],
        );
        let (sample, events) = sampler.observe(second.clone(), 1002.0);
        let doc = sample.unwrap().to_json();
        assert_eq!(doc["seq"], 1);
        assert_eq!(doc["requests_per_s"], 100.0);
        assert_eq!(doc["errors_per_s"], 2.0);
        assert_eq!(doc["p50_ms"], 1.5);
        assert_eq!(doc["p99_ms"], 1.99);
        assert_eq!(doc["in_flight"], 3);
        assert_eq!(doc["targets"]["pc2"]["requests_per_s"], 100.0);
        assert_eq!(doc["streams"]["dw"]["messages_per_s"], 200.0);
        assert_eq!(doc["role"], "active");
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["curve_refused", "heartbeats_rejected"]);
        assert_eq!(events[1]["count"], 4);
        // The same snapshot again (the relay has not published): no sample.
        assert!(sampler.observe(second, 1003.0).0.is_none());
        // Nothing answered: no latency, and the JSON says null.
        let third = snapshot(
            status(300, 5, "open", false),
            later + Duration::from_secs(1),
            &[(BOUNDS[0], 50), (BOUNDS[1], 100), (BOUNDS[2], 0)],
        );
        let (sample, events) = sampler.observe(third, 1003.0);
        let doc = sample.unwrap().to_json();
        assert_eq!(doc["p99_ms"], Value::Null);
        assert_eq!(doc["requests_per_s"], 0.0);
        assert_eq!(
            events[0],
            json!({"event": "breaker", "target": "pc2", "endpoint": "tcp://127.0.0.1:1",
            "from": "closed", "to": "open", "reason": "failure_threshold"})
        );
        assert_eq!(events[1]["event"], "peer");
        assert_eq!(events[1]["alive"], false);
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes_and_since_returns_what_is_new() {
        let history = History::shared();
        let journal = super::super::journal::Journal::shared();
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        for i in 0..(CAPACITY as u64 + 100) {
            let taken = t0 + Duration::from_secs(i);
            let s = snapshot(
                status(i * 10, 0, "closed", true),
                taken,
                &[(BOUNDS[0], i), (BOUNDS[1], 0), (BOUNDS[2], 0)],
            );
            let observed = sampler.observe(s, i as f64);
            record(&history, &journal, i as f64, observed);
        }
        let history = history.lock().unwrap();
        let doc = history.document(0);
        let samples = doc["samples"].as_array().unwrap();
        assert_eq!(samples.len(), CAPACITY);
        assert_eq!(doc["seq"], CAPACITY as u64 + 99);
        assert_eq!(samples[0]["seq"], 100);
        assert_eq!(samples[CAPACITY - 1]["requests_per_s"], 10.0);
        let newer = history.document(CAPACITY as u64 + 97);
        assert_eq!(newer["samples"].as_array().unwrap().len(), 2);
        assert_eq!(history.document(u64::MAX)["samples"], json!([]));
        assert!(journal.lock().unwrap().document(0, 10)["events"]
            .as_array()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        assert!(quantile_ms(&[], 0.99).is_nan());
        assert!(quantile_ms(&[(0.001, 0), (f64::MAX, 0)], 0.5).is_nan());
        let b = [(0.001, 10), (0.002, 10), (f64::MAX, 0)];
        assert_eq!(quantile_ms(&b, 0.5), 1.0);
        assert_eq!(quantile_ms(&b, 0.75), 1.5);
        // Past the last finite bound: that bound.
        let slow = [(0.001, 1), (0.002, 0), (f64::MAX, 99)];
        assert_eq!(quantile_ms(&slow, 0.99), 2.0);
    }

    /// What the ring costs: printed with `--nocapture`, bounded here.
    #[test]
    fn memory_per_sample() {
        let sample = std::mem::size_of::<Sample>();
        let target = std::mem::size_of::<TargetSample>();
        let stream = std::mem::size_of::<StreamSample>();
        println!("sample {sample} B, per target {target} B, per stream {stream} B");
        assert!(sample <= 96, "{sample}");
        assert!(target <= 32 && stream <= 24, "{target} {stream}");
    }
}
