//! Every error code, produced for real and checked reply by reply.

use crate::support::*;
use std::time::{Duration, Instant};

#[test]
fn bad_requests_get_their_error_codes_with_a_useful_message() {
    let rs = EchoService::start(Some("rs")).unwrap();
    let config = TempConfig::new(&format!(
        "max_message_bytes = 1000\nmax_frames = 4\n[targets.rs]\nendpoint = \"{}\"\n",
        rs.endpoint
    ));
    let bridge = bridge(&[config.flag()]);
    let client = Dealer::connect(&bridge.frontend);
    let big = vec![b'x'; 1001];
    let cases: [(&[&[u8]], &str, &str); 6] = [
        (&[b"{nope"], "invalid_json", "not valid JSON"),
        (&[b"[1, 2]"], "invalid_json", "not an object"),
        (&[br#"{"x":1}"#], "missing_target", "\"target\""),
        (
            &[br#"{"target":"nowhere"}"#],
            "unknown_target",
            "configured targets: rs",
        ),
        (&[b"rs", &big], "too_large", "max_message_bytes"),
        (&[b"rs", b"1", b"2", b"3", b"4"], "bad_frames", "max_frames"),
    ];
    for (frames, code, phrase) in cases {
        let (got, message) = error_of(&client.call(frames));
        assert_eq!(got, code, "{frames:?}");
        assert!(message.contains(phrase), "{code}: {message}");
    }
    // A REQ client gets the same answer behind its delimiter.
    let replies = py_client("req", &bridge.frontend, &[vec![b"{nope"]]);
    assert_eq!(error_of(&replies[0]).0, "invalid_json");
    let status = status(&bridge.frontend);
    assert_eq!(status["errors_total"]["invalid_json"], 3);
    assert_eq!(status["errors_total"]["bad_frames"], 1);
    assert_eq!(
        status["targets"]["rs"]["requests_total"], 0,
        "nothing reached the backend"
    );
}

#[test]
fn a_backend_that_does_not_answer_in_time_gets_timeout_and_its_late_reply_is_dropped() {
    let (_slow, port) = py_service("slow", 0);
    let config = TempConfig::new(&format!(
        "[targets.slow]\nendpoint = \"tcp://127.0.0.1:{port}\"\nrequest_timeout = 0.3\n"
    ));
    let bridge = bridge(&[config.flag()]);
    let client = Dealer::connect(&bridge.frontend);
    let (code, message) = error_of(&client.call(&[b"slow", b"sleep:1.0"]));
    assert_eq!(code, "timeout");
    assert!(message.contains("0.300 s"), "{message}");
    // The backend answers later; the bridge drops that reply and counts it.
    assert!(wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)["late_replies_total"] == 1
    }));
    assert_eq!(
        client.recv(Duration::from_millis(200)),
        None,
        "exactly one reply"
    );
}

#[test]
fn a_target_with_nothing_listening_is_backend_unavailable_after_request_timeout() {
    let port = free_port();
    let config = TempConfig::new(&format!(
        "[targets.gone]\nendpoint = \"tcp://127.0.0.1:{port}\"\nrequest_timeout = 0.3\n"
    ));
    let bridge = bridge(&[config.flag()]);
    assert_eq!(bridge.ready["targets"]["gone"]["connected"], false);
    let client = Dealer::connect(&bridge.frontend);
    let (code, message) = error_of(&client.call(&[b"gone", b"hello"]));
    assert_eq!(code, "backend_unavailable");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("is the service running?"), "{message}");
}

#[test]
fn a_request_waits_for_a_backend_that_starts_within_request_timeout() {
    let port = free_port();
    let config = TempConfig::new(&format!(
        "[targets.late]\nendpoint = \"tcp://127.0.0.1:{port}\"\nrequest_timeout = 10\n"
    ));
    let bridge = bridge(&[config.flag()]);
    let client = Dealer::connect(&bridge.frontend);
    client.send(&[b"late", b"first"]);
    client.send(&[br#"{"target":"late","n":2}"#]);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)["targets"]["late"]["waiting_for_backend"] == 2
    }));
    let (_service, _) = py_service("late", port);
    let first = client.recv(Duration::from_secs(10)).expect("first reply");
    let second = client.recv(Duration::from_secs(10)).expect("second reply");
    assert_eq!(first, [b"late".to_vec(), b"first".to_vec()], "in order");
    assert_eq!(
        second,
        [b"late".to_vec(), br#"{"target":"late","n":2}"#.to_vec()]
    );
}

