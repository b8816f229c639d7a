//! Test harness: real bridge processes, real pyzmq peers, waits with deadlines.

#![allow(dead_code)] // each test module uses a different part

pub mod netns;
pub mod systemd;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
pub use zbridge_lab::{
    free_port, lone_bridge_flags, wait_until, BridgeProcess, EchoService, Load, Process, Retrying,
    Route, TempConfig,
};

pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_zbridge"))
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A lone bridge in the active role on a free port, with the given extra
/// flags. The seed targets point nowhere unless a flag sets them; its peer's
/// heartbeat port is a free one, so it hears no peer and becomes active
/// after a short heartbeat_timeout.
pub fn bridge(extra: &[String]) -> BridgeProcess {
    let mut args = lone_bridge_flags();
    args.extend(["--main-pc-addr=".into(), "--pc2-addr=".into()]);
    args.extend_from_slice(extra);
    BridgeProcess::spawn(exe(), &args).expect("bridge starts")
}

/// The pyzmq REP service of tests/peers, on `port` (0: any). Returns it
/// with its port.
pub fn py_service(tag: &str, port: u16) -> (Process, u16) {
    py_service_with(Command::new("python3"), tag, port, &[])
}

/// The same service run by `python` (e.g. inside a network namespace),
/// with `extra` arguments (e.g. `--host=ADDR`).
pub fn py_service_with(
    mut python: Command,
    tag: &str,
    port: u16,
    extra: &[&str],
) -> (Process, u16) {
    python
        .arg(root().join("tests/peers/rep_service.py"))
        .arg(format!("--tag={tag}"))
        .arg(format!("--port={port}"))
        .args(extra);
    let (process, line) =
        Process::spawn(python, |l| l.starts_with("ready ")).expect("pyzmq service starts");
    let port = line["ready ".len()..].trim().parse().expect("port");
    (process, port)
}

/// A retrying load on target `pc2` (zbridge_lab::Retrying: one request at a time,
/// paced at `rate`, an attempt given up after 500 ms and sent to the next
/// endpoint, a request lost after 5 s).
pub fn retrying_load(endpoints: Vec<String>, rate: f64, duration: Duration) -> Retrying {
    Retrying {
        endpoints,
        target: "pc2".into(),
        rate,
        duration,
        attempt_timeout: Duration::from_millis(500),
        give_up: Duration::from_secs(5),
    }
}

/// A plain pyzmq agent (tests/peers/lockstep.py) run by `python` (e.g.
/// `python3`, or python3 inside a network namespace): a REQ socket sending
/// `[target, payload, N]` in lockstep for `seconds`, with no timeout (or,
/// given one, zguide's Lazy Pirate); one JSON line per reply. Killed when
/// dropped.
pub fn lockstep_agent(
    mut python: Command,
    endpoint: &str,
    target: &str,
    seconds: f64,
    payload: &str,
    timeout: Option<Duration>,
) -> Process {
    python
        .arg(root().join("tests/peers/lockstep.py"))
        .arg(endpoint)
        .arg(target)
        .arg(seconds.to_string())
        .arg(format!("--payload={payload}"));
    if let Some(timeout) = timeout {
        python.arg(format!("--timeout-ms={}", timeout.as_millis()));
    }
    let (process, _) =
        Process::spawn(python, |l| l.contains("ready")).expect("the pyzmq agent starts");
    process
}

/// Run the pyzmq client of tests/peers and return the replies it got.
pub fn py_client(kind: &str, endpoint: &str, requests: &[Vec<&[u8]>]) -> Vec<Vec<Vec<u8>>> {
    let hex: Vec<Vec<String>> = requests
        .iter()
        .map(|r| r.iter().map(|f| to_hex(f)).collect())
        .collect();
    let out = Command::new("python3")
        .arg(root().join("tests/peers/client.py"))
        .arg(kind)
        .arg(endpoint)
        .arg(serde_json::to_string(&hex).unwrap())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "pyzmq client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("client output");
    doc["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|f| from_hex(f.as_str().unwrap()))
                .collect()
        })
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A DEALER client socket (no delimiter frames) on its own context.
pub struct Dealer {
    _context: zmq::Context,
    pub socket: zmq::Socket,
}

