//! The operator's page (`GET /` on the monitoring port) in a real browser:
//! Debian's Chromium, headless, driven through the DevTools protocol by
//! tests/peers/browser.py. The page loads without a console error, shows
//! both bridges of a running pair, moves under load, shows a kill -9 of
//! the active on the survivor's page within two seconds, shows text from
//! the config as text, and counts a flood of forged heartbeats in one line. Screenshots go to `CARGO_TARGET_TMPDIR/page/`.
//!
//! Chromium is installed with apt-get if it is missing (and
//! websocket-client with pip); it runs with every host name but 127.0.0.1
//! unresolvable and its background services off, so it reaches nothing
//! but the bridges under test.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Install what the browser tests need when it is missing: Debian's
/// Chromium and the Python WebSocket client.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let found = |program: &str| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {program}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found("chromium") {
            let script = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium";
            let status = Command::new("sh").arg("-c").arg(script).status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "cannot install chromium with apt-get"
            );
        }
        let has_client = Command::new("python3")
            .args(["-c", "import websocket"])
            .status()
            .is_ok_and(|s| s.success());
        if !has_client {
            let requirements = root().join("tests/peers/requirements.txt");
            let pip = |extra: &[&str]| {
                Command::new("python3")
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(&requirements)
                    .args(extra)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            assert!(
                pip(&[]) || pip(&["--break-system-packages"]),
                "cannot install websocket-client with pip"
            );
        }
    });
}

/// A headless Chromium (its own process group, killed whole by its pid
/// when dropped) and the DevTools driver attached to its page.
struct Browser {
    chromium: Child,
    driver: Child,
    to_driver: ChildStdin,
    from_driver: Receiver<String>,
    profile: PathBuf,
}

