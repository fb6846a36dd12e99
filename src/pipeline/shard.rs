//! A worker's shard of state, and what the worker asks of it: the cache
//! keys and entities it owns (in memory in [`super::cache`]'s slots, written
//! behind to the store, read back on first use), the deadline timers of its
//! keys, the index of keys with undecided changes that glob invalidations
//! scan, and the retained globs.
//!
//! The worker applies records with the detectors; the shard finds the state
//! a record applies to, re-arms the key's timer and files it among the open
//! keys after each change, fires the timers the watermark passes, and
//! saves, evicts, loads and releases state at checkpoints and rebalances.
//!
//! Every key and entity belongs to a scope (its input partition number, see
//! [`crate::state::Cf`]); when the partitions of a scope move to another
//! instance the shard forgets the scope, and when they come (back) it loads
//! the scope's retained globs from the store. The timers a scope has in the
//! store when it is loaded are not read then: they are read in due order
//! as the watermark comes to them, a chunk at a time (so that neither
//! starting nor memory grows with the keys armed in the store), and their
//! keys are filed among the open keys behind the work, before any glob
//! invalidation looks there.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::cache::{Cached, Footprint, Handle, Prefetch, Save, Slot, Slots, Waits};
use super::checkpoints::Checkpoints;
use super::{Engine, WorkItem};
use crate::detect::entity::EntityState;
use crate::detect::key::{
    Decisions, KeyRules, KeyState, RetainedGlob, Wildcards, glob_matches, glob_prefix,
};
use crate::hash;
use crate::mapping::Change;
use crate::model::Millis;
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{StateEvicted, StateSize, Stats};
use crate::time::TimerQueue;

/// What is stored per cache key: the detector's state and the due time of
/// the key's timer (kept together so they are committed together).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredKey {
    state: KeyState,
    armed: Option<Millis>,
}

/// A cache key in memory.
#[derive(Default)]
struct KeyEntry {
    stored: StoredKey,
    /// The timer as the store has it (to delete it when it changes).
    persisted_armed: Option<Millis>,
    /// Whether the key is in the index of keys with undecided changes.
    open: bool,
    /// Whether an alert of the key waits among [`Timers::alerts`] at its
    /// armed time (an alert of a key not marked is passed by).
    alert: bool,
}

impl Footprint for KeyEntry {
    fn heap_bytes(&self) -> usize {
        self.stored.state.heap_bytes()
    }
}

impl Cached for KeyEntry {
    fn is_finished(&self) -> bool {
        self.stored.state.is_empty() && self.stored.armed.is_none()
    }

    fn waits(&self) -> Waits {
        if self.stored.armed.is_none() {
            Waits::Nothing
        } else if self.stored.state.awaits_cover() {
            Waits::Record
        } else {
            Waits::Timer
        }
    }
}

/// An entity in memory, with the latest commit time of its changes.
struct EntityEntry {
    state: EntityState,
    touched: Millis,
}

impl Footprint for EntityEntry {
    fn heap_bytes(&self) -> usize {
        self.state.heap_bytes()
    }
}

impl Cached for EntityEntry {
    /// Entities are kept until retention removes them from the store.
    fn is_finished(&self) -> bool {
        false
    }

    /// An entity has no timer: it is needed again only by a change.
    fn waits(&self) -> Waits {
        Waits::Nothing
    }
}

impl Default for EntityEntry {
    fn default() -> Self {
        EntityEntry {
            state: EntityState::default(),
            touched: Millis::MIN,
        }
    }
}

/// Keys with undecided changes and their scope, in key order.
type OpenKeys = BTreeMap<OpenKey, i32>;

/// A key in the index of open keys, ordered as its bytes. The key is held
/// inline (up to 24 bytes) and its first eight bytes also as one number,
/// compared first: most comparisons of an insert or a removal end there,
/// without reading a string or calling `memcmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenKey {
    head: u64,
    key: CompactString,
}

impl OpenKey {
    fn new(key: &str) -> Self {
        let mut head = [0u8; 8];
        let n = key.len().min(8);
        head[..n].copy_from_slice(&key.as_bytes()[..n]);
        OpenKey {
            head: u64::from_be_bytes(head),
            key: CompactString::from(key),
        }
    }
}

/// The order of the keys' bytes: where two heads differ, the first byte
/// that differs decides both, a key that ends there (padded with zeros)
/// being the lesser; equal heads fall back to the whole keys.
impl Ord for OpenKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.key.as_bytes().cmp(other.key.as_bytes()))
    }
}

impl PartialOrd for OpenKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A key's timer in the queue: the key and its scope, and the key's slot
/// as it was when armed (which spares the lookup while the key stays in
/// memory).
struct Armed {
    key: CompactString,
    scope: i32,
    slot: Option<Handle>,
}

/// A shard's timers: every armed key's, and apart, to fire first, the
/// alerts: the slots of the keys in memory with a change that no
/// invalidation covers by its deadline (see
/// [`KeyState::uncovered_by_deadline`]), at the key's armed time. Such a
/// key reports a missing invalidation when it fires, unless an
/// invalidation in time comes first. A watermark that passes many
/// deadlines at once (a partition going idle, a lagging one catching up)
/// fires their keys in due order, about a microsecond each, most of them
/// covered in time: the alerts are fired first, so that what is missing is
/// reported without waiting for them. An alert is not taken out of the
/// queue when an invalidation covers its key (that would search its due
/// time's bucket, on every invalidation): the key is marked, and the alert
/// is passed by when it comes due, as is one whose key has left memory,
/// moved in it ([`Slots::compact`]: the key then fires in due order) or
/// was armed again since. A key an alert names fires once, whichever queue
/// reaches it first: the other then no longer matches its armed time.
/// Alerts are kept for live inputs only: over files nobody waits for a
/// verdict.
#[derive(Default)]
struct Timers {
    queue: TimerQueue<Armed>,
    alerts: TimerQueue<Handle>,
    /// Whether alerts are kept (live inputs).
    alerting: bool,
}

impl Timers {
    fn new(alerting: bool) -> Self {
        Timers {
            alerting,
            ..Timers::default()
        }
    }

