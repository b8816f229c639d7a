//! Streams: pyzmq PUB services republished through real bridges.

use crate::support::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use zbridge_client::{ClientConfig, Delivery, Subscriber};

/// The pyzmq publisher of tests/peers on `port` (0: any), with its flags.
pub(crate) fn publisher(port: u16, flags: &[&str]) -> (Process, u16) {
    let mut command = Command::new("python3");
    command
        .arg(root().join("tests/peers/publisher.py"))
        .arg(format!("--port={port}"))
        .args(flags);
    let (process, line) =
        Process::spawn(command, |l| l.starts_with("ready ")).expect("publisher starts");
    let port = line["ready ".len()..].trim().parse().expect("port");
    (process, port)
}

/// A config with one stream, `dream`, from `port`.
pub(crate) fn stream_config(port: u16) -> TempConfig {
    stream_config_with(port, "")
}

/// A config with one stream, `dream`, from `port`, with more keys of its
/// table (`extra`: TOML lines).
pub(crate) fn stream_config_with(port: u16, extra: &str) -> TempConfig {
    TempConfig::new(&format!(
        "[streams.dream]\nendpoint = \"tcp://127.0.0.1:{port}\"\n{extra}"
    ))
}

/// A lone active bridge with the stream of `config`, its pub port on
/// `pub_port`.
pub(crate) fn stream_bridge(config: &TempConfig, pub_port: u16, extra: &[String]) -> BridgeProcess {
    let mut flags = vec![
        config.flag(),
        format!("--primary-pub-port={pub_port}"),
        format!("--secondary-pub-port={}", free_port()),
    ];
    flags.extend_from_slice(extra);
    bridge(&flags)
}

/// A publisher (tests/peers/publisher.py with `publisher_flags`) and a lone
/// bridge republishing it as `dream` on `pub_port`, connected to it.
struct LoneStream {
    publisher: Process,
    bridge: BridgeProcess,
    pub_port: u16,
    _config: TempConfig,
}

impl LoneStream {
    fn start(publisher_flags: &[&str], bridge_flags: &[String]) -> LoneStream {
        let (publisher, port) = publisher(0, publisher_flags);
        let config = stream_config(port);
        let pub_port = free_port();
        let bridge = stream_bridge(&config, pub_port, bridge_flags);
        assert!(stream_up(&bridge), "the bridge connects to the upstream");
        LoneStream {
            publisher,
            bridge,
            pub_port,
            _config: config,
        }
    }
}

/// The `dream` stream's part of the status document.
pub(crate) fn dream(bridge: &BridgeProcess) -> Value {
    status(&bridge.frontend)["streams"]["dream"].clone()
}

/// Whether the `dream` stream comes up within 5 s.
pub(crate) fn stream_up(bridge: &BridgeProcess) -> bool {
    wait_until(Duration::from_secs(5), || dream(bridge)["up"] == true)
}

/// The library's settings for pub endpoints on this host.
pub(crate) fn subscriber_settings(pub_ports: &[u16]) -> ClientConfig {
    let mut settings = ClientConfig::local();
    settings.pub_endpoints = pub_ports
        .iter()
        .map(|p| format!("tcp://127.0.0.1:{p}"))
        .collect();
    settings.heartbeat_timeout = TIMEOUT;
    settings
}

/// The publisher's counter in a message (its second frame).
pub(crate) fn counter(frames: &[Vec<u8>]) -> u64 {
    std::str::from_utf8(&frames[1]).unwrap().parse().unwrap()
}

/// What a library subscriber delivered, in order.
#[derive(Default, Debug)]
struct Feed {
    counters: Vec<u64>,
    sources: Vec<u64>,
    gaps: u64,
    unknown_gaps: u64,
    moves: u64,
    last_values: u64,
}

