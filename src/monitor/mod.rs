//! HTTP monitoring (DESIGN §5): `GET /health`, `/status`, `/metrics`, and
//! the operator's page: `GET /` with its data, `/history` and `/events`.
//!
//! A thread of its own serves them ([`server`]) from a [`Snapshot`] that the
//! relay loop replaces a few times a second; it never touches a ZeroMQ
//! socket and never waits on the relay, so neither a slow scraper nor an
//! abusive client can slow the relay, and none can starve another client
//! of `/health`. `/metrics` is encoded ([`metrics`]) from the same status
//! document that `/status` shows, so the two always agree.
//!
//! This module decides the answers (pure, unit-tested); `server` owns the
//! sockets and the limits.
//!
//! | file | what it owns |
//! | --- | --- |
//! | `mod.rs` | which answer a path gets |
//! | [`server`] | the sockets, the limits, the headers, the sampler's timer |
//! | [`metrics`] | `/metrics` in either exposition format |
//! | [`history`] | `/history`: a sample a second from the snapshots, 15 minutes kept |
//! | [`journal`] | `/events`: the relay's events and what the samples saw change |
//! | `page/` | the page itself: HTML, CSS, JavaScript and icon, compiled in, served as they are |

mod history;
mod journal;
mod metrics;
mod server;

pub use journal::{Journal, Shared as SharedJournal};
pub use metrics::Durations;
pub use server::{start, unix_now};

use metrics::{metrics, Format};

use serde_json::{json, Value};
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
    /// What is wrong without stopping the bridge from serving (e.g. "stream
    /// thread stopped"): `/health` lists them and stays 200.
    pub problems: Vec<String>,
    pub taken: Instant,
}

pub type Shared = Arc<Mutex<Snapshot>>;

const JSON: &str = "application/json";

/// The page's files: `(path, content type, body)`.
const PAGE: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("page/index.html"),
    ),
    (
        "/page.css",
        "text/css; charset=utf-8",
        include_str!("page/page.css"),
    ),
    (
        "/page.js",
        "text/javascript; charset=utf-8",
        include_str!("page/page.js"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_str!("page/favicon.svg"),
    ),
];

/// The newest events `/events` returns unless `limit` says otherwise.
const EVENTS_LIMIT: usize = 100;

/// What the monitor keeps besides the snapshot.
#[derive(Debug, Clone)]
pub struct Records {
    pub history: history::Shared,
    pub journal: journal::Shared,
}

/// `(status code, content type, body)` for a GET of `url` (path and query),
/// with the request's `Accept` header; `/health` says 503 when the snapshot
/// is older than `stale`: the relay loop is stuck. `/health?role=active`
/// (or `passive`) also says 503 when the bridge is healthy in the other
/// role: keepalived asks it to move the floating address to the machine
/// whose bridge holds the primary port (deploy/keepalived). Another role
/// value is a 400 naming the two.
fn respond(
    url: &str,
    accept: Option<&str>,
    snapshot: Option<Snapshot>,
    stale: Duration,
    records: &Records,
) -> (u16, &'static str, String) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if let Some((_, content_type, body)) = PAGE.iter().find(|(p, _, _)| *p == path) {
        return (200, content_type, body.to_string());
    }
    match path {
        "/history" => {
            return match number(query, "since") {
                Ok(since) => {
                    let doc = records
                        .history
                        .lock()
                        .map(|h| h.document(since.unwrap_or(0)));
                    (200, JSON, doc.unwrap_or_default().to_string())
                }
                Err(e) => e,
            };
        }
        "/events" => {
            return match (number(query, "since"), number(query, "limit")) {
                (Ok(since), Ok(limit)) => {
                    let limit = limit.map_or(EVENTS_LIMIT, |l| l as usize);
                    let doc = records
                        .journal
                        .lock()
                        .map(|j| j.document(since.unwrap_or(0), limit));
                    (200, JSON, doc.unwrap_or_default().to_string())
                }
                (Err(e), _) | (_, Err(e)) => e,
            };
        }
        _ => {}
    }
    let Some(snapshot) = snapshot else {
        return (
            500,
            JSON,
            json!({"status": "error", "message": "no snapshot"}).to_string(),
        );
    };
    match path {
        "/health" => {
            let role = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("role="));
            match role {
                Some(want) if !ROLES.contains(&want) => (
                    400,
                    JSON,
                    json!({"status": "error", "message": format!(
                        "unknown role {:?}: /health?role= takes {} (lower case)",
                        truncate(want),
                        ROLES.join(" or ")
                    )})
                    .to_string(),
                ),
                _ => health(&snapshot, stale, role),
            }
        }
        "/status" => (200, JSON, snapshot.status.to_string()),
        "/metrics" => {
            let format = Format::negotiate(accept);
            let text = metrics(&snapshot.status, snapshot.durations, format);
            (200, format.content_type(), text)
        }
        _ => (
            404,
            JSON,
            json!({"status": "error", "message": format!("no such path {:?}: try / (the page), /health, /status, /metrics, /history or /events", truncate(path))})
                .to_string(),
        ),
    }
}