    /// Queues an alert of the key (in memory at `at`) if its state now
    /// calls for one and it has none at its armed time, or marks it as
    /// having none: `before` is the time it was armed for before the
    /// change (where its alert, if marked, is queued).
    fn file_alert(&mut self, entry: &mut KeyEntry, before: Option<Millis>, at: Handle) {
        if !self.alerting {
            return;
        }
        let wants = (entry.stored.armed).filter(|_| entry.stored.state.uncovered_by_deadline());
        let has = before.filter(|_| entry.alert);
        if has != wants {
            if let Some(due) = wants {
                self.alerts.push(due, at);
            }
            entry.alert = wants.is_some();
        }
    }
}

/// The timers of a scope that were in the store when it was loaded: read
/// in due order as the watermark comes to them, and filed among the open
/// keys behind the work. Timers armed since are in memory; those the store
/// has by then too (saved at a checkpoint) may be read again, and are
/// passed by as any timer that no longer matches its key's.
struct Restored {
    /// The store key of the last of them.
    last: Vec<u8>,
    /// The store key of the next to read, and its due time.
    next: Option<(Millis, Vec<u8>)>,
    /// The store key of the next to file among the open keys.
    unfiled: Option<Vec<u8>>,
}

impl Restored {
    /// The timers of `scope` in `store`, to read; `None` if it has none.
    fn of(store: &dyn Store, scope: i32) -> Result<Option<Restored>, StateError> {
        let (from, to) = codec::scope_range(scope);
        let Some(last) = store.last_in(Cf::Timers, &from, &to)? else {
            return Ok(None);
        };
        let mut first = None;
        store.scan_range(Cf::Timers, &from, &to, &mut |k, _| {
            first = Some(k.to_vec());
            false
        })?;
        Ok(first.map(|first| Restored {
            next: Some((due_of(&first), first.clone())),
            unfiled: Some(first),
            last,
        }))
    }

    /// Whether a timer read from here is due by `wm`.
    fn is_due(&self, wm: Millis) -> bool {
        self.next.as_ref().is_some_and(|(due, _)| *due <= wm)
    }
}

/// The due time of a timer's store key (`Millis::MIN` if it cannot be
/// parsed: such a key is read first and passed by).
fn due_of(key: &[u8]) -> Millis {
    codec::parse_timer_key(key).map_or(Millis::MIN, |(_, due, _)| due)
}

/// Timers read from the store, or filed among the open keys, at a time.
const RESTORE_CHUNK: usize = 1024;

/// How many timers after the next one firing asks the CPU for a timer's
/// slot (see [`Shard::prefetch_timers`]).
const FIRE_AHEAD: usize = 8;

/// The share of a shard's budget that the kept keys and entities changed
/// since the last checkpoint may take before the shard asks for the next
/// one (see [`Shard::checkpoint_full`]): a checkpoint then writes about a
/// quarter of the budget at most, however many keys a burst of firing
/// reads back and changes (RocksDB holds a checkpoint whole twice more, in
/// its write batch and its memtable). The bench's 1 M workload with kept
/// state changed less than that between two checkpoints of the default
/// interval; a smaller share made it write its keys more often, for more
/// CPU (see BENCHMARKS.md).
const CHECKPOINT_SHARE: usize = 4;

/// Bytes of slots (as the budget counts them) that leave memory in one
/// write to the scratch store when state is not kept (the default of
/// [`super::EngineOptions::spill_step`]): until a write returns, the slots
/// stay in memory beside their encoded writes and RocksDB's copy of them.
/// A tenth of a worker's share at once (see [`Shard::leave_memory`]) held
/// about 40 MB of write batches a worker in the bench's 10 M check (see
/// BENCHMARKS.md).
pub(super) const SPILL_STEP: usize = 4 << 20;

/// The least share of a shard's budget left to its keys and entities in
/// memory however much its timers and open keys take (see
/// [`Shard::slot_budget`]).
const LEAST_SLOT_SHARE: usize = 4;

/// Approximate bytes of a timer in the queue: its entry, and the spare room
/// of the bucket it is in (a bucket's room doubles as it grows).
pub(super) const TIMER_BYTES: usize = size_of::<Armed>() * 3 / 2;

/// Approximate bytes of an alert in the queue, as [`TIMER_BYTES`].
const ALERT_BYTES: usize = size_of::<Handle>() * 3 / 2;

/// Approximate bytes of a key in the index of open keys: its entry in a
/// B-tree node (nodes are about two-thirds full), and its share of the
/// nodes' headers and of the index's inner nodes.
pub(super) const OPEN_KEY_BYTES: usize = (size_of::<OpenKey>() + size_of::<i32>()) * 3 / 2 + 8;

/// Calls `f` on the timers of `scope` from `from` through `last` while it
/// returns true, at most `n` of them; returns the store key of the next,
/// `None` when every one through `last` was passed.
fn walk_timers(
    store: &dyn Store,
    scope: i32,
    from: &[u8],
    last: &[u8],
    n: usize,
    f: &mut dyn FnMut(Millis, &str) -> bool,
) -> Result<Option<Vec<u8>>, StateError> {
    let (_, to) = codec::scope_range(scope);
    let (mut next, mut seen) = (None, 0);
    store.scan_range(Cf::Timers, from, &to, &mut |k, _| {
        if k > last {
            return false;
        }
        let parsed = codec::parse_timer_key(k);
        if seen == n || parsed.is_some_and(|(_, due, key)| !f(due, key)) {
            next = Some(k.to_vec());
            return false;
        }
        seen += 1;
        true
    })?;
    Ok(next)
}

/// The least event time by which the oldest retained glob must have expired
/// before the globs are pruned.
const GLOB_PRUNE_SLACK_MS: i64 = 1_000;

/// Storage key of an entity: its scope, then its id (the hash of table and
/// primary key), both big-endian; it is also the entity's key in memory.
fn entity_key(scope: i32, entity: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&codec::scope_prefix(scope));
    key[4..].copy_from_slice(&entity.to_be_bytes());
    key
}

/// Reads a key from the store; `open`: whether it is in the index of keys
/// with undecided changes. A key that waits for nothing and has outlived
/// the retention is absent, whether or not the store's compaction filter
/// has removed it yet.
fn load_key(
    store: &dyn Store,
    key: &str,
    scope: i32,
    open: &OpenKeys,
) -> Result<Option<KeyEntry>, StateError> {
    let Some(stored) = read_stored(store, key, scope)? else {
        return Ok(None);
    };
    if stored.armed.is_none() && store.retention().expired(stored.state.touched) {
        return Ok(None);
    }
    Ok(Some(KeyEntry {
        persisted_armed: stored.armed,
        open: open.contains_key(&OpenKey::new(key)),
        alert: false,
        stored,
    }))
}

