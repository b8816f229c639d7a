//! `/events`: the last [`CAPACITY`] things that happened to this bridge,
//! newest first, for the operator's page and for scripts.
//!
//! Two sources fill it: the relay loop's own event lines (`role` with its
//! reason, `reloaded`, `reload_rejected`, `bind_failed`, `bound`,
//! `released`, `ready`: the JSON lines `zbridge run` prints), recorded as
//! they are printed, and what the monitor's sampler sees change between two
//! snapshots ([`super::history`]: breaker transitions, the peer lost or
//! back, streams up or down, CURVE refusals and rejected heartbeats).
//!
//! Memory is bounded: at most [`CAPACITY`] events, each string in them cut
//! to [`MAX_STRING`] characters. Events that can come in floods (CURVE
//! refusals, rejected heartbeats, failed binds of a hung active's port) are
//! counted, not listed: one event per kind (and reason) holds a `count`
//! for up to [`COALESCE_S`] seconds, moved to the front each time it grows.
//!
//! Every event has an `id` (fixed) and a `seq` (from one counter, given
//! anew when a counted event grows), so `?since=SEQ` returns what is new or
//! changed since a script's last look. Pure: the caller passes the time.

use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Events kept.
pub const CAPACITY: usize = 256;
/// Characters kept of each string in an event.
pub const MAX_STRING: usize = 300;
/// How long one counted event keeps counting before a new one starts.
pub const COALESCE_S: f64 = 60.0;

/// The relay's events that are counted rather than listed.
const COUNTED: [&str; 3] = ["bind_failed", "curve_refused", "heartbeats_rejected"];

/// The ring, shared by the relay thread (which records its events) and the
/// monitor thread (which records what it sees and answers `/events`).
pub type Shared = Arc<Mutex<Journal>>;

#[derive(Debug, Default)]
pub struct Journal {
    /// Oldest first.
    events: VecDeque<Entry>,
    next_seq: u64,
    next_id: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    seq: u64,
    /// Unix seconds of the first occurrence.
    time: f64,
    /// Unix seconds of the last occurrence (counted events).
    last: f64,
    count: u64,
    /// `kind` plus, for counted events, the reason: what coalesces.
    key: String,
    /// The event's own fields (`event` and the rest).
    fields: Map<String, Value>,
}

impl Journal {
    pub fn shared() -> Shared {
        Arc::new(Mutex::new(Journal::default()))
    }

    /// Record `event` (a JSON object with an `"event"` kind) at `time` (unix
    /// seconds). Counted kinds carry their number in `count` (1 if absent).
    pub fn record(&mut self, time: f64, event: &Value) {
        let Some(object) = event.as_object() else {
            return;
        };
        let mut fields: Map<String, Value> = object
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "id" | "seq" | "time" | "last"))
            .map(|(key, value)| (key.clone(), cut(value)))
            .collect();
        let kind = fields
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        if COUNTED.contains(&kind.as_str()) {
            let count = fields.remove("count").and_then(|c| c.as_u64()).unwrap_or(1);
            let reason = fields.get("reason").and_then(Value::as_str).unwrap_or("");
            let key = format!("{kind}/{reason}");
            let recent = self
                .events
                .iter()
                .rposition(|e| e.key == key && time - e.time < COALESCE_S);
            if let Some(at) = recent {
                if let Some(mut entry) = self.events.remove(at) {
                    entry.count += count;
                    entry.last = time;
                    entry.seq = self.seq();
                    entry.fields = fields;
                    self.events.push_back(entry);
                }
                return;
            }
            self.push(time, key, count, fields);
        } else {
            self.push(time, kind, 1, fields);
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn push(&mut self, time: f64, key: String, count: u64, fields: Map<String, Value>) {
        self.next_id += 1;
        let entry = Entry {
            id: self.next_id,
            seq: self.seq(),
            time,
            last: time,
            count,
            key,
            fields,
        };
        if self.events.len() == CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(entry);
    }

    /// The `/events` document: the events with a `seq` above `since`,
    /// newest first, at most `limit`.
    pub fn document(&self, since: u64, limit: usize) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .rev()
            .filter(|e| e.seq > since)
            .take(limit)
            .map(|e| {
                let mut doc = Map::new();
                doc.insert("id".into(), e.id.into());
                doc.insert("seq".into(), e.seq.into());
                doc.insert("time".into(), json!(e.time));
                let counted = COUNTED.iter().any(|k| e.key.starts_with(&format!("{k}/")));
                if counted {
                    doc.insert("last".into(), json!(e.last));
                    doc.insert("count".into(), e.count.into());
                }
                doc.extend(e.fields.clone());
                Value::Object(doc)
            })
            .collect();
        json!({"capacity": CAPACITY, "seq": self.next_seq, "events": events})
    }
}

