//! The slots' index (see [`super::cache`]): the arena positions of the
//! slots, found by their key's hash.
//!
//! An open-addressing table (linear probing) of 8-byte entries, each an
//! arena position and the low half of its key's hash. A lookup reads the
//! entries from the one its hash names onwards, most often within one cache
//! line, and the address of that line follows from the hash alone, so a
//! worker asks for it ahead of its lookup ([`Index::prefetch`]). (A
//! `hashbrown` table reads its control bytes, then its entry elsewhere, and
//! does not say where either is.) With a million slots a worker, the index
//! is larger than the CPU's caches and most lookups otherwise wait for
//! memory.
//!
//! The index is in [`PARTS`] parts by the high half of the hash. A part
//! grows by moving its entries into a table twice the size, during which
//! the worker does nothing else: a sixty-fourth of the slots at a time.
//! Growing reads only the part itself: an entry carries the hash bits that
//! place it.

/// Parts of the index (see the module doc).
const PARTS: usize = 64;

/// A part's entries, at most: three quarters of its places (a lookup of an
/// absent key then reads about eight entries, one cache line).
const MAX_LOAD: (usize, usize) = (3, 4);

/// Bytes a slot's entry takes, with the spare room of a full part.
pub(super) const ENTRY_BYTES: usize = size_of::<Entry>() * MAX_LOAD.1 / MAX_LOAD.0;

/// The position of an empty place.
const EMPTY_AT: u32 = u32::MAX;

/// An entry: the arena position of a slot and the low half of its key's
/// hash ([`EMPTY_AT`]: an empty place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    at: u32,
    low: u32,
}

const EMPTY: Entry = Entry {
    at: EMPTY_AT,
    low: 0,
};

/// Which part holds a hash: bits that [`Entry`] does not keep.
fn part_of(hash: u64) -> usize {
    ((hash >> 32) % PARTS as u64) as usize
}

pub(super) struct Index {
    parts: Vec<Part>,
}

/// A part: no places, or a power of two of them.
#[derive(Default)]
struct Part {
    entries: Vec<Entry>,
    len: usize,
}

impl Index {
    pub fn new() -> Self {
        Index {
            parts: (0..PARTS).map(|_| Part::default()).collect(),
        }
    }

    /// The first position filed under `hash` that `is` accepts.
    pub fn find(&self, hash: u64, is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.parts[part_of(hash)].find(hash as u32, is)
    }

    /// Files position `at` under `hash`.
    pub fn insert(&mut self, hash: u64, at: u32) {
        debug_assert_ne!(at, EMPTY_AT, "a position of the arena");
        self.parts[part_of(hash)].insert(Entry {
            at,
            low: hash as u32,
        });
    }

    /// Removes position `at`, filed under `hash`; false if it was not.
    pub fn remove(&mut self, hash: u64, at: u32) -> bool {
        self.parts[part_of(hash)].remove(hash as u32, at)
    }

    /// Asks the CPU to load the entries a lookup of `hash` reads first (see
    /// the module doc).
    pub fn prefetch(&self, hash: u64) {
        let part = &self.parts[part_of(hash)];
        if let Some(entry) = part.entries.get(part.home(hash as u32)) {
            prefetch(entry);
        }
    }
}

impl Part {
    fn mask(&self) -> usize {
        self.entries.len().wrapping_sub(1)
    }

    /// The place where a lookup of an entry of `low` starts.
    fn home(&self, low: u32) -> usize {
        low as usize & self.mask()
    }

    fn find(&self, low: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let mut i = self.home(low);
        loop {
            let entry = self.entries[i];
            if entry.at == EMPTY_AT {
                return None;
            }
            if entry.low == low && is(entry.at) {
                return Some(entry.at);
            }
            i = (i + 1) & self.mask();
        }
    }

