//! The engine that runs in every mode (DESIGN.md sections 1 and 8):
//!
//! ```text
//! sources ──► router ──► workers (key + entity shards) ──► sink ──► committer
//!   decode      watermark,  │ state, timers, detectors      outputs,  state +
//!   + map       routing,    │                               flushed   offsets in
//!               checkpoints ├► storms (counts by scope) ──►  at each  one batch
//!                           ├► transactions (tallies) ──►   checkpoint
//!                           └ workers' verdicts ─► incidents (by table) ─► sink
//! ```
//!
//! Sources (file readers, the Kafka consumer) decode and map in their own
//! threads and send [`SourceMsg`] batches. The router is the single
//! sequencer: it tracks the watermark, splits records by cache key and by
//! entity onto the workers over bounded channels (back-pressure), and
//! injects checkpoint barriers. Each worker owns a shard of key state, entity
//! state and deadline timers, so no state is shared; the storm stage sees
//! every invalidation and owns storm detection, the transaction stage every
//! BEGIN, END and change of a transaction (with `detect.transactions`) and
//! owns the transaction checks; the incident stage gathers every worker's
//! verdicts and owns incident detection. The sink writes the
//! outputs and, once every worker has delivered its state changes for a
//! checkpoint (and the storm stage its baselines), flushes the outputs and
//! hands those changes with the input positions to the committer, which
//! waits on a thread of its own until the outputs up to the flush are
//! acknowledged, then writes them in one atomic write; the sink goes on
//! writing outputs meanwhile.
//!
//! Files: `router`, `worker` (the loop and the detector calls), `shard`
//! (what a worker keeps: its keys and entities in `cache`'s slots over the
//! store, found through `index`, its timers, open keys and globs),
//! `storms`, `transactions`, `incidents`, `sink` (with the committer),
//! `checkpoints` (the latest commit, which a worker over its budget of kept
//! state waits for, and its request for a checkpoint sooner), `repartition`
//! (the key-level items and watermark marks that cross the repartition
//! topic when the engine runs as two stages: stage one's router publishes
//! them through a [`Repartition`] instead of handing them to its key
//! workers, stage two's sources bring them back as [`Repartitioned`]
//! batches).
//!
//! Channels only flow downstream (no cycles), so back-pressure cannot
//! deadlock, and watermarks and barriers travel in-band: everything a
//! worker receives before a watermark was routed before it. The one wait
//! upstream, a worker over its budget waiting for a checkpoint to commit,
//! waits only for a checkpoint it has sent its part of: the router sent
//! that checkpoint's barrier and every stage's mark before the worker saw
//! its own, and the other stages finish their parts without input (a
//! worker saving a checkpoint saves it while its inbox is empty).

mod cache;
mod checkpoints;
mod incidents;
mod index;
mod repartition;
mod router;
mod shard;
mod sink;
mod storms;
mod transactions;
mod worker;

pub use incidents::load_incidents;
pub use repartition::{KeyedItem, Repartition, Repartitioned, Transfer, TransferError};
pub use shard::{index_timers, read_entity, read_key};
pub use storms::load_storms;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::{Config, IncidentsConfig, StormsConfig};
use crate::dead_letter::DeadLetter;
use crate::detect::incident::{IncidentEvent, IncidentRules};
use crate::detect::key::{Fill, Invalidation, KeyRules};
use crate::detect::lifecycle::Cadence;
use crate::detect::storm::{StormEvent, StormRules, Thresholds};
use crate::detect::transaction::TxRules;
use crate::events::Violation;
use crate::ingest::Record;
use crate::mapping::Change;
use crate::model::{CacheKey, Millis, Name};
use crate::state::{MemoryBudget, StateBatch, StateError, Store};
use crate::telemetry::Stats;
use crate::time::Clock;

/// A position in an input: the next offset to read of a source partition
/// (a topic partition, or a file with its line number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub source: Name,
    pub partition: i32,
    pub next_offset: i64,
    /// The highest event time read from the partition, filled in by the
    /// router when it checkpoints the position (sources leave it `None`).
    pub event_time: Option<Millis>,
}

/// Records of one input partition, in order.
#[derive(Debug)]
pub struct PartitionBatch {
    /// Index of the partition in the watermark (see [`Engine::partitions`]).
    pub partition: usize,
    pub records: Vec<Record>,
    pub dead: Vec<DeadLetter>,
    /// The position after this batch.
    pub position: Option<Position>,
    /// Key-level items read from a repartition topic (stage two), applied
    /// after `records` (which carry their producers' marks as ticks).
    pub keyed: Option<Repartitioned>,
}

