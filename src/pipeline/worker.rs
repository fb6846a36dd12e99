//! A worker: owns one shard of key state, entity state and deadline timers,
//! applies the router's work items with the detectors, fires timers as the
//! watermark advances, and hands its state changes to the sink at each
//! checkpoint (written out between batches of work, copy on write: see
//! [`super::cache`]). State lives in memory and is written behind to the store;
//! beyond the worker's share of `state.cache_size` the least recently
//! written keys and entities leave memory ([`super::cache`]), and a key or
//! entity not in memory is read from the store on first use.
//!
//! Every key and entity belongs to a scope (its input partition number, see
//! [`crate::state::Cf`]); when the partitions of a scope move to another
//! instance the worker forgets the scope, and when they come (back) it loads
//! the scope's timers and retained globs from the store.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::{Deserialize, Serialize};

use super::cache::{Cached, Footprint, Handle, Save, Slot, Slots};
use super::{Engine, PipelineError, SinkMsg, WorkItem, WorkMsg};
use crate::detect::entity::{self, EntityState, EntityVerdict};
use crate::detect::key::{
    Decisions, KeyRules, KeyState, RetainedGlob, Wildcards, glob_matches, glob_prefix,
};
use crate::events::{Violation, ViolationKind};
use crate::hash;
use crate::mapping::Change;
use crate::model::Millis;
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{StateSize, Stats, TableTally};
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
}

impl Default for EntityEntry {
    fn default() -> Self {
        EntityEntry {
            state: EntityState::default(),
            touched: Millis::MIN,
        }
    }
}

/// Keys with undecided changes and their scope, in key order. The keys are
/// held inline (up to 24 bytes), so that the comparisons of an insert or a
/// removal read the tree's nodes rather than a string elsewhere each.
type OpenKeys = BTreeMap<CompactString, i32>;

/// A key's timer in the queue: the key and its scope, and the key's slot
/// as it was when armed (which spares the lookup while the key stays in
/// memory).
struct Armed {
    key: Arc<str>,
    scope: i32,
    slot: Option<Handle>,
}

pub(super) struct Worker {
    index: usize,
    shards: usize,
    store: Arc<dyn Store>,
    /// Whether state is written to the store (see [`super::EngineOptions`]).
    durable: bool,
    /// Whether the process exits once the run ends (see
    /// [`super::EngineOptions::exits_after`]).
    exits_after: bool,
    rules: KeyRules,
    stats: Arc<Stats>,
    sink: Sender<SinkMsg>,
    /// Where applied batches go back to the router, empty.
    spare: Sender<Vec<WorkItem>>,
    keys: Slots<Arc<str>, KeyEntry>,
    entities: Slots<[u8; 12], EntityEntry>,
    /// Bytes of keys and entities this worker may keep in memory.
    budget: usize,
    /// The latest checkpoint the committer committed.
    committed: Arc<AtomicU64>,
    /// The latest checkpoint this worker took part in.
    epoch: u64,
    /// The glob writes of checkpoint `epoch` while its keys and entities
    /// are saved (behind the work, when state is kept).
    saving: Option<StateBatch>,
    timers: TimerQueue<Armed>,
    /// Keys with undecided changes (and their scope), ordered so that a glob
    /// invalidation can scan the keys sharing its literal prefix.
    open: OpenKeys,
    /// Glob invalidations kept for changes that arrive after them. Every
    /// worker holds all of them; worker 0 stores them.
    wildcards: Wildcards,
    /// The glob puts and deletes since the last checkpoint (see
    /// [`Worker::stores_globs`]).
    glob_writes: StateBatch,
    watermark: Millis,
    /// The latest event time of the records applied (the globs' history
    /// runs back from it).
    latest: Millis,
    violations: Vec<Violation>,
    /// Changes decided since the last checkpoint, by table.
    tallies: BTreeMap<Arc<str>, TableTally>,
}

/// Keys (and as many entities) saved at a time while a checkpoint is saved
/// behind the work: 1 to 4 ms. Tests save one at a time, so that their
/// verdicts check the copy on write.
const SAVE_CHUNK: usize = if cfg!(test) { 1 } else { 256 };

