//! The stream machine, event by event: (event, actions) rows from one
//! machine with two streams, `a` and `b` (`b` keeps last values under
//! `state.`), and a fake clock.

use super::*;
use zbridge_protocol::stream::parse_stamp;

const T0_SOURCE: u64 = 0x5eed;

struct Run {
    machine: Machine,
    t0: Instant,
}

fn settings(name: &str, last_value: &[&str]) -> Settings {
    Settings {
        name: name.into(),
        endpoint: format!("tcp://127.0.0.1:9/{name}"),
        source: T0_SOURCE,
        last_value: last_value.iter().map(|p| p.as_bytes().to_vec()).collect(),
        last_value_max_topics: 100,
        last_value_max_bytes: 10_000,
    }
}

fn sub(port: usize, prefix: &str) -> Event<'_> {
    Event::Subscription {
        port,
        subscribe: true,
        prefix: prefix.as_bytes(),
    }
}

fn unsub(port: usize, prefix: &str) -> Event<'_> {
    Event::Subscription {
        port,
        subscribe: false,
        prefix: prefix.as_bytes(),
    }
}

fn upstream(upstream: usize, subscribe: bool, prefix: &str) -> Action {
    Action::Upstream {
        upstream,
        subscribe,
        prefix: prefix.as_bytes().to_vec(),
    }
}

/// Both streams ask for a prefix a subscriber wants.
fn both(subscribe: bool, prefix: &str) -> Vec<Action> {
    vec![
        upstream(0, subscribe, prefix),
        upstream(1, subscribe, prefix),
    ]
}

fn frames(topic: &str, body: &str) -> Vec<zmq::Message> {
    vec![zmq::Message::from(topic), zmq::Message::from(body)]
}

impl Run {
    /// Stream `a` (index 0) without last values, `b` (1) with them under
    /// `state.`, started.
    fn new() -> Run {
        let machine = Machine::new(vec![settings("a", &[]), settings("b", &["state."])], 10);
        let mut run = Run {
            machine,
            t0: Instant::now(),
        };
        assert_eq!(run.at(0, Event::Start), [upstream(1, true, "state.")]);
        run
    }

    /// A run with pub port 0 bound.
    fn bound() -> Run {
        let mut run = Run::new();
        assert_eq!(run.at(0, Event::Hold(0)), [Action::Bind(0)]);
        assert_eq!(
            run.at(0, Event::Bound(0, "tcp://127.0.0.1:5630".into())),
            []
        );
        run
    }

    fn at(&mut self, ms: u64, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        let now = self.t0 + Duration::from_millis(ms);
        self.machine.step(now, event, &mut out);
        out
    }

