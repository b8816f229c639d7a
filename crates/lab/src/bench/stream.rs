//! `zbridge bench stream`: a stream through the bridge (without and with
//! last values) against libzmq's XSUB/XPUB proxy and a direct
//! subscription; a late joiner's time to its first message on a slow state
//! stream, the proxy's against the bridge's last value; then what a kill -9
//! of the active costs a subscriber on the primary pub port and one using
//! zbridge-client. Measurements, not tests; every load is bounded.

use super::{Kind, Proxy};
use crate::{
    follow_stream, free_port, lone_bridge_flags, loopback_endpoints, status, wait_until,
    BridgeProcess, LoopbackPair, Publisher, Seen, TempConfig, PAYLOAD,
};
use anyhow::{bail, Context as _};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A config file with one stream, `bench`, from `upstream`, with more
/// keys of its table (`extra`: TOML lines).
fn stream_config(upstream: &str, extra: &str) -> TempConfig {
    TempConfig::new(&format!(
        "[streams.bench]\nendpoint = \"{upstream}\"\n{extra}"
    ))
}

/// A lone bridge republishing `config`'s stream on `pub_port`, connected
/// to its upstream.
fn lone_stream_bridge(
    exe: &std::path::Path,
    config: &TempConfig,
    pub_port: u16,
) -> anyhow::Result<BridgeProcess> {
    let mut flags = lone_bridge_flags();
    flags.extend([
        "--main-pc-addr=".into(),
        "--pc2-addr=".into(),
        "--log-level=warn".into(),
        config.flag(),
        format!("--primary-pub-port={pub_port}"),
        format!("--secondary-pub-port={}", free_port()),
    ]);
    let bridge = BridgeProcess::spawn(exe, &flags)?;
    let up = wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend).is_some_and(|s| s["streams"]["bench"]["up"] == true)
    });
    if !up {
        bail!("the bridge did not connect to the publisher");
    }
    Ok(bridge)
}

/// How long a SUB connecting to `endpoint` waits for its first message.
fn first_message(endpoint: &str) -> anyhow::Result<Duration> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::SUB)?;
    socket.set_linger(0)?;
    socket.set_subscribe(b"a.")?;
    let start = Instant::now();
    socket.connect(endpoint)?;
    if socket.poll(zmq::POLLIN, 5000)? == 0 {
        bail!("nothing arrived from {endpoint} within 5 s");
    }
    Ok(start.elapsed())
}

/// Messages per second a SUB on `endpoint` receives while `publisher`
/// floods, over `duration` after the first one, and how many it received
/// in all (the first ones too).
fn received_rate(
    endpoint: &str,
    publisher: &Publisher,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::SUB)?;
    socket.set_linger(0)?;
    socket.set_rcvhwm(10_000)?;
    socket.set_subscribe(b"a.")?;
    socket.connect(endpoint)?;
    publisher.set(true);
    let result = (|| {
        if socket.poll(zmq::POLLIN, 5000)? == 0 {
            bail!("nothing arrived from {endpoint} within 5 s");
        }
        let mut early: u64 = 0;
        while socket.recv_multipart(zmq::DONTWAIT).is_ok() {
            early += 1;
        }
        let start = Instant::now();
        let mut count: u64 = 0;
        while start.elapsed() < duration {
            if socket.poll(zmq::POLLIN, 100)? == 0 {
                continue;
            }
            while socket.recv_multipart(zmq::DONTWAIT).is_ok() {
                count += 1;
            }
        }
        Ok((count as f64 / start.elapsed().as_secs_f64(), early + count))
    })();
    publisher.set(false);
    result
}

/// One contender of the throughput rounds.
struct Contender<'a> {
    name: &'static str,
    endpoint: String,
    /// A bridge stopped (SIGSTOP) outside its own turns.
    stopped: Option<&'a BridgeProcess>,
    /// CPU seconds so far of what forwards, from the kernel's accounting
    /// (none for a direct subscription).
    cpu: Option<&'a dyn Fn() -> Option<f64>>,
}

