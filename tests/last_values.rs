//! Last values (`last_value` on a stream): a late or reconnecting pyzmq
//! SUB gets the last message of each topic it asks for at once, from
//! whichever bridge holds the pub port; the cache stays within its bounds.

use crate::streams::{dream, publisher, stream_bridge, stream_config_with, stream_up};
use crate::support::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// tests/peers/subscriber.py on `pub_port`, printing each message as it
/// comes.
fn pyzmq_subscriber(pub_port: u16, topic: &str, count: usize) -> Process {
    let mut command = Command::new("python3");
    command
        .arg(root().join("tests/peers/subscriber.py"))
        .arg(format!("tcp://127.0.0.1:{pub_port}"))
        .arg(topic)
        .arg(count.to_string())
        .arg("--each")
        .arg("--seconds=60");
    Process::spawn(command, |l| l.contains("subscribed"))
        .expect("subscriber starts")
        .0
}

/// The messages `subscriber` printed so far.
fn messages(subscriber: &Process) -> Vec<Value> {
    subscriber
        .output()
        .iter()
        .filter_map(|l| l.strip_prefix("message "))
        .map(|m| serde_json::from_str(m).expect("a message"))
        .collect()
}

/// Wait until `subscriber` has printed `n` messages; they come back.
fn wait_messages(subscriber: &Process, n: usize) -> Vec<Value> {
    assert!(
        wait_until(Duration::from_secs(10), || messages(subscriber).len() >= n),
        "{n} messages: {:?}",
        subscriber.output()
    );
    messages(subscriber)
}

/// (topic, publisher's counter, last value?) of each message.
fn summary(messages: &[Value]) -> Vec<(String, u64, bool)> {
    messages
        .iter()
        .map(|m| {
            (
                m["frames"][0].as_str().unwrap().to_string(),
                m["frames"][1].as_str().unwrap().parse().unwrap(),
                m["stamp"]["last_value"] == true,
            )
        })
        .collect()
}

fn kept(bridge: &BridgeProcess) -> Value {
    dream(bridge)["last_values"].clone()
}

#[test]
fn a_late_sub_gets_the_last_value_of_each_topic_it_asks_for_at_once_and_the_others_see_them_flagged(
) {
    // The publisher starts once the bridge ("state.", for its cache) and
    // the early subscriber ("", everything) have subscribed.
    let (publisher, port) = publisher(
        0,
        &[
            "--topics=state.a,state.b,event.",
            "--rate=1000",
            "--count=30",
            "--wait-subscribers=2",
        ],
    );
    let config = stream_config_with(port, "last_value = [\"state.\"]\n");
    let pub_port = free_port();
    let bridge = stream_bridge(&config, pub_port, &[]);
    assert!(stream_up(&bridge));
    let early = pyzmq_subscriber(pub_port, "", 1000);
    assert!(publisher.wait_for_output("done", Duration::from_secs(10)));
    let live = wait_messages(&early, 30);
    assert!(wait_until(Duration::from_secs(5), || kept(&bridge)
        ["topics"]
        == 2));

    let late = pyzmq_subscriber(pub_port, "state.", 1000);
    let got = wait_messages(&late, 2);
    // Message i has topic i % 3: the last state.a is 27, state.b 28.
    assert_eq!(
        summary(&got),
        [("state.a".into(), 27, true), ("state.b".into(), 28, true)]
    );
    let first_ms = got[0]["at_ms"].as_f64().unwrap();
    eprintln!("late joiner: first last value {first_ms:.1} ms after its connect");
    assert!(first_ms < 50.0, "at once: {first_ms} ms");
    for m in &got {
        // Numbered as the last message published under each prefix; the
        // late subscriber's own prefix had none live.
        assert_eq!(m["stamp"]["seqs"], serde_json::json!({"": 30, "state.": 0}));
    }

    // The early subscriber (to everything) had the 30 live messages,
    // numbered 1 to 30, and gets the late one's last values again,
    // flagged, numbered as what it already had.
    let seen = wait_messages(&early, 32);
    assert_eq!(&seen[..30], &live[..30]);
    let numbers: Vec<u64> = live
        .iter()
        .map(|m| m["stamp"]["seqs"][""].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=30).collect::<Vec<u64>>());
    assert!(live.iter().all(|m| m["stamp"]["last_value"] == false));
    assert_eq!(summary(&seen[30..]), summary(&got));
    assert_eq!(seen[30]["stamp"]["seqs"], got[0]["stamp"]["seqs"]);

    // Nothing else arrives for either: a subscription to what is not kept
    // (event.) gets nothing at once, and a message published now is the
    // next thing both see.
    let events = pyzmq_subscriber(pub_port, "event.", 1000);
    assert!(wait_until(Duration::from_secs(5), || {
        dream(&bridge)["subscriptions"] == 3
    }));
    assert_eq!(kept(&bridge)["replayed_total"], 2);
    assert!(messages(&events).is_empty());
    assert_eq!(messages(&late).len(), 2);
    assert_eq!(messages(&early).len(), 32);
}