#[test]
fn a_killed_backend_opens_the_breaker_which_closes_when_it_is_back() {
    let port = free_port();
    let (service, _) = py_service("svc", port);
    let config = TempConfig::new(&format!(
        "breaker_failure_threshold = 3\nbreaker_open_wait = 0.5\n\
         [targets.svc]\nendpoint = \"tcp://127.0.0.1:{port}\"\nrequest_timeout = 0.3\n"
    ));
    let bridge = bridge(&[config.flag()]);
    let client = Dealer::connect(&bridge.frontend);
    assert_eq!(
        client.call(&[b"svc", b"1"]),
        [b"svc".to_vec(), b"1".to_vec()]
    );

    service.signal("KILL").unwrap();
    drop(service);
    for _ in 0..3 {
        let (code, _) = error_of(&client.call(&[b"svc", b"2"]));
        assert!(
            code == "backend_unavailable" || code == "timeout",
            "a dead backend gives {code}"
        );
    }
    let asked = Instant::now();
    let (code, message) = error_of(&client.call(&[b"svc", b"3"]));
    assert_eq!(code, "circuit_open");
    assert!(message.contains("retry in"), "{message}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "an open breaker answers without waiting for request_timeout"
    );
    assert_eq!(
        status(&bridge.frontend)["targets"]["svc"]["breaker"],
        "open"
    );
    assert!(bridge.wait_for_log("circuit breaker changed state", Duration::from_secs(2)));

    let (_service, _) = py_service("svc", port);
    assert!(
        wait_until(Duration::from_secs(10), || {
            client.call(&[b"svc", b"4"]) == [b"svc".to_vec(), b"4".to_vec()]
        }),
        "traffic resumes once the backend is back"
    );
    assert_eq!(
        status(&bridge.frontend)["targets"]["svc"]["breaker"],
        "closed"
    );
}

#[test]
fn a_client_over_its_rate_limit_gets_rate_limited_while_another_is_served() {
    let rs = EchoService::start(None).unwrap();
    let bridge = bridge(&[
        format!("--pc2-addr={}", rs.endpoint),
        "--rate-limit-per-client=50".into(),
        "--rate-limit-per-client-burst=10".into(),
    ]);
    // A second client, well under the limit, throughout.
    let endpoint = bridge.frontend.clone();
    let polite = std::thread::spawn(move || {
        let client = Dealer::connect(&endpoint);
        (0..20u8)
            .map(|i| {
                let reply = client.call(&[b"pc2", &[i]]);
                std::thread::sleep(Duration::from_millis(50));
                reply == [vec![i]]
            })
            .filter(|ok| *ok)
            .count()
    });
    // A flood: 500 requests at once, ten times what its limit allows in
    // the time it takes.
    let flood = Dealer::connect(&bridge.frontend);
    let started = Instant::now();
    for i in 0..500u16 {
        flood.send(&[b"pc2", &i.to_le_bytes()]);
    }
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..500 {
        let reply = flood
            .recv(Duration::from_secs(10))
            .expect("every request is answered");
        if reply.len() == 1 && reply[0].len() == 2 {
            ok += 1;
        } else {
            let (code, message) = error_of(&reply);
            assert_eq!(code, "rate_limited");
            assert!(message.contains("rate_limit_per_client"), "{message}");
            limited += 1;
        }
    }
    let allowed = 10.0 + 50.0 * started.elapsed().as_secs_f64();
    assert!(
        ok >= 10 && f64::from(ok) <= allowed + 1.0,
        "{ok} passed, {allowed} allowed"
    );
    assert_eq!(ok + limited, 500);
    assert_eq!(
        polite.join().unwrap(),
        20,
        "the polite client is never limited"
    );
    assert_eq!(
        status(&bridge.frontend)["errors_total"]["rate_limited"],
        limited
    );
}

#[test]
fn a_target_that_is_a_pub_socket_is_named_as_such_not_as_a_service_that_is_not_running() {
    // The mistake the issue saw: the target points at a service's PUB.
    let context = zmq::Context::new();
    let publisher = context.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = publisher.get_last_endpoint().unwrap().unwrap();
    let config = TempConfig::new(&format!(
        "[targets.feed]\nendpoint = \"{endpoint}\"\nrequest_timeout = 0.5\n"
    ));
    let bridge = bridge(&[config.flag()]);
    assert!(
        bridge.wait_for_log("ends the bridge's handshake", Duration::from_secs(5)),
        "{}",
        bridge.log().join("\n")
    );
    let client = Dealer::connect(&bridge.frontend);
    let (code, message) = error_of(&client.call(&[b"feed", b"x"]));
    assert_eq!(code, "backend_unavailable");
    assert!(message.contains("REP or ROUTER socket"), "{message}");
    assert!(!message.contains("is the service running"), "{message}");
    let status = status(&bridge.frontend);
    let refused = status["targets"]["feed"]["handshake_refused"].as_str();
    assert!(refused.is_some_and(|r| r.contains("PUB")), "{status}");
}