impl Feed {
    fn take(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Message(m) => {
                self.counters.push(counter(&m.frames));
                self.sources.push(m.source);
                self.last_values += u64::from(m.last_value);
            }
            Delivery::Gap {
                missed: Some(n), ..
            } => self.gaps += n,
            Delivery::Gap { missed: None, .. } => self.unknown_gaps += 1,
            Delivery::Moved { .. } => self.moves += 1,
        }
    }

    /// Receive until `done` says so or `timeout` passes.
    fn run(
        &mut self,
        subscriber: &mut Subscriber,
        timeout: Duration,
        done: impl Fn(&Feed) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the feed stalled: {self:?}");
            if let Some(d) = subscriber
                .recv(left.min(Duration::from_millis(100)))
                .unwrap()
            {
                self.take(d);
            }
        }
    }

    /// Receive `n` messages and check that all are of the publisher's
    /// topic number `topic` (of three, taken in turn).
    fn only_topic(&mut self, subscriber: &mut Subscriber, n: usize, topic: u64) {
        self.run(subscriber, Duration::from_secs(10), |f| {
            f.counters.len() >= n
        });
        assert!(
            self.counters.iter().all(|c| c % 3 == topic),
            "only topic {topic}: {self:?}"
        );
    }

    /// Counters between the first and last delivered, `step` apart, that
    /// never came.
    fn missed(&self, step: u64) -> u64 {
        let (Some(first), Some(last)) = (self.counters.first(), self.counters.last()) else {
            return 0;
        };
        (last - first) / step + 1 - self.counters.len() as u64
    }

    fn assert_in_order_once(&self) {
        assert!(
            self.counters.windows(2).all(|w| w[0] < w[1]),
            "each message once, in order"
        );
    }
}

#[test]
fn a_pyzmq_subscriber_gets_exactly_its_topic_in_order_with_consecutive_numbers() {
    let lone = LoneStream::start(&["--rate=1000", "--count=60000"], &[]);
    let (bridge, pub_port) = (&lone.bridge, lone.pub_port);
    let out = Command::new("python3")
        .arg(root().join("tests/peers/subscriber.py"))
        .arg(format!("tcp://127.0.0.1:{pub_port}"))
        .arg("b.")
        .arg("300")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("output");
    let messages = doc["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 300, "{stdout}");
    let mut counters = Vec::new();
    let mut seqs = Vec::new();
    for m in messages {
        assert_eq!(m["frames"][0], "b.", "only the topic asked for: {m}");
        assert_eq!(m["stamp"]["stream"], "dream");
        assert_eq!(m["stamp"]["source"], messages[0]["stamp"]["source"]);
        counters.push(m["frames"][1].as_str().unwrap().parse::<u64>().unwrap());
        seqs.push(m["stamp"]["seqs"]["b."].as_u64().unwrap());
    }
    // The publisher cycles a., b., c.: every third message is b.'s.
    assert!(
        counters.windows(2).all(|w| w[1] == w[0] + 3),
        "in order, none missing: {counters:?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive numbers: {seqs:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || dream(bridge)["published_total"]
            .as_u64()
            .is_some_and(|n| n >= 300)),
        "the status counts what was republished"
    );
    assert_eq!(dream(bridge)["subscriber_stalls_total"], 0);
}

#[test]
fn the_upstream_is_asked_for_a_prefix_only_once_someone_subscribes_to_it() {
    let lone = LoneStream::start(&["--xpub", "--rate=100", "--count=6000"], &[]);
    let (publisher, bridge, pub_port) = (&lone.publisher, &lone.bridge, lone.pub_port);
    assert_eq!(dream(bridge)["subscriptions"], 0);
    let mut subscriber = Subscriber::connect(
        &subscriber_settings(&[pub_port]),
        Some("dream"),
        &[b"a.".to_vec()],
    )
    .unwrap();
    // "a." is 612e in hex.
    assert!(
        publisher.wait_for_output("sub 612e", Duration::from_secs(5)),
        "the subscription reaches the upstream: {:?}",
        publisher.output()
    );
    Feed::default().only_topic(&mut subscriber, 3, 0);
    drop(subscriber);
    assert!(
        publisher.wait_for_output("unsub 612e", Duration::from_secs(5)),
        "the last subscriber's leaving reaches the upstream"
    );
    let asked: Vec<String> = publisher
        .output()
        .into_iter()
        .filter(|l| l.starts_with("sub ") || l.starts_with("unsub "))
        .collect();
    assert_eq!(
        asked,
        ["sub 612e", "unsub 612e"],
        "the upstream saw no subscription before the subscriber and nothing more"
    );
}

