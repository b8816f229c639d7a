//! CURVE (issue 16): real bridges with keys from `zbridge keygen`, pyzmq
//! agents, services, subscribers and a forger with and without keys, a
//! capture on a namespace veth, failovers under the client library.

use crate::support::netns::Namespaces;
use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use zbridge_client::curve::{read_public, ClientKeys, KeyPair};
use zbridge_client::{Client, ClientConfig};
use zbridge_lab::ClientLoad;

/// Key files made by `zbridge keygen` in a directory of their own: the
/// pair's, an allowed client's (its .pub in `clients/`), a stranger's.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "zbridge-keys-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("clients")).unwrap();
        let keys = Keys { dir };
        for name in ["bridge.key", "agent.key", "stranger.key"] {
            keygen(&keys.dir.join(name));
        }
        std::fs::copy(
            keys.dir.join("agent.key.pub"),
            keys.dir.join("clients/agent.pub"),
        )
        .unwrap();
        keys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The bridge flags that turn CURVE on, with the allowed clients.
    fn flags(&self) -> Vec<String> {
        vec![
            format!("--curve-secret-key-file={}", self.s("bridge.key")),
            format!("--curve-clients={}", self.s("clients")),
        ]
    }

    /// One request through `frontend` by a pyzmq client with the secret
    /// key file `name` (and the bridge's public key): its reply, or `None`.
    fn ask_as(&self, frontend: &str, name: &str) -> Option<Vec<String>> {
        let server = self.path("bridge.key.pub");
        py_request(frontend, Some(&server), Some(&self.path(name)), "k", 1.0)
    }

    /// A CURVE client's keys (`name`: its secret file) for the bridge.
    fn client(&self, name: &str) -> ClientKeys {
        ClientKeys {
            server: read_public(&self.path("bridge.key.pub"), "test").unwrap(),
            pair: KeyPair::read(&self.path(name), "test").unwrap(),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `zbridge keygen PATH`, run to its end.
fn run_keygen(path: &Path) -> std::process::Output {
    Command::new(exe())
        .arg("keygen")
        .arg(path)
        .output()
        .unwrap()
}

fn keygen(path: &Path) -> String {
    let out = run_keygen(path);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn peer_command(mode: &str) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(root().join("tests/peers/curve_peer.py"))
        .arg(mode);
    command
}

/// One request `[pc2, payload]` by a pyzmq DEALER: with the bridge's
/// public key and the secret key file `key` (a fresh pair if `None`), or
/// without CURVE when `server` is `None`. The reply frames, or `None`.
fn py_request(
    endpoint: &str,
    server: Option<&Path>,
    key: Option<&Path>,
    payload: &str,
    timeout: f64,
) -> Option<Vec<String>> {
    let mut command = peer_command("request");
    command.arg(format!("--endpoint={endpoint}"));
    command.arg(format!("--timeout={timeout}"));
    if let Some(server) = server {
        command.arg(format!("--server-key-file={}", server.display()));
    }
    if let Some(key) = key {
        command.arg(format!("--key-file={}", key.display()));
    }
    let out = command.args(["pc2", payload]).output().unwrap();
    let line: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    line["reply"].as_array().map(|frames| {
        frames
            .iter()
            .map(|f| f.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

/// A pyzmq REP service (a CURVE server with `key` when given) as target
/// `pc2`, run by `python`; returns it with its port.
fn py_curve_service(mut python: Command, key: Option<&Path>, extra: &[String]) -> (Process, u16) {
    python
        .arg(root().join("tests/peers/curve_peer.py"))
        .arg("serve")
        .args(extra);
    if let Some(key) = key {
        python.arg(format!("--key-file={}", key.display()));
    }
    let (process, line) =
        Process::spawn(python, |l| l.starts_with("ready ")).expect("service starts");
    (process, line["ready ".len()..].trim().parse().unwrap())
}

fn refused(bridge: &BridgeProcess) -> u64 {
    monitor_status(bridge)["curve_refused_total"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn the_build_has_curve() {
    // The same libzmq as the bridge's (one build of zmq-sys): without
    // libsodium, CURVE would be missing and this would say so.
    assert_eq!(
        zmq::has("curve"),
        Some(true),
        "libzmq was built without CURVE: crates/zeromq-src-curve and the [patch] in Cargo.toml must be in force"
    );
    let keys = Keys::new();
    let config = TempConfig::new(&format!(
        "curve_secret_key_file = \"{}\"\ncurve_clients = \"{}\"\n",
        keys.s("bridge.key"),
        keys.s("clients")
    ));
    let out = check(&config.0, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("1 client key(s) admitted"), "{text}");
}

#[test]
fn keygen_writes_a_private_secret_and_check_config_refuses_a_readable_one() {
    let keys = Keys::new();
    let secret = keys.path("bridge.key");
    let text = std::fs::read_to_string(&secret).unwrap();
    assert_eq!(text.trim().len(), 40);
    assert_eq!(text.lines().count(), 1);
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = std::fs::read_to_string(keys.path("bridge.key.pub")).unwrap();
    assert_eq!(public.trim().len(), 40);
    // Never over a key in use.
    let again = run_keygen(&secret);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), text);
    // A secret others may read: exit 2, the file and the fix named, the
    // secret nowhere.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let empty = TempConfig::new("");
    let out = check(
        &empty.0,
        &[format!("--curve-secret-key-file={}", secret.display())],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("chmod 600") && err.contains("bridge.key"),
        "{err}"
    );
    assert!(!err.contains(text.trim()), "{err}");
    // A bad server key of a target: exit 2, the key named.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = TempConfig::new(&format!(
        "curve_secret_key_file = \"{}\"\n[targets.svc]\nendpoint = \"tcp://127.0.0.1:1\"\ncurve_server_key = \"short\"\n",
        keys.s("bridge.key")
    ));
    let out = check(&config.0, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("targets.svc.curve_server_key"), "{err}");
}

#[test]
fn only_allowed_clients_are_served_the_rest_are_refused_counted_and_get_nothing() {
    let keys = Keys::new();
    let (_service, port) = py_curve_service(Command::new("python3"), None, &[]);
    let mut flags = keys.flags();
    flags.push(format!("--pc2-addr=tcp://127.0.0.1:{port}"));
    let bridge = bridge(&flags);
    let server = keys.path("bridge.key.pub");
    let frontend = bridge.frontend.clone();

    let reply = py_request(
        &frontend,
        Some(&server),
        Some(&keys.path("agent.key")),
        "hello",
        5.0,
    );
    assert_eq!(
        reply,
        Some(vec!["curve".into(), "hello".into()]),
        "the allowed agent is served"
    );
    let stranger = py_request(
        &frontend,
        Some(&server),
        Some(&keys.path("stranger.key")),
        "x",
        1.0,
    );
    assert_eq!(stranger, None, "a key not in curve_clients gets nothing");
    // Counted per connection attempt (libzmq reconnects a refused client).
    assert!(
        wait_until(Duration::from_secs(2), || refused(&bridge) >= 1),
        "the stranger is counted: {}",
        monitor_status(&bridge)
    );
    let before = refused(&bridge);
    let plain = py_request(&frontend, None, None, "x", 1.0);
    assert_eq!(plain, None, "a client without CURVE gets nothing");
    assert!(
        wait_until(Duration::from_secs(2), || refused(&bridge) > before),
        "the plain client is counted: {}",
        monitor_status(&bridge)
    );
    let metrics = monitor(&bridge, "metrics").unwrap();
    assert!(
        metrics.contains(&format!("zbridge_curve_refused_total {}", refused(&bridge)))
            || metrics.contains("zbridge_curve_refused_total "),
        "{metrics}"
    );
    // Nothing of theirs went through: one request relayed, the agent's.
    assert_eq!(monitor_status(&bridge)["requests_total"], 1);
    let log = bridge.log().join("\n");
    assert!(log.contains("CURVE client refused"), "{log}");
    let secret = std::fs::read_to_string(keys.path("bridge.key")).unwrap();
    assert!(!log.contains(secret.trim()), "the secret is never logged");
}

#[test]
fn a_plain_port_beside_the_curve_port_serves_clients_not_yet_moved() {
    let keys = Keys::new();
    let (_service, port) = py_curve_service(Command::new("python3"), None, &[]);
    let plain_port = free_port();
    let mut flags = keys.flags();
    flags.push(format!("--pc2-addr=tcp://127.0.0.1:{port}"));
    flags.push(format!("--plain-primary-port={plain_port}"));
    let bridge = bridge(&flags);
    let plain = format!("tcp://127.0.0.1:{plain_port}");
    assert_eq!(
        py_request(&plain, None, None, "old", 5.0).map(|r| r[1].clone()),
        Some("old".into()),
        "a plain agent on the plain port"
    );
    assert_eq!(
        py_request(
            &bridge.frontend,
            Some(&keys.path("bridge.key.pub")),
            Some(&keys.path("agent.key")),
            "new",
            5.0
        )
        .map(|r| r[1].clone()),
        Some("new".into()),
        "a CURVE agent on the CURVE port"
    );
    assert_eq!(py_request(&bridge.frontend, None, None, "x", 1.0), None);
}

#[test]
fn a_reload_admits_a_key_added_to_curve_clients_and_drops_a_removed_one() {
    let keys = Keys::new();
    let (_service, port) = py_curve_service(Command::new("python3"), None, &[]);
    let config = TempConfig::new(&format!(
        "curve_secret_key_file = \"{}\"\ncurve_clients = \"{}\"\npc2_addr = \"tcp://127.0.0.1:{port}\"\n",
        keys.s("bridge.key"),
        keys.s("clients")
    ));
    let bridge = bridge(&[config.flag()]);
    let ask = |key: &str| keys.ask_as(&bridge.frontend, key);
    assert!(ask("stranger.key").is_none());
    // Rotation: the new key joins, both are allowed, then the old goes.
    std::fs::copy(keys.path("stranger.key.pub"), keys.path("clients/new.pub")).unwrap();
    bridge.signal("HUP").unwrap();
    assert!(bridge
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "reloaded")
        .is_some());
    assert!(ask("stranger.key").is_some(), "the new key is admitted");
    assert!(ask("agent.key").is_some(), "the old key still is");
    std::fs::remove_file(keys.path("clients/agent.pub")).unwrap();
    bridge.signal("HUP").unwrap();
    assert!(bridge
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "reloaded" && e["generation"] == 2
        })
        .is_some());
    assert!(ask("agent.key").is_none(), "the removed key is refused");
    assert!(ask("stranger.key").is_some());
}

#[test]
fn a_forged_heartbeat_without_the_pair_key_has_no_effect() {
    let keys = Keys::new();
    // The forger's own pair: a CURVE server that cannot prove the pair's key.
    keygen(&keys.path("forger.key"));
    let port = free_port();
    let mut forger = peer_command("forge");
    forger.args([
        format!("--port={port}"),
        format!("--key-file={}", keys.s("forger.key")),
    ]);
    let (_forger, _) = Process::spawn(forger, |l| l == "ready").unwrap();
    let peer = format!("--secondary-heartbeat-port={port}");
    // The bridge with the real pair's key, listening to the forger first.
    let mut flags = keys.flags();
    flags.push(peer.clone());
    let guarded = bridge(&flags);
    assert!(wait_until(Duration::from_secs(5), || monitor_status(
        &guarded
    )["role"]
        == "active"));
    // The control: a bridge that takes the forger's key for the pair's
    // hears it, and steps down before an active of a higher epoch.
    let mut fooled_flags = vec![format!("--curve-secret-key-file={}", keys.s("forger.key"))];
    fooled_flags.push(peer);
    let fooled = bridge(&fooled_flags);
    assert!(
        fooled
            .wait_for_event(Duration::from_secs(5), |e| {
                e["event"] == "role" && e["to"] == "passive"
            })
            .is_some(),
        "the control bridge hears the forger: {}",
        fooled.log().join("\n")
    );
    // By then the guarded bridge has been offered as many forged
    // heartbeats, and heard none.
    let doc = monitor_status(&guarded);
    assert_eq!(doc["role"], "active", "{doc}");
    assert_eq!(doc["peer"]["alive"], false, "{doc}");
    assert!(
        !guarded
            .events()
            .iter()
            .any(|e| e["event"] == "role" && e["to"] == "passive"),
        "{:?}",
        guarded.events()
    );
    let rejected = doc["heartbeats_rejected_total"].as_object().unwrap();
    assert!(
        rejected.values().all(|v| v == 0),
        "nothing even reached the verifier: {doc}"
    );
}

/// A publisher (tests/peers/publisher.py with `publisher_flags`) and a
/// lone CURVE bridge republishing it as `dream` (its table's `extra` TOML
/// lines) on a pub port: the processes, the config, the pub port.
fn curve_stream(
    keys: &Keys,
    publisher_flags: &[&str],
    extra: &str,
) -> (Process, BridgeProcess, TempConfig, u16) {
    let mut publisher = Command::new("python3");
    publisher
        .arg(root().join("tests/peers/publisher.py"))
        .arg("--port=0")
        .args(publisher_flags);
    let (publisher, line) = Process::spawn(publisher, |l| l.starts_with("ready ")).unwrap();
    let upstream: u16 = line["ready ".len()..].trim().parse().unwrap();
    let config = TempConfig::new(&format!(
        "[streams.dream]\nendpoint = \"tcp://127.0.0.1:{upstream}\"\n{extra}"
    ));
    let pub_port = free_port();
    let mut flags = keys.flags();
    flags.extend([
        config.flag(),
        format!("--primary-pub-port={pub_port}"),
        format!("--secondary-pub-port={}", free_port()),
    ]);
    (publisher, bridge(&flags), config, pub_port)
}

/// tests/peers/curve_peer.py's subscriber on `pub_port`: with the bridge's
/// key and the secret key file `key` (`Some("")`: a fresh pair), or
/// without CURVE (`None`); `extra` flags (e.g. `--topic=T`).
fn curve_subscriber(keys: &Keys, pub_port: u16, key: Option<&str>, extra: &[&str]) -> Process {
    let mut command = peer_command("subscribe");
    command
        .arg(format!("--endpoint=tcp://127.0.0.1:{pub_port}"))
        .arg("--seconds=20")
        .args(extra);
    if let Some(key) = key {
        command.arg(format!("--server-key-file={}", keys.s("bridge.key.pub")));
        if !key.is_empty() {
            command.arg(format!("--key-file={}", keys.s(key)));
        }
    }
    Process::spawn(command, |l| l == "ready").unwrap().0
}

/// The messages a curve_peer.py subscriber printed.
fn received(subscriber: &Process) -> Vec<Value> {
    subscriber
        .events()
        .into_iter()
        .filter(|e| e.get("frames").is_some())
        .collect()
}

/// How many of a curve_peer.py subscriber's connections have closed.
fn disconnects(subscriber: &Process) -> usize {
    let events = subscriber.events();
    events
        .iter()
        .filter(|e| e["event"] == "disconnected")
        .count()
}

#[test]
fn a_stream_subscriber_without_a_key_gets_nothing() {
    let keys = Keys::new();
    let (_publisher, bridge, _config, pub_port) =
        curve_stream(&keys, &["--rate=50", "--topics=dream."], "");
    let plain = curve_subscriber(&keys, pub_port, None, &[]);
    // Its handshake fails before ZAP: counted and logged as on a frontend.
    // libzmq reports a mechanism mismatch or a connection closed mid-
    // handshake, depending on which side it saw close first; the log
    // names a client without CURVE for both.
    assert!(
        wait_until(Duration::from_secs(10), || refused(&bridge) >= 1),
        "the plain subscriber is counted as refused"
    );
    assert!(
        bridge.wait_for_log("a client without CURVE", Duration::from_secs(5)),
        "the bridge's log names the likely cause: {}",
        bridge.log().join("\n")
    );
    let stranger = curve_subscriber(&keys, pub_port, Some("stranger.key"), &[]);
    let agent = curve_subscriber(&keys, pub_port, Some("agent.key"), &[]);
    assert!(
        wait_until(Duration::from_secs(10), || received(&agent).len() >= 20),
        "the allowed subscriber receives the stream"
    );
    assert_eq!(received(&plain).len(), 0, "{:?}", plain.output());
    assert_eq!(received(&stranger).len(), 0, "{:?}", stranger.output());
}

#[test]
fn with_curve_on_the_pub_port_an_allowed_late_sub_gets_the_last_values_and_a_keyless_one_nothing() {
    // The publisher sends 20 messages once the bridge has subscribed for
    // its cache, then nothing: all a late subscriber can get is the last
    // values.
    let keys = Keys::new();
    let (publisher, bridge, _config, pub_port) = curve_stream(
        &keys,
        &[
            "--topics=state.a,state.b",
            "--rate=1000",
            "--count=20",
            "--wait-subscriber",
        ],
        "last_value = [\"state.\"]\n",
    );
    let last_values = || monitor_status(&bridge)["streams"]["dream"]["last_values"].clone();
    assert!(publisher.wait_for_output("done", Duration::from_secs(10)));
    assert!(
        wait_until(Duration::from_secs(5), || last_values()["topics"] == 2),
        "{}",
        last_values()
    );
    let plain = curve_subscriber(&keys, pub_port, None, &["--topic=state."]);
    let stranger = curve_subscriber(&keys, pub_port, Some(""), &["--topic=state."]);
    // Each refused at the handshake before the allowed one comes.
    assert!(
        wait_until(Duration::from_secs(10), || disconnects(&plain) >= 1
            && disconnects(&stranger) >= 1),
        "{:?} {:?}",
        plain.output(),
        stranger.output()
    );
    let agent = curve_subscriber(&keys, pub_port, Some("agent.key"), &["--topic=state."]);
    assert!(
        wait_until(Duration::from_secs(5), || received(&agent).len() >= 2),
        "the allowed late subscriber gets the last values: {:?}",
        agent.output()
    );
    let got: Vec<(String, bool)> = received(&agent)
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap().to_string(),
                m["last_value"] == true,
            )
        })
        .collect();
    assert_eq!(got, [("state.a".into(), true), ("state.b".into(), true)]);
    // Neither of the others got anything: no subscription of theirs was
    // read, so the only replay was the agent's (the status document is
    // refreshed every 100 ms).
    assert!(
        wait_until(Duration::from_secs(5), || last_values()["replayed_total"]
            == 2),
        "{}",
        last_values()
    );
    assert_eq!(received(&plain).len(), 0, "{:?}", plain.output());
    assert_eq!(received(&stranger).len(), 0, "{:?}", stranger.output());
}

