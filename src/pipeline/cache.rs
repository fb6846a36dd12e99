//! A worker's slots: the key or entity state it keeps in memory, which of
//! them changed since the last checkpoint, and which may leave memory.
//!
//! At each checkpoint the changed slots are persisted: written to the store
//! when state is kept, else only noted as the most recently used. Writing
//! them need not stop the worker: [`Slots::begin`] marks the slots changed
//! before the checkpoint, [`Slots::save_some`] writes some of them at a
//! time, and a marked slot about to change is written first, so the
//! checkpoint holds every slot as it was at the checkpoint (copy on write).
//! Then [`Slots::evict`] lets slots leave memory, in the order of what they
//! wait for ([`Waits`]), until the worker is back under its share of
//! `state.cache_size`. A slot may leave only when the store holds its
//! current value and the checkpoint that wrote it is committed, so that
//! reading it back gives the same state. When state is not kept (`vigil check` without `--state`) the
//! store holds nothing of a slot until it is evicted: the worker then
//! writes it ("spills" it) to the store at once, outside the checkpoint
//! (nothing resumes from that store), and it leaves; such a worker also
//! persists and evicts between checkpoints, as soon as it is over its
//! budget. Slots that hold
//! nothing any more (finished keys) leave the same way, once their deletion
//! is in the store. Slots leave from every part of the arena that holds
//! them; [`Slots::compact`] then moves the others together, so that the
//! memory of the parts emptied goes back.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::mem::size_of;

use compact_str::CompactString;
use foldhash::fast::RandomState;
use smallvec::SmallVec;
use smol_str::SmolStr;

use super::index::{ENTRY_BYTES, Index, prefetch};
use crate::detect::entity::EntityState;
use crate::detect::key::{FillLists, KeyState, RetainedGlob, Wildcards};
use crate::model::Name;
use crate::state::{StateBatch, StateError};

/// Approximate heap bytes of a value, for the budget.
pub(super) trait Footprint {
    fn heap_bytes(&self) -> usize;
}

/// The key of a slot, held in the slot; callers look it up by a borrowed
/// form ([`SlotKey::Lookup`]), and a slot is keyed by a copy of it only
/// when it is created.
pub(super) trait SlotKey: Footprint {
    type Lookup: ?Sized;
    fn new(key: &Self::Lookup) -> Self;
    fn bytes(key: &Self::Lookup) -> &[u8];
    fn as_lookup(&self) -> &Self::Lookup;
}

/// Cache keys are held inline (up to 24 bytes), so that finding a key's
/// slot compares it without reading a string elsewhere.
impl SlotKey for CompactString {
    type Lookup = str;
    fn new(key: &str) -> Self {
        CompactString::from(key)
    }
    fn bytes(key: &str) -> &[u8] {
        key.as_bytes()
    }
    fn as_lookup(&self) -> &str {
        self
    }
}

impl SlotKey for [u8; 12] {
    type Lookup = [u8; 12];
    fn new(key: &[u8; 12]) -> Self {
        *key
    }
    fn bytes(key: &[u8; 12]) -> &[u8] {
        key
    }
    fn as_lookup(&self) -> &[u8; 12] {
        self
    }
}

/// Bytes the estimate counts for the allocator's own bookkeeping of each
/// allocation.
const ALLOCATION_HEADER: usize = 16;

/// Heap bytes of a shared string of `len` bytes (a primary key's or a
/// name's): its text, its two counts and the allocator's header.
fn shared_str_bytes(len: usize) -> usize {
    len + 2 * size_of::<usize>() + ALLOCATION_HEADER
}

/// Heap bytes of a primary key: none when held inline (up to 23 bytes), else
/// its shared string whole. The changes of an entity's keys share such a
/// string, but their number is not read (a cache miss a key for a figure
/// that only decides eviction): each counts it whole.
fn pk_bytes(pk: &SmolStr) -> usize {
    if pk.is_heap_allocated() {
        shared_str_bytes(pk.len())
    } else {
        0
    }
}

/// A holder's share of a service's name: nothing when the name is held for
/// the process (read without touching it), else as a shared string's.
fn name_bytes(name: &Option<Name>) -> usize {
    let Some(name) = name else { return 0 };
    name.shared_count()
        .map_or(0, |count| shared_str_bytes(name.len()) / count)
}

/// The heap bytes of a vector that holds its first items inline: none
/// until it outgrows them.
fn spilled_bytes<A: smallvec::Array>(items: &SmallVec<A>) -> usize {
    if items.spilled() {
        items.capacity() * size_of::<A::Item>()
    } else {
        0
    }
}

impl Footprint for CompactString {
    /// Nothing, unless the key is too long to be held inline.
    fn heap_bytes(&self) -> usize {
        if self.is_heap_allocated() {
            self.capacity() + ALLOCATION_HEADER
        } else {
            0
        }
    }
}

impl Footprint for [u8; 12] {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Footprint for KeyState {
    /// The vectors (the fills' two behind their own allocation, with its
    /// allocator header), and the key's share of the strings it holds:
    /// primary keys and services (see [`pk_bytes`], [`name_bytes`]).
    /// Table and topic names are shared by every key that names them.
    fn heap_bytes(&self) -> usize {
        let service = name_bytes;
        let changes: usize = self
            .changes
            .iter()
            .map(|c| pk_bytes(&c.pk) + c.cover.as_ref().map_or(0, |cv| service(&cv.service)))
            .sum();
        let invalidations: usize = self.invalidations.iter().map(|i| service(&i.service)).sum();
        let fills = self.fills.lists().map_or(0, |lists| {
            size_of::<FillLists>()
                + ALLOCATION_HEADER
                + spilled_bytes(&lists.waiting)
                + spilled_bytes(&lists.judged)
                + lists
                    .waiting
                    .iter()
                    .chain(&lists.judged)
                    .map(|f| service(&f.service))
                    .sum::<usize>()
        });
        spilled_bytes(&self.changes)
            + spilled_bytes(&self.invalidations)
            + spilled_bytes(&self.seen)
            + changes
            + invalidations
            + fills
    }
}

impl Footprint for Wildcards {
    /// The globs in their lists, each pattern's shared string, and per
    /// prefix its entry in the map (with the map's spare room), its text
    /// and its list's allocation.
    fn heap_bytes(&self) -> usize {
        let entry = size_of::<(Box<str>, Vec<RetainedGlob>)>() * 2 + 2 * ALLOCATION_HEADER;
        self.len() * (size_of::<RetainedGlob>() + shared_str_bytes(0))
            + self.prefixes() * entry
            + self.text_bytes()
    }
}

impl Footprint for EntityState {
    fn heap_bytes(&self) -> usize {
        spilled_bytes(&self.recent)
    }
}

/// What a slot's value says of itself at a checkpoint.
pub(super) trait Cached: Footprint {
    /// Holds nothing: the slot can leave memory, and the store forget it.
    fn is_finished(&self) -> bool;
    /// What the slot will be needed for next, which decides when it leaves
    /// memory (see [`Slots::evict`]).
    fn waits(&self) -> Waits;
}

/// What a slot waits for. Slots leave memory in the order of the variants:
/// first those that wait for nothing, oldest persisted first (least
/// recently used); then those that wait only for their timer, newest
/// persisted first: they are due last, while the oldest are due soonest and
/// would be written out only to be read back when the watermark reaches
/// them; last those that wait for a record (a change no invalidation has
/// covered yet, which usually comes soon), oldest persisted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waits {
    Nothing = 0,
    Timer = 1,
    Record = 2,
}

