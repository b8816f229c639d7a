//! Graceful stop: SIGTERM answers everything in flight before exit.

use crate::support::*;
use std::time::Duration;

#[test]
fn sigterm_answers_every_request_in_flight_then_exits_zero() {
    let (_svc, port) = py_service("svc", 0);
    let mut bridge = bridge(&[format!("--pc2-addr=tcp://127.0.0.1:{port}")]);
    let client = Dealer::connect(&bridge.frontend);
    // 20 requests of 50 ms each on a one-at-a-time REP backend: about 1 s.
    for i in 0..20u8 {
        client.send(&[b"pc2", b"sleep:0.05", &[i]]);
    }
    assert!(wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)["targets"]["pc2"]["requests_total"] == 20
    }));
    bridge.signal("TERM").unwrap();
    assert!(bridge.wait_for_log("draining", Duration::from_secs(5)));

    // A request that comes while the old ones finish is relayed too: a
    // client that knows nothing of the stop is served, not refused.
    let late = Dealer::connect(&bridge.frontend);
    late.send(&[b"pc2", b"new"]);

    let mut answered = Vec::new();
    while answered.len() < 20 {
        let reply = client.recv(Duration::from_secs(10)).expect("an answer");
        assert_eq!(reply[..2], [b"svc".to_vec(), b"sleep:0.05".to_vec()]);
        answered.push(reply[2][0]);
    }
    answered.sort();
    assert_eq!(answered, (0..20).collect::<Vec<u8>>());
    assert_eq!(
        late.recv(Duration::from_secs(10))
            .expect("the late request's reply"),
        [b"svc".to_vec(), b"new".to_vec()]
    );
    let exit = bridge.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{exit:?}");
}

/// A port that never falls quiet is not held for ever: past the relay
/// window (half of drain_timeout, at most 2 s) new requests are told to
/// go to the other bridge, while those in flight are still answered.
#[test]
fn a_draining_port_that_never_falls_quiet_sends_new_requests_elsewhere() {
    let (_svc, port) = py_service("svc", 0);
    let echo = EchoService::start(Some("rs")).unwrap();
    let config = TempConfig::new(&format!("[targets.rs]\nendpoint = \"{}\"\n", echo.endpoint));
    let mut bridge = bridge(&[
        format!("--pc2-addr=tcp://127.0.0.1:{port}"),
        "--drain-timeout=3".into(),
        config.flag(),
    ]);
    let busy = Dealer::connect(&bridge.frontend);
    busy.send(&[b"pc2", b"sleep:2.5"]);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)["targets"]["pc2"]["in_flight"] == 1
    }));
    // The relay window starts when the bridge takes the signal: after
    // `before`, before `stopped`.
    let before = std::time::Instant::now();
    bridge.signal("TERM").unwrap();
    let stopped = std::time::Instant::now();
    assert!(bridge.wait_for_log("draining", Duration::from_secs(5)));
    let client = Dealer::connect(&bridge.frontend);
    // Served at first, then refused once the relay window (1.5 s) is over.
    assert_eq!(client.call(&[b"rs", b"early"])[0], b"rs");
    let refused = loop {
        let reply = client.call(&[b"rs", b"later"]);
        if reply[0] != b"rs" {
            break reply;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "still relaying new requests {:?} after the stop",
            stopped.elapsed()
        );
    };
    assert!(before.elapsed() >= Duration::from_millis(1500));
    let (code, message) = error_of(&refused);
    assert_eq!(code, "draining");
    assert!(message.contains("other bridge"), "{message}");
    let reply = busy
        .recv(Duration::from_secs(5))
        .expect("the busy request's reply");
    assert_eq!(reply, [b"svc".to_vec(), b"sleep:2.5".to_vec()]);
    let exit = bridge.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn past_drain_timeout_what_is_left_gets_draining_and_the_bridge_exits() {
    let (_svc, port) = py_service("svc", 0);
    let mut bridge = bridge(&[
        format!("--pc2-addr=tcp://127.0.0.1:{port}"),
        "--drain-timeout=0.3".into(),
    ]);
    let client = Dealer::connect(&bridge.frontend);
    client.send(&[b"pc2", b"sleep:5"]);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)["targets"]["pc2"]["in_flight"] == 1
    }));
    bridge.signal("TERM").unwrap();
    let (code, _) = error_of(&client.recv(Duration::from_secs(5)).expect("an answer"));
    assert_eq!(code, "draining");
    let exit = bridge.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(exit.success(), "{exit:?}");
}
