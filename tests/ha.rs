//! High availability with real processes, killed for real: kill -9,
//! SIGSTOP/SIGCONT, restarts, preempt, graceful handover under load.

use crate::support::*;
use std::time::{Duration, Instant};

fn bound_primary(e: &serde_json::Value) -> bool {
    e["event"] == "bound" && e["port"] == "primary"
}

#[test]
fn kill_9_of_the_active_hands_the_primary_port_to_the_passive_in_time() {
    let pair = Pair::new(&[]);
    let (primary, secondary) = pair.start_both();
    let notifications = Listener::new(&pair.heartbeat_endpoint(false));

    let killed = Instant::now();
    primary.signal("KILL").unwrap();
    let (at, _) = secondary
        .wait_for_event(Duration::from_secs(5), bound_primary)
        .expect("the passive binds the primary port");
    // The kernel closed the dead process's connections: no waiting for
    // heartbeat_timeout. The event says so; the time only has to be below
    // the earliest a silence could end (TIMEOUT - INTERVAL after the kill:
    // the last heartbeat can be one interval old).
    let took = at - killed;
    assert!(
        took < TIMEOUT - INTERVAL,
        "took {took:?}: the passive waited for the timeout"
    );
    secondary
        .wait_for_event(Duration::from_secs(1), |e| {
            e["event"] == "role" && e["reason"] == "peer_died"
        })
        .expect("taken over on the proof of death");
    drop(primary);

    // A plain pyzmq REQ client that only knows the primary port.
    let replies = py_client("req", &pair.primary_endpoint(), &[vec![b"pc2", b"after"]]);
    assert_eq!(replies, [vec![b"after".to_vec()]]);

    let note = notifications
        .wait_for("failover_notification", Duration::from_secs(5))
        .expect("a failover notification");
    assert_eq!(note["node"], "secondary");
    assert_eq!(note["new_active_port"], pair.ports[0]);
    assert_eq!(note["endpoints"][0], pair.primary_endpoint());
    let status = status(&pair.primary_endpoint());
    assert_eq!(status["role"], "active");
    assert_eq!(status["failovers_total"], 1);
    assert_eq!(status["epoch"], 2);
    assert!(secondary.wait_for_log("peer_died", Duration::from_secs(1)));
    // Its secondary port keeps relaying: a client there is served.
    let replies = py_client("req", &pair.secondary_endpoint(), &[vec![b"pc2", b"there"]]);
    assert_eq!(replies, [vec![b"there".to_vec()]]);
}

#[test]
fn a_hung_active_keeps_its_port_and_after_sigcont_there_is_one_active() {
    let pair = Pair::new(&[]);
    let (primary, secondary) = pair.start_both();
    primary.signal("STOP").unwrap();
    let guard = scopeguard(&primary);
    assert!(
        secondary.wait_for_log("cannot bind the primary port", Duration::from_secs(5)),
        "the passive logs that the bind failed"
    );
    let doc = status(&pair.secondary_endpoint());
    assert_eq!(doc["role"], "passive");
    assert!(doc["primary_bind_failures_total"].as_u64().unwrap() >= 1);
    primary.signal("CONT").unwrap();
    drop(guard);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&pair.secondary_endpoint())["peer"]["alive"] == true
    }));
    // Exactly one active, and it stays so over several timeouts.
    let until = Instant::now() + TIMEOUT * 4;
    while Instant::now() < until {
        assert_eq!(status(&pair.primary_endpoint())["role"], "active");
        assert_eq!(status(&pair.secondary_endpoint())["role"], "passive");
    }
}

/// Resume a stopped process if the test fails while it is stopped, so
/// that its Drop can kill it.
fn scopeguard(process: &BridgeProcess) -> impl Drop + '_ {
    struct Cont<'a>(&'a BridgeProcess);
    impl Drop for Cont<'_> {
        fn drop(&mut self) {
            let _ = self.0.signal("CONT");
        }
    }
    Cont(process)
}

/// Start the pair, kill -9 the primary, and return the secondary once it
/// holds the primary port.
fn killed_and_taken_over(pair: &Pair) -> BridgeProcess {
    let (primary, secondary) = pair.start_both();
    primary.signal("KILL").unwrap();
    drop(primary);
    secondary
        .wait_for_event(Duration::from_secs(5), bound_primary)
        .expect("takeover");
    secondary
}

