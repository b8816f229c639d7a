//! A small seeded random source (xorshift64) for fault times and phases:
//! repeatable from its seed, no dependency.

use std::time::Duration;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration in `[from, to)`, to the microsecond.
    pub fn between(&mut self, from: Duration, to: Duration) -> Duration {
        let span = to.saturating_sub(from).as_micros().max(1) as u64;
        from + Duration::from_micros(self.draw() % span)
    }
}
