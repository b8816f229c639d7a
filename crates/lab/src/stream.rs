//! What a stream subscriber saw: numbered messages checked for order,
//! gaps and duplicates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a subscriber to a [`Publisher`]'s stream got: the publisher's
/// counters in arrival order, and what it was told.
#[derive(Debug, Default)]
pub struct Seen {
    pub counters: Vec<u64>,
    pub arrivals: Vec<Instant>,
    /// Messages reported lost, by count.
    pub gaps: u64,
    /// Losses reported without a count.
    pub unknown_gaps: u64,
    /// Moves to the other bridge.
    pub moves: u64,
    /// The numbering source (the bridge) of the first message delivered:
    /// whichever bridge's copy reached the subscriber first.
    pub first_source: Option<u64>,
}

impl Seen {
    /// A message's payload frame: the publisher's counter first.
    pub fn push(&mut self, payload: &[u8]) {
        if let Some(n) = payload.get(..8).and_then(|b| b.try_into().ok()) {
            self.counters.push(u64::from_be_bytes(n));
            self.arrivals.push(Instant::now());
        }
    }

    /// What a zbridge-client subscriber delivered.
    pub fn take(&mut self, delivery: zbridge_client::Delivery) {
        use zbridge_client::Delivery;
        match delivery {
            Delivery::Message(m) => {
                self.first_source.get_or_insert(m.source);
                if let Some(payload) = m.frames.get(1) {
                    self.push(payload);
                }
            }
            Delivery::Gap {
                missed: Some(n), ..
            } => self.gaps += n,
            Delivery::Gap { missed: None, .. } => self.unknown_gaps += 1,
            Delivery::Moved { .. } => self.moves += 1,
        }
    }

    /// Counters between the first and the last received that never came.
    pub fn missed(&self) -> u64 {
        let mut unique = self.counters.clone();
        unique.sort_unstable();
        unique.dedup();
        match (unique.first(), unique.last()) {
            (Some(first), Some(last)) => last - first + 1 - unique.len() as u64,
            _ => 0,
        }
    }

    pub fn longest_silence(&self) -> Duration {
        self.arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// A zbridge-client Subscriber to `a.` of `stream` on `pub_endpoints`,
/// recording into `seen` until `stop`.
pub fn follow_stream(
    pub_endpoints: Vec<String>,
    heartbeat_timeout: Duration,
    stream: &str,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<()>> {
    let mut settings = zbridge_client::ClientConfig::local();
    settings.pub_endpoints = pub_endpoints;
    settings.heartbeat_timeout = heartbeat_timeout;
    let stream = stream.to_string();
    std::thread::spawn(move || {
        let mut subscriber =
            zbridge_client::Subscriber::connect(&settings, Some(&stream), &[b"a.".to_vec()])?;
        while !stop.load(Ordering::Relaxed) {
            if let Some(delivery) = subscriber.recv(Duration::from_millis(50))? {
                seen.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .take(delivery);
            }
        }
        Ok(())
    })
}
