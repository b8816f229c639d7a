//! Two hosts: each bridge in its own network namespace, made and deleted by
//! the test, joined by a veth pair with addresses only inside them. Needs
//! root (CI runs as root).

use crate::support::netns::Namespaces;
use crate::support::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const ADDR: [&str; 2] = ["10.231.7.1", "10.231.7.2"];

/// Two namespaces joined by a veth pair (`eth0` in both); deleted when
/// dropped.
struct Hosts {
    ns: Namespaces,
}

impl Hosts {
    fn new() -> Hosts {
        let ns = Namespaces::new(&["a", "b"]);
        ns.veth((0, 1), ["eth0", "eth0"]);
        for (host, addr) in ADDR.iter().enumerate() {
            ns.ip(host, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
        let hosts = Hosts { ns };
        hosts.link(true);
        hosts
    }

    /// Bring the link between the two hosts up or down.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for host in 0..2 {
            self.ns.ip(host, &["link", "set", "eth0", state]);
        }
    }

    fn command(&self, host: usize, program: &std::path::Path) -> Command {
        self.ns.command(host, program)
    }

    /// A bridge on host 0 (primary) or 1 (secondary), the pair's peer on
    /// the other host.
    fn bridge(&self, host: usize) -> BridgeProcess {
        self.bridge_with(host, &["--main-pc-addr=", "--pc2-addr="])
    }

    fn bridge_with(&self, host: usize, extra: &[&str]) -> BridgeProcess {
        self.bridge_timed(host, ["0.1", "0.3"], extra)
    }

    /// A bridge with its heartbeat interval and timeout, in seconds.
    fn bridge_timed(&self, host: usize, timings: [&str; 2], extra: &[&str]) -> BridgeProcess {
        let mut command = self.command(host, exe());
        command.args([
            "run",
            if host == 0 {
                "--mode=active"
            } else {
                "--mode=passive"
            },
            &format!("--bind-host={}", ADDR[host]),
            &format!("--primary-host={}", ADDR[0]),
            &format!("--secondary-host={}", ADDR[1]),
            &format!("--heartbeat-interval={}", timings[0]),
            &format!("--heartbeat-timeout={}", timings[1]),
        ]);
        command.args(extra);
        BridgeProcess::start(command).expect("bridge starts in its namespace")
    }

    /// The status of the bridge on `host`, serving on `port`.
    fn status(&self, host: usize, port: u16) -> Option<Value> {
        let out = self
            .command(host, exe())
            .args(["status", "--timeout=1", "--endpoint"])
            .arg(format!("tcp://{}:{port}", ADDR[host]))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The role of each host's bridge (by whichever port it serves on).
    fn roles(&self) -> [Option<String>; 2] {
        [0, 1].map(|host| {
            [5600, 5601]
                .iter()
                .find_map(|&port| self.status(host, port))
                .and_then(|s| s["role"].as_str().map(str::to_string))
        })
    }
}

#[test]
fn a_cut_link_makes_two_actives_and_the_healed_link_leaves_one_by_epoch() {
    let hosts = Hosts::new();
    let primary = hosts.bridge(0);
    let secondary = hosts.bridge(1);
    assert!(
        wait_until(Duration::from_secs(10), || hosts.roles()
            == [Some("active".into()), Some("passive".into())]),
        "{:?}",
        hosts.roles()
    );
    assert!(wait_until(Duration::from_secs(5), || hosts
        .status(1, 5601)
        .is_some_and(|s| s["peer"]["alive"] == true)));

    let cut = std::time::Instant::now();
    hosts.link(false);
    let (took_over, _) = secondary
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "bound" && e["port"] == "primary"
        })
        .expect("the secondary becomes active on its host");
    // A cut link gives no proof of death: the timeout (300 ms from the
    // last heartbeat heard, which can be one 100 ms interval before the
    // cut, or more if it was sent late) runs out first, where a proof
    // would take milliseconds.
    assert!(
        took_over - cut >= Duration::from_millis(100),
        "{:?}",
        took_over - cut
    );
    secondary
        .wait_for_event(Duration::from_secs(1), |e| {
            e["event"] == "role" && e["reason"] == "peer_silent"
        })
        .expect("taken over on silence");
    assert_eq!(
        hosts.roles(),
        [Some("active".into()), Some("active".into())]
    );

    hosts.link(true);
    assert!(
        wait_until(Duration::from_secs(30), || hosts.roles()
            == [Some("passive".into()), Some("active".into())]),
        "one active after the heal, the one with the higher epoch: {:?}\n{}",
        hosts.roles(),
        primary.log().join("\n")
    );
    primary
        .wait_for_event(Duration::from_secs(1), |e| {
            e["event"] == "role" && e["reason"] == "peer_has_higher_epoch"
        })
        .expect("the primary stepped down by the epoch rule");
    // And it stays that way.
    for _ in 0..5 {
        assert_eq!(
            hosts.roles(),
            [Some("passive".into()), Some("active".into())]
        );
    }
    let doc = hosts.status(1, 5600).expect("status of the new active");
    assert_eq!(doc["epoch"], 2);
    assert_eq!(doc["redundancy"], "ok");
}