/// Whether `needle` is in what a raw socket saw on `eth0` of namespace `i`
/// while `during` ran (tests/peers/sniff.py), and how many bytes it saw.
fn sniffed(ns: &Namespaces, i: usize, needle: &str, during: impl FnOnce()) -> (bool, u64) {
    let mut command = ns.command(i, Path::new("python3"));
    command
        .arg(root().join("tests/peers/sniff.py"))
        .arg("--iface=eth0")
        .arg(format!("--needle={needle}"));
    let (sniffer, _) = Process::spawn(command, |l| l == "ready").unwrap();
    during();
    sniffer.signal("TERM").unwrap();
    assert!(wait_until(Duration::from_secs(5), || !sniffer
        .output()
        .iter()
        .all(|l| l == "ready")));
    let line = sniffer.output().last().cloned().unwrap_or_default();
    let doc: Value = serde_json::from_str(&line).unwrap();
    (doc["found"] == true, doc["bytes"].as_u64().unwrap_or(0))
}

#[test]
fn the_target_link_is_encrypted_end_to_end() {
    let keys = Keys::new();
    keygen(&keys.path("service.key"));
    // Host 0 runs the bridge, host 1 the service; a veth between them.
    let ns = Namespaces::new(&["bridge", "service"]);
    ns.veth((0, 1), ["eth0", "eth0"]);
    for (i, address) in [(0, "10.231.16.1/24"), (1, "10.231.16.2/24")] {
        ns.ip(i, &["addr", "add", address, "dev", "eth0"]);
        ns.ip(i, &["link", "set", "eth0", "up"]);
    }
    let service_args = ["--host=10.231.16.2".to_string()];
    let (_keyed, keyed_port) = py_curve_service(
        ns.command(1, Path::new("python3")),
        Some(&keys.path("service.key")),
        &service_args,
    );
    let (_plain, plain_port) =
        py_curve_service(ns.command(1, Path::new("python3")), None, &service_args);
    let service_key = std::fs::read_to_string(keys.path("service.key.pub")).unwrap();
    let config = TempConfig::new(&format!(
        "curve_secret_key_file = \"{}\"\n\
         [targets.sealed]\nendpoint = \"tcp://10.231.16.2:{keyed_port}\"\ncurve_server_key = \"{}\"\n\
         [targets.open]\nendpoint = \"tcp://10.231.16.2:{plain_port}\"\n",
        keys.s("bridge.key"),
        service_key.trim()
    ));
    let mut command = ns.command(0, exe());
    command.arg("run").args(lone_bridge_flags()).args([
        "--main-pc-addr=".to_string(),
        "--pc2-addr=".to_string(),
        config.flag(),
    ]);
    // Whether the CURVE handshake with the service ended within the start's
    // connect grace is timing; the answers below show the link works.
    let bridge = BridgeProcess::start(command).unwrap();
    let ask = |target: &str, payload: &str| {
        let mut command = ns.command(0, Path::new("python3"));
        command
            .arg(root().join("tests/peers/curve_peer.py"))
            .arg("request")
            .arg(format!("--endpoint={}", bridge.frontend))
            .arg(format!("--server-key-file={}", keys.s("bridge.key.pub")))
            .arg(format!("--key-file={}", keys.s("agent.key")))
            .args([target, payload]);
        let out = command.output().unwrap();
        let line: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        line["reply"].clone()
    };
    // The control: the capture sees a plain link's payload.
    let needle_open = "PLAINTEXT-CANARY-4711";
    let (seen, _) = sniffed(&ns, 1, needle_open, || {
        assert_eq!(ask("open", needle_open)[1], needle_open);
    });
    assert!(seen, "the capture works: a plain link shows its payload");
    // The CURVE link: answered, and nothing of the payload on the wire.
    let needle = "SECRET-PAYLOAD-CANARY-0815";
    let (seen, bytes) = sniffed(&ns, 1, needle, || {
        assert_eq!(ask("sealed", needle)[1], needle);
    });
    assert!(bytes > 0, "the capture saw the exchange");
    assert!(!seen, "the payload crossed the veth in clear text");
}