impl Dealer {
    pub fn connect(endpoint: &str) -> Dealer {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::DEALER).unwrap();
        socket.set_linger(0).unwrap();
        socket.connect(endpoint).unwrap();
        Dealer {
            _context: context,
            socket,
        }
    }

    pub fn send(&self, frames: &[&[u8]]) {
        self.socket.send_multipart(frames, 0).unwrap();
    }

    /// The next reply, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        match self.socket.poll(zmq::POLLIN, timeout.as_millis() as i64) {
            Ok(n) if n > 0 => Some(self.socket.recv_multipart(0).unwrap()),
            _ => None,
        }
    }

    pub fn call(&self, frames: &[&[u8]]) -> Vec<Vec<u8>> {
        self.send(frames);
        self.recv(Duration::from_secs(10))
            .expect("a reply within 10 s")
    }
}

/// The `(error, message)` of a one-frame error document.
pub fn error_of(reply: &[Vec<u8>]) -> (String, String) {
    assert_eq!(reply.len(), 1, "an error reply is one frame: {reply:?}");
    let doc: Value = serde_json::from_slice(&reply[0]).expect("error reply is JSON");
    assert_eq!(doc["status"], "error", "{doc}");
    assert_eq!(
        doc.as_object().unwrap().len(),
        3,
        "exactly status, error, message: {doc}"
    );
    (
        doc["error"].as_str().unwrap().to_string(),
        doc["message"].as_str().unwrap().to_string(),
    )
}

/// The bridge's status document, asked through its frontend.
pub fn status(endpoint: &str) -> Value {
    zbridge_lab::status(endpoint).expect("a status document")
}

/// Heartbeat timings of the pair tests: 100 ms / 300 ms.
pub const INTERVAL: Duration = Duration::from_millis(100);
pub const TIMEOUT: Duration = Duration::from_millis(300);

/// Two bridges on one host, on free ports, relaying to an echo service as
/// target `pc2`. Started one by one by the test; killed when dropped.
pub struct Pair {
    pub ports: [u16; 4],
    pub flags: Vec<String>,
    pub service: EchoService,
}

impl Pair {
    pub fn new(extra: &[&str]) -> Pair {
        Pair::with_timings(INTERVAL, TIMEOUT, extra)
    }

    /// A pair with its own heartbeat timings (e.g. the design's defaults).
    pub fn with_timings(interval: Duration, timeout: Duration, extra: &[&str]) -> Pair {
        let service = EchoService::start(None).unwrap();
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let mut flags = vec![
            format!("--primary-port={}", ports[0]),
            format!("--secondary-port={}", ports[1]),
            format!("--primary-heartbeat-port={}", ports[2]),
            format!("--secondary-heartbeat-port={}", ports[3]),
            format!("--primary-monitor-port={}", free_port()),
            format!("--secondary-monitor-port={}", free_port()),
            format!("--heartbeat-interval={}", interval.as_secs_f64()),
            format!("--heartbeat-timeout={}", timeout.as_secs_f64()),
            "--main-pc-addr=".into(),
            format!("--pc2-addr={}", service.endpoint),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        Pair {
            ports,
            flags,
            service,
        }
    }

    pub fn primary_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.ports[0])
    }

    pub fn secondary_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.ports[1])
    }

    /// The heartbeat endpoint of the primary (`true`) or secondary instance.
    pub fn heartbeat_endpoint(&self, primary: bool) -> String {
        format!(
            "tcp://127.0.0.1:{}",
            self.ports[if primary { 2 } else { 3 }]
        )
    }

    /// Start an instance (`active` = the primary node, `passive` = the
    /// secondary) and wait for its ready line.
    pub fn start(&self, mode: &str) -> BridgeProcess {
        let mut args = vec![format!("--mode={mode}")];
        args.extend(self.flags.iter().cloned());
        BridgeProcess::spawn(exe(), &args).expect("bridge starts")
    }

    /// Start an instance with more environment (e.g. systemd's).
    pub fn start_with_env(&self, mode: &str, env: &[(&str, String)]) -> BridgeProcess {
        let mut command = Command::new(exe());
        command
            .arg("run")
            .arg(format!("--mode={mode}"))
            .args(&self.flags)
            .envs(env.iter().map(|(k, v)| (k, v)));
        BridgeProcess::start(command).expect("bridge starts")
    }

    /// Start the primary, then the secondary, and wait until each hears
    /// the other.
    pub fn start_both(&self) -> (BridgeProcess, BridgeProcess) {
        let primary = self.start("active");
        assert_eq!(primary.ready["role"], "active");
        let secondary = self.start("passive");
        assert_eq!(secondary.ready["role"], "passive");
        assert_eq!(secondary.frontend, self.secondary_endpoint());
        for endpoint in [self.primary_endpoint(), self.secondary_endpoint()] {
            assert!(
                wait_until(Duration::from_secs(5), || status(&endpoint)["peer"]
                    ["alive"]
                    == true),
                "{endpoint} hears its peer"
            );
        }
        (primary, secondary)
    }
}

