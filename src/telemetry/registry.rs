//! [`Stats`], the counts of a run: one atomic (or one small map behind a
//! lock) per counted thing. Only the events of `internal_events`
//! add to them; the summary, the exporter and readiness read them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use super::histogram::Histogram;
use super::internal_events::names;
use super::{lock, read};
use crate::dead_letter::Reason;
use crate::detect::incident;
use crate::detect::storm::{Phase, ScopeType};
use crate::events::ViolationKind;
use crate::formats::Skip;
use crate::model::Op;

/// Distinct unmapped table names listed in the summary; more are counted
/// under `"(other)"`.
pub const MAX_UNMAPPED_NAMES: usize = 100;

/// Invalidation outcome of a table's changes (the "nines").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableTally {
    /// Changes whose deadline has passed.
    pub decided: u64,
    /// Of those, invalidated within the deadline.
    pub in_time: u64,
}

/// What one worker keeps in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateSize {
    pub keys: u64,
    pub entities: u64,
    /// Approximate bytes of those keys and entities, and of the timers,
    /// the index of open keys and the retained glob invalidations.
    pub bytes: u64,
    /// The most bytes its keys and entities have taken since the start
    /// (the highest of each, added).
    pub peak_bytes: u64,
}

/// Where the consumer stands: what readiness rests on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Input partitions assigned, their state restored.
    pub assigned: u64,
    /// Of those, the partitions whose end the broker has reported.
    pub lag_known: u64,
    /// Records between the consumer and the ends of those partitions.
    pub lag: i64,
}

/// Every counter of a run.
pub struct Stats {
    pub(super) records_by_input: Mutex<BTreeMap<String, u64>>,
    pub(super) changes: [AtomicU64; 5],
    pub(super) invalidations: AtomicU64,
    pub(super) fills: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) cache_redeliveries: AtomicU64,
    pub(super) skipped: [AtomicU64; Skip::ALL.len()],
    pub(super) unmapped: Mutex<BTreeMap<String, u64>>,
    pub(super) dead_letters: [AtomicU64; Reason::ALL.len()],
    pub(super) violations: [AtomicU64; ViolationKind::ALL.len()],
    pub(super) late_records: AtomicU64,
    /// Verdicts and changes that reached a transaction's summary once final.
    pub(super) late_tx_verdicts: AtomicU64,
    /// Times a record or an output event waited for an unavailable schema
    /// registry.
    pub(super) registry_waits: AtomicU64,
    pub(super) expired_missed: AtomicU64,
    pub(super) key_history_evictions: AtomicU64,
    pub(super) state_evictions: AtomicU64,
    /// Open transactions dropped undecided over
    /// `detect.max_open_transactions`, and open transactions (a gauge).
    pub(super) transactions_dropped: AtomicU64,
    pub(super) open_transactions: AtomicU64,
    /// Storm events per scope type and phase.
    pub(super) storm_events: [[AtomicU64; Phase::ALL.len()]; ScopeType::ALL.len()],
    /// Per scope type: invalidations in the last second of its busiest
    /// scope, and storms in progress (gauges).
    pub(super) storm_rates: [AtomicU64; ScopeType::ALL.len()],
    pub(super) active_storms: [AtomicU64; ScopeType::ALL.len()],
    /// Incident events per phase, and the tables with an incident open.
    pub(super) incident_events: [AtomicU64; incident::Phase::ALL.len()],
    pub(super) open_incidents: Mutex<BTreeSet<String>>,
    pub(super) tables: Mutex<BTreeMap<String, TableTally>>,
    pub(super) invalidation_lag_ms: Histogram,
    pub(super) checkpoints: AtomicU64,
    /// Time spent per pipeline stage, in nanoseconds (summed over threads).
    pub(super) stage_ns: [AtomicU64; Stage::ALL.len()],
    /// Gauges.
    pub(super) watermark_ms: AtomicI64,
    pub(super) producer_queue: AtomicI64,
    /// Per assigned input partition, records behind its end (only the
    /// partitions whose end is known).
    pub(super) consumer_lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Input partitions assigned (their state restored).
    pub(super) assigned_partitions: AtomicU64,
    /// Keys and entities held in memory, per worker.
    pub(super) state_size: Mutex<BTreeMap<usize, StateSize>>,
    /// Handles of the histograms that go to Prometheus sample by sample
    /// (no-ops when no exporter is installed).
    pub(super) lag_seconds: metrics::Histogram,
    pub(super) batch_seconds: metrics::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records_by_input: Mutex::default(),
            changes: Default::default(),
            invalidations: AtomicU64::default(),
            fills: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            cache_redeliveries: AtomicU64::default(),
            skipped: Default::default(),
            unmapped: Mutex::default(),
            dead_letters: Default::default(),
            violations: Default::default(),
            late_records: AtomicU64::default(),
            late_tx_verdicts: AtomicU64::default(),
            registry_waits: AtomicU64::default(),
            expired_missed: AtomicU64::default(),
            key_history_evictions: AtomicU64::default(),
            state_evictions: AtomicU64::default(),
            transactions_dropped: AtomicU64::default(),
            open_transactions: AtomicU64::default(),
            storm_events: Default::default(),
            storm_rates: Default::default(),
            active_storms: Default::default(),
            incident_events: Default::default(),
            open_incidents: Mutex::default(),
            tables: Mutex::default(),
            invalidation_lag_ms: Histogram::default(),
            checkpoints: AtomicU64::default(),
            stage_ns: Default::default(),
            watermark_ms: AtomicI64::new(i64::MIN),
            producer_queue: AtomicI64::default(),
            consumer_lag: Mutex::default(),
            assigned_partitions: AtomicU64::default(),
            state_size: Mutex::default(),
            lag_seconds: metrics::histogram!(names::INVALIDATION_LAG),
            batch_seconds: metrics::histogram!(names::BATCH_SECONDS),
        }
    }
}

