//! Tables over the request path: (state, event, time) -> (actions, state),
//! with the actions rendered as the frames the loop would send. The
//! fixture plays the loop: a target marked not connected reports its sends
//! as blocked, as a DEALER with ZMQ_IMMEDIATE and no backend does.

use super::*;
use crate::config::File;
use zbridge_protocol::parse_error_reply;

const ALPHA: usize = 0;
const BETA: usize = 1;
const P: Port = Port::Primary;
const S: Port = Port::Secondary;
const CLIENT: &[u8] = b"client-1";
const TO_ALPHA: &[u8] = br#"{"target":"alpha","n":1}"#;

/// Two targets: alpha (1 s timeout) and beta (0.5 s); a breaker that opens
/// after 3 failures for 2 s; `keys` adds top-level keys.
fn config(keys: &str) -> Config {
    let text = format!(
        "main_pc_addr = \"\"\npc2_addr = \"\"\nbreaker_failure_threshold = 3\nbreaker_open_wait = 2.0\n{keys}\n\
         [targets.alpha]\nendpoint = \"tcp://127.0.0.1:7001\"\nrequest_timeout = 1.0\n\
         [targets.beta]\nendpoint = \"tcp://127.0.0.1:7002\"\nrequest_timeout = 0.5\n"
    );
    File::from_toml_str(&text)
        .and_then(|f| f.validate())
        .unwrap()
}

/// What the loop sends, as bytes.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// `[routing id, envelope..., body...]` on a frontend.
    Client(Port, Vec<Vec<u8>>),
    /// `[key, "", body...]` to a target: the key and the body.
    Backend(usize, Key, Vec<Vec<u8>>),
}

struct Bridge {
    state: State<()>,
    t0: Instant,
    /// Whether each target has a connected backend.
    connected: [bool; 3],
}

fn bytes(frames: &[&[u8]]) -> Vec<Vec<u8>> {
    frames.iter().map(|f| f.to_vec()).collect()
}

