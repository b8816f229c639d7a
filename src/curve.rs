//! CURVE on the bridge's sockets: who may connect, and the socket options
//! that say so.
//!
//! With `curve_secret_key_file` set, every socket of the bridge that
//! listens (the frontends, the heartbeat PUB, the stream pub ports) is a
//! CURVE server with the pair's key, and every socket that connects across
//! the network (the peer's heartbeats with the pair's own public key as the
//! server key; a target or stream upstream with its `curve_server_key`) is a
//! CURVE client with the pair's key. Who may connect is decided by a ZAP
//! handler ([`Zap`], RFC 27) in each libzmq context that has a CURVE server:
//! the keys of `curve_clients` and the pair's own key are admitted (all keys
//! when `curve_clients` is not set), any other is refused, counted and
//! logged at most once per [`REFUSAL_LOG_EVERY`]. Handshakes that fail
//! before ZAP (no CURVE, the wrong server key) are counted with them, by
//! the frontend's socket monitor; those on a plain port (no CURVE wanted
//! there) are counted apart, so that the refusal count means what it says
//! while clients migrate. The allowed keys are
//! swapped in place on reload ([`Admission::set_allowed`]).
//!
//! Keys are read by `zbridge_client::curve` (the client reads them the same
//! way); this module never logs a secret.

use crate::throttle::LogThrottle;
use anyhow::Context as _;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, warn};
pub use zbridge_client::curve::{ClientKeys, KeyPair, PublicKey};
use zbridge_client::ConfigError;
use zbridge_socket::HandshakeFailure;

/// Where libzmq asks a context's ZAP handler (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// Refused clients are logged at most this often (each line with the count).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// `curve_clients` as read: the directory and the keys in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clients {
    pub dir: PathBuf,
    pub keys: BTreeSet<PublicKey>,
    /// The `*.pub` files refused, each named with why: their keys are not
    /// admitted (the others are). Logged at start and on each reload;
    /// `check-config` fails on them.
    pub refused: Vec<ConfigError>,
}

impl Clients {
    /// Log each refused `*.pub` file (at start and on each reload).
    pub fn log_refused(&self) {
        for refused in &self.refused {
            warn!(
                key = %refused.key,
                error = %refused.message,
                "a curve_clients key file refused: its key is not admitted (the other keys are); fix or remove the file, then reload"
            );
        }
    }
}

/// Whether this build's libzmq has CURVE (libsodium linked in).
pub fn available() -> bool {
    zmq::has("curve") == Some(true)
}

/// Make `socket` a CURVE server with the pair's key, its clients checked
/// by the context's ZAP handler. Before `bind`.
///
/// No ZAP domain is set: libzmq asks the handler about every CURVE client
/// whatever the domain (ZMQ_ZAP_ENFORCE_DOMAIN off), and a plain listener
/// of the same socket ([`plain`]) then skips ZAP, as it must (libzmq
/// cannot set the domain back to empty).
pub fn server(socket: &zmq::Socket, pair: &KeyPair) -> zmq::Result<()> {
    pair.serve(socket)
}

/// Make the next `bind` of a CURVE server socket a plain one (no security,
/// no ZAP): libzmq copies a socket's options into each listener as it is
/// bound, so one socket can listen with CURVE on one port and plain on
/// another (`plain_primary_port`, `plain_secondary_port`).
pub fn plain(socket: &zmq::Socket) -> zmq::Result<()> {
    socket.set_curve_server(false)
}

/// Make `socket` a CURVE client of `server` with the pair's key. Before
/// `connect`.
pub fn client(socket: &zmq::Socket, pair: &KeyPair, server: &PublicKey) -> zmq::Result<()> {
    ClientKeys {
        server: *server,
        pair: pair.clone(),
    }
    .apply(socket)
}

/// Who the ZAP handlers admit, shared by every handler of the process and
/// updated on reload; counts the refusals.
#[derive(Debug)]
pub struct Admission {
    pair: PublicKey,
    /// `None`: every client that knows the server key.
    allowed: RwLock<Option<BTreeSet<PublicKey>>>,
    refused: AtomicU64,
    /// One throttle per cause, so that one cause's flood does not hide
    /// another's first line.
    log: Mutex<std::collections::HashMap<&'static str, LogThrottle>>,
    /// Handshakes failed on a plain port, and their log's throttle.
    plain_failed: AtomicU64,
    plain_log: Mutex<LogThrottle>,
}

