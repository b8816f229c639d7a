//! Rate limits (DESIGN §8): a token bucket per client identity and one for
//! the whole bridge, as pure code (callers pass `now`).
//!
//! The table of client buckets is bounded: when it is full, buckets that
//! have refilled completely (idle clients; a new bucket would be the same)
//! are dropped, and if every client is busy, new identities share one
//! overflow bucket. A flood of fresh identities therefore costs bounded
//! memory and is still limited.

use crate::bucket::Bucket;
use crate::config::Rate;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Client,
    Global,
}

pub struct Limiter {
    per_client: Option<Rate>,
    global: Option<(Rate, Bucket)>,
    clients: HashMap<Vec<u8>, Bucket>,
    overflow: Option<Bucket>,
    capacity: usize,
}

impl Limiter {
    pub fn new(
        per_client: Option<Rate>,
        global: Option<Rate>,
        capacity: usize,
        now: Instant,
    ) -> Limiter {
        Limiter {
            per_client,
            global: global.map(|r| (r, Bucket::full(r, now))),
            clients: HashMap::new(),
            overflow: None,
            capacity: capacity.max(1),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_client.is_some() || self.global.is_some()
    }

    /// Client buckets held.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Admit one request from `client`, or say which limit refused it and
    /// when to retry. A request the global limit refuses costs the client
    /// nothing.
    pub fn admit(&mut self, client: &[u8], now: Instant) -> Result<(), (Limit, Duration)> {
        if let Some(rate) = self.per_client {
            let bucket = self.bucket(client, rate, now);
            bucket
                .take(rate, now)
                .map_err(|wait| (Limit::Client, wait))?;
        }
        if let Some((rate, bucket)) = &mut self.global {
            if let Err(wait) = bucket.take(*rate, now) {
                if let Some(rate) = self.per_client {
                    self.bucket(client, rate, now).tokens += 1.0;
                }
                return Err((Limit::Global, wait));
            }
        }
        Ok(())
    }

    fn bucket(&mut self, client: &[u8], rate: Rate, now: Instant) -> &mut Bucket {
        if !self.clients.contains_key(client) && self.clients.len() >= self.capacity {
            // Idle clients' buckets are full again: dropping them loses
            // nothing.
            self.clients.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate.burst
            });
        }
        if self.clients.contains_key(client) || self.clients.len() < self.capacity {
            return self
                .clients
                .entry(client.to_vec())
                .or_insert_with(|| Bucket::full(rate, now));
        }
        self.overflow.get_or_insert_with(|| Bucket::full(rate, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(RATE), None, 100, t0);
        for _ in 0..5 {
            assert_eq!(l.admit(b"a", t0), Ok(()));
        }
        let (limit, wait) = l.admit(b"a", t0).unwrap_err();
        assert_eq!(limit, Limit::Client);
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(l.admit(b"b", t0), Ok(()), "other clients are not affected");
        assert_eq!(l.admit(b"a", t0 + Duration::from_millis(100)), Ok(()));
        assert!(l.admit(b"a", t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn the_global_limit_refuses_without_charging_the_client() {
        let t0 = Instant::now();
        let global = Rate {
            per_second: 1.0,
            burst: 2.0,
        };
        let mut l = Limiter::new(Some(RATE), Some(global), 100, t0);
        assert!(l.admit(b"a", t0).is_ok());
        assert!(l.admit(b"b", t0).is_ok());
        assert_eq!(l.admit(b"c", t0).unwrap_err().0, Limit::Global);
        // c still has its whole burst once the global bucket refills.
        for i in 0..5 {
            assert!(l.admit(b"c", t0 + Duration::from_secs(10 + i)).is_ok());
        }
    }

    #[test]
    fn a_flood_of_identities_costs_bounded_memory_and_is_still_limited() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(RATE), None, 1000, t0);
        let mut admitted = 0;
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            if l.admit(&i.to_le_bytes(), now).is_ok() {
                admitted += 1;
            }
            assert!(l.clients() <= 1000);
        }
        // 1000 tracked clients get their burst; the rest share one bucket.
        assert!(admitted <= 1000 + 5 + 2, "{admitted}");
        // Idle clients make room again.
        let later = t0 + Duration::from_secs(60);
        assert!(l.admit(b"newcomer", later).is_ok());
        assert_eq!(l.clients(), 1);
    }
}
