//! A worker: applies the router's work items to its shard of state with the
//! detectors, fires the shard's timers as the watermark advances, and hands
//! its state changes to the sink at each checkpoint (saved between batches
//! of work, copy on write: see [`super::cache`]). What a worker keeps and
//! how (memory, store, timers, open keys, globs) is [`super::shard`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::cache::Prefetch;
use super::checkpoints::Checkpoints;
use super::incidents::IncidentMsg;
use super::shard::Shard;
use super::transactions::TxMsg;
use super::{Engine, PipelineError, SinkMsg, WorkItem, WorkMsg};
use crate::detect::entity::{self, EntityVerdict};
use crate::detect::incident::Tallies;
use crate::detect::key::{Decisions, RetainedGlob};
use crate::detect::transaction::summary::TxTallies;
use crate::events::{Violation, ViolationKind};
use crate::model::{Millis, Name};
use crate::telemetry::{
    BatchProcessed, CacheRedelivered, DuplicateChange, InvalidatedInTime, KeyHistoryEvicted,
    MissedExpired, StateMeasured, Stats, TableTally, TablesDecided,
};

pub(super) struct Worker {
    index: usize,
    /// Whether the process exits once the run ends (see
    /// [`super::EngineOptions::exits_after`]).
    exits_after: bool,
    sink: Sender<SinkMsg>,
    /// Where applied batches go back to the router, empty.
    spare: Sender<Vec<WorkItem>>,
    shard: Shard,
    /// Where the worker hears of commits and asks for checkpoints (see
    /// [`Worker::keep_within_budget`]).
    checkpoints: Arc<Checkpoints>,
    /// The checkpoint after which the worker last asked for another.
    asked_after: Option<u64>,
    watermark: Millis,
    /// The latest event time of the records applied (the globs' history
    /// runs back from it).
    latest: Millis,
    verdicts: Verdicts,
    /// Where the key checks' verdicts go for incident detection, unless
    /// it is off.
    incidents: Option<Sender<IncidentMsg>>,
    /// Where the key checks' verdicts by transaction go for the
    /// transaction summaries, unless transaction checks are off.
    transactions: Option<Sender<TxMsg>>,
    /// The watermark up to which every timer due has fired, as last told
    /// to incident detection and the transaction summaries.
    decided_until: Millis,
}

/// The stages that hear the key checks' verdicts, when they are on.
pub(super) struct Listeners {
    pub incidents: Option<Sender<IncidentMsg>>,
    pub transactions: Option<Sender<TxMsg>>,
}

/// What the detectors decided since they were last sent or counted.
struct Verdicts {
    stats: Arc<Stats>,
    /// The key checks' decisions not counted yet (see [`Verdicts::record`]);
    /// its vectors keep their room from one record to the next.
    decided: Decisions,
    violations: Vec<Violation>,
    /// Changes decided since the last checkpoint, by table.
    tallies: BTreeMap<Name, TableTally>,
    /// Verdicts for incident detection since they were last sent (when it
    /// is on).
    incidents: Option<Tallies>,
    /// Verdicts by transaction since they were last sent (when transaction
    /// checks are on).
    transactions: Option<TxTallies>,
}

impl Verdicts {
    /// Counts the key checks' decisions since the last call, and keeps their
    /// violations to send.
    fn record(&mut self) {
        let d = &mut self.decided;
        if let Some(t) = &mut self.incidents {
            for ((table, _), (due, service, _)) in d.in_time.iter().zip(&d.in_time_due) {
                t.in_time(*due, table, service.as_deref());
            }
            for v in &d.violations {
                t.violation(v);
            }
        }
        if let Some(t) = &mut self.transactions {
            for ((table, _), (due, _, tx)) in d.in_time.iter().zip(&d.in_time_due) {
                if let Some(tx) = tx {
                    t.in_time(tx, table, *due);
                }
            }
            for v in &d.violations {
                t.violation(v);
            }
        }
        d.in_time_due.clear();
        for (table, lag) in d.in_time.drain(..) {
            let t = self.tallies.entry(table).or_default();
            t.decided += 1;
            t.in_time += 1;
            self.stats.emit(InvalidatedInTime(lag.max(0) as u64));
        }
        for v in &d.violations {
            if v.kind == ViolationKind::MissingInvalidation {
                self.tallies.entry(v.table.clone()).or_default().decided += 1;
            }
        }
        self.stats
            .emit(MissedExpired(std::mem::take(&mut d.expired)));
        self.stats
            .emit(KeyHistoryEvicted(std::mem::take(&mut d.evicted)));
        self.violations.append(&mut d.violations);
    }
}