/// Library client settings for a CURVE pair: short timings, the agent's key.
fn curve_client(pair: &Pair, keys: &Keys) -> ClientConfig {
    let mut c = ClientConfig::local();
    c.endpoints = vec![pair.primary_endpoint(), pair.secondary_endpoint()];
    c.heartbeat_endpoints = vec![
        pair.heartbeat_endpoint(true),
        pair.heartbeat_endpoint(false),
    ];
    c.request_timeout = Duration::from_secs(1);
    c.reconnect_delay = Duration::from_millis(100);
    c.hold_down = Duration::from_millis(800);
    c.heartbeat_timeout = TIMEOUT;
    c.curve = Some(keys.client("agent.key"));
    c
}

/// Both bridges of a CURVE pair up, each hearing the other (asked through
/// the monitoring server: the frontends want a key).
fn start_curve_pair(pair: &Pair) -> (BridgeProcess, BridgeProcess) {
    let primary = pair.start("active");
    let secondary = pair.start("passive");
    for bridge in [&primary, &secondary] {
        assert!(
            wait_until(Duration::from_secs(5), || monitor_status(bridge)["peer"]
                ["alive"]
                == true),
            "the pair hears itself over CURVE: {}",
            bridge.log().join("\n")
        );
    }
    (primary, secondary)
}