pub fn stream(seconds: f64, rounds: usize, rate: f64) -> anyhow::Result<()> {
    let duration = Duration::try_from_secs_f64(seconds).context("--seconds")?;
    let exe = std::env::current_exe()?;
    let publisher = Publisher::start(None)?;
    let proxy = Proxy::start(Kind::Xpub, Kind::Xsub, &publisher.endpoint)?;
    let config = stream_config(&publisher.endpoint, "");
    let pub_port = free_port();
    let bridge = lone_stream_bridge(&exe, &config, pub_port)?;
    // With last values the bridge takes every message from the start,
    // subscribed or not: it is stopped (SIGSTOP) outside its own turns so
    // that it takes no CPU from the others'.
    let kept_config = stream_config(&publisher.endpoint, "last_value = true\n");
    let kept_port = free_port();
    let kept = lone_stream_bridge(&exe, &kept_config, kept_port)?;
    kept.signal("STOP")?;
    let bridge_cpu = || bridge.process.cpu_seconds();
    let kept_cpu = || kept.process.cpu_seconds();
    let proxy_cpu = || Some(proxy.cpu_seconds());
    let contenders = [
        Contender {
            name: "direct",
            endpoint: publisher.endpoint.clone(),
            stopped: None,
            cpu: None,
        },
        Contender {
            name: "libzmq XSUB/XPUB proxy",
            endpoint: proxy.endpoint.clone(),
            stopped: None,
            cpu: Some(&proxy_cpu),
        },
        Contender {
            name: "zbridge",
            endpoint: format!("tcp://127.0.0.1:{pub_port}"),
            stopped: None,
            cpu: Some(&bridge_cpu),
        },
        Contender {
            name: "zbridge, last_value = true",
            endpoint: format!("tcp://127.0.0.1:{kept_port}"),
            stopped: Some(&kept),
            cpu: Some(&kept_cpu),
        },
    ];
    println!(
        "zbridge bench stream: {PAYLOAD} B messages, the publisher as fast as it can, {rounds} interleaved rounds of {seconds} s"
    );
    let mut rates = vec![Vec::new(); contenders.len()];
    let mut cpus = vec![Vec::new(); contenders.len()];
    for round in 1..=rounds {
        for (c, (samples, cpu_samples)) in contenders.iter().zip(rates.iter_mut().zip(&mut cpus)) {
            if let Some(bridge) = c.stopped {
                bridge.signal("CONT")?;
                settle(bridge);
            }
            let before = c.cpu.and_then(|cpu| cpu());
            let r = received_rate(&c.endpoint, &publisher, duration);
            let after = c.cpu.and_then(|cpu| cpu());
            if let Some(bridge) = c.stopped {
                bridge.signal("STOP")?;
            }
            let (r, count) = r?;
            let per_100k = match (before, after) {
                (Some(b), Some(a)) if count > 0 => {
                    let per_100k = (a - b) / count as f64 * 1e5;
                    cpu_samples.push(per_100k);
                    format!(", {per_100k:.3} CPU s per 100k")
                }
                _ => String::new(),
            };
            println!("round {round}: {}: {r:.0} messages/s{per_100k}", c.name);
            samples.push(r);
        }
    }
    kept.signal("CONT")?;
    let medians: Vec<f64> = rates.iter().map(|r| super::median(r)).collect();
    let (direct, proxied, bridged, with_kept) = (medians[0], medians[1], medians[2], medians[3]);
    let cpu: Vec<f64> = cpus.iter().map(|c| super::median(c)).collect();
    println!(
        "medians: direct {direct:.0}/s, libzmq proxy {proxied:.0}/s, zbridge {bridged:.0}/s, with last values {with_kept:.0}/s; zbridge / proxy = {:.2}x, with last values {:.2}x (goal >= 1.0x), zbridge / direct = {:.2}x",
        bridged / proxied,
        with_kept / proxied,
        bridged / direct
    );
    println!(
        "CPU s per 100k messages (user + system, the kernel's accounting: the bridge's whole process, the proxy's whole process): libzmq proxy {:.3}, zbridge {:.3} ({:.2}x), with last values {:.3} ({:.2}x)",
        cpu[1],
        cpu[2],
        cpu[2] / cpu[1],
        cpu[3],
        cpu[3] / cpu[1]
    );
    drop(kept);
    drop(bridge);
    drop(proxy);
    drop(publisher);
    let late = late_joiner(&exe, rounds)?;
    let repeated = repeats(&exe)?;
    let failover = kill_9(&exe, rate)?;
    let ratio = |r: f64| (r * 100.0).round() / 100.0;
    println!(
        "{}",
        json!({
            "messages_per_s": {"direct": direct.round(), "libzmq_proxy": proxied.round(), "zbridge": bridged.round(), "zbridge_last_value": with_kept.round()},
            "ratio_to_proxy": ratio(bridged / proxied),
            "ratio_to_proxy_last_value": ratio(with_kept / proxied),
            "ratio_to_direct": ratio(bridged / direct),
            "cpu_s_per_100k": {"libzmq_proxy": cpu[1], "zbridge": cpu[2], "zbridge_last_value": cpu[3]},
            "late_joiner": late,
            "repeats": repeated,
            "kill_9": failover,
        })
    );
    Ok(())
}

