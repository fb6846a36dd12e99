//! A worker: owns one shard of key state, entity state and deadline timers,
//! applies the router's work items with the detectors, fires timers as the
//! watermark advances, and hands its state changes to the sink at each
//! checkpoint. State lives in memory and is written behind to the store;
//! a key or entity not in memory is read from the store on first use.
//!
//! Every key and entity belongs to a scope (its input partition number, see
//! [`crate::state::Cf`]); when the partitions of a scope move to another
//! instance the worker forgets the scope, and when they come (back) it loads
//! the scope's timers and retained globs from the store.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::{Engine, PipelineError, SinkMsg, WorkItem, WorkMsg};
use crate::detect::entity::{self, EntityState, EntityVerdict};
use crate::detect::key::{
    Decisions, KeyRules, KeyState, RetainedGlob, Status, Wildcards, glob_matches, glob_prefix,
};
use crate::events::{Violation, ViolationKind};
use crate::hash;
use crate::mapping::Change;
use crate::model::Millis;
use crate::state::{Cf, StateBatch, StateError, Store, codec};
use crate::telemetry::{Stats, TableTally};
use crate::time::TimerQueue;

/// What is stored per cache key: the detector's state and the due time of
/// the key's timer (kept together so they are committed together).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredKey {
    state: KeyState,
    armed: Option<Millis>,
}

struct KeySlot {
    scope: i32,
    stored: StoredKey,
    dirty: bool,
    /// The timer as the store has it (to delete it when it changes).
    persisted_armed: Option<Millis>,
    /// Whether the key is in the index of keys with undecided changes.
    open: bool,
}

struct EntitySlot {
    scope: i32,
    state: EntityState,
    touched: Millis,
    dirty: bool,
}

pub(super) struct Worker {
    index: usize,
    shards: usize,
    store: Arc<dyn Store>,
    /// Whether state is written to the store (see [`super::EngineOptions`]).
    durable: bool,
    rules: KeyRules,
    stats: Arc<Stats>,
    sink: Sender<SinkMsg>,
    keys: HashMap<Arc<str>, KeySlot>,
    entities: HashMap<Box<[u8]>, EntitySlot>,
    dirty_keys: Vec<Arc<str>>,
    dirty_entities: Vec<Box<[u8]>>,
    timers: TimerQueue<(Arc<str>, i32)>,
    /// Keys with undecided changes (and their scope), ordered so that a glob
    /// invalidation can scan the keys sharing its literal prefix.
    open: BTreeMap<Arc<str>, i32>,
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
    tallies: BTreeMap<String, TableTally>,
}

/// The least event time by which the oldest retained glob must have expired
/// before the globs are pruned.
const GLOB_PRUNE_SLACK_MS: i64 = 1_000;

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

/// Storage key of an entity: scope, table, a zero byte, primary key.
fn entity_key(scope: i32, change: &Change) -> Box<[u8]> {
    let mut k = Vec::with_capacity(4 + change.table.len() + 1 + change.pk.len());
    k.extend_from_slice(&codec::scope_prefix(scope));
    k.extend_from_slice(change.table.as_bytes());
    k.push(0);
    k.extend_from_slice(change.pk.as_bytes());
    k.into_boxed_slice()
}

/// Reads a key's slot from the store.
fn load_key(store: &dyn Store, key: &str, scope: i32) -> Result<Option<KeySlot>, StateError> {
    let Some(bytes) = store.get(Cf::Keys, &codec::scoped(scope, key.as_bytes()))? else {
        return Ok(None);
    };
    let (_, stored): (Millis, StoredKey) = codec::decode(Cf::Keys, &bytes)?;
    Ok(Some(KeySlot {
        scope,
        persisted_armed: stored.armed,
        open: false,
        dirty: false,
        stored,
    }))
}

