//! Real parts for the demo, the benchmarks and the tests: a bridge process
//! that is killed when dropped, echo services, and a verifying load client.
//!
//! Everything here runs on loopback with ports the OS picks. Waiting is for
//! an event (a ready line, a reply, a log line) with a deadline, never a
//! fixed sleep.

use anyhow::{bail, Context as _};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that nobody listens on right now and that this
/// process has not handed out before: the OS may give a port it just
/// released again, and two "free" ports in one configuration must differ.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_or(0, |a| a.port());
        if port == 0 {
            return 0;
        }
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A config file that is deleted when dropped.
pub struct TempConfig(pub std::path::PathBuf);

impl TempConfig {
    pub fn new(toml: &str) -> TempConfig {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "zbridge-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        // A test or benchmark cannot go on without its config.
        std::fs::write(&path, toml).expect("write a config file to the temp directory");
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

/// Flags for a lone bridge that needs no peer: active at once on a free
/// port, heartbeats on a free port, its peer looked for where nobody is.
pub fn lone_bridge_flags() -> Vec<String> {
    let mut flags: Vec<String> = [
        "--mode=active",
        "--primary-port=0",
        "--primary-heartbeat-port=0",
        "--primary-monitor-port=0",
        "--heartbeat-interval=0.05",
        "--heartbeat-timeout=0.2",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--secondary-heartbeat-port={}", free_port()));
    flags
}

/// The body of a `200` answer to `GET url` (`http://HOST:PORT/PATH`), or
/// `None`: a plain HTTP/1.0 exchange for the benchmarks and the soak.
pub fn http_get(url: &str, timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (address, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let socket = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()?
        .next()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.split(' ').nth(1).filter(|code| *code == "200")?;
    Some(body.to_string())
}

/// Send one request on a fresh DEALER and wait up to `timeout` for the reply.
pub fn ask(endpoint: &str, frames: &[&[u8]], timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).ok()?;
    socket.set_linger(0).ok()?;
    socket.connect(endpoint).ok()?;
    socket.send_multipart(frames, 0).ok()?;
    if socket.poll(zmq::POLLIN, timeout.as_millis() as i64).ok()? == 0 {
        return None;
    }
    socket.recv_multipart(0).ok()
}

/// A bridge's status document, asked through its frontend.
pub fn status(endpoint: &str) -> Option<Value> {
    let reply = ask(
        endpoint,
        &[br#"{"action":"status"}"#],
        Duration::from_secs(2),
    )?;
    serde_json::from_slice(reply.last()?).ok()
}

/// Retry `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process whose stderr is kept as its log. Dropping it kills it
/// (SIGKILL) and reaps it, also when a test fails.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// stdout lines, with the time each was read.
    out: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Process {
    /// Start `command` and wait until a line on its stdout satisfies
    /// `ready`; that line is returned.
    pub fn spawn(
        mut command: Command,
        ready: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Process, String)> {
        let name = format!("{:?}", command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (lines, ready_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(mut out) = out.lock() {
                        out.push((Instant::now(), line.clone()));
                    }
                    let _ = lines.send(line);
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        let mut process = Process { child, log, out };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(line) if ready(&line) => return Ok((process, line)),
                Ok(_) => {}
                Err(_) => {
                    let status = process.child.try_wait().ok().flatten();
                    bail!(
                        "{name} did not become ready (exit: {status:?}); its log:\n{}",
                        process.log().join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines (stderr) so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first JSON line on stdout that satisfies `pred`, with the time
    /// it was read; waits up to `timeout` for it.
    pub fn wait_for_event(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        let mut found = None;
        wait_until(timeout, || {
            let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
            found = out.into_iter().find_map(|(at, line)| {
                let doc: Value = serde_json::from_str(&line).ok()?;
                pred(&doc).then_some((at, doc))
            });
            found.is_some()
        });
        found
    }

    /// The lines on stdout so far.
    pub fn output(&self) -> Vec<String> {
        let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
        out.into_iter().map(|(_, line)| line).collect()
    }

    /// Wait until a line on stdout contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.output().iter().any(|l| l.contains(needle)))
    }

    /// Wait until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().iter().any(|l| l.contains(needle)))
    }

    /// Send a signal by name (`TERM`, `KILL`, `STOP`, ...) with kill(1).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.pid());
        }
        Ok(())
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Every JSON line printed on stdout so far.
    pub fn events(&self) -> Vec<Value> {
        self.timed_events().into_iter().map(|(_, e)| e).collect()
    }

    /// Every JSON line printed on stdout so far, with the time it was read.
    pub fn timed_events(&self) -> Vec<(Instant, Value)> {
        let out = self.out.lock().map(|o| o.clone()).unwrap_or_default();
        out.into_iter()
            .filter_map(|(at, line)| Some((at, serde_json::from_str(&line).ok()?)))
            .collect()
    }

    /// Open file descriptors, from /proc.
    pub fn fds(&self) -> Option<u64> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok()?;
        Some(dir.count() as u64)
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `zbridge run` process, ready: its frontend is bound.
pub struct BridgeProcess {
    pub process: Process,
    /// The ready line's `frontend` endpoint.
    pub frontend: String,
    /// The whole ready line.
    pub ready: Value,
}

impl BridgeProcess {
    /// Start `exe run ARGS...` and wait for its ready line.
    pub fn spawn(exe: &Path, args: &[String]) -> anyhow::Result<BridgeProcess> {
        let mut command = Command::new(exe);
        command.arg("run").args(args);
        BridgeProcess::start(command)
    }

    /// Start a command that runs `zbridge run` (e.g. inside a network
    /// namespace) and wait for its ready line.
    pub fn start(command: Command) -> anyhow::Result<BridgeProcess> {
        let (process, line) = Process::spawn(command, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|doc| doc["event"] == "ready")
        })?;
        let ready: Value = serde_json::from_str(&line)?;
        Ok(BridgeProcess {
            process,
            frontend: ready["frontend"].as_str().unwrap_or_default().into(),
            ready,
        })
    }
}

impl std::ops::Deref for BridgeProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for BridgeProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// A ROUTER service on loopback that answers every request with its own
/// frames, after an optional `tag` frame. Runs on its own thread until
/// dropped.
pub struct EchoService {
    pub endpoint: String,
    context: zmq::Context,
    thread: Option<JoinHandle<()>>,
}

impl EchoService {
    pub fn start(tag: Option<&str>) -> anyhow::Result<EchoService> {
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
        let thread = std::thread::spawn(move || echo_loop(&socket, tag.as_deref()));
        Ok(EchoService {
            endpoint,
            context,
            thread: Some(thread),
        })
    }
}

fn echo_loop(socket: &zmq::Socket, tag: Option<&[u8]>) {
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

/// How the load client phrases its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One JSON frame with a `target` field.
    Json,
    /// A target frame, then one payload frame.
    Multipart,
    /// No bridge: an empty delimiter and one payload frame, straight to an
    /// echo service or through a plain proxy.
    Direct,
}

/// A bounded load: `clients` DEALER sockets with `in_flight` requests each,
/// until `requests` are answered or `duration` passes. Every reply is
/// checked against its request.
#[derive(Debug, Clone)]
pub struct Load {
    /// One endpoint, or several separated by commas: each client's DEALER
    /// connects to all of them and spreads its requests.
    pub endpoint: String,
    pub targets: Vec<String>,
    pub path: Route,
    pub clients: usize,
    pub in_flight: usize,
    pub requests: u64,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// Seconds to wait for the last replies once sending stops.
    pub settle: Duration,
    /// The services tag their replies with their target name (see
    /// [`EchoService::start`]); check that each reply came from the target
    /// its request named.
    pub tagged: bool,
    /// Requests per second over all clients; `None`: as fast as the
    /// in-flight window allows.
    pub rate: Option<f64>,
    /// CURVE keys of the clients (a CURVE frontend); `None`: plain.
    pub curve: Option<zbridge_client::curve::ClientKeys>,
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    /// Bridge error replies by code.
    pub errors: BTreeMap<String, u64>,
    /// Replies that matched no outstanding request, or a different one.
    pub mismatched: u64,
    /// Requests never answered.
    pub lost: u64,
    pub elapsed: Duration,
    /// Round-trip times of the `ok` replies.
    pub latencies: Vec<Duration>,
    /// Per one-second slice of the run: ok replies, error replies.
    pub timeline: Vec<(u64, u64)>,
}

impl LoadReport {
    pub fn merge(&mut self, other: LoadReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.mismatched += other.mismatched;
        self.lost += other.lost;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latencies.extend(other.latencies);
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), (0, 0));
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of the latencies, in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1].as_secs_f64() * 1e3
    }
}

impl Load {
    pub fn run(&self) -> anyhow::Result<LoadReport> {
        let context = zmq::Context::new();
        let per_client = self.requests.div_ceil(self.clients as u64);
        let start = Instant::now();
        let threads: Vec<_> = (0..self.clients)
            .map(|client| {
                let socket = context.socket(zmq::DEALER)?;
                socket.set_linger(0)?;
                socket.set_ipv6(true)?;
                if let Some(keys) = &self.curve {
                    keys.apply(&socket)?;
                }
                for endpoint in self.endpoint.split(',') {
                    socket.connect(endpoint)?;
                }
                let load = self.clone();
                Ok(std::thread::spawn(move || {
                    load.client(&socket, client as u64, per_client, start)
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut report = LoadReport::default();
        for thread in threads {
            let part = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a load client panicked"))??;
            report.merge(part);
        }
        Ok(report)
    }

    /// The request with id `id`, and the offset of the id in its last frame.
    fn request(&self, id: u64) -> Vec<Vec<u8>> {
        let target = self.target_of(id);
        match self.path {
            Route::Json => {
                let head = format!(r#"{{"id":"{id:016x}","target":"{target}","pad":""#);
                let mut frame = head.into_bytes();
                let pad = self.payload_bytes.saturating_sub(frame.len() + 2);
                frame.extend(std::iter::repeat_n(b'x', pad));
                frame.extend_from_slice(b"\"}");
                vec![frame]
            }
            Route::Multipart | Route::Direct => {
                let mut frame = format!("{id:016x}").into_bytes();
                frame.resize(self.payload_bytes.max(16), b'x');
                if self.path == Route::Direct {
                    // With a delimiter, as a REQ socket would send it.
                    vec![Vec::new(), frame]
                } else {
                    vec![target.as_bytes().to_vec(), frame]
                }
            }
        }
    }

    fn target_of(&self, id: u64) -> &str {
        &self.targets[(id % self.targets.len().max(1) as u64) as usize]
    }

    /// Whether `reply` is what the echo service answers to request `id`.
    fn is_reply_to(&self, id: u64, reply: &[Vec<u8>]) -> bool {
        let echoed = match (self.tagged, reply) {
            (false, [echo]) => echo,
            (true, [tag, echo]) if tag == self.target_of(id).as_bytes() => echo,
            _ => return false,
        };
        self.request(id).last() == Some(echoed)
    }

    fn id_of(&self, reply: &[u8]) -> Option<u64> {
        let hex = match self.path {
            Route::Json => reply.get(7..23)?,
            Route::Multipart | Route::Direct => reply.get(..16)?,
        };
        u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }

    fn client(
        &self,
        socket: &zmq::Socket,
        client: u64,
        count: u64,
        start: Instant,
    ) -> anyhow::Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut outstanding: HashMap<u64, Instant> = HashMap::new();
        let mut next = 0u64;
        let stop_sending = start + self.duration;
        let mut give_up = stop_sending + self.settle;
        // Each client sends its share of the rate.
        let interval = self
            .rate
            .map(|r| Duration::from_secs_f64(self.clients as f64 / r.max(1e-3)));
        let mut next_send = start;
        loop {
            let now = Instant::now();
            while outstanding.len() < self.in_flight
                && next < count
                && now < stop_sending
                && now >= next_send
            {
                let id = client << 40 | next;
                next += 1;
                socket.send_multipart(self.request(id), 0)?;
                outstanding.insert(id, Instant::now());
                report.sent += 1;
                if let Some(interval) = interval {
                    // Catch up at most 10 ms of sending after a stall
                    // (poll sleeps whole milliseconds), not a burst.
                    next_send = (next_send + interval).max(now - Duration::from_millis(10));
                }
            }
            if next >= count || now >= stop_sending {
                if outstanding.is_empty() {
                    break;
                }
                give_up = give_up.min(now.max(stop_sending) + self.settle);
            }
            let left = give_up.saturating_duration_since(now);
            if left.is_zero() {
                break;
            }
            let wait = match interval {
                Some(_) if next < count && now < stop_sending => {
                    left.min(next_send.saturating_duration_since(now))
                }
                _ => left,
            };
            if socket.poll(zmq::POLLIN, wait.as_millis().max(1) as i64)? == 0 {
                continue;
            }
            while let Ok(reply) = socket.recv_multipart(zmq::DONTWAIT) {
                let now = Instant::now();
                let slot = ((now - start).as_secs()) as usize;
                if report.timeline.len() <= slot {
                    report.timeline.resize(slot + 1, (0, 0));
                }
                let body = match reply.as_slice() {
                    [delimiter, rest @ ..] if delimiter.is_empty() => rest,
                    all => all,
                };
                let Some(frame) = body.last() else {
                    report.mismatched += 1;
                    continue;
                };
                if let (Some(code), 1) = (error_code(frame), body.len()) {
                    // Error replies carry no id: retire the oldest request.
                    if let Some((&id, _)) = outstanding.iter().min_by_key(|(_, t)| **t) {
                        outstanding.remove(&id);
                    }
                    *report.errors.entry(code).or_default() += 1;
                    report.timeline[slot].1 += 1;
                    continue;
                }
                let matched = self.id_of(frame).and_then(|id| {
                    let sent = outstanding.remove(&id)?;
                    self.is_reply_to(id, body).then_some(sent)
                });
                match matched {
                    Some(sent) => {
                        report.ok += 1;
                        report.latencies.push(now - sent);
                        report.timeline[slot].0 += 1;
                    }
                    None => report.mismatched += 1,
                }
            }
        }
        report.lost = outstanding.len() as u64;
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// The `error` code of a bridge error document.
pub fn error_code(frame: &[u8]) -> Option<String> {
    zbridge_protocol::parse_error_reply(&[frame]).map(|r| r.code.as_str().to_string())
}

/// A plain client with retry across bridge endpoints, as an agent without
/// the client library would write it ("lazy pirate"): one request at a
/// time, paced at `rate`; an attempt that times out, finds no connection or
/// gets an error reply is sent again, with the same payload, to the next
/// endpoint. A socket that timed out is replaced, so a late reply can never
/// be taken for the answer to a later request.
#[derive(Debug, Clone)]
pub struct Retrying {
    pub endpoints: Vec<String>,
    pub target: String,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    pub attempt_timeout: Duration,
    /// A request not answered after this long counts as lost.
    pub give_up: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RetryingReport {
    pub sent: u64,
    pub ok: u64,
    pub lost: u64,
    /// Attempts beyond the first, over all requests.
    pub retries: u64,
    /// Times the client moved to another endpoint.
    pub switches: u64,
    /// The longest time a request waited for its answer: the gap a caller saw.
    pub max_wait: Duration,
    /// When (since start) the longest wait began.
    pub max_wait_at: Duration,
    /// Answered requests per 100 ms slice.
    pub timeline: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Retrying {
    fn socket(&self, context: &zmq::Context, endpoint: &str) -> zmq::Result<zmq::Socket> {
        let socket = context.socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        // Fail at once where nothing is connected, and reconnect quickly to
        // a port that another process has just taken over.
        socket.set_immediate(true)?;
        socket.set_reconnect_ivl(10)?;
        socket.set_reconnect_ivl_max(100)?;
        socket.connect(endpoint)?;
        Ok(socket)
    }

    /// One attempt: `Ok(true)` answered, `Ok(false)` try elsewhere.
    fn attempt(
        &self,
        socket: &zmq::Socket,
        payload: &[u8],
        report: &mut RetryingReport,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + self.attempt_timeout;
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).as_millis() as i64;
        // Wait for a connection (ZMQ_IMMEDIATE): none within the attempt
        // timeout means this endpoint is down.
        if socket.poll(zmq::POLLOUT, left(deadline).max(1))? == 0 {
            return Ok(false);
        }
        if socket
            .send_multipart([self.target.as_bytes(), payload], zmq::DONTWAIT)
            .is_err()
        {
            return Ok(false);
        }
        loop {
            // Wait in short slices: a connection that drops while we wait
            // (the socket stops being writable, ZMQ_IMMEDIATE) means the
            // request died with it; retry now rather than at the deadline.
            let slice = left(deadline).clamp(0, 5);
            if socket.poll(zmq::POLLIN, slice.max(1))? == 0 {
                let connected = socket.get_events()?.contains(zmq::POLLOUT);
                if !connected || Instant::now() >= deadline {
                    return Ok(false);
                }
                continue;
            }
            let reply = socket.recv_multipart(0)?;
            if let [frame] = reply.as_slice() {
                if frame == payload {
                    return Ok(true);
                }
                if let Some(code) = error_code(frame) {
                    *report.errors.entry(code).or_default() += 1;
                    return Ok(false);
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    pub fn run(&self) -> anyhow::Result<RetryingReport> {
        let context = zmq::Context::new();
        let mut sockets: Vec<Option<zmq::Socket>> = self.endpoints.iter().map(|_| None).collect();
        let mut report = RetryingReport::default();
        let mut current = 0;
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / self.rate.max(0.001));
        let mut next_send = start;
        let mut id = 0u64;
        while next_send < start + self.duration {
            if let Some(wait) = next_send.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            id += 1;
            report.sent += 1;
            let payload = format!("{id:016x}").into_bytes();
            let first = Instant::now();
            let mut endpoint = current;
            let mut answered = false;
            while first.elapsed() < self.give_up {
                let socket = match &sockets[endpoint] {
                    Some(s) => s,
                    None => {
                        sockets[endpoint].insert(self.socket(&context, &self.endpoints[endpoint])?)
                    }
                };
                if self.attempt(socket, &payload, &mut report)? {
                    answered = true;
                    break;
                }
                // Drop the socket: whatever it still receives is stale.
                sockets[endpoint] = None;
                report.retries += 1;
                endpoint = (endpoint + 1) % self.endpoints.len();
            }
            let waited = first.elapsed();
            if waited > report.max_wait {
                report.max_wait = waited;
                report.max_wait_at = first - start;
            }
            if answered {
                report.ok += 1;
                let slot = ((Instant::now() - start).as_millis() / 100) as usize;
                if report.timeline.len() <= slot {
                    report.timeline.resize(slot + 1, 0);
                }
                report.timeline[slot] += 1;
                if endpoint != current {
                    report.switches += 1;
                    current = endpoint;
                }
            } else {
                report.lost += 1;
            }
            next_send += interval;
            if next_send < Instant::now() {
                // Behind schedule after a long wait: do not burst to catch up.
                next_send = Instant::now();
            }
        }
        Ok(report)
    }
}

/// How the active bridge is made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9: the process dies, the kernel closes its sockets.
    Kill,
    /// SIGSTOP for a while, then SIGCONT: a hung active holding its port.
    Stop,
    /// SIGTERM: a planned handover.
    Term,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Stop => "SIGSTOP+SIGCONT",
            Fault::Term => "SIGTERM",
        }
    }
}

/// The ports and services of a pair of bridges on loopback: two echo
/// services as targets `main_pc` and `pc2`, free ports for everything.
pub struct LoopbackPair {
    /// Primary and secondary frontend, primary and secondary heartbeat.
    pub ports: [u16; 4],
    monitors: [u16; 2],
    main_pc: EchoService,
    pc2: EchoService,
    interval: Duration,
    timeout: Duration,
}

impl LoopbackPair {
    pub fn new(interval: Duration, timeout: Duration) -> anyhow::Result<LoopbackPair> {
        Ok(LoopbackPair {
            ports: [free_port(), free_port(), free_port(), free_port()],
            monitors: [free_port(), free_port()],
            main_pc: EchoService::start(None)?,
            pc2: EchoService::start(None)?,
            interval,
            timeout,
        })
    }

    /// The flags of the instance started with `--mode MODE`.
    pub fn flags(&self, mode: &str) -> Vec<String> {
        vec![
            format!("--mode={mode}"),
            format!("--primary-port={}", self.ports[0]),
            format!("--secondary-port={}", self.ports[1]),
            format!("--primary-heartbeat-port={}", self.ports[2]),
            format!("--secondary-heartbeat-port={}", self.ports[3]),
            format!("--primary-monitor-port={}", self.monitors[0]),
            format!("--secondary-monitor-port={}", self.monitors[1]),
            format!("--heartbeat-interval={}", self.interval.as_secs_f64()),
            format!("--heartbeat-timeout={}", self.timeout.as_secs_f64()),
            format!("--main-pc-addr={}", self.main_pc.endpoint),
            format!("--pc2-addr={}", self.pc2.endpoint),
        ]
    }

    /// The frontend endpoints, primary port first.
    pub fn endpoints(&self) -> Vec<String> {
        loopback_endpoints(&self.ports[..2])
    }

    /// The heartbeat PUB endpoints, primary first.
    pub fn heartbeat_endpoints(&self) -> Vec<String> {
        loopback_endpoints(&self.ports[2..])
    }
}

/// `tcp://127.0.0.1:PORT` for each port.
pub fn loopback_endpoints(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("tcp://127.0.0.1:{p}"))
        .collect()
}

/// A pair on loopback with two services, two retrying clients (one knows
/// only the primary port, one knows both), and one fault of the active.
pub struct Failover {
    pub fault: Fault,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Requests per second of each client.
    pub rate: f64,
    /// Load before the fault, and after it.
    pub before: Duration,
    pub after: Duration,
    /// How long a stopped active stays stopped.
    pub stopped_for: Duration,
    /// More flags for both bridges (e.g. a config file with streams).
    pub extra_flags: Vec<String>,
}

pub struct FailoverReport {
    /// From the fault to the passive holding the primary port.
    pub takeover: Option<Duration>,
    /// From the fault to the passive logging that it noticed.
    pub detection: Option<Duration>,
    pub primary_only: RetryingReport,
    pub both: RetryingReport,
    pub primary_endpoint: String,
    pub secondary_endpoint: String,
    /// The restarted primary's role (kill -9 only).
    pub rejoined_as: Option<String>,
}

impl Failover {
    /// Run the scenario; `before_load` is called with the primary's
    /// endpoint once the pair is up.
    pub fn run(
        &self,
        exe: &Path,
        before_load: &mut dyn FnMut(&str),
    ) -> anyhow::Result<FailoverReport> {
        let pair = LoopbackPair::new(self.heartbeat_interval, self.heartbeat_timeout)?;
        let flags = |mode: &str| {
            let mut flags = pair.flags(mode);
            flags.extend(self.extra_flags.iter().cloned());
            flags
        };
        let endpoint = |p: u16| format!("tcp://127.0.0.1:{p}");
        let ports = pair.ports;
        let primary = BridgeProcess::spawn(exe, &flags("active"))?;
        let mut primary = Some(primary);
        let secondary = BridgeProcess::spawn(exe, &flags("passive"))?;
        if !wait_until(self.heartbeat_timeout * 10, || {
            status(&secondary.frontend).is_some_and(|s| s["peer"]["alive"] == true)
        }) {
            bail!("the secondary does not hear the primary");
        }
        before_load(&endpoint(ports[0]));
        let client = |endpoints: Vec<String>| Retrying {
            endpoints,
            target: "pc2".into(),
            rate: self.rate,
            duration: self.before + self.after,
            attempt_timeout: self.heartbeat_timeout.min(Duration::from_millis(500)),
            give_up: Duration::from_secs(30),
        };
        let primary_only = client(vec![endpoint(ports[0])]);
        let both = client(vec![endpoint(ports[0]), endpoint(ports[1])]);
        let loads = [primary_only, both].map(|c| std::thread::spawn(move || c.run()));
        std::thread::sleep(self.before);
        let signal = match self.fault {
            Fault::Kill => "KILL",
            Fault::Stop => "STOP",
            Fault::Term => "TERM",
        };
        let faulted = Instant::now();
        if let Some(p) = &primary {
            p.signal(signal)?;
        }
        if self.fault == Fault::Stop {
            std::thread::sleep(self.stopped_for);
            if let Some(p) = &primary {
                p.signal("CONT")?;
            }
        }
        let takeover = secondary
            .wait_for_event(self.after, |e| {
                e["event"] == "bound" && e["port"] == "primary"
            })
            .map(|(at, _)| at.saturating_duration_since(faulted));
        let detection = secondary
            .wait_for_event(self.after, |e| {
                (e["event"] == "bound" || e["event"] == "bind_failed") && e["port"] == "primary"
            })
            .map(|(at, _)| at.saturating_duration_since(faulted));
        let mut reports = Vec::new();
        for load in loads {
            reports.push(
                load.join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
            );
        }
        let mut rejoined_as = None;
        if self.fault == Fault::Kill {
            drop(primary.take());
            let restarted = BridgeProcess::spawn(exe, &flags("active"))?;
            rejoined_as = restarted.ready["role"].as_str().map(str::to_string);
        }
        let both = reports.pop().unwrap_or_default();
        let primary_only = reports.pop().unwrap_or_default();
        Ok(FailoverReport {
            takeover,
            detection,
            primary_only,
            both,
            primary_endpoint: endpoint(ports[0]),
            secondary_endpoint: endpoint(ports[1]),
            rejoined_as,
        })
    }
}

/// A bounded load through the client library: one thread keeps up to
/// `in_flight` calls going (at `rate`, if given) for `duration`, then waits
/// up to `settle` for the last results. Every reply is checked against its
/// request (the target must echo the payload as its last frame, as
/// [`EchoService`] and tests/peers/rep_service.py do).
#[derive(Debug, Clone)]
pub struct ClientLoad {
    pub target: String,
    /// Calls per second; `None`: as fast as the in-flight window allows.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub in_flight: usize,
    pub payload_bytes: usize,
    pub settle: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ClientLoadReport {
    /// `errors` by [`zbridge_client::ClientError::kind`]; `lost`: calls
    /// with no result by the end of `settle`.
    pub load: LoadReport,
    pub failovers: u64,
    pub switch_backs: u64,
}

impl ClientLoadReport {
    /// The longest call that got its answer: the gap a caller saw.
    pub fn max_wait(&self) -> Duration {
        self.load
            .latencies
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
    }

    /// The figures as the one-line JSON object of `zbridge bench client`.
    pub fn json(&mut self) -> Value {
        let (p50, p99) = (self.load.quantile_ms(0.5), self.load.quantile_ms(0.99));
        serde_json::json!({
            "sent": self.load.sent,
            "ok": self.load.ok,
            "lost": self.load.lost,
            "mismatched": self.load.mismatched,
            "errors": self.load.errors,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": self.max_wait().as_secs_f64() * 1e3,
            "throughput_rps": self.load.throughput(),
            "failovers": self.failovers,
            "switch_backs": self.switch_backs,
        })
    }
}

impl ClientLoad {
    pub fn run(&self, client: &zbridge_client::Client) -> ClientLoadReport {
        use std::collections::VecDeque;
        let events = client.events();
        let mut report = LoadReport::default();
        let mut pending: VecDeque<(u64, zbridge_client::Pending)> = VecDeque::new();
        let start = Instant::now();
        let end = start + self.duration;
        let interval = self
            .rate
            .map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
        let mut next_send = start;
        let mut id = 0u64;
        let filler = vec![b'x'; self.payload_bytes.saturating_sub(16)];
        let in_flight = self.in_flight.max(1);
        loop {
            let now = Instant::now();
            let sending = now < end;
            if sending && pending.len() < in_flight && now >= next_send {
                id += 1;
                let mut payload = format!("{id:016x}").into_bytes();
                payload.extend_from_slice(&filler);
                pending.push_back((id, client.send(&self.target, vec![payload])));
                report.sent += 1;
                if let Some(interval) = interval {
                    // Behind schedule after a stall: do not burst to catch up.
                    next_send = (next_send + interval).max(now);
                }
                continue;
            }
            let until = match (sending, pending.len() < in_flight) {
                (true, true) => next_send,
                (true, false) => end,
                (false, _) => end + self.settle,
            };
            let Some((want, call)) = pending.pop_front() else {
                if !sending {
                    break;
                }
                std::thread::sleep(until.saturating_duration_since(now));
                continue;
            };
            match call.wait_timeout(until.saturating_duration_since(now)) {
                Err(call) if sending || Instant::now() < end + self.settle => {
                    pending.push_front((want, call));
                }
                Err(_) => {
                    report.lost += 1 + pending.len() as u64;
                    break;
                }
                Ok(Ok(reply)) => {
                    let expected = format!("{want:016x}");
                    // The payload echoed, after a tag frame or not.
                    match reply.frames.last() {
                        Some(frame) if frame.starts_with(expected.as_bytes()) => {
                            report.ok += 1;
                            report.latencies.push(reply.elapsed);
                        }
                        _ => report.mismatched += 1,
                    }
                }
                Ok(Err(e)) => *report.errors.entry(e.kind().to_string()).or_default() += 1,
            }
        }
        report.elapsed = start.elapsed().min(self.duration);
        let mut out = ClientLoadReport {
            load: report,
            ..ClientLoadReport::default()
        };
        for event in events.try_iter() {
            match event {
                zbridge_client::Event::FailedOver { .. } => out.failovers += 1,
                zbridge_client::Event::SwitchedBack { .. } => out.switch_backs += 1,
                _ => {}
            }
        }
        out
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

/// What a subscriber to a [`Publisher`]'s stream got: the publisher's
/// counters in arrival order, and what it was told.
#[derive(Debug, Default)]
pub struct Seen {
    pub counters: Vec<u64>,
    pub arrivals: Vec<Instant>,
    /// Messages reported lost, by count.
    pub gaps: u64,
    /// Losses reported without a count.
    pub unknown_gaps: u64,
    /// Moves to the other bridge.
    pub moves: u64,
    /// The numbering source (the bridge) of the first message delivered:
    /// whichever bridge's copy reached the subscriber first.
    pub first_source: Option<u64>,
}

impl Seen {
    /// A message's payload frame: the publisher's counter first.
    pub fn push(&mut self, payload: &[u8]) {
        if let Some(n) = payload.get(..8).and_then(|b| b.try_into().ok()) {
            self.counters.push(u64::from_be_bytes(n));
            self.arrivals.push(Instant::now());
        }
    }

    /// What a zbridge-client subscriber delivered.
    pub fn take(&mut self, delivery: zbridge_client::Delivery) {
        use zbridge_client::Delivery;
        match delivery {
            Delivery::Message(m) => {
                self.first_source.get_or_insert(m.source);
                if let Some(payload) = m.frames.get(1) {
                    self.push(payload);
                }
            }
            Delivery::Gap {
                missed: Some(n), ..
            } => self.gaps += n,
            Delivery::Gap { missed: None, .. } => self.unknown_gaps += 1,
            Delivery::Moved { .. } => self.moves += 1,
        }
    }

    /// Counters between the first and the last received that never came.
    pub fn missed(&self) -> u64 {
        let mut unique = self.counters.clone();
        unique.sort_unstable();
        unique.dedup();
        match (unique.first(), unique.last()) {
            (Some(first), Some(last)) => last - first + 1 - unique.len() as u64,
            _ => 0,
        }
    }

    pub fn longest_silence(&self) -> Duration {
        self.arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// A zbridge-client Subscriber to `a.` of `stream` on `pub_endpoints`,
/// recording into `seen` until `stop`.
pub fn follow_stream(
    pub_endpoints: Vec<String>,
    heartbeat_timeout: Duration,
    stream: &str,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<()>> {
    let mut settings = zbridge_client::ClientConfig::local();
    settings.pub_endpoints = pub_endpoints;
    settings.heartbeat_timeout = heartbeat_timeout;
    let stream = stream.to_string();
    std::thread::spawn(move || {
        let mut subscriber =
            zbridge_client::Subscriber::connect(&settings, Some(&stream), &[b"a.".to_vec()])?;
        while !stop.load(Ordering::Relaxed) {
            if let Some(delivery) = subscriber.recv(Duration::from_millis(50))? {
                seen.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .take(delivery);
            }
        }
        Ok(())
    })
}