/// Wait until a bridge let run again has taken in what queued for it
/// while stopped (its count of received messages holds still).
fn settle(bridge: &BridgeProcess) {
    let received =
        || status(&bridge.frontend).map(|s| s["streams"]["bench"]["received_total"].clone());
    let mut last = received();
    wait_until(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(100));
        let now = received();
        std::mem::replace(&mut last, now.clone()) == now
    });
}

/// A state stream published twice a second: how long a SUB that joins
/// waits for its first message through the proxy (until the next
/// publish) and through a bridge with last values (at once).
fn late_joiner(exe: &std::path::Path, rounds: usize) -> anyhow::Result<serde_json::Value> {
    let publisher = Publisher::start(Some(2.0))?;
    publisher.set(true);
    let proxy = Proxy::start(Kind::Xpub, Kind::Xsub, &publisher.endpoint)?;
    let config = stream_config(&publisher.endpoint, "last_value = true\n");
    let pub_port = free_port();
    let bridge = lone_stream_bridge(exe, &config, pub_port)?;
    let kept = wait_until(Duration::from_secs(5), || {
        status(&bridge.frontend)
            .is_some_and(|s| s["streams"]["bench"]["last_values"]["topics"] == 1)
    });
    if !kept {
        bail!("the bridge kept no last value");
    }
    let endpoints = [
        proxy.endpoint.clone(),
        format!("tcp://127.0.0.1:{pub_port}"),
    ];
    let mut waits = [Vec::new(), Vec::new()];
    for round in 0..rounds.max(5) {
        // Joins spread over the publisher's period: a join right after a
        // publish would wait the whole period through the proxy.
        std::thread::sleep(Duration::from_millis((round as u64 * 130) % 500));
        for (endpoint, samples) in endpoints.iter().zip(&mut waits) {
            samples.push(first_message(endpoint)?.as_secs_f64() * 1000.0);
        }
    }
    let n = waits[0].len();
    let [proxied, bridged] = waits.map(|w| super::median(&w));
    println!(
        "a late joiner on a stream published twice a second, time to its first message (median of {n}): libzmq proxy {proxied:.1} ms (the next publish), zbridge with last values {bridged:.2} ms"
    );
    Ok(json!({"publish_rate": 2.0, "libzmq_proxy_ms": proxied, "zbridge_last_value_ms": bridged}))
}

/// A plain SUB on `endpoint` (reconnecting every `ivl` ms) that records
/// what it gets until `stop`.
fn raw_subscriber(
    endpoint: &str,
    ivl: i32,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<()>> {
    let endpoint = endpoint.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::SUB)?;
        socket.set_linger(0)?;
        socket.set_reconnect_ivl(ivl)?;
        socket.set_subscribe(b"a.")?;
        socket.connect(&endpoint)?;
        while !stop.load(Ordering::Relaxed) {
            if socket.poll(zmq::POLLIN, 50)? == 0 {
                continue;
            }
            while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
                if let Some(payload) = frames.get(1) {
                    seen.lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push(payload);
                }
            }
        }
        Ok(())
    })
}