/// What a source sends to the router.
#[derive(Debug)]
pub enum SourceMsg {
    /// Records of one or more partitions, each in order.
    Batch(Vec<PartitionBatch>),
    /// The partitions have no more records (end of file, revoked
    /// partitions). A rebalance sends all it revokes in one message, so
    /// that the watermark never stands on the few not revoked yet.
    End { partitions: Vec<usize> },
    /// Partitions were assigned: new indices, or ones that ended before
    /// (all of one assignment in one message).
    /// With each, the event time its stored position holds, if any: the
    /// partition starts from it instead of holding the watermark back until
    /// it shows a record.
    Assigned {
        partitions: Vec<(usize, Option<Millis>)>,
    },
    /// Whether a partition has been read up to its end (live inputs: only
    /// a caught-up partition may be considered idle).
    CaughtUp { partition: usize, caught_up: bool },
    /// Commit a checkpoint now, and say so on `done` once it is committed
    /// (a rebalance waits for it before releasing partitions).
    Checkpoint { done: Sender<()> },
    /// These scopes' partitions went to another instance: forget them (their
    /// state was committed by a checkpoint before).
    Release { scopes: Vec<i32> },
    /// These scopes' state was just restored in the store: load their
    /// timers and retained globs.
    Load { scopes: Vec<i32> },
}

/// What the router sends a worker.
enum WorkMsg {
    /// Records to apply, then the watermark to advance to.
    Batch {
        items: Vec<WorkItem>,
        watermark: Millis,
    },
    /// Hand the state changes since the last checkpoint to the sink.
    Checkpoint { epoch: u64 },
    /// See [`SourceMsg::Release`].
    Release { scopes: Vec<i32> },
    /// See [`SourceMsg::Load`].
    Load { scopes: Vec<i32> },
}

/// One unit of work for the shard that owns its key or entity; `scope` is
/// the input partition number the record came from (0 unless partitioned).
enum WorkItem {
    /// A change, for the entity checks.
    Entity { change: Arc<Change>, scope: i32 },
    /// A change, for one of its cache keys.
    Change {
        key: CacheKey,
        change: Arc<Change>,
        scope: i32,
    },
    Invalidation {
        key: CacheKey,
        inv: Invalidation,
        scope: i32,
    },
    /// A glob invalidation: every worker gets it.
    Wildcard {
        pattern: Arc<str>,
        inv: Invalidation,
        scope: i32,
    },
    Fill {
        key: CacheKey,
        fill: Fill,
        scope: i32,
    },
}

impl WorkItem {
    /// The event time of the record behind the item.
    fn event_ts(&self) -> Millis {
        match self {
            WorkItem::Entity { change, .. } | WorkItem::Change { change, .. } => {
                change.commit_ts_ms
            }
            WorkItem::Invalidation { inv, .. } | WorkItem::Wildcard { inv, .. } => inv.ts,
            WorkItem::Fill { fill, .. } => fill.ts,
        }
    }
}

/// What the router and the workers send the sink.
enum SinkMsg {
    DeadLetters(Vec<DeadLetter>),
    Violations(Vec<Violation>),
    Storms(Vec<StormEvent>),
    Incidents(Vec<IncidentEvent>),
    /// The router's part of a checkpoint: positions reached, the watermark,
    /// and who waits for the commit.
    Barrier {
        epoch: u64,
        positions: Vec<Position>,
        watermark: Millis,
        done: Vec<Sender<()>>,
    },
    /// A worker's (or the storm or incident stage's) part of a checkpoint: its state
    /// changes.
    Fragment {
        epoch: u64,
        batch: StateBatch,
    },
}

/// The checkpoints a stage that hears from several senders was asked for,
/// and by how many of them so far.
struct Arrivals {
    senders: usize,
    reached: BTreeMap<u64, usize>,
}

impl Arrivals {
    fn new(senders: usize) -> Self {
        Arrivals {
            senders,
            reached: BTreeMap::new(),
        }
    }

    /// One more sender has reached checkpoint `epoch`: true once every one
    /// has.
    fn reach(&mut self, epoch: u64) -> bool {
        let reached = self.reached.entry(epoch).or_default();
        *reached += 1;
        if *reached < self.senders {
            return false;
        }
        self.reached.remove(&epoch);
        true
    }
}