/// The value of `key=N` in a query: `None` when absent, a 400 when not a
/// number.
fn number(query: &str, key: &str) -> Result<Option<u64>, (u16, &'static str, String)> {
    let Some(value) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| {
        let message = format!("{key}={:?} is not a whole number", truncate(value));
        (
            400,
            JSON,
            json!({"status": "error", "message": message}).to_string(),
        )
    })
}

/// The roles `/health?role=` takes; anything else (a typo in a check's
/// URL) is a 400, not a 503 that reads as "the other role".
const ROLES: [&str; 2] = ["active", "passive"];

/// A query value as shown in an error: at most 40 characters.
fn truncate(value: &str) -> String {
    value.chars().take(40).collect()
}

/// The health answer; with `want_role`, a healthy bridge in another role
/// is 503 too.
fn health(
    snapshot: &Snapshot,
    stale: Duration,
    want_role: Option<&str>,
) -> (u16, &'static str, String) {
    let age = snapshot.taken.elapsed();
    let role = snapshot.status["role"].clone();
    let (code, mut doc) = if age > stale {
        let reason = format!(
            "the relay loop has not reported for {:.1} s",
            age.as_secs_f64()
        );
        (
            503,
            json!({"status": "unavailable", "role": role, "reason": reason}),
        )
    } else if !snapshot.serving {
        let reason = "no frontend port is bound (starting or stopping)";
        (
            503,
            json!({"status": "unavailable", "role": role, "reason": reason}),
        )
    } else if let Some(want) = want_role.filter(|want| role != *want) {
        let reason = format!(
            "the role is {}, not {want}",
            role.as_str().unwrap_or("unknown")
        );
        (
            503,
            json!({"status": "unavailable", "role": role, "reason": reason}),
        )
    } else {
        (200, json!({"status": "ok", "role": role}))
    };
    if !snapshot.problems.is_empty() {
        doc["problems"] = json!(snapshot.problems);
    }
    (code, JSON, doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Records {
        Records {
            history: history::History::shared(),
            journal: Journal::shared(),
        }
    }

    fn snapshot(serving: bool, age: Duration, problems: &[&str]) -> Option<Snapshot> {
        Some(Snapshot {
            status: json!({"role": "active", "requests_total": 7, "targets": {}}),
            durations: Vec::new(),
            serving,
            problems: problems.iter().map(|p| p.to_string()).collect(),
            taken: Instant::now() - age,
        })
    }

    #[test]
    fn health_is_503_while_no_port_is_bound_or_the_loop_is_stuck() {
        let stale = Duration::from_secs(2);
        let (code, _, body) = respond(
            "/health",
            None,
            snapshot(true, Duration::ZERO, &[]),
            stale,
            &records(),
        );
        assert_eq!(code, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc, json!({"status": "ok", "role": "active"}));
        let (code, _, body) = respond(
            "/health",
            None,
            snapshot(false, Duration::ZERO, &[]),
            stale,
            &records(),
        );
        assert_eq!(code, 503);
        assert!(body.contains("no frontend port"), "{body}");
        let old = snapshot(true, Duration::from_secs(3), &[]);
        let (code, _, body) = respond("/health?x=1", None, old, stale, &records());
        assert_eq!(code, 503);
        assert!(body.contains("has not reported"), "{body}");
    }

    #[test]
    fn health_with_a_role_is_503_in_the_other_role() {
        let stale = Duration::from_secs(2);
        let now = || snapshot(true, Duration::ZERO, &[]);
        let (code, _, body) = respond("/health?role=active", None, now(), stale, &records());
        assert_eq!(code, 200, "{body}");
        let (code, _, body) = respond("/health?x=1&role=passive", None, now(), stale, &records());
        assert_eq!(code, 503);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc,
            json!({"status": "unavailable", "role": "active",
                   "reason": "the role is active, not passive"})
        );
        // A role that does not exist is a mistake in the URL: 400, named.
        for typo in ["", "ACTIVE", "null", "activ", "active%20"] {
            let (code, _, body) = respond(
                &format!("/health?role={typo}"),
                None,
                now(),
                stale,
                &records(),
            );
            assert_eq!(code, 400, "{typo}: {body}");
            let doc: Value = serde_json::from_str(&body).unwrap();
            let message = doc["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("unknown role {typo:?}"))
                    && message.contains("active or passive"),
                "{message}"
            );
        }
        // Unhealthy says why, whatever the role asked for.
        let stuck = snapshot(true, Duration::from_secs(3), &[]);
        let (code, _, body) = respond("/health?role=active", None, stuck, stale, &records());
        assert_eq!(code, 503);
        assert!(body.contains("has not reported"), "{body}");
    }

    #[test]
    fn health_lists_problems_and_stays_200_while_serving() {
        let stale = Duration::from_secs(2);
        let problems = snapshot(true, Duration::ZERO, &["stream thread stopped"]);
        let (code, _, body) = respond("/health", None, problems, stale, &records());
        assert_eq!(code, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["status"], "ok");
        assert_eq!(doc["problems"], json!(["stream thread stopped"]));
        let stopped = snapshot(false, Duration::ZERO, &["stream thread stopped"]);
        let (code, _, body) = respond("/health", None, stopped, stale, &records());
        assert_eq!(code, 503);
        assert!(body.contains("stream thread stopped"), "{body}");
    }

    #[test]
    fn metrics_come_in_the_format_the_accept_header_asks_for() {
        let stale = Duration::from_secs(2);
        let now = || snapshot(true, Duration::ZERO, &[]);
        let (code, content_type, body) = respond("/metrics", None, now(), stale, &records());
        assert_eq!(code, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            body.contains("# TYPE zbridge_requests_total counter"),
            "{body}"
        );
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let (_, content_type, body) =
            respond("/metrics", Some(prometheus), now(), stale, &records());
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(respond("/nope", None, now(), stale, &records()).0, 404);
    }

    #[test]
    fn the_page_and_its_data_are_served_and_bad_queries_are_400() {
        let stale = Duration::from_secs(2);
        let records = records();
        let (code, content_type, body) = respond("/", None, None, stale, &records);
        assert_eq!((code, content_type), (200, "text/html; charset=utf-8"));
        assert!(body.contains("<script src=\"/page.js\""), "{body}");
        let total: usize = PAGE.iter().map(|(_, _, body)| body.len()).sum();
        assert!(total < 100 * 1024, "the page is {total} bytes");
        for (path, _, _) in PAGE {
            assert_eq!(respond(path, None, None, stale, &records).0, 200, "{path}");
        }
        if let Ok(mut journal) = records.journal.lock() {
            journal.record(1.0, &json!({"event": "reloaded", "generation": 2}));
        }
        let now = || snapshot(true, Duration::ZERO, &[]);
        let (code, _, body) = respond("/events?since=0&limit=5", None, now(), stale, &records);
        assert_eq!(code, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["events"][0]["generation"], 2);
        let (code, _, body) = respond("/history", None, now(), stale, &records);
        assert_eq!(code, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["capacity"], 900);
        for bad in ["/history?since=x", "/events?since=-1", "/events?limit=1e3"] {
            let (code, _, body) = respond(bad, None, now(), stale, &records);
            assert_eq!(code, 400, "{bad}: {body}");
            assert!(body.contains("not a whole number"), "{body}");
        }
    }
}
