//! The prefixes waiting for their last values on one pub port (pure): the
//! queue [`super::machine`] keeps when a replay cannot go out at once.
//!
//! Oldest first. Each prefix is there once, and no queued prefix is under
//! another: a prefix under a queued one is merged into it (that replay
//! sends its topics too), and a new prefix takes in the queued ones under
//! it, at the place of the first of them. So the prefixes queued are
//! disjoint in what they match, and what waits ahead of a subscription
//! sends each kept topic at most once: at most one full cache.

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Default)]
pub struct Queue(VecDeque<Queued>);

pub struct Queued {
    pub prefix: Vec<u8>,
    /// When the prefix may be replayed on the port again (its last
    /// replay's window), if it was replayed lately.
    pub opens: Option<Instant>,
    /// Prefixes under this one whose subscriptions its replay serves.
    merged: Vec<Vec<u8>>,
}

impl Queue {
    /// Queue `prefix` at `at` (or at the place of the first queued prefix
    /// under it, if earlier), unless it is queued already or under a
    /// queued prefix: then it is merged into that one. The index of its
    /// own new place comes back, if it has one.
    pub fn insert(&mut self, prefix: &[u8], opens: Option<Instant>, at: usize) -> Option<usize> {
        if let Some(q) = self.0.iter_mut().find(|q| prefix.starts_with(&q.prefix)) {
            if q.prefix != prefix && !q.merged.iter().any(|m| m == prefix) {
                q.merged.push(prefix.to_vec());
            }
            return None;
        }
        let mut merged = Vec::new();
        let mut first = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].prefix.starts_with(prefix) {
                first.get_or_insert(i);
                if let Some(q) = self.0.remove(i) {
                    merged.push(q.prefix);
                    merged.extend(q.merged);
                }
            } else {
                i += 1;
            }
        }
        let at = first.map_or(at, |f| f.min(at)).min(self.0.len());
        let prefix = prefix.to_vec();
        self.0.insert(
            at,
            Queued {
                prefix,
                opens,
                merged,
            },
        );
        Some(at)
    }

    /// Queue `prefix` last (see [`Queue::insert`]).
    pub fn push(&mut self, prefix: &[u8], opens: Option<Instant>) -> Option<usize> {
        self.insert(prefix, opens, self.0.len())
    }

    /// Nobody on the port wants `prefix` any more: it leaves the queue, and
    /// what was merged into it takes its place. `window` says, for each of
    /// those, whether it is still wanted (`None`: no) and when it opens.
    pub fn withdraw(&mut self, prefix: &[u8], window: impl Fn(&[u8]) -> Option<Option<Instant>>) {
        for q in &mut self.0 {
            q.merged.retain(|m| m != prefix);
        }
        let Some(at) = self.0.iter().position(|q| q.prefix == prefix) else {
            return;
        };
        let Some(mut gone) = self.0.remove(at) else {
            return;
        };
        // Shorter first: a prefix under another merges into it again.
        gone.merged.sort_by_key(Vec::len);
        let mut at = at;
        for m in &gone.merged {
            if let Some(opens) = window(m) {
                if self.insert(m, opens, at).is_some() {
                    at += 1;
                }
            }
        }
    }

    /// The queued prefix at `i` (merged ones are not counted).
    pub fn get(&self, i: usize) -> Option<&Queued> {
        self.0.get(i)
    }

    /// Take the prefix at `i` off the queue (replayed, with what was
    /// merged into it).
    pub fn remove(&mut self, i: usize) -> Option<Queued> {
        self.0.remove(i)
    }

    /// Prefixes waiting, merged ones included.
    pub fn len(&self) -> usize {
        self.0.iter().map(|q| 1 + q.merged.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(queue: &Queue) -> Vec<(String, Vec<String>)> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        queue
            .0
            .iter()
            .map(|q| (text(&q.prefix), q.merged.iter().map(|m| text(m)).collect()))
            .collect()
    }

    fn row(prefix: &str, merged: &[&str]) -> (String, Vec<String>) {
        (
            prefix.into(),
            merged.iter().map(|m| m.to_string()).collect(),
        )
    }

    #[test]
    fn a_prefix_is_queued_once_and_one_under_a_queued_prefix_is_merged_into_it() {
        let mut queue = Queue::default();
        assert_eq!(queue.push(b"a.", None), Some(0));
        assert_eq!(queue.push(b"b.", None), Some(1));
        assert_eq!(queue.push(b"a.", None), None);
        assert_eq!(queue.push(b"a.x", None), None);
        assert_eq!(queue.push(b"a.x", None), None);
        assert_eq!(queued(&queue), [row("a.", &["a.x"]), row("b.", &[])]);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn a_broader_prefix_takes_in_those_under_it_at_the_place_of_the_first() {
        let mut queue = Queue::default();
        queue.push(b"c.", None);
        queue.push(b"a.x", None);
        queue.push(b"b.", None);
        queue.push(b"a.y", None);
        assert_eq!(queue.push(b"a.", None), Some(1));
        assert_eq!(
            queued(&queue),
            [row("c.", &[]), row("a.", &["a.x", "a.y"]), row("b.", &[])]
        );
        assert_eq!(queue.push(b"", None), Some(0));
        assert_eq!(queue.len(), 6);
        assert_eq!(queue.0.len(), 1);
    }

    #[test]
    fn a_withdrawn_prefix_leaves_and_what_was_merged_into_it_and_still_wanted_takes_its_place() {
        let mut queue = Queue::default();
        queue.push(b"b.", None);
        queue.push(b"", None);
        queue.push(b"c.", None);
        queue.push(b"a.", None);
        queue.push(b"a.x", None);
        assert_eq!(queued(&queue), [row("", &["b.", "c.", "a.", "a.x"])]);
        // "c." is wanted no more either.
        queue.withdraw(b"", |m| (m != b"c.").then_some(None));
        assert_eq!(queued(&queue), [row("b.", &[]), row("a.", &["a.x"])]);
        queue.withdraw(b"a.x", |_| Some(None));
        queue.withdraw(b"never", |_| Some(None));
        assert_eq!(queued(&queue), [row("b.", &[]), row("a.", &[])]);
    }
}
