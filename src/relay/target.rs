//! One configured target: its DEALER (the socket side) and what the request
//! path knows about it (the decision side), in one struct, so that the two
//! cannot drift apart the way two vectors indexed alike can.
//!
//! The socket is a type parameter: the request path ([`super::state`])
//! holds it but can do nothing with it; the poll loop sends on it. Tests
//! use `()`.

use super::breaker::Breaker;
use super::inflight::{Deadlines, Key};
use super::queued::Queued;
use super::stats::Histogram;
use crate::config;
use std::collections::VecDeque;
use std::time::Duration;

pub(super) struct Target<D> {
    /// The DEALER to the backend; `None` once a retired target is drained
    /// (its socket closed).
    pub dealer: Option<D>,
    pub name: String,
    pub endpoint: String,
    pub request_timeout: Duration,
    pub breaker: Breaker,
    pub deadlines: Deadlines,
    /// Requests in flight, including those waiting for a connection.
    pub in_flight: usize,
    /// Removed or re-pointed by a reload: takes no new requests; its
    /// dealer is closed once what is in flight is answered.
    pub retired: bool,
    /// Requests held until a backend is connected, oldest first. An entry
    /// whose key has left the table (expired) is skipped when sent, and
    /// dropped from the front of the queue when its request expires.
    pub waiting: VecDeque<(Key, Vec<zmq::Message>)>,
    /// Sent to the DEALER and not yet shown gone by a reply.
    pub queued: Queued,
    pub requests_total: u64,
    pub replies_total: u64,
    pub latency: Histogram,
    /// Why the service ended our last handshake, since the last one that
    /// succeeded (set by the loop from the DEALER's socket monitor): said
    /// to the requests that wait for it in vain, instead of "is it
    /// running?".
    pub refused: Option<&'static str>,
}

impl<D> Target<D> {
    pub fn new(target: &config::Target, breaker: Breaker, dealer: D) -> Target<D> {
        Target {
            dealer: Some(dealer),
            name: target.name.clone(),
            endpoint: target.endpoint.clone(),
            request_timeout: target.request_timeout,
            breaker,
            deadlines: Deadlines::default(),
            in_flight: 0,
            retired: false,
            waiting: VecDeque::new(),
            queued: Queued::default(),
            requests_total: 0,
            replies_total: 0,
            latency: Histogram::default(),
            refused: None,
        }
    }

    /// Retired and nothing in flight: its dealer may be closed.
    pub fn drained(&self) -> bool {
        self.retired && self.in_flight == 0
    }
}