/// Where violations, storm and incident events and dead letters go.
pub trait Outputs: Send {
    fn violation(&mut self, v: &Violation) -> Result<(), OutputError>;
    fn storm(&mut self, e: &StormEvent) -> Result<(), OutputError>;
    fn incident(&mut self, e: &IncidentEvent) -> Result<(), OutputError>;
    fn dead_letter(&mut self, d: &DeadLetter) -> Result<(), OutputError>;
    /// The state changes about to be committed (for a changelog), in one
    /// or more parts. Called before [`Outputs::flush`].
    fn state(&mut self, _batch: &StateBatch) -> Result<(), OutputError> {
        Ok(())
    }
    /// Makes everything written so far durable (files flushed, or a
    /// transaction committed with the input `positions`), or returns what
    /// is left to wait for (records the broker has not acknowledged yet).
    /// Called before the state and positions are committed; the committer
    /// waits for the [`Acknowledgement`] before it commits, while the sink
    /// goes on writing.
    fn flush(
        &mut self,
        positions: &[Position],
    ) -> Result<Option<Box<dyn Acknowledgement>>, OutputError>;
    /// Called once the state and `positions` are committed, to publish the
    /// progress (Kafka's committed offsets, for lag monitoring).
    fn committed(&mut self, _positions: &[Position]) {}
}

/// What a checkpoint's flush left to wait for before the checkpoint may
/// commit: the outputs written up to the flush becoming durable.
pub trait Acknowledgement: Send {
    /// Blocks until they are durable, or fails if they cannot be.
    fn wait(self: Box<Self>) -> Result<(), OutputError>;
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot produce to Kafka topic {topic}: {message}")]
    Kafka { topic: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("pipeline stage {0} stopped unexpectedly")]
    Disconnected(&'static str),
    #[error("pipeline thread {0} panicked")]
    Panicked(&'static str),
}

/// Settings of the engine, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub workers: usize,
    pub batch_size: usize,
    pub queue_batches: usize,
    pub key_rules: KeyRules,
    pub allowed_lateness_ms: Millis,
    /// Inputs end (files): the run stops when every partition has ended,
    /// partitions never idle, and the end makes every verdict final.
    pub finite: bool,
    /// State is scoped by input partition number (`inputs.co_partitioned`).
    pub partitioned: bool,
    /// A caught-up input partition without records for this long stops
    /// holding the watermark back, and with all of them idle the watermark
    /// follows the wall clock (live inputs). [`Millis::MAX`] in stage two
    /// of two: a repartition partition's time is the marks of the stage-one
    /// producers, which apply that rule to their own inputs; a repartition
    /// partition gone quiet means stage one has not moved its time, and
    /// stage two must wait for it, not run ahead on its own clock.
    pub idle_timeout_ms: Millis,
    pub checkpoint_every: Duration,
    pub retention_ms: Millis,
    /// Key and entity state is written to the store at checkpoints. False
    /// when it is thrown away at the end (`vigil check` without `--state`):
    /// it then stays in memory, and checkpoints record input positions only
    /// (what leaves memory to keep within `slot_budget` is written still).
    /// When false, the store must start empty of keys and entities.
    pub durable: bool,
    /// Bytes of key and entity state kept in memory, with the keys' timers
    /// and index of open keys, over all workers (see
    /// [`crate::state::MemoryBudget`]).
    pub slot_budget: usize,
    /// Bytes of state (as `slot_budget` counts them) that leave memory in
    /// one write to the store when it is not kept (`durable` false):
    /// `shard::SPILL_STEP` (4 MiB) from the configuration; tests set it
    /// smaller, so that a spill is written in many parts.
    pub spill_step: usize,
    /// Storm detection, unless `storms.enabled` is false.
    pub storms: Option<StormRules>,
    /// Transaction checks, with `detect.transactions`.
    pub transactions: Option<TxRules>,
    /// Incident detection, unless `incidents.enabled` is false.
    pub incidents: Option<IncidentRules>,
    /// The process exits once the run ends (`vigil check`): the workers
    /// then leave their keys, entities and timers to the operating system
    /// instead of freeing them one by one (for a million keys, about 4 % of
    /// such a run's CPU). False unless the mode sets it.
    pub exits_after: bool,
}

impl EngineOptions {
    pub fn from_config(config: &Config, finite_inputs: bool) -> Self {
        let d = &config.detect;
        EngineOptions {
            workers: config.pipeline.worker_count(),
            batch_size: config.pipeline.batch_size,
            queue_batches: config.pipeline.queue_batches,
            key_rules: KeyRules {
                skew_ms: d.skew.as_millis_i64(),
                late_window_ms: d.late_window.as_millis_i64(),
                max_changes: d.max_changes_per_key,
                history_ms: d.history.as_millis_i64(),
            },
            allowed_lateness_ms: d.allowed_lateness.as_millis_i64(),
            finite: finite_inputs,
            partitioned: config.inputs.co_partitioned && !finite_inputs,
            idle_timeout_ms: d.idle_timeout.as_millis_i64(),
            checkpoint_every: config.state.checkpoint_interval.0,
            retention_ms: config.state.retention.as_millis_i64(),
            durable: true,
            slot_budget: MemoryBudget::of(config.state.cache_size.0).slots,
            spill_step: shard::SPILL_STEP,
            storms: config.storms.enabled.then(|| storm_rules(&config.storms)),
            transactions: d.transactions.then(|| TxRules {
                timeout_ms: d.transaction_timeout.as_millis_i64(),
                max_open: d.max_open_transactions,
            }),
            incidents: config
                .incidents
                .enabled
                .then(|| incident_rules(&config.incidents)),
            exits_after: false,
        }
    }
}

/// The rules of storm detection, from `[storms]`.
pub fn storm_rules(c: &StormsConfig) -> StormRules {
    StormRules {
        thresholds: c.sections().map(|(_, t)| Thresholds {
            rate: t.rate,
            factor: t.factor,
            min_rate: t.min_rate,
            sustain_s: seconds(t.sustain.0),
            end_factor: t.end_factor,
            hold_s: seconds(t.hold.0),
        }),
        prefix_patterns: c.prefix_patterns.iter().map(|p| p.0.clone()).collect(),
        bulk_min_keys: c.bulk_min_keys,
        update_every_ms: c.update_every.as_millis_i64(),
        warmup_s: seconds(c.warmup.0),
        baseline_half_life_s: c.baseline_half_life.0.as_secs_f64(),
        max_tracked: c.max_tracked,
    }
}

/// The rules of incident detection, from `[incidents]`.
pub fn incident_rules(c: &IncidentsConfig) -> IncidentRules {
    IncidentRules {
        slo: c.slo,
        window_s: seconds(c.window.0),
        min_changes: c.min_changes,
        cadence: Cadence {
            update_every_ms: c.update_every.as_millis_i64(),
            hold_s: seconds(c.hold.0),
        },
        max_tables: c.max_tables,
    }
}

/// Whole seconds, rounded up (rates are counted per second).
fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX)
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The last watermark ([`crate::time::END_OF_TIME`] when every input ended).
    pub watermark: Millis,
    /// Checkpoints committed.
    pub checkpoints: u64,
}

