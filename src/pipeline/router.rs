//! The router: the single sequencer between the sources and the workers. It
//! advances the watermark on the records it routes, splits every record by
//! entity and by cache key onto the workers, and injects checkpoints. In
//! stage one of two it publishes the key-level items, and its watermark
//! after them, to the repartition topic instead; in stage two they come
//! back from that topic to its key workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::checkpoints::Checkpoints;
use super::repartition::{KeyedItem, Repartition};
use super::storms::{Observed, StormMsg};
use super::transactions::{TxItem, TxMsg};
use super::{
    Engine, PartitionBatch, PipelineError, Position, SinkMsg, SourceMsg, WorkItem, WorkMsg,
};
use crate::detect::key::{Fill, Invalidation};
use crate::detect::transaction::TxId;
use crate::hash;
use crate::ingest::Record;
use crate::model::{CacheAction, CacheEvent, Millis, Provenance, is_glob};
use crate::telemetry::{
    ChangeDecoded, FillDecoded, InvalidationDecoded, LateRecords, Stage, StageTimed, Stats,
    WatermarkAdvanced,
};
use crate::time::{Clock, Watermarks};

/// How often the router wakes without input (idle watermarks, checkpoints).
const TICK: Duration = Duration::from_millis(100);
/// How often stage one publishes its watermark when it has not moved: the
/// mark that tells stage two this producer is alive.
const MARK_EVERY: Duration = TICK;

pub(super) struct Router {
    work: Vec<Sender<WorkMsg>>,
    /// The storm stage, when storms are detected.
    storms: Option<Sender<StormMsg>>,
    sink: Sender<SinkMsg>,
    pending: Vec<Vec<WorkItem>>,
    /// Batches the workers have applied, empty, to fill again (a batch
    /// allocated here and freed on a worker's thread makes the allocator
    /// take fresh pages).
    spare: Receiver<Vec<WorkItem>>,
    /// Invalidations for the storm stage.
    pending_storms: Vec<Observed>,
    /// The transaction stage, with `detect.transactions`.
    transactions: Option<Sender<TxMsg>>,
    /// Records for the transaction stage.
    pending_tx: Vec<TxItem>,
    /// Stage one: where key-level items go instead of the key workers.
    repartition: Option<Box<dyn Repartition>>,
    /// Key-level items for the repartition topic.
    pending_keyed: Vec<KeyedItem>,
    /// When the watermark was last published to the repartition topic.
    last_mark: Option<Instant>,
    watermarks: Watermarks,
    /// The watermark the workers were last given.
    sent_watermark: Millis,
    /// Inputs end (files): stop once every partition has ended.
    finite: bool,
    /// State is scoped by the records' partition numbers.
    partitioned: bool,
    /// The position reached in each input partition (by watermark index).
    positions: BTreeMap<usize, Position>,
    /// Partitions that ended: their position goes into one more checkpoint,
    /// then is no longer this instance's to write.
    retiring: Vec<usize>,
    epoch: u64,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
    /// Where a worker over its state budget asks for a checkpoint sooner.
    checkpoints: Arc<Checkpoints>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
}

fn disconnected<T>(_: T) -> PipelineError {
    PipelineError::Disconnected("worker or sink")
}

impl Router {
    pub(super) fn new(
        engine: &Engine,
        work: Vec<Sender<WorkMsg>>,
        spare: Receiver<Vec<WorkItem>>,
        storms: Option<Sender<StormMsg>>,
        transactions: Option<Sender<TxMsg>>,
        sink: Sender<SinkMsg>,
        checkpoints: Arc<Checkpoints>,
    ) -> Self {
        let o = &engine.options;
        let now = engine.clock.now_ms();
        let idle_timeout = (!o.finite).then_some(o.idle_timeout_ms);
        let mut watermarks = Watermarks::new(o.allowed_lateness_ms, idle_timeout);
        for _ in 0..engine.partitions {
            watermarks.add_partition(now);
        }
        let n = work.len();
        Router {
            work,
            storms,
            sink,
            pending: (0..n).map(|_| Vec::new()).collect(),
            spare,
            pending_storms: Vec::new(),
            transactions,
            pending_tx: Vec::new(),
            repartition: None,
            pending_keyed: Vec::new(),
            last_mark: None,
            watermarks,
            sent_watermark: Millis::MIN,
            finite: o.finite,
            partitioned: o.partitioned,
            positions: BTreeMap::new(),
            retiring: Vec::new(),
            epoch: 0,
            last_checkpoint: Instant::now(),
            checkpoint_every: o.checkpoint_every,
            checkpoints,
            clock: Arc::clone(&engine.clock),
            stats: Arc::clone(&engine.stats),
        }
    }