/// A bridge's monitoring server's answer to `GET /PATH` (plain HTTP on
/// loopback: no key needed, whatever the frontends want).
pub fn monitor(bridge: &BridgeProcess, path: &str) -> Option<String> {
    let base = bridge.ready["monitor"].as_str()?;
    zbridge_lab::http_get(&format!("{base}/{path}"), Duration::from_secs(2))
}

/// The value of metric `name` (a sample without labels) in a bridge's
/// `/metrics`.
pub fn metric(bridge: &BridgeProcess, name: &str) -> f64 {
    let metrics = monitor(bridge, "metrics").expect("/metrics answers");
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} in /metrics: {metrics}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `zbridge run` with `args`, started under `ulimit -n LIMIT`.
pub fn bridge_with_descriptors(limit: u32, args: &[String]) -> BridgeProcess {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" run \"$@\""))
        .arg(exe())
        .args(args);
    BridgeProcess::start(command)
        .unwrap_or_else(|e| panic!("the bridge starts under ulimit -n {limit}: {e}"))
}

/// A bridge's status document from its monitoring server.
pub fn monitor_status(bridge: &BridgeProcess) -> Value {
    monitor(bridge, "status")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// The role a bridge reports through `endpoint`, or `None` if it does not
/// answer within `timeout`.
pub fn role_at(endpoint: &str, timeout: Duration) -> Option<String> {
    let reply = zbridge_lab::ask(endpoint, &[br#"{"action":"ping"}"#], timeout)?;
    let doc: Value = serde_json::from_slice(reply.last()?).ok()?;
    doc["role"].as_str().map(str::to_string)
}

/// A SUB socket on a heartbeat endpoint that has received a first message.
pub struct Listener {
    _context: zmq::Context,
    socket: zmq::Socket,
}

impl Listener {
    pub fn new(endpoint: &str) -> Listener {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::SUB).unwrap();
        socket.set_subscribe(b"").unwrap();
        socket.connect(endpoint).unwrap();
        let listener = Listener {
            _context: context,
            socket,
        };
        assert!(
            listener.next(Duration::from_secs(5)).is_some(),
            "heartbeats on {endpoint}"
        );
        listener
    }

    pub fn next(&self, timeout: Duration) -> Option<Value> {
        if self
            .socket
            .poll(zmq::POLLIN, timeout.as_millis() as i64)
            .ok()?
            == 0
        {
            return None;
        }
        serde_json::from_slice(&self.socket.recv_bytes(0).ok()?).ok()
    }

    /// The first message of type `kind` within `timeout`.
    pub fn wait_for(&self, kind: &str, timeout: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let message = self.next(left)?;
            if message["type"] == kind {
                return Some(message);
            }
        }
    }
}

/// A heartbeat a forger would send now (boot "forger", state running), as
/// `instance` of `node` serving `port` at `epoch`, numbered `seq`.
pub fn forged_heartbeat(
    instance: zbridge_protocol::heartbeat::Role,
    node: zbridge_protocol::heartbeat::Node,
    port: u16,
    epoch: u64,
    seq: u64,
) -> zbridge_protocol::heartbeat::Message {
    use zbridge_protocol::heartbeat::{Heartbeat, Message, State};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    Message::Heartbeat(Heartbeat {
        timestamp: now,
        instance,
        port,
        uptime: 1,
        load: 0.0,
        node,
        boot: "forger".into(),
        seq,
        epoch,
        state: State::Running,
    })
}