/// Starts a stage on a thread of its own, under the name `ps` and `perf`
/// show.
fn spawn<T: Send + 'static>(
    name: impl Into<String>,
    run: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .expect("spawning a thread only fails when the OS is out of resources")
}

/// [`spawn`] for a stage that takes part in checkpoints (see
/// [`checkpoints::Checkpoints::stop_on_failure`]).
fn spawn_stage<T: Send + 'static>(
    name: impl Into<String>,
    checkpoints: &Arc<checkpoints::Checkpoints>,
    run: impl FnOnce() -> Result<T, PipelineError> + Send + 'static,
) -> std::thread::JoinHandle<Result<T, PipelineError>> {
    let checkpoints = Arc::clone(checkpoints);
    spawn(name, move || checkpoints.stop_on_failure(run))
}

/// A configured engine, ready to run over the sources' channel.
pub struct Engine {
    pub options: EngineOptions,
    pub store: Arc<dyn Store>,
    pub stats: Arc<Stats>,
    pub clock: Arc<dyn Clock>,
    /// Number of input partitions known at start (files; indices `0..n`).
    /// Live sources announce theirs with [`SourceMsg::Assigned`].
    pub partitions: usize,
    /// Stage one of two: key-level items go here instead of to the key
    /// workers (which then hold entity state only).
    pub repartition: Option<Box<dyn Repartition>>,
}

