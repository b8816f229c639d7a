//! HTTP monitoring through a real HTTP client, and /metrics through the
//! official Prometheus parsers and promtool: values move with traffic and
//! with a failover. Then the server against clients that misbehave: one
//! that never reads its answers, endless headers, other methods.

use crate::support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        assert!(zbridge_lab::ask(
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

/// The `HOST:PORT` of a bridge's monitoring server, once `/health` says
/// 200 (the ready line can come before the first snapshot that says so).
fn monitor_address(bridge: &BridgeProcess) -> String {
    let url = bridge.ready["monitor"].as_str().unwrap();
    let health = format!("{url}/health");
    assert!(
        wait_until(Duration::from_secs(5), || {
            zbridge_lab::http_get(&health, Duration::from_secs(1)).is_some()
        }),
        "{health} says 200"
    );
    url.trim_start_matches("http://").to_string()
}

/// `/health` answers 200 within a second, on a fresh connection.
fn health_answers_within_a_second(address: &str) -> Duration {
    let start = Instant::now();
    let body = zbridge_lab::http_get(&format!("http://{address}/health"), Duration::from_secs(1));
    let took = start.elapsed();
    assert!(body.is_some(), "/health answered 200");
    assert!(took < Duration::from_secs(1), "/health took {took:?}");
    took
}

/// One HTTP/1.1 answer on a keep-alive connection: status code, headers
/// (names in lower case) and body (none for HEAD).
fn read_answer(
    reader: &mut BufReader<TcpStream>,
    head: bool,
) -> (u16, Vec<(String, String)>, String) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let code = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; if head { 0 } else { length }];
    reader.read_exact(&mut body).unwrap();
    (code, headers, String::from_utf8(body).unwrap())
}

fn connect(address: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    BufReader::new(stream)
}

#[test]
fn only_get_and_head_are_served() {
    let bridge = bridge(&[]);
    let mut connection = connect(&monitor_address(&bridge));
    for method in ["POST", "DELETE", "TRACE"] {
        let request = format!("{method} /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        connection.get_mut().write_all(request.as_bytes()).unwrap();
        let (code, headers, body) = read_answer(&mut connection, false);
        assert_eq!(code, 405, "{method}: {body}");
        assert!(
            headers.contains(&("allow".into(), "GET, HEAD".into())),
            "{headers:?}"
        );
        assert!(body.contains("use GET, HEAD"), "{body}");
    }
    let request = "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n";
    connection.get_mut().write_all(request.as_bytes()).unwrap();
    let (code, headers, _) = read_answer(&mut connection, true);
    assert_eq!(code, 200);
    assert!(headers.iter().any(|(name, _)| name == "content-length"));
    // No body came with HEAD: the next answer starts right away.
    connection
        .get_mut()
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (code, _, body) = read_answer(&mut connection, false);
    assert_eq!((code, body.contains("\"ok\"")), (200, true), "{body}");
}

#[test]
fn twenty_gets_on_one_keep_alive_connection_are_each_answered() {
    let bridge = bridge(&[]);
    let mut connection = connect(&monitor_address(&bridge));
    let start = Instant::now();
    for i in 0..20 {
        let path = ["/health", "/metrics", "/status"][i % 3];
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        connection.get_mut().write_all(request.as_bytes()).unwrap();
        let (code, _, body) = read_answer(&mut connection, false);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(!body.is_empty(), "{path}");
    }
    // A figure, not a goal: docs/RELIABILITY.md has the measured one.
    println!("keep-alive: {:?} per answer", start.elapsed() / 20);
}

/// The bridge's end of `stream` is still established: the bridge has not
/// closed it. (Once closed, its end is in FIN-WAIT while the kernel holds
/// what the client never read; the client's end stays established, and
/// reading it would let the bridge write again.)
fn bridge_holds(stream: &TcpStream) -> bool {
    let (client, bridge) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let ends = format!("{:04X} {:04X}", bridge.port(), client.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |field: &str| field.rsplit(':').next().unwrap_or_default().to_string();
        format!("{} {}", port(fields[1]), port(fields[2])) == ends && fields[3] == "01"
    })
}

