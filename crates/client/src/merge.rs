//! One ordered feed out of the copies two bridges republish (pure code).
//!
//! A [`crate::Subscriber`] is subscribed on both bridges at once. Each
//! bridge numbers what it republishes under its own random source, per
//! subscribed prefix (`zbridge_protocol::stream`). For each (stream,
//! prefix) this follows one source, the current one: its messages are
//! delivered in order, a repeat (the same bridge heard on two ports) is
//! dropped, and a jump in the numbers is reported as a gap of that many
//! messages; a new upstream session (the bridge lost its upstream and
//! reconnected) is a gap of unknown size. The other sources' copies are
//! kept in a bounded buffer.
//!
//! When the current source goes down (its connections dropped or fell
//! silent), the feed moves to another source: it finds the last message
//! it delivered among that source's copies (by content), delivers what
//! follows it, and continues in that source's numbering. If the last
//! message is not there yet, it waits up to `grace` for it to arrive;
//! past that it delivers what it has and reports a gap of unknown size.
//! Identical consecutive messages are told apart only by position, so a
//! repeat of the same bytes may be matched one too early.
//!
//! Last values (a stream with `last_value`) carry the number of the last
//! message published under the prefix. A feed with nothing delivered yet
//! starts with them; further last values at that same number are
//! delivered once each (by content) until a live message comes. A feed
//! that has delivered live messages drops them: it has had every message
//! up to its number (or been told of its loss as a gap), and a last value
//! numbered above it was read before the live messages that another
//! connection of the same bridge still holds, which will follow.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Copies kept per (stream, prefix) and other source: at most this many...
const STANDBY: usize = 10_000;
/// ...and at most this many bytes of frames.
const STANDBY_BYTES: usize = 16 << 20;

/// What the merged feed says, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Message(StreamMessage),
    /// Messages under `prefix` that this subscriber never got: `Some(n)`
    /// when the numbers say how many, `None` when they cannot (a move to a
    /// bridge that did not have the last message delivered).
    Gap {
        stream: String,
        prefix: Vec<u8>,
        missed: Option<u64>,
    },
    /// The feed for `prefix` moved from one bridge's numbering to another's.
    Moved {
        stream: String,
        prefix: Vec<u8>,
        from: u64,
        to: u64,
    },
}

/// A message as the upstream published it, without the bridge's stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    pub stream: String,
    /// The subscribed prefix it was numbered under.
    pub prefix: Vec<u8>,
    pub seq: u64,
    /// The numbering source (one per bridge process and stream).
    pub source: u64,
    /// The bridge's connection to the upstream (see the stamp).
    pub session: u32,
    pub frames: Vec<Vec<u8>>,
    /// The last value of its topic, from the bridge's cache, given to this
    /// subscriber as it subscribed: not a new publish. `seq` is then the
    /// number of the last message published under the prefix.
    pub last_value: bool,
}

#[derive(Default)]
pub(crate) struct Merge {
    keys: HashMap<(String, Vec<u8>), Feed>,
    down: HashSet<u64>,
    out: VecDeque<Delivery>,
}

#[derive(Default)]
struct Feed {
    /// Where the feed is: the last message delivered.
    current: Option<Position>,
    standby: HashMap<u64, Standby>,
    /// Moving since this time: waiting for the last delivered message to
    /// show up among another source's copies.
    moving_since: Option<Instant>,
    /// The last values delivered at the current position (their content
    /// hashes); empty once a live message has been delivered.
    last_values: HashSet<u64>,
}

#[derive(Clone, Copy)]
struct Position {
    source: u64,
    session: u32,
    seq: u64,
    hash: u64,
}

impl Held {
    fn size(&self) -> usize {
        self.message.frames.iter().map(Vec::len).sum()
    }
}

impl Position {
    fn of(message: &StreamMessage, hash: u64) -> Position {
        Position {
            source: message.source,
            session: message.session,
            seq: message.seq,
            hash,
        }
    }
}

/// Another source's recent copies, oldest first.
#[derive(Default)]
struct Standby {
    held: VecDeque<Held>,
    bytes: usize,
}

