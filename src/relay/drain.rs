//! When a draining frontend closes, as pure code: the close must not cross
//! a lockstep client's next request.
//!
//! A plain REQ client sends its next request as soon as it has read a
//! reply (after its think time). A close that reaches it first is harmless:
//! its libzmq keeps the request and delivers it to whoever holds the port
//! next. A close that crosses the request loses it, and a REQ socket with
//! no timeout waits for ever. So a draining port closes:
//!
//! - **right behind a reply**: in the round that sent a reply, once nothing
//!   is in flight on the port and no request waits to be read; the reply
//!   and the FIN leave in one burst ([`super::cork`]), so the client sees
//!   the close as it reads the reply, before it can send;
//! - **after a quiet window** when no reply goes out: from the start of the
//!   drain the port waits up to `window` for its clients' next requests
//!   (a stop that lands after a reply went out, while the client thinks),
//!   relays them and closes behind their replies. Only a port whose
//!   clients send nothing for the whole window closes bare; a client whose
//!   request is on the wire at that very moment is the residual case
//!   (docs/HA.md measures it);
//! - **at once** when it has no client connection at all;
//! - at the latest at `drain_timeout`, whatever is left.
//!
//! The loop tells [`Drain::look`] what it sees after each round; it never
//! reads a clock here.

use std::time::Instant;

/// A draining frontend's close decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    /// Past it, the port closes whatever is left (`drain_timeout`).
    pub until: Instant,
    /// Until it, a quiet port waits for its clients' next requests.
    quiet_until: Instant,
    /// Replies sent on the port when last looked at.
    replies: u64,
}

/// What [`Drain::look`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stay open: flush this round's replies and look again next round.
    Open,
    /// Close now: a reply just went out and nothing is left in flight.
    BehindReply,
    /// Close now: no client sent anything for the whole window.
    Quiet,
    /// Close now: no client is connected.
    NoClients,
    /// Close now: `drain_timeout` has passed; what is left gets `draining`.
    Timeout,
}

/// What the loop sees of a draining port after a round.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Replies sent on the port so far (a running count).
    pub replies: u64,
    /// Nothing in flight on the port and no request waiting to be read.
    pub idle: bool,
    /// Client connections open on the port.
    pub connections: usize,
}

impl Drain {
    /// A drain that starts at `now` with `replies` sent on the port so far:
    /// quiet for `window` at most, closed by `until` at the latest.
    pub fn new(now: Instant, until: Instant, window: std::time::Duration, replies: u64) -> Drain {
        Drain {
            until,
            quiet_until: zbridge_protocol::time::later(now, window).min(until),
            replies,
        }
    }

    /// Decide, after a round of the loop at `now`.
    pub fn look(&mut self, now: Instant, seen: Seen) -> Verdict {
        let replied = seen.replies != self.replies;
        self.replies = seen.replies;
        if now >= self.until {
            Verdict::Timeout
        } else if !seen.idle {
            Verdict::Open
        } else if seen.connections == 0 {
            Verdict::NoClients
        } else if replied {
            Verdict::BehindReply
        } else if now >= self.quiet_until {
            Verdict::Quiet
        } else {
            Verdict::Open
        }
    }

