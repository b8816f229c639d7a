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
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub(super) struct Queued {
    /// By send order: the request and its bytes.
    sent: BTreeMap<u64, (Key, usize)>,
    order: HashMap<Key, u64>,
    next: u64,
    bytes: usize,
}

impl Queued {
    /// A request of `bytes` handed to the DEALER.
    pub fn sent(&mut self, key: Key, bytes: usize) {
        self.sent.insert(self.next, (key, bytes));
        self.order.insert(key, self.next);
        self.next += 1;
        self.bytes += bytes;
    }

    /// A send that did not happen after all (it would block, or failed).
    pub fn unsent(&mut self, key: Key) {
        if let Some((_, bytes)) = self.order.remove(&key).and_then(|n| self.sent.remove(&n)) {
            self.bytes -= bytes;
        }
    }

    /// The reply to `key` came: it, and everything sent before it, has
    /// left the queue.
    pub fn answered(&mut self, key: Key) {
        let Some(&n) = self.order.get(&key) else {
            return;
        };
        let later = self.sent.split_off(&(n + 1));
        for (key, bytes) in std::mem::replace(&mut self.sent, later).into_values() {
            self.order.remove(&key);
            self.bytes -= bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn requests(&self) -> usize {
        self.sent.len()
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
}