/// A pair relaying a stream published at 1,000 msg/s, a library
/// subscriber, then `signal` to the active: the subscriber must move to
/// the passive's copies, in order, and report exactly what it missed.
/// `stream_keys`: more keys of the stream's table.
fn fault_of_the_active_with_a_subscriber(signal: &str, stream_keys: &str) -> Feed {
    let (_publisher, port) = publisher(0, &["--topics=a.", "--rate=1000", "--count=60000"]);
    let config = stream_config_with(port, stream_keys);
    let pub_ports = [free_port(), free_port()];
    let pair = Pair::new(&[
        &config.flag(),
        &format!("--primary-pub-port={}", pub_ports[0]),
        &format!("--secondary-pub-port={}", pub_ports[1]),
    ]);
    // The subscriber first follows the active (the only bridge), so that
    // the fault must move it.
    let primary = pair.start("active");
    let mut subscriber = Subscriber::connect(
        &subscriber_settings(&pub_ports),
        Some("dream"),
        &[b"a.".to_vec()],
    )
    .unwrap();
    let mut feed = Feed::default();
    feed.run(&mut subscriber, Duration::from_secs(10), |f| {
        !f.counters.is_empty()
    });
    let secondary = pair.start("passive");
    assert!(
        wait_until(Duration::from_secs(5), || dream(&secondary)
            ["subscriptions"]
            == 1),
        "the passive carries the subscriber's prefix too"
    );
    let survivor = dream(&secondary)["source"].as_str().unwrap().to_string();
    let then = feed.counters.len();
    feed.run(&mut subscriber, Duration::from_secs(10), |f| {
        f.counters.len() >= then + 500
    });
    primary.signal(signal).unwrap();
    let fault_at = *feed.counters.last().unwrap();
    // Two seconds of publishing after the fault.
    feed.run(&mut subscriber, Duration::from_secs(10), |f| {
        f.counters.last().is_some_and(|c| *c >= fault_at + 2000)
    });
    feed.assert_in_order_once();
    let after: Vec<String> = feed.sources[feed.sources.len() - 100..]
        .iter()
        .map(|s| format!("{s:016x}"))
        .collect();
    assert!(
        after.iter().all(|s| *s == survivor),
        "it resumed on the surviving bridge ({survivor}): {after:?}"
    );
    assert_eq!(feed.moves, 1, "{feed:?}");
    eprintln!(
        "{signal}: {} delivered, {} missed, gaps reported {}",
        feed.counters.len(),
        feed.missed(1),
        feed.gaps,
    );
    assert_eq!(feed.unknown_gaps, 0, "{feed:?}");
    assert_eq!(
        feed.missed(1),
        feed.gaps,
        "what it missed is what it reported"
    );
    feed
}

#[test]
fn kill_9_of_the_active_at_1000_messages_per_second_the_subscriber_moves_and_counts_what_it_missed()
{
    fault_of_the_active_with_a_subscriber("KILL", "");
}

#[test]
fn a_hung_active_is_left_by_the_subscriber_when_its_connection_falls_silent() {
    fault_of_the_active_with_a_subscriber("STOP", "");
}

#[test]
fn with_last_values_kill_9_of_the_active_costs_the_library_subscriber_no_gap_and_no_duplicate() {
    let feed = fault_of_the_active_with_a_subscriber("KILL", "last_value = true\n");
    // In order once (checked above); nothing missed, no gap: the new
    // active's last values to the reconnected link are all dropped as had.
    assert_eq!((feed.missed(1), feed.gaps), (0, 0), "{feed:?}");
    assert!(feed.last_values <= 1, "at most the first: {feed:?}");
}