/// The slot of a key: in memory, else from the store, else a new one.
fn key_slot<'a>(
    keys: &'a mut HashMap<Arc<str>, KeySlot>,
    store: &dyn Store,
    key: &Arc<str>,
    scope: i32,
) -> Result<&'a mut KeySlot, StateError> {
    if !keys.contains_key(key) {
        let slot = load_key(store, key, scope)?.unwrap_or(KeySlot {
            scope,
            stored: StoredKey::default(),
            dirty: false,
            persisted_armed: None,
            open: false,
        });
        keys.insert(Arc::clone(key), slot);
    }
    Ok(keys.get_mut(key).expect("inserted above"))
}

/// Reads the timers and retained globs of a scope (`None`: of every scope)
/// that belong to worker `index` of `shards`.
fn load_scope(
    store: &dyn Store,
    scope: Option<i32>,
    index: usize,
    shards: usize,
    timers: &mut TimerQueue<(Arc<str>, i32)>,
    open: &mut BTreeMap<Arc<str>, i32>,
    wildcards: &mut Wildcards,
) -> Result<(), StateError> {
    let prefix = scope.map(codec::scope_prefix);
    let prefix: &[u8] = prefix.as_ref().map_or(&[], |p| p.as_slice());
    store.scan(Cf::Timers, prefix, &mut |k, _| {
        if let Some((scope, due, key)) = codec::parse_timer_key(k)
            && hash::shard_of_key(key, shards) == index
        {
            let key: Arc<str> = Arc::from(key);
            timers.push(due, (Arc::clone(&key), scope));
            open.insert(key, scope);
        }
        true
    })?;
    let mut corrupt = None;
    store.scan(
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

impl Worker {
    pub(super) fn new(
        index: usize,
        shards: usize,
        engine: &Engine,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, StateError> {
        let mut timers = TimerQueue::default();
        let mut open = BTreeMap::new();
        let mut wildcards = Wildcards::default();
        let store = &*engine.store;
        load_scope(
            store,
            None,
            index,
            shards,
            &mut timers,
            &mut open,
            &mut wildcards,
        )?;
        Ok(Worker {
            index,
            shards,
            store: Arc::clone(&engine.store),
            durable: engine.options.durable,
            rules: engine.options.key_rules,
            stats: Arc::clone(&engine.stats),
            sink,
            keys: HashMap::new(),
            entities: HashMap::new(),
            dirty_keys: Vec::new(),
            dirty_entities: Vec::new(),
            timers,
            open,
            wildcards,
            glob_writes: StateBatch::default(),
            watermark: Millis::MIN,
            latest: Millis::MIN,
            violations: Vec::new(),
            tallies: BTreeMap::new(),
        })
    }

    pub(super) fn run(mut self, inbox: Receiver<WorkMsg>) -> Result<(), PipelineError> {
        debug_assert!(self.index < self.shards);
        for msg in inbox {
            match msg {
                WorkMsg::Batch { items, watermark } => {
                    let started = std::time::Instant::now();
                    for item in items {
                        self.apply(item)?;
                    }
                    self.advance(watermark)?;
                    self.stats.record_batch(started.elapsed());
                    if !self.violations.is_empty() {
                        let v = std::mem::take(&mut self.violations);
                        self.sink
                            .send(SinkMsg::Violations(v))
                            .map_err(disconnected)?;
                    }
                }
                WorkMsg::Release { scopes } => self.release(&scopes),
                WorkMsg::Load { scopes } => {
                    for scope in scopes {
                        load_scope(
                            &*self.store,
                            Some(scope),
                            self.index,
                            self.shards,
                            &mut self.timers,
                            &mut self.open,
                            &mut self.wildcards,
                        )?;
                    }
                }
                WorkMsg::Checkpoint { epoch } => {
                    let batch = self.persist();
                    self.stats
                        .add_table_tallies(&std::mem::take(&mut self.tallies));
                    self.stats.set_state_size(
                        self.index,
                        self.keys.len() as u64,
                        self.entities.len() as u64,
                    );
                    self.sink
                        .send(SinkMsg::Fragment { epoch, batch })
                        .map_err(disconnected)?;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, item: WorkItem) -> Result<(), PipelineError> {
        self.latest = self.latest.max(item.event_ts());
        match item {
            WorkItem::Entity { change, scope } => self.check_entity(&change, scope)?,
            WorkItem::Change { key, change, scope } => {
                let slot = key_slot(&mut self.keys, &*self.store, &key, scope)?;
                let wildcards = self.wildcards.matching(&key);
                slot.stored.state.on_change(&change, wildcards, &self.rules);
                self.touched(&key);
            }
            WorkItem::Invalidation { key, inv, scope } => {
                let slot = key_slot(&mut self.keys, &*self.store, &key, scope)?;
                slot.stored.state.on_invalidation(&inv, true, &self.rules);
                self.touched(&key);
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
                    .map(|(k, s)| (Arc::clone(k), *s))
                    .collect();
                for (key, key_scope) in matching {
                    let slot = key_slot(&mut self.keys, &*self.store, &key, key_scope)?;
                    slot.stored.state.on_invalidation(&inv, false, &self.rules);
                    self.touched(&key);
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
                let slot = key_slot(&mut self.keys, &*self.store, &key, scope)?;
                if !slot.stored.state.on_fill(fill) {
                    self.stats.add_cache_redeliveries(1);
                }
                self.touched(&key);
            }
        }
        Ok(())
    }

    fn check_entity(&mut self, change: &Change, scope: i32) -> Result<(), StateError> {
        let key = entity_key(scope, change);
        if !self.entities.contains_key(&key) {
            let slot = match self.store.get(Cf::Entities, &key)? {
                Some(bytes) => {
                    let (touched, state) = codec::decode(Cf::Entities, &bytes)?;
                    EntitySlot {
                        scope,
                        state,
                        touched,
                        dirty: false,
                    }
                }
                None => EntitySlot {
                    scope,
                    state: EntityState::default(),
                    touched: Millis::MIN,
                    dirty: false,
                },
            };
            self.entities.insert(key.clone(), slot);
        }
        let slot = self.entities.get_mut(&key).expect("inserted above");
        match entity::check(&mut slot.state, change) {
            EntityVerdict::Duplicate => self.stats.add_duplicate(),
            EntityVerdict::Accepted => {}
            EntityVerdict::Violation(v) => self.violations.push(*v),
        }
        slot.touched = slot.touched.max(change.commit_ts_ms);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty_entities.push(key);
        }
        Ok(())
    }

    /// Bookkeeping after a key's state changed: dirty list, timer, index of
    /// keys with undecided changes.
    fn touched(&mut self, key: &Arc<str>) {
        let slot = self.keys.get_mut(key).expect("the caller loaded the slot");
        if !slot.dirty {
            slot.dirty = true;
            self.dirty_keys.push(Arc::clone(key));
        }
        if let Some(due) = slot.stored.state.next_due(&self.rules)
            && slot.stored.armed.is_none_or(|armed| due < armed)
        {
            slot.stored.armed = Some(due);
            self.timers.push(due, (Arc::clone(key), slot.scope));
        }
        let open = slot
            .stored
            .state
            .changes
            .iter()
            .any(|c| c.status != Status::Decided);
        if open != slot.open {
            slot.open = open;
            if open {
                self.open.insert(Arc::clone(key), slot.scope);
            } else {
                self.open.remove(key);
            }
        }
    }

    /// Advances to watermark `wm`: fires every timer due by then.
    fn advance(&mut self, wm: Millis) -> Result<(), PipelineError> {
        self.watermark = self.watermark.max(wm);
        let wm = self.watermark;
        while let Some((due, (key, scope))) = self.timers.pop_due(wm) {
            if !self.keys.contains_key(&key) {
                // Not in memory: it was evicted or removed; only the store
                // can say whether the timer is still armed.
                match load_key(&*self.store, &key, scope)? {
                    Some(slot) => {
                        self.keys.insert(Arc::clone(&key), slot);
                    }
                    None => continue,
                }
            }
            let slot = self.keys.get_mut(&key).expect("present or loaded above");
            if slot.stored.armed != Some(due) {
                continue;
            }
            slot.stored.armed = None;
            let mut decisions = Decisions::default();
            let next = slot
                .stored
                .state
                .advance(&key, wm, &self.rules, &mut decisions);
            if let Some(next) = next.filter(|n| *n > wm) {
                slot.stored.armed = Some(next);
                self.timers.push(next, (Arc::clone(&key), scope));
            }
            self.record(decisions);
            self.touched(&key);
        }
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

    /// Forgets the scopes whose partitions went to another instance (their
    /// state was committed first): keys, entities, timers, globs.
    fn release(&mut self, scopes: &[i32]) {
        let gone = |scope: &i32| scopes.contains(scope);
        self.keys.retain(|_, slot| !gone(&slot.scope));
        self.entities.retain(|_, slot| !gone(&slot.scope));
        let (keys, entities) = (&self.keys, &self.entities);
        self.dirty_keys.retain(|k| keys.contains_key(k));
        self.dirty_entities.retain(|k| entities.contains_key(k));
        self.timers.retain(|(_, scope)| !gone(scope));
        self.open.retain(|_, scope| !gone(scope));
        self.wildcards.remove(|g| gone(&g.scope));
        self.glob_writes.writes.retain(|w| !gone(&w.scope));
    }

    fn record(&mut self, d: Decisions) {
        for (table, lag) in d.in_time {
            let t = self.tallies.entry(table.to_string()).or_default();
            t.decided += 1;
            t.in_time += 1;
            self.stats.record_invalidation_lag(lag.max(0) as u64);
        }
        for v in &d.violations {
            if v.kind == ViolationKind::MissingInvalidation {
                self.tallies.entry(v.table.to_string()).or_default().decided += 1;
            }
        }
        self.stats.add_expired_missed(d.expired);
        self.stats.add_key_history_evictions(d.evicted);
        self.violations.extend(d.violations);
    }

    /// The state changes since the last checkpoint, as one batch. State that
    /// is not kept (`durable` false) is not encoded: the batch is empty (no
    /// glob writes either), and only the keys left empty are forgotten.
    fn persist(&mut self) -> StateBatch {
        let mut batch = std::mem::take(&mut self.glob_writes);
        for key in std::mem::take(&mut self.dirty_keys) {
            let Some(slot) = self.keys.get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            let finished = slot.stored.state.is_empty() && slot.stored.armed.is_none();
            if !self.durable {
                if finished {
                    self.keys.remove(&key);
                }
                continue;
            }
            let scope = slot.scope;
            if slot.persisted_armed != slot.stored.armed {
                if let Some(old) = slot.persisted_armed {
                    batch.delete(Cf::Timers, scope, codec::timer_key(scope, old, &key));
                }
                if let Some(new) = slot.stored.armed {
                    batch.put(
                        Cf::Timers,
                        scope,
                        codec::timer_key(scope, new, &key),
                        Vec::new(),
                    );
                }
                slot.persisted_armed = slot.stored.armed;
            }
            let storage_key = codec::scoped(scope, key.as_bytes());
            if finished {
                batch.delete(Cf::Keys, scope, storage_key);
                self.keys.remove(&key);
            } else {
                let touched = slot.stored.state.touched;
                batch.put(
                    Cf::Keys,
                    scope,
                    storage_key,
                    codec::encode(touched, &slot.stored),
                );
            }
        }
        for key in std::mem::take(&mut self.dirty_entities) {
            let Some(slot) = self.entities.get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            if self.durable {
                batch.put(
                    Cf::Entities,
                    slot.scope,
                    key.to_vec(),
                    codec::encode(slot.touched, &slot.state),
                );
            }
        }
        batch
    }

    /// Whether this worker writes the globs to the store: every worker
    /// holds all of them, worker 0 stores them, when state is kept.
    fn stores_globs(&self) -> bool {
        self.index == 0 && self.durable
    }
}
