//! Test harness: real bridge processes, real pyzmq peers, waits with deadlines.

#![allow(dead_code)] // each test module uses a different part

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
pub use zbridge::lab::{
    free_port, lone_bridge_flags, wait_until, BridgeProcess, EchoService, Load, Process, Route,
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

/// A config file that is deleted when dropped.
pub struct TempConfig(pub PathBuf);

impl TempConfig {
    pub fn new(toml: &str) -> TempConfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "zbridge-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, toml).expect("write config");
        TempConfig(path)
    }

    pub fn flag(&self) -> String {
        format!("--config={}", self.0.display())
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pyzmq REP service of tests/peers, on `port` (0: any). Returns it
/// with its port.
pub fn py_service(tag: &str, port: u16) -> (Process, u16) {
    let mut command = Command::new("python3");
    command
        .arg(root().join("tests/peers/rep_service.py"))
        .arg(format!("--tag={tag}"))
        .arg(format!("--port={port}"));
    let (process, line) =
        Process::spawn(command, |l| l.starts_with("ready ")).expect("pyzmq service starts");
    let port = line["ready ".len()..].trim().parse().expect("port");
    (process, port)
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
    let reply = Dealer::connect(endpoint).call(&[br#"{"action":"status"}"#]);
    serde_json::from_slice(&reply[0]).expect("status is JSON")
}
