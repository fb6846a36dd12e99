//! Values by transaction (by its number, [`TxId::key`]) that know what the next checkpoint must write
//! of them: each value marks whether it changed since the last checkpoint
//! and whether the store holds it, so that a transaction that comes and
//! goes between two checkpoints costs the store nothing, and one that goes
//! costs a delete only if it was written.

use smol_str::SmolStr;
use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::TxId;

/// A map by transaction number, with a fast hash: every record of a
/// transaction looks it up.
pub type IdMap<V> = HashMap<u64, V, RandomState>;

#[derive(Debug)]
struct Slot<V> {
    /// The transaction's id, for the verdicts and the store.
    id: SmolStr,
    value: V,
    /// Changed since the last checkpoint (and listed in `dirty`).
    dirty: bool,
    /// Held by the store, as of the last checkpoint.
    stored: bool,
}

/// What a checkpoint writes: the values to put by id and the ids to
/// delete, each sorted by id. Deletes go first: an id deleted and put again
/// since the last checkpoint is in both.
#[derive(Debug)]
pub struct Writes<'a, V> {
    pub delete: Vec<SmolStr>,
    pub put: Vec<(SmolStr, &'a V)>,
}

/// Values by transaction, tracked for the checkpoints.
#[derive(Debug)]
pub struct Tracked<V> {
    map: IdMap<Slot<V>>,
    /// Numbers of the transactions whose value changed since the last
    /// checkpoint (some perhaps gone since).
    dirty: Vec<u64>,
    /// Ids gone since the last checkpoint whose value the store holds.
    unstored: Vec<SmolStr>,
    /// Changes are tracked (else nothing is written at checkpoints).
    track: bool,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked {
            map: IdMap::default(),
            dirty: Vec::new(),
            unstored: Vec::new(),
            track: true,
        }
    }
}

impl<V> Tracked<V> {
    /// Values restored from the store, each with whether it is held under
    /// its own id (else it is in the store another way).
    pub fn restored(values: impl IntoIterator<Item = (TxId, V, bool)>) -> Self {
        let mut t = Tracked::default();
        for (tx, value, stored) in values {
            t.map.insert(
                tx.key,
                Slot {
                    id: tx.id,
                    value,
                    dirty: false,
                    stored,
                },
            );
        }
        t
    }

    /// The same values, their changes no longer tracked: for state that
    /// is never written.
    pub fn untracked(mut self) -> Self {
        self.track = false;
        self.dirty = Vec::new();
        self.unstored = Vec::new();
        self
    }

