//! `bench handover`: planned handovers (SIGTERM of whichever bridge holds
//! the primary port, the stopped one restarted at once) landing at random
//! phases of a plain lockstep REQ client's cycle, for several think times
//! and service times; what the client lost.
//!
//! The client is what most agents are: one libzmq REQ socket on the
//! primary port, no timeout of its own. A request with no reply within
//! [`SILENT`] counts as lost (the client would hang for ever); the bench
//! then opens a new socket and goes on, so one loss does not end the run.

use crate::{status, wait_until, BridgeProcess, LoopbackPair, Rng};
use anyhow::{bail, Context as _};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request with no reply after this long is lost.
pub const SILENT: Duration = Duration::from_secs(3);
/// The pair's heartbeat timings, as in issue reports: fast, so that a
/// handover's every phase is cheap to reach.
const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(400);

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub replies: u64,
    /// Requests with no reply within [`SILENT`].
    pub silent: u64,
    /// Replies that were not the request's own (error documents).
    pub errors: u64,
    /// The longest wait for a reply that came.
    pub longest: Duration,
}

/// One think time's figures.
pub struct Row {
    pub think: Duration,
    pub service: Duration,
    pub handovers: usize,
    pub seen: Seen,
}

/// Run `handovers` handovers under a lockstep client that thinks `think`
/// between a reply and its next request, against services that take
/// `service`; each SIGTERM lands a random time into the client's cycle.
pub fn run(
    exe: &Path,
    think: Duration,
    service: Duration,
    handovers: usize,
    seed: u64,
) -> anyhow::Result<Row> {
    let pair = LoopbackPair::serving(INTERVAL, TIMEOUT, service)?;
    let start = |mode: &str| BridgeProcess::spawn(exe, &pair.flags(mode));
    let mut active = start("active")?;
    let mut passive = start("passive")?;
    let mut active_mode = "active";
    let endpoint = pair.endpoints()[0].clone();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
        std::thread::spawn(move || lockstep(&endpoint, think, &seen, &done))
    };
    let mut rng = Rng::new(seed);
    let cycle = think + service + Duration::from_millis(1);
    let replies = || seen.lock().map(|s| s.replies).unwrap_or(0);
    for handover in 0..handovers {
        // A pair that hears each other, and a client that is being served.
        let formed = wait_until(Duration::from_secs(10), || {
            [&active, &passive]
                .iter()
                .all(|b| status(&b.frontend).is_some_and(|s| s["peer"]["alive"] == true))
        });
        if !formed {
            bail!("handover {handover}: the pair did not form again");
        }
        let before = replies();
        wait_until(SILENT + cycle, || replies() > before);
        // Not aligned with anything the client does.
        std::thread::sleep(rng.between(Duration::ZERO, cycle));
        active.signal("TERM")?;
        active
            .wait_exit(Duration::from_secs(15))
            .with_context(|| format!("handover {handover}: the stopped bridge did not exit"))?;
        let restarted = start(active_mode)?;
        let old = std::mem::replace(&mut active, std::mem::replace(&mut passive, restarted));
        drop(old);
        active_mode = if active_mode == "active" {
            "passive"
        } else {
            "active"
        };
    }
    // The last handover's next request too.
    let before = replies();
    wait_until(SILENT + cycle, || replies() > before);
    done.store(true, Ordering::Relaxed);
    client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(Row {
        think,
        service,
        handovers,
        seen,
    })
}

/// A plain REQ client in lockstep until `done`; a request unanswered for
/// [`SILENT`] is counted and the socket replaced.
fn lockstep(
    endpoint: &str,
    think: Duration,
    seen: &Mutex<Seen>,
    done: &AtomicBool,
) -> anyhow::Result<()> {
    let context = zmq::Context::new();
    let connect = || -> anyhow::Result<zmq::Socket> {
        let socket = context.socket(zmq::REQ)?;
        socket.set_linger(0)?;
        socket.connect(endpoint)?;
        Ok(socket)
    };
    let mut socket = connect()?;
    let mut n: u64 = 0;
    while !done.load(Ordering::Relaxed) {
        let own = n.to_string();
        socket.send_multipart([b"pc2".as_slice(), own.as_bytes()], 0)?;
        let sent = Instant::now();
        if socket.poll(zmq::POLLIN, SILENT.as_millis() as i64)? == 0 {
            if let Ok(mut s) = seen.lock() {
                s.silent += 1;
            }
            socket = connect()?;
            n += 1;
            continue;
        }
        let reply = socket.recv_multipart(0)?;
        let waited = sent.elapsed();
        if let Ok(mut s) = seen.lock() {
            s.replies += 1;
            s.longest = s.longest.max(waited);
            if reply != [own.as_bytes()] {
                s.errors += 1;
            }
        }
        n += 1;
        if !think.is_zero() {
            std::thread::sleep(think);
        }
    }
    Ok(())
}

/// `zbridge bench handover`: a table of rows, then one JSON line.
pub fn bench(handovers: usize, thinks: &[Duration], services: &[Duration]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    println!(
        "zbridge bench handover: {handovers} SIGTERM handovers per row at random phases of a plain \
         lockstep REQ client's cycle (no timeout; a request unanswered for {} s is lost), \
         heartbeat {} ms / {} ms\n",
        SILENT.as_secs(),
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    println!(
        "{:>9} {:>10} {:>10} {:>9} {:>6} {:>7} {:>11}",
        "think ms", "service ms", "handovers", "requests", "lost", "errors", "longest ms"
    );
    let mut rows = Vec::new();
    for (i, &service) in services.iter().enumerate() {
        for (j, &think) in thinks.iter().enumerate() {
            let seed = 1 + (i * thinks.len() + j) as u64;
            let row = run(&exe, think, service, handovers, seed)?;
            let s = &row.seen;
            println!(
                "{:>9} {:>10} {:>10} {:>9} {:>6} {:>7} {:>11.1}",
                ms(row.think),
                ms(row.service),
                row.handovers,
                s.replies + s.silent,
                s.silent,
                s.errors,
                s.longest.as_secs_f64() * 1e3
            );
            rows.push(json!({
                "think_ms": row.think.as_secs_f64() * 1e3,
                "service_ms": row.service.as_secs_f64() * 1e3,
                "handovers": row.handovers,
                "requests": s.replies + s.silent,
                "lost": s.silent,
                "errors": s.errors,
                "longest_ms": s.longest.as_secs_f64() * 1e3,
            }));
        }
    }
    println!("\nlost: requests that got no reply (a plain REQ agent would hang);");
    println!("errors: replies that were an error document, not the service's answer;");
    println!("longest: the longest a request waited for its reply.");
    println!("{}", json!({ "handover": rows }));
    Ok(())
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms.fract() == 0.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms}")
    }
}
