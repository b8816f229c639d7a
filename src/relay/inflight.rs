//! The in-flight table: requests sent to a backend and not yet answered.
//!
//! Entries live in a slab; a [`Key`] is the slot index plus a generation, so
//! a reply that arrives after its slot was reused (a late reply to a request
//! that timed out) finds nothing instead of the wrong client. The key is the
//! envelope frame the bridge puts before the backend's delimiter, and the
//! backend echoes it back. Deadlines sit in per-target FIFO queues: one
//! target has one timeout, so insertion order is deadline order and expiry
//! is O(1). Answered entries leave the queue lazily.

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u64);

impl Key {
    pub const LEN: usize = 8;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        self.0.to_le_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        bytes.try_into().ok().map(|b| Key(u64::from_le_bytes(b)))
    }

    fn new(index: u32, generation: u32) -> Key {
        Key(u64::from(generation) << 32 | u64::from(index))
    }

    fn index(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

struct Slot<T> {
    generation: u32,
    entry: Option<T>,
}

pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Table<T> {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.entry.is_some()).count()
    }

    pub fn insert(&mut self, entry: T) -> Key {
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.entry = Some(entry);
                Key::new(index, slot.generation)
            }
            None => {
                let index = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                Key::new(index, 0)
            }
        }
    }

    pub fn get(&self, key: Key) -> Option<&T> {
        self.slots
            .get(key.index())
            .filter(|slot| slot.generation == key.generation())
            .and_then(|slot| slot.entry.as_ref())
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slots
            .get_mut(key.index())
            .filter(|slot| slot.generation == key.generation())
            .and_then(|slot| slot.entry.as_mut())
    }

    pub fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.index())?;
        if slot.generation != key.generation() {
            return None;
        }
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index() as u32);
        Some(entry)
    }

    /// Remove every entry that `pred` selects, e.g. to answer all the
    /// requests of a frontend that is closing.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.entry.as_ref().is_some_and(&mut pred) {
                removed.extend(slot.entry.take());
                slot.generation = slot.generation.wrapping_add(1);
                self.free.push(index as u32);
            }
        }
        removed
    }
}

/// Deadlines of one target's requests, in the order they were sent.
#[derive(Default)]
pub struct Deadlines {
    queue: VecDeque<(Instant, Key)>,
}

impl Deadlines {
    pub fn push(&mut self, deadline: Instant, key: Key) {
        self.queue.push_back((deadline, key));
    }

    /// The next request of this queue still in `table` whose deadline has
    /// passed, removed from the queue.
    pub fn pop_expired<T>(&mut self, now: Instant, table: &Table<T>) -> Option<Key> {
        while let Some(&(deadline, key)) = self.queue.front() {
            if table.get(key).is_none() {
                self.queue.pop_front();
            } else if deadline <= now {
                self.queue.pop_front();
                return Some(key);
            } else {
                return None;
            }
        }
        None
    }

    /// The earliest deadline of a request still in `table`.
    pub fn next<T>(&mut self, table: &Table<T>) -> Option<Instant> {
        while let Some(&(deadline, key)) = self.queue.front() {
            if table.get(key).is_some() {
                return Some(deadline);
            }
            self.queue.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_round_trip_and_stale_keys_miss() {
        let mut t = Table::default();
        let a = t.insert("a");
        assert_eq!(Key::from_bytes(&a.to_bytes()), Some(a));
        assert_eq!(Key::from_bytes(b"short"), None);
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b");
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert_eq!(t.remove(a), None, "a late reply finds nothing");
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn memory_is_reused() {
        let mut t = Table::default();
        for i in 0..10_000 {
            let k = t.insert(i);
            assert_eq!(t.remove(k), Some(i));
        }
        assert_eq!(t.slots.len(), 1);
    }

    #[test]
    fn expiry_skips_answered_requests() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let mut d = Deadlines::default();
        let keys: Vec<Key> = (0..3).map(|i| t.insert(i)).collect();
        for (i, k) in keys.iter().enumerate() {
            d.push(t0 + Duration::from_secs(i as u64 + 1), *k);
        }
        t.remove(keys[0]);
        assert_eq!(d.next(&t), Some(t0 + Duration::from_secs(2)));
        assert_eq!(d.pop_expired(t0 + Duration::from_secs(1), &t), None);
        assert_eq!(
            d.pop_expired(t0 + Duration::from_secs(3), &t),
            Some(keys[1])
        );
        t.remove(keys[1]);
        assert_eq!(
            d.pop_expired(t0 + Duration::from_secs(3), &t),
            Some(keys[2])
        );
        t.remove(keys[2]);
        assert_eq!(d.next(&t), None);
    }

    #[test]
    fn remove_where_takes_only_what_it_selects_and_invalidates() {
        let mut t = Table::default();
        let a = t.insert(1);
        let b = t.insert(2);
        let c = t.insert(3);
        let mut odd = t.remove_where(|v| v % 2 == 1);
        odd.sort();
        assert_eq!(odd, [1, 3]);
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.remove(c), None);
        assert_eq!(t.get(b), Some(&2));
        t.insert(4);
        t.insert(5);
        assert_eq!(t.len(), 3);
        assert_eq!(t.slots.len(), 3, "freed slots are reused");
    }
}
