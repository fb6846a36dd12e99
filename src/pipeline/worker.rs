//! A worker: owns one shard of key state, entity state and deadline timers,
//! applies the router's work items with the detectors, fires timers as the
//! watermark advances, and hands its state changes to the sink at each
//! checkpoint. State lives in memory and is written behind to the store;
//! a key or entity not in memory is read from the store on first use.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::{Engine, PipelineError, SinkMsg, WorkItem, WorkMsg};
use crate::detect::entity::{self, EntityState, EntityVerdict};
use crate::detect::key::{
    Decisions, KeyRules, KeyState, Status, Wildcards, glob_matches, glob_prefix,
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
    stored: StoredKey,
    dirty: bool,
    /// The timer as the store has it (to delete it when it changes).
    persisted_armed: Option<Millis>,
    /// Whether the key is in the index of keys with undecided changes.
    open: bool,
}

struct EntitySlot {
    state: EntityState,
    touched: Millis,
    dirty: bool,
}

pub(super) struct Worker {
    index: usize,
    shards: usize,
    store: Arc<dyn Store>,
    rules: KeyRules,
    stats: Arc<Stats>,
    sink: Sender<SinkMsg>,
    keys: HashMap<Arc<str>, KeySlot>,
    entities: HashMap<Box<[u8]>, EntitySlot>,
    dirty_keys: Vec<Arc<str>>,
    dirty_entities: Vec<Box<[u8]>>,
    timers: TimerQueue,
    /// Keys with undecided changes, ordered so that a glob invalidation can
    /// scan the keys sharing its literal prefix.
    open: BTreeSet<Arc<str>>,
    /// Glob invalidations kept for changes that arrive after them.
    wildcards: Wildcards,
    watermark: Millis,
    violations: Vec<Violation>,
    tallies: BTreeMap<String, TableTally>,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

fn entity_key(change: &Change) -> Box<[u8]> {
    let mut k = Vec::with_capacity(change.table.len() + 1 + change.pk.len());
    k.extend_from_slice(change.table.as_bytes());
    k.push(0);
    k.extend_from_slice(change.pk.as_bytes());
    k.into_boxed_slice()
}

/// Reads a key's slot from the store.
fn load_key(store: &dyn Store, key: &str) -> Result<Option<KeySlot>, StateError> {
    let Some(bytes) = store.get(Cf::Keys, key.as_bytes())? else {
        return Ok(None);
    };
    let (_, stored): (Millis, StoredKey) = codec::decode(Cf::Keys, &bytes)?;
    Ok(Some(KeySlot {
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
) -> Result<&'a mut KeySlot, StateError> {
    if !keys.contains_key(key) {
        let slot = load_key(store, key)?.unwrap_or(KeySlot {
            stored: StoredKey::default(),
            dirty: false,
            persisted_armed: None,
            open: false,
        });
        keys.insert(Arc::clone(key), slot);
    }
    Ok(keys.get_mut(key).expect("inserted above"))
}

impl Worker {
    pub(super) fn new(
        index: usize,
        shards: usize,
        engine: &Engine,
        sink: Sender<SinkMsg>,
    ) -> Result<Self, StateError> {
        let mut timers = TimerQueue::default();
        let mut open = BTreeSet::new();
        engine.store.scan(Cf::Timers, &[], &mut |k, _| {
            if let Some((due, key)) = codec::parse_timer_key(k)
                && hash::shard_of_key(key, shards) == index
            {
                let key: Arc<str> = Arc::from(key);
                timers.push(due, Arc::clone(&key));
                open.insert(key);
            }
            true
        })?;
        Ok(Worker {
            index,
            shards,
            store: Arc::clone(&engine.store),
            rules: engine.options.key_rules,
            stats: Arc::clone(&engine.stats),
            sink,
            keys: HashMap::new(),
            entities: HashMap::new(),
            dirty_keys: Vec::new(),
            dirty_entities: Vec::new(),
            timers,
            open,
            wildcards: Wildcards::default(),
            watermark: Millis::MIN,
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
                    self.stats.record_batch(started.elapsed().as_secs_f64());
                    if !self.violations.is_empty() {
                        let v = std::mem::take(&mut self.violations);
                        self.sink
                            .send(SinkMsg::Violations(v))
                            .map_err(disconnected)?;
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
        match item {
            WorkItem::Entity(change) => self.check_entity(&change)?,
            WorkItem::Change { key, change } => {
                let slot = key_slot(&mut self.keys, &*self.store, &key)?;
                let wildcards = self.wildcards.matching(&key);
                slot.stored.state.on_change(&change, wildcards, &self.rules);
                self.touched(&key);
            }
            WorkItem::Invalidation { key, inv } => {
                let slot = key_slot(&mut self.keys, &*self.store, &key)?;
                slot.stored.state.on_invalidation(&inv, true, &self.rules);
                self.touched(&key);
            }
            WorkItem::Wildcard { pattern, inv } => {
                let prefix = glob_prefix(&pattern);
                let matching: Vec<Arc<str>> = self
                    .open
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|k| k.starts_with(prefix))
                    .filter(|k| glob_matches(&pattern, k))
                    .cloned()
                    .collect();
                for key in matching {
                    let slot = key_slot(&mut self.keys, &*self.store, &key)?;
                    slot.stored.state.on_invalidation(&inv, false, &self.rules);
                    self.touched(&key);
                }
                self.wildcards.insert(pattern, inv);
            }
            WorkItem::Fill { key, fill } => {
                let slot = key_slot(&mut self.keys, &*self.store, &key)?;
                if !slot.stored.state.on_fill(fill) {
                    self.stats.add_cache_redeliveries(1);
                }
                self.touched(&key);
            }
        }
        Ok(())
    }

    fn check_entity(&mut self, change: &Change) -> Result<(), StateError> {
        let key = entity_key(change);
        if !self.entities.contains_key(&key) {
            let slot = match self.store.get(Cf::Entities, &key)? {
                Some(bytes) => {
                    let (touched, state) = codec::decode(Cf::Entities, &bytes)?;
                    EntitySlot {
                        state,
                        touched,
                        dirty: false,
                    }
                }
                None => EntitySlot {
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
            self.timers.push(due, Arc::clone(key));
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
                self.open.insert(Arc::clone(key));
            } else {
                self.open.remove(key);
            }
        }
    }

    /// Advances to watermark `wm`: fires every timer due by then.
    fn advance(&mut self, wm: Millis) -> Result<(), PipelineError> {
        self.watermark = self.watermark.max(wm);
        let wm = self.watermark;
        while let Some((due, key)) = self.timers.pop_due(wm) {
            if !self.keys.contains_key(&key) {
                // Not in memory: it was evicted or removed; only the store
                // can say whether the timer is still armed.
                match load_key(&*self.store, &key)? {
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
                self.timers.push(next, Arc::clone(&key));
            }
            self.record(decisions);
            self.touched(&key);
        }
        let horizon = wm.saturating_sub(self.rules.skew_ms);
        self.wildcards.prune(horizon);
        Ok(())
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

    /// The state changes since the last checkpoint, as one batch.
    fn persist(&mut self) -> StateBatch {
        let mut batch = StateBatch::default();
        for key in std::mem::take(&mut self.dirty_keys) {
            let Some(slot) = self.keys.get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            if slot.persisted_armed != slot.stored.armed {
                if let Some(old) = slot.persisted_armed {
                    batch.delete(Cf::Timers, codec::timer_key(old, &key));
                }
                if let Some(new) = slot.stored.armed {
                    batch.put(Cf::Timers, codec::timer_key(new, &key), Vec::new());
                }
                slot.persisted_armed = slot.stored.armed;
            }
            if slot.stored.state.is_empty() && slot.stored.armed.is_none() {
                batch.delete(Cf::Keys, key.as_bytes().to_vec());
                self.keys.remove(&key);
            } else {
                let touched = slot.stored.state.touched;
                batch.put(
                    Cf::Keys,
                    key.as_bytes().to_vec(),
                    codec::encode(touched, &slot.stored),
                );
            }
        }
        for key in std::mem::take(&mut self.dirty_entities) {
            let Some(slot) = self.entities.get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            batch.put(
                Cf::Entities,
                key.to_vec(),
                codec::encode(slot.touched, &slot.state),
            );
        }
        batch
    }
}
