//! Values by transaction id that know what the next checkpoint must write
//! of them: each value marks whether it changed since the last checkpoint
//! and whether the store holds it, so that a transaction that comes and
//! goes between two checkpoints costs the store nothing, and one that goes
//! costs a delete only if it was written.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

/// A map by transaction id, with a fast hash: every record of a
/// transaction looks its id up.
pub type IdMap<V> = HashMap<Arc<str>, V, RandomState>;

#[derive(Debug)]
struct Slot<V> {
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
    pub delete: Vec<Arc<str>>,
    pub put: Vec<(Arc<str>, &'a V)>,
}

/// Values by transaction id, tracked for the checkpoints.
#[derive(Debug)]
pub struct Tracked<V> {
    map: IdMap<Slot<V>>,
    /// Ids whose value changed since the last checkpoint (some perhaps
    /// gone since).
    dirty: Vec<Arc<str>>,
    /// Ids gone since the last checkpoint whose value the store holds.
    unstored: Vec<Arc<str>>,
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
    pub fn restored(values: impl IntoIterator<Item = (Arc<str>, V, bool)>) -> Self {
        let mut t = Tracked::default();
        for (id, value, stored) in values {
            t.map.insert(
                id,
                Slot {
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

    pub fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&V> {
        self.map.get(id).map(|s| &s.value)
    }

    /// The value of `id`, marked changed.
    pub fn touch(&mut self, id: &Arc<str>) -> Option<&mut V> {
        let slot = self.map.get_mut(&**id)?;
        if self.track && !slot.dirty {
            slot.dirty = true;
            self.dirty.push(Arc::clone(id));
        }
        Some(&mut slot.value)
    }

    /// A new value for `id` (which has none).
    pub fn insert(&mut self, id: Arc<str>, value: V) {
        if self.track {
            self.dirty.push(Arc::clone(&id));
        }
        self.map.insert(
            id,
            Slot {
                value,
                dirty: self.track,
                stored: false,
            },
        );
    }

    pub fn remove(&mut self, id: &str) -> Option<V> {
        let (id, slot) = self.map.remove_entry(id)?;
        if self.track && slot.stored {
            self.unstored.push(id);
        }
        Some(slot.value)
    }

    /// What the checkpoint writes: the values changed since the last that
    /// `keep` says the store keeps, and deletes of those it held that are
    /// gone or no longer kept.
    pub fn take_writes(&mut self, keep: impl Fn(&V) -> bool) -> Writes<'_, V> {
        let mut delete = std::mem::take(&mut self.unstored);
        let mut put_ids = Vec::with_capacity(self.dirty.len());
        for id in self.dirty.drain(..) {
            let Some(slot) = self.map.get_mut(&*id) else {
                continue;
            };
            if !slot.dirty {
                // Listed twice: gone and back since the last checkpoint.
                continue;
            }
            slot.dirty = false;
            if keep(&slot.value) {
                slot.stored = true;
                put_ids.push(id);
            } else if slot.stored {
                slot.stored = false;
                delete.push(id);
            }
        }
        delete.sort_unstable();
        put_ids.sort_unstable();
        let put = put_ids
            .into_iter()
            .filter_map(|id| {
                let value = &self.map.get(&*id)?.value;
                Some((id, value))
            })
            .collect();
        Writes { delete, put }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<'a, V>(w: &Writes<'a, V>) -> (Vec<String>, Vec<String>) {
        (
            w.delete.iter().map(|id| id.to_string()).collect(),
            w.put.iter().map(|(id, _)| id.to_string()).collect(),
        )
    }

    #[test]
    fn what_comes_and_goes_between_checkpoints_is_not_written() {
        let mut t: Tracked<u32> = Tracked::default();
        t.insert(Arc::from("a"), 1);
        t.insert(Arc::from("b"), 2);
        assert_eq!(t.remove("a"), Some(1));
        let w = t.take_writes(|_| true);
        assert_eq!(ids(&w), (vec![], vec!["b".to_string()]));
        // Nothing changed since.
        let w = t.take_writes(|_| true);
        assert_eq!(ids(&w), (vec![], vec![]));
    }

    #[test]
    fn what_the_store_holds_is_deleted_when_gone_or_no_longer_kept() {
        let mut t: Tracked<u32> = Tracked::restored([
            (Arc::from("a"), 1, true),
            (Arc::from("b"), 2, true),
            (Arc::from("c"), 3, true),
            (Arc::from("d"), 4, false),
        ]);
        // Held another way: nothing to delete.
        t.remove("d");
        t.remove("a");
        *t.touch(&Arc::from("b")).unwrap() = 20;
        *t.touch(&Arc::from("c")).unwrap() = 30;
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
        t.remove("b");
        t.insert(Arc::from("b"), 4);
        let w = t.take_writes(|_| true);
        assert_eq!(ids(&w), (vec!["b".to_string()], vec!["b".to_string()]));
        // "c" is no longer held: gone, nothing to delete.
        t.remove("c");
        assert_eq!(ids(&t.take_writes(|_| true)), (vec![], vec![]));
    }

    #[test]
    fn untracked_values_are_never_written() {
        let mut t: Tracked<u32> = Tracked::restored([(Arc::from("a"), 1, true)]).untracked();
        t.insert(Arc::from("b"), 2);
        *t.touch(&Arc::from("b")).unwrap() = 3;
        t.remove("a");
        assert_eq!(t.get("b"), Some(&3));
        assert_eq!(ids(&t.take_writes(|_| true)), (vec![], vec![]));
        assert!(t.dirty.is_empty() && t.unstored.is_empty());
    }
}
