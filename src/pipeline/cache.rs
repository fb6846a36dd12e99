//! A worker's slots: the key or entity state it keeps in memory, which of
//! them changed since the last checkpoint, and which may leave memory.
//!
//! At each checkpoint the changed slots are persisted: written to the store
//! when state is kept, else only noted as the most recently used. Writing
//! them need not stop the worker: [`Slots::begin`] marks the slots changed
//! before the checkpoint, [`Slots::save_some`] writes some of them at a
//! time, and a marked slot about to change is written first, so the
//! checkpoint holds every slot as it was at the checkpoint (copy on write).
//! Then [`Slots::evict`] lets slots leave memory, oldest persisted first, until
//! the worker is back under its share of `state.cache_size`. A slot may
//! leave only when the store holds its current value and the checkpoint
//! that wrote it is committed, so that reading it back gives the same
//! state. When state is not kept (`vigil check` without `--state`) the
//! store holds nothing of a slot until it is evicted: the worker then
//! writes it ("spills" it) to the store at once, outside the checkpoint
//! (nothing resumes from that store), and it leaves; such a worker also
//! persists and evicts between checkpoints while a watermark fires more
//! timers than its budget holds. Slots that hold
//! nothing any more (finished keys) leave the same way, once their deletion
//! is in the store.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::mem::size_of;
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::detect::entity::EntityState;
use crate::detect::key::{Fill, Invalidation, KeyChange, KeyState};
use crate::hash;
use crate::state::{StateBatch, StateError};

/// Approximate heap bytes of a value, for the budget.
pub(super) trait Footprint {
    fn heap_bytes(&self) -> usize;
}

/// The key of a slot.
pub(super) trait SlotKey: Clone + Eq + Hash + Footprint {
    fn bytes(&self) -> &[u8];
}

impl SlotKey for Arc<str> {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl SlotKey for Arc<[u8]> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Parts of the slots' map. A hash map grows by moving every entry to a
/// table twice the size, during which the worker does nothing else: one
/// map of a few hundred thousand slots held records back for up to 100 ms.
/// A part grows with a sixty-fourth of the slots.
const PARTS: usize = 64;

/// Bytes of a shared (`Arc`) slice of `len` bytes: the bytes, the counts,
/// the allocator's header. Strings shared with other slots are counted in
/// each (the estimate errs on the side of memory).
fn shared_bytes(len: usize) -> usize {
    len + 2 * size_of::<usize>() + 16
}

fn arc_bytes(s: &str) -> usize {
    shared_bytes(s.len())
}

impl Footprint for Arc<str> {
    fn heap_bytes(&self) -> usize {
        arc_bytes(self)
    }
}

impl Footprint for Arc<[u8]> {
    fn heap_bytes(&self) -> usize {
        shared_bytes(self.len())
    }
}

impl Footprint for KeyState {
    fn heap_bytes(&self) -> usize {
        let strings = |service: &Option<Arc<str>>, topic: &str| {
            service.as_deref().map_or(0, arc_bytes) + arc_bytes(topic)
        };
        let changes: usize = self
            .changes
            .iter()
            .map(|c| {
                arc_bytes(&c.table)
                    + arc_bytes(&c.pk)
                    + arc_bytes(&c.evidence.topic)
                    + c.cover
                        .as_ref()
                        .map_or(0, |cv| strings(&cv.service, &cv.evidence.topic))
            })
            .sum();
        let invalidations: usize = self
            .invalidations
            .iter()
            .map(|i| strings(&i.service, &i.evidence.topic))
            .sum();
        let fills: usize = self
            .fills
            .iter()
            .chain(&self.judged)
            .map(|f| strings(&f.service, &f.evidence.topic))
            .sum();
        self.changes.capacity() * size_of::<KeyChange>()
            + self.invalidations.capacity() * size_of::<Invalidation>()
            + (self.fills.capacity() + self.judged.capacity()) * size_of::<Fill>()
            + self.seen.capacity() * size_of::<u64>()
            + changes
            + invalidations
            + fills
    }
}

impl Footprint for EntityState {
    fn heap_bytes(&self) -> usize {
        self.recent.capacity() * size_of::<u64>()
    }
}

/// What a slot's value says of itself at a checkpoint.
pub(super) trait Cached: Footprint {
    /// Holds nothing: the slot can leave memory, and the store forget it.
    fn is_finished(&self) -> bool;
}

/// A write of a slot to the store: its current value, or its deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Save {
    Put,
    Delete,
}