impl Standby {
    fn push(&mut self, held: Held) {
        self.bytes += held.size();
        self.held.push_back(held);
        while self.held.len() > STANDBY || self.bytes > STANDBY_BYTES {
            match self.held.pop_front() {
                Some(old) => self.bytes -= old.size(),
                None => break,
            }
        }
    }
}

struct Held {
    hash: u64,
    message: StreamMessage,
}

impl Merge {
    /// Take in a message that arrived (from any bridge).
    pub fn message(&mut self, now: Instant, grace: Duration, message: StreamMessage) {
        self.down.remove(&message.source);
        let key = (message.stream.clone(), message.prefix.clone());
        let feed = self.keys.entry(key).or_default();
        let hash = content_hash(&message.frames);
        match feed.current {
            None => {
                feed.current = Some(Position::of(&message, hash));
                if message.last_value {
                    feed.last_values.insert(hash);
                }
                self.out.push_back(Delivery::Message(message));
            }
            Some(at) if at.source == message.source && message.last_value => {
                feed.moving_since = None;
                let fresh = message.seq == at.seq
                    && message.session == at.session
                    && !feed.last_values.is_empty()
                    && feed.last_values.insert(hash);
                if fresh {
                    self.out.push_back(Delivery::Message(message));
                }
            }
            Some(at) if at.source == message.source => {
                // Its connection is back (a blip, not a death): stay.
                feed.moving_since = None;
                if message.seq <= at.seq {
                    return;
                }
                let missed = if message.session != at.session {
                    Some(None)
                } else if message.seq > at.seq + 1 {
                    Some(Some(message.seq - at.seq - 1))
                } else {
                    None
                };
                if let Some(missed) = missed {
                    self.out.push_back(Delivery::Gap {
                        stream: message.stream.clone(),
                        prefix: message.prefix.clone(),
                        missed,
                    });
                }
                feed.current = Some(Position::of(&message, hash));
                feed.last_values.clear();
                self.out.push_back(Delivery::Message(message));
            }
            Some(at) => {
                feed.standby
                    .entry(message.source)
                    .or_default()
                    .push(Held { hash, message });
                if self.down.contains(&at.source) {
                    feed.moving_since.get_or_insert(now);
                    move_feed(feed, now, grace, &mut self.out);
                }
            }
        }
    }

    /// A source's connections all dropped: move its feeds to another.
    pub fn source_down(&mut self, now: Instant, grace: Duration, source: u64) {
        self.down.insert(source);
        for feed in self.keys.values_mut() {
            feed.standby.remove(&source);
            if feed.current.is_some_and(|at| at.source == source) {
                feed.moving_since.get_or_insert(now);
                move_feed(feed, now, grace, &mut self.out);
            }
        }
    }

    /// Give up waiting where `grace` has passed.
    pub fn tick(&mut self, now: Instant, grace: Duration) {
        for feed in self.keys.values_mut() {
            if feed.moving_since.is_some() {
                move_feed(feed, now, grace, &mut self.out);
            }
        }
    }

    /// When [`Merge::tick`] must run next.
    pub fn next_deadline(&self, grace: Duration) -> Option<Instant> {
        self.keys
            .values()
            .filter_map(|f| f.moving_since)
            .min()
            .map(|t| t + grace)
    }

    pub fn next(&mut self) -> Option<Delivery> {
        self.out.pop_front()
    }
}