    /// Whether changes are tracked.
    pub fn tracking(&self) -> bool {
        self.track
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// The id and value of transaction `key`.
    pub fn get(&self, key: u64) -> Option<(&SmolStr, &V)> {
        self.map.get(&key).map(|s| (&s.id, &s.value))
    }

    /// The id of transaction `key`.
    pub fn id(&self, key: u64) -> Option<&SmolStr> {
        self.map.get(&key).map(|s| &s.id)
    }

    /// The value of transaction `key`, marked changed.
    pub fn touch(&mut self, key: u64) -> Option<&mut V> {
        let slot = self.map.get_mut(&key)?;
        if self.track && !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key);
        }
        Some(&mut slot.value)
    }

    /// A new value for `tx` (which has none).
    pub fn insert(&mut self, tx: &TxId, value: V) {
        if self.track {
            self.dirty.push(tx.key);
        }
        self.map.insert(
            tx.key,
            Slot {
                id: tx.id.clone(),
                value,
                dirty: self.track,
                stored: false,
            },
        );
    }

    /// Takes out the id and value of transaction `key`.
    pub fn remove(&mut self, key: u64) -> Option<(SmolStr, V)> {
        let slot = self.map.remove(&key)?;
        if self.track && slot.stored {
            self.unstored.push(slot.id.clone());
        }
        Some((slot.id, slot.value))
    }

    /// What the checkpoint writes: the values changed since the last that
    /// `keep` says the store keeps, and deletes of those it held that are
    /// gone or no longer kept.
    pub fn take_writes(&mut self, keep: impl Fn(&V) -> bool) -> Writes<'_, V> {
        let mut delete = std::mem::take(&mut self.unstored);
        let mut put_keys = Vec::with_capacity(self.dirty.len());
        for key in self.dirty.drain(..) {
            let Some(slot) = self.map.get_mut(&key) else {
                continue;
            };
            if !slot.dirty {
                // Listed twice: gone and back since the last checkpoint.
                continue;
            }
            slot.dirty = false;
            if keep(&slot.value) {
                slot.stored = true;
                put_keys.push(key);
            } else if slot.stored {
                slot.stored = false;
                delete.push(slot.id.clone());
            }
        }
        delete.sort_unstable();
        let mut put: Vec<(SmolStr, &V)> = put_keys
            .into_iter()
            .filter_map(|key| {
                let slot = self.map.get(&key)?;
                Some((slot.id.clone(), &slot.value))
            })
            .collect();
        put.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        Writes { delete, put }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(id: &str) -> TxId {
        TxId::from(id)
    }

    fn key(id: &str) -> u64 {
        tx(id).key
    }

    fn ids<'a, V>(w: &Writes<'a, V>) -> (Vec<String>, Vec<String>) {
        (
            w.delete.iter().map(|id| id.to_string()).collect(),
            w.put.iter().map(|(id, _)| id.to_string()).collect(),
        )
    }

    #[test]
    fn what_comes_and_goes_between_checkpoints_is_not_written() {
        let mut t: Tracked<u32> = Tracked::default();
        t.insert(&tx("a"), 1);
        t.insert(&tx("b"), 2);
        assert_eq!(t.remove(key("a")), Some((SmolStr::new("a"), 1)));
        let w = t.take_writes(|_| true);
        assert_eq!(ids(&w), (vec![], vec!["b".to_string()]));
        // Nothing changed since.
        let w = t.take_writes(|_| true);
        assert_eq!(ids(&w), (vec![], vec![]));
    }

    #[test]
    fn what_the_store_holds_is_deleted_when_gone_or_no_longer_kept() {
        let mut t: Tracked<u32> = Tracked::restored([
            (tx("a"), 1, true),
            (tx("b"), 2, true),
            (tx("c"), 3, true),
            (tx("d"), 4, false),
        ]);
        // Held another way: nothing to delete.
        t.remove(key("d"));
        t.remove(key("a"));
        *t.touch(key("b")).unwrap() = 20;
        *t.touch(key("c")).unwrap() = 30;
        let w = t.take_writes(|v| *v < 25);
        assert_eq!(
            ids(&w),
            (
                vec!["a".to_string(), "c".to_string()],
                vec!["b".to_string()]
            )
        );
        assert_eq!(w.put[0].1, &20);
        // Gone and back: deleted, then put.
        t.remove(key("b"));
        t.insert(&tx("b"), 4);
        let w = t.take_writes(|_| true);
        assert_eq!(ids(&w), (vec!["b".to_string()], vec!["b".to_string()]));
        // "c" is no longer held: gone, nothing to delete.
        t.remove(key("c"));
        assert_eq!(ids(&t.take_writes(|_| true)), (vec![], vec![]));
    }

    #[test]
    fn untracked_values_are_never_written() {
        let mut t: Tracked<u32> = Tracked::restored([(tx("a"), 1, true)]).untracked();
        t.insert(&tx("b"), 2);
        *t.touch(key("b")).unwrap() = 3;
        t.remove(key("a"));
        assert_eq!(t.get(key("b")), Some((&SmolStr::new("b"), &3)));
        assert_eq!(ids(&t.take_writes(|_| true)), (vec![], vec![]));
        assert!(t.dirty.is_empty() && t.unstored.is_empty());
    }
}