/// Keys (and as many entities) saved at a time while a checkpoint is saved
/// behind the work: 1 to 4 ms. Tests save one at a time, so that their
/// verdicts check the copy on write.
const SAVE_CHUNK: usize = if cfg!(test) { 1 } else { 256 };

/// Timers fired at a time, after each batch of work and whenever the inbox
/// is empty (and chunk after chunk at a checkpoint), so that a watermark
/// passing many deadlines at once does not hold back the records behind
/// it: 2 to 5 ms. Tests fire one at a time, so that their verdicts check
/// the firing behind the work.
const FIRE_CHUNK: usize = if cfg!(test) { 1 } else { 1024 };

/// How many items ahead of the one it applies a worker asks the CPU for
/// an item's state (and twice as far ahead, for its index entries; see
/// [`Shard::prefetch`]): far enough that the loads are done when the item's
/// turn comes, near enough that what they load is still in the cache then.
const PREFETCH_AHEAD: usize = 8;

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("sink")
}

impl Worker {
    pub(super) fn new(
        index: usize,
        shards: usize,
        engine: &Engine,
        sink: Sender<SinkMsg>,
        spare: Sender<Vec<WorkItem>>,
        checkpoints: Arc<Checkpoints>,
        listeners: Listeners,
    ) -> Self {
        let Listeners {
            incidents,
            transactions,
        } = listeners;
        Worker {
            index,
            exits_after: engine.options.exits_after,
            sink,
            spare,
            shard: Shard::new(index, shards, engine, Arc::clone(&checkpoints)),
            checkpoints,
            asked_after: None,
            watermark: Millis::MIN,
            latest: Millis::MIN,
            verdicts: Verdicts {
                stats: Arc::clone(&engine.stats),
                decided: Decisions::default(),
                violations: Vec::new(),
                tallies: BTreeMap::new(),
                incidents: incidents.as_ref().map(|_| Tallies::default()),
                transactions: transactions.as_ref().map(|_| TxTallies::default()),
            },
            incidents,
            transactions,
            decided_until: Millis::MIN,
        }
    }

    /// Notes the shard's timers and reads its globs from the store (on its
    /// own thread, so that the workers read theirs at the same time), then
    /// applies the router's messages until it hangs up.
    pub(super) fn run(mut self, inbox: Receiver<WorkMsg>) -> Result<(), PipelineError> {
        let started = std::time::Instant::now();
        self.shard.load(None)?;
        if self.shard.restoring() > 0 {
            tracing::info!(
                worker = self.index,
                scopes = self.shard.restoring(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "found timers in state, to read as they come due"
            );
        }
        loop {
            // While timers are due, a checkpoint is being saved or keys
            // armed in the store are to be filed, work on them whenever
            // nothing waits.
            let msg = if self.shard.can_work_behind(self.watermark) || self.shard.is_filing() {
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
                    let mut left = items.drain(..);
                    while let Some(item) = left.next() {
                        let ahead = left.as_slice();
                        if let Some(far) = ahead.get(2 * PREFETCH_AHEAD - 1) {
                            self.shard.prefetch(far, Prefetch::Index);
                        }
                        if let Some(near) = ahead.get(PREFETCH_AHEAD - 1) {
                            self.shard.prefetch(near, Prefetch::Node);
                        }
                        self.apply(item)?;
                    }
                    drop(left);
                    // When the router has spares enough, this one is freed.
                    let _ = self.spare.try_send(items);
                    self.advance(watermark)?;
                    self.verdicts.stats.emit(BatchProcessed(started.elapsed()));
                    self.send_violations()?;
                    self.save_some()?;
                    self.keep_within_budget()?;
                }
                WorkMsg::Release { scopes } => {
                    self.finish_checkpoint()?;
                    self.shard.release(&scopes);
                }
                WorkMsg::Load { scopes } => {
                    for scope in scopes {
                        self.shard.load(Some(scope))?;
                    }
                }
                WorkMsg::Checkpoint { epoch } => self.checkpoint(epoch)?,
            }
        }
        self.finish_checkpoint()?;
        if self.exits_after {
            self.shard.leave();
        }
        Ok(())
    }