/// The stages of the pipeline, for the time spent in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading, decoding and mapping records (sources).
    Ingest,
    /// Watermarks and sharding (router).
    Route,
    /// State and detectors (workers).
    Detect,
    /// Writing outputs and committing state (sink).
    Commit,
    /// Storm detection (storm stage).
    Storms,
    /// Transaction checks (transaction stage).
    Transactions,
    /// Incident detection (incident stage).
    Incidents,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Ingest,
        Stage::Route,
        Stage::Detect,
        Stage::Commit,
        Stage::Storms,
        Stage::Transactions,
        Stage::Incidents,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Route => "route",
            Stage::Detect => "detect",
            Stage::Commit => "commit",
            Stage::Storms => "storms",
            Stage::Transactions => "transactions",
            Stage::Incidents => "incidents",
        }
    }
}

pub(super) fn op_index(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Read => 3,
        Op::Truncate => 4,
    }
}

impl Stats {
    pub fn registry_waits(&self) -> u64 {
        read(&self.registry_waits)
    }

    pub fn incident_events_of(&self, phase: incident::Phase) -> u64 {
        read(&self.incident_events[phase as usize])
    }

    pub fn storm_events_of(&self, scope: ScopeType, phase: Phase) -> u64 {
        read(&self.storm_events[scope as usize][phase as usize])
    }

    /// Storms in progress, over every scope type.
    pub fn active_storms_total(&self) -> u64 {
        self.active_storms.iter().map(read).sum()
    }

    pub fn watermark(&self) -> i64 {
        self.watermark_ms.load(Ordering::Relaxed)
    }

    /// How far the consumer is, for readiness.
    pub fn progress(&self) -> Progress {
        let consumer_lag = lock(&self.consumer_lag);
        Progress {
            assigned: read(&self.assigned_partitions),
            lag_known: consumer_lag.len() as u64,
            lag: consumer_lag.values().sum(),
        }
    }

    /// What the workers keep in memory, over all of them.
    pub fn state_size(&self) -> StateSize {
        lock(&self.state_size)
            .values()
            .fold(StateSize::default(), |sum, w| StateSize {
                keys: sum.keys + w.keys,
                entities: sum.entities + w.entities,
                bytes: sum.bytes + w.bytes,
                peak_bytes: sum.peak_bytes + w.peak_bytes,
            })
    }

    pub fn records_total(&self) -> u64 {
        lock(&self.records_by_input).values().sum()
    }

    pub fn violations_total(&self) -> u64 {
        self.violations.iter().map(read).sum()
    }

    pub fn violations_of(&self, kind: ViolationKind) -> u64 {
        read(&self.violations[kind as usize])
    }

    pub fn dead_letters_of(&self, reason: Reason) -> u64 {
        read(&self.dead_letters[reason as usize])
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.iter().map(read).sum()
    }

    pub fn changes_total(&self) -> u64 {
        self.changes.iter().map(read).sum()
    }
}