/// Timers fired at a time, after each batch of work and whenever the inbox
/// is empty, so that a watermark passing many deadlines at once does not
/// hold back the records behind it: 2 to 5 ms. Tests fire one at a time,
/// so that their verdicts check the firing behind the work.
const FIRE_CHUNK: usize = if cfg!(test) { 1 } else { 1024 };

/// The least event time by which the oldest retained glob must have expired
/// before the globs are pruned.
const GLOB_PRUNE_SLACK_MS: i64 = 1_000;

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// Storage key of an entity: its scope, then its id (the hash of table and
/// primary key), both big-endian; it is also the entity's key in memory.
fn entity_key(scope: i32, change: &Change) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&codec::scope_prefix(scope));
    key[4..].copy_from_slice(&change.entity.to_be_bytes());
    key
}

/// Reads a key from the store; `open`: whether it is in the index of keys
/// with undecided changes.
fn load_key(
    store: &dyn Store,
    key: &str,
    scope: i32,
    open: &OpenKeys,
) -> Result<Option<KeyEntry>, StateError> {
    let Some(bytes) = store.get(Cf::Keys, &codec::scoped(scope, key.as_bytes()))? else {
        return Ok(None);
    };
    let (_, stored): (Millis, StoredKey) = codec::decode(Cf::Keys, &bytes)?;
    Ok(Some(KeyEntry {
        persisted_armed: stored.armed,
        open: open.contains_key(key),
        stored,
    }))
}

/// Reads an entity from the store.
fn load_entity(store: &dyn Store, key: &[u8; 12]) -> Result<Option<EntityEntry>, StateError> {
    let Some(bytes) = store.get(Cf::Entities, key)? else {
        return Ok(None);
    };
    let (touched, state) = codec::decode(Cf::Entities, &bytes)?;
    Ok(Some(EntityEntry { state, touched }))
}

/// Bookkeeping after a key's state changed: its timer, and the index of
/// keys with undecided changes.
fn after_change(
    key: &Arc<str>,
    (at, slot): (Handle, &mut Slot<KeyEntry>),
    rules: &KeyRules,
    timers: &mut TimerQueue<Armed>,
    open: &mut OpenKeys,
) {
    let entry = &mut slot.value;
    if let Some(due) = entry.stored.state.next_due(rules)
        && entry.stored.armed.is_none_or(|armed| due < armed)
    {
        entry.stored.armed = Some(due);
        timers.push(due, armed(key, slot.scope, at));
    }
    let is_open = entry.stored.state.has_undecided();
    if is_open != entry.open {
        entry.open = is_open;
        if is_open {
            open.insert(CompactString::from(&**key), slot.scope);
        } else {
            open.remove(&**key);
        }
    }
}

/// Fires the timer of a key, armed and due by `wm`: the detector settles
/// what the watermark decides, and the key is armed again for what is left.
fn fire(
    key: &Arc<str>,
    (at, slot): (Handle, &mut Slot<KeyEntry>),
    wm: Millis,
    rules: &KeyRules,
    timers: &mut TimerQueue<Armed>,
    open: &mut OpenKeys,
) -> Decisions {
    let entry = &mut slot.value;
    entry.stored.armed = None;
    let mut decisions = Decisions::default();
    let next = entry.stored.state.advance(key, wm, rules, &mut decisions);
    if let Some(next) = next.filter(|n| *n > wm) {
        entry.stored.armed = Some(next);
        timers.push(next, armed(key, slot.scope, at));
    }
    after_change(key, (at, slot), rules, timers, open);
    decisions
}

/// The timer of a key in memory.
fn armed(key: &Arc<str>, scope: i32, slot: Handle) -> Armed {
    Armed {
        key: Arc::clone(key),
        scope,
        slot: Some(slot),
    }
}