#[test]
fn the_cache_stays_within_its_bounds_under_100000_distinct_topics() {
    let (publisher, port) = publisher(
        0,
        &[
            "--topics=t.",
            "--distinct",
            "--pad=1000",
            "--rate=20000",
            "--count=100000",
            "--wait-subscriber",
        ],
    );
    let config = stream_config_with(
        port,
        "last_value = true\nlast_value_max_topics = 1000\nlast_value_max_bytes = 1048576\n",
    );
    let pub_port = free_port();
    let bridge = stream_bridge(&config, pub_port, &[]);
    assert!(stream_up(&bridge));
    let before = bridge.rss_kb().unwrap();
    assert!(publisher.wait_for_output("done", Duration::from_secs(60)));
    assert!(
        wait_until(Duration::from_secs(30), || dream(&bridge)["received_total"]
            == 100_000),
        "{}",
        dream(&bridge)
    );
    let after = bridge.rss_kb().unwrap();
    let kept = kept(&bridge);
    eprintln!(
        "100,000 topics of ~1 KB through a 1,000-topic, 1 MiB cache: RSS {before} -> {after} KiB; {kept}"
    );
    assert!(kept["topics"].as_u64().unwrap() <= 1000, "{kept}");
    assert!(kept["bytes"].as_u64().unwrap() <= 1 << 20, "{kept}");
    assert_eq!(
        kept["evicted_total"].as_u64().unwrap() + kept["topics"].as_u64().unwrap(),
        100_000,
        "{kept}"
    );
    // The cache alone would be 100 MB unbounded.
    assert!(after < before + 32 * 1024, "RSS {before} -> {after} KiB");
    // What is kept is the newest: t.99990 to t.99999 under "t.9999".
    let late = pyzmq_subscriber(pub_port, "t.9999", 1000);
    let got = wait_messages(&late, 10);
    let topics: Vec<String> = summary(&got).into_iter().map(|(t, _, _)| t).collect();
    let want: Vec<String> = (99_990..100_000).map(|i| format!("t.{i}")).collect();
    assert_eq!(topics, want);
}

#[test]
fn after_kill_9_of_the_active_a_plain_sub_on_the_primary_pub_port_gets_the_last_state_from_the_new_active(
) {
    // Both bridges ask for everything ("") for their caches: the
    // publisher starts once both have.
    let (publisher, port) = publisher(
        0,
        &[
            "--topics=state.a,state.b",
            "--rate=1000",
            "--count=20",
            "--wait-subscribers=2",
        ],
    );
    let config = stream_config_with(port, "last_value = true\n");
    let pub_ports = [free_port(), free_port()];
    let pair = Pair::new(&[
        &config.flag(),
        &format!("--primary-pub-port={}", pub_ports[0]),
        &format!("--secondary-pub-port={}", pub_ports[1]),
    ]);
    let (primary, secondary) = pair.start_both();
    assert!(publisher.wait_for_output("done", Duration::from_secs(10)));
    for bridge in [&primary, &secondary] {
        assert!(wait_until(Duration::from_secs(5), || kept(bridge)
            ["topics"]
            == 2));
    }
    let sources = [&primary, &secondary].map(|b| dream(b)["source"].as_str().unwrap().to_string());

    let subscriber = pyzmq_subscriber(pub_ports[0], "state.", 1000);
    let got = wait_messages(&subscriber, 2);
    let want = [("state.a".into(), 18, true), ("state.b".into(), 19, true)];
    assert_eq!(summary(&got), want);
    let source = |m: &Value| format!("{:016x}", m["stamp"]["source"].as_u64().unwrap());
    assert_eq!(source(&got[0]), sources[0]);

    let killed = Instant::now();
    primary.signal("KILL").unwrap();
    let got = wait_messages(&subscriber, 4);
    let after = killed.elapsed();
    eprintln!("kill -9: the reconnected SUB had the last state from the new active {after:?} after the kill");
    assert_eq!(summary(&got[2..]), want);
    assert!(got[2..].iter().all(|m| source(m) == sources[1]));
    assert_eq!(
        status(&pair.primary_endpoint())["role"],
        "active",
        "the new active answers on the primary port"
    );
}