impl Browser {
    fn start() -> Browser {
        install();
        let profile = std::env::temp_dir().join(format!(
            "zbridge-page-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-domain-reliability",
                "--disable-client-side-phishing-detection",
                "--no-pings",
                "--dns-prefetch-disable",
                "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let chromium = command.spawn().expect("start chromium");
        // Chromium writes the port it listens on into the profile.
        let active = profile.join("DevToolsActivePort");
        let mut port = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                port = std::fs::read_to_string(&active)
                    .ok()
                    .and_then(|s| s.lines().next()?.trim().parse::<u16>().ok());
                port.is_some()
            }),
            "chromium did not open its DevTools port"
        );
        let mut driver = Command::new("python3")
            .arg(root().join("tests/peers/browser.py"))
            .arg(port.unwrap().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the DevTools driver");
        let to_driver = driver.stdin.take().unwrap();
        let stdout = driver.stdout.take().unwrap();
        let (lines, from_driver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut browser = Browser {
            chromium,
            driver,
            to_driver,
            from_driver,
            profile,
        };
        let ready = browser.line(Duration::from_secs(20));
        assert_eq!(ready, "ready", "the DevTools driver attaches");
        browser
    }

    fn line(&mut self, timeout: Duration) -> String {
        self.from_driver
            .recv_timeout(timeout)
            .expect("the DevTools driver answers")
    }

    fn command(&mut self, command: Value) -> Value {
        writeln!(self.to_driver, "{command}").unwrap();
        self.to_driver.flush().unwrap();
        let answer: Value = serde_json::from_str(&self.line(Duration::from_secs(30))).unwrap();
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        answer
    }

    fn open(&mut self, url: &str) {
        self.command(json!({ "open": url }));
    }

    fn eval(&mut self, expression: &str) -> Value {
        self.command(json!({ "eval": expression }))["value"].take()
    }

    /// Console errors, uncaught exceptions and the browser's error log
    /// (failed loads, CSP refusals) of the page since it was opened.
    fn errors(&mut self) -> Vec<Value> {
        match self.command(json!({"errors": true}))["value"].take() {
            Value::Array(errors) => errors,
            other => panic!("errors: {other}"),
        }
    }

    fn screenshot(&mut self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        self.command(json!({ "screenshot": path }));
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// The text of the element `selector`.
    fn text(&mut self, selector: &str) -> String {
        let js = format!(
            "(document.querySelector({}) || {{}}).textContent || ''",
            json!(selector)
        );
        self.eval(&js).as_str().unwrap_or_default().to_string()
    }

    /// The events the page lists, newest first.
    fn events(&mut self) -> Vec<String> {
        let js = "Array.from(document.querySelectorAll('#events li')).map(li => li.textContent)";
        serde_json::from_value(self.eval(js)).unwrap_or_default()
    }

    /// How many points the chart `id` draws.
    fn points(&mut self, id: &str) -> usize {
        let js = format!(
            "Array.from(document.querySelectorAll('#{id} polyline')).map(p => p.getAttribute('points').trim().split(' ').length).reduce((a, b) => a + b, 0)"
        );
        self.eval(&js).as_u64().unwrap_or(0) as usize
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // The whole group: the browser and its renderer, GPU and zygote
        // processes.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{}", self.chromium.id()))
            .status();
        let _ = self.chromium.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn base(bridge: &BridgeProcess) -> String {
    bridge.ready["monitor"].as_str().unwrap().to_string()
}

/// The number a text starts with ("1,234.5" is 1234.5).
fn number(text: &str) -> f64 {
    let digits: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().unwrap_or(f64::NAN)
}

#[test]
fn the_page_shows_the_pair_live_and_a_kill_of_the_active_within_two_seconds() {
    let config = TempConfig::new("");
    let pair = Pair::new(&[&config.flag()]);
    let (primary, secondary) = pair.start_both();
    let mut browser = Browser::start();

    // The active's page: both bridges, healthy.
    browser.open(&format!("{}/", base(&primary)));
    assert!(
        wait_until(Duration::from_secs(5), || browser.text("#verdict")
            == "HEALTHY"),
        "verdict {:?}: {:?}",
        browser.text("#verdict"),
        browser.text("#why")
    );
    assert_eq!(browser.text("#this-role"), "active");
    assert_eq!(browser.text("#peer-role"), "passive");
    assert!(browser.text("#this-fields").contains("primary"));
    assert!(browser.text("#peer-fields").contains("secondary"));
    assert!(browser.text("#targets tbody").contains("pc2"));

    // Under load its numbers move and its charts draw points.
    let client = retrying_load(
        vec![pair.primary_endpoint(), pair.secondary_endpoint()],
        300.0,
        Duration::from_secs(6),
    );
    let load = std::thread::spawn(move || client.run().unwrap());
    let requests = |b: &mut Browser| {
        let js = "(document.querySelector('#targets tbody tr td:nth-child(10)') || {}).textContent || ''";
        number(b.eval(js).as_str().unwrap_or_default())
    };
    let before = requests(&mut browser);
    assert!(
        wait_until(Duration::from_secs(6), || {
            number(&browser.text("#chart-rps .now")) > 50.0 && browser.points("chart-rps") >= 3
        }),
        "requests/s {:?}, {} points",
        browser.text("#chart-rps .now"),
        browser.points("chart-rps")
    );
    assert!(requests(&mut browser) > before);
    assert!(browser.points("chart-p99") >= 1, "the p99 chart draws");
    browser.screenshot("primary-under-load.png");
    let report = load.join().unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logs no error: {errors:?}");

    // The passive's page, then a kill -9 of the active.
    browser.open(&format!("{}/", base(&secondary)));
    assert!(wait_until(Duration::from_secs(5), || {
        browser.text("#verdict") == "HEALTHY" && browser.text("#peer-role") == "active"
    }));
    assert_eq!(browser.text("#this-role"), "passive");
    primary.signal("KILL").unwrap();
    let killed = Instant::now();
    let seen = wait_until(Duration::from_secs(2), || {
        browser.text("#this-role") == "active"
            && browser
                .events()
                .first()
                .is_some_and(|e| e.contains("Failover") || e.contains("Peer lost"))
    });
    let took = killed.elapsed();
    assert!(
        seen,
        "within 2 s of the kill: role {:?}, events {:?}",
        browser.text("#this-role"),
        browser.events()
    );
    eprintln!("the survivor's page showed the takeover {took:?} after the kill");
    let events = browser.events();
    assert!(
        events.iter().any(|e| e.contains("passive → active")),
        "{events:?}"
    );
    // Degraded now: it runs alone, and the page says so, and why.
    assert!(wait_until(Duration::from_secs(3), || browser
        .text("#verdict")
        == "DEGRADED"));
    assert!(browser.text("#why").contains("no heartbeat from the peer"));
    assert!(browser.events().iter().any(|e| e.contains("Peer lost")));
    browser.screenshot("survivor-after-kill.png");

    // Text from the config is shown as text: a refused reload whose key is
    // markup lists the key, and no element or script comes of it.
    let markup = "<img src=x onerror=\"window.pwned=1\">";
    std::fs::write(&config.0, format!("'{markup}' = 1\n")).unwrap();
    secondary.signal("HUP").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || browser
            .events()
            .iter()
            .any(|e| e.contains("Reload refused") && e.contains(markup))),
        "{:?}",
        browser.events()
    );
    assert_eq!(browser.eval("document.querySelectorAll('img').length"), 0);
    assert_eq!(browser.eval("typeof window.pwned"), "undefined");
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logs no error: {errors:?}");
}

#[test]
fn a_flood_of_forged_heartbeats_is_one_counted_event_on_the_page() {
    use zbridge_protocol::heartbeat::{Node, Role};
    let peer_port = free_port();
    let mut args: Vec<String> = lone_bridge_flags()
        .into_iter()
        .filter(|f| !f.starts_with("--secondary-heartbeat-port"))
        .collect();
    args.extend([
        format!("--secondary-heartbeat-port={peer_port}"),
        "--auth-token=s3cret".into(),
        "--main-pc-addr=".into(),
        "--pc2-addr=".into(),
    ]);
    let bridge = BridgeProcess::spawn(exe(), &args).expect("bridge starts");
    let mut browser = Browser::start();
    browser.open(&format!("{}/", base(&bridge)));
    assert!(wait_until(Duration::from_secs(5), || browser
        .text("#verdict")
        == "DEGRADED"));
    // Someone on the peer's heartbeat port, without the token.
    let context = zmq::Context::new();
    let forger = context.socket(zmq::PUB).unwrap();
    forger.set_linger(0).unwrap();
    forger
        .bind(&format!("tcp://127.0.0.1:{peer_port}"))
        .unwrap();
    let forged = |seq: u64| {
        forged_heartbeat(Role::Passive, Node::Secondary, 1, 1, seq).encode(Some(b"guess"))
    };
    let rejected = |b: &mut Browser| -> Vec<String> {
        b.events()
            .into_iter()
            .filter(|e| e.contains("Heartbeats rejected: bad_auth"))
            .collect()
    };
    let mut seq = 0;
    let counted = wait_until(Duration::from_secs(10), || {
        for _ in 0..5 {
            seq += 1;
            forger.send(forged(seq), 0).unwrap();
        }
        let lines = rejected(&mut browser);
        lines.len() == 1 && lines[0].contains('×') && {
            let count = lines[0].rsplit('×').next().unwrap_or_default();
            number(count.split(", ").next().unwrap_or_default()) >= 100.0
        }
    });
    assert!(counted, "{:?}", browser.events());
    assert_eq!(rejected(&mut browser).len(), 1, "one line, counted");
    assert!(browser.text("#this-fields").contains("bad_auth"));
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logs no error: {errors:?}");
}

#[test]
fn the_page_and_its_data_carry_the_safety_headers() {
    let pair = Pair::new(&[]);
    let primary = pair.start("active");
    let base = base(&primary);
    for path in [
        "/",
        "/page.js",
        "/page.css",
        "/history",
        "/events",
        "/status",
    ] {
        let head = raw_get(&base, path);
        let lower = head.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            lower.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        assert!(lower.contains("cache-control: no-store"), "{path}: {head}");
        assert!(
            lower.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{path}: {head}"
        );
    }
    // Read-only: only GET and HEAD.
    let post = raw_request(
        &base,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    // /history and /events for scripts: samples come once a second, events
    // name what happened.
    assert!(wait_until(Duration::from_secs(5), || {
        let doc: Value = monitor(&primary, "history")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        doc["samples"].as_array().is_some_and(|s| s.len() >= 2)
    }));
    let events: Value = serde_json::from_str(&monitor(&primary, "events").unwrap()).unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(
        kinds.contains(&"ready") && kinds.contains(&"role"),
        "{events}"
    );
}

/// The status line and headers of `GET path`.
fn raw_get(base: &str, path: &str) -> String {
    let head = raw_request(
        base,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    head.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn raw_request(base: &str, request: &str) -> String {
    use std::io::Read;
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    // Until the head is in (and, with Connection: close, the rest).
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && !request.contains("close") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
