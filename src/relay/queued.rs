//! What a target's DEALER may still hold: the requests sent to it that no
//! reply has yet shown to be gone, and their bytes (pure, tested).
//!
//! libzmq queues what the backend does not read (its pipe, then the
//! kernel's buffers), and a request the bridge answered `timeout` stays
//! there: a hung backend pins it until it reads again. The bridge cannot
//! see that queue, but it can bound it from outside: one connection is
//! first in, first out, so a reply (in time or late) to one request shows
//! that every request sent before it has left the queue too. Counted from
//! the send to that proof, the bytes here are at least what libzmq holds;
//! `max_queued_bytes` caps them (`state::forward`).

use super::inflight::Key;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Debug, Default)]
pub(super) struct Queued {
    /// In send order: each request's key and bytes; `None` for one taken
    /// back (`unsent`) while others came after it.
    sent: VecDeque<Option<(Key, usize)>>,
    /// The send number of `sent`'s front.
    front: u64,
    /// Each request still counted: its send number (so its place in
    /// `sent` is found at once, without a search).
    order: HashMap<Key, u64, BuildHasherDefault<KeyHasher>>,
    bytes: usize,
}

impl Queued {
    /// A request of `bytes` handed to the DEALER.
    pub fn sent(&mut self, key: Key, bytes: usize) {
        self.order.insert(key, self.front + self.sent.len() as u64);
        self.sent.push_back(Some((key, bytes)));
        self.bytes += bytes;
    }

    /// A request counted by [`Queued::sent`] that was not sent after all
    /// (the send would block, or failed).
    pub fn unsent(&mut self, key: Key) {
        let Some(n) = self.order.remove(&key) else {
            return;
        };
        let place = usize::try_from(n - self.front).unwrap_or(usize::MAX);
        if let Some((_, bytes)) = self.sent.get_mut(place).and_then(Option::take) {
            self.bytes -= bytes;
        }
        while self.sent.back().is_some_and(Option::is_none) {
            self.sent.pop_back();
        }
        while self.sent.front().is_some_and(Option::is_none) {
            self.sent.pop_front();
            self.front += 1;
        }
    }

    /// A reply to `key` came: it and every request sent before it have
    /// left the queue.
    pub fn answered(&mut self, key: Key) {
        let Some(&n) = self.order.get(&key) else {
            return;
        };
        while self.front <= n {
            if let Some(Some((gone, bytes))) = self.sent.pop_front() {
                self.order.remove(&gone);
                self.bytes -= bytes;
            }
            self.front += 1;
        }
    }

    /// Bytes of the requests counted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Requests counted.
    pub fn requests(&self) -> usize {
        self.order.len()
    }
}

/// Hashes a [`Key`] (one u64) with one multiplication (Fibonacci hashing):
/// the keys come from the bridge's own table, so no flood can be aimed at
/// the hash, and the default SipHash costs more than the rest of the
/// bookkeeping of a request.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::inflight::Table;

    #[test]
    fn a_reply_releases_its_request_and_all_sent_before_it() {
        let mut table = Table::default();
        let keys: Vec<Key> = (0..5).map(|i| table.insert(i)).collect();
        let mut queued = Queued::default();
        for (i, key) in keys.iter().enumerate() {
            queued.sent(*key, 100 * (i + 1));
        }
        assert_eq!((queued.bytes(), queued.requests()), (1500, 5));
        // The last send would block: taken back.
        queued.unsent(keys[4]);
        assert_eq!((queued.bytes(), queued.requests()), (1000, 4));
        // A late reply to the third (the first two timed out, unanswered).
        queued.answered(keys[2]);
        assert_eq!((queued.bytes(), queued.requests()), (400, 1));
        // Already released: nothing more.
        queued.answered(keys[0]);
        queued.unsent(keys[1]);
        assert_eq!(queued.bytes(), 400);
        queued.answered(keys[3]);
        assert_eq!((queued.bytes(), queued.requests()), (0, 0));
    }

    #[test]
    fn a_request_taken_back_between_others_leaves_the_order_intact() {
        let mut table = Table::default();
        let keys: Vec<Key> = (0..5).map(|i| table.insert(i)).collect();
        let mut queued = Queued::default();
        for key in &keys {
            queued.sent(*key, 10);
        }
        queued.unsent(keys[2]);
        assert_eq!((queued.bytes(), queued.requests()), (40, 4));
        queued.answered(keys[3]);
        assert_eq!((queued.bytes(), queued.requests()), (10, 1));
        queued.answered(keys[2]);
        assert_eq!(
            (queued.bytes(), queued.requests()),
            (10, 1),
            "taken back: no proof"
        );
        queued.sent(keys[2], 7);
        queued.answered(keys[2]);
        assert_eq!((queued.bytes(), queued.requests()), (0, 0));
    }
}