#[test]
fn a_stream_whose_upstream_is_down_at_start_is_reported_down_and_delivers_once_it_appears() {
    let port = free_port();
    let config = stream_config(port);
    let pub_port = free_port();
    let bridge = stream_bridge(&config, pub_port, &[]);
    let stream = dream(&bridge);
    assert_eq!(stream["up"], false, "{stream}");
    let mut subscriber = Subscriber::connect(
        &subscriber_settings(&[pub_port]),
        Some("dream"),
        &[b"c.".to_vec()],
    )
    .unwrap();
    let (_publisher, _) = publisher(port, &["--rate=1000", "--count=60000"]);
    assert!(stream_up(&bridge), "the stream is up once the upstream is");
    let mut feed = Feed::default();
    feed.only_topic(&mut subscriber, 50, 2);
    feed.assert_in_order_once();
    assert_eq!((feed.missed(3), feed.gaps), (0, 0), "{feed:?}");
}

#[test]
fn a_subscriber_that_stops_reading_is_counted_as_stalled_and_sees_its_losses_in_the_numbers() {
    let lone = LoneStream::start(
        &[
            "--topics=a.",
            "--wait-subscriber",
            "--burst=5000",
            "--pad=4000",
            "--rate=200",
            "--count=60000",
        ],
        &["--stream-hwm=100".into()],
    );
    let (publisher, bridge, pub_port) = (&lone.publisher, &lone.bridge, lone.pub_port);
    // A raw SUB with a small queue of its own, that reads nothing until
    // the burst is over: most of the burst cannot reach it.
    let context = zmq::Context::new();
    let socket = context.socket(zmq::SUB).unwrap();
    socket.set_rcvhwm(100).unwrap();
    socket.set_subscribe(b"a.").unwrap();
    socket
        .connect(&format!("tcp://127.0.0.1:{pub_port}"))
        .unwrap();
    assert!(
        publisher.wait_for_output("burst", Duration::from_secs(20)),
        "the publisher sent its burst"
    );
    let (mut counters, mut seqs) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    // Past the burst: the slow messages after it arrive.
    while counters.last().is_none_or(|c| *c < 5_050) {
        assert!(
            Instant::now() < deadline,
            "the feed stalled at {:?}",
            counters.last()
        );
        if socket.poll(zmq::POLLIN, 100).unwrap() == 0 {
            continue;
        }
        let frames = socket.recv_multipart(0).unwrap();
        let stamp = zbridge_protocol::stream::parse_stamp(frames.last().unwrap()).unwrap();
        counters.push(counter(&frames));
        seqs.push(stamp.seq(b"a.").unwrap());
    }
    let stalls = dream(bridge)["subscriber_stalls_total"].as_u64().unwrap();
    let missed = counters.last().unwrap() - counters[0] + 1 - counters.len() as u64;
    let jumps: u64 = seqs.windows(2).map(|w| w[1] - w[0] - 1).sum();
    eprintln!(
        "slow subscriber: {stalls} stalls at the bridge, {missed} missed, number jumps {jumps}"
    );
    assert!(stalls > 0, "the bridge counted the stalls");
    assert!(missed > 0, "the subscriber missed messages");
    assert_eq!(jumps, missed, "the numbers show exactly what it missed");
}