    /// Fires some of the timers due, files some of the keys armed in the
    /// store among the open keys, and saves some of the checkpoint being
    /// saved.
    fn work_behind(&mut self) -> Result<(), PipelineError> {
        self.fire_due(FIRE_CHUNK)?;
        self.shard.file_some(FIRE_CHUNK)?;
        self.send_violations()?;
        self.save_some()?;
        self.keep_within_budget()?;
        if !self.shard.is_behind(self.watermark) {
            // Caught up: incident detection hears it now, not with the next
            // batch.
            self.send_violations()?;
        }
        Ok(())
    }

    /// Sends the verdicts decided so far: violations to the sink, the key
    /// checks' verdicts to incident detection and by transaction to the
    /// transaction summaries (in one message per batch of work, with the
    /// time up to which every one due has been decided).
    fn send_violations(&mut self) -> Result<(), PipelineError> {
        let decided_until = if self.shard.is_behind(self.watermark) {
            self.decided_until
        } else {
            self.watermark
        };
        let moved = decided_until > self.decided_until;
        self.decided_until = decided_until;
        if let (Some(tx), Some(tallies)) = (&self.incidents, &mut self.verdicts.incidents)
            && (moved || !tallies.is_empty())
        {
            tx.send(IncidentMsg::Verdicts {
                worker: self.index,
                tallies: std::mem::take(tallies),
                decided_until,
            })
            .map_err(|_| PipelineError::Disconnected("incidents"))?;
        }
        if let (Some(tx), Some(tallies)) = (&self.transactions, &mut self.verdicts.transactions)
            && (moved || !tallies.is_empty())
        {
            tx.send(TxMsg::Verdicts {
                worker: self.index,
                sums: tallies.take(),
                decided_until,
            })
            .map_err(|_| PipelineError::Disconnected("transactions"))?;
        }
        if !self.verdicts.violations.is_empty() {
            let v = std::mem::take(&mut self.verdicts.violations);
            self.sink
                .send(SinkMsg::Violations(v))
                .map_err(disconnected)?;
        }
        Ok(())
    }

    /// Takes part in checkpoint `epoch`, with every timer due fired first
    /// (kept state over its budget fires the rest as memory frees, see
    /// [`Worker::keep_within_budget`]): state that is kept is saved behind
    /// the work ([`Worker::save_some`]), state that is not at once.
    fn checkpoint(&mut self, epoch: u64) -> Result<(), PipelineError> {
        self.finish_checkpoint()?;
        // A chunk at a time, so that the decisions' buffers stay the size
        // of a chunk however many timers are due.
        while self.fire_due(FIRE_CHUNK)? {}
        self.send_violations()?;
        if let Some(tx) = &self.incidents {
            tx.send(IncidentMsg::Checkpoint { epoch })
                .map_err(|_| PipelineError::Disconnected("incidents"))?;
        }
        if let Some(tx) = &self.transactions {
            tx.send(TxMsg::Checkpoint { epoch })
                .map_err(|_| PipelineError::Disconnected("transactions"))?;
        }
        let tallies = std::mem::take(&mut self.verdicts.tallies);
        self.verdicts.stats.emit(TablesDecided(&tallies));
        self.shard.begin_persist(epoch);
        if self.shard.durable() {
            Ok(())
        } else {
            self.finish_checkpoint()
        }
    }

    /// Saves some of the checkpoint being saved, and sends it once whole.
    fn save_some(&mut self) -> Result<(), PipelineError> {
        if self.shard.is_saving() && self.shard.save_some(SAVE_CHUNK) {
            self.finish_checkpoint()?;
        }
        Ok(())
    }

    /// Holds kept state to the shard's budget: state saved by a checkpoint
    /// may leave memory only once that checkpoint is committed (see
    /// [`super::cache`]), so a shard over its budget asks for the next
    /// checkpoint sooner, finishes the one it is saving, waits for the last
    /// one it sent to commit, and lets what that saved leave memory. A
    /// shard whose changes since the last checkpoint fill their share
    /// ([`Shard::checkpoint_full`]) asks for the next one too, without
    /// waiting. State that is not kept leaves memory at once
    /// ([`Shard::spill_over_budget`]).
    fn keep_within_budget(&mut self) -> Result<(), PipelineError> {
        if !self.shard.durable() {
            self.shard.spill_over_budget()?;
            return Ok(());
        }
        if self.shard.checkpoint_full() {
            self.ask_for_checkpoint();
        }
        if !self.shard.over_budget() {
            return Ok(());
        }
        self.ask_for_checkpoint();
        if self.shard.is_saving() {
            self.finish_checkpoint()?;
        }
        if !self.checkpoints.wait_for(self.shard.epoch()) {
            return Err(PipelineError::Disconnected("committer"));
        }
        self.shard.evict_committed()?;
        Ok(())
    }