/// One request through `zbridge request` run on host 0: the reply frames,
/// or the error code the bridge answered.
fn request(hosts: &Hosts, payload: &str) -> Result<String, String> {
    let out = hosts
        .command(0, exe())
        .args(["request", "--timeout=3", "--target=pc2", "--endpoint"])
        .arg(format!("tcp://{}:5600", ADDR[0]))
        .arg(payload)
        .output()
        .expect("run zbridge request");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(["timeout", "backend_unavailable", "circuit_open"]
            .into_iter()
            .find(|code| stderr.contains(code))
            .unwrap_or(&stderr)
            .to_string())
    }
}

#[test]
fn a_cut_backend_link_opens_the_breaker_and_traffic_resumes_when_it_returns() {
    let hosts = Hosts::new();
    // The backend on host 1, the bridge on host 0.
    let (_service, pc2) = pc2_on_host_1(&hosts);
    let _bridge = hosts.bridge_with(
        0,
        &[
            "--main-pc-addr=",
            &pc2,
            "--request-timeout=0.3",
            "--breaker-failure-threshold=2",
            "--breaker-open-wait=0.5",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        request(&hosts, "before") == Ok("pc2\nbefore\n".into())
    }));

    hosts.link(false);
    let mut codes = Vec::new();
    for i in 0..10 {
        match request(&hosts, &format!("during-{i}")) {
            Err(code) => codes.push(code),
            Ok(reply) => panic!("a reply across a cut link: {reply}"),
        }
        if codes.last().is_some_and(|c| c == "circuit_open") {
            break;
        }
    }
    assert!(
        codes[0] == "timeout" || codes[0] == "backend_unavailable",
        "{codes:?}"
    );
    assert_eq!(
        codes.last().map(String::as_str),
        Some("circuit_open"),
        "{codes:?}"
    );

    hosts.link(true);
    // Traffic resumes by itself; each reply is the one to its own request.
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(30), || {
        n += 1;
        let payload = format!("after-{n}");
        request(&hosts, &payload) == Ok(format!("pc2\n{payload}\n"))
    }));
    for i in 0..5 {
        let payload = format!("then-{i}");
        assert_eq!(request(&hosts, &payload), Ok(format!("pc2\n{payload}\n")));
    }
}

/// The pyzmq REP service `pc2` on host 1, and the flag naming it.
fn pc2_on_host_1(hosts: &Hosts) -> (Process, String) {
    let python = hosts.command(1, std::path::Path::new("python3"));
    let host = format!("--host={}", ADDR[1]);
    let (service, _) = py_service_with(python, "pc2", 5602, &[&host]);
    (service, format!("--pc2-addr=tcp://{}:5602", ADDR[1]))
}

/// The library client on host 1 (`zbridge bench client`, 200 calls/s to
/// `pc2` for `seconds`), configured from the pair's hosts plus `keys`.
fn library_client_on_host_1(hosts: &Hosts, keys: &str, seconds: u32) -> (Process, TempConfig) {
    let config = TempConfig::new(&format!(
        "primary_host = \"{}\"\nsecondary_host = \"{}\"\n{keys}\
         [client]\nrequest_timeout = 1.0\nreconnect_delay = 0.1\nhold_down = 1.0\n",
        ADDR[0], ADDR[1]
    ));
    let mut client = hosts.command(1, exe());
    client.args([
        "bench",
        "client",
        &config.flag(),
        "--target=pc2",
        "--rate=200",
        &format!("--duration={seconds}"),
    ]);
    let (client, _) = Process::spawn(client, |l| l.starts_with("zbridge bench client")).unwrap();
    (client, config)
}

/// The library client's closing report, once it has exited: every call
/// answered, none lost.
fn lost_nothing(client: &mut Process) -> Value {
    assert!(client
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let report = client.events().pop().expect("the JSON line");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["ok"], report["sent"], "{report}");
    report
}

#[test]
fn a_client_whose_link_to_the_active_is_cut_fails_over_and_loses_nothing() {
    let hosts = Hosts::new();
    // The service and the client live on host 1, with the passive; the
    // active is on host 0, across the link that will be cut.
    let (_service, pc2) = pc2_on_host_1(&hosts);
    let _primary = hosts.bridge_with(0, &["--main-pc-addr=", &pc2]);
    let _secondary = hosts.bridge_with(1, &["--main-pc-addr=", &pc2]);
    assert!(wait_until(Duration::from_secs(10), || hosts.roles()
        == [Some("active".into()), Some("passive".into())]));
    let (mut client, _config) = library_client_on_host_1(&hosts, "heartbeat_timeout = 0.3\n", 4);
    // Load through the active, then its link goes silent: no disconnect,
    // no reset; only heartbeat silence shows it.
    assert!(wait_until(Duration::from_secs(5), || hosts
        .status(0, 5600)
        .is_some_and(
            |s| s["targets"]["pc2"]["replies_total"].as_u64() > Some(50)
        )));
    hosts.link(false);
    let report = lost_nothing(&mut client);
    // The load ran across the cut; every call sent was answered.
    assert!(report["sent"].as_u64().unwrap() >= 100, "{report}");
    assert!(report["failovers"].as_u64().unwrap() >= 1, "{report}");
    let gap = report["max_ms"].as_f64().unwrap();
    eprintln!("client-to-active link cut: longest call {gap:.1} ms");
    assert!(gap <= 1200.0, "at most request_timeout + 200 ms: {report}");
}