#[test]
fn a_client_that_never_reads_its_answers_blocks_nobody_and_is_dropped() {
    let bridge = bridge(&[]);
    let address = monitor_address(&bridge);
    // Warm up: the first scrape allocates what every scrape needs.
    assert!(
        zbridge_lab::http_get(&format!("http://{address}/metrics"), Duration::from_secs(2))
            .is_some()
    );
    let rss = bridge.rss_kb().unwrap();

    // A small receive window, so that the bridge's writes stall soon.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&address.parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    let mut greedy: TcpStream = socket.into();
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    let sent = Instant::now();
    greedy.write_all(requests.as_bytes()).unwrap();

    // While it stays open and unread, others are answered at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(health_answers_within_a_second(&address));
    }
    let grown = bridge.rss_kb().unwrap().saturating_sub(rss);
    assert!(grown < 4096, "RSS grew by {grown} KiB");
    // The bridge drops it a few seconds after its writes stall, though
    // the client keeps it open.
    assert!(
        wait_until(Duration::from_secs(15), || !bridge_holds(&greedy)),
        "the bridge closed the connection"
    );
    println!(
        "never-reading client: /health at most {slowest:?}, RSS +{grown} KiB, dropped after {:?}",
        sent.elapsed()
    );
    drop(greedy);
}

#[test]
fn endless_headers_are_cut_off_and_block_nobody() {
    let bridge = bridge(&[]);
    let address = monitor_address(&bridge);
    assert!(
        zbridge_lab::http_get(&format!("http://{address}/metrics"), Duration::from_secs(2))
            .is_some()
    );
    let rss = bridge.rss_kb().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each sends one header line that never ends: up to 64 MiB or 20 s,
    // or until the bridge closes the connection. Returns what it sent and
    // whether the bridge closed it.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&address).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut sent = 0;
                let chunk = vec![b'a'; 64 * 1024];
                if stream
                    .write_all(b"GET /health HTTP/1.1\r\nX-Endless: ")
                    .is_err()
                {
                    return (sent, true);
                }
                while sent < 64 << 20 && Instant::now() < deadline {
                    match stream.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return (sent, true),
                    }
                }
                (sent, false)
            })
        })
        .collect();
    let mut grown = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(health_answers_within_a_second(&address));
        grown = grown.max(bridge.rss_kb().unwrap().saturating_sub(rss));
    }
    let results: Vec<(usize, bool)> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    grown = grown.max(bridge.rss_kb().unwrap().saturating_sub(rss));
    println!("endless headers: sent {results:?}, /health at most {slowest:?}, RSS +{grown} KiB");
    assert!(results.iter().all(|(_, closed)| *closed), "{results:?}");
    assert!(grown < 4096, "RSS grew by {grown} KiB");
}

/// `promtool ARGS...` with `input` on stdin: exit code and output.
pub(crate) fn promtool(args: &[&str], input: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text.into_owned())
}

#[test]
fn metrics_pass_promtool_and_the_openmetrics_parser() {
    let pair = Pair::new(&[]);
    let bridge = pair.start("active");
    for i in 0..3u8 {
        assert!(zbridge_lab::ask(
            &pair.primary_endpoint(),
            &[b"pc2", &[i]],
            Duration::from_secs(5)
        )
        .is_some());
        // An error code too, so that every labelled family has a sample.
        zbridge_lab::ask(&pair.primary_endpoint(), &[b"{"], Duration::from_secs(5));
    }
    let url = format!("{}/metrics", bridge.ready["monitor"].as_str().unwrap());
    let text = get(&url, "--text");
    let body = text["body"].as_str().unwrap();
    assert!(
        body.contains("zbridge_request_duration_seconds_bucket{"),
        "{body}"
    );
    let (code, out) = promtool(&["check", "metrics"], body);
    assert_eq!(code, 0, "promtool check metrics: {out}\n{body}");
    // promtool reads the text format only; OpenMetrics goes through the
    // official OpenMetrics parser, which checks it strictly.
    let openmetrics = get(&url, "--metrics");
    assert!(openmetrics["content_type"]
        .as_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    assert_eq!(series(&openmetrics), series(&text));
}

#[test]
fn the_shipped_alerting_rules_pass_promtool() {
    let rules = root().join("deploy/prometheus/zbridge.rules.yml");
    let (code, out) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}");
    let tests = root().join("deploy/prometheus/zbridge.rules.test.yml");
    let (code, out) = promtool(&["test", "rules", tests.to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}");
}