/// Writes a slot to a batch: the slot's key, scope and value, whether state
/// is kept (`durable`), and what to write.
pub(super) type Saver<K, V> = fn(&mut StateBatch, bool, &K, i32, &mut V, Save);

/// [`Slot::changed_in`] of a slot unchanged since it was persisted or read.
const UNCHANGED: u64 = 0;

pub(super) struct Slot<V> {
    pub value: V,
    /// The input partition number the slot belongs to.
    pub scope: i32,
    /// The stamp ([`Slots::stamp`]) of the checkpoint interval it last
    /// changed in, or [`UNCHANGED`] once persisted.
    changed_in: u64,
    /// Approximate bytes in memory (as of its last persist or load).
    bytes: usize,
    /// The checkpoint that last persisted the slot (0: read from the store
    /// and unchanged, or spilled before the first checkpoint).
    persisted_at: u64,
    in_store: InStore,
}

/// What the store holds of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InStore {
    Nothing,
    /// An older value (to delete when the slot is finished).
    Older,
    /// The value as of `persisted_at`.
    Current,
}

impl<V: Default> Slot<V> {
    /// A slot the store does not hold.
    fn new(scope: i32) -> Self {
        Slot {
            value: V::default(),
            scope,
            changed_in: UNCHANGED,
            bytes: 0,
            persisted_at: 0,
            in_store: InStore::Nothing,
        }
    }

    /// Unchanged since checkpoint `at` persisted it (a queue entry of
    /// checkpoint `at` still speaks for it).
    fn unchanged_since(&self, at: u64) -> bool {
        self.changed_in == UNCHANGED && self.persisted_at == at
    }
}

/// Slots of one kind (keys or entities) with the bookkeeping of the module
/// doc.
pub(super) struct Slots<K, V> {
    /// The slots, in [`PARTS`] maps ([`Slots::part`] says which), hashed
    /// with foldhash (the maps are probed for every item; the standard
    /// SipHash showed among the workers' costliest functions).
    maps: Vec<HashMap<K, Slot<V>, RandomState>>,
    /// Slots changed since the last checkpoint.
    dirty: Vec<K>,
    /// The stamp of changes since the last checkpoint (from 1); the slots
    /// marked for the checkpoint being saved have the one before.
    stamp: u64,
    /// Slots changed before the checkpoint being saved, not all saved yet.
    saving: Vec<K>,
    /// The checkpoint being saved, and its writes so far.
    saving_epoch: u64,
    saved: StateBatch,
    /// Whether state is kept (see [`super::EngineOptions::durable`]).
    durable: bool,
    save: Saver<K, V>,
    /// Slots by the checkpoint that persisted (or loaded) them, oldest
    /// first; an entry is stale when the slot was persisted again since.
    recent: VecDeque<(u64, K)>,
    /// Slots to drop once their checkpoint is committed (finished or
    /// spilled), with their bytes.
    leaving: VecDeque<(u64, K, usize)>,
    /// Approximate bytes of all slots in memory.
    bytes: usize,
    /// Bytes of the slots in `leaving`.
    leaving_bytes: usize,
    /// The most `bytes` has been.
    peak_bytes: usize,
    /// The store holds none of these slots (state not kept, nothing
    /// spilled yet): a slot not in memory is new, without a read.
    store_empty: bool,
}

/// Bytes a slot costs beyond its value's heap: the map entry (with the
/// map's spare room) and its place in the recency queue.
fn entry_bytes<K, V>() -> usize {
    (size_of::<(K, Slot<V>)>() + 1) * 8 / 7 + size_of::<(u64, K)>()
}