impl Admission {
    pub fn new(pair: &KeyPair, clients: Option<&Clients>) -> Arc<Admission> {
        Arc::new(Admission {
            pair: pair.public,
            allowed: RwLock::new(clients.map(|c| c.keys.clone())),
            refused: AtomicU64::new(0),
            log: Mutex::new(std::collections::HashMap::new()),
            plain_failed: AtomicU64::new(0),
            plain_log: Mutex::new(LogThrottle::default()),
        })
    }

    /// The keys of a reloaded `curve_clients` (`None`: admit every key).
    pub fn set_allowed(&self, clients: Option<&Clients>) {
        if let Ok(mut allowed) = self.allowed.write() {
            *allowed = clients.map(|c| c.keys.clone());
        }
    }

    /// A connection from `peer` whose handshake failed before ZAP:
    /// refused like a key not admitted on a CURVE port, counted apart on a
    /// `plain` one.
    pub fn handshake_failed(
        &self,
        peer: Option<SocketAddr>,
        plain: bool,
        failure: HandshakeFailure,
    ) {
        let address = peer.map_or_else(|| "?".into(), |a| a.to_string());
        if !plain {
            return self.refuse(&address, &[], failed_why(failure));
        }
        let total = self.plain_failed.fetch_add(1, Ordering::Relaxed) + 1;
        let why = match failure {
            HandshakeFailure::Mechanism => {
                "a CURVE client on the plain port: give it the CURVE port"
            }
            _ => "not a ZeroMQ client (a port scan, an HTTP probe?) or one that gave up",
        };
        if self
            .plain_log
            .lock()
            .is_ok_and(|mut log| log.due(Instant::now(), REFUSAL_LOG_EVERY))
        {
            warn!(
                address,
                why,
                plain_handshakes_failed_total = total,
                "a handshake failed on a plain port (logged at most every 10 s)"
            );
        }
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Handshakes failed on a plain port since start.
    pub fn plain_failed(&self) -> u64 {
        self.plain_failed.load(Ordering::Relaxed)
    }

    /// Whether a client with this key (32 bytes, from the ZAP request) is
    /// admitted.
    fn admits(&self, key: &[u8]) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(key) else {
            return false;
        };
        if key == *self.pair.bytes() {
            return true;
        }
        match self.allowed.read() {
            Ok(allowed) => allowed
                .as_ref()
                // A set lookup, not a scan: a ZAP request costs the same with
                // 10 or 100,000 allowed keys.
                .is_none_or(|keys| keys.contains(&PublicKey::from(key))),
            Err(_) => false,
        }
    }

    fn refuse(&self, address: &str, key: &[u8], why: &'static str) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let due = self.log.lock().is_ok_and(|mut log| {
            (log.entry(why).or_default()).due(Instant::now(), REFUSAL_LOG_EVERY)
        });
        let key =
            <[u8; 32]>::try_from(key).map_or_else(|_| "?".into(), |k| PublicKey::from(k).z85());
        if due {
            warn!(
                address,
                client_key = %key,
                why,
                curve_refused_total = total,
                "CURVE client refused (logged at most every 10 s for each cause)"
            );
        } else {
            debug!(address, curve_refused_total = total, "CURVE client refused");
        }
    }
}

/// What a handshake that failed on a CURVE port says about the client.
fn failed_why(failure: HandshakeFailure) -> &'static str {
    match failure {
        HandshakeFailure::Mechanism => "a client without CURVE: give it curve_server_key and a key pair, or a plain port",
        HandshakeFailure::Cryptographic => "a CURVE handshake that did not decrypt: the client has the wrong curve_server_key",
        HandshakeFailure::Closed(_) => "the client closed the connection during the handshake: a client without CURVE, a CURVE client with the wrong curve_server_key, or not a ZeroMQ client",
        HandshakeFailure::Refused(_) | HandshakeFailure::Protocol(_) => "not a ZeroMQ client of a kind that fits (a port scan, an HTTP probe?)",
    }
}

/// A ZAP handler thread bound in one libzmq context; stopped and joined
/// when dropped.
pub struct Zap {
    control: zmq::Socket,
    thread: Option<JoinHandle<()>>,
}

impl Zap {
    /// Bind the handler in `context` (before any CURVE server socket of
    /// that context accepts a connection) and answer on its own thread.
    pub fn start(context: &zmq::Context, admission: Arc<Admission>) -> anyhow::Result<Zap> {
        let handler = context.socket(zmq::REP)?;
        handler.set_linger(0)?;
        handler
            .bind(ZAP_ENDPOINT)
            .context("cannot bind the ZAP handler (inproc://zeromq.zap.01)")?;
        let (control, theirs) = zbridge_socket::pipe(context, "zap-control")?;
        let thread = std::thread::Builder::new()
            .name("zap".into())
            .spawn(move || serve(&handler, &theirs, &admission))?;
        Ok(Zap {
            control,
            thread: Some(thread),
        })
    }
}