/// Topics kept for [`repeats`].
const KEPT_TOPICS: usize = 10_000;

/// What a late joiner costs those already subscribed: a bridge keeping
/// the last value of 10,000 topics under `t.`, a subscriber to `t.` that
/// has them, then a second one joins: how long until it has them all, and
/// how many the first gets again (flagged), in how long.
fn repeats(exe: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let context = zmq::Context::new();
    let publisher = context.socket(zmq::PUB)?;
    publisher.set_linger(0)?;
    publisher.set_sndhwm(0)?;
    publisher.bind("tcp://127.0.0.1:*")?;
    let upstream = publisher
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("non-UTF-8 endpoint"))?;
    let config = stream_config(&upstream, "last_value = true\n");
    let pub_port = free_port();
    let bridge = lone_stream_bridge(exe, &config, pub_port)?;
    let kept = || {
        status(&bridge.frontend)
            .and_then(|s| s["streams"]["bench"]["last_values"]["topics"].as_u64())
    };
    // The bridge's subscription reaches the publisher a moment after the
    // connection: publish again until every topic is kept.
    let payload = [b'x'; PAYLOAD];
    for _ in 0..5 {
        for i in 0..KEPT_TOPICS {
            publisher.send(format!("t.{i:05}").as_bytes(), zmq::SNDMORE)?;
            publisher.send(&payload[..], 0)?;
        }
        if wait_until(Duration::from_secs(2), || {
            kept() == Some(KEPT_TOPICS as u64)
        }) {
            break;
        }
    }
    if kept() != Some(KEPT_TOPICS as u64) {
        bail!("the bridge kept {:?} topics, not {KEPT_TOPICS}", kept());
    }
    let endpoint = format!("tcp://127.0.0.1:{pub_port}");
    let join = || -> anyhow::Result<zmq::Socket> {
        let socket = context.socket(zmq::SUB)?;
        socket.set_linger(0)?;
        socket.set_rcvhwm(0)?;
        socket.set_subscribe(b"t.")?;
        socket.connect(&endpoint)?;
        Ok(socket)
    };
    // Messages until `n` last values have come: the time it took.
    let take = |socket: &zmq::Socket, start: Instant| -> anyhow::Result<Duration> {
        let mut flagged = 0;
        while flagged < KEPT_TOPICS {
            if socket.poll(zmq::POLLIN, 5000)? == 0 {
                bail!("{flagged} of {KEPT_TOPICS} last values within 5 s");
            }
            while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
                let last = frames.last().map(Vec::as_slice).unwrap_or_default();
                if zbridge_protocol::stream::parse_stamp(last).is_some_and(|s| s.last_value) {
                    flagged += 1;
                }
            }
        }
        Ok(start.elapsed())
    };
    let first = join()?;
    take(&first, Instant::now())?;
    // The first join spent the pub port's replay budget (one full cache,
    // refilled in a second: docs/PROTOCOL.md#streams); a second join
    // before the refill would measure the budget, not what a join costs.
    std::thread::sleep(Duration::from_millis(1100));
    let start = Instant::now();
    let second = join()?;
    let joined = take(&second, start)?;
    let repeated = take(&first, start)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "a late joiner to a prefix with {KEPT_TOPICS} kept topics ({PAYLOAD} B): it has them all {:.1} ms after its connect; the subscriber already there gets all {KEPT_TOPICS} again (flagged), the last {:.1} ms after the join",
        ms(joined),
        ms(repeated)
    );
    Ok(
        json!({"topics": KEPT_TOPICS, "joiner_all_ms": ms(joined), "repeats_to_existing": KEPT_TOPICS, "repeats_done_ms": ms(repeated)}),
    )
}

