//! [`Stats`], the counts of a run: one atomic (or one small map behind a
//! lock) per counted thing, added to by stages, read by the summary and the
//! exporter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use super::events::names;
use super::histogram::Histogram;
use super::{bump, lock, read};
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
    /// Approximate bytes of those keys and entities.
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
    /// Times a record waited for an unavailable schema registry.
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
    pub fn add_records(&self, input: &str, n: u64) {
        *lock(&self.records_by_input)
            .entry(input.to_string())
            .or_default() += n;
    }

    pub fn add_change(&self, op: Op) {
        bump(&self.changes[op_index(op)], 1);
    }

    pub fn add_cache_events(&self, invalidations: u64, fills: u64) {
        bump(&self.invalidations, invalidations);
        bump(&self.fills, fills);
    }

    pub fn add_duplicate(&self) {
        bump(&self.duplicates, 1);
    }

    pub fn add_cache_redeliveries(&self, n: u64) {
        bump(&self.cache_redeliveries, n);
    }

    pub fn add_skipped(&self, kind: Skip) {
        bump(&self.skipped[kind as usize], 1);
    }

    pub fn add_unmapped(&self, table: &str) {
        let mut m = lock(&self.unmapped);
        let name = if m.contains_key(table) || m.len() < MAX_UNMAPPED_NAMES {
            table
        } else {
            "(other)"
        };
        *m.entry(name.to_string()).or_default() += 1;
    }

    pub fn add_dead_letter(&self, reason: Reason) {
        bump(&self.dead_letters[reason as usize], 1);
    }

    pub fn add_violation(&self, kind: ViolationKind) {
        bump(&self.violations[kind as usize], 1);
    }

    /// A record waits for the schema registry, which could not be reached.
    pub fn add_registry_wait(&self) {
        bump(&self.registry_waits, 1);
    }

    pub fn registry_waits(&self) -> u64 {
        read(&self.registry_waits)
    }

    pub fn add_late_records(&self, n: u64) {
        bump(&self.late_records, n);
    }

    pub fn add_expired_missed(&self, n: u64) {
        bump(&self.expired_missed, n);
    }

    pub fn add_key_history_evictions(&self, n: u64) {
        bump(&self.key_history_evictions, n);
    }

    /// Open transactions dropped undecided, and those open now.
    pub fn add_transactions(&self, dropped: u64, open: usize) {
        bump(&self.transactions_dropped, dropped);
        self.open_transactions.store(open as u64, Ordering::Relaxed);
    }

    /// Keys and entities that left memory (the store keeps them).
    pub fn add_state_evictions(&self, n: u64) {
        bump(&self.state_evictions, n);
    }

    pub fn add_incident_event(&self, phase: incident::Phase) {
        bump(&self.incident_events[phase as usize], 1);
    }

    pub fn incident_events_of(&self, phase: incident::Phase) -> u64 {
        read(&self.incident_events[phase as usize])
    }

    /// The tables with an incident open now.
    pub fn set_open_incidents<'a>(&self, tables: impl Iterator<Item = &'a str>) {
        *lock(&self.open_incidents) = tables.map(str::to_string).collect();
    }

    pub fn add_storm_event(&self, scope: ScopeType, phase: Phase) {
        bump(&self.storm_events[scope as usize][phase as usize], 1);
    }

    /// Per scope type (in the order of [`ScopeType::ALL`]): the invalidations
    /// of its busiest scope in the last second judged, and its storms in
    /// progress.
    pub fn set_storm_gauges(&self, rates: [u64; 6], active: [usize; 6]) {
        for t in ScopeType::ALL {
            let i = t as usize;
            self.storm_rates[i].store(rates[i], Ordering::Relaxed);
            self.active_storms[i].store(active[i] as u64, Ordering::Relaxed);
        }
    }

    pub fn storm_events_of(&self, scope: ScopeType, phase: Phase) -> u64 {
        read(&self.storm_events[scope as usize][phase as usize])
    }

    /// Storms in progress, over every scope type.
    pub fn active_storms_total(&self) -> u64 {
        self.active_storms.iter().map(read).sum()
    }

    /// Adds per-table outcomes decided by a worker.
    pub fn add_table_tallies(&self, tallies: &BTreeMap<Arc<str>, TableTally>) {
        if tallies.is_empty() {
            return;
        }
        let mut m = lock(&self.tables);
        for (table, t) in tallies {
            let e = m.entry(table.to_string()).or_default();
            e.decided += t.decided;
            e.in_time += t.in_time;
        }
    }

    /// One invalidation lag (change to first covering invalidation).
    pub fn record_invalidation_lag(&self, lag_ms: u64) {
        self.invalidation_lag_ms.record(lag_ms);
        self.lag_seconds.record(lag_ms as f64 / 1000.0);
    }

    /// How long a worker took over one batch.
    pub fn record_batch(&self, elapsed: std::time::Duration) {
        self.batch_seconds.record(elapsed.as_secs_f64());
        self.add_stage_time(Stage::Detect, elapsed);
    }

    /// Time spent in a stage.
    pub fn add_stage_time(&self, stage: Stage, elapsed: std::time::Duration) {
        bump(&self.stage_ns[stage as usize], elapsed.as_nanos() as u64);
    }

    pub fn add_checkpoint(&self) {
        bump(&self.checkpoints, 1);
    }

    pub fn set_watermark(&self, ms: i64) {
        self.watermark_ms.store(ms, Ordering::Relaxed);
    }

    pub fn watermark(&self) -> i64 {
        self.watermark_ms.load(Ordering::Relaxed)
    }

    pub fn set_producer_queue(&self, records: i64) {
        self.producer_queue.store(records, Ordering::Relaxed);
    }

    /// The input partitions assigned (and their state restored), and the
    /// lag of those whose end is known; partitions left out (released
    /// ones) lose their series.
    pub fn set_partitions(&self, assigned: usize, lags: BTreeMap<(String, i32), i64>) {
        let mut consumer_lag = lock(&self.consumer_lag);
        self.assigned_partitions
            .store(assigned as u64, Ordering::Relaxed);
        *consumer_lag = lags;
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

    /// Keys and entities a worker holds in memory.
    pub fn set_state_size(&self, worker: usize, size: StateSize) {
        lock(&self.state_size).insert(worker, size);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_tallies_add_up() {
        let s = Stats::default();
        let mut tallies = BTreeMap::new();
        tallies.insert(
            Arc::from("t"),
            TableTally {
                decided: 4,
                in_time: 3,
            },
        );
        s.add_table_tallies(&tallies);
        s.add_table_tallies(&tallies);
        assert_eq!(
            s.snapshot().tables["t"],
            TableTally {
                decided: 8,
                in_time: 6
            }
        );
    }

    #[test]
    fn unmapped_names_are_bounded() {
        let s = Stats::default();
        for i in 0..(MAX_UNMAPPED_NAMES + 10) {
            s.add_unmapped(&format!("db.t{i}"));
        }
        s.add_unmapped("db.t0");
        let snap = s.snapshot();
        assert_eq!(snap.unmapped.len(), MAX_UNMAPPED_NAMES + 1);
        assert_eq!(snap.unmapped["(other)"], 10);
        assert_eq!(snap.unmapped["db.t0"], 2);
    }
}
