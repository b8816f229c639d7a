//! A client for a zbridge pair: it keeps working while bridges die and
//! come back.
//!
//! ```no_run
//! use zbridge_client::{Client, ClientConfig};
//!
//! let client = Client::connect(ClientConfig::from_file("zbridge.toml")?)?;
//! let reply = client.request("pc2", br#"{"action":"generate"}"#)?;
//! println!("{:?} (from {})", reply.frames, reply.endpoint);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Concurrency model: a [`Client`] is a cheap handle (clone it into every
//! thread) to one I/O thread that owns every socket. A call hands its
//! request to that thread and blocks on its own one-shot channel until the
//! result comes; [`Client::send`] returns that channel as a [`Pending`], so
//! one thread can keep many requests in flight. A [`Pending`] is also a
//! `Future`: `client.send(target, frames).await` works in any executor
//! (the I/O thread wakes the task; no runtime is pulled in). The I/O
//! thread sends each request with a request id (docs/PROTOCOL.md),
//! notices a failed bridge (no answer within `request_timeout`, a dropped
//! connection from libzmq's socket monitor, heartbeat silence, a
//! `draining` answer), and resends everything unanswered there to the next
//! bridge with the same id. The first answer completes the call; any later
//! one is dropped, so each call gets exactly one result.
//!
//! Streams: a [`Subscriber`] receives what the bridges republish from
//! remote PUB services, from both bridges at once, merged into one feed
//! that survives a failover and reports, by count, the messages it missed.
#![forbid(unsafe_code)]

mod breaker;
mod config;
pub mod curve;
mod engine;
mod merge;
mod oneshot;
pub mod rules;
mod subscriber;

pub use breaker::BreakerState;
pub use config::{BreakerConfig, ClientConfig, Section};
pub use oneshot::Pending;
pub use rules::ConfigError;
pub use subscriber::{Delivery, StreamMessage, Subscriber};
pub use zbridge_protocol::ErrorCode;

use oneshot::Completer;
use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A handle to the client's I/O thread. Clone it freely; the thread stops
/// when the last handle is dropped (unanswered calls then get
/// [`ClientError::Closed`]).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    doorbell: Doorbell,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The process that started the I/O thread: after a `fork(2)` the
    /// child has a copy of this handle but no such thread.
    origin: Origin,
    /// The largest frame the bridges accept ([`ClientConfig::max_transport_bytes`]).
    max_frame: usize,
}

/// Wakes the I/O thread: one byte on a socket pair it polls, written only
/// while `rung` is clear, which the thread does just before it may sleep
/// (it sets it again when it wakes).
pub(crate) struct Doorbell {
    write: UnixStream,
    rung: Arc<AtomicBool>,
}

impl Doorbell {
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            // A full pipe means a wake-up is already waiting.
            let _ = (&self.write).write(&[1]);
        }
    }
}

pub(crate) enum Command {
    Call(Call),
    Listen(mpsc::Sender<Event>),
    Stop,
}

/// A request on its way, with where its result goes.
pub(crate) struct Call {
    /// `None` on the JSON path: the one frame names its target itself.
    pub target: Option<String>,
    pub frames: Vec<Vec<u8>>,
    pub done: Completer,
    pub submitted: Instant,
}

/// A target's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The target's reply frames, unchanged.
    pub frames: Vec<Vec<u8>>,
    /// The bridge that delivered it.
    pub endpoint: String,
    /// How many times the request was sent (more than 1 after a failover).
    pub attempts: u32,
    /// From the call to its answer.
    pub elapsed: Duration,
}