impl Waits {
    const ALL: [Waits; 3] = [Waits::Nothing, Waits::Timer, Waits::Record];
}

/// A write of a slot to the store: its current value, or its deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Save {
    Put,
    Delete,
}

/// What [`Slots::prefetch`] asks the CPU to load.
#[derive(Debug, Clone, Copy)]
pub(super) enum Prefetch {
    /// The index entries of a key's hash.
    Index,
    /// The node of a key, found through its index entries.
    Node,
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

/// Nodes per chunk of the arena: it grows a chunk at a time, and moves the
/// nodes already in it only to compact it ([`Slots::compact`]).
const CHUNK: usize = 4096;

/// No node: the end of a recency list.
const NIL: u32 = u32::MAX;

/// The places of the chunks that hold nodes may be free up to one in this
/// many before [`Slots::compact`] moves nodes down, which leaves half as
/// many free: the slots a worker keeps go up and down by a tenth of its
/// budget between evictions, which moving nodes closer would only chase.
const SPARSE: usize = 8;

/// The ends of a recency list.
#[derive(Debug, Clone, Copy)]
struct Ends {
    oldest: u32,
    newest: u32,
}

impl Ends {
    const EMPTY: Ends = Ends {
        oldest: NIL,
        newest: NIL,
    };
}

/// A slot as queued for later (by the slots, or by a worker's timers):
/// valid while its place in the arena holds the same slot (a reused place
/// has a new generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handle {
    index: u32,
    generation: u32,
}

/// A slot with its key, the key's hash, and its place in the recency list.
struct Node<K, V> {
    key: K,
    hash: u64,
    slot: Slot<V>,
    /// The recency list the slot is in, if any (unchanged since it was
    /// persisted or read, and not leaving), and its neighbours there.
    listed: Option<Waits>,
    prev: u32,
    next: u32,
}

/// A place in the arena: a node, or a free place, and how many nodes it has
/// held.
struct Place<K, V> {
    generation: u32,
    node: Option<Node<K, V>>,
}

/// The nodes of one kind of slot, addressed by index, in chunks of
/// [`CHUNK`] places. A node takes the free place of the lowest chunk that
/// has one, so that, as slots leave memory, the highest chunks empty out;
/// an empty chunk gives its memory back, but one, kept ready, so that a
/// count of slots going up and down about a chunk's edge does not give
/// back and build again the same chunk. The other kind of slot can then
/// use the memory: the entities peak early in a long check and leave as
/// keys take the budget. Slots that leave from everywhere in the arena
/// leave free places in every chunk, which no chunk's emptying gives back:
/// [`Slots::compact`] moves nodes down into them.
struct Arena<K, V> {
    /// The chunks, each holding [`CHUNK`] places, or none once given back.
    chunks: Vec<Vec<Place<K, V>>>,
    /// The free places of each chunk (all [`CHUNK`] of an empty one).
    free: Vec<Vec<u32>>,
    /// The generation a given-back chunk's places start from when it is
    /// built again, above every generation its places had (so that no
    /// handle to them matches a later node).
    base: Vec<u32>,
    /// Chunks with a free place, lowest first.
    with_free: BTreeSet<u32>,
    /// Chunks given back, lowest first.
    released: BTreeSet<u32>,
    /// Empty chunks kept ready.
    spare: BTreeSet<u32>,
    len: usize,
}

impl<K, V> Arena<K, V> {
    fn new() -> Self {
        Arena {
            chunks: Vec::new(),
            free: Vec::new(),
            base: Vec::new(),
            with_free: BTreeSet::new(),
            released: BTreeSet::new(),
            spare: BTreeSet::new(),
            len: 0,
        }
    }