#[test]
fn zbridge_subscribe_prints_what_arrives_and_refuses_a_stream_the_config_lacks() {
    let (_publisher, port) = publisher(0, &["--rate=1000", "--count=60000"]);
    let pub_port = free_port();
    let config = TempConfig::new(&format!(
        "primary_pub_port = {pub_port}\nsecondary_pub_port = {}\n\
         [streams.dream]\nendpoint = \"tcp://127.0.0.1:{port}\"\n",
        free_port()
    ));
    let _bridge = stream_bridge(&config, pub_port, &[]);
    let out = Command::new(exe())
        .args([
            "subscribe",
            &config.flag(),
            "--stream=dream",
            "--topic=a.",
            "--json",
        ])
        .args(["--count=5", "--seconds=20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines {
        assert_eq!(line["stream"], "dream");
        assert_eq!(line["frames"][0], "a.");
    }
    let out = Command::new(exe())
        .args([
            "subscribe",
            &config.flag(),
            "--stream=nightmare",
            "--count=1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no stream `nightmare`") && stderr.contains("dream"),
        "{stderr}"
    );
}

#[test]
fn a_subscriber_asking_for_too_many_prefixes_is_refused_beyond_the_cap() {
    let lone = LoneStream::start(&["--rate=100", "--count=60000"], &[]);
    let (bridge, pub_port) = (&lone.bridge, lone.pub_port);
    let context = zmq::Context::new();
    let socket = context.socket(zmq::SUB).unwrap();
    socket.set_linger(0).unwrap();
    // libzmq's SUB drops its own subscriptions beyond its send HWM.
    socket.set_sndhwm(10_000).unwrap();
    for i in 0..1100 {
        socket.set_subscribe(format!("p{i}.").as_bytes()).unwrap();
    }
    socket
        .connect(&format!("tcp://127.0.0.1:{pub_port}"))
        .unwrap();
    assert!(
        bridge.wait_for_log("subscription refused", Duration::from_secs(10)),
        "the bridge says it refused: {}\n{}",
        dream(bridge),
        bridge.log().join("\n")
    );
    assert!(
        wait_until(Duration::from_secs(5), || dream(bridge)["subscriptions"]
            == 1024),
        "{}",
        dream(bridge)
    );
}

/// Plain TCP connections to the pub port that never say a word, more than
/// the bridge has descriptors for (`ulimit -n 200`): the oldest are shut
/// down, as on a frontend, so a subscriber connecting afresh gets the
/// stream at once (it waited for the handshake timeout, 5 s, before).
#[test]
fn idle_connections_to_the_pub_port_under_a_low_descriptor_limit_do_not_starve_subscribers() {
    let (_publisher, upstream) = publisher(0, &["--rate=100", "--topics=dream."]);
    let config = stream_config(upstream);
    let pub_port = free_port();
    let mut args = lone_bridge_flags();
    args.extend([
        "--main-pc-addr=".into(),
        "--pc2-addr=".into(),
        config.flag(),
        format!("--primary-pub-port={pub_port}"),
        format!("--secondary-pub-port={}", free_port()),
    ]);
    let bridge = bridge_with_descriptors(200, &args);
    assert!(stream_up(&bridge), "the bridge connects to the upstream");
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", pub_port)).is_ok()
        }),
        "the pub port is bound"
    );
    // Bounded in count and time: a connect the kernel's backlog does not
    // take waits for its SYN to be sent again.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], pub_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut idle = Vec::new();
    while idle.len() < 1000 && Instant::now() < deadline {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
            idle.push(c);
        }
    }
    assert!(idle.len() >= 500, "{} idle connections opened", idle.len());
    let shed = || {
        monitor_status(&bridge)["connections_shed_total"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || shed() > 0),
        "the bridge sheds idle connections: {}",
        bridge.log().join("\n")
    );
    // While they are held: ten subscribers connecting afresh, one at a time.
    let context = zmq::Context::new();
    for i in 0..10 {
        let sub = context.socket(zmq::SUB).unwrap();
        sub.set_linger(0).unwrap();
        sub.set_subscribe(b"dream.").unwrap();
        let started = Instant::now();
        sub.connect(&format!("tcp://127.0.0.1:{pub_port}")).unwrap();
        assert_eq!(
            sub.poll(zmq::POLLIN, 2000).unwrap(),
            1,
            "subscriber {i} got nothing within 2 s with {} idle connections open",
            idle.len()
        );
        eprintln!(
            "subscriber {i}: first message after {:?}",
            started.elapsed()
        );
    }
    assert!(metric(&bridge, "zbridge_connections_shed_total") >= 1.0);
    assert!(bridge.wait_for_log(
        "closed subscriber connections on a pub port that had not finished their handshake",
        Duration::from_secs(1)
    ));
    eprintln!(
        "{} idle connections to the pub port under ulimit -n 200: {} shed, 10 of 10 fresh subscribers served",
        idle.len(),
        shed()
    );
    drop(idle);
}