fn curve_load() -> ClientLoad {
    ClientLoad {
        target: "pc2".into(),
        rate: Some(500.0),
        duration: Duration::from_secs(3),
        in_flight: 64,
        payload_bytes: 100,
        settle: Duration::from_secs(10),
    }
}

#[test]
fn kill_9_and_sigterm_with_curve_on_lose_nothing_for_library_clients() {
    let keys = Keys::new();
    let flags = keys.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for signal in ["KILL", "TERM"] {
        let pair = Pair::new(&flags);
        let (primary, secondary) = start_curve_pair(&pair);
        let client = Client::connect(curve_client(&pair, &keys)).unwrap();
        let runner = std::thread::spawn(move || curve_load().run(&client));
        // Calls are answered over CURVE before the fault.
        assert!(wait_until(Duration::from_secs(5), || {
            monitor_status(&primary)["replies_total"]
                .as_u64()
                .unwrap_or(0)
                >= 200
        }));
        primary.signal(signal).unwrap();
        assert!(
            secondary
                .wait_for_event(Duration::from_secs(5), |e| e["event"] == "role"
                    && e["to"] == "active")
                .is_some(),
            "{signal}: the passive takes over: {}",
            secondary.log().join("\n")
        );
        let report = runner.join().unwrap();
        let r = &report.load;
        // The load ran across the fault (a paced sender on a busy machine
        // sends fewer than asked); every call sent was answered.
        assert!(r.sent >= 100, "{signal}: the load ran: {r:?}");
        assert_eq!(
            (r.ok, r.lost, r.mismatched),
            (r.sent, 0, 0),
            "{signal}: {:?}",
            r.errors
        );
        assert_eq!(refused(&secondary), 0, "the agent's key is always admitted");
        drop(primary);
    }
}