/// tests/peers/flooder.py on `pub_port`: `count` subscription messages to
/// `prefix` (subscribe and unsubscribe in turn) at `rate` a second.
fn flooder(pub_port: u16, prefix: &str, count: usize, rate: u32) -> Process {
    let mut command = Command::new("python3");
    command
        .arg(root().join("tests/peers/flooder.py"))
        .arg(format!("tcp://127.0.0.1:{pub_port}"))
        .arg(prefix)
        .arg(count.to_string())
        .arg(format!("--rate={rate}"));
    Process::spawn(command, |l| l.contains("started"))
        .expect("the flooder starts")
        .0
}

/// The distinct topics among `messages` flagged as last values.
fn last_value_topics(messages: &[Value]) -> std::collections::BTreeSet<String> {
    summary(messages)
        .into_iter()
        .filter(|(_, _, flagged)| *flagged)
        .map(|(topic, _, _)| topic)
        .collect()
}

/// The live messages among `messages`: (publisher's counter, number
/// under "", arrival in ms after the subscriber's connect).
fn live(messages: &[Value]) -> Vec<(u64, u64, f64)> {
    messages
        .iter()
        .filter(|m| m["stamp"]["last_value"] == false)
        .filter(|m| m["frames"][0].as_str().unwrap().starts_with("live."))
        .map(|m| {
            (
                m["frames"][1].as_str().unwrap().parse().unwrap(),
                m["stamp"]["seqs"][""].as_u64().unwrap(),
                m["at_ms"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_subscription_flood_gets_bounded_replays_while_the_live_stream_requests_and_a_late_joiner_go_on(
) {
    // 200 kept topics of ~110 B, then live messages at 1,000 a second; a
    // budget of 1,000 replayed messages at once and a second
    // (last_value_max_topics), so a replay of all 200 goes out at most 5
    // times a second however many subscriptions ask.
    const TOPICS: u64 = 200;
    const MAX_TOPICS: u64 = 1000;
    const FLOOD: usize = 20_000;
    let (publisher, port) = publisher(
        0,
        &[
            "--state=200",
            "--pad=100",
            "--topics=live.",
            "--rate=1000",
            "--count=40000",
            "--wait-subscriber",
        ],
    );
    let config = stream_config_with(
        port,
        &format!("last_value = [\"state.\"]\nlast_value_max_topics = {MAX_TOPICS}\n"),
    );
    let echo = EchoService::start(None).unwrap();
    let pub_port = free_port();
    let bridge = stream_bridge(
        &config,
        pub_port,
        &[format!("--pc2-addr={}", echo.endpoint)],
    );
    let bound_at = Instant::now();
    assert!(stream_up(&bridge));
    assert!(publisher.wait_for_output("state", Duration::from_secs(10)));
    assert!(wait_until(Duration::from_secs(5), || kept(&bridge)
        ["topics"]
        == TOPICS));
    let honest = pyzmq_subscriber(pub_port, "", usize::MAX >> 1);
    assert!(wait_until(Duration::from_secs(10), || live(&messages(
        &honest
    ))
    .len()
        >= 200));
    let rss_before = bridge.rss_kb().unwrap();

    // 20,000 subscription messages to "state" (subscribe, unsubscribe) at
    // 5,000 a second: unbounded, each subscribe would replay all 200
    // topics, 2 million messages to every subscriber of them.
    let flood = flooder(pub_port, "state", FLOOD, 5000);
    // The late joiner comes once the flood has spent the budget.
    let counted = |lv: &Value| lv["replays_deferred_total"].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(10), || counted(&kept(&bridge)) >= 2000),
        "{}",
        kept(&bridge)
    );
    let late = pyzmq_subscriber(pub_port, "state.", usize::MAX >> 1);
    let dealer = Dealer::connect(&bridge.frontend);
    let asked = Instant::now();
    let reply = dealer.call(&[b"pc2", b"during the flood"]);
    let request = asked.elapsed();
    assert_eq!(
        reply.last().map(Vec::as_slice),
        Some(&b"during the flood"[..])
    );
    // The late joiner has every kept topic, flagged, within a refill
    // period and a window (the machine's bound: what waits ahead of it
    // costs at most one full cache) plus slack.
    let mut rss_max = rss_before;
    let mut sample = || rss_max = rss_max.max(bridge.rss_kb().unwrap_or(0));
    assert!(
        wait_until(Duration::from_secs(3), || {
            sample();
            last_value_topics(&messages(&late)).len() as u64 == TOPICS
        }),
        "the late joiner's last values: {:?}",
        last_value_topics(&messages(&late))
    );
    let got = messages(&late);
    let complete_ms = got
        .iter()
        .scan(std::collections::BTreeSet::new(), |seen, m| {
            if m["stamp"]["last_value"] == true {
                seen.insert(m["frames"][0].as_str().unwrap().to_string());
            }
            Some((seen.len() as u64, m["at_ms"].as_f64().unwrap()))
        })
        .find(|(n, _)| *n == TOPICS)
        .map(|(_, at)| at)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            sample();
            flood.output().iter().any(|l| l.contains("\"done\""))
        }),
        "the flood ends"
    );
    let done: Value = flood
        .output()
        .iter()
        .find_map(|l| {
            serde_json::from_str(l)
                .ok()
                .filter(|d: &Value| d["event"] == "done")
        })
        .unwrap();
    assert_eq!(done["sent"], FLOOD, "{done}");
    sample();
    let since_bound = bound_at.elapsed().as_secs_f64();

    // The deferrals are counted (status and metrics), once logged.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let lv = kept(&bridge);
            counted(&lv) >= 9_000 && lv["replays_pending"] == 0
        }),
        "{}",
        kept(&bridge)
    );
    let lv = kept(&bridge);
    let replayed = lv["replayed_total"].as_u64().unwrap();
    assert!(
        (replayed as f64) <= MAX_TOPICS as f64 * (1.0 + since_bound),
        "{replayed} replayed in {since_bound:.1} s: {lv}"
    );
    let metrics = monitor(&bridge, "metrics").unwrap();
    let line = format!(
        "zbridge_stream_last_value_deferred_total{{stream=\"dream\"}} {}",
        counted(&lv)
    );
    assert!(metrics.contains(&line), "{line} in {metrics}");
    let (code, out) = crate::monitor::promtool(&["check", "metrics"], &metrics);
    assert_eq!(code, 0, "{out}");
    let warned = bridge
        .process
        .log()
        .iter()
        .filter(|l| l.contains("faster than they are replayed"))
        .count();
    assert!(
        (1..=1 + since_bound as usize / 10).contains(&warned),
        "{warned} warnings"
    );

    // The honest subscriber lost no live message and never stalled; the
    // repeats it saw are the bounded replays.
    let seen = messages(&honest);
    let flow = live(&seen);
    let repeats = seen.len() - flow.len();
    for pair in flow.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "a live message lost");
        assert_eq!(pair[1].1, pair[0].1 + 1, "numbers go on");
    }
    let gap = flow.windows(2).map(|p| p[1].2 - p[0].2).fold(0.0, f64::max);
    // Lateness against the publisher's pace (1 ms a message), relative to
    // the promptest message.
    let lateness: Vec<f64> = flow
        .iter()
        .map(|(i, _, at)| at - (*i - flow[0].0) as f64)
        .collect();
    let late_most = lateness.iter().cloned().fold(f64::MIN, f64::max)
        - lateness.iter().cloned().fold(f64::MAX, f64::min);
    let grown = rss_max.saturating_sub(rss_before);
    eprintln!(
        "flood of {FLOOD} subscription messages in {:.1} s: {} replays deferred, {replayed} \
         last values replayed in {since_bound:.1} s (unbounded: {}), {repeats} repeats at the \
         honest subscriber; live: {} messages, none lost, longest gap {gap:.1} ms, latest \
         {late_most:.1} ms behind the promptest; a request {request:?}; the late joiner had its \
         {TOPICS} last values {complete_ms:.1} ms after its connect; RSS {rss_before} -> max \
         {rss_max} KiB; {warned} warning(s)",
        done["seconds"].as_f64().unwrap(),
        counted(&lv),
        FLOOD as u64 / 2 * TOPICS,
        flow.len(),
    );
    // /status trails the stream thread by up to its 100 ms refresh: what
    // the subscriber saw is counted by then, or never.
    let mut replayed = replayed;
    wait_until(Duration::from_secs(2), || {
        replayed = kept(&bridge)["replayed_total"].as_u64().unwrap();
        repeats as u64 <= replayed
    });
    assert!(repeats as u64 <= replayed, "{repeats} > {replayed}");
    assert!(gap < 250.0, "the live stream stalled {gap} ms");
    assert!(request < Duration::from_secs(1), "{request:?}");
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
}
