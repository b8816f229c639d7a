//! The client library against real bridges, killed for real.

use crate::support::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use zbridge_client::{BreakerState, Client, ClientConfig, ClientError, ErrorCode, Event};
use zbridge_lab::ClientLoad;

/// Short timings: an attempt gets 1 s, failed bridges are probed every
/// 100 ms and used again after 800 ms of answers.
fn settings(endpoints: &[&str], heartbeats: Vec<String>) -> ClientConfig {
    let mut c = ClientConfig::local();
    c.endpoints = endpoints.iter().map(|e| e.to_string()).collect();
    c.heartbeat_endpoints = heartbeats;
    c.request_timeout = Duration::from_secs(1);
    c.reconnect_delay = Duration::from_millis(100);
    c.hold_down = Duration::from_millis(800);
    c.heartbeat_timeout = TIMEOUT;
    c
}

/// A lone bridge on `port` relaying target `pc2` (and `slow`) to `service`.
fn lone(port: u16, service: &str) -> BridgeProcess {
    bridge(&[
        format!("--primary-port={port}"),
        format!("--pc2-addr={service}"),
    ])
}

/// The first event that `pred` accepts within `timeout`, and when it came.
fn wait_event(
    events: &Receiver<Event>,
    timeout: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Option<(Instant, Event)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match events.recv_timeout(left) {
            Ok(e) if pred(&e) => return Some((Instant::now(), e)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn load(rate: f64, seconds: u64) -> ClientLoad {
    ClientLoad {
        target: "pc2".into(),
        rate: Some(rate),
        duration: Duration::from_secs(seconds),
        in_flight: 64,
        payload_bytes: 100,
        settle: Duration::from_secs(10),
    }
}

#[test]
fn kill_9_of_the_active_at_1000_calls_per_second_loses_nothing() {
    let pair = Pair::new(&[]);
    let (primary, _secondary) = pair.start_both();
    let heartbeats = vec![
        pair.heartbeat_endpoint(true),
        pair.heartbeat_endpoint(false),
    ];
    let (p, s) = (pair.primary_endpoint(), pair.secondary_endpoint());
    let client = Client::connect(settings(&[&p, &s], heartbeats)).unwrap();
    let events = client.events();
    let runner = std::thread::spawn(move || load(1000.0, 3).run(&client));
    // Load through the active, then the fault.
    assert!(wait_until(Duration::from_secs(5), || status(&p)["targets"]
        ["pc2"]["replies_total"]
        .as_u64()
        > Some(50)));
    primary.signal("KILL").unwrap();
    let down = wait_event(
        &events,
        Duration::from_secs(2),
        |e| matches!(e, Event::EndpointDown { endpoint, .. } if *endpoint == p),
    );
    let report = runner.join().unwrap();
    let r = &report.load;
    // The load ran across the fault (a paced sender on a busy machine
    // sends fewer than it is asked to; every one sent must be answered).
    assert!(r.sent >= 100, "the load ran: {r:?}");
    assert_eq!(
        (r.ok, r.lost, r.mismatched),
        (r.sent, 0, 0),
        "{:?}",
        r.errors
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // The socket monitor's disconnect, or a send refused for want of a
    // connection, whichever comes first.
    assert!(
        matches!(
            down,
            Some((
                _,
                Event::EndpointDown {
                    reason: "disconnected" | "not_connected",
                    ..
                }
            ))
        ),
        "the dropped connection marked the primary down: {down:?}"
    );
    assert!(report.failovers >= 1, "the client moved to the secondary");
    let gap = report.max_wait();
    assert!(
        gap <= Duration::from_millis(1200),
        "longest call {gap:?}: at most request_timeout + 200 ms"
    );
    eprintln!("kill -9 under 1000 calls/s: longest call {gap:?}");
}

#[test]
fn a_returning_primary_gets_traffic_back_only_after_the_hold_down() {
    let service = EchoService::start(None).unwrap();
    let port = free_port();
    let a = lone(port, &service.endpoint);
    let b = lone(0, &service.endpoint);
    let config = settings(&[&a.frontend, &b.frontend], Vec::new());
    let hold_down = config.hold_down;
    let client = Client::connect(config).unwrap();
    let events = client.events();
    let runner = std::thread::spawn(move || load(200.0, 5).run(&client));
    assert!(wait_until(Duration::from_secs(5), || status(&a.frontend)
        ["targets"]["pc2"]["replies_total"]
        .as_u64()
        > Some(50)));
    let (a_endpoint, b_endpoint) = (a.frontend.clone(), b.frontend.clone());
    a.signal("KILL").unwrap();
    drop(a);
    let failed_over = wait_event(&events, Duration::from_secs(2), |e| {
        matches!(e, Event::FailedOver { .. })
    });
    assert_eq!(
        failed_over.map(|(_, e)| e),
        Some(Event::FailedOver {
            from: a_endpoint.clone(),
            to: b_endpoint.clone()
        })
    );
    // The hold-down cannot start before the process exists.
    let spawning = Instant::now();
    let back = lone(port, &service.endpoint);
    let ready = Instant::now();
    let switched = wait_event(&events, Duration::from_secs(4), |e| {
        matches!(e, Event::SwitchedBack { .. })
    });
    let Some((at, event)) = switched else {
        panic!("no switch back within 4 s")
    };
    assert_eq!(
        event,
        Event::SwitchedBack {
            from: b_endpoint,
            to: a_endpoint
        }
    );
    let after = at - ready;
    assert!(
        at - spawning >= hold_down,
        "switched back {:?} after the primary was started: the hold-down is {hold_down:?}",
        at - spawning
    );
    assert!(after < hold_down + Duration::from_secs(1), "{after:?}");
    let report = runner.join().unwrap();
    let r = &report.load;
    assert_eq!(
        (r.ok, r.lost, r.mismatched),
        (r.sent, 0, 0),
        "{:?}",
        r.errors
    );
    drop(back);
}

#[test]
fn with_both_bridges_down_the_breaker_fails_fast_then_closes_when_one_returns() {
    let service = EchoService::start(None).unwrap();
    let ports = [free_port(), free_port()];
    let bridges = ports.map(|p| lone(p, &service.endpoint));
    let mut config = settings(&[&bridges[0].frontend, &bridges[1].frontend], Vec::new());
    config.request_timeout = Duration::from_millis(300);
    config.max_reconnect_attempts = 1;
    config.breaker.min_calls = 3;
    config.breaker.open_wait = Duration::from_secs(1);
    let client = Client::connect(config).unwrap();
    let events = client.events();
    assert!(client.request("pc2", b"before").is_ok());
    for b in &bridges {
        b.signal("KILL").unwrap();
    }
    drop(bridges);

    // Calls fail (no bridge) until the overall breaker opens.
    let mut failures = Vec::new();
    let opened = loop {
        match client.request("pc2", b"down") {
            Err(ClientError::CircuitOpen { .. }) => break true,
            Err(e) => failures.push(e.kind()),
            Ok(r) => panic!("answered with both bridges down: {r:?}"),
        }
        if failures.len() > 20 {
            break false;
        }
    };
    assert!(opened, "the breaker never opened: {failures:?}");
    assert!(
        failures
            .iter()
            .all(|k| ["all_bridges_down", "client_timeout"].contains(k)),
        "{failures:?}"
    );
    let open = Event::Breaker {
        endpoint: None,
        state: BreakerState::Open,
    };
    assert!(events.try_iter().any(|e| e == open), "an event said so");

    // Open: fail fast, without touching the network.
    let mut took: Vec<Duration> = (0..100)
        .map(|_| {
            let start = Instant::now();
            let result = client.request("pc2", b"fast");
            assert!(
                matches!(result, Err(ClientError::CircuitOpen { .. })),
                "{result:?}"
            );
            start.elapsed()
        })
        .collect();
    took.sort();
    eprintln!("fail-fast calls: median {:?}, max {:?}", took[50], took[99]);
    // Fast: waiting for neither the network nor the 300 ms timeout (each
    // call is still two thread wake-ups, which a busy machine delays).
    assert!(
        took[98] < Duration::from_millis(30),
        "99 of 100 calls under 30 ms: {took:?}"
    );

    // One bridge returns: half-open, a probe call succeeds, closed.
    let back = lone(ports[0], &service.endpoint);
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        match client.request("pc2", b"again") {
            Ok(reply) => break reply,
            Err(_) if Instant::now() < deadline => {
                let _ = wait_event(&events, Duration::from_millis(100), |_| false);
            }
            Err(e) => panic!("no answer within 10 s of a bridge returning: {e}"),
        }
    };
    assert_eq!(reply.frames, [b"again".to_vec()]);
    assert_eq!(reply.endpoint, back.frontend);
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Event::Breaker {
            endpoint: None,
            state,
        } = e
        {
            seen.push(state);
        }
    }
    assert_eq!(
        seen.iter().rev().take(2).rev().copied().collect::<Vec<_>>(),
        [BreakerState::HalfOpen, BreakerState::Closed],
        "the overall breaker went half-open, then closed: {seen:?}"
    );
    assert!(client.request("pc2", b"flowing").is_ok());
}

#[test]
fn error_documents_reach_the_caller_and_do_not_fail_over() {
    let service = EchoService::start(None).unwrap();
    let a = lone(0, &service.endpoint);
    let b = lone(0, &service.endpoint);
    let client = Client::connect(settings(&[&a.frontend, &b.frontend], Vec::new())).unwrap();
    let events = client.events();
    for _ in 0..20 {
        match client.request("nope", b"x") {
            Err(ClientError::Bridge { code, message }) => {
                assert_eq!(code, ErrorCode::UnknownTarget);
                assert!(message.contains("pc2"), "{message}");
            }
            other => panic!("expected unknown_target: {other:?}"),
        }
    }
    let reply = client.request("pc2", b"still here").unwrap();
    assert_eq!(reply.endpoint, a.frontend, "still on the first bridge");
    assert_eq!(reply.attempts, 1);
    let events: Vec<Event> = events.try_iter().collect();
    assert!(
        events.iter().all(|e| matches!(e, Event::Connected { .. })),
        "no failover, no breaker: {events:?}"
    );
}

#[test]
fn a_late_reply_after_a_retry_is_not_a_second_result() {
    // One pyzmq REP service answers for both bridges, one request at a time.
    let (_service, port) = py_service("slow", 0);
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let a = lone(0, &endpoint);
    let b = lone(0, &endpoint);
    let mut config = settings(&[&a.frontend, &b.frontend], Vec::new());
    config.request_timeout = Duration::from_millis(300);
    let client = Client::connect(config).unwrap();
    // Through a: no answer within 300 ms, so it is sent again through b,
    // which waits behind it at the service. a's answer comes first and is
    // the result; b's comes later and is dropped.
    let slow = client
        .send("pc2", vec![b"sleep:0.5".to_vec(), b"one".to_vec()])
        .wait()
        .unwrap();
    assert_eq!(slow.attempts, 2, "sent twice");
    assert_eq!(
        slow.frames,
        [b"slow".to_vec(), b"sleep:0.5".to_vec(), b"one".to_vec()]
    );
    // The next call finds b busy with the copy of the first; whichever
    // bridge answers it, it gets its own answer, never that late one.
    let next = client.send("pc2", vec![b"two".to_vec()]).wait().unwrap();
    assert_eq!(next.frames, [b"slow".to_vec(), b"two".to_vec()]);
    // b delivered its late answers (the first call's copy, and the second's
    // if it was sent twice too) to the client, which dropped them.
    assert!(wait_until(Duration::from_secs(5), || {
        status(&b.frontend)["targets"]["pc2"]["replies_total"] == next.attempts as u64
    }));
    let third = client.send("pc2", vec![b"three".to_vec()]).wait().unwrap();
    assert_eq!(third.frames, [b"slow".to_vec(), b"three".to_vec()]);
}

#[test]
fn calls_awaited_together_on_one_thread_each_get_their_own_answer() {
    let service = EchoService::start(None).unwrap();
    let bridge = lone(0, &service.endpoint);
    let client = Client::connect(settings(&[&bridge.frontend], Vec::new())).unwrap();
    let payloads: Vec<Vec<u8>> = (0..200).map(|i| format!("call {i}").into_bytes()).collect();
    let calls = payloads
        .iter()
        .map(|p| client.send("pc2", vec![p.clone()]))
        .collect();
    let replies = await_all(calls, Duration::from_secs(10));
    for (payload, reply) in payloads.iter().zip(replies) {
        assert_eq!(reply.unwrap().frames.last(), Some(payload));
    }
}

#[test]
fn one_client_shared_by_eight_threads_gets_each_call_its_own_answer_promptly() {
    let service = EchoService::start(None).unwrap();
    let bridge = lone(0, &service.endpoint);
    let client = Client::connect(settings(&[&bridge.frontend], Vec::new())).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let client = client.clone();
            s.spawn(move || {
                for n in 0..300 {
                    let payload = format!("thread {t} call {n}").into_bytes();
                    let reply = client.request("pc2", &payload).unwrap();
                    assert_eq!(reply.frames.last(), Some(&payload));
                    assert_eq!(reply.attempts, 1, "answered by the first attempt");
                    // A call whose hand-off did not wake the I/O thread
                    // waits for its next timeout (up to a second).
                    assert!(
                        reply.elapsed < Duration::from_millis(500),
                        "thread {t} call {n} took {:?}",
                        reply.elapsed
                    );
                }
            });
        }
    });
}

