//! Load generators that check every reply against its request: many
//! DEALERs with requests in flight ([`Load`]), a plain agent that retries
//! across endpoints ([`Retrying`]), and the client library ([`ClientLoad`]).

use crate::error_code;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

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