    fn insert(&mut self, entry: Entry) {
        if (self.len + 1) * MAX_LOAD.1 > self.entries.len() * MAX_LOAD.0 {
            let places = (self.entries.len() * 2).max(16);
            let old = std::mem::replace(&mut self.entries, vec![EMPTY; places]);
            old.into_iter()
                .filter(|e| e.at != EMPTY_AT)
                .for_each(|e| self.place(e));
        }
        self.place(entry);
        self.len += 1;
    }

    /// Puts `entry` in the first empty place from its home on.
    fn place(&mut self, entry: Entry) {
        let mut i = self.home(entry.low);
        while self.entries[i].at != EMPTY_AT {
            i = (i + 1) & self.mask();
        }
        self.entries[i] = entry;
    }

    /// Removes the entry of `at` and moves back the entries after it that
    /// may take its place, so that no lookup meets a gap before the entry
    /// it looks for (no marker of removed entries is needed).
    fn remove(&mut self, low: u32, at: u32) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let mask = self.mask();
        let mut hole = self.home(low);
        loop {
            match self.entries[hole] {
                Entry { at: EMPTY_AT, .. } => return false,
                e if e.at == at => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let entry = self.entries[j];
            if entry.at == EMPTY_AT {
                break;
            }
            // The entry at `j` may fill the hole if its lookup passes the
            // hole on the way from its home to `j`.
            let from_home = j.wrapping_sub(self.home(entry.low)) & mask;
            if from_home >= (j.wrapping_sub(hole) & mask) {
                self.entries[hole] = entry;
                hole = j;
            }
        }
        self.entries[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

/// Asks the CPU to load every cache line of `value` into its cache, for a
/// read soon after; nothing on other architectures.
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (value as *const T).cast::<i8>();
        for offset in (0..size_of::<T>()).step_by(64) {
            // SAFETY: SSE is part of x86_64. A prefetch is a hint: it reads
            // nothing into the program and cannot fault, and the address
            // stays within `value`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Hashes in few parts and with few low bits, so that entries collide,
    /// wrap around the end of a part and move back on removal.
    fn crowded_hash() -> impl Strategy<Value = u64> {
        (0u64..2, 0u64..64).prop_map(|(part, low)| (part << 32) | low)
    }

    proptest! {
        /// The index finds what a map of the same inserts and removals
        /// holds, and nothing else.
        #[test]
        fn finds_what_was_filed_and_not_removed(
            ops in prop::collection::vec((any::<bool>(), crowded_hash(), 0u32..300), 1..600),
        ) {
            let mut index = Index::new();
            let mut model: HashMap<u32, u64> = HashMap::new();
            for (insert, hash, at) in ops {
                match (insert, model.get(&at).copied()) {
                    (true, None) => {
                        index.insert(hash, at);
                        model.insert(at, hash);
                    }
                    (false, Some(filed)) => {
                        prop_assert!(index.remove(filed, at));
                        model.remove(&at);
                    }
                    (false, None) => prop_assert!(!index.remove(hash, at)),
                    (true, Some(_)) => {}
                }
                for (&at, &hash) in &model {
                    prop_assert_eq!(index.find(hash, |a| a == at), Some(at));
                }
                prop_assert_eq!(index.find(hash, |a| !model.contains_key(&a)), None);
            }
            let filed: usize = index.parts.iter().map(|p| p.len).sum();
            prop_assert_eq!(filed, model.len());
        }
    }

    #[test]
    fn a_part_grows_before_it_is_three_quarters_full() {
        let mut index = Index::new();
        for at in 0..1000 {
            index.insert(u64::from(at) * 0x9e37_79b9, at);
        }
        for part in &index.parts {
            assert!(
                part.len * 4 <= part.entries.len() * 3,
                "{} of {}",
                part.len,
                part.entries.len()
            );
        }
        assert!(
            (0..1000).all(|at| index.find(u64::from(at) * 0x9e37_79b9, |a| a == at) == Some(at))
        );
    }
}
