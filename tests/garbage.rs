//! Hostile input: each piece is answered (or cut off by the transport) and
//! the bridge keeps serving everyone else.

use crate::support::*;
use std::time::Duration;

/// Deterministic noise, so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

#[test]
fn garbage_is_answered_and_other_clients_keep_being_served() {
    let rs = EchoService::start(None).unwrap();
    let bridge = bridge(&[format!("--pc2-addr={}", rs.endpoint)]);

    // A well-behaved client keeps a load going the whole time.
    let load = Load {
        endpoint: bridge.frontend.clone(),
        targets: vec!["pc2".into()],
        path: Route::Json,
        clients: 2,
        in_flight: 8,
        requests: 20_000,
        duration: Duration::from_secs(30),
        payload_bytes: 100,
        settle: Duration::from_secs(10),
        tagged: false,
        rate: None,
        curve: None,
    };
    let good = std::thread::spawn(move || load.run().unwrap());

    let mut deep = b"{\"a\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.push(b'}');
    let fifty: Vec<&[u8]> = vec![b"pc2"; 50];
    let thousand: Vec<&[u8]> = vec![b"x"; 1000];
    let mut deep_target = br#"{"target":"#.to_vec();
    deep_target.extend(std::iter::repeat_n(b'[', 1000));
    deep_target.extend(std::iter::repeat_n(b']', 1000));
    deep_target.push(b'}');
    let ten_mib = vec![b'{'; 10 << 20];
    let random = noise(1000, 7);
    let cases: Vec<(&str, Vec<&[u8]>, &str)> = vec![
        ("random bytes", vec![&random], "invalid_json"),
        ("one empty frame", vec![b""], "invalid_json"),
        ("delimiter and empty frame", vec![b"", b""], "invalid_json"),
        ("50 frames", fifty, "bad_frames"),
        ("a 10 MiB frame", vec![&ten_mib], "too_large"),
        (
            "invalid UTF-8",
            vec![b"{\"target\":\"\xff\xfe\"}"],
            "invalid_json",
        ),
        (
            "invalid UTF-8 target frame",
            vec![b"\xc3\x28", b"x"],
            "bad_frames",
        ),
        ("deeply nested JSON", vec![&deep], "missing_target"),
        (
            "a JSON array",
            vec![b"[{\"target\":\"pc2\"}]"],
            "invalid_json",
        ),
        ("a number", vec![b"1e999999"], "invalid_json"),
        ("NUL bytes", vec![b"\0\0\0"], "invalid_json"),
        (
            "a number out of range as target",
            vec![br#"{"target":1e400}"#],
            "missing_target",
        ),
        (
            "a null target",
            vec![br#"{"target":null}"#],
            "missing_target",
        ),
        (
            "a boolean target",
            vec![br#"{"target":true}"#],
            "missing_target",
        ),
        (
            "an object target",
            vec![br#"{"target":{"name":"pc2"}}"#],
            "missing_target",
        ),
        ("a 1000-deep target", vec![&deep_target], "missing_target"),
        (
            "a numeric action",
            vec![br#"{"action":5}"#],
            "missing_target",
        ),
        (
            "a heartbeat sent to the frontend",
            vec![br#"{"type":"heartbeat","instance":"active","epoch":99}"#],
            "missing_target",
        ),
        ("1000 frames", thousand, "bad_frames"),
        (
            "a target with a NUL byte",
            vec![b"pc\x002", b"x"],
            "unknown_target",
        ),
    ];
    let client = Dealer::connect(&bridge.frontend);
    for (what, frames, code) in &cases {
        let mut reply = client.call(frames);
        if frames.len() >= 2 && frames[0].is_empty() {
            assert_eq!(reply.remove(0), b"", "{what}: delimiter mirrored");
        }
        assert_eq!(&error_of(&reply).0, code, "{what}");
    }

    // Past the transport ceiling (16 x max_message_bytes) libzmq cuts the
    // connection before the frame reaches the bridge's memory.
    let absurd = Dealer::connect(&bridge.frontend);
    absurd.send(&[&vec![b'x'; 20 << 20]]);
    assert_eq!(absurd.recv(Duration::from_millis(500)), None);

    let report = good.join().unwrap();
    assert_eq!(report.ok, 20_000, "{report:?}");
    assert_eq!(report.lost + report.mismatched, 0);
    let pong = client.call(&[br#"{"action":"ping"}"#]);
    assert!(String::from_utf8_lossy(&pong[0]).contains("pong"));
}

#[test]
fn bytes_that_are_not_utf8_inside_a_json_string_are_refused_and_never_reach_the_service() {
    let (_service, port) = py_service("py", 0);
    let bridge = bridge(&[format!("--pc2-addr=tcp://127.0.0.1:{port}")]);
    let client = Dealer::connect(&bridge.frontend);
    for bad in [
        &b"{\"target\":\"pc2\",\"v\":\"\xff\"}"[..],
        // A UTF-16 surrogate encoded as UTF-8 (CESU-8): not UTF-8.
        b"{\"target\":\"pc2\",\"v\":\"\xed\xa0\x80\"}",
    ] {
        let mut reply = client.call(&[b"", bad]);
        assert_eq!(reply.remove(0), b"", "the delimiter mirrored");
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_json", "{bad:?}");
        assert!(message.contains("not UTF-8"), "{message}");
    }
    // The service hears only the good request.
    let good = br#"{"target":"pc2","v":"\u00ff ok"}"#;
    assert_eq!(
        client.call(&[b"", good]),
        [b"".to_vec(), b"py".to_vec(), good.to_vec()]
    );
    assert_eq!(
        status(&bridge.frontend)["targets"]["pc2"]["requests_total"],
        1
    );
}