/// `zbridge check-config FILE flags...`, run to its end.
fn check(file: impl AsRef<std::ffi::OsStr>, flags: &[String]) -> std::process::Output {
    Command::new(exe())
        .arg("check-config")
        .arg(file)
        .args(flags)
        .output()
        .unwrap()
}

/// `zbridge check-config` with `flags` after an empty config file: its
/// exit code and stderr.
fn check_config(flags: &[String]) -> (Option<i32>, String) {
    let empty = TempConfig::new("");
    let out = check(&empty.0, flags);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_pub_that_is_not_the_secrets_half_stops_check_config_run_and_a_reload() {
    let keys = Keys::new();
    let secret = std::fs::read_to_string(keys.path("bridge.key")).unwrap();
    let good_pub = std::fs::read(keys.path("bridge.key.pub")).unwrap();
    // The agent's public key where the bridge's should be.
    std::fs::copy(keys.path("agent.key.pub"), keys.path("bridge.key.pub")).unwrap();
    let flag = format!("--curve-secret-key-file={}", keys.s("bridge.key"));
    let (code, err) = check_config(std::slice::from_ref(&flag));
    assert_eq!(code, Some(2), "{err}");
    for needed in ["bridge.key.pub", "bridge.key ", "zbridge keygen"] {
        assert!(err.contains(needed), "{needed} not in {err}");
    }
    assert!(
        !err.contains(secret.trim()),
        "the secret is never shown: {err}"
    );
    let run = Command::new(exe())
        .args([
            "run",
            "--mode=active",
            "--primary-port=0",
            "--primary-monitor-port=0",
        ])
        .arg(&flag)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("not one pair"), "{err}");
    assert!(!err.contains(secret.trim()), "{err}");

    // Running with the right pair, a reload with a mismatched .pub is
    // refused and the running keys stay.
    std::fs::write(keys.path("bridge.key.pub"), &good_pub).unwrap();
    let (_service, port) = py_curve_service(Command::new("python3"), None, &[]);
    let config = TempConfig::new(&format!(
        "curve_secret_key_file = \"{}\"\ncurve_clients = \"{}\"\n",
        keys.s("bridge.key"),
        keys.s("clients")
    ));
    // The target as a flag: the test flags set pc2_addr over the file's.
    let bridge = bridge(&[config.flag(), format!("--pc2-addr=tcp://127.0.0.1:{port}")]);
    std::fs::copy(keys.path("agent.key.pub"), keys.path("bridge.key.pub")).unwrap();
    bridge.signal("HUP").unwrap();
    let (_, rejected) = bridge
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "reload_rejected")
        .expect("the reload is rejected");
    assert_eq!(rejected["key"], "curve_secret_key_file", "{rejected}");
    std::fs::write(keys.path("bridge.key.pub"), &good_pub).unwrap();
    let reply = py_request(
        &bridge.frontend,
        Some(&keys.path("bridge.key.pub")),
        Some(&keys.path("agent.key")),
        "still",
        5.0,
    );
    assert_eq!(reply, Some(vec!["curve".into(), "still".into()]));
    assert!(!bridge.log().join("\n").contains(secret.trim()));
}