/// Every way a call can fail.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientError {
    /// The bridge answered with an error document: the request reached a
    /// bridge, which refused it or could not get an answer from the target.
    Bridge { code: ErrorCode, message: String },
    /// A circuit breaker is open (of every bridge, or of the client as a
    /// whole): the call failed at once, without touching the network.
    CircuitOpen { retry_after: Duration },
    /// Sent, and no bridge answered within `request_timeout`, over
    /// `max_reconnect_attempts` rounds of all endpoints.
    Timeout { attempts: u32 },
    /// No bridge was reachable (none connected) over
    /// `max_reconnect_attempts` rounds.
    AllBridgesDown {
        attempts: u32,
        /// The endpoints tried.
        endpoints: Vec<String>,
        /// From the call to the verdict.
        waited: std::time::Duration,
        /// The endpoints whose last handshake failed, each with why and
        /// what to check (a CURVE key refused, no CURVE where it is
        /// needed).
        handshakes: Vec<String>,
    },
    /// An answer that is not a zbridge reply.
    BadReply(String),
    /// The client was dropped before the call had its result.
    Closed,
    /// A frame over `max_transport_bytes`, which the bridges would cut
    /// the connection for: refused before anything was sent.
    TooLarge { bytes: usize, limit: usize },
    /// The client was created in another process, before a `fork(2)`: its
    /// I/O thread is not in this one. Nothing was sent.
    OtherProcess { pid: u32 },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Bridge { code, message } => write!(f, "the bridge answered {code}: {message}"),
            ClientError::CircuitOpen { retry_after } => write!(
                f,
                "circuit open: the bridges have been failing, so calls fail fast; retry in {:.1} s",
                retry_after.as_secs_f64()
            ),
            ClientError::Timeout { attempts } => write!(
                f,
                "no bridge answered within request_timeout ({attempts} attempts): are the bridges running and reachable?"
            ),
            ClientError::AllBridgesDown {
                attempts,
                endpoints,
                waited,
                handshakes,
            } if !handshakes.is_empty() => write!(
                f,
                "no bridge reachable at {} ({attempts} tries in {:.1} s): {}",
                endpoints.join(", "),
                waited.as_secs_f64(),
                handshakes.join("; ")
            ),
            ClientError::AllBridgesDown {
                attempts,
                endpoints,
                waited,
                ..
            } => write!(
                f,
                "no bridge reachable at {} ({attempts} tries in {:.1} s, max_reconnect_attempts rounds over them): check that the bridges run (zbridge run --mode active, --mode passive) and listen there (zbridge status --endpoint ENDPOINT, or ss -ltn on their host), and that nothing between this host and theirs blocks the ports",
                endpoints.join(", "),
                waited.as_secs_f64()
            ),
            ClientError::BadReply(why) => write!(f, "not a zbridge reply: {why}"),
            ClientError::Closed => f.write_str("the client was closed before the call had its result"),
            ClientError::TooLarge { bytes, limit } => write!(
                f,
                "a request frame of {bytes} bytes is over max_transport_bytes ({limit} bytes), the largest frame the bridges accept: nothing was sent; send less, or raise max_transport_bytes on the bridges and the client alike"
            ),
            ClientError::OtherProcess { pid } => write!(
                f,
                "this client was created in another process (pid {pid}) and does not survive a fork: create a new one in this process"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// A short name for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Bridge { code, .. } => code.as_str(),
            ClientError::CircuitOpen { .. } => "client_circuit_open",
            ClientError::Timeout { .. } => "client_timeout",
            ClientError::AllBridgesDown { .. } => "all_bridges_down",
            ClientError::BadReply(_) => "bad_reply",
            ClientError::Closed => "closed",
            ClientError::TooLarge { .. } => "client_too_large",
            ClientError::OtherProcess { .. } => "other_process",
        }
    }
}

/// Something the client noticed, also logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection to a bridge is up (libzmq's handshake finished).
    Connected { endpoint: String },
    /// A bridge is out of use; `reason` says what showed it.
    EndpointDown {
        endpoint: String,
        reason: &'static str,
    },
    /// A bridge answered probes for the hold-down and is usable again.
    EndpointUp { endpoint: String },
    /// Requests now go to a lower-priority bridge.
    FailedOver { from: String, to: String },
    /// Requests now go to a higher-priority bridge again.
    SwitchedBack { from: String, to: String },
    /// A breaker changed state; `endpoint` is `None` for the overall one.
    Breaker {
        endpoint: Option<String>,
        state: BreakerState,
    },
}