    /// The place at `index`; `None` in a chunk given back.
    fn place(&self, index: u32) -> Option<&Place<K, V>> {
        let i = index as usize;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn place_mut(&mut self, index: u32) -> Option<&mut Place<K, V>> {
        let i = index as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// The node at `index`, which holds one.
    fn at(&self, index: u32) -> &Node<K, V> {
        self.place(index)
            .and_then(|p| p.node.as_ref())
            .expect("a live node")
    }

    fn at_mut(&mut self, index: u32) -> &mut Node<K, V> {
        self.place_mut(index)
            .and_then(|p| p.node.as_mut())
            .expect("a live node")
    }

    /// The node `handle` names, if it still holds the same slot.
    fn get(&self, handle: Handle) -> Option<&Node<K, V>> {
        self.place(handle.index)
            .filter(|p| p.generation == handle.generation)?
            .node
            .as_ref()
    }

    fn get_mut(&mut self, handle: Handle) -> Option<&mut Node<K, V>> {
        self.place_mut(handle.index)
            .filter(|p| p.generation == handle.generation)?
            .node
            .as_mut()
    }

    fn handle(&self, index: u32) -> Handle {
        Handle {
            index,
            generation: self.place(index).expect("a live node").generation,
        }
    }

    fn insert(&mut self, node: Node<K, V>) -> u32 {
        let c = match self.with_free.first() {
            Some(&c) => c,
            None => self.build_chunk(),
        };
        let free = &mut self.free[c as usize];
        if free.len() == CHUNK {
            self.spare.remove(&c);
        }
        let index = free.pop().expect("a chunk with a free place");
        if free.is_empty() {
            self.with_free.remove(&c);
        }
        self.len += 1;
        let place = self.place_mut(index).expect("a built chunk");
        place.generation = place.generation.wrapping_add(1);
        place.node = Some(node);
        index
    }

    /// Builds the lowest chunk given back, or a new one; returns it.
    fn build_chunk(&mut self) -> u32 {
        let c = match self.released.pop_first() {
            Some(c) => c,
            None => {
                let c = u32::try_from(self.chunks.len())
                    .ok()
                    .filter(|&c| (c as usize + 1) * CHUNK <= u32::MAX as usize)
                    .expect("fewer than 2^32 slots per worker");
                self.chunks.push(Vec::new());
                self.free.push(Vec::new());
                self.base.push(0);
                c
            }
        };
        let (ci, base) = (c as usize, self.base[c as usize]);
        // A place's generation moves on as a node takes it: start one below.
        let generation = base.wrapping_sub(1);
        self.chunks[ci] = (0..CHUNK)
            .map(|_| Place {
                generation,
                node: None,
            })
            .collect();
        // Popped from the end: the chunk fills from its first place.
        let first = ci * CHUNK;
        self.free[ci] = (first..first + CHUNK).rev().map(|i| i as u32).collect();
        self.with_free.insert(c);
        c
    }

    fn remove(&mut self, index: u32) -> Node<K, V> {
        let node = self
            .place_mut(index)
            .and_then(|p| p.node.take())
            .expect("a live node");
        self.len -= 1;
        let c = index / CHUNK as u32;
        self.free[c as usize].push(index);
        self.with_free.insert(c);
        if self.free[c as usize].len() == CHUNK {
            self.emptied(c);
        }
        node
    }

    /// Chunk `c` holds no node: kept ready, and the highest chunks kept
    /// ready beyond one given back.
    fn emptied(&mut self, c: u32) {
        self.spare.insert(c);
        while self.spare.len() > 1 {
            let give = self.spare.pop_last().expect("more than one");
            self.give_back(give);
        }
    }

    /// Gives back the memory of chunk `give`, which holds no node.
    fn give_back(&mut self, give: u32) {
        let gi = give as usize;
        let next = self.chunks[gi]
            .iter()
            .map(|p| p.generation)
            .max()
            .map_or(0, |g| g.wrapping_add(1));
        self.base[gi] = next;
        self.chunks[gi] = Vec::new();
        self.free[gi] = Vec::new();
        self.with_free.remove(&give);
        self.released.insert(give);
    }

    /// Whether more than one in [`SPARSE`] of the places of the chunks
    /// that hold nodes are free, and more than two chunks' worth.
    fn is_sparse(&self) -> bool {
        let places = self.holding_chunks() * CHUNK;
        places - self.len > (places / SPARSE).max(2 * CHUNK)
    }

    /// Whether no more than one in twice [`SPARSE`] of the places of the
    /// chunks that hold nodes are free, or no more than a chunk's worth.
    fn is_dense(&self) -> bool {
        let places = self.holding_chunks() * CHUNK;
        places - self.len <= (places / SPARSE / 2).max(CHUNK)
    }

    /// Chunks built and holding a node.
    fn holding_chunks(&self) -> usize {
        self.chunks.len() - self.released.len() - self.spare.len()
    }

    /// The highest chunk that holds a node, if a lower one has a free place.
    fn top_above_free(&self) -> Option<u32> {
        let top = (0..self.chunks.len())
            .rev()
            .find(|&c| !self.chunks[c].is_empty() && self.free[c].len() < CHUNK)?;
        let top = u32::try_from(top).expect("chunks are numbered as u32");
        self.with_free.first().filter(|&&c| c < top).map(|_| top)
    }

    /// Indices of the live nodes.
    fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, p)| p.node.is_some())
                .map(move |(i, _)| (c * CHUNK + i) as u32)
        })
    }
}

/// Slots of one kind (keys or entities) with the bookkeeping of the module
/// doc: the slots live in an arena, found by the hash of their key through
/// an index of arena positions; the queues of work name arena positions.
pub(super) struct Slots<K, V> {
    hasher: RandomState,
    /// Arena positions of the slots by their key's hash.
    index: Index,
    arena: Arena<K, V>,
    /// Slots changed since the last checkpoint.
    dirty: Vec<Handle>,
    /// The stamp of changes since the last checkpoint (from 1); the slots
    /// marked for the checkpoint being saved have the one before.
    stamp: u64,
    /// Slots changed before the checkpoint being saved, not all saved yet.
    saving: Vec<Handle>,
    /// The checkpoint being saved, and its writes so far.
    saving_epoch: u64,
    saved: StateBatch,
    /// Whether state is kept (see [`super::EngineOptions::durable`]).
    durable: bool,
    save: Saver<K, V>,
    /// The recency lists: slots unchanged since the checkpoint that
    /// persisted them (or since they were read), in the order they were
    /// persisted or read, linked through the nodes, one list for each
    /// [`Waits`].
    lists: [Ends; 3],
    /// Slots to drop once their checkpoint is committed (finished or
    /// spilled), with their bytes.
    leaving: VecDeque<(u64, Handle, usize)>,
    /// Approximate bytes of all slots in memory.
    bytes: usize,
    /// Bytes of the slots in `leaving`.
    leaving_bytes: usize,
    /// The most `bytes` has been.
    peak_bytes: usize,
    /// The store holds none of these slots (state not kept, nothing
    /// spilled yet): a slot not in memory is new, without a read.
    store_empty: bool,
    /// Slots created since they were last persisted: their bytes are not
    /// measured yet (see [`Slots::estimated_bytes`]).
    unmeasured: usize,
}

