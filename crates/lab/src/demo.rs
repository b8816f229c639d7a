//! `zbridge demo`: the first thing a newcomer runs. On loopback, with ports
//! the OS picks: a primary and a secondary bridge, two demo services
//! (`main_pc`, `pc2`), two clients at a steady rate, and a publisher whose
//! stream a zbridge-client subscriber follows through the bridges; the
//! active is killed with SIGKILL mid-run. Prints what happened, cleans up
//! every process it started, exits 0 (1 if a request or a message was
//! lost).

use crate::{
    ask, follow_stream, free_port, loopback_endpoints, status, Failover, Fault, Publisher,
    RetryingReport, Seen, TempConfig,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Messages per second of the demo's publisher.
const STREAM_RATE: f64 = 200.0;

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let total = Duration::from_secs(seconds.max(3));
    let before = total / 3;
    let publisher = Publisher::start(Some(STREAM_RATE))?;
    publisher.set(true);
    let config = TempConfig::new(&format!(
        "[streams.dream]\nendpoint = \"{}\"\n",
        publisher.endpoint
    ));
    let pub_ports = [free_port(), free_port()];
    let pub_endpoints = loopback_endpoints(&pub_ports);
    let scenario = Failover {
        fault: Fault::Kill,
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(500),
        rate: 500.0,
        before,
        after: total - before,
        stopped_for: Duration::ZERO,
        extra_flags: vec![
            config.flag(),
            format!("--primary-pub-port={}", pub_ports[0]),
            format!("--secondary-pub-port={}", pub_ports[1]),
        ],
    };
    println!(
        "zbridge demo: a redundant pair of bridges, two services, two clients and a stream, on loopback"
    );
    println!(
        "heartbeats every {} ms; the passive takes over at once when the active's process dies\n\
         (the kernel closes its connections), and after {} ms without a heartbeat when it hangs\n",
        scenario.heartbeat_interval.as_millis(),
        scenario.heartbeat_timeout.as_millis()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let follower = follow_stream(
        pub_endpoints.clone(),
        scenario.heartbeat_timeout,
        "dream",
        Arc::clone(&seen),
        Arc::clone(&stop),
    );
    // Which bridge numbers the stream's copy on the primary pub port: the
    // subscriber follows whichever copy reaches it first, so the kill moves
    // its feed only if that was the active's.
    let mut active_source = None;
    let report = scenario.run(&exe, &mut |primary| {
        show_requests(primary);
        active_source = status(primary)
            .and_then(|s| s["streams"]["dream"]["source"].as_str().map(str::to_string))
            .and_then(|hex| u64::from_str_radix(&hex, 16).ok());
    });
    stop.store(true, Ordering::Relaxed);
    follower
        .join()
        .map_err(|_| anyhow::anyhow!("the stream subscriber panicked"))??;
    let report = report?;
    let stream = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "\nload: client A knows both bridges ({}, {}), client B only the primary port;\n\
         each aims at {} requests/s for {} s (sent: A {:.0}/s, B {:.0}/s, the pace a\n\
         client in lockstep keeps on this machine); after {:.1} s the active gets kill -9.\n",
        report.primary_endpoint,
        report.secondary_endpoint,
        scenario.rate,
        total.as_secs(),
        report.both.sent as f64 / total.as_secs_f64(),
        report.primary_only.sent as f64 / total.as_secs_f64(),
        before.as_secs_f64()
    );
    println!("  time     client A answered    client B answered    (per 200 ms)");
    let rows = report
        .both
        .timeline
        .len()
        .max(report.primary_only.timeline.len());
    // The row whose 200 ms hold the kill.
    let kill_row = (before.as_millis() / 200 * 2) as usize;
    for row in (0..rows).step_by(2) {
        let a = window(&report.both, row);
        let b = window(&report.primary_only, row);
        println!(
            "  {:>4.1}s  {:>4} {:<12}     {:>4} {:<12}{}",
            row as f64 / 10.0,
            a,
            "#".repeat((a / 10) as usize),
            b,
            "#".repeat((b / 10) as usize),
            if row == kill_row {
                " <- kill -9 of the active"
            } else {
                ""
            }
        );
    }
    println!("\nwhat happened:");
    match report.takeover {
        Some(t) => println!(
            "  the passive bridge held the primary port {} ms after the kill",
            t.as_millis()
        ),
        None => println!("  the passive bridge did not take over (this is a bug)"),
    }
    for (name, r) in [
        ("A (both bridges)", &report.both),
        ("B (primary only)", &report.primary_only),
    ] {
        println!(
            "  client {name}: sent {}, answered {}, lost {}, longest wait for an answer {} ms",
            r.sent,
            r.ok,
            r.lost,
            r.max_wait.as_millis()
        );
    }
    let missed = stream.missed();
    println!(
        "  stream `dream`, {STREAM_RATE} messages/s from a PUB service, republished on {}:",
        pub_endpoints.join(" and ")
    );
    println!(
        "    a zbridge-client subscriber got {} messages, missed {missed}, was told of {} lost, moved to the other bridge {} time(s)",
        stream.counters.len(),
        stream.gaps,
        stream.moves
    );
    let followed_the_killed = stream.first_source.is_some() && stream.first_source == active_source;
    let expected_moves = u64::from(followed_the_killed);
    println!(
        "    it followed the {} bridge's copy (the first to reach it){}",
        if followed_the_killed {
            "killed"
        } else {
            "surviving"
        },
        if followed_the_killed {
            ", so the kill moved its feed to the survivor's copy"
        } else {
            ": the kill cost its feed nothing, no move needed"
        }
    );
    if let Some(role) = &report.rejoined_as {
        println!(
            "  the killed primary was restarted: it joined as {role} (no failback by default)"
        );
    }
    println!("\nTry it yourself: README.md, \"A two-minute tour\".");
    if report.both.lost + report.primary_only.lost > 0 {
        anyhow::bail!("requests were lost: this is a bug, please report it");
    }
    if active_source.is_none() {
        anyhow::bail!("the active bridge's status named no numbering source for the stream: this is a bug, please report it");
    }
    if stream.moves != expected_moves {
        anyhow::bail!(
            "the stream subscriber moved {} time(s), expected {expected_moves}: this is a bug, please report it",
            stream.moves
        );
    }
    if stream.counters.is_empty() || stream.unknown_gaps > 0 || missed != stream.gaps {
        anyhow::bail!("the stream subscriber lost messages it was not told of: this is a bug, please report it");
    }
    Ok(())
}

/// Answers in the 200 ms from 100 ms slice `row` on.
fn window(report: &RetryingReport, row: usize) -> u64 {
    report.timeline.iter().skip(row).take(2).sum()
}

/// One request of each kind, as an agent would send it.
fn show_requests(primary: &str) {
    println!("requests an agent can send (to the active bridge, {primary}):");
    let examples: [(&str, &[&[u8]]); 5] = [
        ("JSON request", &[br#"{"target":"pc2","text":"hello"}"#]),
        ("multipart request", &[b"main_pc", b"hello"]),
        ("unknown target", &[br#"{"target":"pc3"}"#]),
        ("not JSON", &[b"hello?"]),
        ("bridge ping", &[br#"{"action":"ping"}"#]),
    ];
    for (what, frames) in examples {
        let shown = |frames: &[Vec<u8>]| -> Vec<String> {
            frames
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        };
        let sent = shown(&frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>());
        let reply = ask(primary, frames, Duration::from_secs(5))
            .map(|r| shown(&r))
            .unwrap_or_else(|| vec!["(no answer)".into()]);
        println!("  {what:<18} {sent:?}\n  {:<18} -> {reply:?}", "");
    }
}