impl<K, V> Slots<K, V>
where
    K: SlotKey,
    V: Cached + Default,
{
    /// No slots; `durable`: state is kept (else the store holds none of
    /// them yet, a fresh scratch store); `save` writes one.
    pub fn new(durable: bool, save: Saver<K, V>) -> Self {
        Slots {
            maps: (0..PARTS).map(|_| HashMap::default()).collect(),
            dirty: Vec::new(),
            stamp: 1,
            saving: Vec::new(),
            saving_epoch: 0,
            saved: StateBatch::default(),
            durable,
            save,
            recent: VecDeque::new(),
            leaving: VecDeque::new(),
            bytes: 0,
            leaving_bytes: 0,
            peak_bytes: 0,
            store_empty: !durable,
        }
    }

    pub fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    /// Which of `maps` holds `key`.
    fn part(key: &K) -> usize {
        hash::part_of(key.bytes(), PARTS)
    }

    /// Approximate bytes in memory, less what is already leaving.
    pub fn resident_bytes(&self) -> usize {
        self.bytes.saturating_sub(self.leaving_bytes)
    }

    /// The most bytes the slots have taken in memory (as of their last
    /// persist or load).
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    fn size_of_slot(key: &K, value: &V) -> usize {
        entry_bytes::<K, V>() + key.heap_bytes() + value.heap_bytes()
    }

    /// The slot of `key`, to change: in memory, else read by `load`, else
    /// new. It is persisted at the next checkpoint.
    pub fn change(
        &mut self,
        key: K,
        scope: i32,
        load: impl FnOnce(&K) -> Result<Option<V>, StateError>,
    ) -> Result<&mut Slot<V>, StateError> {
        Ok(self
            .slot(key, scope, load, true, |_| true)?
            .expect("created when absent"))
    }

    /// The slot of `key` if in memory or in the store (read by `load`) and
    /// `wanted` says the caller changes it; it is then persisted at the next
    /// checkpoint. A slot read from the store stays in memory either way.
    pub fn find_to_change(
        &mut self,
        key: K,
        scope: i32,
        load: impl FnOnce(&K) -> Result<Option<V>, StateError>,
        wanted: impl FnOnce(&V) -> bool,
    ) -> Result<Option<&mut Slot<V>>, StateError> {
        self.slot(key, scope, load, false, wanted)
    }

    /// The slot of `key` in memory, else read by `load` (unless the store
    /// is empty), else, with `create`, a new one; marked changed and
    /// returned if `wanted`. One map lookup.
    fn slot(
        &mut self,
        key: K,
        scope: i32,
        load: impl FnOnce(&K) -> Result<Option<V>, StateError>,
        create: bool,
        wanted: impl FnOnce(&V) -> bool,
    ) -> Result<Option<&mut Slot<V>>, StateError> {
        let part = Self::part(&key);
        if !self.saving.is_empty() {
            self.save_if_marked(part, &key);
        }
        let stamp = self.stamp;
        let (key, slot) = match self.maps[part].entry(key) {
            Entry::Occupied(e) => {
                if !wanted(&e.get().value) {
                    return Ok(None);
                }
                let key = (e.get().changed_in != stamp).then(|| e.key().clone());
                (key, e.into_mut())
            }
            Entry::Vacant(vacant) => {
                let loaded = if self.store_empty {
                    None
                } else {
                    load(vacant.key())?
                };
                let slot = match loaded {
                    Some(value) => {
                        // Read from the store: saved, committed, the most recent.
                        let bytes = Self::size_of_slot(vacant.key(), &value);
                        self.bytes += bytes;
                        self.peak_bytes = self.peak_bytes.max(self.bytes);
                        self.recent.push_back((0, vacant.key().clone()));
                        Slot {
                            bytes,
                            in_store: InStore::Current,
                            value,
                            ..Slot::new(scope)
                        }
                    }
                    None if create => Slot::new(scope),
                    None => return Ok(None),
                };
                let key = wanted(&slot.value).then(|| vacant.key().clone());
                let slot = vacant.insert(slot);
                if key.is_none() {
                    return Ok(None);
                }
                (key, slot)
            }
        };
        if let Some(key) = key {
            slot.changed_in = stamp;
            self.dirty.push(key);
        }
        Ok(Some(slot))
    }

    /// Marks the slots changed since the last checkpoint, to persist as
    /// checkpoint `epoch` (by [`Slots::save_some`], or before they change
    /// again). The slots of the previous checkpoint must all be saved.
    pub fn begin(&mut self, epoch: u64) {
        debug_assert!(self.saving.is_empty(), "the previous checkpoint is saved");
        self.saving = std::mem::take(&mut self.dirty);
        self.saving_epoch = epoch;
        self.stamp += 1;
    }

    /// Persists up to `n` of the marked slots; returns whether none is left.
    pub fn save_some(&mut self, n: usize) -> bool {
        for _ in 0..n {
            let Some(key) = self.saving.pop() else {
                break;
            };
            self.save_if_marked(Self::part(&key), &key);
        }
        self.saving.is_empty()
    }

    /// The writes of the checkpoint begun last, once every marked slot is
    /// saved.
    pub fn take_saved(&mut self) -> StateBatch {
        debug_assert!(self.saving.is_empty(), "every marked slot is saved");
        if self.recent.len() > 2 * self.len() + 1024 {
            let maps = &self.maps;
            self.recent.retain(|(epoch, key)| {
                maps[Self::part(key)]
                    .get(key)
                    .is_some_and(|s| s.unchanged_since(*epoch))
            });
        }
        std::mem::take(&mut self.saved)
    }

    /// Persists the slot of `key` (in map `part`) if it is marked: with
    /// `durable`, writes it
    /// (a finished one is deleted); without, a finished one the store holds
    /// is deleted, and the others are only counted. Finished slots leave
    /// memory once deleted (or at once when the store never held them).
    fn save_if_marked(&mut self, part: usize, key: &K) {
        let (epoch, durable) = (self.saving_epoch, self.durable);
        // Before the first checkpoint the stamp before is UNCHANGED itself.
        let marked = self.stamp - 1;
        let Some(slot) = self.maps[part]
            .get_mut(key)
            .filter(|s| s.changed_in != UNCHANGED && s.changed_in == marked)
        else {
            return;
        };
        slot.changed_in = UNCHANGED;
        let bytes = Self::size_of_slot(key, &slot.value);
        self.bytes = self.bytes + bytes - slot.bytes;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        slot.bytes = bytes;
        slot.persisted_at = epoch;
        let finished = slot.value.is_finished();
        if finished && !durable && slot.in_store == InStore::Nothing {
            self.bytes -= slot.bytes;
            self.maps[part].remove(key);
            return;
        }
        let write = if finished {
            Some(Save::Delete)
        } else {
            durable.then_some(Save::Put)
        };
        if let Some(what) = write {
            (self.save)(
                &mut self.saved,
                durable,
                key,
                slot.scope,
                &mut slot.value,
                what,
            );
            slot.in_store = InStore::Current;
        } else if slot.in_store == InStore::Current {
            slot.in_store = InStore::Older;
        }
        if finished {
            self.leaving_bytes += bytes;
            self.leaving.push_back((epoch, key.clone(), bytes));
        } else {
            self.recent.push_back((epoch, key.clone()));
        }
    }

    /// Drops the leaving slots whose writes are in the store: those of
    /// checkpoints up to `written`. Returns how many left memory (finished
    /// ones not counted).
    pub fn drop_leaving(&mut self, written: u64) -> u64 {
        let mut evicted = 0;
        while let Some((at, key, bytes)) = self.leaving.pop_front_if(|(at, ..)| *at <= written) {
            self.leaving_bytes -= bytes;
            if let Some(slot) = self.drop_if_unchanged(&key, at)
                && !slot.value.is_finished()
            {
                evicted += 1;
            }
        }
        evicted
    }

    /// Lets about `free` bytes leave memory, oldest persisted first:
    /// dropped when the store holds them as of a `committed` checkpoint,
    /// else written to `batch` with checkpoint `epoch` and
    /// dropped by [`Slots::drop_leaving`] once that write is in the store.
    /// Stops at a slot saved by a checkpoint not yet committed. Returns how
    /// many slots were dropped.
    pub fn evict(
        &mut self,
        free: usize,
        epoch: u64,
        committed: u64,
        batch: &mut StateBatch,
    ) -> u64 {
        let mut evicted = 0;
        let mut freed = 0;
        while freed < free {
            let Some((at, key)) = self.recent.front() else {
                break;
            };
            let at = *at;
            let Some(slot) = self.maps[Self::part(key)]
                .get_mut(key)
                .filter(|s| s.unchanged_since(at))
            else {
                self.recent.pop_front();
                continue;
            };
            let saved = slot.in_store == InStore::Current;
            if saved && at > committed {
                break;
            }
            freed += slot.bytes;
            let (_, key) = self.recent.pop_front().expect("the front was read above");
            if saved {
                evicted += u64::from(self.drop_if_unchanged(&key, at).is_some());
            } else {
                (self.save)(
                    batch,
                    self.durable,
                    &key,
                    slot.scope,
                    &mut slot.value,
                    Save::Put,
                );
                self.store_empty = false;
                slot.in_store = InStore::Current;
                slot.persisted_at = epoch;
                self.leaving_bytes += slot.bytes;
                self.leaving.push_back((epoch, key, slot.bytes));
            }
        }
        evicted
    }

    /// Removes the slot of `key` unless it changed since checkpoint
    /// `persisted_at`; returns it.
    fn drop_if_unchanged(&mut self, key: &K, persisted_at: u64) -> Option<Slot<V>> {
        let map = &mut self.maps[Self::part(key)];
        if !map.get(key)?.unchanged_since(persisted_at) {
            return None;
        }
        let slot = map.remove(key)?;
        self.bytes -= slot.bytes;
        Some(slot)
    }

    /// Forgets every slot of the scopes `gone` says (their state was
    /// committed, and now belongs to another instance).
    pub fn release(&mut self, gone: impl Fn(i32) -> bool) {
        let mut removed = 0;
        for map in &mut self.maps {
            map.retain(|_, slot| {
                let keep = !gone(slot.scope);
                if !keep {
                    removed += slot.bytes;
                }
                keep
            });
        }
        self.bytes -= removed;
        debug_assert!(
            self.saving.is_empty(),
            "a checkpoint being saved is finished before a release"
        );
        let maps = &self.maps;
        self.dirty.retain(|k| maps[Self::part(k)].contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Cf;

    /// A counter: the simplest value a slot can hold.
    #[derive(Default)]
    struct Count(u64);

    impl Footprint for Count {
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    impl Cached for Count {
        fn is_finished(&self) -> bool {
            false
        }
    }

    fn save(batch: &mut StateBatch, _: bool, key: &Arc<str>, scope: i32, c: &mut Count, _: Save) {
        batch.put(
            Cf::Keys,
            scope,
            key.as_bytes().to_vec(),
            c.0.to_le_bytes().to_vec(),
        );
    }

    fn set(slots: &mut Slots<Arc<str>, Count>, key: &str, n: u64) {
        slots
            .change(Arc::from(key), 0, |_| Ok(None))
            .unwrap()
            .value
            .0 = n;
    }

    /// The saved (key, count) pairs, in key order.
    fn saved(slots: &mut Slots<Arc<str>, Count>) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = slots
            .take_saved()
            .writes
            .into_iter()
            .map(|w| {
                let n = u64::from_le_bytes(w.value.unwrap().try_into().unwrap());
                (String::from_utf8(w.key).unwrap(), n)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_slot_changed_while_its_checkpoint_is_saved_is_saved_as_it_was_at_the_checkpoint() {
        let mut slots = Slots::new(true, save);
        for key in ["a", "b", "c"] {
            set(&mut slots, key, 1);
        }
        slots.begin(1);
        assert!(!slots.save_some(1), "two slots are left to save");
        set(&mut slots, "a", 2);
        set(&mut slots, "b", 2);
        set(&mut slots, "d", 2);
        assert!(slots.save_some(usize::MAX));
        let expected = |n| vec![("a".into(), n), ("b".into(), n), ("c".into(), 1)];
        assert_eq!(saved(&mut slots), expected(1), "checkpoint 1 as it was");

        slots.begin(2);
        assert!(slots.save_some(usize::MAX));
        assert_eq!(
            saved(&mut slots),
            vec![("a".into(), 2), ("b".into(), 2), ("d".into(), 2)],
            "checkpoint 2: what changed after checkpoint 1"
        );
    }
}