/// Move a feed whose source is down to the source whose copies include
/// the last message delivered; past `grace`, to the one with the most
/// copies, with a gap of unknown size.
fn move_feed(feed: &mut Feed, now: Instant, grace: Duration, out: &mut VecDeque<Delivery>) {
    let (
        Some(Position {
            source: from,
            hash: last_hash,
            ..
        }),
        Some(since),
    ) = (feed.current, feed.moving_since)
    else {
        return;
    };
    let found = feed.standby.iter().find_map(|(source, standby)| {
        standby
            .held
            .iter()
            .rposition(|h| h.hash == last_hash)
            .map(|i| (*source, i + 1))
    });
    let (to, start, known) = match found {
        Some((to, start)) => (to, start, true),
        None if now >= since + grace => {
            match feed.standby.iter().max_by_key(|(_, s)| s.held.len()) {
                Some((to, s)) if !s.held.is_empty() => (*to, 0, false),
                _ => return,
            }
        }
        None => return,
    };
    feed.moving_since = None;
    feed.last_values.clear();
    let held = feed.standby.remove(&to).unwrap_or_default().held;
    let mut last = None;
    if let Some(h) = start.checked_sub(1).and_then(|i| held.get(i)) {
        last = Some(h.message.seq);
        feed.current = Some(Position::of(&h.message, h.hash));
    }
    let (stream, prefix) = match held.front() {
        Some(h) => (h.message.stream.clone(), h.message.prefix.clone()),
        None => return,
    };
    out.push_back(Delivery::Moved {
        stream: stream.clone(),
        prefix: prefix.clone(),
        from,
        to,
    });
    if !known {
        out.push_back(Delivery::Gap {
            stream,
            prefix,
            missed: None,
        });
    }
    for h in held.into_iter().skip(start) {
        if let Some(last) = last {
            if h.message.seq <= last {
                continue;
            }
            if h.message.seq > last + 1 {
                out.push_back(Delivery::Gap {
                    stream: h.message.stream.clone(),
                    prefix: h.message.prefix.clone(),
                    missed: Some(h.message.seq - last - 1),
                });
            }
        }
        last = Some(h.message.seq);
        feed.current = Some(Position::of(&h.message, h.hash));
        out.push_back(Delivery::Message(h.message));
    }
}