/// Bytes a slot costs beyond its value's heap: its place in the arena and
/// its entry in the index (with the index's spare room).
fn entry_bytes<K, V>() -> usize {
    size_of::<Place<K, V>>() + ENTRY_BYTES
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
            hasher: RandomState::default(),
            index: Index::new(),
            arena: Arena::new(),
            dirty: Vec::new(),
            stamp: 1,
            saving: Vec::new(),
            saving_epoch: 0,
            saved: StateBatch::default(),
            durable,
            save,
            lists: [Ends::EMPTY; 3],
            leaving: VecDeque::new(),
            bytes: 0,
            leaving_bytes: 0,
            peak_bytes: 0,
            store_empty: !durable,
            unmeasured: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.arena.len
    }

    /// Approximate bytes in memory, less what is already leaving.
    pub fn resident_bytes(&self) -> usize {
        self.bytes.saturating_sub(self.leaving_bytes)
    }

    /// Approximate bytes in memory, leaving or not, with the slots created
    /// since the last checkpoint counted at the average bytes of the others
    /// (before any is measured, at those of the slot changed last): what
    /// the budget is held to between checkpoints.
    pub fn estimated_bytes(&self) -> usize {
        self.bytes + self.unmeasured * self.average_bytes()
    }

    /// Approximate bytes of the slots changed since the last checkpoint,
    /// each at the average bytes of a slot: about what the next checkpoint
    /// writes.
    pub fn changed_bytes(&self) -> usize {
        self.dirty.len() * self.average_bytes()
    }

    /// The average bytes of the slots measured (before any is, those of
    /// the slot changed last).
    fn average_bytes(&self) -> usize {
        match self.arena.len - self.unmeasured {
            0 => self
                .dirty
                .last()
                .and_then(|&handle| self.arena.get(handle))
                .map_or(0, |node| Self::size_of_slot(&node.key, &node.slot.value)),
            measured => self.bytes / measured,
        }
    }

    /// The most bytes the slots have taken in memory (as of their last
    /// persist or load).
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    fn size_of_slot(key: &K, value: &V) -> usize {
        entry_bytes::<K, V>() + key.heap_bytes() + value.heap_bytes()
    }

    /// The arena position of the slot of `key` (of hash `hash`), if in
    /// memory.
    fn find(&self, hash: u64, key: &K::Lookup) -> Option<u32> {
        let (arena, key) = (&self.arena, K::bytes(key));
        self.index.find(hash, |at| {
            let node = arena.at(at);
            node.hash == hash && K::bytes(node.key.as_lookup()) == key
        })
    }

    /// Adds a node to the arena and the index; returns its position.
    fn insert(&mut self, node: Node<K, V>) -> u32 {
        let hash = node.hash;
        let at = self.arena.insert(node);
        self.index.insert(hash, at);
        at
    }

    /// Takes the node at `i` out of the arena, the index and the recency
    /// list.
    fn remove(&mut self, i: u32) -> Node<K, V> {
        self.unlink(i);
        let hash = self.arena.at(i).hash;
        self.index.remove(hash, i);
        self.arena.remove(i)
    }

    /// Appends the node at `i` to its recency list (as the newest).
    fn link(&mut self, i: u32) {
        let node = self.arena.at_mut(i);
        debug_assert!(node.listed.is_none(), "a node is listed once");
        let list = node.slot.value.waits();
        let newest = self.lists[list as usize].newest;
        node.listed = Some(list);
        node.prev = newest;
        node.next = NIL;
        self.relink(list, (newest, NIL), (i, i));
    }

    /// Takes the node at `i` out of its recency list, if in one.
    fn unlink(&mut self, i: u32) {
        let node = self.arena.at_mut(i);
        let Some(list) = node.listed.take() else {
            return;
        };
        let (prev, next) = (node.prev, node.next);
        self.relink(list, (prev, next), (next, prev));
    }

    /// Points the links of `list` around a place, between the nodes
    /// `prev` and `next` (or the list's ends, where [`NIL`]): `after_prev`
    /// follows `prev`, and `before_next` precedes `next`.
    fn relink(
        &mut self,
        list: Waits,
        (prev, next): (u32, u32),
        (after_prev, before_next): (u32, u32),
    ) {
        if prev == NIL {
            self.lists[list as usize].oldest = after_prev;
        } else {
            self.arena.at_mut(prev).next = after_prev;
        }
        if next == NIL {
            self.lists[list as usize].newest = before_next;
        } else {
            self.arena.at_mut(next).prev = before_next;
        }
    }

    /// Asks the CPU to load what a lookup of `key` a little later reads:
    /// with [`Prefetch::Index`], the index entries of its hash; with
    /// [`Prefetch::Node`], the node they name (reading the entries). A
    /// worker asks for the node of an item a few items ahead of the one it
    /// applies, and for its index entries twice as far ahead, so that these
    /// loads overlap instead of each lookup waiting for memory in turn.
    /// Changes nothing.
    pub fn prefetch(&self, key: &K::Lookup, what: Prefetch) {
        let hash = self.hasher.hash_one(K::bytes(key));
        match what {
            Prefetch::Index => self.index.prefetch(hash),
            Prefetch::Node => {
                // The first position whose node may be the key's: reading
                // the node to be sure is what the hint is for.
                if let Some(at) = self.index.find(hash, |_| true) {
                    self.prefetch_place(at);
                }
            }
        }
    }

    /// Asks the CPU to load the node of the slot `handle` names, as
    /// [`Prefetch::Node`] does for a key. Changes nothing.
    pub fn prefetch_node(&self, handle: Handle) {
        self.prefetch_place(handle.index);
    }

    /// Asks the CPU to load the nodes either side of the slot `handle`
    /// names in its recency list, which changing the slot writes (it leaves
    /// the list). Reads the slot's node: asked for once that is loaded.
    /// Changes nothing.
    pub fn prefetch_neighbours(&self, handle: Handle) {
        let Some(node) = self.arena.get(handle).filter(|n| n.listed.is_some()) else {
            return;
        };
        for i in [node.prev, node.next] {
            self.prefetch_place(i);
        }
    }

    /// Asks the CPU to load the arena's place `index`, if there is one.
    fn prefetch_place(&self, index: u32) {
        if let Some(place) = self.arena.place(index) {
            prefetch(place);
        }
    }

    /// Whether `key` is in memory.
    pub fn contains(&self, key: &K::Lookup) -> bool {
        self.find(self.hasher.hash_one(K::bytes(key)), key)
            .is_some()
    }

    /// The slot of `key`, to change, and its handle: in memory, else read
    /// by `load`, else new. It is persisted at the next checkpoint.
    pub fn change(
        &mut self,
        key: &K::Lookup,
        scope: i32,
        load: impl FnOnce(&K::Lookup) -> Result<Option<V>, StateError>,
    ) -> Result<(Handle, &mut Slot<V>), StateError> {
        Ok(self
            .slot(key, None, scope, load, true, |_| true)?
            .expect("created when absent"))
    }

    /// The key and slot `handle` names, if that still holds it.
    pub fn held(&self, handle: Handle) -> Option<(&K, &Slot<V>)> {
        self.arena.get(handle).map(|node| (&node.key, &node.slot))
    }

    /// The slot of `key` (and its handle) if in memory or in the store (read
    /// by `load`) and `wanted` says the caller changes it; it is then
    /// persisted at the next checkpoint. A slot read from the store stays in
    /// memory either way. `hint`: the handle the slot had, which spares the
    /// lookup while it still holds the slot.
    pub fn find_to_change(
        &mut self,
        key: &K::Lookup,
        hint: Option<Handle>,
        scope: i32,
        load: impl FnOnce(&K::Lookup) -> Result<Option<V>, StateError>,
        wanted: impl FnOnce(&V) -> bool,
    ) -> Result<Option<(Handle, &mut Slot<V>)>, StateError> {
        self.slot(key, hint, scope, load, false, wanted)
    }

    /// The slot of `key` in memory (at `hint` if that still holds it),
    /// else read by `load` (unless the store is empty), else, with
    /// `create`, a new one; marked changed and returned if `wanted`.
    fn slot(
        &mut self,
        key: &K::Lookup,
        hint: Option<Handle>,
        scope: i32,
        load: impl FnOnce(&K::Lookup) -> Result<Option<V>, StateError>,
        create: bool,
        wanted: impl FnOnce(&V) -> bool,
    ) -> Result<Option<(Handle, &mut Slot<V>)>, StateError> {
        let hinted = hint.and_then(|h| self.arena.get(h).map(|node| (h.index, node.hash)));
        debug_assert!(
            hinted.is_none_or(|(i, _)| {
                K::bytes(self.arena.at(i).key.as_lookup()) == K::bytes(key)
            })
        );
        let (mut found, hash) = match hinted {
            Some((i, hash)) => (Some(i), hash),
            None => {
                let hash = self.hasher.hash_one(K::bytes(key));
                (self.find(hash, key), hash)
            }
        };
        if let Some(i) = found
            && !self.saving.is_empty()
        {
            // Saved as it was at the checkpoint before it changes; a
            // finished slot may leave memory on the way.
            let handle = self.arena.handle(i);
            self.save_if_marked(handle);
            if self.arena.get_mut(handle).is_none() {
                found = None;
            }
        }
        let i = match found {
            Some(i) => {
                if !wanted(&self.arena.at(i).slot.value) {
                    return Ok(None);
                }
                i
            }
            None => {
                let loaded = if self.store_empty { None } else { load(key)? };
                let key = K::new(key);
                let (slot, read) = match loaded {
                    Some(value) => {
                        // Read from the store: saved, committed, the most recent.
                        let bytes = Self::size_of_slot(&key, &value);
                        self.bytes += bytes;
                        self.peak_bytes = self.peak_bytes.max(self.bytes);
                        let slot = Slot {
                            bytes,
                            in_store: InStore::Current,
                            value,
                            ..Slot::new(scope)
                        };
                        (slot, true)
                    }
                    None if create => {
                        self.unmeasured += 1;
                        (Slot::new(scope), false)
                    }
                    None => return Ok(None),
                };
                let wanted = wanted(&slot.value);
                let i = self.insert(Node {
                    key,
                    hash,
                    slot,
                    listed: None,
                    prev: NIL,
                    next: NIL,
                });
                if read {
                    self.link(i);
                }
                if !wanted {
                    return Ok(None);
                }
                i
            }
        };
        let stamp = self.stamp;
        let handle = self.arena.handle(i);
        if self.arena.at(i).slot.changed_in != stamp {
            self.unlink(i);
            self.arena.at_mut(i).slot.changed_in = stamp;
            self.dirty.push(handle);
        }
        Ok(Some((handle, &mut self.arena.at_mut(i).slot)))
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
            let Some(handle) = self.saving.pop() else {
                break;
            };
            self.save_if_marked(handle);
        }
        self.saving.is_empty()
    }

    /// The writes of the checkpoint begun last, once every marked slot is
    /// saved.
    pub fn take_saved(&mut self) -> StateBatch {
        debug_assert!(self.saving.is_empty(), "every marked slot is saved");
        std::mem::take(&mut self.saved)
    }

    /// Persists the slot `handle` names if it is marked: with `durable`,
    /// writes it (a finished one is deleted); without, a finished one the
    /// store holds is deleted, and the others are only counted. Finished
    /// slots leave memory once deleted (or at once when the store never
    /// held them).
    fn save_if_marked(&mut self, handle: Handle) {
        let (epoch, durable) = (self.saving_epoch, self.durable);
        // Before the first checkpoint the stamp before is UNCHANGED itself.
        let marked = self.stamp - 1;
        let Some(node) = self
            .arena
            .get_mut(handle)
            .filter(|n| n.slot.changed_in != UNCHANGED && n.slot.changed_in == marked)
        else {
            return;
        };
        let Node { key, slot, .. } = node;
        slot.changed_in = UNCHANGED;
        if slot.bytes == 0 {
            self.unmeasured -= 1;
        }
        let bytes = Self::size_of_slot(key, &slot.value);
        self.bytes = self.bytes + bytes - slot.bytes;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        slot.bytes = bytes;
        slot.persisted_at = epoch;
        let finished = slot.value.is_finished();
        if finished && !durable && slot.in_store == InStore::Nothing {
            self.bytes -= bytes;
            self.remove(handle.index);
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
            self.leaving.push_back((epoch, handle, bytes));
        } else {
            self.link(handle.index);
        }
    }

    /// Drops the leaving slots whose writes are in the store: those of
    /// checkpoints up to `written`. Returns how many left memory (finished
    /// ones not counted).
    pub fn drop_leaving(&mut self, written: u64) -> u64 {
        let mut evicted = 0;
        while let Some((at, handle, bytes)) = self.leaving.pop_front_if(|(at, ..)| *at <= written) {
            self.leaving_bytes -= bytes;
            if let Some(slot) = self.drop_if_unchanged(handle, at)
                && !slot.value.is_finished()
            {
                evicted += 1;
            }
        }
        evicted
    }

    /// Lets about `free` bytes leave memory, in the order of [`Waits`]:
    /// dropped when the store holds them as of a `committed` checkpoint,
    /// else written to `batch` with checkpoint `epoch` and dropped by
    /// [`Slots::drop_leaving`] once that write is in the store. A slot saved by a checkpoint not yet
    /// committed stays. Returns how many slots were dropped.
    pub fn evict(
        &mut self,
        free: usize,
        epoch: u64,
        committed: u64,
        batch: &mut StateBatch,
    ) -> u64 {
        let mut evicted = 0;
        let mut freed = 0;
        for list in Waits::ALL {
            while freed < free {
                let Some(i) = self.next_to_leave(list, committed) else {
                    break;
                };
                let slot = &self.arena.at(i).slot;
                let bytes = slot.bytes;
                let saved = slot.in_store == InStore::Current;
                freed += bytes;
                self.unlink(i);
                if saved {
                    self.bytes -= bytes;
                    self.remove(i);
                    evicted += 1;
                } else {
                    let handle = self.arena.handle(i);
                    let Node { key, slot, .. } = self.arena.at_mut(i);
                    (self.save)(
                        batch,
                        self.durable,
                        key,
                        slot.scope,
                        &mut slot.value,
                        Save::Put,
                    );
                    self.store_empty = false;
                    slot.in_store = InStore::Current;
                    slot.persisted_at = epoch;
                    self.leaving_bytes += bytes;
                    self.leaving.push_back((epoch, handle, bytes));
                }
            }
        }
        evicted
    }

    /// Moves nodes out of the highest chunks that hold any into the free
    /// places of lower ones, while the arena is sparse (see [`SPARSE`]),
    /// so that those chunks empty and give their memory back: slots leave
    /// memory from every chunk, in the order of their recency lists, and
    /// their places would otherwise stay in memory, outside the budget,
    /// however few slots are left. Only nodes in a recency list move. The
    /// dirty and saving queues name slots changed since they were
    /// persisted, which are in none; the leaving queue names slots in none,
    /// or slots changed since they were queued, which it would not drop
    /// anyway; the handles that timers keep are hints, found stale by the
    /// moved node's new generation. A moved node keeps its place in its
    /// recency list.
    pub fn compact(&mut self) {
        if !self.arena.is_sparse() {
            return;
        }
        while !self.arena.is_dense() {
            let Some(top) = self.arena.top_above_free() else {
                return;
            };
            let first = top * CHUNK as u32;
            for i in first..first + CHUNK as u32 {
                let movable = self
                    .arena
                    .place(i)
                    .and_then(|p| p.node.as_ref())
                    .is_some_and(|n| n.listed.is_some());
                if movable && !self.relocate(i, top) {
                    return;
                }
            }
            if self.arena.free[top as usize].len() < CHUNK {
                // A node that may not move holds the chunk: it moves later.
                return;
            }
        }
    }

    /// Moves the node at `i`, in chunk `top`, to the lowest free place, if
    /// that is in a lower chunk; false if none is.
    fn relocate(&mut self, i: u32, top: u32) -> bool {
        if self.arena.with_free.first().is_none_or(|&c| c >= top) {
            return false;
        }
        let node = self.arena.remove(i);
        let (hash, listed, prev, next) = (node.hash, node.listed, node.prev, node.next);
        let to = self.arena.insert(node);
        self.index.remove(hash, i);
        self.index.insert(hash, to);
        let list = listed.expect("only listed nodes move");
        self.relink(list, (prev, next), (to, to));
        true
    }

    /// The next slot of `list` to leave memory, if one may (see [`Waits`]).
    /// Slots saved by a checkpoint not yet committed are the newest of a
    /// list: when the newest may not leave yet, the oldest is taken.
    fn next_to_leave(&self, list: Waits, committed: u64) -> Option<u32> {
        let ends = self.lists[list as usize];
        let may_leave = |i: u32| {
            let slot = &self.arena.at(i).slot;
            !(slot.in_store == InStore::Current && slot.persisted_at > committed)
        };
        let candidates = match list {
            Waits::Timer => [ends.newest, ends.oldest],
            Waits::Nothing | Waits::Record => [ends.oldest, NIL],
        };
        candidates.into_iter().find(|&i| i != NIL && may_leave(i))
    }

    /// Drops the slots that wait for nothing and whose value `expired` says
    /// has outlived the state's retention, oldest persisted first, stopping
    /// at the first that has not (a slot touched later than those persisted
    /// after it holds them until it expires too, or leaves by
    /// [`Slots::evict`]). Nothing is written: what the store holds of such
    /// a slot is as old (the value of its last persist, at most), which the
    /// retention's compaction filter removes and a read takes for absent.
    /// Returns how many slots left.
    pub fn expire(&mut self, expired: impl Fn(&V) -> bool) -> u64 {
        let mut dropped = 0;
        loop {
            let i = self.lists[Waits::Nothing as usize].oldest;
            if i == NIL || !expired(&self.arena.at(i).slot.value) {
                break;
            }
            let node = self.remove(i);
            self.bytes -= node.slot.bytes;
            dropped += 1;
        }
        dropped
    }

    /// Removes the slot `handle` names unless it changed since checkpoint
    /// `persisted_at`; returns it.
    fn drop_if_unchanged(&mut self, handle: Handle, persisted_at: u64) -> Option<Slot<V>> {
        if !self
            .arena
            .get_mut(handle)?
            .slot
            .unchanged_since(persisted_at)
        {
            return None;
        }
        let node = self.remove(handle.index);
        self.bytes -= node.slot.bytes;
        Some(node.slot)
    }

    /// Forgets every slot of the scopes `gone` says (their state was
    /// committed, and now belongs to another instance).
    pub fn release(&mut self, gone: impl Fn(i32) -> bool) {
        debug_assert!(
            self.saving.is_empty(),
            "a checkpoint being saved is finished before a release"
        );
        let leaving: Vec<u32> = self
            .arena
            .indices()
            .filter(|&i| gone(self.arena.at(i).slot.scope))
            .collect();
        for i in leaving {
            let node = self.remove(i);
            self.bytes -= node.slot.bytes;
            if node.slot.bytes == 0 {
                self.unmeasured -= 1;
            }
        }
        let arena = &mut self.arena;
        self.dirty.retain(|&h| arena.get_mut(h).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Cf;

    fn node(n: u32) -> Node<[u8; 12], EntityState> {
        let mut key = [0; 12];
        key[..4].copy_from_slice(&n.to_be_bytes());
        Node {
            key,
            hash: u64::from(n),
            slot: Slot::new(0),
            listed: None,
            prev: NIL,
            next: NIL,
        }
    }

    /// Places are taken lowest chunk first, so that the highest chunks
    /// empty out as nodes leave; an emptied chunk is given back (but one,
    /// kept ready), and a handle to a place it had never names a later node.
    #[test]
    fn the_arena_fills_low_and_gives_back_emptied_chunks() {
        let mut arena = Arena::new();
        let placed: Vec<u32> = (0..3 * CHUNK as u32)
            .map(|n| arena.insert(node(n)))
            .collect();
        assert_eq!(placed, (0..3 * CHUNK as u32).collect::<Vec<_>>());
        let stale = arena.handle(2 * CHUNK as u32);
        // Half of the first chunk and all of the other two leave.
        for &i in placed.iter().filter(|&&i| i % 2 == 1 || i >= CHUNK as u32) {
            arena.remove(i);
        }
        assert_eq!(arena.len, CHUNK / 2);
        let kept = arena.chunks.iter().filter(|c| !c.is_empty()).count();
        assert_eq!(kept, 2, "the first chunk and one empty chunk kept ready");
        assert!(
            arena.chunks[2].is_empty(),
            "the highest empty chunk is given back"
        );
        assert!(arena.get(stale).is_none());
        // New nodes fill the first chunk's holes before any other chunk.
        let again: Vec<u32> = (0..CHUNK as u32 / 2)
            .map(|n| arena.insert(node(n)))
            .collect();
        assert!(again.iter().all(|&i| i < CHUNK as u32 && i % 2 == 1));
        // Then the chunk kept ready, then the one given back, built again.
        let mut next: Vec<u32> = (0..2 * CHUNK as u32)
            .map(|n| arena.insert(node(n)))
            .collect();
        assert!(next[..CHUNK].iter().all(|&i| i / CHUNK as u32 == 1));
        next.sort_unstable();
        assert_eq!(next, (CHUNK as u32..3 * CHUNK as u32).collect::<Vec<_>>());
        assert!(
            arena.get(stale).is_none(),
            "a place built again has a later generation"
        );
        assert_eq!(arena.indices().count(), 3 * CHUNK);
    }

    /// Ids seen are held in the key's record while there are two: they
    /// cost the budget nothing more until a third moves them to the heap.
    #[test]
    fn ids_held_inline_cost_no_heap_until_they_outgrow_it() {
        use crate::detect::key::SEEN_IDS;
        use crate::model::first_sighting;
        let mut state = KeyState::default();
        for id in 1..=2 {
            assert!(first_sighting(&mut state.seen, id, SEEN_IDS));
        }
        assert!(!first_sighting(&mut state.seen, 2, SEEN_IDS));
        assert_eq!(state.heap_bytes(), 0);
        assert!(first_sighting(&mut state.seen, 3, SEEN_IDS));
        assert_eq!(state.heap_bytes(), 4 * size_of::<u64>());
    }

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

        /// Even counts wait for nothing, odd ones for their timer, or for
        /// a record when one more than a multiple of four.
        fn waits(&self) -> Waits {
            match self.0 % 4 {
                0 | 2 => Waits::Nothing,
                1 => Waits::Record,
                _ => Waits::Timer,
            }
        }
    }

    fn save(
        batch: &mut StateBatch,
        _: bool,
        key: &CompactString,
        scope: i32,
        c: &mut Count,
        _: Save,
    ) {
        batch.put(
            Cf::Keys,
            scope,
            key.as_bytes().to_vec(),
            c.0.to_le_bytes().to_vec(),
        );
    }

    fn set(slots: &mut Slots<CompactString, Count>, key: &str, n: u64) {
        slots.change(key, 0, |_| Ok(None)).unwrap().1.value.0 = n;
    }

    /// The saved (key, count) pairs, in key order.
    fn saved(slots: &mut Slots<CompactString, Count>) -> Vec<(String, u64)> {
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

    /// Whether the slot of `key` is in memory (without touching it).
    fn holds(slots: &Slots<CompactString, Count>, key: &str) -> bool {
        slots
            .find(slots.hasher.hash_one(key.as_bytes()), key)
            .is_some()
    }

    #[test]
    fn expired_slots_leave_memory_oldest_persisted_first_unless_they_wait() {
        let mut slots = Slots::new(true, save);
        // Persisted by three checkpoints: a; b and w (odd: it waits); c.
        // The count stands for the time the slot was last touched.
        let checkpoints = [vec![("a", 2)], vec![("b", 8), ("w", 1)], vec![("c", 4)]];
        for (epoch, touched) in (1..).zip(checkpoints) {
            for (key, n) in touched {
                set(&mut slots, key, n);
            }
            slots.begin(epoch);
            assert!(slots.save_some(usize::MAX));
            slots.take_saved();
        }
        let before = slots.resident_bytes();
        assert_eq!(slots.expire(|c| c.0 < 5), 1);
        assert!(!holds(&slots, "a"), "a expired");
        assert!(
            holds(&slots, "c"),
            "b, persisted before c and not expired, holds it"
        );
        assert!(slots.resident_bytes() < before);
        assert_eq!(slots.expire(|c| c.0 < 10), 2, "b and c");
        assert_eq!(slots.len(), 1);
        assert!(holds(&slots, "w"), "a slot whose timer is armed stays");
        assert_eq!(slots.expire(|_| true), 0);
    }

    /// Persists the `(key, count)` of each checkpoint in turn, from 1.
    fn persist(slots: &mut Slots<CompactString, Count>, checkpoints: &[&[(&str, u64)]]) {
        for (epoch, touched) in (1..).zip(checkpoints) {
            for &(key, n) in touched.iter() {
                set(slots, key, n);
            }
            slots.begin(epoch);
            assert!(slots.save_some(usize::MAX));
            slots.take_saved();
        }
    }

    /// The keys that leave memory, one slot at a time, with checkpoint
    /// `committed` the last committed.
    fn leaving_order(
        slots: &mut Slots<CompactString, Count>,
        keys: &[&str],
        committed: u64,
    ) -> Vec<String> {
        let slot = entry_bytes::<CompactString, Count>();
        let mut order = Vec::new();
        while slots.evict(slot, committed, committed, &mut StateBatch::default()) == 1 {
            let gone = keys
                .iter()
                .find(|k| !order.contains(&k.to_string()) && !holds(slots, k))
                .expect("one slot left");
            order.push(gone.to_string());
        }
        order
    }

    /// Four chunks of slots, persisted; then every fourth changes and is
    /// persisted again, and the others leave memory, oldest first: a
    /// quarter of every chunk is left. Returns the slots, all the keys, and
    /// the handle of the last slot changed, in the highest chunk.
    fn scattered() -> (Slots<CompactString, Count>, Vec<String>, Handle) {
        let mut slots = Slots::new(true, save);
        let keys: Vec<String> = (0..4 * CHUNK).map(|n| format!("k{n}")).collect();
        let mut last = None;
        for epoch in 1..=2 {
            for (n, key) in keys.iter().enumerate() {
                if epoch == 1 || n % 4 == 0 {
                    let (handle, slot) = slots.change(key, 0, |_| Ok(None)).unwrap();
                    slot.value.0 = 2 * epoch;
                    last = Some(handle);
                }
            }
            slots.begin(epoch);
            assert!(slots.save_some(usize::MAX));
            slots.take_saved();
        }
        let slot = entry_bytes::<CompactString, Count>();
        let left = slots.evict(3 * CHUNK * slot, 2, 2, &mut StateBatch::default());
        assert_eq!(left, 3 * CHUNK as u64);
        (slots, keys, last.unwrap())
    }

    /// Slots that leave from every chunk leave free places in all of them,
    /// which emptying a chunk never gives back. Compacting moves the nodes
    /// down into them: the emptied chunks are given back, every slot is
    /// still found with its value and leaves in the same order, and a
    /// handle to a moved slot no longer names it (a timer's hint, then a
    /// lookup).
    #[test]
    fn compacting_gives_back_the_chunks_that_slots_left_from_everywhere() {
        let holding = |slots: &Slots<CompactString, Count>| {
            let mut chunks: Vec<u32> = slots.arena.indices().map(|i| i / CHUNK as u32).collect();
            chunks.dedup();
            chunks.len()
        };
        let (mut slots, keys, moved) = scattered();
        assert_eq!(holding(&slots), 4);
        slots.compact();
        // A chunk's worth of slots, with a chunk's worth of free places
        // left (see `SPARSE`).
        assert_eq!(holding(&slots), 2);
        let built = slots.arena.chunks.iter().filter(|c| !c.is_empty()).count();
        assert_eq!(built, 3, "the two chunks holding them and one kept ready");
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(holds(&slots, key), n % 4 == 0, "{key}");
        }
        assert!(slots.arena.get(moved).is_none());
        let (_, slot) = slots
            .find_to_change(&keys[4 * CHUNK - 4], Some(moved), 0, |_| Ok(None), |_| true)
            .unwrap()
            .expect("found by its key");
        assert_eq!(slot.value.0, 4);

        let (before, _, _) = scattered();
        let (mut after, _, _) = scattered();
        after.compact();
        assert_eq!(
            recency(&after),
            recency(&before),
            "moved slots keep their places in the recency list"
        );
    }

    /// The keys of the slots that wait for nothing, oldest first.
    fn recency(slots: &Slots<CompactString, Count>) -> Vec<String> {
        let mut keys = Vec::new();
        let mut at = slots.lists[Waits::Nothing as usize].oldest;
        while at != NIL {
            let node = slots.arena.at(at);
            keys.push(node.key.to_string());
            at = node.next;
        }
        keys
    }

    /// A slot changed since it was persisted is named by the queue of the
    /// next checkpoint, by its handle: it does not move, and holds its
    /// chunk until it is persisted.
    #[test]
    fn a_changed_slot_does_not_move() {
        let (mut slots, keys, _) = scattered();
        let key = &keys[4 * CHUNK - 4];
        let (changed, slot) = slots.change(key, 0, |_| Ok(None)).unwrap();
        slot.value.0 = 6;
        slots.compact();
        assert!(
            slots.arena.get(changed).is_some(),
            "still where the queue names it"
        );
        assert_eq!(changed.index / CHUNK as u32, 3);
        slots.begin(3);
        assert!(slots.save_some(usize::MAX));
        assert_eq!(saved(&mut slots), [(key.clone(), 6)]);
    }

    #[test]
    fn slots_leave_in_the_order_of_what_they_wait_for() {
        // Counts: even waits for nothing, 3 and 7 for a timer, 1 and 5 for a
        // record.
        let checkpoints: [&[(&str, u64)]; 2] = [
            &[("nothing-1", 2), ("timer-1", 3), ("record-1", 1)],
            &[("timer-2", 7), ("record-2", 5), ("nothing-2", 4)],
        ];
        let keys = checkpoints
            .concat()
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>();

        let mut slots = Slots::new(true, save);
        persist(&mut slots, &checkpoints);
        assert_eq!(
            leaving_order(&mut slots, &keys, 2),
            [
                "nothing-1",
                "nothing-2",
                "timer-2",
                "timer-1",
                "record-1",
                "record-2"
            ],
            "idle slots first, oldest first; then those due last; those awaiting a record last"
        );

        let mut slots = Slots::new(true, save);
        persist(&mut slots, &checkpoints);
        assert_eq!(
            leaving_order(&mut slots, &keys, 1),
            ["nothing-1", "timer-1", "record-1"],
            "the slots of checkpoint 2, not committed, stay: the oldest leave instead"
        );
    }

    #[test]
    fn slots_that_wait_leave_memory_after_those_that_do_not() {
        let mut slots = Slots::new(true, save);
        // Odd counts wait.
        for (key, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
            set(&mut slots, key, n);
        }
        slots.begin(1);
        assert!(slots.save_some(usize::MAX));
        slots.take_saved();
        let slot = entry_bytes::<CompactString, Count>();
        let mut batch = StateBatch::default();
        assert_eq!(slots.evict(2 * slot, 1, 1, &mut batch), 2);
        assert_eq!(slots.evict(slot, 1, 1, &mut batch), 1);
        let in_memory: Vec<&str> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .filter(|key| {
                slots
                    .find_to_change(key, None, 0, |_| Ok(None), |_| true)
                    .unwrap()
                    .is_some()
            })
            .collect();
        assert_eq!(in_memory.len(), 2, "{in_memory:?}");
        assert!(
            in_memory.iter().all(|key| ["a", "c", "e"].contains(key)),
            "b and d, which wait for nothing, left first, then one that waits: {in_memory:?} stay"
        );
    }
}