    /// Stage one: key-level items go to `repartition` instead of the key
    /// workers.
    pub(super) fn with_repartition(mut self, repartition: Option<Box<dyn Repartition>>) -> Self {
        self.repartition = repartition;
        self
    }

    /// Routes until every source has hung up (or, with finite inputs, every
    /// partition has ended), commits a last checkpoint and returns the final
    /// watermark.
    pub(super) fn run(mut self, sources: Receiver<SourceMsg>) -> Result<Millis, PipelineError> {
        while !(self.finite && self.watermarks.all_ended()) {
            let mut waiting = Vec::new();
            match sources.recv_timeout(TICK) {
                Ok(SourceMsg::Batch(batches)) => {
                    let started = Instant::now();
                    for batch in batches {
                        self.route(batch)?;
                    }
                    self.stats.emit(StageTimed(Stage::Route, started.elapsed()));
                }
                Ok(SourceMsg::End { partitions }) => {
                    for partition in partitions {
                        self.watermarks.end(partition);
                        self.retiring.push(partition);
                    }
                }
                Ok(SourceMsg::Assigned { partitions }) => {
                    let now = self.clock.now_ms();
                    for (partition, event_time) in partitions {
                        self.watermarks.open(partition, now);
                        if let Some(ts) = event_time {
                            self.watermarks.observe(partition, ts, now);
                        }
                    }
                }
                Ok(SourceMsg::CaughtUp {
                    partition,
                    caught_up,
                }) => {
                    self.watermarks.set_caught_up(partition, caught_up);
                }
                Ok(SourceMsg::Checkpoint { done }) => waiting.push(done),
                Ok(SourceMsg::Release { scopes }) => self.broadcast(|| WorkMsg::Release {
                    scopes: scopes.clone(),
                })?,
                Ok(SourceMsg::Load { scopes }) => self.broadcast(|| WorkMsg::Load {
                    scopes: scopes.clone(),
                })?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.dispatch()?;
            if !waiting.is_empty()
                || self.last_checkpoint.elapsed() >= self.checkpoint_every
                || self.checkpoints.take_request()
            {
                self.checkpoint(waiting)?;
            }
        }
        self.finish()?;
        Ok(self.sent_watermark)
    }

    /// Commits a last checkpoint, and another as long as a worker asked for
    /// one: a worker over its budget of kept state fires the timers left
    /// due only as checkpoints let memory free (see
    /// [`super::checkpoints`]), and asks before it sends its part.
    fn finish(&mut self) -> Result<(), PipelineError> {
        loop {
            self.checkpoint(Vec::new())?;
            // When nothing more will commit, the stage that failed reports why.
            if !self.checkpoints.wait_for(self.epoch) || !self.checkpoints.take_request() {
                return Ok(());
            }
        }
    }

    fn route(&mut self, batch: PartitionBatch) -> Result<(), PipelineError> {
        let PartitionBatch {
            partition,
            records,
            dead,
            position,
            keyed,
        } = batch;
        if !dead.is_empty() {
            self.sink
                .send(SinkMsg::DeadLetters(dead))
                .map_err(disconnected)?;
        }
        let now = self.clock.now_ms();
        let mut late = 0;
        for record in records {
            let ts = record.event_time();
            if self.watermarks.is_late(ts) && !matches!(record, Record::Tick(_)) {
                late += 1;
            }
            self.watermarks.observe(partition, ts, now);
            match record {
                Record::Change(change) => self.route_change(change),
                Record::Cache(event, provenance) => self.route_cache(event, provenance),
                Record::Transaction(boundary) => {
                    if self.transactions.is_some() {
                        self.pending_tx.push(TxItem::Boundary(boundary));
                    }
                }
                // Its time is all it brings, observed above.
                Record::Tick(_) => {}
            }
        }
        self.stats.emit(LateRecords(late));
        // Their time came with their producers' marks, in `records`.
        for item in keyed.into_iter().flat_map(|k| {
            let scope = k.scope;
            k.items.into_iter().map(move |item| item.into_work(scope))
        }) {
            self.route_item(item);
        }
        if let Some(p) = position {
            self.positions.insert(partition, p);
        }
        Ok(())
    }

    /// The scope of a record: its partition number when state is
    /// partitioned, else the one scope 0.
    fn scope(&self, provenance: &Provenance) -> i32 {
        if self.partitioned {
            provenance.partition
        } else {
            0
        }
    }

    /// Sends every worker a message, after what was routed before it.
    fn broadcast(&mut self, msg: impl Fn() -> WorkMsg) -> Result<(), PipelineError> {
        self.dispatch()?;
        for w in &self.work {
            w.send(msg()).map_err(disconnected)?;
        }
        Ok(())
    }

    fn route_change(&mut self, change: crate::mapping::Change) {
        self.stats.emit(ChangeDecoded(change.op));
        let scope = self.scope(&change.provenance);
        let change = Arc::new(change);
        if self.transactions.is_some()
            && let Some(tx) = &change.tx_id
            && (change.tx_order.is_some() || change.invalidations_due().is_some())
        {
            self.pending_tx.push(TxItem::Change {
                tx: TxId::new(tx.clone()),
                change: Arc::clone(&change),
            });
        }
        if change.op.is_row_change() {
            self.route_item(WorkItem::Entity {
                change: Arc::clone(&change),
                scope,
            });
        }
        if change.op.obliges_invalidation() {
            for key in &change.keys {
                self.route_item(WorkItem::Change {
                    key: key.clone(),
                    change: Arc::clone(&change),
                    scope,
                });
            }
        }
    }

    /// An item to the worker that owns its entity or key (a glob to every
    /// worker); in stage one a key-level item goes to the repartition topic
    /// instead.
    fn route_item(&mut self, item: WorkItem) {
        if self.repartition.is_some() && !matches!(item, WorkItem::Entity { .. }) {
            self.pending_keyed.extend(KeyedItem::from_work(item));
            return;
        }
        match item {
            WorkItem::Wildcard {
                pattern,
                inv,
                scope,
            } => {
                for pending in &mut self.pending {
                    pending.push(WorkItem::Wildcard {
                        pattern: Arc::clone(&pattern),
                        inv: inv.clone(),
                        scope,
                    });
                }
            }
            WorkItem::Change { ref key, .. }
            | WorkItem::Invalidation { ref key, .. }
            | WorkItem::Fill { ref key, .. } => {
                let shard = hash::shard_of_key(key, self.pending.len());
                self.pending[shard].push(item);
            }
            WorkItem::Entity { ref change, .. } => {
                let shard = hash::shard_of_entity(change.entity, self.pending.len());
                self.pending[shard].push(item);
            }
        }
    }

    fn route_cache(&mut self, mut event: CacheEvent, evidence: Provenance) {
        let scope = self.scope(&evidence);
        let service = event.source_service.take();
        match event.action() {
            CacheAction::Invalidate => {
                self.stats.emit(InvalidationDecoded);
                let inv = Invalidation {
                    ts: event.ts_ms,
                    version: event.version,
                    service,
                    evidence,
                };
                for key in &event.keys {
                    self.route_item(if is_glob(key) {
                        WorkItem::Wildcard {
                            pattern: Arc::from(key.as_str()),
                            inv: inv.clone(),
                            scope,
                        }
                    } else {
                        WorkItem::Invalidation {
                            key: key.clone(),
                            inv: inv.clone(),
                            scope,
                        }
                    });
                }
                // The event's own list of keys, not a copy of it.
                if self.storms.is_some() {
                    self.pending_storms.push(Observed {
                        ts: event.ts_ms,
                        keys: event.keys,
                        service: inv.service,
                    });
                }
            }
            CacheAction::Fill => {
                self.stats.emit(FillDecoded);
                for key in event.keys {
                    let fill = Fill {
                        id: hash::fill(&key, event.ts_ms, event.version, service.as_deref()),
                        ts: event.ts_ms,
                        version: event.version,
                        service: service.clone(),
                        evidence: evidence.clone(),
                        reported: None,
                    };
                    self.route_item(WorkItem::Fill { key, fill, scope });
                }
            }
        }
    }

    /// Sends what was routed (sources already batch their records), and an
    /// empty batch to every worker whose only news is a newer watermark.
    fn dispatch(&mut self) -> Result<(), PipelineError> {
        let watermark = self.watermarks.update(self.clock.now_ms());
        let moved = watermark > self.sent_watermark;
        if let Some(repartition) = &mut self.repartition {
            let due = self.last_mark.is_none_or(|at| at.elapsed() >= MARK_EVERY);
            let mark = (moved || due).then_some(watermark);
            if mark.is_some() || !self.pending_keyed.is_empty() {
                repartition.publish(&self.pending_keyed, mark)?;
                self.pending_keyed.clear();
            }
            if mark.is_some() {
                self.last_mark = Some(Instant::now());
            }
        }
        for (i, items) in self.pending.iter_mut().enumerate() {
            if moved || !items.is_empty() {
                // The next batch is likely as large: room for it at once,
                // rather than growing from empty by doubling.
                let room = items.len();
                let mut next = self.spare.try_recv().unwrap_or_default();
                next.reserve(room);
                let items = std::mem::replace(items, next);
                self.work[i]
                    .send(WorkMsg::Batch { items, watermark })
                    .map_err(disconnected)?;
            }
        }
        if let Some(storms) = &self.storms
            && (moved || !self.pending_storms.is_empty())
        {
            let room = self.pending_storms.len();
            let items = std::mem::replace(&mut self.pending_storms, Vec::with_capacity(room));
            storms
                .send(StormMsg::Batch { items, watermark })
                .map_err(disconnected)?;
        }
        if let Some(transactions) = &self.transactions
            && (moved || !self.pending_tx.is_empty())
        {
            let room = self.pending_tx.len();
            let items = std::mem::replace(&mut self.pending_tx, Vec::with_capacity(room));
            transactions
                .send(TxMsg::Batch { items, watermark })
                .map_err(disconnected)?;
        }
        if moved {
            self.sent_watermark = watermark;
            self.stats.emit(WatermarkAdvanced(watermark));
        }
        Ok(())
    }

    /// Flushes everything routed so far, then asks every worker and the sink
    /// for their part of the next checkpoint; `done` hear of its commit.
    fn checkpoint(&mut self, done: Vec<Sender<()>>) -> Result<(), PipelineError> {
        self.dispatch()?;
        let watermark = self.sent_watermark;
        self.epoch += 1;
        for w in &self.work {
            w.send(WorkMsg::Checkpoint { epoch: self.epoch })
                .map_err(disconnected)?;
        }
        if let Some(storms) = &self.storms {
            storms
                .send(StormMsg::Checkpoint { epoch: self.epoch })
                .map_err(disconnected)?;
        }
        if let Some(transactions) = &self.transactions {
            transactions
                .send(TxMsg::Checkpoint { epoch: self.epoch })
                .map_err(disconnected)?;
        }
        let positions: Vec<Position> = self
            .positions
            .iter()
            .map(|(&index, p)| Position {
                event_time: self.watermarks.event_time(index),
                ..p.clone()
            })
            .collect();
        for p in self.retiring.drain(..) {
            self.positions.remove(&p);
        }
        self.sink
            .send(SinkMsg::Barrier {
                epoch: self.epoch,
                positions,
                watermark,
                done,
            })
            .map_err(disconnected)?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}
