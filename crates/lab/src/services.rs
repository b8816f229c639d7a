//! Services for a bridge to relay to: a ROUTER that echoes every request,
//! and a PUB publisher of numbered messages for the streams.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A ROUTER service on loopback that answers every request with its own
/// frames, after an optional `tag` frame, one at a time and each after a
/// service time (none by default). Runs on its own thread until dropped.
pub struct EchoService {
    pub endpoint: String,
    context: zmq::Context,
    thread: Option<JoinHandle<()>>,
}

impl EchoService {
    pub fn start(tag: Option<&str>) -> anyhow::Result<EchoService> {
        EchoService::taking(tag, Duration::ZERO)
    }

    /// An echo service that takes `service` to answer each request.
    pub fn taking(tag: Option<&str>, service: Duration) -> anyhow::Result<EchoService> {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::ROUTER)?;
        socket.set_linger(0)?;
        socket.set_sndhwm(100_000)?;
        socket.set_rcvhwm(100_000)?;
        socket.bind("tcp://127.0.0.1:*")?;
        let endpoint = socket
            .get_last_endpoint()?
            .map_err(|_| anyhow::anyhow!("non-UTF-8 endpoint"))?;
        let tag = tag.map(|t| t.as_bytes().to_vec());
        let thread = std::thread::spawn(move || echo_loop(&socket, tag.as_deref(), service));
        Ok(EchoService {
            endpoint,
            context,
            thread: Some(thread),
        })
    }
}

fn echo_loop(socket: &zmq::Socket, tag: Option<&[u8]>, service: Duration) {
    let mut frames = Vec::new();
    loop {
        frames.clear();
        loop {
            let mut frame = zmq::Message::new();
            if socket.recv(&mut frame, 0).is_err() {
                // ETERM: the service was dropped.
                return;
            }
            let more = frame.get_more();
            frames.push(frame);
            if !more {
                break;
            }
        }
        if !service.is_zero() {
            std::thread::sleep(service);
        }
        // Routing envelope up to and including the empty delimiter.
        let split = frames
            .iter()
            .position(|f| f.is_empty())
            .map_or(0, |i| i + 1);
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.drain(..).enumerate() {
            if i == split {
                if let Some(tag) = tag {
                    let _ = socket.send(tag, zmq::SNDMORE);
                }
            }
            let flags = if i < last { zmq::SNDMORE } else { 0 };
            let _ = socket.send(frame, flags);
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        // Terminating the context wakes the thread's recv with ETERM.
        let _ = self.context.destroy();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Size of each message's payload frame.
pub const PAYLOAD: usize = 100;
/// Most messages one publisher sends, whatever the rate.
const MAX_MESSAGES: u64 = 200_000_000;

/// A PUB on loopback, on its own thread, for the stream benchmark and the
/// demo: `[b"a.", counter + padding]`, as fast as it can (`rate` None) or
/// paced, while [`Publisher::set`] says so.
pub struct Publisher {
    pub endpoint: String,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    pub fn start(rate: Option<f64>) -> anyhow::Result<Publisher> {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::PUB)?;
        socket.set_linger(0)?;
        socket.bind("tcp://127.0.0.1:*")?;
        let endpoint = socket
            .get_last_endpoint()?
            .map_err(|_| anyhow::anyhow!("non-UTF-8 endpoint"))?;
        let (go, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (run, halt) = (Arc::clone(&go), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let _context = context;
            let mut payload = [b'x'; PAYLOAD];
            let start = Instant::now();
            let mut n: u64 = 0;
            while !halt.load(Ordering::Relaxed) && n < MAX_MESSAGES {
                if !run.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                payload[..8].copy_from_slice(&n.to_be_bytes());
                let sent = socket
                    .send(&b"a."[..], zmq::SNDMORE)
                    .and_then(|()| socket.send(&payload[..], 0));
                if sent.is_err() {
                    return;
                }
                n += 1;
            }
        });
        Ok(Publisher {
            endpoint,
            go,
            stop,
            thread: Some(thread),
        })
    }

    /// Publish (or pause).
    pub fn set(&self, on: bool) {
        self.go.store(on, Ordering::Relaxed);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