impl Client {
    /// Start the I/O thread and connect to every endpoint. Returns at once:
    /// calls made before a bridge is connected wait for one.
    pub fn connect(config: ClientConfig) -> std::io::Result<Client> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let rung = Arc::new(AtomicBool::new(false));
        let (commands, inbox) = mpsc::channel();
        let max_frame = config.max_transport_bytes;
        let engine = engine::Engine::new(config, inbox, read, Arc::clone(&rung))?;
        let thread = std::thread::Builder::new()
            .name("zbridge-client".into())
            .spawn(move || engine.run())?;
        Ok(Client {
            shared: Arc::new(Shared {
                commands,
                doorbell: Doorbell { write, rung },
                thread: Mutex::new(Some(thread)),
                origin: Origin::here(),
                max_frame,
            }),
        })
    }

    /// Send `payload` to `target` and wait for the one result.
    pub fn request(&self, target: &str, payload: &[u8]) -> Result<Reply, ClientError> {
        self.send(target, vec![payload.to_vec()]).wait()
    }

    /// Send a request of one or more frames; the result comes through the
    /// returned [`Pending`].
    pub fn send(&self, target: &str, frames: Vec<Vec<u8>>) -> Pending {
        self.submit(Some(target.to_string()), frames)
    }

    /// Send one JSON object that names its target (`{"target":"pc2",...}`)
    /// on the bridge's JSON path: the target receives the frame unchanged.
    /// The bytes are not parsed here; a bad one is answered by the bridge
    /// (`invalid_json`, `missing_target`).
    pub fn send_json(&self, body: Vec<u8>) -> Pending {
        self.submit(None, vec![body])
    }

    fn submit(&self, target: Option<String>, frames: Vec<Vec<u8>>) -> Pending {
        let (done, pending) = oneshot::oneshot();
        if let Err(e) = self
            .check()
            .and_then(|()| self.shared.fits(target.as_deref(), &frames))
        {
            done.complete(Err(e));
            return pending;
        }
        let call = Call {
            target,
            frames,
            done,
            submitted: Instant::now(),
        };
        // Refused only when the I/O thread is gone: dropping the call
        // completes it with `Closed`.
        let _ = self.shared.command(Command::Call(call));
        pending
    }

    /// Whether calls can be made from this process: not in the child of a
    /// `fork(2)` made after the client started (its I/O thread stayed in
    /// the parent), where every call fails at once with
    /// [`ClientError::OtherProcess`].
    pub fn check(&self) -> Result<(), ClientError> {
        self.shared.check()
    }

    /// A channel of the client's [`Event`]s from now on (closed at once in
    /// another process than the client's: see [`Client::check`]).
    pub fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        let _ = self.shared.command(Command::Listen(tx));
        rx
    }
}

impl Shared {
    fn command(&self, command: Command) -> Result<(), ClientError> {
        // In a forked child the doorbell is the parent's: never ring it.
        self.check()?;
        self.commands
            .send(command)
            .map_err(|_| ClientError::Closed)?;
        self.doorbell.ring();
        Ok(())
    }

    fn check(&self) -> Result<(), ClientError> {
        self.origin.check()
    }

    /// Refuse a frame the bridges would cut the connection for: sent, it
    /// would cost every other call on that connection a failover.
    fn fits(&self, target: Option<&str>, frames: &[Vec<u8>]) -> Result<(), ClientError> {
        let target = target.map(str::len);
        match frames.iter().map(Vec::len).chain(target).max() {
            Some(bytes) if bytes > self.max_frame => Err(ClientError::TooLarge {
                bytes,
                limit: self.max_frame,
            }),
            _ => Ok(()),
        }
    }
}

/// The process a client or subscriber was made in: sockets and threads
/// opened there are not in a `fork(2)` child, which has only copies of
/// their handles. Checked on every call, so without a system call
/// (`getpid` is one; glibc keeps no copy): a count of forks that moved
/// ([`zbridge_socket::sys::forks`]) means a child.
pub(crate) struct Origin {
    pid: u32,
    forks: u64,
}

impl Origin {
    pub(crate) fn here() -> Origin {
        Origin {
            forks: zbridge_socket::sys::forks(),
            pid: std::process::id(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), ClientError> {
        if zbridge_socket::sys::forks() == self.forks {
            Ok(())
        } else {
            Err(ClientError::OtherProcess { pid: self.pid })
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if self.check().is_err() {
            // A forked child's copy: the I/O thread and its sockets are the
            // parent's, so there is nothing here to stop or join (joining
            // a thread this process does not have would fail).
            std::mem::forget(thread);
            return;
        }
        let _ = self.command(Command::Stop);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