fn content_hash(frames: &[Vec<u8>]) -> u64 {
    let mut hasher = DefaultHasher::new();
    frames.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(100);

    fn message(source: u64, seq: u64, body: &str) -> StreamMessage {
        StreamMessage {
            stream: "s".into(),
            prefix: b"a.".to_vec(),
            seq,
            source,
            session: 0,
            frames: vec![b"a.x".to_vec(), body.as_bytes().to_vec()],
            last_value: false,
        }
    }

    fn last_value(source: u64, seq: u64, body: &str) -> StreamMessage {
        StreamMessage {
            last_value: true,
            ..message(source, seq, body)
        }
    }

    fn drain(merge: &mut Merge) -> Vec<String> {
        std::iter::from_fn(|| merge.next())
            .map(|d| match d {
                Delivery::Message(m) => String::from_utf8(m.frames[1].clone()).unwrap(),
                Delivery::Gap {
                    missed: Some(n), ..
                } => format!("gap {n}"),
                Delivery::Gap { missed: None, .. } => "gap ?".into(),
                Delivery::Moved { from, to, .. } => format!("moved {from}->{to}"),
            })
            .collect()
    }

    #[test]
    fn one_source_is_delivered_in_order_with_repeats_dropped_and_jumps_reported() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        for (seq, body) in [(1, "m1"), (2, "m2"), (2, "m2"), (5, "m5"), (6, "m6")] {
            merge.message(now, GRACE, message(7, seq, body));
        }
        assert_eq!(drain(&mut merge), ["m1", "m2", "gap 2", "m5", "m6"]);
    }

    #[test]
    fn the_other_sources_copies_are_bounded_in_bytes() {
        let mut standby = Standby::default();
        for seq in 1..=3 {
            let mut m = message(2, seq, "big");
            m.frames = vec![vec![0; 8 << 20]];
            standby.push(Held {
                hash: 0,
                message: m,
            });
        }
        let kept: Vec<u64> = standby.held.iter().map(|h| h.message.seq).collect();
        assert_eq!(kept, [2, 3]);
        assert_eq!(standby.bytes, 16 << 20);
    }

    #[test]
    fn a_new_upstream_session_is_a_gap_of_unknown_size() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, message(7, 1, "m1"));
        let mut after = message(7, 2, "m9");
        after.session = 1;
        merge.message(now, GRACE, after);
        assert_eq!(drain(&mut merge), ["m1", "gap ?", "m9"]);
    }

    #[test]
    fn a_dead_source_hands_over_after_the_last_message_it_delivered() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        // Source 1 numbers from 10, source 2 from 500: the same messages.
        for (i, body) in ["m1", "m2", "m3"].iter().enumerate() {
            merge.message(now, GRACE, message(1, 10 + i as u64, body));
        }
        for (i, body) in ["m1", "m2", "m3", "m4", "m5"].iter().enumerate() {
            merge.message(now, GRACE, message(2, 500 + i as u64, body));
        }
        assert_eq!(drain(&mut merge), ["m1", "m2", "m3"]);
        merge.source_down(now, GRACE, 1);
        assert_eq!(drain(&mut merge), ["moved 1->2", "m4", "m5"]);
        merge.message(now, GRACE, message(2, 506, "m7"));
        assert_eq!(drain(&mut merge), ["gap 1", "m7"]);
    }

    #[test]
    fn a_source_whose_connection_comes_back_is_kept() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, message(1, 1, "m1"));
        merge.source_down(now, GRACE, 1);
        merge.message(now, GRACE, message(1, 2, "m2"));
        merge.message(now, GRACE, message(2, 70, "m2"));
        merge.tick(now + GRACE, GRACE);
        merge.message(now + GRACE, GRACE, message(1, 3, "m3"));
        assert_eq!(drain(&mut merge), ["m1", "m2", "m3"]);
    }

    #[test]
    fn a_lagging_source_is_waited_for_until_it_has_caught_up() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, message(1, 1, "m1"));
        merge.message(now, GRACE, message(1, 2, "m2"));
        merge.message(now, GRACE, message(2, 40, "m1"));
        merge.source_down(now, GRACE, 1);
        assert_eq!(drain(&mut merge), ["m1", "m2"]);
        merge.message(now, GRACE, message(2, 41, "m2"));
        merge.message(now, GRACE, message(2, 42, "m3"));
        assert_eq!(drain(&mut merge), ["moved 1->2", "m3"]);
    }

    #[test]
    fn without_the_last_message_the_move_waits_grace_then_reports_an_unknown_gap() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, message(1, 1, "m1"));
        merge.source_down(now, GRACE, 1);
        merge.message(now, GRACE, message(2, 9, "m8"));
        assert_eq!(drain(&mut merge), ["m1"]);
        assert_eq!(merge.next_deadline(GRACE), Some(now + GRACE));
        merge.tick(now + GRACE, GRACE);
        assert_eq!(drain(&mut merge), ["moved 1->2", "gap ?", "m8"]);
        assert_eq!(merge.next_deadline(GRACE), None);
    }

    #[test]
    fn a_new_feed_starts_with_the_last_values_each_once_then_goes_on_live() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, last_value(7, 40, "x=1"));
        merge.message(now, GRACE, last_value(7, 40, "y=2"));
        // The same last values again (another subscriber subscribed).
        merge.message(now, GRACE, last_value(7, 40, "x=1"));
        merge.message(now, GRACE, message(7, 41, "m41"));
        // Replayed again after live messages: already had.
        merge.message(now, GRACE, last_value(7, 41, "y=2"));
        merge.message(now, GRACE, message(7, 42, "m42"));
        assert_eq!(drain(&mut merge), ["x=1", "y=2", "m41", "m42"]);
    }

    #[test]
    fn a_last_value_read_before_the_live_messages_it_follows_is_dropped_and_they_are_not() {
        // Two connections to one bridge (during a takeover): the replay on
        // one is read before the live messages still queued on the other.
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, message(7, 1, "m1"));
        merge.message(now, GRACE, last_value(7, 3, "m3"));
        merge.message(now, GRACE, message(7, 2, "m2"));
        merge.message(now, GRACE, message(7, 3, "m3"));
        assert_eq!(drain(&mut merge), ["m1", "m2", "m3"]);
    }

    #[test]
    fn the_other_bridges_last_values_wait_as_copies_and_a_move_skips_what_was_had() {
        let (mut merge, now) = (Merge::default(), Instant::now());
        merge.message(now, GRACE, last_value(1, 10, "x=1"));
        merge.message(now, GRACE, last_value(2, 90, "x=1"));
        merge.message(now, GRACE, message(1, 11, "m11"));
        merge.message(now, GRACE, message(2, 91, "m11"));
        merge.message(now, GRACE, message(2, 92, "m12"));
        assert_eq!(drain(&mut merge), ["x=1", "m11"]);
        merge.source_down(now, GRACE, 1);
        assert_eq!(drain(&mut merge), ["moved 1->2", "m12"]);
        // The new bridge replays to the connection that moved to it.
        merge.message(now, GRACE, last_value(2, 92, "x=1"));
        assert_eq!(drain(&mut merge), Vec::<String>::new());
    }
}