impl Bridge {
    fn new(keys: &str) -> Bridge {
        let t0 = Instant::now();
        Bridge {
            state: State::new(config(keys), vec![(), ()], t0),
            t0,
            connected: [true; 3],
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// A message from `client` on `port`.
    fn request_from(&mut self, ms: u64, port: Port, client: &[u8], frames: &[&[u8]]) -> Vec<Sent> {
        let mut input: Vec<zmq::Message> = std::iter::once(client)
            .chain(frames.iter().copied())
            .map(zmq::Message::from)
            .collect();
        let mut actions = Vec::new();
        let now = self.at(ms);
        self.state
            .step(now, Event::Request(port, &mut input), &mut actions);
        self.carry(ms, actions, &mut input)
    }

    fn request(&mut self, ms: u64, port: Port, frames: &[&[u8]]) -> Vec<Sent> {
        self.request_from(ms, port, CLIENT, frames)
    }

    /// A message read from `target`'s DEALER.
    fn reply(&mut self, ms: u64, target: usize, frames: &[&[u8]]) -> Vec<Sent> {
        let mut input: Vec<zmq::Message> = frames.iter().map(|f| zmq::Message::from(*f)).collect();
        let mut actions = Vec::new();
        let now = self.at(ms);
        self.state
            .step(now, Event::Reply(target, &mut input), &mut actions);
        self.carry(ms, actions, &mut input)
    }

    /// The backend's answer to the request sent as `key`.
    fn answer(&mut self, ms: u64, target: usize, key: Key, body: &[u8]) -> Vec<Sent> {
        self.reply(ms, target, &[&key.to_bytes(), b"", body])
    }

    fn event(&mut self, ms: u64, event: Event<'static>) -> Vec<Sent> {
        let mut actions = Vec::new();
        self.state.step(self.at(ms), event, &mut actions);
        self.carry(ms, actions, &mut Vec::new())
    }

    fn tick(&mut self, ms: u64) -> Vec<Sent> {
        self.event(ms, Event::Tick)
    }

    /// `target`'s DEALER became writable: what the loop sends, in order.
    fn writable(&mut self, ms: u64, target: usize) -> Vec<Sent> {
        let mut all = Vec::new();
        loop {
            let mut actions = Vec::new();
            self.state
                .step(self.at(ms), Event::Writable(target), &mut actions);
            assert!(actions.len() <= 1, "one waiting request at a time");
            if actions.is_empty() {
                return all;
            }
            let sent = self.carry(ms, actions, &mut Vec::new());
            if sent.is_empty() {
                return all;
            }
            all.extend(sent);
        }
    }

    /// Render the actions as the loop would send them.
    fn carry(&mut self, ms: u64, actions: Vec<Action>, input: &mut Vec<zmq::Message>) -> Vec<Sent> {
        let mut sent = Vec::new();
        for action in actions {
            match action {
                Action::Reply { to, body } => {
                    let envelope = to.back.frames().chain(body.frames(input));
                    let frames = std::iter::once(to.id).chain(envelope);
                    sent.push(Sent::Client(to.port, frames.map(|f| f.to_vec()).collect()));
                }
                Action::Forward { target, key, body } => {
                    let frames: Vec<zmq::Message> = body.frames(input).collect();
                    if self.connected[target] {
                        let body = frames.iter().map(|f| f.to_vec()).collect();
                        sent.push(Sent::Backend(target, key, body));
                    } else {
                        let mut none = Vec::new();
                        let blocked = Event::Blocked {
                            target,
                            key,
                            frames,
                        };
                        self.state.step(self.at(ms), blocked, &mut none);
                        assert!(none.is_empty(), "feedback pushes no action");
                    }
                }
            }
        }
        sent
    }

    fn status(&self, ms: u64) -> Value {
        self.state.status(self.at(ms))
    }

    fn errors(&self, code: ErrorCode) -> u64 {
        self.status(0)["errors_total"][code.as_str()]
            .as_u64()
            .unwrap()
    }
}

/// The one message sent to a backend: target, key, body.
fn forwarded(sent: Vec<Sent>) -> (usize, Key, Vec<Vec<u8>>) {
    match <[Sent; 1]>::try_from(sent) {
        Ok([Sent::Backend(target, key, body)]) => (target, key, body),
        other => panic!("expected one forward, got {other:?}"),
    }
}

/// The bodies of messages that all went to `target`, in order.
fn bodies(target: usize, sent: Vec<Sent>) -> Vec<Vec<Vec<u8>>> {
    let body = |s| match s {
        Sent::Backend(t, _, body) if t == target => body,
        other => panic!("expected a forward to {target}, got {other:?}"),
    };
    sent.into_iter().map(body).collect()
}

/// The one message sent to a client: port and frames.
fn to_client(sent: Vec<Sent>) -> (Port, Vec<Vec<u8>>) {
    match <[Sent; 1]>::try_from(sent) {
        Ok([Sent::Client(port, frames)]) => (port, frames),
        other => panic!("expected one reply, got {other:?}"),
    }
}

/// The error document of the one reply sent.
fn refusal(sent: Vec<Sent>) -> Rejection {
    let (_, frames) = to_client(sent);
    parse_error_reply(&frames[frames.len() - 1..]).expect("an error document")
}

fn code(sent: Vec<Sent>) -> ErrorCode {
    refusal(sent).code
}

// --- Refusals: each error code the request path gives -------------------

#[test]
fn text_that_is_not_a_json_object_is_invalid_json() {
    let mut b = Bridge::new("");
    for body in [&b"{not json"[..], b"[1,2]", b"hello", b"   "] {
        assert_eq!(
            code(b.request(0, P, &[body])),
            ErrorCode::InvalidJson,
            "{body:?}"
        );
    }
    assert_eq!(b.errors(ErrorCode::InvalidJson), 4);
}

#[test]
fn an_object_without_a_usable_target_is_missing_target() {
    let mut b = Bridge::new("");
    for body in [
        &br#"{"x":1}"#[..],
        br#"{"target":5}"#,
        br#"{"target":null}"#,
        br#"{"action":"dance"}"#,
    ] {
        assert_eq!(
            code(b.request(0, P, &[body])),
            ErrorCode::MissingTarget,
            "{body:?}"
        );
    }
}

#[test]
fn an_unknown_target_is_refused_with_the_configured_names() {
    let mut b = Bridge::new("");
    let json = refusal(b.request(0, P, &[br#"{"target":"gamma"}"#]));
    assert_eq!(json.code, ErrorCode::UnknownTarget);
    assert!(
        json.message.contains(r#""gamma""#) && json.message.contains("alpha, beta"),
        "{}",
        json.message
    );
    let multipart = refusal(b.request(0, P, &[b"gamma", b"payload"]));
    assert_eq!(multipart.code, ErrorCode::UnknownTarget);
    assert_eq!(b.errors(ErrorCode::UnknownTarget), 2);
}

#[test]
fn a_request_over_max_message_bytes_is_too_large() {
    let mut b = Bridge::new("max_message_bytes = 64");
    let body = format!(r#"{{"target":"alpha","pad":"{}"}}"#, "x".repeat(64));
    let json = refusal(b.request(0, P, &[body.as_bytes()]));
    assert_eq!(json.code, ErrorCode::TooLarge);
    assert!(
        json.message.contains("max_message_bytes"),
        "{}",
        json.message
    );
    assert_eq!(
        code(b.request(0, P, &[b"alpha", &[b'x'; 40], &[b'y'; 40]])),
        ErrorCode::TooLarge
    );
    // At the limit it goes through.
    forwarded(b.request(0, P, &[b"alpha", &[b'x'; 59]]));
}

#[test]
fn bad_frames_for_too_many_frames_a_bad_target_frame_or_none() {
    let mut b = Bridge::new("max_frames = 4");
    let rows: [&[&[u8]]; 4] = [
        &[b"alpha", b"1", b"2", b"3", b"4"],
        &[b"\xff\xfe", b"payload"],
        &[&[b'a'; 129], b"payload"],
        // A request id and its delimiter, and nothing after them.
        &[b"\x00id", b""],
    ];
    for frames in rows {
        assert_eq!(
            code(b.request(0, P, frames)),
            ErrorCode::BadFrames,
            "{frames:?}"
        );
    }
    forwarded(b.request(0, P, &[b"alpha", b"1", b"2", b"3"]));
}

#[test]
fn a_client_over_its_rate_is_told_when_to_retry() {
    let mut b = Bridge::new("rate_limit_per_client = 10.0\nrate_limit_per_client_burst = 2.0");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    forwarded(b.request(0, P, &[TO_ALPHA]));
    let limited = refusal(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(limited.code, ErrorCode::RateLimited);
    assert!(
        limited.message.contains("rate_limit_per_client") && limited.message.contains("100 ms"),
        "{}",
        limited.message
    );
    forwarded(b.request_from(0, P, b"client-2", &[TO_ALPHA]));
    forwarded(b.request(100, P, &[TO_ALPHA]));
    assert_eq!(b.status(100)["rate_limited_clients_tracked"], 2);
}

#[test]
fn the_global_rate_limit_refuses_every_client_alike() {
    let mut b = Bridge::new("rate_limit_global = 1.0\nrate_limit_global_burst = 1.0");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    let limited = refusal(b.request_from(0, P, b"client-2", &[TO_ALPHA]));
    assert_eq!(limited.code, ErrorCode::RateLimited);
    assert!(limited.message.contains("global"), "{}", limited.message);
    // Even a question for the bridge itself counts.
    assert_eq!(
        code(b.request(500, P, &[br#"{"action":"ping"}"#])),
        ErrorCode::RateLimited
    );
    forwarded(b.request(1000, P, &[TO_ALPHA]));
}

#[test]
fn a_request_the_backend_does_not_answer_in_time_gets_timeout() {
    let mut b = Bridge::new("");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(b.tick(999), [], "not before request_timeout");
    let timeout = refusal(b.tick(1000));
    assert_eq!(timeout.code, ErrorCode::Timeout);
    assert!(
        timeout.message.contains("alpha") && timeout.message.contains("1.000 s"),
        "{}",
        timeout.message
    );
    assert_eq!(b.tick(5000), [], "answered once");
}

#[test]
fn a_request_no_backend_took_in_time_gets_backend_unavailable() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    assert_eq!(b.request(0, P, &[TO_ALPHA]), [], "held, not refused");
    let json = refusal(b.tick(1000));
    assert_eq!(json.code, ErrorCode::BackendUnavailable);
    assert!(
        json.message.contains("tcp://127.0.0.1:7001"),
        "{}",
        json.message
    );
}

#[test]
fn a_request_for_a_service_that_ends_the_handshake_is_told_why() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    b.state.targets[ALPHA].refused = Some("not a REP or ROUTER socket");
    assert_eq!(b.request(0, P, &[TO_ALPHA]), []);
    let json = refusal(b.tick(1000));
    assert_eq!(json.code, ErrorCode::BackendUnavailable);
    assert!(
        json.message.contains("not a REP or ROUTER socket"),
        "{}",
        json.message
    );
    assert!(
        !json.message.contains("is the service running"),
        "{}",
        json.message
    );
    assert_eq!(
        b.status(1000)["targets"]["alpha"]["handshake_refused"],
        "not a REP or ROUTER socket"
    );
}

#[test]
fn a_target_at_max_in_flight_refuses_more() {
    let mut b = Bridge::new("max_in_flight = 2");
    let (_, first, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    forwarded(b.request(0, P, &[TO_ALPHA]));
    let full = refusal(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(full.code, ErrorCode::BackendUnavailable);
    assert!(full.message.contains("max_in_flight"), "{}", full.message);
    // Per target: beta still takes requests.
    forwarded(b.request(0, P, &[b"beta", b"x"]));
    b.answer(1, ALPHA, first, b"ok");
    forwarded(b.request(2, P, &[TO_ALPHA]));
}

#[test]
fn a_target_whose_dealer_is_gone_is_being_reconfigured() {
    let mut b = Bridge::new("");
    b.state.targets[ALPHA].dealer = None;
    let json = refusal(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(json.code, ErrorCode::BackendUnavailable);
    assert!(json.message.contains("reconfigured"), "{}", json.message);
}

#[test]
fn every_error_code_the_request_path_gives_is_counted_under_it() {
    let mut b = Bridge::new("");
    b.request(0, P, &[b"nope"]);
    b.request(0, P, &[br#"{"target":"zeta"}"#]);
    forwarded(b.request(0, P, &[TO_ALPHA]));
    b.tick(1000);
    let errors = &b.status(1000)["errors_total"];
    assert_eq!(errors["invalid_json"], 1);
    assert_eq!(errors["unknown_target"], 1);
    assert_eq!(errors["timeout"], 1);
    assert_eq!(errors["circuit_open"], 0);
    assert_eq!(b.status(1000)["requests_total"], 3);
    assert_eq!(errors.as_object().unwrap().len(), ErrorCode::ALL.len());
}

// --- Routing and envelopes ----------------------------------------------

#[test]
fn a_json_request_goes_whole_to_its_target() {
    let mut b = Bridge::new("");
    let (target, _, body) = forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!((target, body), (ALPHA, bytes(&[TO_ALPHA])));
    let beta = br#"{"target":"beta"}"#;
    assert_eq!(forwarded(b.request(0, P, &[beta])).0, BETA);
}

#[test]
fn a_multipart_request_sends_the_frames_after_the_target_name() {
    let mut b = Bridge::new("");
    let (target, _, body) = forwarded(b.request(0, P, &[b"beta", b"one", b"", b"three"]));
    assert_eq!(target, BETA);
    assert_eq!(body, bytes(&[b"one", b"", b"three"]));
}

#[test]
fn target_names_match_without_regard_to_case() {
    let mut b = Bridge::new("");
    assert_eq!(forwarded(b.request(0, P, &[b"ALPHA", b"x"])).0, ALPHA);
    assert_eq!(
        forwarded(b.request(0, P, &[br#"{"target":"Beta"}"#])).0,
        BETA
    );
    assert_eq!(b.state.target_index("aLpHa"), Some(ALPHA));
    assert_eq!(b.state.target_index("gamma"), None);
}

#[test]
fn each_envelope_comes_back_before_the_reply() {
    // (what the client sends before its request) -> what it gets back.
    let rows: [&[&[u8]]; 4] = [
        &[],                         // DEALER, bare
        &[b""],                      // REQ, or a polite DEALER
        &[b"\x00req-7", b""],        // the bridge's own request id
        &[b"\x01\x02\x03\x04", b""], // REQ with ZMQ_REQ_CORRELATE
    ];
    for envelope in rows {
        let mut b = Bridge::new("");
        let mut request = envelope.to_vec();
        request.extend([b"alpha".as_slice(), b"payload"]);
        let (_, key, body) = forwarded(b.request(0, S, &request));
        assert_eq!(body, bytes(&[b"payload"]), "{envelope:?}");
        let (port, frames) = to_client(b.answer(5, ALPHA, key, b"reply"));
        let mut expected = vec![CLIENT];
        expected.extend(envelope);
        expected.push(b"reply");
        assert_eq!((port, frames), (S, bytes(&expected)), "{envelope:?}");
    }
}

#[test]
fn an_error_reply_mirrors_the_envelope_too() {
    let rows: [&[&[u8]]; 4] = [&[], &[b""], &[b"\x00id", b""], &[b"abcd", b""]];
    for envelope in rows {
        let mut b = Bridge::new("");
        let mut request = envelope.to_vec();
        request.push(b"not json");
        let (_, frames) = to_client(b.request(0, P, &request));
        assert_eq!(frames[0], CLIENT);
        assert_eq!(
            &frames[1..frames.len() - 1],
            bytes(envelope),
            "{envelope:?}"
        );
        let json = parse_error_reply(&frames[frames.len() - 1..]).unwrap();
        assert_eq!(json.code, ErrorCode::InvalidJson);
    }
}

#[test]
fn a_four_byte_frame_naming_a_target_starts_a_multipart_request() {
    // [target, "", payload]: a target named like a REQ_CORRELATE id.
    let text =
        "main_pc_addr = \"\"\npc2_addr = \"\"\n[targets.abcd]\nendpoint = \"ipc:///tmp/abcd\"\n";
    let config = File::from_toml_str(text)
        .and_then(|f| f.validate())
        .unwrap();
    let t0 = Instant::now();
    let mut state = State::new(config, vec![()], t0);
    let mut input: Vec<zmq::Message> = [&b"c"[..], b"abcd", b"", b"x"]
        .iter()
        .map(|f| zmq::Message::from(*f))
        .collect();
    let mut actions = Vec::new();
    state.step(t0, Event::Request(P, &mut input), &mut actions);
    let [Action::Forward {
        target: 0, body, ..
    }] = &mut actions[..]
    else {
        panic!("not forwarded: {actions:?}");
    };
    let body = std::mem::replace(body, Body::Held(Vec::new()));
    let sent: Vec<Vec<u8>> = body.frames(&mut input).map(|f| f.to_vec()).collect();
    assert_eq!(sent, bytes(&[b"", b"x"]));
}

#[test]
fn a_reply_goes_back_on_the_port_its_request_came_in_on() {
    let mut b = Bridge::new("");
    let (_, on_primary, _) = forwarded(b.request_from(0, P, b"a", &[TO_ALPHA]));
    let (_, on_secondary, _) = forwarded(b.request_from(0, S, b"b", &[TO_ALPHA]));
    assert_eq!(
        to_client(b.answer(1, ALPHA, on_secondary, b"2")),
        (S, bytes(&[b"b", b"2"]))
    );
    assert_eq!(
        to_client(b.answer(1, ALPHA, on_primary, b"1")),
        (P, bytes(&[b"a", b"1"]))
    );
}

#[test]
fn a_multipart_reply_comes_back_whole() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[b""[..].as_ref(), TO_ALPHA]));
    let (_, frames) = to_client(b.reply(1, ALPHA, &[&key.to_bytes(), b"", b"a", b"", b"c"]));
    assert_eq!(frames, bytes(&[CLIENT, b"", b"a", b"", b"c"]));
}

#[test]
fn ping_and_status_are_answered_by_the_bridge() {
    let mut b = Bridge::new("");
    b.state.ha.role = "active";
    let (_, frames) = to_client(b.request(0, P, &[b"", br#"{"action":"ping"}"#]));
    let pong: Value = serde_json::from_slice(&frames[2]).unwrap();
    assert_eq!(pong["action"], "pong");
    assert_eq!(pong["role"], "active");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    let (_, frames) = to_client(b.request(1500, P, &[br#"{"action":"status"}"#]));
    let status: Value = serde_json::from_slice(&frames[1]).unwrap();
    assert_eq!(status["status"], "ok");
    assert_eq!(status["uptime_s"], 1.5);
    assert_eq!(
        status["requests_total"], 3,
        "the status request counts itself"
    );
    assert_eq!(status["targets"]["alpha"]["in_flight"], 1);
    assert_eq!(status["targets"]["alpha"]["requests_total"], 1);
    assert_eq!(status["targets"]["beta"]["in_flight"], 0);
}

// --- Replies --------------------------------------------------------------

#[test]
fn a_reply_frees_its_slot_and_counts() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(b.state.in_flight_on(P), 1);
    to_client(b.answer(20, ALPHA, key, b"ok"));
    assert_eq!(b.state.in_flight_on(P), 0);
    let status = b.status(20);
    assert_eq!(status["replies_total"], 1);
    assert_eq!(status["targets"]["alpha"]["replies_total"], 1);
    assert_eq!(status["targets"]["alpha"]["in_flight"], 0);
    assert_eq!(
        status["targets"]["alpha"]["latency_ms"]["p50"]
            .as_f64()
            .map(|ms| ms.round()),
        Some(20.0)
    );
    assert_eq!(b.state.next_deadline(), None, "its deadline went with it");
}

#[test]
fn what_a_hung_backend_has_not_read_is_capped_and_a_reply_shows_it_read() {
    // TO_ALPHA is 24 bytes: four fit in 100.
    let mut b = Bridge::new("max_message_bytes = 100\nmax_queued_bytes = 100");
    let queued = |b: &Bridge, ms| b.status(ms)["targets"]["alpha"]["queued_bytes"].clone();
    let keys: Vec<Key> = (0..4)
        .map(|_| forwarded(b.request(0, P, &[TO_ALPHA])).1)
        .collect();
    let full = refusal(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(full.code, ErrorCode::BackendUnavailable);
    assert!(
        full.message.contains("holds 96 bytes") && full.message.contains("max_queued_bytes 100"),
        "{}",
        full.message
    );
    // Answered `timeout`, but still unread as far as the bridge can tell;
    // the refusal and the timeouts open the breaker.
    assert_eq!(b.tick(1000).len(), 4);
    assert_eq!(queued(&b, 1000), 96);
    assert_eq!(b.status(1000)["targets"]["alpha"]["breaker"], "open");
    // A late reply to the second: it and the first were read.
    assert_eq!(b.answer(1500, ALPHA, keys[1], b"late"), []);
    assert_eq!(queued(&b, 1500), 48);
    assert_eq!(b.status(1500)["targets"]["alpha"]["queued_requests"], 2);
    // The half-open breaker's probe goes past the cap (its reply is what
    // shows the rest read), and its reply frees everything before it.
    let (_, probe, _) = forwarded(b.request(3000, P, &[TO_ALPHA]));
    assert_eq!(queued(&b, 3000), 72);
    to_client(b.answer(3001, ALPHA, probe, b"ok"));
    assert_eq!(queued(&b, 3001), 0);
    assert_eq!(b.status(3001)["targets"]["alpha"]["breaker"], "closed");
    forwarded(b.request(3002, P, &[TO_ALPHA]));
}

#[test]
fn a_late_reply_is_dropped_and_counted() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(code(b.tick(1000)), ErrorCode::Timeout);
    assert_eq!(b.answer(1200, ALPHA, key, b"too late"), []);
    let status = b.status(1200);
    assert_eq!(status["late_replies_total"], 1);
    assert_eq!(status["replies_total"], 0);
}

#[test]
fn a_late_reply_never_reaches_the_client_that_took_its_slot() {
    let mut b = Bridge::new("");
    let (_, old, _) = forwarded(b.request_from(0, P, b"first", &[TO_ALPHA]));
    b.tick(1000);
    let (_, new, _) = forwarded(b.request_from(1000, P, b"second", &[TO_ALPHA]));
    assert_ne!(old, new);
    assert_eq!(b.answer(1001, ALPHA, old, b"for first"), []);
    assert_eq!(
        to_client(b.answer(1002, ALPHA, new, b"for second")),
        (P, bytes(&[b"second", b"for second"]))
    );
}

#[test]
fn a_backend_message_without_the_bridge_envelope_is_dropped() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    let key = key.to_bytes();
    let rows: [&[&[u8]]; 4] = [
        &[b"reply"],
        &[&key, b""],               // no body
        &[&key, b"x", b"reply"],    // no delimiter
        &[b"short", b"", b"reply"], // not a key
    ];
    for frames in rows {
        assert_eq!(b.reply(1, ALPHA, frames), [], "{frames:?}");
    }
    assert_eq!(b.status(1)["malformed_replies_total"], 4);
    assert_eq!(b.state.in_flight_on(P), 1, "the request still waits");
}

#[test]
fn a_reply_that_cannot_be_delivered_is_counted_as_dropped() {
    let mut b = Bridge::new("");
    b.event(0, Event::Dropped(zmq::Error::EHOSTUNREACH));
    assert_eq!(b.status(0)["dropped_replies_total"], 1);
}

// --- Deadlines --------------------------------------------------------------

#[test]
fn each_target_has_its_own_request_timeout() {
    let mut b = Bridge::new("");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    forwarded(b.request(100, P, &[b"beta", b"x"]));
    assert_eq!(b.state.next_deadline(), Some(b.at(600)));
    assert!(refusal(b.tick(600)).message.contains("beta"));
    assert_eq!(b.state.next_deadline(), Some(b.at(1000)));
    assert!(refusal(b.tick(1000)).message.contains("alpha"));
    assert_eq!(b.state.next_deadline(), None);
}

#[test]
fn one_tick_answers_every_request_past_its_deadline_in_order() {
    let mut b = Bridge::new("");
    for (ms, client) in [(0, b"a"), (10, b"b"), (20, b"c")] {
        forwarded(b.request_from(ms, P, client, &[TO_ALPHA]));
    }
    let clients: Vec<Vec<u8>> = b
        .tick(1015)
        .into_iter()
        .map(|sent| match sent {
            Sent::Client(_, frames) => frames[0].clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(clients, bytes(&[b"a", b"b"]));
    assert_eq!(b.state.next_deadline(), Some(b.at(1020)));
}

#[test]
fn a_reloaded_timeout_applies_to_new_requests() {
    let mut b = Bridge::new("");
    let mut target = b.state.config.targets[ALPHA].clone();
    target.request_timeout = Duration::from_secs(3);
    b.state.update_target(ALPHA, &target);
    forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(b.tick(2999), []);
    assert!(refusal(b.tick(3000)).message.contains("3.000 s"));
}

// --- The waiting queue ------------------------------------------------------

#[test]
fn requests_wait_for_a_backend_and_go_in_the_order_they_came() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    for payload in [b"1", b"2", b"3"] {
        assert_eq!(b.request(0, P, &[b"alpha", payload]), []);
    }
    assert_eq!(b.status(0)["targets"]["alpha"]["waiting_for_backend"], 3);
    assert_eq!(
        b.status(0)["targets"]["alpha"]["requests_total"],
        0,
        "none sent yet"
    );
    b.connected[ALPHA] = true;
    assert_eq!(
        bodies(ALPHA, b.writable(10, ALPHA)),
        [bytes(&[b"1"]), bytes(&[b"2"]), bytes(&[b"3"])]
    );
    let status = b.status(10);
    assert_eq!(status["targets"]["alpha"]["waiting_for_backend"], 0);
    assert_eq!(status["targets"]["alpha"]["requests_total"], 3);
    assert_eq!(status["targets"]["alpha"]["in_flight"], 3);
}

#[test]
fn a_request_behind_waiting_ones_waits_even_if_it_could_go() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    assert_eq!(b.request(0, P, &[b"alpha", b"first"]), []);
    b.connected[ALPHA] = true;
    assert_eq!(b.request(1, P, &[b"alpha", b"second"]), [], "queued behind");
    assert_eq!(
        bodies(ALPHA, b.writable(2, ALPHA)),
        [bytes(&[b"first"]), bytes(&[b"second"])]
    );
}

#[test]
fn a_send_that_blocks_again_keeps_its_place() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    b.request(0, P, &[b"alpha", b"1"]);
    b.request(0, P, &[b"alpha", b"2"]);
    assert_eq!(b.writable(1, ALPHA), [], "still no backend");
    assert_eq!(b.status(1)["targets"]["alpha"]["waiting_for_backend"], 2);
    assert_eq!(b.status(1)["targets"]["alpha"]["requests_total"], 0);
    b.connected[ALPHA] = true;
    assert_eq!(
        bodies(ALPHA, b.writable(2, ALPHA)),
        [bytes(&[b"1"]), bytes(&[b"2"])]
    );
}

#[test]
fn requests_that_expire_while_waiting_leave_the_queue() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    b.request(0, P, &[b"alpha", b"old"]);
    b.request(600, P, &[b"alpha", b"new"]);
    assert_eq!(code(b.tick(1000)), ErrorCode::BackendUnavailable);
    assert_eq!(
        b.state.targets[ALPHA].waiting.len(),
        1,
        "its frames are freed"
    );
    assert_eq!(b.status(1000)["targets"]["alpha"]["waiting_for_backend"], 1);
    b.connected[ALPHA] = true;
    let (_, _, body) = forwarded(b.writable(1001, ALPHA));
    assert_eq!(body, bytes(&[b"new"]));
    b.tick(1600);
    assert!(b.state.targets[ALPHA].waiting.is_empty());
}

#[test]
fn a_waiting_request_answered_at_the_drain_is_not_sent_later() {
    let mut b = Bridge::new("");
    b.connected[ALPHA] = false;
    b.request(0, P, &[b"alpha", b"x"]);
    assert_eq!(code(b.event(10, Event::Closed(P))), ErrorCode::Draining);
    b.connected[ALPHA] = true;
    assert_eq!(b.writable(20, ALPHA), []);
    assert_eq!(b.status(20)["targets"]["alpha"]["requests_total"], 0);
}

#[test]
fn a_send_that_fails_is_answered_at_its_deadline() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    let failed = Event::Failed {
        target: ALPHA,
        key,
        error: zmq::Error::ETERM,
    };
    assert_eq!(b.event(1, failed), []);
    assert_eq!(b.status(1)["targets"]["alpha"]["requests_total"], 0);
    assert_eq!(code(b.tick(1000)), ErrorCode::BackendUnavailable);
}

// --- Draining ---------------------------------------------------------------

#[test]
fn a_draining_port_relays_until_its_relay_window_ends() {
    let mut b = Bridge::new("");
    let relay_until = b.at(100);
    b.event(
        0,
        Event::Draining {
            port: P,
            relay_until,
        },
    );
    forwarded(b.request(99, P, &[TO_ALPHA]));
    let json = refusal(b.request(100, P, &[TO_ALPHA]));
    assert_eq!(json.code, ErrorCode::Draining);
    assert!(json.message.contains("other bridge"), "{}", json.message);
    // A bad request is still told what is wrong with it.
    assert_eq!(code(b.request(100, P, &[b"{"])), ErrorCode::InvalidJson);
    // The other port is not draining.
    forwarded(b.request(100, S, &[TO_ALPHA]));
}

#[test]
fn closing_a_port_answers_only_what_came_in_on_it() {
    let mut b = Bridge::new("");
    forwarded(b.request_from(0, P, b"a", &[TO_ALPHA]));
    forwarded(b.request_from(0, P, b"b", &[b"beta", b"x"]));
    let (_, on_s, _) = forwarded(b.request_from(0, S, b"c", &[TO_ALPHA]));
    let sent = b.event(50, Event::Closed(P));
    assert_eq!(sent.len(), 2);
    for s in sent {
        let Sent::Client(P, frames) = s else {
            panic!("{s:?}")
        };
        let json = parse_error_reply(&frames[1..]).unwrap();
        assert_eq!(json.code, ErrorCode::Draining);
        assert!(json.message.contains("stopped before target"));
    }
    assert_eq!(b.state.in_flight_on(P), 0);
    assert_eq!(b.state.in_flight_on(S), 1);
    assert_eq!(b.status(50)["targets"]["alpha"]["in_flight"], 1);
    assert_eq!(b.status(50)["targets"]["beta"]["in_flight"], 0);
    to_client(b.answer(60, ALPHA, on_s, b"ok"));
    assert_eq!(b.tick(5000), [], "answered requests have no deadline left");
}

#[test]
fn a_port_bound_again_after_its_drain_relays_again() {
    let mut b = Bridge::new("");
    let relay_until = b.at(0);
    b.event(
        0,
        Event::Draining {
            port: P,
            relay_until,
        },
    );
    assert_eq!(code(b.request(1, P, &[TO_ALPHA])), ErrorCode::Draining);
    b.event(2, Event::Closed(P));
    forwarded(b.request(3, P, &[TO_ALPHA]));
}

#[test]
fn a_late_reply_after_the_drain_is_dropped() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    b.event(10, Event::Closed(P));
    assert_eq!(b.answer(20, ALPHA, key, b"late"), []);
    assert_eq!(b.status(20)["late_replies_total"], 1);
}

// --- The breaker --------------------------------------------------------------

#[test]
fn failures_open_the_breaker_and_requests_then_fail_fast() {
    let mut b = Bridge::new("");
    for _ in 0..3 {
        forwarded(b.request(0, P, &[TO_ALPHA]));
    }
    assert_eq!(b.tick(1000).len(), 3);
    assert_eq!(b.status(1000)["targets"]["alpha"]["breaker"], "open");
    let open = refusal(b.request(1500, P, &[TO_ALPHA]));
    assert_eq!(open.code, ErrorCode::CircuitOpen);
    assert!(open.message.contains("retry in 1.5 s"), "{}", open.message);
    // Only that target's.
    forwarded(b.request(1500, P, &[b"beta", b"x"]));
}

#[test]
fn after_open_wait_one_probe_goes_and_its_reply_closes_the_breaker() {
    let mut b = Bridge::new("");
    for _ in 0..3 {
        forwarded(b.request(0, P, &[TO_ALPHA]));
    }
    b.tick(1000);
    let (_, probe, _) = forwarded(b.request(3000, P, &[TO_ALPHA]));
    assert_eq!(b.status(3000)["targets"]["alpha"]["breaker"], "half_open");
    assert_eq!(
        code(b.request(3001, P, &[TO_ALPHA])),
        ErrorCode::CircuitOpen
    );
    to_client(b.answer(3002, ALPHA, probe, b"ok"));
    assert_eq!(b.status(3002)["targets"]["alpha"]["breaker"], "closed");
    forwarded(b.request(3003, P, &[TO_ALPHA]));
}

#[test]
fn a_probe_that_times_out_opens_the_breaker_again() {
    let mut b = Bridge::new("");
    for _ in 0..3 {
        forwarded(b.request(0, P, &[TO_ALPHA]));
    }
    b.tick(1000);
    forwarded(b.request(3000, P, &[TO_ALPHA]));
    assert_eq!(code(b.tick(4000)), ErrorCode::Timeout);
    assert_eq!(b.status(4000)["targets"]["alpha"]["breaker"], "open");
    assert_eq!(
        code(b.request(4001, P, &[TO_ALPHA])),
        ErrorCode::CircuitOpen
    );
}

#[test]
fn a_reply_between_failures_keeps_the_breaker_closed() {
    let mut b = Bridge::new("");
    let keys: Vec<Key> = (0..3)
        .map(|_| forwarded(b.request(0, P, &[TO_ALPHA])).1)
        .collect();
    to_client(b.answer(10, ALPHA, keys[1], b"ok"));
    forwarded(b.request(10, P, &[TO_ALPHA]));
    assert_eq!(b.tick(1000).len(), 2);
    assert_eq!(b.status(1000)["targets"]["alpha"]["breaker"], "closed");
}

#[test]
fn refusals_before_the_backend_do_not_count_against_its_breaker() {
    let mut b = Bridge::new("max_in_flight = 1");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    for _ in 0..5 {
        assert_eq!(
            code(b.request(0, P, &[TO_ALPHA])),
            ErrorCode::BackendUnavailable
        );
    }
    assert_eq!(b.status(0)["targets"]["alpha"]["breaker"], "closed");
}

// --- Reloads: retired targets, new config -------------------------------------

#[test]
fn a_retired_target_takes_no_new_requests_but_answers_those_in_flight() {
    let mut b = Bridge::new("");
    let (_, key, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    b.state.retire(ALPHA);
    assert_eq!(code(b.request(1, P, &[TO_ALPHA])), ErrorCode::UnknownTarget);
    assert!(!b.state.targets[ALPHA].drained(), "a request is in flight");
    assert!(b.status(1)["targets"].get("alpha").is_none());
    assert_eq!(
        to_client(b.answer(2, ALPHA, key, b"ok")),
        (P, bytes(&[CLIENT, b"ok"]))
    );
    assert!(b.state.targets[ALPHA].drained(), "its dealer may close");
}

#[test]
fn a_repointed_target_takes_new_requests_on_its_new_index() {
    let mut b = Bridge::new("");
    let (_, old, _) = forwarded(b.request(0, P, &[TO_ALPHA]));
    let mut moved = b.state.config.targets[ALPHA].clone();
    moved.endpoint = "tcp://127.0.0.1:7011".into();
    b.state.retire(ALPHA);
    b.state.add_target(&moved, ());
    let (target, _, _) = forwarded(b.request(1, P, &[TO_ALPHA]));
    assert_eq!(target, 2);
    assert_eq!(
        b.status(1)["targets"]["alpha"]["endpoint"],
        "tcp://127.0.0.1:7011"
    );
    // The old dealer's reply still finds its client.
    to_client(b.answer(2, ALPHA, old, b"ok"));
}

#[test]
fn a_reload_that_changes_rates_starts_new_buckets() {
    let mut b = Bridge::new("rate_limit_per_client = 1.0\nrate_limit_per_client_burst = 1.0");
    forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(code(b.request(0, P, &[TO_ALPHA])), ErrorCode::RateLimited);
    let same = b.state.config.clone();
    b.state.set_config(same, b.at(0));
    assert_eq!(
        code(b.request(0, P, &[TO_ALPHA])),
        ErrorCode::RateLimited,
        "same rates: same buckets"
    );
    let mut more = b.state.config.clone();
    more.rate_limit_per_client = None;
    b.state.set_config(more, b.at(0));
    forwarded(b.request(0, P, &[TO_ALPHA]));
    assert_eq!(b.status(0)["config_generation"], 2);
}