/// `value` with every string in it cut to [`MAX_STRING`] characters.
fn cut(value: &Value) -> Value {
    match value {
        Value::String(s) if s.chars().count() > MAX_STRING => {
            let mut short: String = s.chars().take(MAX_STRING).collect();
            short.push('…');
            Value::String(short)
        }
        Value::Array(items) => Value::Array(items.iter().take(32).map(cut).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .take(32)
                .map(|(k, v)| (k.chars().take(64).collect(), cut(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(doc: &Value) -> Vec<String> {
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn events_come_newest_first_and_since_returns_what_is_new() {
        let mut journal = Journal::default();
        journal.record(10.0, &json!({"event": "ready", "role": "passive"}));
        journal.record(
            11.0,
            &json!({"event": "role", "from": "passive", "to": "active", "reason": "peer_died"}),
        );
        let doc = journal.document(0, 100);
        assert_eq!(kinds(&doc), ["role", "ready"]);
        assert_eq!(doc["events"][0]["reason"], "peer_died");
        assert_eq!(doc["events"][0]["time"], 11.0);
        assert_eq!(doc["seq"], 2);
        let seq = doc["seq"].as_u64().unwrap();
        journal.record(12.0, &json!({"event": "reloaded", "generation": 2}));
        assert_eq!(kinds(&journal.document(seq, 100)), ["reloaded"]);
        assert_eq!(kinds(&journal.document(0, 1)), ["reloaded"]);
        // Not an object: ignored, never a panic.
        journal.record(13.0, &json!("role"));
        assert_eq!(
            journal.document(0, 100)["events"].as_array().unwrap().len(),
            3
        );
    }

    #[test]
    fn floods_are_counted_in_one_event_per_reason_and_minute() {
        let mut journal = Journal::default();
        journal.record(0.0, &json!({"event": "role", "to": "active"}));
        for i in 0..1000 {
            let reason = if i % 2 == 0 { "bad_auth" } else { "stale" };
            journal.record(
                1.0 + i as f64 / 100.0,
                &json!({"event": "heartbeats_rejected", "reason": reason, "count": 3}),
            );
        }
        let doc = journal.document(0, 100);
        assert_eq!(
            kinds(&doc),
            ["heartbeats_rejected", "heartbeats_rejected", "role"]
        );
        assert_eq!(doc["events"][0]["reason"], "stale");
        assert_eq!(doc["events"][0]["count"], 1500);
        assert_eq!(doc["events"][1]["count"], 1500);
        assert_eq!(doc["events"][1]["time"], 1.0);
        // A grown event is new to a script that looked before it grew.
        let seq = doc["seq"].as_u64().unwrap();
        journal.record(
            20.0,
            &json!({"event": "heartbeats_rejected", "reason": "stale"}),
        );
        let new = journal.document(seq, 100);
        assert_eq!(new["events"][0]["count"], 1501);
        assert_eq!(new["events"][0]["last"], 20.0);
        // A minute later, a new event starts counting.
        journal.record(
            62.0,
            &json!({"event": "heartbeats_rejected", "reason": "stale"}),
        );
        assert_eq!(journal.document(0, 100)["events"][0]["count"], 1);
    }

    #[test]
    fn memory_is_bounded_in_events_and_in_string_length() {
        let mut journal = Journal::default();
        let long = "x".repeat(10_000);
        for i in 0..(CAPACITY + 50) {
            journal.record(
                i as f64,
                &json!({"event": "reload_rejected", "key": "targets", "message": long}),
            );
        }
        let doc = journal.document(0, usize::MAX);
        let events = doc["events"].as_array().unwrap();
        assert_eq!(events.len(), CAPACITY);
        assert_eq!(events[0]["time"], (CAPACITY + 49) as f64);
        let message = events[0]["message"].as_str().unwrap();
        assert_eq!(message.chars().count(), MAX_STRING + 1);
    }
}