    /// When [`Drain::look`] may decide otherwise with nothing else
    /// happening.
    pub fn next_deadline(&self) -> Instant {
        self.quiet_until.min(self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WINDOW: Duration = Duration::from_secs(2);
    const DRAIN: Duration = Duration::from_secs(5);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn seen(replies: u64, idle: bool, connections: usize) -> Seen {
        Seen {
            replies,
            idle,
            connections,
        }
    }

    /// (ms since the drain began, what the loop sees, the verdict), in
    /// order, each from the drain that began with 10 replies sent.
    fn table(rows: &[(u64, Seen, Verdict)]) {
        let t0 = Instant::now();
        let mut drain = Drain::new(t0, ms(t0, DRAIN.as_millis() as u64), WINDOW, 10);
        for (i, &(at, seen, want)) in rows.iter().enumerate() {
            assert_eq!(
                drain.look(ms(t0, at), seen),
                want,
                "row {i}: at {at} ms, {seen:?}"
            );
        }
    }

    #[test]
    fn a_request_in_flight_closes_the_port_right_behind_its_reply() {
        table(&[
            (0, seen(10, false, 1), Verdict::Open),
            (150, seen(10, false, 1), Verdict::Open),
            (200, seen(11, true, 1), Verdict::BehindReply),
        ]);
    }

    #[test]
    fn a_stop_after_a_reply_waits_for_the_next_request_and_closes_behind_its_answer() {
        // The stop lands while the client thinks (its last reply went out
        // before the drain): the port stays open, relays the next request
        // and closes behind that one's reply.
        table(&[
            (0, seen(10, true, 1), Verdict::Open),
            (1, seen(10, true, 1), Verdict::Open),
            (20, seen(10, false, 1), Verdict::Open),
            (220, seen(11, true, 1), Verdict::BehindReply),
        ]);
    }

    #[test]
    fn a_request_answered_within_one_round_still_closes_behind_its_reply() {
        // Read, relayed, answered and replied between two looks.
        table(&[
            (0, seen(10, true, 1), Verdict::Open),
            (900, seen(11, true, 1), Verdict::BehindReply),
        ]);
    }

    #[test]
    fn clients_that_send_nothing_for_the_window_close_the_port_bare() {
        table(&[
            (0, seen(10, true, 2), Verdict::Open),
            (1_999, seen(10, true, 2), Verdict::Open),
            (2_000, seen(10, true, 2), Verdict::Quiet),
        ]);
    }

    #[test]
    fn a_port_with_no_client_connection_closes_at_once() {
        table(&[(0, seen(10, true, 0), Verdict::NoClients)]);
    }

    #[test]
    fn a_reply_with_more_in_flight_waits_for_the_last_one() {
        // Two clients: the first one's reply leaves the port busy; the
        // second one's closes it.
        table(&[
            (0, seen(10, false, 2), Verdict::Open),
            (50, seen(11, false, 2), Verdict::Open),
            (60, seen(11, false, 2), Verdict::Open),
            (90, seen(12, true, 2), Verdict::BehindReply),
        ]);
    }

    #[test]
    fn a_reply_already_looked_at_does_not_close_a_port_that_falls_quiet_later() {
        table(&[
            (0, seen(10, false, 2), Verdict::Open),
            (50, seen(11, false, 2), Verdict::Open),
            // The other request got its answer from the loop's `Closed`
            // elsewhere (e.g. it expired): no reply this round.
            (60, seen(11, true, 2), Verdict::Open),
            (2_000, seen(11, true, 2), Verdict::Quiet),
        ]);
    }

    #[test]
    fn a_port_that_never_falls_quiet_closes_at_drain_timeout() {
        table(&[
            (0, seen(10, false, 1), Verdict::Open),
            (4_999, seen(40, false, 1), Verdict::Open),
            (5_000, seen(41, false, 1), Verdict::Timeout),
        ]);
    }

    #[test]
    fn the_window_never_outlasts_the_drain() {
        let t0 = Instant::now();
        let mut drain = Drain::new(t0, ms(t0, 300), WINDOW, 0);
        assert_eq!(drain.next_deadline(), ms(t0, 300));
        assert_eq!(drain.look(ms(t0, 299), seen(0, true, 1)), Verdict::Open);
        assert_eq!(drain.look(ms(t0, 300), seen(0, true, 1)), Verdict::Timeout);
    }

    #[test]
    fn the_next_deadline_is_the_end_of_the_window() {
        let t0 = Instant::now();
        let drain = Drain::new(t0, ms(t0, 5_000), WINDOW, 0);
        assert_eq!(drain.next_deadline(), ms(t0, 2_000));
    }
}