/// Writes a key to `batch` (`durable`: with its timer).
fn save_key(
    batch: &mut StateBatch,
    durable: bool,
    key: &Arc<str>,
    scope: i32,
    entry: &mut KeyEntry,
    save: Save,
) {
    if durable && entry.persisted_armed != entry.stored.armed {
        if let Some(old) = entry.persisted_armed {
            batch.delete(Cf::Timers, scope, codec::timer_key(scope, old, key));
        }
        if let Some(new) = entry.stored.armed {
            batch.put(
                Cf::Timers,
                scope,
                codec::timer_key(scope, new, key),
                Vec::new(),
            );
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

impl Worker {
    pub(super) fn new(
        index: usize,
        shards: usize,
        engine: &Engine,
        sink: Sender<SinkMsg>,
        spare: Sender<Vec<WorkItem>>,
        committed: Arc<AtomicU64>,
    ) -> Self {
        Worker {
            index,
            shards,
            store: Arc::clone(&engine.store),
            durable: engine.options.durable,
            exits_after: engine.options.exits_after,
            rules: engine.options.key_rules,
            stats: Arc::clone(&engine.stats),
            sink,
            spare,
            keys: Slots::new(engine.options.durable, save_key),
            entities: Slots::new(engine.options.durable, save_entity),
            budget: engine.options.slot_budget / shards,
            committed,
            epoch: 0,
            saving: None,
            timers: TimerQueue::default(),
            open: BTreeMap::new(),
            wildcards: Wildcards::default(),
            glob_writes: StateBatch::default(),
            watermark: Millis::MIN,
            latest: Millis::MIN,
            violations: Vec::new(),
            tallies: BTreeMap::new(),
        }
    }

    /// Reads the worker's timers and globs from the store (on its own
    /// thread, so that the workers read theirs at the same time), then
    /// applies the router's messages until it hangs up.
    pub(super) fn run(mut self, inbox: Receiver<WorkMsg>) -> Result<(), PipelineError> {
        debug_assert!(self.index < self.shards);
        let started = std::time::Instant::now();
        self.load(None)?;
        if !self.timers.is_empty() {
            tracing::info!(
                worker = self.index,
                timers = self.timers.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "read the timers of the keys in state"
            );
        }
        loop {
            // While timers are due or a checkpoint is being saved, work on
            // them whenever nothing waits.
            let behind = self.saving.is_some() || self.timers.is_due(self.watermark);
            let msg = if behind {
                match inbox.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty) => {
                        self.work_behind()?;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match inbox.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            };
            match msg {
                WorkMsg::Batch {
                    mut items,
                    watermark,
                } => {
                    let started = std::time::Instant::now();
                    for item in items.drain(..) {
                        self.apply(item)?;
                    }
                    // When the router has spares enough, this one is freed.
                    let _ = self.spare.try_send(items);
                    self.advance(watermark)?;
                    self.stats.record_batch(started.elapsed());
                    self.send_violations()?;
                    self.save_some()?;
                }
                WorkMsg::Release { scopes } => {
                    self.finish_checkpoint()?;
                    self.release(&scopes);
                }
                WorkMsg::Load { scopes } => {
                    for scope in scopes {
                        self.load(Some(scope))?;
                    }
                }
                WorkMsg::Checkpoint { epoch } => self.checkpoint(epoch)?,
            }
        }
        self.finish_checkpoint()?;
        if self.exits_after {
            self.leave_state();
        }
        Ok(())
    }

    /// Leaves the keys, entities, timers and open keys to the operating
    /// system, which takes the process's memory back at once when it exits
    /// (freeing them one by one took about 4 % of the CPU of a run over a
    /// million keys).
    fn leave_state(&mut self) {
        let keys = Slots::new(self.durable, save_key);
        std::mem::forget(std::mem::replace(&mut self.keys, keys));
        let entities = Slots::new(self.durable, save_entity);
        std::mem::forget(std::mem::replace(&mut self.entities, entities));
        std::mem::forget(std::mem::take(&mut self.timers));
        std::mem::forget(std::mem::take(&mut self.open));
    }

    /// Fires some of the timers due, and saves some of the checkpoint
    /// being saved.
    fn work_behind(&mut self) -> Result<(), PipelineError> {
        self.fire_due(FIRE_CHUNK)?;
        self.send_violations()?;
        self.save_some()
    }

    fn send_violations(&mut self) -> Result<(), PipelineError> {
        if !self.violations.is_empty() {
            let v = std::mem::take(&mut self.violations);
            self.sink
                .send(SinkMsg::Violations(v))
                .map_err(disconnected)?;
        }
        Ok(())
    }

    /// Takes part in checkpoint `epoch`, with every timer due fired first:
    /// state that is kept is saved behind the work ([`Worker::save_some`]),
    /// state that is not at once.
    fn checkpoint(&mut self, epoch: u64) -> Result<(), PipelineError> {
        self.finish_checkpoint()?;
        self.fire_due(usize::MAX)?;
        self.send_violations()?;
        self.epoch = epoch;
        self.stats
            .add_table_tallies(&std::mem::take(&mut self.tallies));
        self.begin_persist();
        if self.durable {
            Ok(())
        } else {
            self.finish_checkpoint()
        }
    }

    /// Saves some of the checkpoint being saved, and sends it once whole.
    fn save_some(&mut self) -> Result<(), PipelineError> {
        if self.saving.is_some() {
            let keys_saved = self.keys.save_some(SAVE_CHUNK);
            let entities_saved = self.entities.save_some(SAVE_CHUNK);
            if keys_saved && entities_saved {
                self.finish_checkpoint()?;
            }
        }
        Ok(())
    }

    /// Saves the rest of the checkpoint being saved, if any, and sends it.
    fn finish_checkpoint(&mut self) -> Result<(), PipelineError> {
        if self.saving.is_some() {
            let batch = self.finish_persist()?;
            self.send_fragment(batch)?;
        }
        Ok(())
    }

    /// Hands this worker's part of checkpoint `self.epoch` to the sink.
    fn send_fragment(&mut self, batch: StateBatch) -> Result<(), PipelineError> {
        self.stats.set_state_size(
            self.index,
            StateSize {
                keys: self.keys.len() as u64,
                entities: self.entities.len() as u64,
                bytes: (self.keys.resident_bytes() + self.entities.resident_bytes()) as u64,
                peak_bytes: (self.keys.peak_bytes() + self.entities.peak_bytes()) as u64,
            },
        );
        self.sink
            .send(SinkMsg::Fragment {
                epoch: self.epoch,
                batch,
            })
            .map_err(disconnected)
    }

    fn apply(&mut self, item: WorkItem) -> Result<(), PipelineError> {
        self.latest = self.latest.max(item.event_ts());
        match item {
            WorkItem::Entity { change, scope } => self.check_entity(&change, scope)?,
            WorkItem::Change { key, change, scope } => {
                self.update_key(&key, scope, |state, rules, globs| {
                    state.on_change(&change, globs.matching(&key), rules)
                })?;
            }
            WorkItem::Invalidation { key, inv, scope } => {
                self.update_key(&key, scope, |state, rules, _| {
                    state.on_invalidation(&inv, true, rules)
                })?;
            }
            WorkItem::Wildcard {
                pattern,
                inv,
                scope,
            } => {
                let prefix = glob_prefix(&pattern);
                let matching: Vec<(Arc<str>, i32)> = self
                    .open
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| glob_matches(&pattern, k))
                    .map(|(k, s)| (Arc::from(k.as_str()), *s))
                    .collect();
                for (key, key_scope) in matching {
                    self.update_key(&key, key_scope, |state, rules, _| {
                        // The key's due timer, fired just before, may have
                        // decided every change: the glob then passes it by,
                        // as if the timer had fired when the watermark came.
                        if state.has_undecided() {
                            state.on_invalidation(&inv, false, rules);
                        }
                    })?;
                }
                let glob = RetainedGlob {
                    pattern,
                    inv,
                    scope,
                };
                if self.stores_globs() {
                    let key = codec::timer_key(scope, glob.inv.ts, &glob.pattern);
                    self.glob_writes.put(
                        Cf::Wildcards,
                        scope,
                        key,
                        codec::encode(glob.inv.ts, &glob),
                    );
                }
                self.wildcards.insert(glob);
            }
            WorkItem::Fill { key, fill, scope } => {
                if !self.update_key(&key, scope, |state, _, _| state.on_fill(fill))? {
                    self.stats.add_cache_redeliveries(1);
                }
            }
        }
        Ok(())
    }

    /// Applies `f` to a key's state (read from the store if not in memory),
    /// then re-arms its timer and files it among the open keys.
    fn update_key<R>(
        &mut self,
        key: &Arc<str>,
        scope: i32,
        f: impl FnOnce(&mut KeyState, &KeyRules, &Wildcards) -> R,
    ) -> Result<R, StateError> {
        let (store, open) = (&*self.store, &self.open);
        let (at, slot) = self
            .keys
            .change(key, scope, |k| load_key(store, k, scope, open))?;
        // Timers fire a few at a time (see `FIRE_CHUNK`): one the watermark
        // has passed fires before the record applies, as if it had fired
        // when the watermark came.
        let wm = self.watermark;
        let fired = (slot.value.stored.armed.is_some_and(|due| due <= wm)).then(|| {
            let (rules, timers, open) = (&self.rules, &mut self.timers, &mut self.open);
            fire(key, (at, &mut *slot), wm, rules, timers, open)
        });
        let result = f(&mut slot.value.stored.state, &self.rules, &self.wildcards);
        after_change(
            key,
            (at, slot),
            &self.rules,
            &mut self.timers,
            &mut self.open,
        );
        if let Some(decisions) = fired {
            self.record(decisions);
        }
        Ok(result)
    }

    fn check_entity(&mut self, change: &Change, scope: i32) -> Result<(), StateError> {
        let store = &*self.store;
        let (_, slot) = self
            .entities
            .change(&entity_key(scope, change), scope, |k| load_entity(store, k))?;
        let entry = &mut slot.value;
        match entity::check(&mut entry.state, change) {
            EntityVerdict::Duplicate => self.stats.add_duplicate(),
            EntityVerdict::Accepted => {}
            EntityVerdict::Violation(v) => self.violations.push(*v),
        }
        entry.touched = entry.touched.max(change.commit_ts_ms);
        Ok(())
    }

    /// Advances to watermark `wm`: fires up to [`FIRE_CHUNK`] of the timers
    /// due by then (the others after, see [`Worker::work_behind`]), and
    /// prunes the retained globs.
    fn advance(&mut self, wm: Millis) -> Result<(), PipelineError> {
        self.watermark = self.watermark.max(wm);
        let wm = self.watermark;
        self.fire_due(FIRE_CHUNK)?;
        let cutoff = self.rules.forget_before(wm, self.latest);
        let slack = (self.rules.history_ms / 16).max(GLOB_PRUNE_SLACK_MS);
        for glob in self.wildcards.prune(cutoff, slack) {
            if self.stores_globs() {
                let key = codec::timer_key(glob.scope, glob.inv.ts, &glob.pattern);
                self.glob_writes.delete(Cf::Wildcards, glob.scope, key);
            }
        }
        Ok(())
    }

    /// Fires up to `n` of the timers the watermark has passed.
    fn fire_due(&mut self, n: usize) -> Result<(), PipelineError> {
        let wm = self.watermark;
        for _ in 0..n {
            let Some((due, Armed { key, scope, slot })) = self.timers.pop_due(wm) else {
                break;
            };
            if !self.durable && self.over_budget() {
                // A watermark that passes many deadlines at once (the end of
                // the input) reads many keys back: spill them on the way.
                // Nothing resumes from state that is not kept, so this may
                // happen between checkpoints.
                let batch = self.persist()?;
                debug_assert!(
                    batch.is_empty(),
                    "state that is not kept is written at once"
                );
            }
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
            let decisions = fire(
                &key,
                found,
                wm,
                &self.rules,
                &mut self.timers,
                &mut self.open,
            );
            self.record(decisions);
        }
        Ok(())
    }

    /// Forgets the scopes whose partitions went to another instance (their
    /// state was committed first): keys, entities, timers, globs.
    fn release(&mut self, scopes: &[i32]) {
        let gone = |scope: i32| scopes.contains(&scope);
        self.keys.release(gone);
        self.entities.release(gone);
        self.timers.retain(|t| !gone(t.scope));
        self.open.retain(|_, scope| !gone(*scope));
        self.wildcards.remove(|g| gone(g.scope));
        self.glob_writes.writes.retain(|w| !gone(w.scope));
    }

    fn record(&mut self, d: Decisions) {
        for (table, lag) in d.in_time {
            let t = self.tallies.entry(table).or_default();
            t.decided += 1;
            t.in_time += 1;
            self.stats.record_invalidation_lag(lag.max(0) as u64);
        }
        for v in &d.violations {
            if v.kind == ViolationKind::MissingInvalidation {
                self.tallies
                    .entry(Arc::clone(&v.table))
                    .or_default()
                    .decided += 1;
            }
        }
        self.stats.add_expired_missed(d.expired);
        self.stats.add_key_history_evictions(d.evicted);
        self.violations.extend(d.violations);
    }

    /// Saves the state changes since the last checkpoint at once, as
    /// [`Worker::begin_persist`] and [`Worker::finish_persist`] do: for
    /// state that is not kept (`durable` false) between checkpoints, while
    /// timers fire. Such state is not encoded unless it leaves memory, and
    /// then it is written to the store at once: the batch is empty.
    fn persist(&mut self) -> Result<StateBatch, StateError> {
        self.begin_persist();
        self.finish_persist()
    }

    /// Marks the keys and entities changed since the last checkpoint to
    /// save as checkpoint `self.epoch`, and sets its glob writes aside.
    fn begin_persist(&mut self) {
        debug_assert!(self.saving.is_none(), "no checkpoint is being saved");
        self.keys.begin(self.epoch);
        self.entities.begin(self.epoch);
        self.saving = Some(std::mem::take(&mut self.glob_writes));
    }

    /// Saves what is left of the checkpoint begun last, and returns its
    /// batch: the glob writes, the slots, and the writes of the keys and
    /// entities that leave memory to keep the worker within its budget (see
    /// [`super::cache`]).
    fn finish_persist(&mut self) -> Result<StateBatch, StateError> {
        let epoch = self.epoch;
        self.keys.save_some(usize::MAX);
        self.entities.save_some(usize::MAX);
        let mut batch = self.saving.take().unwrap_or_default();
        batch.append(self.keys.take_saved());
        batch.append(self.entities.take_saved());
        let (keys, entities) = (self.keys.resident_bytes(), self.entities.resident_bytes());
        let excess = (keys + entities).saturating_sub(self.budget / 10 * 9);
        let from_keys = (excess as u128 * keys as u128 / (keys + entities).max(1) as u128) as usize;
        let committed = self.committed.load(Ordering::Acquire);
        let mut evicted = self.keys.evict(from_keys, epoch, committed, &mut batch)
            + self
                .entities
                .evict(excess - from_keys, epoch, committed, &mut batch);
        let written = if self.durable {
            committed
        } else {
            if !batch.is_empty() {
                self.store.write(std::mem::take(&mut batch))?;
            }
            epoch
        };
        evicted += self.keys.drop_leaving(written) + self.entities.drop_leaving(written);
        self.stats.add_state_evictions(evicted);
        Ok(batch)
    }

    /// Reads the timers and retained globs of a scope (`None`: of every
    /// scope) that belong to this worker.
    fn load(&mut self, scope: Option<i32>) -> Result<(), StateError> {
        let prefix = scope.map(codec::scope_prefix);
        let prefix: &[u8] = prefix.as_ref().map_or(&[], |p| p.as_slice());
        let (index, shards) = (self.index, self.shards);
        let (timers, open) = (&mut self.timers, &mut self.open);
        self.store.scan(Cf::Timers, prefix, &mut |k, _| {
            if let Some((scope, due, key)) = codec::parse_timer_key(k)
                && hash::shard_of_key(key, shards) == index
            {
                open.insert(CompactString::from(key), scope);
                timers.push(
                    due,
                    Armed {
                        key: Arc::from(key),
                        scope,
                        slot: None,
                    },
                );
            }
            true
        })?;
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

    /// Whether the keys and entities in memory exceed this worker's budget.
    fn over_budget(&self) -> bool {
        self.keys.resident_bytes() + self.entities.resident_bytes() > self.budget
    }

    /// Whether this worker writes the globs to the store: every worker
    /// holds all of them, worker 0 stores them, when state is kept.
    fn stores_globs(&self) -> bool {
        self.index == 0 && self.durable
    }
}