/// A minimal executor: polls every future until all are ready, sleeping
/// in between until a waker unparks this thread. A result that never
/// wakes its task shows as the deadline passing.
fn await_all<F: Future + Unpin>(mut futures: Vec<F>, within: Duration) -> Vec<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let deadline = Instant::now() + within;
    loop {
        for (future, output) in futures.iter_mut().zip(&mut outputs) {
            if output.is_none() {
                if let Poll::Ready(value) = Pin::new(future).poll(&mut cx) {
                    *output = Some(value);
                }
            }
        }
        if outputs.iter().all(Option::is_some) {
            return outputs.into_iter().flatten().collect();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::park_timeout(left);
        assert!(Instant::now() < deadline, "not woken within {within:?}");
    }
}

#[test]
fn a_json_call_goes_through_unchanged_and_a_bad_one_is_answered_by_the_bridge() {
    let service = EchoService::start(None).unwrap();
    let bridge = lone(0, &service.endpoint);
    let client = Client::connect(settings(&[&bridge.frontend], Vec::new())).unwrap();
    let body = br#"{"target":"pc2","text":"hi"}"#.to_vec();
    let reply = client.send_json(body.clone()).wait().unwrap();
    assert_eq!(reply.frames, [body], "the one frame, forwarded unchanged");
    for (body, code) in [
        (&br#"{"text":"hi"}"#[..], ErrorCode::MissingTarget),
        (&b"{nope"[..], ErrorCode::InvalidJson),
    ] {
        match client.send_json(body.to_vec()).wait() {
            Err(ClientError::Bridge { code: got, .. }) => assert_eq!(got, code),
            other => panic!("expected {code}: {other:?}"),
        }
    }
}
