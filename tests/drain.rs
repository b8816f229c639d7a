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

    // New requests are refused with `draining` while the old ones finish.
    let late = Dealer::connect(&bridge.frontend);
    let (code, message) = error_of(&late.call(&[b"pc2", b"new"]));
    assert_eq!(code, "draining");
    assert!(message.contains("other bridge"), "{message}");

    let mut answered = Vec::new();
    while answered.len() < 20 {
        let reply = client.recv(Duration::from_secs(10)).expect("an answer");
        assert_eq!(reply[..2], [b"svc".to_vec(), b"sleep:0.05".to_vec()]);
        answered.push(reply[2][0]);
    }
    answered.sort();
    assert_eq!(answered, (0..20).collect::<Vec<u8>>());
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