/// The active's process killed on a live host, at the design's default
/// timings (heartbeat 1 s, timeout 3 s): its heartbeat connection closes
/// and its frontend refuses a connect, which is the proof of death on two
/// hosts, so the passive takes over at once; the library client loses
/// nothing.
#[test]
fn kill_9_on_a_live_host_is_taken_over_at_once_and_the_library_client_loses_nothing() {
    let hosts = Hosts::new();
    let (_service, pc2) = pc2_on_host_1(&hosts);
    let timings = ["1", "3"];
    let primary = hosts.bridge_timed(0, timings, &["--main-pc-addr=", &pc2]);
    let secondary = hosts.bridge_timed(1, timings, &["--main-pc-addr=", &pc2]);
    assert!(wait_until(Duration::from_secs(15), || hosts.roles()
        == [Some("active".into()), Some("passive".into())]));
    assert!(wait_until(Duration::from_secs(5), || hosts
        .status(1, 5601)
        .is_some_and(|s| s["peer"]["alive"] == true)));
    let (mut client, _config) = library_client_on_host_1(&hosts, "", 3);
    assert!(wait_until(Duration::from_secs(5), || hosts
        .status(0, 5600)
        .is_some_and(
            |s| s["targets"]["pc2"]["replies_total"].as_u64() > Some(50)
        )));
    let killed = std::time::Instant::now();
    primary.signal("KILL").unwrap();
    let (took_over, _) = secondary
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "role" && e["to"] == "active"
        })
        .expect("the secondary takes over");
    let took = took_over - killed;
    eprintln!("two hosts, kill -9 of the active at 1 s / 3 s: takeover after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}: the timeout (3 s), not the proof; {:#?}",
        secondary.log()
    );
    secondary
        .wait_for_event(Duration::from_secs(1), |e| e["reason"] == "peer_died")
        .expect("taken over on the proof of death");
    lost_nothing(&mut client);
}

#[test]
fn a_cut_stream_upstream_resumes_by_itself_and_the_subscriber_is_told_the_gap() {
    let hosts = Hosts::new();
    // PC2's publisher on host 1; the bridge and a subscriber on host 0.
    let mut publisher = hosts.command(1, std::path::Path::new("python3"));
    publisher
        .arg(root().join("tests/peers/publisher.py"))
        .args([
            "--port=5598",
            &format!("--host={}", ADDR[1]),
            "--topics=a.",
            "--rate=200",
            "--count=100000",
        ]);
    let (_publisher, _) = Process::spawn(publisher, |l| l.starts_with("ready ")).unwrap();
    let config = TempConfig::new(&format!(
        "[streams.dream]\nendpoint = \"tcp://{}:5598\"\n",
        ADDR[1]
    ));
    let _bridge = hosts.bridge_with(0, &["--main-pc-addr=", "--pc2-addr=", &config.flag()]);
    let up = |want: bool| {
        hosts
            .status(0, 5600)
            .is_some_and(|s| s["streams"]["dream"]["up"] == want)
    };
    assert!(wait_until(Duration::from_secs(10), || up(true)));
    let mut subscriber = hosts.command(0, exe());
    subscriber.args([
        "subscribe",
        "--json",
        "--stream=dream",
        "--topic=a.",
        "--seconds=60",
        &format!("--endpoints=tcp://{}:5630", ADDR[0]),
    ]);
    let (subscriber, _) = Process::spawn(subscriber, |l| l.contains("\"frames\"")).unwrap();

    hosts.link(false);
    assert!(
        wait_until(Duration::from_secs(5), || up(false)),
        "the bridge notices the silent upstream"
    );
    hosts.link(true);
    assert!(
        wait_until(Duration::from_secs(10), || up(true)),
        "the stream reconnects by itself"
    );
    subscriber
        .wait_for_event(Duration::from_secs(10), |e| {
            e.get("gap").is_some_and(Value::is_null)
        })
        .expect("the subscriber is told that an unknown number was lost");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let lines = subscriber.events();
            let gap = lines.iter().position(|e| e.get("gap").is_some());
            gap.is_some_and(|g| lines[g..].iter().filter(|e| e["frames"].is_array()).count() >= 20)
        }),
        "the stream resumed: twenty messages after the gap"
    );
    let counters: Vec<u64> = subscriber
        .events()
        .iter()
        .filter_map(|e| e["frames"][1].as_str()?.parse().ok())
        .collect();
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "in order, once each: {counters:?}"
    );
}