/// A pair on loopback relaying a stream published at `rate`; plain SUBs on
/// the primary pub port and a zbridge-client Subscriber; kill -9 of the
/// active two seconds in, three seconds more.
fn kill_9(exe: &std::path::Path, rate: f64) -> anyhow::Result<serde_json::Value> {
    let timings = (Duration::from_millis(100), Duration::from_millis(300));
    let publisher = Publisher::start(Some(rate))?;
    publisher.set(true);
    let config = stream_config(&publisher.endpoint, "");
    let pair = LoopbackPair::new(timings.0, timings.1)?;
    let pub_ports = [free_port(), free_port()];
    let flags = |mode: &str| {
        let mut f = pair.flags(mode);
        f.extend([
            config.flag(),
            format!("--primary-pub-port={}", pub_ports[0]),
            format!("--secondary-pub-port={}", pub_ports[1]),
            "--log-level=warn".into(),
        ]);
        f
    };
    let primary = BridgeProcess::spawn(exe, &flags("active"))?;
    let secondary = BridgeProcess::spawn(exe, &flags("passive"))?;
    for b in [&primary, &secondary] {
        let up = wait_until(Duration::from_secs(5), || {
            status(&b.frontend).is_some_and(|s| s["streams"]["bench"]["up"] == true)
        });
        if !up {
            bail!("a bridge did not connect to the publisher");
        }
    }
    let endpoints = loopback_endpoints(&pub_ports);
    let stop = Arc::new(AtomicBool::new(false));
    let library = Arc::new(Mutex::new(Seen::default()));
    // Plain SUBs on the primary pub port: one with libzmq's default
    // reconnect interval (100 ms), one that retries every 10 ms.
    type Plain = (i32, Arc<Mutex<Seen>>, JoinHandle<anyhow::Result<()>>);
    let raws: Vec<Plain> = [100, 10]
        .into_iter()
        .map(|ivl| {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let thread = raw_subscriber(&endpoints[0], ivl, Arc::clone(&seen), Arc::clone(&stop));
            (ivl, seen, thread)
        })
        .collect();
    let library_thread = follow_stream(
        endpoints.clone(),
        timings.1,
        "bench",
        Arc::clone(&library),
        Arc::clone(&stop),
    );
    // Two seconds of publishing, the kill, three seconds more.
    std::thread::sleep(Duration::from_secs(2));
    primary.signal("KILL")?;
    let killed = Instant::now();
    let takeover = secondary
        .wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "bound" && e["port"] == "primary"
        })
        .map(|(at, _)| at.saturating_duration_since(killed));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    library_thread
        .join()
        .map_err(|_| anyhow::anyhow!("a subscriber panicked"))??;
    let library = library.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let worth = |missed: u64| missed as f64 / rate * 1000.0;
    println!(
        "kill -9 of the active at {rate:.0} messages/s (heartbeat 100/300 ms): takeover after {takeover:?}"
    );
    let mut plain = Vec::new();
    for (ivl, seen, thread) in raws {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a subscriber panicked"))??;
        let raw = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        println!(
            "  plain SUB on the primary pub port, reconnect_ivl {ivl} ms: {} received, {} missed ({:.0} ms' worth; goal <= heartbeat_timeout, 300 ms), longest silence {:.0} ms",
            raw.counters.len(),
            raw.missed(),
            worth(raw.missed()),
            raw.longest_silence().as_secs_f64() * 1000.0
        );
        plain.push(json!({"reconnect_ivl_ms": ivl, "received": raw.counters.len(), "missed": raw.missed(), "missed_ms": worth(raw.missed())}));
    }
    println!(
        "  zbridge-client Subscriber: {} received, {} missed ({:.0} ms' worth; goal <= 50 ms), gaps reported {} (+{} of unknown size), longest silence {:.0} ms",
        library.counters.len(),
        library.missed(),
        worth(library.missed()),
        library.gaps,
        library.unknown_gaps,
        library.longest_silence().as_secs_f64() * 1000.0
    );
    Ok(json!({
        "rate": rate,
        "takeover_ms": takeover.map(|t| t.as_secs_f64() * 1000.0),
        "primary_port_subscribers": plain,
        "library_subscriber": {"received": library.counters.len(), "missed": library.missed(), "missed_ms": worth(library.missed()), "gaps_reported": library.gaps, "unknown_gaps": library.unknown_gaps},
    }))
}