#[test]
fn key_files_that_are_not_small_regular_files_are_refused_at_once() {
    let keys = Keys::new();
    let fifo = keys.path("fifo.key");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::fs::copy(keys.path("bridge.key.pub"), keys.path("fifo.key.pub")).unwrap();
    let big = keys.path("big.key");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
    let started = std::time::Instant::now();
    for (path, says) in [
        (fifo.display().to_string(), "a FIFO"),
        ("/dev/zero".to_string(), "a character device"),
        (keys.s("clients"), "a directory"),
        (big.display().to_string(), "longer than 4096 bytes"),
    ] {
        let (code, err) = check_config(&[format!("--curve-secret-key-file={path}")]);
        assert_eq!(code, Some(2), "{path}: {err}");
        assert!(err.contains(says), "{says} not in {err}");
    }
    // A .pub in curve_clients that is a FIFO: refused by name, no hang.
    let bad = keys.path("clients/fifo.pub");
    assert!(Command::new("mkfifo").arg(&bad).status().unwrap().success());
    let mut flags = keys.flags();
    let (code, err) = check_config(&flags);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("fifo.pub is a FIFO"), "{err}");
    std::fs::remove_file(&bad).unwrap();
    flags.push("--curve-clients=/nonexistent".into());
    let (code, err) = check_config(&flags);
    assert_eq!(code, Some(2), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // keygen: neither through a dangling symlink nor into a missing dir.
    let link = keys.path("link.key");
    std::os::unix::fs::symlink(keys.path("elsewhere"), &link).unwrap();
    for path in [link, keys.path("missing/dir.key")] {
        let out = run_keygen(&path);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    assert!(keys.path("elsewhere").symlink_metadata().is_err());
    let out = run_keygen(&keys.path("missing/dir.key"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mkdir"),
        "{out:?}"
    );
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_refused_clients_leaves_allowed_ones_served_memory_flat_and_the_log_quiet() {
    const FLOOD: u64 = 400;
    let started = std::time::Instant::now();
    let keys = Keys::new();
    let (_service, port) = py_curve_service(Command::new("python3"), None, &[]);
    let mut flags = keys.flags();
    flags.push(format!("--pc2-addr=tcp://127.0.0.1:{port}"));
    let bridge = bridge(&flags);
    let server = keys.path("bridge.key.pub");
    let ask = |payload: &str| {
        py_request(
            &bridge.frontend,
            Some(&server),
            Some(&keys.path("agent.key")),
            payload,
            5.0,
        )
        .map(|r| r[1].clone())
    };
    assert_eq!(ask("before").as_deref(), Some("before"));
    let rss_before = rss_kib(bridge.pid());
    let mut flood = peer_command("flood");
    flood.args([
        format!("--endpoint={}", bridge.frontend),
        format!("--server-key-file={}", server.display()),
        format!("--count={FLOOD}"),
        "--seconds=30".into(),
    ]);
    let (_flood, _) =
        Process::spawn(flood, |l| l.starts_with("flooded")).expect("the flood starts");
    // Half come without CURVE, half with a key not in curve_clients.
    assert!(
        wait_until(Duration::from_secs(20), || refused(&bridge) >= FLOOD),
        "every flooding connection is refused: {}",
        monitor_status(&bridge)
    );
    // While they are held and retried, the allowed agent is served, and
    // a reload goes through.
    assert_eq!(ask("during").as_deref(), Some("during"));
    bridge.signal("HUP").unwrap();
    assert!(bridge
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "reloaded")
        .is_some());
    assert_eq!(ask("after reload").as_deref(), Some("after reload"));
    let grown = rss_kib(bridge.pid()).saturating_sub(rss_before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB for {FLOOD} refused clients"
    );
    // Nothing of theirs went through; the refusals are logged at most
    // every 10 s (a test this short: one or two lines), each with the count.
    // (The status document may lag the last reply a little.)
    assert!(
        wait_until(Duration::from_secs(3), || {
            monitor_status(&bridge)["requests_total"] == 3
        }),
        "{}",
        monitor_status(&bridge)
    );
    let log = bridge.log();
    let warned: Vec<&String> = (log.iter())
        .filter(|l| l.contains("WARN") && l.contains("CURVE client refused"))
        .collect();
    // At most one line per cause per 10 s (REFUSAL_LOG_EVERY), however
    // many refusals: the cause is the line's `why`.
    let most = 1 + started.elapsed().as_secs() as usize / 10;
    let mut causes = std::collections::BTreeMap::<&str, usize>::new();
    for line in &warned {
        let why = line.split("why=").nth(1).and_then(|w| w.split('"').nth(1));
        *causes.entry(why.expect("a why")).or_default() += 1;
    }
    assert!(
        !causes.is_empty() && causes.len() <= 4 && causes.values().all(|&n| n <= most),
        "{} refusal lines in {:?}: {causes:?}",
        warned.len(),
        started.elapsed()
    );
}

/// Handovers at random phases of a plain lockstep REQ agent's cycle, with
/// CURVE frontends and the agent a CURVE client (issue 20).
#[test]
fn curve_pairs_hand_over_at_random_phases_losing_nothing() {
    use crate::agents::{handovers_at_random_phases, Handover};
    let keys = Keys::new();
    let agent = [
        format!("--server-key-file={}", keys.s("bridge.key.pub")),
        format!("--key-file={}", keys.s("agent.key")),
    ];
    for (seed, think) in [0.0, 0.02, 1.0].into_iter().enumerate() {
        let phase = (think, 0.0);
        handovers_at_random_phases(
            Handover::Sigterm,
            &keys.flags(),
            &agent,
            phase,
            2,
            40 + seed as u64,
        );
    }
}

/// Peers that connect and never finish their handshake (no key needed:
/// plain TCP that says nothing), far more of them than the bridge has
/// descriptors: the oldest are shut down, so an allowed agent that
/// connects afresh is served every time and `/health` keeps answering.
#[test]
fn idle_connections_under_a_low_descriptor_limit_starve_neither_agents_nor_health() {
    let keys = Keys::new();
    let echo = EchoService::start(Some("pc2")).unwrap();
    let mut args = lone_bridge_flags();
    args.extend([
        "--main-pc-addr=".into(),
        format!("--pc2-addr={}", echo.endpoint),
    ]);
    args.extend(keys.flags());
    let bridge = bridge_with_descriptors(200, &args);
    let port: u16 = bridge.frontend.rsplit(':').next().unwrap().parse().unwrap();
    let started = std::time::Instant::now();
    let idle: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() >= 250, "{} idle connections opened", idle.len());
    assert!(
        wait_until(Duration::from_secs(5), || {
            monitor_status(&bridge)["connections_shed_total"].as_u64() > Some(0)
        }),
        "the bridge sheds idle connections: {}",
        bridge.log().join("\n")
    );
    // While they are held: an allowed agent connecting afresh, ten times,
    // and the monitoring server.
    for i in 0..10 {
        let payload = format!("fresh-{i}");
        let reply = py_request(
            &bridge.frontend,
            Some(&keys.path("bridge.key.pub")),
            Some(&keys.path("agent.key")),
            &payload,
            3.0,
        );
        assert_eq!(
            reply,
            Some(vec!["pc2".to_string(), payload.clone()]),
            "request {i} of an allowed agent with {} idle connections open",
            idle.len()
        );
        let health = monitor(&bridge, "health").expect("/health answers");
        assert!(health.contains("\"ok\""), "{health}");
    }
    let shed = metric(&bridge, "zbridge_connections_shed_total");
    println!(
        "{} idle connections under ulimit -n 200: {shed} shed, 10 of 10 fresh CURVE agents served, \
         /health answering ({:?} in all)",
        idle.len(),
        started.elapsed()
    );
    assert!(shed >= 100.0, "{shed}");
    assert!(bridge.wait_for_log("had not finished their handshake", Duration::from_secs(1)));
    drop(idle);
}

/// The `q`-quantile of `sorted` durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn a_sighup_storm_with_thousands_of_client_keys_does_not_stall_an_allowed_client() {
    const KEYS: usize = 5_000;
    const SIGHUPS: usize = 100;
    /// What the client waits for a reply: far more than any reload takes.
    const REPLY_WITHIN: Duration = Duration::from_secs(3);
    let keys = Keys::new();
    for i in 0..KEYS {
        let key = KeyPair::generate().unwrap().public;
        std::fs::write(keys.path(&format!("clients/{i}.pub")), format!("{key}\n")).unwrap();
    }
    let echo = EchoService::start(None).unwrap();
    let mut flags = keys.flags();
    flags.push(format!("--pc2-addr={}", echo.endpoint));
    let bridge = bridge(&flags);
    let context = zmq::Context::new();
    let dealer = context.socket(zmq::DEALER).unwrap();
    keys.client("agent.key").apply(&dealer).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&bridge.frontend).unwrap();
    // One request at a time; its round trip, or None when none came.
    let ask = |n: usize| {
        let started = std::time::Instant::now();
        let body = format!("{{\"target\":\"pc2\",\"n\":{n}}}");
        dealer
            .send_multipart([&b""[..], body.as_bytes()], 0)
            .unwrap();
        let polled = dealer.poll(zmq::POLLIN, REPLY_WITHIN.as_millis() as i64);
        if polled.unwrap() == 0 {
            return None;
        }
        let reply = dealer.recv_multipart(0).unwrap();
        assert_eq!(reply.last().unwrap(), body.as_bytes(), "{reply:?}");
        Some(started.elapsed())
    };
    assert!(ask(0).is_some(), "the allowed client is admitted");
    let mut quiet: Vec<Duration> = (1..=300).map(|n| ask(n).expect("a reply")).collect();
    quiet.sort();

    // 100 SIGHUPs in 2 s; the last one after a new key joins, which must
    // be admitted in the end (the last change is always read).
    let pid = bridge.pid();
    let storm = std::thread::spawn({
        let new = (keys.path("stranger.key.pub"), keys.path("clients/new.pub"));
        move || {
            for i in 0..SIGHUPS {
                if i == SIGHUPS - 1 {
                    std::fs::copy(&new.0, &new.1).unwrap();
                }
                let status = Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let mut stormy = Vec::new();
    let mut missed = 0;
    let mut n = 1000;
    while !storm.is_finished() || stormy.len() < 300 {
        n += 1;
        match ask(n) {
            Some(took) => stormy.push(took),
            None => missed += 1,
        }
        assert!(n < 1_000_000, "bounded");
    }
    storm.join().unwrap();
    assert_eq!(
        missed, 0,
        "requests without a reply within {REPLY_WITHIN:?}"
    );
    stormy.sort();
    eprintln!(
        "{KEYS} client keys; quiet: p50 {:?} p99 {:?} max {:?} ({} requests); during {SIGHUPS} SIGHUPs in 2 s: p50 {:?} p99 {:?} max {:?} ({} requests); {} reloads applied",
        quantile(&quiet, 0.5),
        quantile(&quiet, 0.99),
        quiet[quiet.len() - 1],
        quiet.len(),
        quantile(&stormy, 0.5),
        quantile(&stormy, 0.99),
        stormy[stormy.len() - 1],
        stormy.len(),
        bridge.events().iter().filter(|e| e["event"] == "reloaded").count(),
    );
    let server = keys.path("bridge.key.pub");
    let stranger = keys.path("stranger.key");
    assert!(
        wait_until(Duration::from_secs(10), || py_request(
            &bridge.frontend,
            Some(&server),
            Some(&stranger),
            "late",
            1.0
        )
        .is_some()),
        "the key added before the last SIGHUP is admitted"
    );
}

#[test]
fn a_bad_pub_file_is_refused_alone_by_name_and_blank_lines_around_a_key_are_accepted() {
    let keys = Keys::new();
    let text = |name: &str| std::fs::read_to_string(keys.path(name)).unwrap();
    let (agent, stranger) = (text("agent.key.pub"), text("stranger.key.pub"));
    std::fs::write(
        keys.path("clients/agent.pub"),
        format!("\n\r\n  {}  \n\n", agent.trim()),
    )
    .unwrap();
    // Two keys in one file: which was meant cannot be told; neither counts.
    std::fs::write(
        keys.path("clients/two.pub"),
        format!("{}\n{}\n", stranger.trim(), agent.trim()),
    )
    .unwrap();
    let (_service, port) = py_curve_service(Command::new("python3"), None, &[]);
    let mut flags = keys.flags();
    flags.push(format!("--pc2-addr=tcp://127.0.0.1:{port}"));
    // check-config, run before a deploy, fails on it by name...
    let (code, err) = check_config(&flags);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("two.pub holds 2 lines"), "{err}");
    // ...a running bridge refuses that file alone, and says so.
    let bridge = bridge(&flags);
    assert!(bridge.wait_for_log("two.pub holds 2 lines", Duration::from_secs(5)));
    let ask = |key: &str| keys.ask_as(&bridge.frontend, key);
    assert!(ask("agent.key").is_some(), "blank lines around a key");
    assert!(ask("stranger.key").is_none(), "its key is in two.pub only");
    // A bad file does not keep a removed key admitted: the revocation
    // applies on reload, the bad file is named again.
    std::fs::remove_file(keys.path("clients/agent.pub")).unwrap();
    std::fs::write(keys.path("clients/typo.pub"), "not a key\n").unwrap();
    bridge.signal("HUP").unwrap();
    assert!(bridge
        .wait_for_event(Duration::from_secs(5), |e| e["event"] == "reloaded")
        .is_some());
    assert!(bridge.wait_for_log("typo.pub", Duration::from_secs(5)));
    assert!(ask("agent.key").is_none(), "the removed key is refused");
}

/// The error a library client with `keys` (none: no CURVE) gets from
/// `endpoint` within a few seconds, and the reasons of its EndpointDown
/// events.
fn library_refusal(endpoint: &str, keys: Option<ClientKeys>) -> (String, Vec<&'static str>) {
    let mut config = ClientConfig::local();
    config.endpoints = vec![endpoint.to_string()];
    config.heartbeat_endpoints.clear();
    config.request_timeout = Duration::from_millis(500);
    config.max_reconnect_attempts = 2;
    config.curve = keys;
    let client = Client::connect(config).unwrap();
    let events = client.events();
    let error = client
        .request("pc2", b"x")
        .expect_err("refused")
        .to_string();
    let reasons = events
        .try_iter()
        .filter_map(|e| match e {
            zbridge_client::Event::EndpointDown { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    (error, reasons)
}

#[test]
fn failed_handshakes_are_named_to_the_client_and_in_the_bridge_log_and_a_plain_port_counts_apart() {
    let keys = Keys::new();
    let echo = EchoService::start(None).unwrap();
    let plain_port = free_port();
    let mut flags = keys.flags();
    flags.push(format!("--pc2-addr={}", echo.endpoint));
    flags.push(format!("--plain-primary-port={plain_port}"));
    let bridge = bridge(&flags);

    // Probes on the plain port are not CURVE refusals (first, while no
    // CURVE client is retrying: those count as they come).
    let curve_refused = refused(&bridge);
    for _ in 0..10 {
        let mut probe = std::net::TcpStream::connect(("127.0.0.1", plain_port)).unwrap();
        use std::io::{Read, Write};
        probe.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = probe.read_to_end(&mut Vec::new());
    }
    let plain_failed = || {
        monitor_status(&bridge)["plain_handshakes_failed_total"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(2), || plain_failed() >= 10),
        "{}",
        monitor_status(&bridge)
    );
    assert_eq!(refused(&bridge), curve_refused, "CURVE refusals unchanged");
    let metrics = monitor(&bridge, "metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "zbridge_plain_handshakes_failed_total {}",
            plain_failed()
        )),
        "{metrics}"
    );
    assert!(bridge.wait_for_log("a handshake failed on a plain port", Duration::from_secs(1)));

    // Our key not in curve_clients: the ZAP refusal reaches the client.
    let (error, reasons) = library_refusal(&bridge.frontend, Some(keys.client("stranger.key")));
    assert!(
        error.contains("refused our CURVE key") && error.contains("curve_clients"),
        "{error}"
    );
    assert!(reasons.contains(&"handshake_failed"), "{reasons:?}");

    // The wrong server key: the bridge cannot read our hello and hangs up.
    let mut wrong = keys.client("agent.key");
    wrong.server = read_public(&keys.path("stranger.key.pub"), "test").unwrap();
    let (error, _) = library_refusal(&bridge.frontend, Some(wrong));
    assert!(
        error.contains("curve_server_key is the bridge's public key"),
        "{error}"
    );
    assert!(
        bridge.wait_for_log("wrong curve_server_key", Duration::from_secs(5)),
        "the bridge names the likely cause: {}",
        bridge.log().join("\n")
    );
    let log = bridge.log();
    let line = log
        .iter()
        .find(|l| l.contains("wrong curve_server_key"))
        .unwrap();
    assert!(line.contains("127.0.0.1:"), "the client's address: {line}");

    // No CURVE at all, on the CURVE port.
    let (error, _) = library_refusal(&bridge.frontend, None);
    assert!(
        error.contains("requires CURVE") || error.contains("does it require CURVE"),
        "{error}"
    );
    // Those three are CURVE refusals.
    assert!(wait_until(Duration::from_secs(2), || refused(&bridge)
        >= curve_refused + 3));
}