    /// Asks for the next checkpoint sooner than the interval, once a
    /// checkpoint.
    fn ask_for_checkpoint(&mut self) {
        if self.asked_after != Some(self.shard.epoch()) {
            self.asked_after = Some(self.shard.epoch());
            self.checkpoints.ask();
        }
    }

    /// Saves the rest of the checkpoint being saved, if any, and sends it.
    /// Timers held back for memory (see [`Worker::keep_within_budget`]) ask
    /// for another checkpoint first: the router ends a run only once a
    /// checkpoint commits with no request, so every timer fires.
    fn finish_checkpoint(&mut self) -> Result<(), PipelineError> {
        if self.shard.is_saving() {
            let batch = self.shard.finish_persist()?;
            if self.shard.holds_back_timers() {
                self.ask_for_checkpoint();
            }
            self.verdicts.stats.emit(StateMeasured {
                worker: self.index,
                size: self.shard.size(),
            });
            self.sink
                .send(SinkMsg::Fragment {
                    epoch: self.shard.epoch(),
                    batch,
                })
                .map_err(disconnected)?;
        }
        Ok(())
    }

    fn apply(&mut self, item: WorkItem) -> Result<(), PipelineError> {
        self.latest = self.latest.max(item.event_ts());
        let wm = self.watermark;
        let out = &mut self.verdicts.decided;
        match item {
            WorkItem::Entity { change, scope } => {
                let state = self.shard.entity(&change, scope)?;
                match entity::check(state, &change) {
                    EntityVerdict::Duplicate => self.verdicts.stats.emit(DuplicateChange),
                    EntityVerdict::Accepted => {}
                    EntityVerdict::Violation(v) => self.verdicts.violations.push(*v),
                }
            }
            WorkItem::Change { key, change, scope } => {
                self.shard
                    .update_key(&key, scope, wm, out, |state, rules, globs| {
                        state.on_change(&change, globs.matching(&key), rules)
                    })?;
            }
            WorkItem::Invalidation { key, inv, scope } => {
                self.shard
                    .update_key(&key, scope, wm, out, |state, rules, _| {
                        state.on_invalidation(&inv, true, rules)
                    })?;
            }
            WorkItem::Wildcard {
                pattern,
                inv,
                scope,
            } => {
                for (key, key_scope) in self.shard.open_matching(&pattern)? {
                    self.shard
                        .update_key(&key, key_scope, wm, out, |state, rules, _| {
                            // The key's due timer, fired just before, may have
                            // decided every change: the glob then passes it by,
                            // as if the timer had fired when the watermark came.
                            if state.has_undecided() {
                                state.on_invalidation(&inv, false, rules);
                            }
                        })?;
                }
                self.shard.retain_glob(RetainedGlob {
                    pattern,
                    inv,
                    scope,
                });
            }
            WorkItem::Fill { key, fill, scope } => {
                let fresh = self
                    .shard
                    .update_key(&key, scope, wm, out, |state, _, _| state.on_fill(fill))?;
                if !fresh {
                    self.verdicts.stats.emit(CacheRedelivered);
                }
            }
        }
        self.verdicts.record();
        Ok(())
    }

    /// Advances to watermark `wm`: fires up to [`FIRE_CHUNK`] of the timers
    /// due by then (the others after, see [`Worker::work_behind`]), and
    /// prunes the retained globs.
    fn advance(&mut self, wm: Millis) -> Result<(), PipelineError> {
        self.watermark = self.watermark.max(wm);
        self.fire_due(FIRE_CHUNK)?;
        self.shard.prune_globs(self.watermark, self.latest);
        Ok(())
    }

    /// Fires up to `n` of the timers the watermark has passed; false once
    /// none is due or may fire.
    fn fire_due(&mut self, n: usize) -> Result<bool, PipelineError> {
        let more = self
            .shard
            .fire_due(self.watermark, n, &mut self.verdicts.decided)?;
        self.verdicts.record();
        Ok(more)
    }
}