    /// Rows of (ms, event, the actions it must give).
    fn table(&mut self, rows: Vec<(u64, Event<'_>, Vec<Action>)>) {
        for (i, (ms, event, want)) in rows.into_iter().enumerate() {
            let shown = format!("{event:?}");
            assert_eq!(self.at(ms, event), want, "row {i}: at {ms} ms, {shown}");
        }
    }

    /// Stream `upstream` delivers a message: its stamp's (prefix, number)
    /// pairs if it is published, `None` if not.
    fn message(&mut self, upstream: usize, topic: &str) -> Option<Vec<(String, u64)>> {
        let frames = frames(topic, "body");
        let event = Event::Message {
            upstream,
            frames: &frames,
        };
        let out = self.at(0, event);
        if out.is_empty() {
            return None;
        }
        assert_eq!(out, [Action::Publish { upstream }]);
        let stamp = parse_stamp(self.machine.stamp()).unwrap();
        assert!(!stamp.last_value);
        Some(
            stamp
                .seqs
                .iter()
                .map(|(p, s)| (String::from_utf8_lossy(p).into_owned(), *s))
                .collect(),
        )
    }

    fn stream(&self, name: &str) -> Value {
        self.machine.status()["streams"][name].clone()
    }
}

fn seqs(pairs: &[(&str, u64)]) -> Option<Vec<(String, u64)>> {
    Some(pairs.iter().map(|(p, s)| (p.to_string(), *s)).collect())
}

#[test]
fn a_prefix_is_asked_for_once_however_many_ports_want_it_and_dropped_with_the_last() {
    let mut run = Run::bound();
    run.table(vec![
        (0, Event::Hold(1), vec![Action::Bind(1)]),
        (0, Event::Bound(1, "tcp://127.0.0.1:5631".into()), vec![]),
        (1, sub(0, "x."), both(true, "x.")),
        (2, sub(1, "x."), vec![]),
        // A subscription passed on twice (ZMQ_XPUB_VERBOSE): no change.
        (3, sub(1, "x."), vec![]),
        (4, unsub(0, "x."), vec![]),
        (5, unsub(1, "x."), both(false, "x.")),
        // An unsubscribe for what the port never wanted: nothing.
        (6, unsub(1, "x."), vec![]),
        (7, unsub(0, "never."), vec![]),
    ]);
}

#[test]
fn a_subscription_on_a_port_not_bound_is_ignored() {
    let mut run = Run::new();
    run.table(vec![
        (0, Event::Hold(0), vec![Action::Bind(0)]),
        (1, sub(0, "x."), vec![]),
    ]);
    assert_eq!(run.message(0, "x.1"), None);
}

#[test]
fn each_message_carries_the_number_of_every_wanted_prefix_it_matches() {
    let mut run = Run::bound();
    run.at(0, sub(0, "x."));
    run.at(0, sub(0, "x.y"));
    assert_eq!(run.message(0, "x.a"), seqs(&[("x.", 1)]));
    assert_eq!(run.message(0, "x.y1"), seqs(&[("x.", 2), ("x.y", 1)]));
    assert_eq!(run.message(0, "x.y2"), seqs(&[("x.", 3), ("x.y", 2)]));
    // Nobody wants it: not published, not numbered.
    assert_eq!(run.message(0, "z"), None);
    // The other stream numbers on its own.
    assert_eq!(run.message(1, "x.y"), seqs(&[("x.", 1), ("x.y", 1)]));
    assert_eq!(run.stream("a")["received_total"], 4);
    assert_eq!(run.stream("a")["published_total"], 3);
}

#[test]
fn numbers_continue_when_a_prefix_is_dropped_and_asked_for_again() {
    let mut run = Run::bound();
    run.at(0, sub(0, "x."));
    assert_eq!(run.message(0, "x.1"), seqs(&[("x.", 1)]));
    run.at(0, unsub(0, "x."));
    // Sent before the unsubscribe reached the upstream: nobody wants it.
    assert_eq!(run.message(0, "x.2"), None);
    run.at(0, sub(0, "x."));
    assert_eq!(run.message(0, "x.3"), seqs(&[("x.", 2)]));
}

#[test]
fn past_1024_prefixes_the_unwanted_are_forgotten_under_a_new_source_then_new_ones_refused() {
    let mut run = Run::bound();
    let prefixes: Vec<String> = (0..MAX_PREFIXES + 1).map(|i| format!("p{i:05}.")).collect();
    run.at(0, sub(0, &prefixes[0]));
    assert_eq!(run.message(0, "p00000.x"), seqs(&[("p00000.", 1)]));
    run.at(0, unsub(0, &prefixes[0]));
    for p in &prefixes[1..MAX_PREFIXES] {
        assert_eq!(run.at(0, sub(0, p)), both(true, p));
    }
    let source = run.stream("a")["source"].clone();
    // The 1,025th: the unwanted p00000. is forgotten, a new source drawn.
    assert_eq!(
        run.at(0, sub(0, &prefixes[MAX_PREFIXES])),
        both(true, &prefixes[MAX_PREFIXES])
    );
    assert_ne!(run.stream("a")["source"], source);
    // Now all 1,024 are wanted: the next is refused, by both streams.
    assert_eq!(run.at(10, sub(0, "one.more")), vec![]);
    assert_eq!(run.stream("a")["subscriptions_refused_total"], 1);
    assert_eq!(run.stream("b")["subscriptions_refused_total"], 1);
    assert_eq!(run.stream("a")["subscriptions"], MAX_PREFIXES);
    // A prefix asked for again after it was forgotten numbers from 1
    // (under the new source), once there is room.
    run.at(11, unsub(0, &prefixes[1]));
    run.at(12, sub(0, &prefixes[0]));
    assert_eq!(run.message(0, "p00000.y"), seqs(&[("p00000.", 1)]));
}

#[test]
fn stalls_are_counted_per_stream() {
    let mut run = Run::bound();
    run.table(vec![
        (0, Event::Stalled(0), vec![]),
        (1, Event::Stalled(0), vec![]),
        (2, Event::Stalled(1), vec![]),
    ]);
    assert_eq!(run.stream("a")["subscriber_stalls_total"], 2);
    assert_eq!(run.stream("b")["subscriber_stalls_total"], 1);
}

#[test]
fn each_reconnection_of_the_upstream_is_a_new_session_and_the_numbers_go_on() {
    let mut run = Run::bound();
    run.at(0, sub(0, "x."));
    let session = |run: &mut Run| {
        let frames = frames("x.1", "");
        run.at(
            0,
            Event::Message {
                upstream: 0,
                frames: &frames,
            },
        );
        let stamp = parse_stamp(run.machine.stamp()).unwrap();
        (stamp.session, stamp.seq(b"x.").unwrap())
    };
    // Nothing to carry out: libzmq's XSUB sends its subscriptions again
    // on a new connection by itself.
    run.table(vec![
        (0, Event::UpstreamUp(0), vec![]),
        (0, Event::UpstreamUp(0), vec![]),
    ]);
    assert_eq!(session(&mut run), (0, 1));
    assert_eq!(run.stream("a")["up"], true);
    run.table(vec![
        (10, Event::UpstreamDown(0), vec![]),
        (10, Event::UpstreamDown(0), vec![]),
    ]);
    assert_eq!(run.stream("a")["up"], false);
    run.table(vec![(20, Event::UpstreamUp(0), vec![])]);
    assert_eq!(session(&mut run), (1, 2));
    run.table(vec![
        (30, Event::UpstreamDown(0), vec![]),
        (40, Event::UpstreamUp(0), vec![]),
    ]);
    assert_eq!(session(&mut run), (2, 3));
    assert_eq!(run.stream("b")["up"], false);
}

#[test]
fn a_pub_port_another_process_holds_is_retried_every_50_ms_until_it_binds() {
    let mut run = Run::new();
    run.table(vec![
        (0, Event::Hold(0), vec![Action::Bind(0)]),
        (0, Event::BindFailed(0, "in use".into()), vec![]),
        (49, Event::Tick, vec![]),
        (50, Event::Tick, vec![Action::Bind(0)]),
        (50, Event::BindFailed(0, "in use".into()), vec![]),
        (100, Event::Tick, vec![Action::Bind(0)]),
        (101, Event::Bound(0, "tcp://127.0.0.1:5630".into()), vec![]),
        (200, Event::Tick, vec![]),
    ]);
    assert_eq!(run.machine.next_deadline(), None);
    assert_eq!(
        run.machine.status()["pub_endpoints"],
        json!(["tcp://127.0.0.1:5630"])
    );
}

#[test]
fn a_port_released_while_its_bind_is_retried_is_tried_no_more() {
    let mut run = Run::new();
    run.table(vec![
        (0, Event::Hold(0), vec![Action::Bind(0)]),
        (0, Event::BindFailed(0, "in use".into()), vec![]),
        (10, Event::Release(0), vec![]),
        (50, Event::Tick, vec![]),
    ]);
    assert_eq!(run.machine.status()["pub_endpoints"], json!([]));
}

#[test]
fn a_takeover_keeps_what_the_other_port_wants_and_drops_what_only_the_closed_one_wanted() {
    // Passive with 5631 and two subscribers; it takes 5630 over, a
    // subscriber reconnects there, then 5631 closes.
    let mut run = Run::new();
    run.table(vec![
        (0, Event::Hold(1), vec![Action::Bind(1)]),
        (0, Event::Bound(1, "tcp://127.0.0.1:5631".into()), vec![]),
        (1, Event::Joined(1), vec![]),
        (1, sub(1, "x."), both(true, "x.")),
        (2, Event::Joined(1), vec![]),
        (2, sub(1, "y."), both(true, "y.")),
        (10, Event::Hold(0), vec![Action::Bind(0)]),
        (10, Event::Bound(0, "tcp://127.0.0.1:5630".into()), vec![]),
        (11, Event::Joined(0), vec![]),
        (11, sub(0, "x."), vec![]),
    ]);
    assert_eq!(run.machine.status()["stream_subscribers"], 3);
    let mut close = vec![Action::Close(1)];
    close.extend(both(false, "y."));
    run.table(vec![
        (20, Event::Release(1), close),
        // The closed port's disconnects may still be reported: no effect.
        (21, Event::Left(1), vec![]),
        (22, sub(1, "z."), vec![]),
    ]);
    assert_eq!(run.machine.status()["stream_subscribers"], 1);
    assert_eq!(run.message(0, "x.1"), seqs(&[("x.", 1)]));
    assert_eq!(run.message(0, "y.1"), None);
    assert_eq!(run.stream("a")["subscriptions"], 1);
}

#[test]
fn a_subscriber_leaving_during_a_takeover_drops_its_prefix_only_when_no_port_wants_it() {
    let mut run = Run::bound();
    run.table(vec![
        (0, sub(0, "x."), both(true, "x.")),
        (1, Event::Hold(1), vec![Action::Bind(1)]),
        (1, Event::Bound(1, "tcp://127.0.0.1:5631".into()), vec![]),
        (2, sub(1, "x."), vec![]),
        (3, Event::Left(0), vec![]),
        (3, unsub(0, "x."), vec![]),
        (4, Event::Release(0), vec![Action::Close(0)]),
        (5, unsub(1, "x."), both(false, "x.")),
    ]);
}

/// A last value replayed: the port, its topic, and its stamp's numbers.
type Replayed = (usize, String, Vec<(String, u64)>);

fn replays(out: &[Action]) -> Vec<Replayed> {
    out.iter()
        .filter_map(|a| match a {
            Action::Replay {
                port,
                upstream: 1,
                frames,
                stamp,
            } => {
                let stamp = parse_stamp(stamp).unwrap();
                assert!(stamp.last_value);
                let seqs = stamp
                    .seqs
                    .iter()
                    .map(|(p, s)| (String::from_utf8_lossy(p).into_owned(), *s))
                    .collect();
                Some((
                    *port,
                    String::from_utf8_lossy(&frames[0]).into_owned(),
                    seqs,
                ))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn last_values_are_kept_without_subscribers_and_replayed_to_a_new_subscription_with_the_current_numbers(
) {
    let mut run = Run::bound();
    // Kept, not published: nobody is subscribed.
    assert_eq!(run.message(1, "state.a"), None);
    assert_eq!(run.message(1, "state.b"), None);
    assert_eq!(run.message(1, "other"), None);
    let out = run.at(1, sub(0, "state."));
    assert_eq!(out[..2], both(true, "state."));
    assert_eq!(
        replays(&out),
        [
            (0, "state.a".into(), vec![("state.".into(), 0)]),
            (0, "state.b".into(), vec![("state.".into(), 0)]),
        ]
    );
    assert_eq!(run.message(1, "state.a"), seqs(&[("state.", 1)]));
    // A second subscriber on the other port, to a narrower prefix: its
    // last values carry every wanted prefix's current number.
    run.at(2, Event::Hold(1));
    run.at(2, Event::Bound(1, "tcp://127.0.0.1:5631".into()));
    let out = run.at(3, sub(1, "state.a"));
    assert_eq!(
        replays(&out),
        [(
            1,
            "state.a".into(),
            vec![("state.".into(), 1), ("state.a".into(), 0)]
        )]
    );
    // A subscriber to what is not kept gets nothing but the subscription.
    assert_eq!(run.at(4, sub(0, "other")), both(true, "other"));
    assert_eq!(run.stream("b")["last_values"]["topics"], 2);
    assert_eq!(run.stream("b")["last_values"]["replayed_total"], 3);
    assert!(run.stream("a").get("last_values").is_none());
}

#[test]
fn a_subscription_passed_on_again_is_replayed_to_again() {
    // ZMQ_XPUB_VERBOSE: a second subscriber to the same prefix, or the
    // same one after a reconnection, is a subscription like the first
    // (once the prefix's window has passed; see the flood tests below).
    let mut run = Run::bound();
    run.message(1, "state.a");
    run.at(0, sub(0, "state."));
    assert_eq!(replays(&run.at(100, sub(0, "state."))).len(), 1);
    assert_eq!(replays(&run.at(101, sub(0, "state.a"))).len(), 1);
    assert_eq!(last_values(&run)["replays_deferred_total"], 0);
}

/// Stream `b`'s `last_values` in the status document.
fn last_values(run: &Run) -> Value {
    run.stream("b")["last_values"].clone()
}

/// A run whose stream `b` keeps last values under `state.` within
/// `max_topics` topics (its replay budget: that many messages at once and
/// per second), pub port 0 bound, with `topics` kept.
fn budgeted(max_topics: usize, topics: &[&str]) -> Run {
    let mut b = settings("b", &["state."]);
    b.last_value_max_topics = max_topics;
    let mut run = Run {
        machine: Machine::new(vec![settings("a", &[]), b], 10),
        t0: Instant::now(),
    };
    run.at(0, Event::Start);
    run.at(0, Event::Hold(0));
    run.at(0, Event::Bound(0, "tcp://127.0.0.1:5630".into()));
    for topic in topics {
        assert_eq!(run.message(1, topic), None);
    }
    run
}

/// The topics of the last values replayed, in order.
fn replayed_topics(out: &[Action]) -> Vec<String> {
    replays(out)
        .into_iter()
        .map(|(_, topic, _)| topic)
        .collect()
}

#[test]
fn a_flood_of_subscriptions_to_one_prefix_gets_one_replay_per_window_each_subscription_served() {
    let mut run = Run::bound();
    run.message(1, "state.a");
    run.message(1, "state.b");
    let out = run.at(0, sub(0, "state."));
    assert_eq!(replayed_topics(&out), ["state.a", "state.b"]);
    // 99 more within the window: all wait for one replay at its end.
    for ms in 1..100 {
        assert_eq!(replays(&run.at(ms, sub(0, "state."))), []);
    }
    assert_eq!(last_values(&run)["replays_deferred_total"], 99);
    assert_eq!(last_values(&run)["replays_pending"], 1);
    assert_eq!(
        run.machine.next_deadline(),
        Some(run.t0 + REPLAY_WINDOW),
        "the loop wakes for it"
    );
    run.table(vec![(99, Event::Tick, vec![])]);
    let out = run.at(100, Event::Tick);
    assert_eq!(replayed_topics(&out), ["state.a", "state.b"]);
    assert_eq!(last_values(&run)["replays_pending"], 0);
    assert_eq!(last_values(&run)["replayed_total"], 4);
    assert_eq!(run.machine.next_deadline(), None);
}

#[test]
fn replays_on_a_port_cost_at_most_one_full_cache_at_once_and_one_a_second_after() {
    // 4 topics, a budget of 10 messages refilled at 10 a second; a
    // subscription to "state." every 10 ms for 2 s, the loop ticking when
    // the machine says.
    let mut run = budgeted(10, &["state.0", "state.1", "state.2", "state.3"]);
    let mut sent = Vec::new();
    let mut total = 0;
    for ms in 0..=2000u64 {
        let now = run.t0 + Duration::from_millis(ms);
        if run.machine.next_deadline().is_some_and(|t| t <= now) {
            total += replays(&run.at(ms, Event::Tick)).len();
        }
        if ms % 10 == 0 {
            let out = run.at(ms, sub(0, "state."));
            total += replays(&out).len();
        }
        if sent.last() != Some(&total) {
            sent.push(total);
            // Never past the bucket: 10 at once, then 10 a second.
            assert!(total as u64 <= 10 + ms / 100, "{total} by {ms} ms");
        }
    }
    // Whole replays of the 4 topics, as often as the budget allows: at 0,
    // 100, 200 ms (the window), then every 400 ms (4 tokens).
    assert_eq!(sent, [4, 8, 12, 16, 20, 24, 28]);
    // Every subscription but the first waited (the window's end and the
    // loop's tick come before the subscription at the same millisecond).
    assert_eq!(last_values(&run)["replays_deferred_total"], 200);
    assert_eq!(last_values(&run)["replays_pending"], 1);
}

#[test]
fn an_honest_subscription_during_a_flood_gets_its_last_values_within_a_refill_period() {
    let flooded: Vec<String> = (0..8).map(|i| format!("state.x{i}")).collect();
    let mut topics: Vec<&str> = flooded.iter().map(String::as_str).collect();
    topics.push("state.a");
    let mut run = budgeted(10, &topics);
    let mut honest_at = None;
    for ms in 0..=3000u64 {
        let now = run.t0 + Duration::from_millis(ms);
        let mut out = Vec::new();
        if run.machine.next_deadline().is_some_and(|t| t <= now) {
            out.extend(run.at(ms, Event::Tick));
        }
        // The flooder: "state.x" every millisecond.
        out.extend(run.at(ms, sub(0, "state.x")));
        if ms == 1000 {
            out.extend(run.at(ms, sub(0, "state.a")));
        }
        if replayed_topics(&out).contains(&"state.a".to_string()) {
            assert_eq!(honest_at, None, "once");
            honest_at = Some(ms);
        }
    }
    let waited = honest_at.expect("the honest subscription is served") - 1000;
    assert!(
        waited <= (REPLAY_REFILL + REPLAY_WINDOW).as_millis() as u64,
        "{waited} ms"
    );
    // The flooder had 8 messages a replay: at most 10 + 10 a second.
    let replayed = last_values(&run)["replayed_total"].as_u64().unwrap();
    assert!(replayed <= 10 + 30 + 1, "{replayed}");
    assert!(
        last_values(&run)["replays_deferred_total"]
            .as_u64()
            .unwrap()
            > 2900
    );
}

#[test]
fn a_subscription_merged_into_a_flooders_prefix_is_served_when_the_flooder_withdraws_it() {
    // A flooder subscribes and unsubscribes "" (libzmq passes its
    // unsubscribe on: nobody else on the port wants ""); an honest
    // subscription to "state." arrives while "" waits for its window.
    let mut run = Run::bound();
    run.message(1, "state.a");
    assert_eq!(replayed_topics(&run.at(0, sub(0, ""))), ["state.a"]);
    run.at(1, unsub(0, ""));
    assert_eq!(replays(&run.at(2, sub(0, ""))), []);
    assert_eq!(replays(&run.at(3, sub(0, "state."))), []);
    assert_eq!(last_values(&run)["replays_pending"], 2);
    // "" goes: "state." takes its place, and its window is open.
    let out = run.at(4, unsub(0, ""));
    assert_eq!(replayed_topics(&out), ["state.a"]);
    assert_eq!(last_values(&run)["replays_pending"], 0);
    assert_eq!(last_values(&run)["replays_deferred_total"], 2);
}

#[test]
fn a_waiting_replay_goes_with_its_last_subscriber_and_with_a_closed_port() {
    let mut run = Run::bound();
    run.message(1, "state.a");
    run.at(0, sub(0, "state."));
    run.at(1, sub(0, "state."));
    run.at(2, sub(0, "state.a"));
    assert_eq!(last_values(&run)["replays_pending"], 2);
    // "state.a" is still wanted: it takes the place of "state.", and its
    // own window is open.
    assert_eq!(replayed_topics(&run.at(3, unsub(0, "state."))), ["state.a"]);
    assert_eq!(last_values(&run)["replays_pending"], 0);
    run.at(4, sub(0, "state."));
    assert_eq!(last_values(&run)["replays_pending"], 1);
    run.at(5, unsub(0, "state."));
    assert_eq!(last_values(&run)["replays_pending"], 0);
    assert_eq!(replays(&run.at(100, Event::Tick)), []);
    // A port closed with replays waiting: they go; bound again, its budget
    // is whole and nothing waits.
    run.at(200, sub(0, "state."));
    run.at(201, sub(0, "state."));
    assert_eq!(last_values(&run)["replays_pending"], 1);
    run.at(202, Event::Release(0));
    assert_eq!(last_values(&run)["replays_pending"], 0);
    assert_eq!(run.machine.next_deadline(), None);
    run.at(203, Event::Hold(0));
    run.at(203, Event::Bound(0, "tcp://127.0.0.1:5630".into()));
    assert_eq!(replays(&run.at(204, sub(0, "state."))).len(), 1);
}

#[test]
fn each_pub_port_has_its_own_window_and_budget() {
    let mut run = budgeted(2, &["state.a", "state.b"]);
    run.at(0, Event::Hold(1));
    run.at(0, Event::Bound(1, "tcp://127.0.0.1:5631".into()));
    assert_eq!(replays(&run.at(1, sub(0, "state."))).len(), 2);
    // Port 0's budget is spent and its window closed; port 1's are not.
    assert_eq!(replays(&run.at(2, sub(1, "state."))).len(), 2);
    assert_eq!(replays(&run.at(3, sub(0, "state.b"))), []);
    assert_eq!(last_values(&run)["replays_deferred_total"], 1);
}

#[test]
fn a_refused_subscription_gets_no_last_values() {
    let mut run = Run::bound();
    run.message(1, "state.a");
    for i in 0..MAX_PREFIXES {
        run.at(0, sub(0, &format!("p{i}")));
    }
    assert_eq!(run.at(1, sub(0, "state.")), vec![]);
}

#[test]
fn an_upstream_reconnecting_during_a_takeover_numbers_on_for_both_ports_under_a_new_session() {
    let mut run = Run::bound();
    run.table(vec![
        (0, Event::UpstreamUp(0), vec![]),
        (1, sub(0, "x."), both(true, "x.")),
        (2, Event::Hold(1), vec![Action::Bind(1)]),
        (2, Event::Bound(1, "tcp://127.0.0.1:5631".into()), vec![]),
        (3, sub(1, "x."), vec![]),
    ]);
    assert_eq!(run.message(0, "x.1"), seqs(&[("x.", 1)]));
    run.table(vec![
        (4, Event::UpstreamDown(0), vec![]),
        (5, Event::UpstreamUp(0), vec![]),
        (6, Event::Release(0), vec![Action::Close(0)]),
    ]);
    assert_eq!(run.message(0, "x.2"), seqs(&[("x.", 2)]));
    assert_eq!(parse_stamp(run.machine.stamp()).unwrap().session, 1);
}

#[test]
fn a_bridge_holding_no_pub_port_keeps_last_values_and_gives_them_once_it_binds() {
    // A passive before it binds 5631, or one between ports.
    let mut run = Run::new();
    assert_eq!(run.message(1, "state.a"), None);
    assert_eq!(run.at(1, sub(0, "state.")), vec![]);
    run.at(2, Event::Hold(0));
    run.at(2, Event::Bound(0, "tcp://127.0.0.1:5630".into()));
    assert_eq!(
        replays(&run.at(3, sub(0, "state."))),
        [(0, "state.a".into(), vec![("state.".into(), 0)])]
    );
}
