//! A stream's last values (pure): the last message per topic (its first
//! frame), for the topics under the stream's `last_value` prefixes.
//!
//! Bounded in topics and in bytes (the frames' lengths, the topic counted
//! once): a new topic that would pass a bound evicts the topics updated
//! longest ago, each eviction counted; a message larger than the byte bound
//! on its own is not kept (counted too). [`Cache::matching`] lists what a
//! new subscription to a prefix gets, in topic order; [`Cache::cost`]
//! says what sending it costs.

use std::collections::BTreeMap;

/// What the cache's bounds cost, for the status document.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub topics: usize,
    pub bytes: usize,
    /// Topics dropped to make room for newer ones.
    pub evicted: u64,
    /// Messages larger than the byte bound on their own, not kept.
    pub too_large: u64,
}

pub struct Cache {
    /// Topic to its last message and when it was stored.
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Store tick to topic: the eviction order, oldest first.
    order: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    max_topics: usize,
    max_bytes: usize,
    counts: Counts,
}

struct Entry {
    frames: Vec<Vec<u8>>,
    tick: u64,
}

fn size(frames: &[Vec<u8>]) -> usize {
    frames.iter().map(Vec::len).sum()
}

impl Cache {
    pub fn new(max_topics: usize, max_bytes: usize) -> Cache {
        Cache {
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            max_topics,
            max_bytes,
            counts: Counts::default(),
        }
    }

    /// Keep `frames` (the first is the topic) as its topic's last value.
    pub fn store<F: std::ops::Deref<Target = [u8]>>(&mut self, frames: &[F]) {
        let Some(topic) = frames.first().map(|f| &**f) else {
            return;
        };
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        self.tick += 1;
        if let Some(entry) = self.entries.get_mut(topic) {
            self.counts.bytes -= size(&entry.frames);
            let key = self.order.remove(&entry.tick).unwrap_or_default();
            self.order.insert(self.tick, key);
            entry.tick = self.tick;
            // In place: a topic updated again allocates nothing.
            entry.frames.resize_with(frames.len(), Vec::new);
            for (kept, frame) in entry.frames.iter_mut().zip(frames) {
                kept.clear();
                kept.extend_from_slice(frame);
            }
            self.counts.bytes += bytes;
            if bytes > self.max_bytes {
                self.counts.too_large += 1;
                self.remove(topic);
            }
        } else if bytes > self.max_bytes || self.max_topics == 0 {
            self.counts.too_large += 1;
            return;
        } else {
            self.entries.insert(
                topic.to_vec(),
                Entry {
                    frames: frames.iter().map(|f| f.to_vec()).collect(),
                    tick: self.tick,
                },
            );
            self.order.insert(self.tick, topic.to_vec());
            self.counts.bytes += bytes;
        }
        while self.entries.len() > self.max_topics || self.counts.bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.remove(&oldest);
            self.counts.evicted += 1;
        }
        self.counts.topics = self.entries.len();
    }

    fn remove(&mut self, topic: &[u8]) {
        if let Some(entry) = self.entries.remove(topic) {
            self.order.remove(&entry.tick);
            self.counts.bytes -= size(&entry.frames);
        }
        self.counts.topics = self.entries.len();
    }

    /// The last values whose topic starts with `prefix`, in topic order.
    pub fn matching<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a [Vec<u8>]> + 'a {
        self.entries
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(topic, _)| topic.starts_with(prefix))
            .map(|(_, entry)| entry.frames.as_slice())
    }

    /// What replaying `prefix` sends: messages, and bytes of frames.
    pub fn cost(&self, prefix: &[u8]) -> (usize, usize) {
        self.matching(prefix)
            .fold((0, 0), |(n, bytes), frames| (n + 1, bytes + size(frames)))
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, body: &str) -> Vec<Vec<u8>> {
        vec![topic.as_bytes().to_vec(), body.as_bytes().to_vec()]
    }

    fn topics(cache: &Cache, prefix: &str) -> Vec<String> {
        cache
            .matching(prefix.as_bytes())
            .map(|f| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&f[0]),
                    String::from_utf8_lossy(&f[1])
                )
            })
            .collect()
    }

    #[test]
    fn the_last_message_per_topic_is_kept_and_listed_by_prefix() {
        let mut cache = Cache::new(10, 1_000);
        for (topic, body) in [
            ("a.x", "1"),
            ("b.x", "2"),
            ("a.y", "3"),
            ("a.x", "4"),
            ("ab", "5"),
        ] {
            cache.store(&message(topic, body));
        }
        assert_eq!(topics(&cache, "a."), ["a.x=4", "a.y=3"]);
        assert_eq!(topics(&cache, "a"), ["a.x=4", "a.y=3", "ab=5"]);
        assert_eq!(topics(&cache, ""), ["a.x=4", "a.y=3", "ab=5", "b.x=2"]);
        assert_eq!(topics(&cache, "c"), Vec::<String>::new());
        assert_eq!(cache.cost(b"a."), (2, 4 + 4));
        assert_eq!(cache.cost(b"c"), (0, 0));
        assert_eq!(cache.counts().topics, 4);
        assert_eq!(cache.counts().bytes, 4 + 4 + 3 + 4);
    }

    #[test]
    fn past_the_topic_bound_the_topic_updated_longest_ago_goes() {
        let mut cache = Cache::new(2, 1_000);
        cache.store(&message("a", "1"));
        cache.store(&message("b", "1"));
        cache.store(&message("a", "2"));
        cache.store(&message("c", "1"));
        assert_eq!(topics(&cache, ""), ["a=2", "c=1"]);
        assert_eq!(cache.counts().evicted, 1);
    }

    #[test]
    fn past_the_byte_bound_old_topics_go_and_a_message_too_large_alone_is_not_kept() {
        let mut cache = Cache::new(100, 10);
        cache.store(&message("a", "1234")); // 5 bytes
        cache.store(&message("b", "1234")); // 10
        cache.store(&message("c", "1")); // 12: "a" goes
        assert_eq!(topics(&cache, ""), ["b=1234", "c=1"]);
        assert_eq!(cache.counts().bytes, 7);
        cache.store(&message("d", "0123456789"));
        assert_eq!(cache.counts().too_large, 1);
        // An update too large drops the old value: it is no longer the last.
        cache.store(&message("b", "0123456789"));
        assert_eq!(topics(&cache, ""), ["c=1"]);
        assert_eq!(cache.counts().too_large, 2);
        assert_eq!(cache.counts().bytes, 2);
        assert_eq!(cache.counts().evicted, 1);
    }

    #[test]
    fn a_hundred_thousand_topics_stay_within_the_bounds() {
        let mut cache = Cache::new(1_000, 50_000);
        for i in 0..100_000 {
            cache.store(&message(&format!("t.{i:06}"), "some payload"));
            let counts = cache.counts();
            assert!(counts.topics <= 1_000 && counts.bytes <= 50_000);
        }
        assert_eq!(cache.order.len(), cache.entries.len());
        assert_eq!(topics(&cache, "t.099999"), ["t.099999=some payload"]);
    }
}