#[test]
fn a_restarted_primary_joins_as_passive_and_does_not_take_the_role_back() {
    let pair = Pair::new(&[]);
    let secondary = killed_and_taken_over(&pair);
    assert!(
        !secondary.events().iter().any(|e| e["event"] == "released"),
        "both ports relay until the peer comes back"
    );

    // The secondary port is handed back once the peer is heard again.
    let restarted = pair.start("active");
    assert_eq!(restarted.ready["role"], "passive");
    assert_eq!(restarted.frontend, pair.secondary_endpoint());
    secondary
        .wait_for_event(Duration::from_secs(1), |e| {
            e["event"] == "released" && e["port"] == "secondary"
        })
        .expect("the secondary port was released for the peer");
    let until = Instant::now() + TIMEOUT * 4;
    while Instant::now() < until {
        assert_eq!(
            role_at(&pair.primary_endpoint(), Duration::from_secs(2)).as_deref(),
            Some("active")
        );
        assert_eq!(
            role_at(&pair.secondary_endpoint(), Duration::from_secs(2)).as_deref(),
            Some("passive")
        );
    }
    assert_eq!(status(&pair.primary_endpoint())["node"], "secondary");
}

#[test]
fn with_preempt_the_restarted_primary_takes_the_role_back_by_handover() {
    let pair = Pair::new(&["--preempt=true"]);
    let secondary = killed_and_taken_over(&pair);

    let restarted = pair.start("active");
    restarted
        .wait_for_event(Duration::from_secs(5), bound_primary)
        .expect("the primary takes its port back");
    secondary
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "role" && e["reason"] == "preempt"
        })
        .expect("the secondary hands over");
    assert!(
        wait_until(Duration::from_secs(5), || {
            role_at(&pair.secondary_endpoint(), Duration::from_secs(1)).as_deref()
                == Some("passive")
        }),
        "the secondary serves as passive again; its log:\n{}\nthe primary's:\n{}",
        secondary.log().join("\n"),
        restarted.log().join("\n")
    );
    let doc = status(&pair.primary_endpoint());
    assert_eq!(doc["node"], "primary");
    assert_eq!(doc["role"], "active");
    assert_eq!(doc["epoch"], 3, "every takeover raises the epoch");
}

#[test]
fn sigterm_of_the_active_under_load_loses_nothing() {
    let pair = Pair::new(&[]);
    let (mut primary, secondary) = pair.start_both();
    let client = retrying_load(
        vec![pair.primary_endpoint(), pair.secondary_endpoint()],
        500.0,
        Duration::from_secs(3),
    );
    let load = std::thread::spawn(move || client.run().unwrap());
    // The load flows through the active before the handover.
    assert!(wait_until(Duration::from_secs(5), || status(
        &pair.primary_endpoint()
    )["targets"]["pc2"]["replies_total"]
        .as_u64()
        > Some(50)));
    primary.signal("TERM").unwrap();
    let exit = primary.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{exit:?}");
    secondary
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "role" && e["reason"] == "peer_leaving"
        })
        .unwrap_or_else(|| {
            panic!(
                "the passive takes over at once, without waiting for a timeout; its log:\n{}",
                secondary.log().join("\n")
            )
        });
    let report = load.join().unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    // The load ran across the handover (how many a lockstep client gets
    // through depends on how busy the machine is, not on the bridge).
    assert!(report.ok >= 100, "{report:?}");
    // A takeover that waited for silence would cost a client at least
    // TIMEOUT - INTERVAL; the handover costs it far less.
    assert!(
        report.max_wait < TIMEOUT - INTERVAL,
        "client-visible gap {:?}: {report:?}",
        report.max_wait
    );
}

