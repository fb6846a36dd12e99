//! Transactions by the time they are due, for the detector's open and
//! closed transactions and the summaries' final times.
//!
//! A transaction's time moves as its records arrive (its earliest record,
//! then its END). Rather than finding and removing its old entry each time,
//! a new entry is pushed and the old one is left behind: the owner says
//! which entries are current (the time its map holds for the number), and
//! stale ones are skipped when they come first, or thrown away when they
//! outnumber the current ones. A binary heap of numbers does this without
//! the allocations and pointer chasing of an ordered set.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::model::Millis;

/// Stale entries kept at most beyond twice the current ones, before they
/// are thrown away.
const STALE_SLACK: usize = 1024;

/// (due, number) entries, earliest first and, of entries as early, the
/// lowest number first.
#[derive(Debug, Default)]
pub struct DueQueue {
    heap: BinaryHeap<Reverse<(Millis, u64)>>,
}

impl DueQueue {
    /// Files transaction `key` as due at `due`; an entry filed before for
    /// it becomes stale unless its time is still current.
    pub fn push(&mut self, due: Millis, key: u64) {
        self.heap.push(Reverse((due, key)));
    }

    /// Removes and returns the first current entry due at or before `wm`,
    /// throwing away the stale ones before it.
    pub fn pop_due(
        &mut self,
        wm: Millis,
        current: impl Fn(Millis, u64) -> bool,
    ) -> Option<(Millis, u64)> {
        while let Some(&Reverse((due, key))) = self.heap.peek() {
            if due > wm {
                return None;
            }
            self.heap.pop();
            if current(due, key) {
                return Some((due, key));
            }
        }
        None
    }

    /// Removes and returns the first current entry.
    pub fn pop_first(&mut self, current: impl Fn(Millis, u64) -> bool) -> Option<(Millis, u64)> {
        self.pop_due(Millis::MAX, current)
    }

    /// Throws the stale entries away once they outnumber the `live`
    /// current ones (plus some slack), so that memory stays proportional
    /// to the transactions held.
    pub fn compact(&mut self, live: usize, current: impl Fn(Millis, u64) -> bool) {
        if self.heap.len() > live.saturating_mul(2).saturating_add(STALE_SLACK) {
            self.heap.retain(|Reverse((due, key))| current(*due, *key));
        }
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn entries_come_earliest_first_then_by_number_skipping_stale_ones() {
        let mut due: HashMap<u64, Millis> = HashMap::new();
        let mut q = DueQueue::default();
        for (key, at) in [(7, 30), (3, 30), (5, 10), (9, 20)] {
            due.insert(key, at);
            q.push(at, key);
        }
        // 5 moves from 10 to 40: its entry at 10 is stale.
        due.insert(5, 40);
        q.push(40, 5);
        let current = |at: Millis, key: u64| due.get(&key) == Some(&at);
        assert_eq!(q.pop_due(25, current), Some((20, 9)));
        assert_eq!(q.pop_due(25, current), None, "nothing else due by 25");
        assert_eq!(q.pop_first(current), Some((30, 3)));
        assert_eq!(q.pop_first(current), Some((30, 7)));
        assert_eq!(q.pop_first(current), Some((40, 5)));
        assert_eq!(q.pop_first(current), None);
    }

    #[test]
    fn stale_entries_are_thrown_away_once_they_outnumber_the_current() {
        let mut q = DueQueue::default();
        // One transaction whose time moves 5 000 times.
        for at in 0..5_000 {
            q.push(at, 1);
            q.compact(1, |due, _| due == at);
        }
        assert!(q.len() <= 2 + STALE_SLACK + 1, "{} entries", q.len());
        assert_eq!(q.pop_first(|due, _| due == 4_999), Some((4_999, 1)));
    }
}
