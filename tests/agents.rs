//! Unmodified agents: plain pyzmq REQ sockets on the primary port, as most
//! agents that use a bridge are written, through a crash and through
//! planned handovers.

use crate::support::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// The agent's replies, in order, with the time each was read.
fn replies(agent: &Process) -> Vec<(Instant, Value)> {
    agent
        .timed_events()
        .into_iter()
        .filter(|(_, e)| e.get("reply").is_some())
        .collect()
}

/// Wait until the agent has finished its run: it prints `done`. An agent
/// with no timeout whose request was lost never does.
fn finished(agent: &Process, within: Duration) -> u64 {
    let (_, done) = agent
        .wait_for_event(within, |e| e.get("done").is_some())
        .unwrap_or_else(|| {
            let last = replies(agent).last().map(|(_, e)| e.clone());
            panic!("the agent hangs: a request was lost (last reply {last:?})")
        });
    done["done"].as_u64().unwrap()
}

/// kill -9 at the design's default timings (heartbeat 1 s, timeout 3 s): the
/// passive takes the primary port on the kernel's word, not 3 s later, so a
/// Lazy Pirate agent that knows only the primary port is served again in a
/// fraction of a second (the original bridge: 3.26 s).
#[test]
fn kill_9_at_default_timings_serves_a_primary_port_agent_again_long_before_the_timeout() {
    let pair = Pair::with_timings(Duration::from_secs(1), Duration::from_secs(3), &[]);
    let (primary, secondary) = pair.start_both();
    let agent = lockstep_agent(
        Command::new("python3"),
        &pair.primary_endpoint(),
        "pc2",
        3.0,
        "x",
        Some(Duration::from_millis(100)),
    );
    assert!(agent
        .wait_for_event(Duration::from_secs(5), |e| e["reply"] == 100)
        .is_some());
    let killed = Instant::now();
    primary.signal("KILL").unwrap();
    let (bound, _) = secondary
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "bound" && e["port"] == "primary"
        })
        .expect("the passive takes the primary port");
    let count = finished(&agent, Duration::from_secs(10));
    let replies = replies(&agent);
    assert_eq!(replies.len() as u64, count);
    assert!(replies.iter().all(|(_, e)| e["own"] == true), "{replies:?}");
    assert!(
        replies.iter().any(|(at, _)| *at > bound),
        "no reply after the takeover"
    );
    // The longest wait between two replies: the kill's.
    let gap = replies
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    println!(
        "kill -9 at 1 s / 3 s: takeover {:?} after the kill, the agent's gap {gap:?}",
        bound - killed
    );
    let long: Vec<_> = replies
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 > Duration::from_millis(50))
        .map(|w| (w[0].0.saturating_duration_since(killed), w[1].0 - w[0].0))
        .collect();
    // Takeover, then the agent's own 100 ms timeout and a resend: about
    // 110 ms here. A takeover that waited for the heartbeat timeout would
    // leave the agent unserved for at least 2 s (3 s timeout, 1 s interval).
    assert!(secondary.wait_for_log("peer_died", Duration::from_secs(1)));
    assert!(
        gap <= Duration::from_secs(1),
        "the agent waited {gap:?} (takeover {:?}; waits over 50 ms, from the kill: {long:?})",
        bound - killed
    );
}

/// Planned handovers (SIGTERM of the active, the stopped bridge restarted
/// each time) under a plain lockstep REQ agent with no timeout, on the
/// primary port, against a service taking 0.2 s per request: every request
/// gets its real reply; none an error, none silence.
#[test]
fn four_sigterm_handovers_cost_a_plain_lockstep_agent_nothing() {
    let (_svc, port) = py_service("svc", 0);
    let pair = Pair::new(&[]);
    let mut flags = pair.flags.clone();
    flags.retain(|f| !f.starts_with("--pc2-addr"));
    flags.push(format!("--pc2-addr=tcp://127.0.0.1:{port}"));
    let start = |mode: &str| {
        let mut args = vec![format!("--mode={mode}")];
        args.extend(flags.iter().cloned());
        BridgeProcess::spawn(exe(), &args).expect("bridge starts")
    };
    let mut active = start("active");
    let mut passive = start("passive");
    let mut active_mode = "active";
    let t0 = Instant::now();
    let mut gone = Vec::new();
    let agent = lockstep_agent(
        Command::new("python3"),
        &pair.primary_endpoint(),
        "pc2",
        9.0,
        "sleep:0.2",
        None,
    );
    for handover in 0..4 {
        // The passive hears the active before each handover.
        assert!(wait_until(Duration::from_secs(5), || {
            status(&pair.secondary_endpoint())["peer"]["alive"] == true
                && status(&pair.primary_endpoint())["peer"]["alive"] == true
        }));
        let n = replies(&agent).len() as u64;
        assert!(
            agent
                .wait_for_event(Duration::from_secs(5), |e| e["reply"] == n + 1)
                .is_some(),
            "handover {handover}: the agent hangs after {n} replies {:?}; logs:\n{}\n\n{}\n\n{}",
            replies(&agent)
                .iter()
                .map(|(at, e)| (at.duration_since(t0), e["reply"].clone()))
                .collect::<Vec<_>>(),
            gone.iter()
                .map(|p: &BridgeProcess| p.log().join("\n"))
                .collect::<Vec<_>>()
                .join("\n\n"),
            active.log().join("\n"),
            passive.log().join("\n")
        );
        active.signal("TERM").unwrap();
        let exit = active.wait_exit(Duration::from_secs(10)).expect("exits");
        assert!(exit.success(), "handover {handover}: {exit:?}");
        passive
            .wait_for_event(Duration::from_secs(5), |e| {
                e["event"] == "role" && e["reason"] == "peer_leaving"
            })
            .expect("the passive takes over at once");
        // The stopped node comes back as the passive.
        let restarted_mode = active_mode;
        let restarted = start(restarted_mode);
        assert_eq!(restarted.ready["role"], "passive", "handover {handover}");
        let old = std::mem::replace(&mut active, std::mem::replace(&mut passive, restarted));
        gone.push(old);
        active_mode = if active_mode == "active" {
            "passive"
        } else {
            "active"
        };
    }
    let count = finished(&agent, Duration::from_secs(20));
    let replies = replies(&agent);
    assert_eq!(replies.len() as u64, count);
    let wrong: Vec<_> = replies.iter().filter(|(_, e)| e["own"] != true).collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(count >= 20, "only {count} requests in 9 s");
}