impl Engine {
    /// Runs until every source has hung up (or, with finite inputs, every
    /// partition has ended), then commits a last checkpoint. Blocks the
    /// calling thread.
    pub fn run(
        mut self,
        sources: Receiver<SourceMsg>,
        outputs: Box<dyn Outputs>,
    ) -> Result<RunReport, PipelineError> {
        let n = self.options.workers.max(1);
        let cap = self.options.queue_batches;
        let (sink_tx, sink_rx) = crossbeam_channel::bounded(cap * (n + 1));
        let mut work_txs = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let checkpoints = Arc::new(checkpoints::Checkpoints::default());
        // Batches go back to the router once applied, to be filled again.
        let (spare_tx, spare_rx) = crossbeam_channel::bounded((cap + 1) * n);
        let mut incident_tx = None;
        let incident_handle = match self.options.incidents {
            Some(rules) => {
                let (tx, rx) = crossbeam_channel::bounded(cap * n);
                incident_tx = Some(tx);
                let stage = incidents::IncidentStage::new(&self, rules, n, sink_tx.clone())?;
                Some(spawn_stage("vigil-incidents", &checkpoints, move || {
                    stage.run(rx)
                }))
            }
            None => None,
        };
        let mut tx_tx = None;
        let tx_handle = match self.options.transactions {
            Some(rules) => {
                // The router's batches, and every worker's verdicts.
                let (tx, rx) = crossbeam_channel::bounded(cap * (n + 1));
                tx_tx = Some(tx);
                let stage = transactions::TxStage::new(&self, rules, n, sink_tx.clone())?;
                Some(spawn_stage("vigil-transactions", &checkpoints, move || {
                    stage.run(rx)
                }))
            }
            None => None,
        };
        for index in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(cap);
            work_txs.push(tx);
            let w = worker::Worker::new(
                index,
                n,
                &self,
                sink_tx.clone(),
                spare_tx.clone(),
                Arc::clone(&checkpoints),
                worker::Listeners {
                    incidents: incident_tx.clone(),
                    transactions: tx_tx.clone(),
                },
            );
            handles.push(spawn_stage(
                format!("vigil-worker-{index}"),
                &checkpoints,
                move || w.run(rx),
            ));
        }
        let mut storm_tx = None;
        let storm_handle = match self.options.storms.clone() {
            Some(rules) => {
                let (tx, rx) = crossbeam_channel::bounded(cap);
                storm_tx = Some(tx);
                let stage = storms::StormStage::new(&self, rules, sink_tx.clone())?;
                Some(spawn_stage("vigil-storms", &checkpoints, move || {
                    stage.run(rx)
                }))
            }
            None => None,
        };
        // One checkpoint waits while one is written.
        let (commit_tx, commit_rx) = crossbeam_channel::bounded(1);
        let (committed_tx, committed_rx) = crossbeam_channel::unbounded();
        let committer = sink::Committer::new(
            Arc::clone(&self.store),
            Arc::clone(&self.stats),
            self.options.retention_ms,
            Arc::clone(&checkpoints),
            committed_tx,
        );
        let committer_handle = spawn("vigil-commit", move || committer.run(commit_rx));
        let sink = sink::Sink::new(
            n + usize::from(storm_handle.is_some())
                + usize::from(tx_handle.is_some())
                + usize::from(incident_handle.is_some()),
            outputs,
            Arc::clone(&self.stats),
            commit_tx,
            committed_rx,
        );
        let sink_handle = spawn_stage("vigil-sink", &checkpoints, move || sink.run(sink_rx));

        // The workers hold the incident stage's senders: it ends after them.
        drop(incident_tx);
        let repartition = self.repartition.take();
        let router = router::Router::new(
            &self,
            work_txs,
            spare_rx,
            storm_tx,
            tx_tx,
            sink_tx,
            Arc::clone(&checkpoints),
        )
        .with_repartition(repartition);
        // A router that fails sends no more barriers: nothing more commits.
        let routed = checkpoints.stop_on_failure(|| router.run(sources));
        let mut stages: Vec<Result<(), PipelineError>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(PipelineError::Panicked("worker"))))
            .collect();
        stages.extend(
            storm_handle.map(|h| h.join().unwrap_or(Err(PipelineError::Panicked("storms")))),
        );
        stages.extend(tx_handle.map(|h| {
            h.join()
                .unwrap_or(Err(PipelineError::Panicked("transactions")))
        }));
        stages.extend(incident_handle.map(|h| {
            h.join()
                .unwrap_or(Err(PipelineError::Panicked("incidents")))
        }));
        stages.push(
            sink_handle
                .join()
                .unwrap_or(Err(PipelineError::Panicked("sink"))),
        );
        let committed = committer_handle
            .join()
            .unwrap_or(Err(PipelineError::Panicked("committer")));

        // When a stage fails the others see their channels close; report the
        // failure itself, not those echoes.
        let mut errors: Vec<PipelineError> = stages.into_iter().filter_map(Result::err).collect();
        match (routed, committed) {
            (Ok(watermark), Ok(checkpoints)) if errors.is_empty() => Ok(RunReport {
                watermark,
                checkpoints,
            }),
            (routed, committed) => {
                errors.extend(committed.err());
                errors.extend(routed.err());
                let first_real = errors
                    .iter()
                    .position(|e| !matches!(e, PipelineError::Disconnected(_)));
                Err(errors.swap_remove(first_real.unwrap_or(0)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