fn read_stored(store: &dyn Store, key: &str, scope: i32) -> Result<Option<StoredKey>, StateError> {
    let Some(bytes) = store.get(Cf::Keys, &codec::scoped(scope, key.as_bytes()))? else {
        return Ok(None);
    };
    let (_, stored): (Millis, StoredKey) = codec::decode(Cf::Keys, &bytes)?;
    Ok(Some(stored))
}

/// A cache key's state and armed deadline as `scope` of the store holds
/// them (as of the last checkpoint), for inspection.
pub fn read_key(
    store: &dyn Store,
    key: &str,
    scope: i32,
) -> Result<Option<(KeyState, Option<Millis>)>, StateError> {
    Ok(read_stored(store, key, scope)?.map(|stored| (stored.state, stored.armed)))
}

/// Writes the timers of the keys of `scope` the store holds, armed as each
/// key says: the index of due times that the changelog does not carry (see
/// [`Cf::handed_over`]), for keys restored from it. Returns how many. The
/// keys are read a batch at a time, each batch's timers written before the
/// next is read (no store is written while it is read).
pub fn index_timers(store: &dyn Store, scope: i32) -> Result<u64, StateError> {
    /// Timers written at a time.
    const BATCH: usize = 10_000;
    let (from, to) = codec::scope_range(scope);
    let mut from = from.to_vec();
    let mut written = 0;
    loop {
        let mut batch = StateBatch::default();
        let (mut next, mut failed) = (None, None);
        store.scan_range(Cf::Keys, &from, &to, &mut |k, v| {
            if batch.len() >= BATCH {
                next = Some(k.to_vec());
                return false;
            }
            match armed_key(k, v) {
                Ok(Some((due, key))) => put_timer(&mut batch, scope, due, key),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
            failed.is_none()
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        written += batch.len() as u64;
        store.write(batch)?;
        match next {
            Some(key) => from = key,
            None => return Ok(written),
        }
    }
}

/// The due time and cache key of a stored key (storage key `k`, value
/// `v`), if it is armed.
fn armed_key<'k>(k: &'k [u8], v: &[u8]) -> Result<Option<(Millis, &'k str)>, StateError> {
    let (_, stored): (Millis, StoredKey) = codec::decode(Cf::Keys, v)?;
    let Some(due) = stored.armed else {
        return Ok(None);
    };
    let key = codec::unscoped(k)
        .and_then(|(_, key)| std::str::from_utf8(key).ok())
        .ok_or_else(|| StateError::Corrupt {
            cf: Cf::Keys.name(),
            message: "a key that is not UTF-8".into(),
        })?;
    Ok(Some((due, key)))
}

/// Writes the timer of `key`, due at `due`, to `batch`.
fn put_timer(batch: &mut StateBatch, scope: i32, due: Millis, key: &str) {
    batch.put(
        Cf::Timers,
        scope,
        codec::timer_key(scope, due, key),
        Vec::new(),
    );
}

/// Reads an entity from the store.
fn load_entity(store: &dyn Store, key: &[u8; 12]) -> Result<Option<EntityEntry>, StateError> {
    let Some(bytes) = store.get(Cf::Entities, key)? else {
        return Ok(None);
    };
    let (touched, state) = codec::decode(Cf::Entities, &bytes)?;
    Ok(Some(EntityEntry { state, touched }))
}

/// An entity's state and the latest commit time of its changes as `scope`
/// of the store holds them (as of the last checkpoint), for inspection:
/// the entity of row `pk` (the primary key as a JSON object, as violations
/// name it) of `table` (as `[[tables]]` names it).
pub fn read_entity(
    store: &dyn Store,
    table: &str,
    pk: &str,
    scope: i32,
) -> Result<Option<(EntityState, Millis)>, StateError> {
    let key = entity_key(scope, hash::entity(table, pk));
    Ok(load_entity(store, &key)?.map(|entry| (entry.state, entry.touched)))
}

/// Fires the timer of a key, armed and due by `wm`: the detector settles
/// what the watermark decides (into `out`), and the key is armed again for
/// what is left.
fn fire(
    key: &str,
    (at, slot): (Handle, &mut Slot<KeyEntry>),
    wm: Millis,
    rules: &KeyRules,
    timers: &mut Timers,
    open: &mut OpenKeys,
    out: &mut Decisions,
) {
    let entry = &mut slot.value;
    let before = entry.stored.armed.take();
    let next = entry.stored.state.advance(key, wm, rules, out);
    if let Some(next) = next.filter(|n| *n > wm) {
        entry.stored.armed = Some(next);
        timers.queue.push(next, armed(key, slot.scope, at));
    }
    rearm(key, (at, slot), before, rules, timers, open);
}

/// Bookkeeping after a key's state changed or its timer fired: arms the
/// key for its next due time if that comes before the one it is armed
/// for, files its alert (`before`: the time it was armed for, see
/// [`Timers::file_alert`]), and files it among the open keys or out.
fn rearm(
    key: &str,
    (at, slot): (Handle, &mut Slot<KeyEntry>),
    before: Option<Millis>,
    rules: &KeyRules,
    timers: &mut Timers,
    open: &mut OpenKeys,
) {
    let entry = &mut slot.value;
    if let Some(due) = entry.stored.state.next_due(rules)
        && entry.stored.armed.is_none_or(|armed| due < armed)
    {
        entry.stored.armed = Some(due);
        timers.queue.push(due, armed(key, slot.scope, at));
    }
    timers.file_alert(entry, before, at);
    let is_open = entry.stored.state.has_undecided();
    if is_open != entry.open {
        entry.open = is_open;
        if is_open {
            open.insert(OpenKey::new(key), slot.scope);
        } else {
            open.remove(&OpenKey::new(key));
        }
    }
}

/// The timer of a key in memory.
fn armed(key: &str, scope: i32, slot: Handle) -> Armed {
    Armed {
        key: CompactString::from(key),
        scope,
        slot: Some(slot),
    }
}

/// Writes a key to `batch` (`durable`: with its timer).
fn save_key(
    batch: &mut StateBatch,
    durable: bool,
    key: &CompactString,
    scope: i32,
    entry: &mut KeyEntry,
    save: Save,
) {
    if durable && entry.persisted_armed != entry.stored.armed {
        if let Some(old) = entry.persisted_armed {
            batch.delete(Cf::Timers, scope, codec::timer_key(scope, old, key));
        }
        if let Some(new) = entry.stored.armed {
            put_timer(batch, scope, new, key);
        }
        entry.persisted_armed = entry.stored.armed;
    }
    let storage_key = codec::scoped(scope, key.as_bytes());
    match save {
        Save::Delete => batch.delete(Cf::Keys, scope, storage_key),
        Save::Put => batch.put(
            Cf::Keys,
            scope,
            storage_key,
            codec::encode(entry.stored.state.touched, &entry.stored),
        ),
    }
}

/// Writes an entity to `batch` (the same whether state is kept or not).
fn save_entity(
    batch: &mut StateBatch,
    _durable: bool,
    key: &[u8; 12],
    scope: i32,
    entry: &mut EntityEntry,
    save: Save,
) {
    match save {
        Save::Delete => batch.delete(Cf::Entities, scope, key.to_vec()),
        Save::Put => batch.put(
            Cf::Entities,
            scope,
            key.to_vec(),
            codec::encode(entry.touched, &entry.state),
        ),
    }
}

/// One worker's shard of state (see the module's head).
pub(super) struct Shard {
    index: usize,
    shards: usize,
    store: Arc<dyn Store>,
    /// Whether state is written to the store (see [`super::EngineOptions`]).
    durable: bool,
    rules: KeyRules,
    /// Where state evictions are counted.
    stats: Arc<Stats>,
    keys: Slots<CompactString, KeyEntry>,
    entities: Slots<[u8; 12], EntityEntry>,
    /// Bytes of keys and entities this shard may keep in memory.
    budget: usize,
    /// Bytes of unkept state that leave memory in one write to the store.
    spill_step: usize,
    /// The latest checkpoint committed.
    checkpoints: Arc<Checkpoints>,
    /// The latest committed checkpoint as of the last eviction.
    evicted_by: u64,
    /// See [`Shard::holds_back_timers`].
    held_back: bool,
    /// The checkpoint being saved, or saved last.
    epoch: u64,
    /// The glob writes of checkpoint `epoch` while its keys and entities
    /// are saved (behind the work, when state is kept).
    saving: Option<StateBatch>,
    timers: Timers,
    /// The timers each loaded scope had in the store, as yet unread or
    /// unfiled.
    restored: BTreeMap<i32, Restored>,
    /// Keys with undecided changes (and their scope), ordered so that a glob
    /// invalidation can scan the keys sharing its literal prefix.
    open: OpenKeys,
    /// The most bytes the timers and open keys have taken since they were
    /// last empty, as [`Shard::slot_budget`] last saw them.
    index_peak: Cell<usize>,
    /// Glob invalidations kept for changes that arrive after them. Every
    /// shard holds all of them; shard 0 stores them.
    wildcards: Wildcards,
    /// The glob puts and deletes since the last checkpoint (see
    /// [`Shard::stores_globs`]).
    glob_writes: StateBatch,
}

impl Shard {
    /// Shard `index` of `shards`, empty until [`Shard::load`].
    pub(super) fn new(
        index: usize,
        shards: usize,
        engine: &Engine,
        checkpoints: Arc<Checkpoints>,
    ) -> Self {
        debug_assert!(index < shards);
        Shard {
            index,
            shards,
            store: Arc::clone(&engine.store),
            durable: engine.options.durable,
            rules: engine.options.key_rules,
            stats: Arc::clone(&engine.stats),
            keys: Slots::new(engine.options.durable, save_key),
            entities: Slots::new(engine.options.durable, save_entity),
            budget: engine.options.slot_budget / shards,
            spill_step: engine.options.spill_step,
            checkpoints,
            evicted_by: 0,
            held_back: false,
            epoch: 0,
            saving: None,
            timers: Timers::new(!engine.options.finite),
            restored: BTreeMap::new(),
            open: BTreeMap::new(),
            index_peak: Cell::new(0),
            wildcards: Wildcards::default(),
            glob_writes: StateBatch::default(),
        }
    }

    /// Whether state is kept (written to the store at checkpoints).
    pub(super) fn durable(&self) -> bool {
        self.durable
    }

    /// Scopes with timers in the store as yet unread or unfiled.
    pub(super) fn restoring(&self) -> usize {
        self.restored.len()
    }

    /// Whether there is work to do behind the records: timers due by `wm`,
    /// or a checkpoint being saved.
    pub(super) fn is_behind(&self, wm: Millis) -> bool {
        self.saving.is_some() || self.has_due(wm)
    }

    /// Whether there is work behind the records that the worker can do
    /// now: a checkpoint being saved, or timers due by `wm` that may fire
    /// (see [`Shard::may_fire`]).
    pub(super) fn can_work_behind(&self, wm: Millis) -> bool {
        self.saving.is_some() || (self.may_fire() && self.has_due(wm))
    }

    /// Whether timers are due by `wm`, in memory or in the store.
    fn has_due(&self, wm: Millis) -> bool {
        self.timers.queue.is_due(wm) || self.restored.values().any(|r| r.is_due(wm))
    }

    /// Whether timers due wait for memory: a firing stopped at the budget
    /// (see [`Shard::may_fire`]) since the due timers last ran out.
    pub(super) fn holds_back_timers(&self) -> bool {
        self.held_back
    }

    /// Whether timers may fire now. Firing reads keys back into memory,
    /// where kept state stays until a checkpoint saves it and commits: a
    /// shard of kept state over its budget fires no more until then (see
    /// [`super::worker`]'s `keep_within_budget`). State that is not kept
    /// is written out on the way instead (see [`Shard::fire_due`]).
    fn may_fire(&self) -> bool {
        !(self.durable && (self.over_budget() || self.checkpoint_full()))
    }

    /// Whether keys armed in the store are yet to be filed among the open
    /// keys (see [`Shard::file_some`]).
    pub(super) fn is_filing(&self) -> bool {
        self.restored.values().any(|r| r.unfiled.is_some())
    }

    /// Files up to `n` keys armed in the store (as their scope was loaded)
    /// among the open keys, as the index had them when they were saved:
    /// keys in memory are filed as they change.
    pub(super) fn file_some(&mut self, mut n: usize) -> Result<(), StateError> {
        let (index, shards) = (self.index, self.shards);
        let (store, keys, open) = (&*self.store, &self.keys, &mut self.open);
        for (&scope, restored) in &mut self.restored {
            let Some(from) = restored.unfiled.take() else {
                continue;
            };
            restored.unfiled =
                walk_timers(store, scope, &from, &restored.last, n, &mut |_, key| {
                    n -= 1;
                    if hash::shard_of_key(key, shards) == index && !keys.contains(key) {
                        open.insert(OpenKey::new(key), scope);
                    }
                    true
                })?;
            if n == 0 {
                break;
            }
        }
        self.restored
            .retain(|_, r| r.next.is_some() || r.unfiled.is_some());
        Ok(())
    }

    /// Reads the timers in the store due by `wm` that come before every
    /// one in memory, a chunk at a time, into the queue.
    fn read_due(&mut self, wm: Millis) -> Result<(), StateError> {
        let (index, shards) = (self.index, self.shards);
        loop {
            let first = self.timers.queue.first_due();
            let Some((&scope, restored)) = self.restored.iter_mut().find(|(_, r)| {
                r.next
                    .as_ref()
                    .is_some_and(|(due, _)| *due <= wm && first.is_none_or(|f| *due < f))
            }) else {
                return Ok(());
            };
            let (_, from) = restored.next.take().expect("due, so not yet read");
            let timers = &mut self.timers.queue;
            let next = walk_timers(
                &*self.store,
                scope,
                &from,
                &restored.last,
                RESTORE_CHUNK,
                &mut |due, key| {
                    if due > wm {
                        return false;
                    }
                    if hash::shard_of_key(key, shards) == index {
                        let key = CompactString::from(key);
                        timers.push(
                            due,
                            Armed {
                                key,
                                scope,
                                slot: None,
                            },
                        );
                    }
                    true
                },
            )?;
            restored.next = next.map(|key| (due_of(&key), key));
            if restored.next.is_none() && restored.unfiled.is_none() {
                self.restored.remove(&scope);
            }
        }
    }

    /// Applies `f` to a key's state (read from the store if not in memory),
    /// then re-arms its timer and files it among the open keys. A timer of
    /// the key that `wm` has passed fires first, as if it had fired when the
    /// watermark came (timers fire a few at a time, see
    /// [`Shard::fire_due`]): its decisions go to `out`.
    pub(super) fn update_key<R>(
        &mut self,
        key: &str,
        scope: i32,
        wm: Millis,
        out: &mut Decisions,
        f: impl FnOnce(&mut KeyState, &KeyRules, &Wildcards) -> R,
    ) -> Result<R, StateError> {
        let (store, open) = (&*self.store, &self.open);
        let (at, slot) = self
            .keys
            .change(key, scope, |k| load_key(store, k, scope, open))?;
        if slot.value.stored.armed.is_some_and(|due| due <= wm) {
            let (rules, timers, open) = (&self.rules, &mut self.timers, &mut self.open);
            fire(key, (at, &mut *slot), wm, rules, timers, open, out);
        }
        let result = f(&mut slot.value.stored.state, &self.rules, &self.wildcards);
        let before = slot.value.stored.armed;
        rearm(
            key,
            (at, slot),
            before,
            &self.rules,
            &mut self.timers,
            &mut self.open,
        );
        Ok(result)
    }

    /// Asks the CPU to load what applying `item` will read of the state
    /// (see [`Slots::prefetch`]): a hint, which changes nothing.
    pub(super) fn prefetch(&self, item: &WorkItem, what: Prefetch) {
        match item {
            WorkItem::Entity { change, scope } => self
                .entities
                .prefetch(&entity_key(*scope, change.entity), what),
            WorkItem::Change { key, .. }
            | WorkItem::Invalidation { key, .. }
            | WorkItem::Fill { key, .. } => self.keys.prefetch(key, what),
            WorkItem::Wildcard { .. } => {}
        }
    }

    /// The state of a change's entity (read from the store if not in
    /// memory, unless it has outlived the retention), noted as touched at
    /// the change's commit time.
    pub(super) fn entity(
        &mut self,
        change: &Change,
        scope: i32,
    ) -> Result<&mut EntityState, StateError> {
        let store = &*self.store;
        let (_, slot) =
            self.entities
                .change(&entity_key(scope, change.entity), scope, |k| {
                    Ok(load_entity(store, k)?
                        .filter(|entry| !store.retention().expired(entry.touched)))
                })?;
        let entry = &mut slot.value;
        entry.touched = entry.touched.max(change.commit_ts_ms);
        Ok(&mut entry.state)
    }

    /// The keys with undecided changes that glob `pattern` matches, with
    /// their scopes (every key armed in the store filed first).
    pub(super) fn open_matching(
        &mut self,
        pattern: &str,
    ) -> Result<Vec<(CompactString, i32)>, StateError> {
        self.file_some(usize::MAX)?;
        let prefix = glob_prefix(pattern);
        Ok(self
            .open
            .range((Bound::Included(OpenKey::new(prefix)), Bound::Unbounded))
            .take_while(|(k, _)| k.key.starts_with(prefix))
            .filter(|(k, _)| glob_matches(pattern, &k.key))
            .map(|(k, s)| (k.key.clone(), *s))
            .collect())
    }

    /// Keeps a glob invalidation for changes that arrive after it.
    pub(super) fn retain_glob(&mut self, glob: RetainedGlob) {
        if self.stores_globs() {
            let key = codec::timer_key(glob.scope, glob.inv.ts, &glob.pattern);
            self.glob_writes.put(
                Cf::Wildcards,
                glob.scope,
                key,
                codec::encode(glob.inv.ts, &glob),
            );
        }
        self.wildcards.insert(glob);
    }

    /// Forgets the retained globs no change can need any more, at watermark
    /// `wm` with `latest` the latest event time applied.
    pub(super) fn prune_globs(&mut self, wm: Millis, latest: Millis) {
        let cutoff = self.rules.forget_before(wm, latest);
        let slack = (self.rules.history_ms / 16).max(GLOB_PRUNE_SLACK_MS);
        for glob in self.wildcards.prune(cutoff, slack) {
            if self.stores_globs() {
                let key = codec::timer_key(glob.scope, glob.inv.ts, &glob.pattern);
                self.glob_writes.delete(Cf::Wildcards, glob.scope, key);
            }
        }
    }

    /// Asks the CPU to load the slots of timers about to fire: the node of
    /// the timer [`FIRE_AHEAD`] timers after the next, and the neighbours
    /// in its recency list of the one half as far (its node loaded by
    /// then), so that these loads overlap instead of each firing waiting
    /// for memory in turn.
    fn prefetch_timers(&self, wm: Millis) {
        let slot = |n| {
            (self.timers.queue)
                .peek_ahead(wm, n)
                .and_then(|armed| armed.slot)
        };
        if let Some(far) = slot(FIRE_AHEAD) {
            self.keys.prefetch_node(far);
        }
        if let Some(near) = slot(FIRE_AHEAD / 2) {
            self.keys.prefetch_neighbours(near);
        }
    }

    /// Fires up to `n` of the timers `wm` has passed, the alerts first (see
    /// [`Timers`]; each alert counts as one, passed by or not), their
    /// decisions going to `out`, while they may (see [`Shard::may_fire`]);
    /// false once none is due or may fire.
    pub(super) fn fire_due(
        &mut self,
        wm: Millis,
        n: usize,
        out: &mut Decisions,
    ) -> Result<bool, StateError> {
        for _ in 0..n {
            if !self.may_fire() {
                self.held_back |= self.has_due(wm);
                return Ok(false);
            }
            let (due, Armed { key, scope, slot }) =
                if let Some((due, at)) = self.timers.alerts.pop_due(wm) {
                    let Some(timer) = self.alerted(due, at) else {
                        continue;
                    };
                    (due, timer)
                } else {
                    self.read_due(wm)?;
                    self.prefetch_timers(wm);
                    let Some(timer) = self.timers.queue.pop_due(wm) else {
                        self.held_back = false;
                        return Ok(false);
                    };
                    // A watermark that passes many deadlines at once (the
                    // end of the input) reads many keys back: spill them on
                    // the way.
                    self.spill_over_budget()?;
                    timer
                };
            // A key not in memory left it (the store says whether its timer
            // is still armed) or was removed; a timer armed since (or fired
            // before a record of the key) replaces this one.
            let (store, open) = (&*self.store, &self.open);
            let Some(found) = self.keys.find_to_change(
                &key,
                slot,
                scope,
                |k| load_key(store, k, scope, open),
                |entry| entry.stored.armed == Some(due),
            )?
            else {
                continue;
            };
            fire(
                &key,
                found,
                wm,
                &self.rules,
                &mut self.timers,
                &mut self.open,
                out,
            );
        }
        Ok(true)
    }

    /// The timer of the key an alert due at `due` names (at `at`), if the
    /// alert still holds: the key's slot in memory, marked, and armed for
    /// that time (else the alert is passed by, see [`Timers`]).
    fn alerted(&self, due: Millis, at: Handle) -> Option<Armed> {
        let (key, slot) = self.keys.held(at)?;
        let entry = &slot.value;
        (entry.alert && entry.stored.armed == Some(due)).then(|| Armed {
            key: key.clone(),
            scope: slot.scope,
            slot: Some(at),
        })
    }

    /// The checkpoint being saved, or saved last.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a checkpoint is being saved.
    pub(super) fn is_saving(&self) -> bool {
        self.saving.is_some()
    }

    /// Marks the keys and entities changed since the last checkpoint to
    /// save as checkpoint `epoch`, and sets its glob writes aside.
    pub(super) fn begin_persist(&mut self, epoch: u64) {
        debug_assert!(self.saving.is_none(), "no checkpoint is being saved");
        self.epoch = epoch;
        self.keys.begin(epoch);
        self.entities.begin(epoch);
        self.saving = Some(std::mem::take(&mut self.glob_writes));
    }

    /// Saves up to `n` keys and as many entities of the checkpoint being
    /// saved; true once all of them are.
    pub(super) fn save_some(&mut self, n: usize) -> bool {
        let keys_saved = self.keys.save_some(n);
        let entities_saved = self.entities.save_some(n);
        keys_saved && entities_saved
    }

    /// Saves what is left of the checkpoint begun last, and returns its
    /// batch: the glob writes, the slots, and the writes of the keys and
    /// entities that leave memory to keep the shard within its budget (see
    /// [`Shard::leave_memory`]). State that is not kept is not encoded
    /// unless it leaves memory, and then it is written to the store at
    /// once: the batch is then empty.
    pub(super) fn finish_persist(&mut self) -> Result<StateBatch, StateError> {
        self.keys.save_some(usize::MAX);
        self.entities.save_some(usize::MAX);
        let mut batch = self.saving.take().unwrap_or_default();
        batch.append(self.keys.take_saved());
        batch.append(self.entities.take_saved());
        self.leave_memory(&mut batch)?;
        Ok(batch)
    }

    /// Lets the keys and entities that kept state holds as of the latest
    /// committed checkpoint leave memory, down to the budget, unless
    /// nothing was committed since the last eviction. No checkpoint may be
    /// being saved.
    pub(super) fn evict_committed(&mut self) -> Result<(), StateError> {
        debug_assert!(self.durable && self.saving.is_none());
        if self.checkpoints.committed() == self.evicted_by {
            return Ok(());
        }
        let mut batch = StateBatch::default();
        self.leave_memory(&mut batch)?;
        debug_assert!(
            batch.is_empty(),
            "kept state is in the store before it may leave memory"
        );
        Ok(())
    }

    /// Lets keys and entities leave memory: those past the retention, and
    /// enough others to bring the shard under nine tenths of its budget
    /// (see [`super::cache`]), entities first: an entity is needed again
    /// only when its row changes again, while a key whose timer is armed
    /// is read back when the timer fires. What the store does not hold yet
    /// is written to `batch` (kept state: the checkpoint's), or to the
    /// store at once, `spill_step` at a time (state not kept). Then the
    /// slots that stay are moved together where they are scattered
    /// ([`Slots::compact`]).
    fn leave_memory(&mut self, batch: &mut StateBatch) -> Result<(), StateError> {
        let epoch = self.epoch;
        let mut evicted = self.expire();
        let resident = |shard: &Self| shard.keys.resident_bytes() + shard.entities.resident_bytes();
        let mut excess = resident(self).saturating_sub(self.slot_budget() / 10 * 9);
        let committed = self.checkpoints.committed();
        self.evicted_by = committed;
        if self.durable {
            evicted += self.evict(excess, committed, batch);
            evicted += self.keys.drop_leaving(committed) + self.entities.drop_leaving(committed);
        } else {
            loop {
                let before = resident(self);
                evicted += self.evict(excess.min(self.spill_step), committed, batch);
                if !batch.is_empty() {
                    self.store.write(std::mem::take(batch))?;
                }
                evicted += self.keys.drop_leaving(epoch) + self.entities.drop_leaving(epoch);
                let freed = before.saturating_sub(resident(self));
                excess = excess.saturating_sub(freed);
                if freed == 0 || excess == 0 {
                    break;
                }
            }
        }
        self.keys.compact();
        self.entities.compact();
        self.stats.emit(StateEvicted(evicted));
        Ok(())
    }

    /// Lets about `free` bytes of entities, then of keys, leave memory (see
    /// [`Slots::evict`]); returns how many slots were dropped.
    fn evict(&mut self, free: usize, committed: u64, batch: &mut StateBatch) -> u64 {
        let entities = self.entities.resident_bytes();
        let evicted = self.entities.evict(free, self.epoch, committed, batch);
        let freed = entities.saturating_sub(self.entities.resident_bytes());
        evicted + (self.keys).evict(free.saturating_sub(freed), self.epoch, committed, batch)
    }

    /// How much state the shard holds.
    pub(super) fn size(&self) -> StateSize {
        StateSize {
            keys: self.keys.len() as u64,
            entities: self.entities.len() as u64,
            bytes: (self.keys.resident_bytes()
                + self.entities.resident_bytes()
                + self.index_bytes()) as u64,
            peak_bytes: (self.keys.peak_bytes() + self.entities.peak_bytes()) as u64,
        }
    }

    /// Forgets the scopes whose partitions went to another instance (their
    /// state was committed first): keys, entities, timers, globs.
    pub(super) fn release(&mut self, scopes: &[i32]) {
        let gone = |scope: i32| scopes.contains(&scope);
        self.keys.release(gone);
        self.entities.release(gone);
        self.timers.queue.retain(|t| !gone(t.scope));
        // Their slots are gone, so their alerts name none.
        let keys = &self.keys;
        self.timers.alerts.retain(|at| keys.held(*at).is_some());
        self.restored.retain(|scope, _| !gone(*scope));
        self.open.retain(|_, scope| !gone(*scope));
        self.wildcards.remove(|g| gone(g.scope));
        self.glob_writes.writes.retain(|w| !gone(w.scope));
    }

    /// Notes the timers of a scope (`None`: of every scope) that the store
    /// has, to read as they come due (see [`Shard::file_some`] and
    /// [`Shard::fire_due`]), and reads its retained globs.
    pub(super) fn load(&mut self, scope: Option<i32>) -> Result<(), StateError> {
        let prefix = scope.map(codec::scope_prefix);
        let prefix: &[u8] = prefix.as_ref().map_or(&[], |p| p.as_slice());
        let scopes = match scope {
            Some(scope) => vec![scope],
            None => self.stored_scopes()?,
        };
        for scope in scopes {
            match Restored::of(&*self.store, scope)? {
                Some(restored) => self.restored.insert(scope, restored),
                None => self.restored.remove(&scope),
            };
        }
        let mut corrupt = None;
        let wildcards = &mut self.wildcards;
        self.store.scan(
            Cf::Wildcards,
            prefix,
            &mut |_, v| match codec::decode(Cf::Wildcards, v) {
                Ok((_, glob)) => {
                    wildcards.insert(glob);
                    true
                }
                Err(e) => {
                    corrupt = Some(e);
                    false
                }
            },
        )?;
        corrupt.map_or(Ok(()), Err)
    }

    /// Leaves the keys, entities, timers and open keys to the operating
    /// system, which takes the process's memory back at once when it exits
    /// (freeing them one by one took about 4 % of the CPU of a run over a
    /// million keys).
    pub(super) fn leave(&mut self) {
        let keys = Slots::new(self.durable, save_key);
        std::mem::forget(std::mem::replace(&mut self.keys, keys));
        let entities = Slots::new(self.durable, save_entity);
        std::mem::forget(std::mem::replace(&mut self.entities, entities));
        std::mem::forget(std::mem::take(&mut self.timers));
        std::mem::forget(std::mem::take(&mut self.open));
    }

    /// The scopes with timers in the store, a seek each.
    fn stored_scopes(&self) -> Result<Vec<i32>, StateError> {
        let mut scopes = Vec::new();
        let mut from = Some(codec::scope_prefix(0));
        while let Some(at) = from.take() {
            self.store
                .scan_range(Cf::Timers, &at, &[0xFF; 4], &mut |k, _| {
                    if let Some((scope, _)) = codec::unscoped(k) {
                        scopes.push(scope);
                        from = (scope < i32::MAX).then(|| codec::scope_prefix(scope + 1));
                    }
                    false
                })?;
        }
        Ok(scopes)
    }

    /// Lets the keys and entities that have outlived the state's retention
    /// (last touched before the horizon the committer moves with the
    /// watermark) leave memory, so that memory does not grow with the
    /// number of distinct keys over time; keys whose timer is armed stay
    /// until it fires. Returns how many left.
    fn expire(&mut self) -> u64 {
        let horizon = self.store.retention();
        self.keys
            .expire(|key| horizon.expired(key.stored.state.touched))
            + self
                .entities
                .expire(|entity| horizon.expired(entity.touched))
    }

    /// Whether the keys and entities in memory exceed what the budget
    /// leaves them (see [`super::cache::Slots::estimated_bytes`] and
    /// [`Shard::slot_budget`]).
    pub(super) fn over_budget(&self) -> bool {
        self.keys.estimated_bytes() + self.entities.estimated_bytes() > self.slot_budget()
    }

    /// Approximate bytes of the timers, the index of open keys and the
    /// retained globs. Every armed or open key has the first two, in memory
    /// or not: they leave memory only as timers fire and keys are decided;
    /// the globs stay in memory until they expire.
    fn index_bytes(&self) -> usize {
        self.timers.queue.len() * TIMER_BYTES
            + self.timers.alerts.len() * ALERT_BYTES
            + self.open.len() * OPEN_KEY_BYTES
            + self.wildcards.heap_bytes()
    }

    /// What the budget leaves to the keys and entities in memory: the
    /// budget less the most the timers and open keys have taken since they
    /// were last empty (about a third of it in the bench's 10 M check,
    /// dense in event time), but [`LEAST_SLOT_SHARE`] of it at least, so
    /// that a shard whose timers take the budget still keeps keys in memory
    /// to fire them (its memory then passes the budget).
    ///
    /// Their most, not what they take now: as timers fire and keys are
    /// decided, the entries they free stay with the allocator, in pages
    /// the remaining entries keep, and serve the index again as it grows;
    /// they are not memory that the keys' slots can take. When the input
    /// of the 10 M check ends and about 2 M timers fire, reading back the
    /// keys that left memory, the slots took that share as it was freed,
    /// and the process's resident memory rose by 110 to 160 MiB in its
    /// last seconds (see BENCHMARKS.md, twenty-sixth round). A shard whose
    /// timers never all fire (a live run that is never idle) keeps the
    /// share of its largest burst of keys in flight.
    fn slot_budget(&self) -> usize {
        let index = match self.index_bytes() {
            0 => 0,
            now => now.max(self.index_peak.get()),
        };
        self.index_peak.set(index);
        self.budget
            .saturating_sub(index)
            .max(self.budget / LEAST_SLOT_SHARE)
    }

    /// Whether the kept keys and entities changed since the last checkpoint
    /// pass [`CHECKPOINT_SHARE`] of the budget: the shard then asks for the
    /// next checkpoint, and fires no timer until it begins (see
    /// [`Shard::may_fire`]).
    pub(super) fn checkpoint_full(&self) -> bool {
        self.durable
            && self.keys.changed_bytes() + self.entities.changed_bytes()
                > self.budget / CHECKPOINT_SHARE
    }

    /// Lets state that is not kept leave memory while it is over the
    /// budget, between checkpoints too: what leaves is written to the
    /// store at once (spilled), as at a checkpoint. Nothing resumes from
    /// such state, so no checkpoint need commit first; spilling as soon as
    /// the budget is passed keeps memory near it however many records come
    /// between checkpoints.
    pub(super) fn spill_over_budget(&mut self) -> Result<(), StateError> {
        if self.durable || !self.over_budget() {
            return Ok(());
        }
        self.begin_persist(self.epoch);
        let batch = self.finish_persist()?;
        debug_assert!(
            batch.is_empty(),
            "state that is not kept is written at once"
        );
        Ok(())
    }

    /// Whether this shard writes the globs to the store: every shard holds
    /// all of them, shard 0 stores them, when state is kept.
    fn stores_globs(&self) -> bool {
        self.index == 0 && self.durable
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::OpenKey;
    use crate::model::Millis;

    /// Short keys, with bytes that make the heads' padding matter: NUL,
    /// and keys that are prefixes of one another.
    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just('\0'), Just('a'), Just('b'), Just('~')],
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn open_keys_order_as_their_bytes(a in key(), b in key()) {
            prop_assert_eq!(
                OpenKey::new(&a).cmp(&OpenKey::new(&b)),
                a.as_bytes().cmp(b.as_bytes())
            );
        }
    }

    #[test]
    fn open_keys_order_across_the_head() {
        let mut keys = [
            "t1:9:row",
            "t1:10:row",
            "t1:1",
            "t1:1\0",
            "t1:100000000:row",
            "t",
            "",
        ];
        let mut open: Vec<OpenKey> = keys.iter().map(|k| OpenKey::new(k)).collect();
        keys.sort();
        open.sort();
        let sorted: Vec<&str> = open.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(sorted, keys);
    }

    /// Writes `key` of `scope`, armed at `armed`, as a restore from the
    /// changelog writes it: the key alone, no timer.
    fn put_restored_key(
        batch: &mut crate::state::StateBatch,
        scope: i32,
        key: &str,
        armed: Option<Millis>,
    ) {
        use super::{KeyEntry, Save, StoredKey, save_key};
        let mut entry = KeyEntry {
            stored: StoredKey {
                armed,
                ..StoredKey::default()
            },
            ..KeyEntry::default()
        };
        save_key(batch, false, &key.into(), scope, &mut entry, Save::Put);
    }

    /// Keys restored from a changelog (which carries no timers) get the
    /// timers they say they are armed for, in their own scope only.
    #[test]
    fn timers_are_indexed_from_the_keys_of_a_scope() {
        use super::index_timers;
        use crate::state::{Cf, MemStore, StateBatch, Store, codec, scan_all};

        let store = MemStore::new();
        let mut batch = StateBatch::default();
        for (scope, key, armed) in [
            (3, "user:1", Some(5_000)),
            (3, "user:2", None),
            (3, "user:3", Some(1_000)),
            (4, "user:4", Some(2_000)),
        ] {
            put_restored_key(&mut batch, scope, key, armed);
        }
        store.write(batch).unwrap();

        assert_eq!(index_timers(&store, 3).unwrap(), 2);
        let timers: Vec<Vec<u8>> = scan_all(&store, Cf::Timers, &[])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            timers,
            vec![
                codec::timer_key(3, 1_000, "user:3"),
                codec::timer_key(3, 5_000, "user:1"),
            ]
        );
    }

    /// More armed keys than are indexed at a time: every one gets its
    /// timer, each batch written after it is read.
    #[test]
    fn timers_are_indexed_a_batch_at_a_time() {
        use super::index_timers;
        use crate::state::{Cf, MemStore, StateBatch, Store, scan_all};

        let store = MemStore::new();
        let mut batch = StateBatch::default();
        for i in 0..25_000 {
            put_restored_key(&mut batch, 5, &format!("user:{i}"), Some(i));
        }
        store.write(batch).unwrap();

        assert_eq!(index_timers(&store, 5).unwrap(), 25_000);
        let timers = scan_all(&store, Cf::Timers, &[]).len();
        assert_eq!(timers, 25_000);
    }
}
