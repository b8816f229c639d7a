//! HTTP monitoring through a real HTTP client, and /metrics through the
//! official Prometheus parsers: values move with traffic and with a failover.

use crate::support::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// `GET url` through tests/peers/scrape.py; `parse` is "" (no parsing),
/// "--metrics" (ask for and parse OpenMetrics) or "--text" (the Prometheus
/// text format).
fn get(url: &str, parse: &str) -> Value {
    let mut command = Command::new("python3");
    command.arg(root().join("tests/peers/scrape.py")).arg(url);
    if !parse.is_empty() {
        command.arg(parse);
    }
    let out = command.output().expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("scrape output")
}

fn json_body(reply: &Value) -> Value {
    serde_json::from_str(reply["body"].as_str().unwrap()).unwrap()
}

/// The value of the sample `name` with label `label` (if any).
fn sample(scrape: &Value, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    scrape["samples"].as_array()?.iter().find_map(|s| {
        let matches = s[0] == name && label.is_none_or(|(k, v)| s[1][k] == v);
        matches.then(|| s[2].as_f64()).flatten()
    })
}

/// Every sample's name and labels, sorted.
fn series(scrape: &Value) -> Vec<String> {
    let mut all: Vec<String> = scrape["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}{}", s[0], s[1]))
        .collect();
    all.sort();
    all
}

#[test]
fn health_status_and_metrics_move_with_traffic_and_with_a_failover() {
    let pair = Pair::new(&[]);
    let (primary, secondary) = pair.start_both();
    let monitor = |b: &BridgeProcess| b.ready["monitor"].as_str().unwrap().to_string();
    let (p, s) = (monitor(&primary), monitor(&secondary));

    let health = get(&format!("{p}/health"), "");
    assert_eq!(health["code"], 200);
    assert_eq!(
        json_body(&health),
        serde_json::json!({"status": "ok", "role": "active"})
    );
    assert_eq!(
        json_body(&get(&format!("{s}/health"), ""))["role"],
        "passive"
    );
    let missing = get(&format!("{p}/nope"), "");
    assert_eq!(missing["code"], 404);

    for i in 0..5u8 {
        assert!(zbridge::lab::ask(
            &pair.primary_endpoint(),
            &[b"pc2", &[i]],
            Duration::from_secs(5)
        )
        .is_some());
    }
    assert!(wait_until(Duration::from_secs(5), || {
        json_body(&get(&format!("{p}/status"), ""))["targets"]["pc2"]["replies_total"] == 5
    }));
    let http_status = |url: &str| json_body(&get(&format!("{url}/status"), ""));
    assert!(http_status(&p)["throughput_rps"].as_f64().unwrap() > 0.0);

    // Clients connected, then disconnected, from libzmq's socket monitor.
    let clients = |url: &str| http_status(url)["clients_connected"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(5), || clients(&p) == 0));
    let connected: Vec<Dealer> = (0..3)
        .map(|_| {
            let d = Dealer::connect(&pair.primary_endpoint());
            d.call(&[br#"{"action":"ping"}"#]);
            d
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || clients(&p) == 3));
    drop(connected);
    assert!(wait_until(Duration::from_secs(5), || clients(&p) == 0));

    let scrape = get(&format!("{p}/metrics"), "--metrics");
    assert!(scrape["content_type"]
        .as_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert_eq!(
        sample(
            &scrape,
            "zbridge_target_replies_total",
            Some(("target", "pc2"))
        ),
        Some(5.0)
    );
    assert!(sample(&scrape, "zbridge_requests_total", None).unwrap() >= 5.0);
    assert_eq!(sample(&scrape, "zbridge_role", None), Some(1.0));
    assert_eq!(sample(&scrape, "zbridge_peer_alive", None), Some(1.0));
    assert_eq!(
        sample(
            &scrape,
            "zbridge_errors_total",
            Some(("code", "invalid_json"))
        ),
        Some(0.0)
    );
    // The request-duration histogram (DESIGN §5), which the parser checks
    // for order and consistency: five answered requests to pc2.
    let duration = |part: &str| {
        let name = format!("zbridge_request_duration_seconds_{part}");
        sample(&scrape, &name, Some(("target", "pc2")))
    };
    assert_eq!(duration("count"), Some(5.0));
    assert!(duration("sum").unwrap() > 0.0);
    let all = scrape["samples"].as_array().unwrap().iter();
    let pc2_buckets: Vec<&Value> = all
        .filter(|s| s[0] == "zbridge_request_duration_seconds_bucket" && s[1]["target"] == "pc2")
        .collect();
    assert!(pc2_buckets.len() >= 10, "{pc2_buckets:?}");
    let last = pc2_buckets.last().unwrap();
    assert_eq!(
        (last[1]["le"].as_str(), last[2].as_f64()),
        (Some("+Inf"), Some(5.0))
    );
    // The text format for scrapers that do not ask for OpenMetrics: the
    // same samples, through that format's own parser.
    let text = get(&format!("{p}/metrics"), "--text");
    assert_eq!(
        text["content_type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(series(&text), series(&scrape));
    let before = get(&format!("{s}/metrics"), "--metrics");
    assert_eq!(sample(&before, "zbridge_role", None), Some(0.0));

    primary.signal("KILL").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        let after = get(&format!("{s}/metrics"), "--metrics");
        sample(&after, "zbridge_role", None) == Some(1.0)
            && sample(&after, "zbridge_failovers_total", None) == Some(1.0)
    }));
    let after = get(&format!("{s}/metrics"), "--metrics");
    assert_eq!(sample(&after, "zbridge_peer_alive", None), Some(0.0));
    assert_eq!(
        json_body(&get(&format!("{s}/status"), ""))["redundancy"],
        "degraded"
    );
}