/// The signature checks the bytes sent: a busy bridge's `load` (a float
/// whose printed digits a parse and re-print need not keep) once made
/// genuine heartbeats fail as `bad_auth`, and a passive judge a live active
/// silent.
#[test]
fn a_signed_pair_under_load_rejects_no_genuine_heartbeat() {
    let pair = Pair::new(&["--auth-token=s3cret"]);
    let (primary, secondary) = pair.start_both();
    let client = retrying_load(
        vec![pair.primary_endpoint(), pair.secondary_endpoint()],
        1000.0,
        Duration::from_secs(10),
    );
    let report = client.run().unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    // Enough heartbeats went by under load (10 s at 0.1 s); the count a
    // lockstep client reaches depends on the machine.
    assert!(report.ok >= 500, "{report:?}");
    for (endpoint, process) in [
        (pair.primary_endpoint(), &primary),
        (pair.secondary_endpoint(), &secondary),
    ] {
        let doc = status(&endpoint);
        let rejected = &doc["heartbeats_rejected_total"];
        let total: u64 = rejected
            .as_object()
            .expect("rejections by reason")
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(total, 0, "{endpoint}: {rejected}");
        assert_eq!(doc["primary_bind_failures_total"], 0, "{endpoint}");
        assert_eq!(doc["failovers_total"], 0, "{endpoint}");
        assert_eq!(doc["peer"]["alive"], true, "{endpoint}");
        assert!(
            !process.events().iter().any(|e| e["event"] == "bind_failed"),
            "{endpoint} tried to take a port: {:?}",
            process.events()
        );
    }
    assert_eq!(status(&pair.primary_endpoint())["role"], "active");
    assert_eq!(status(&pair.secondary_endpoint())["role"], "passive");
}

#[test]
fn forged_stale_and_replayed_heartbeats_neither_delay_nor_cause_a_failover() {
    use zbridge_protocol::heartbeat::{Node, Role};
    let pair = Pair::new(&["--auth-token=s3cret", "--heartbeat-max-skew=0.2"]);
    let (primary, secondary) = pair.start_both();

    // Real, signed heartbeats of the active, captured for replay.
    let tap = Listener::new(&pair.heartbeat_endpoint(true));
    let captured: Vec<Vec<u8>> = (0..5)
        .filter_map(|_| tap.next(Duration::from_secs(2)))
        .map(|v| v.to_string().into_bytes())
        .collect();
    assert_eq!(captured.len(), 5);
    assert!(captured
        .iter()
        .all(|c| String::from_utf8_lossy(c).contains("\"auth\"")));

    let killed = Instant::now();
    primary.signal("KILL").unwrap();
    drop(primary);
    // The forger takes the dead active's heartbeat port and claims to be
    // a running active, every way it can without the token.
    let context = zmq::Context::new();
    let forger = context.socket(zmq::PUB).unwrap();
    forger.set_linger(0).unwrap();
    assert!(wait_until(Duration::from_secs(2), || forger
        .bind(&pair.heartbeat_endpoint(true))
        .is_ok()));
    let forged = |seq: u64| forged_heartbeat(Role::Active, Node::Primary, pair.ports[0], 99, seq);
    let mut seq = 0;
    let taken = loop {
        seq += 1;
        forger.send(forged(seq).encode(None), 0).unwrap();
        forger.send(forged(seq).encode(Some(b"guess")), 0).unwrap();
        for frame in &captured {
            forger.send(&frame[..], 0).unwrap();
        }
        if let Some((at, _)) = secondary.wait_for_event(Duration::from_millis(10), bound_primary) {
            break at;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no failover under forged heartbeats"
        );
    };
    let took = taken - killed;
    assert!(
        took <= TIMEOUT + INTERVAL,
        "took {took:?} under forged heartbeats"
    );
    // Keep forging for a moment: the new active must not step down either.
    for _ in 0..20 {
        seq += 1;
        forger.send(forged(seq).encode(None), 0).unwrap();
        forger.send(forged(seq).encode(Some(b"guess")), 0).unwrap();
        for frame in &captured {
            forger.send(&frame[..], 0).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let doc = status(&pair.primary_endpoint());
    assert_eq!(doc["role"], "active");
    assert_eq!(doc["node"], "secondary");
    let rejected = &doc["heartbeats_rejected_total"];
    for reason in ["missing_auth", "bad_auth"] {
        assert!(rejected[reason].as_u64().unwrap() > 0, "{reason}: {doc}");
    }
    assert!(
        rejected["replay"].as_u64().unwrap() + rejected["stale"].as_u64().unwrap() > 0,
        "captured heartbeats are replays or stale: {doc}"
    );
}