impl Drop for Zap {
    fn drop(&mut self) {
        let _ = self.control.send(&b"s"[..], zmq::DONTWAIT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answer ZAP requests until told to stop (or the context ends).
fn serve(handler: &zmq::Socket, control: &zmq::Socket, admission: &Admission) {
    loop {
        let mut items = [
            handler.as_poll_item(zmq::POLLIN),
            control.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, -1) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(_) => return,
        }
        if items[1].is_readable() {
            return;
        }
        if !items[0].is_readable() {
            continue;
        }
        let request = match handler.recv_multipart(zmq::DONTWAIT) {
            Ok(request) => request,
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
            Err(_) => return,
        };
        let reply = answer(&request, admission);
        if handler.send_multipart(reply, 0).is_err() {
            return;
        }
    }
}

/// The reply to one ZAP request (RFC 27): version, request id, domain,
/// address, routing id, mechanism, credentials (CURVE: the client's key).
fn answer(request: &[Vec<u8>], admission: &Admission) -> Vec<Vec<u8>> {
    let field = |i: usize| request.get(i).map_or(&[][..], Vec::as_slice);
    let (code, text): (&[u8], &[u8]) = if field(0) != b"1.0" {
        (b"500", b"unsupported ZAP version")
    } else if field(5) == b"CURVE" && admission.admits(field(6)) {
        (b"200", b"OK")
    } else {
        let why = if field(5) == b"CURVE" {
            "its public key is not in curve_clients: add it there and reload, if it is one of ours"
        } else {
            "not a CURVE client"
        };
        admission.refuse(&String::from_utf8_lossy(field(3)), field(6), why);
        (b"400", b"key not allowed")
    };
    vec![
        b"1.0".to_vec(),
        field(1).to_vec(),
        code.to_vec(),
        text.to_vec(),
        Vec::new(),
        Vec::new(),
    ]
}

/// `zbridge keygen PATH`: a new key pair, the secret in PATH (mode 0600,
/// created, never overwritten) and the public key in PATH.pub. Prints the
/// public key.
pub fn keygen(path: &Path) -> anyhow::Result<()> {
    let pair = KeyPair::generate().map_err(anyhow::Error::msg)?;
    let public = zbridge_client::curve::public_path(path);
    for existing in [path, public.as_path()] {
        // symlink_metadata: a dangling symlink is there too.
        if existing.symlink_metadata().is_ok() {
            anyhow::bail!(
                "{} exists: not overwritten (a key in use would be lost); remove it or choose another path",
                existing.display()
            );
        }
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory: create it first (`mkdir -m 700 -p {}`), then run keygen again",
            dir.display(),
            dir.display()
        );
    }
    pair.write(path)
        .with_context(|| format!("cannot write the key pair {}", path.display()))?;
    println!("{}", pair.public);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &[u8]) -> Vec<Vec<u8>> {
        [&b"1.0"[..], b"7", b"", b"127.0.0.1", b"", b"CURVE", key]
            .iter()
            .map(|f| f.to_vec())
            .collect()
    }

    #[test]
    fn the_handler_admits_listed_keys_and_the_pair_and_counts_the_rest() {
        let pair = KeyPair::generate().unwrap();
        let (friend, stranger) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let clients = Clients {
            dir: PathBuf::from("/nowhere"),
            keys: BTreeSet::from([friend.public]),
            refused: Vec::new(),
        };
        let admission = Admission::new(&pair, Some(&clients));
        let code = |key: &PublicKey| answer(&request(key.bytes()), &admission)[2].clone();
        assert_eq!(code(&friend.public), b"200");
        assert_eq!(code(&pair.public), b"200");
        assert_eq!(code(&stranger.public), b"400");
        assert_eq!(answer(&request(b"short"), &admission)[2], b"400");
        assert_eq!(admission.refused(), 2);
        // The reply carries the request id back.
        assert_eq!(answer(&request(friend.public.bytes()), &admission)[1], b"7");
        // Reloaded without curve_clients: any key.
        admission.set_allowed(None);
        assert_eq!(code(&stranger.public), b"200");
        // Not CURVE (a plain client on a CURVE port never gets here, but
        // the handler says no all the same).
        let mut plain = request(b"");
        plain[5] = b"NULL".to_vec();
        assert_eq!(answer(&plain, &admission)[2], b"400");
    }
}
