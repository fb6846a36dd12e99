//! What vigil counts. [`Stats`] is the one place where every counted event is
//! counted: stages add to it per batch, `vigil check` prints it as its
//! summary, and [`publish`] hands it to the Prometheus exporter (metric
//! names in [`names`]). No metric is labelled by a cache key or any other
//! unbounded value: tables are bounded by the configuration, topics and
//! partitions by the subscription, unmapped table names by
//! [`MAX_UNMAPPED_NAMES`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use serde::Serialize;

use crate::dead_letter::Reason;
use crate::detect::incident;
use crate::detect::storm::{Phase, ScopeType};
use crate::events::ViolationKind;
use crate::formats::Skip;
use crate::model::Op;

/// Distinct unmapped table names listed in the summary; more are counted
/// under `"(other)"`.
pub const MAX_UNMAPPED_NAMES: usize = 100;

/// Upper bounds (ms) of the invalidation-lag histogram buckets.
pub const LAG_BUCKETS_MS: [u64; 16] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    3_600_000,
];

fn bump(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Invalidation outcome of a table's changes (the "nines").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableTally {
    /// Changes whose deadline has passed.
    pub decided: u64,
    /// Of those, invalidated within the deadline.
    pub in_time: u64,
}

/// A histogram with fixed buckets ([`LAG_BUCKETS_MS`] plus overflow).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, value: u64) {
        let i = LAG_BUCKETS_MS.partition_point(|&b| b < value);
        bump(&self.buckets[i], 1);
        bump(&self.sum, value);
    }

    /// Cumulative counts per bucket (the last one is +Inf), and the sum.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += read(b);
                total
            })
            .collect();
        (cumulative, read(&self.sum))
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), or `None`
    /// when empty; `u64::MAX` stands for the overflow bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let (cumulative, _) = self.snapshot();
        let total = *cumulative.last()?;
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let i = cumulative.iter().position(|&c| c >= rank)?;
        Some(LAG_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX))
    }
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
    records_by_input: Mutex<BTreeMap<String, u64>>,
    changes: [AtomicU64; 5],
    invalidations: AtomicU64,
    fills: AtomicU64,
    duplicates: AtomicU64,
    cache_redeliveries: AtomicU64,
    skipped: [AtomicU64; Skip::ALL.len()],
    unmapped: Mutex<BTreeMap<String, u64>>,
    dead_letters: [AtomicU64; Reason::ALL.len()],
    violations: [AtomicU64; ViolationKind::ALL.len()],
    late_records: AtomicU64,
    /// Times a record waited for an unavailable schema registry.
    registry_waits: AtomicU64,
    expired_missed: AtomicU64,
    key_history_evictions: AtomicU64,
    state_evictions: AtomicU64,
    /// Open transactions dropped undecided over
    /// `detect.max_open_transactions`, and open transactions (a gauge).
    transactions_dropped: AtomicU64,
    open_transactions: AtomicU64,
    /// Storm events per scope type and phase.
    storm_events: [[AtomicU64; Phase::ALL.len()]; ScopeType::ALL.len()],
    /// Per scope type: invalidations in the last second of its busiest
    /// scope, and storms in progress (gauges).
    storm_rates: [AtomicU64; ScopeType::ALL.len()],
    active_storms: [AtomicU64; ScopeType::ALL.len()],
    /// Incident events per phase, and the tables with an incident open.
    incident_events: [AtomicU64; incident::Phase::ALL.len()],
    open_incidents: Mutex<BTreeSet<String>>,
    tables: Mutex<BTreeMap<String, TableTally>>,
    invalidation_lag_ms: Histogram,
    checkpoints: AtomicU64,
    /// Time spent per pipeline stage, in nanoseconds (summed over threads).
    stage_ns: [AtomicU64; Stage::ALL.len()],
    /// Gauges.
    watermark_ms: AtomicI64,
    producer_queue: AtomicI64,
    /// Per assigned input partition, records behind its end (only the
    /// partitions whose end is known).
    consumer_lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Input partitions assigned (their state restored).
    assigned_partitions: AtomicU64,
    /// Keys and entities held in memory, per worker.
    state_size: Mutex<BTreeMap<usize, StateSize>>,
    /// Handles of the histograms that go to Prometheus sample by sample
    /// (no-ops when no exporter is installed).
    lag_seconds: metrics::Histogram,
    batch_seconds: metrics::Histogram,
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

/// Metric names: `vigil_` prefix, base units, `_total` on counters.
pub mod names {
    pub const RECORDS_CONSUMED: &str = "vigil_records_consumed_total";
    pub const CHANGES: &str = "vigil_changes_total";
    pub const CACHE_EVENTS: &str = "vigil_cache_events_total";
    pub const DUPLICATES: &str = "vigil_duplicate_changes_total";
    pub const SKIPPED: &str = "vigil_records_skipped_total";
    pub const UNMAPPED: &str = "vigil_unmapped_changes_total";
    pub const DEAD_LETTERS: &str = "vigil_dead_letters_total";
    pub const VIOLATIONS: &str = "vigil_violations_total";
    pub const LATE_RECORDS: &str = "vigil_late_records_total";
    pub const REGISTRY_WAITS: &str = "vigil_schema_registry_waits_total";
    pub const CHECKPOINTS: &str = "vigil_checkpoints_total";
    pub const INVALIDATION_LAG: &str = "vigil_invalidation_lag_seconds";
    pub const BATCH_SECONDS: &str = "vigil_batch_processing_seconds";
    pub const DECIDED: &str = "vigil_changes_decided_total";
    pub const IN_TIME: &str = "vigil_changes_invalidated_in_time_total";
    pub const WATERMARK: &str = "vigil_watermark_timestamp_seconds";
    pub const WATERMARK_DELAY: &str = "vigil_watermark_delay_seconds";
    pub const STATE_SIZE: &str = "vigil_state_size_keys";
    pub const STATE_MEMORY: &str = "vigil_state_memory_bytes";
    pub const STATE_EVICTIONS: &str = "vigil_state_evictions_total";
    pub const PRODUCER_QUEUE: &str = "vigil_producer_queue_records";
    pub const CONSUMER_LAG: &str = "vigil_consumer_lag_records";
    pub const INVALIDATION_RATE: &str = "vigil_invalidations_per_second";
    pub const ACTIVE_STORMS: &str = "vigil_active_storms";
    pub const OPEN_INCIDENTS: &str = "vigil_open_incidents";
    pub const STORMS_STARTED: &str = "vigil_storms_started_total";
    pub const TRANSACTIONS_DROPPED: &str = "vigil_transactions_dropped_total";
    pub const OPEN_TRANSACTIONS: &str = "vigil_open_transactions";
    pub const BUILD_INFO: &str = "vigil_build_info";
}

/// The kind of a metric, for its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its kind and its HELP text.
const DESCRIPTIONS: [(&str, Kind, &str); 29] = [
    (
        names::RECORDS_CONSUMED,
        Kind::Counter,
        "Records read from each input topic.",
    ),
    (
        names::CHANGES,
        Kind::Counter,
        "Database changes decoded, by operation (c, u, d, r).",
    ),
    (
        names::CACHE_EVENTS,
        Kind::Counter,
        "Cache events decoded, by action (invalidate, fill).",
    ),
    (
        names::DUPLICATES,
        Kind::Counter,
        "Changes delivered again with the same version and row (counted, never violations).",
    ),
    (
        names::SKIPPED,
        Kind::Counter,
        "Records recognised and skipped (tombstones, heartbeats, transaction metadata), by kind.",
    ),
    (
        names::UNMAPPED,
        Kind::Counter,
        "Changes of tables that no [[tables]] entry maps to cache keys.",
    ),
    (
        names::DEAD_LETTERS,
        Kind::Counter,
        "Records sent to the dead-letter queue, by reason.",
    ),
    (
        names::VIOLATIONS,
        Kind::Counter,
        "Consistency violations reported, by kind.",
    ),
    (
        names::LATE_RECORDS,
        Kind::Counter,
        "Records that arrived behind the watermark.",
    ),
    (
        names::REGISTRY_WAITS,
        Kind::Counter,
        "Times a record waited for an unreachable schema registry.",
    ),
    (
        names::CHECKPOINTS,
        Kind::Counter,
        "Checkpoints committed (state and input offsets in one write).",
    ),
    (
        names::INVALIDATION_LAG,
        Kind::Histogram,
        "Time from a change's commit to the first invalidation covering it.",
    ),
    (
        names::BATCH_SECONDS,
        Kind::Histogram,
        "Time a worker took over one batch.",
    ),
    (
        names::DECIDED,
        Kind::Counter,
        "Changes whose invalidation deadline the watermark has passed, per table.",
    ),
    (
        names::IN_TIME,
        Kind::Counter,
        "Of the decided changes, those invalidated within the deadline, per table.",
    ),
    (
        names::WATERMARK,
        Kind::Gauge,
        "The event-time watermark, as a Unix time.",
    ),
    (
        names::WATERMARK_DELAY,
        Kind::Gauge,
        "How far the watermark is behind the wall clock.",
    ),
    (
        names::STATE_SIZE,
        Kind::Gauge,
        "Cache keys and entities held in memory, by kind.",
    ),
    (
        names::STATE_MEMORY,
        Kind::Gauge,
        "Approximate bytes of the cache keys and entities held in memory.",
    ),
    (
        names::STATE_EVICTIONS,
        Kind::Counter,
        "Cache keys and entities that left memory to stay within state.cache_size (the store keeps them).",
    ),
    (
        names::TRANSACTIONS_DROPPED,
        Kind::Counter,
        "Open transactions dropped undecided to stay within detect.max_open_transactions.",
    ),
    (
        names::OPEN_TRANSACTIONS,
        Kind::Gauge,
        "Transactions whose verdict is pending (detect.transactions).",
    ),
    (
        names::PRODUCER_QUEUE,
        Kind::Gauge,
        "Output records waiting in the Kafka producer.",
    ),
    (
        names::CONSUMER_LAG,
        Kind::Gauge,
        "Records between the consumer's position and the end of each assigned input partition.",
    ),
    (
        names::INVALIDATION_RATE,
        Kind::Gauge,
        "Invalidations in the last second judged of the busiest scope, by scope type.",
    ),
    (
        names::ACTIVE_STORMS,
        Kind::Gauge,
        "Invalidation storms in progress, by scope type.",
    ),
    (
        names::OPEN_INCIDENTS,
        Kind::Gauge,
        "Consistency incidents open, by table (1 while the table has one, 0 otherwise).",
    ),
    (
        names::STORMS_STARTED,
        Kind::Counter,
        "Invalidation storms started, by scope type.",
    ),
    (
        names::BUILD_INFO,
        Kind::Gauge,
        "Always 1; the version of vigil in its label.",
    ),
];

/// How long a gauge that is no longer set keeps its series: gauges are set
/// every second, so one left alone belongs to something gone (a released
/// partition).
const GAUGE_IDLE: Duration = Duration::from_secs(10);

fn op_index(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Read => 3,
        Op::Truncate => 4,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// A point-in-time copy of every counter, for summaries.
    pub fn snapshot(&self) -> StatsSnapshot {
        // Taken first: the lock must not be held while the fields below
        // take it again.
        let records = self.records_total();
        let nonzero = |pairs: Vec<(&'static str, u64)>| -> BTreeMap<&'static str, u64> {
            pairs.into_iter().filter(|(_, n)| *n > 0).collect()
        };
        let ops = [Op::Create, Op::Update, Op::Delete, Op::Read];
        StatsSnapshot {
            records_read: lock(&self.records_by_input).clone(),
            changes: ops
                .iter()
                .map(|op| read(&self.changes[op_index(*op)]))
                .sum(),
            changes_by_op: nonzero(
                ops.iter()
                    .map(|op| (op.code(), read(&self.changes[op_index(*op)])))
                    .collect(),
            ),
            truncates: read(&self.changes[op_index(Op::Truncate)]),
            cache_events: read(&self.invalidations) + read(&self.fills),
            invalidations: read(&self.invalidations),
            fills: read(&self.fills),
            duplicates: read(&self.duplicates),
            cache_redeliveries: read(&self.cache_redeliveries),
            skipped: nonzero(
                Skip::ALL
                    .iter()
                    .map(|s| (s.as_str(), read(&self.skipped[*s as usize])))
                    .collect(),
            ),
            unmapped: lock(&self.unmapped).clone(),
            violations: ViolationKind::ALL
                .iter()
                .map(|k| (k.as_str(), read(&self.violations[*k as usize])))
                .collect(),
            dead_letters: nonzero(
                Reason::ALL
                    .iter()
                    .map(|r| (r.as_str(), read(&self.dead_letters[*r as usize])))
                    .collect(),
            ),
            late_records: read(&self.late_records),
            expired_missed: read(&self.expired_missed),
            key_history_evictions: read(&self.key_history_evictions),
            state_evictions: read(&self.state_evictions),
            transactions_dropped: read(&self.transactions_dropped),
            state_peak_bytes: self.state_size().peak_bytes,
            storms: ScopeType::ALL
                .iter()
                .filter_map(|t| {
                    let phases = nonzero(
                        Phase::ALL
                            .iter()
                            .map(|p| (p.as_str(), self.storm_events_of(*t, *p)))
                            .collect(),
                    );
                    (!phases.is_empty()).then_some((t.as_str(), phases))
                })
                .collect(),
            incidents: nonzero(
                incident::Phase::ALL
                    .iter()
                    .map(|p| (p.as_str(), self.incident_events_of(*p)))
                    .collect(),
            ),
            tables: lock(&self.tables).clone(),
            invalidation_lag_ms: LagSummary {
                p50: self.invalidation_lag_ms.quantile_bound(0.5),
                p99: self.invalidation_lag_ms.quantile_bound(0.99),
            },
            stage_ns_per_record: Stage::ALL
                .iter()
                .map(|s| {
                    (
                        s.as_str(),
                        read(&self.stage_ns[*s as usize]) / records.max(1),
                    )
                })
                .collect(),
        }
    }
}

/// Quantiles of the invalidation lag, as histogram bucket bounds (ms).
#[derive(Debug, Clone, Serialize)]
pub struct LagSummary {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
}

/// A copy of [`Stats`], serializable as the summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub records_read: BTreeMap<String, u64>,
    /// Time per record spent in each stage (threads run in parallel, so
    /// these add up to CPU time, not to elapsed time).
    pub stage_ns_per_record: BTreeMap<&'static str, u64>,
    pub changes: u64,
    pub changes_by_op: BTreeMap<&'static str, u64>,
    pub truncates: u64,
    pub cache_events: u64,
    pub invalidations: u64,
    pub fills: u64,
    pub duplicates: u64,
    pub cache_redeliveries: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub unmapped: BTreeMap<String, u64>,
    pub violations: BTreeMap<&'static str, u64>,
    pub dead_letters: BTreeMap<&'static str, u64>,
    pub late_records: u64,
    pub expired_missed: u64,
    pub key_history_evictions: u64,
    /// Keys and entities that left memory to keep within
    /// `state.cache_size` (read back from the store when needed again).
    pub state_evictions: u64,
    /// Open transactions dropped undecided over
    /// `detect.max_open_transactions`.
    pub transactions_dropped: u64,
    /// The most memory the workers' keys and entities took, by the
    /// estimate that `state.cache_size` bounds (the highest of each kind
    /// in each worker, added: an upper bound).
    pub state_peak_bytes: u64,
    /// Storm events by scope type and phase.
    pub storms: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Incident events by phase.
    pub incidents: BTreeMap<&'static str, u64>,
    pub tables: BTreeMap<String, TableTally>,
    pub invalidation_lag_ms: LagSummary,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Prometheus recorder: {0}")]
pub struct RecorderError(#[from] BuildError);

/// Installs the Prometheus recorder that `/metrics` renders, and describes
/// every metric. Call it before creating [`Stats`], whose histograms
/// register with it.
pub fn install_recorder() -> Result<PrometheusHandle, RecorderError> {
    let lag_buckets: Vec<f64> = LAG_BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect();
    let handle = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .set_buckets_for_metric(Matcher::Full(names::INVALIDATION_LAG.into()), &lag_buckets)?
        .set_buckets_for_metric(
            Matcher::Full(names::BATCH_SECONDS.into()),
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Gives every metric its HELP text.
fn describe() {
    for (name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Publishes the counters and gauges of `stats` to the installed recorder
/// (a no-op without one). Called every second by `vigil run`.
pub fn publish(stats: &Stats, now_ms: i64) {
    use metrics::{counter, gauge};
    let s = stats.snapshot();
    for (topic, n) in &s.records_read {
        counter!(names::RECORDS_CONSUMED, "topic" => topic.clone()).absolute(*n);
    }
    for (op, n) in &s.changes_by_op {
        counter!(names::CHANGES, "op" => *op).absolute(*n);
    }
    counter!(names::CACHE_EVENTS, "action" => "invalidate").absolute(s.invalidations);
    counter!(names::CACHE_EVENTS, "action" => "fill").absolute(s.fills);
    counter!(names::DUPLICATES).absolute(s.duplicates);
    for (kind, n) in &s.skipped {
        counter!(names::SKIPPED, "kind" => *kind).absolute(*n);
    }
    counter!(names::UNMAPPED).absolute(s.unmapped.values().sum());
    for reason in Reason::ALL {
        counter!(names::DEAD_LETTERS, "reason" => reason.as_str())
            .absolute(stats.dead_letters_of(reason));
    }
    for kind in ViolationKind::ALL {
        counter!(names::VIOLATIONS, "kind" => kind.as_str()).absolute(stats.violations_of(kind));
    }
    counter!(names::LATE_RECORDS).absolute(s.late_records);
    counter!(names::REGISTRY_WAITS).absolute(stats.registry_waits());
    for t in ScopeType::ALL {
        let i = t as usize;
        let scope_type = t.as_str();
        counter!(names::STORMS_STARTED, "scope_type" => scope_type)
            .absolute(stats.storm_events_of(t, Phase::Started));
        gauge!(names::INVALIDATION_RATE, "scope_type" => scope_type)
            .set(read(&stats.storm_rates[i]) as f64);
        gauge!(names::ACTIVE_STORMS, "scope_type" => scope_type)
            .set(read(&stats.active_storms[i]) as f64);
    }
    counter!(names::CHECKPOINTS).absolute(read(&stats.checkpoints));
    let open = lock(&stats.open_incidents).clone();
    for (table, tally) in &s.tables {
        counter!(names::DECIDED, "table" => table.clone()).absolute(tally.decided);
        counter!(names::IN_TIME, "table" => table.clone()).absolute(tally.in_time);
    }
    // Every table decided on has its series (0 without an incident), so
    // that an alert sees it fall back to 0.
    for table in s.tables.keys().chain(&open) {
        gauge!(names::OPEN_INCIDENTS, "table" => table.clone())
            .set(f64::from(u8::from(open.contains(table))));
    }
    let wm = stats.watermark();
    if wm > i64::MIN && wm < i64::MAX {
        gauge!(names::WATERMARK).set(wm as f64 / 1000.0);
        gauge!(names::WATERMARK_DELAY).set((now_ms - wm) as f64 / 1000.0);
    }
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let size = stats.state_size();
    gauge!(names::STATE_SIZE, "kind" => "cache_key").set(size.keys as f64);
    gauge!(names::STATE_SIZE, "kind" => "entity").set(size.entities as f64);
    gauge!(names::STATE_MEMORY).set(size.bytes as f64);
    counter!(names::STATE_EVICTIONS).absolute(read(&stats.state_evictions));
    counter!(names::TRANSACTIONS_DROPPED).absolute(s.transactions_dropped);
    gauge!(names::OPEN_TRANSACTIONS).set(read(&stats.open_transactions) as f64);
    gauge!(names::PRODUCER_QUEUE).set(stats.producer_queue.load(Ordering::Relaxed) as f64);
    for ((topic, partition), lag) in lock(&stats.consumer_lag).iter() {
        gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
            .set(*lag as f64);
    }
}

/// The peak resident memory of this process in bytes (Linux: `VmHWM` of
/// `/proc/self/status`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of this process, user plus system, over all its threads (those
/// that have ended too), in seconds (`getrusage(RUSAGE_SELF)`), if known.
pub fn process_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: on success getrusage has written the whole struct.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// CPU time of the calling thread, user plus system, in seconds
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`), if known.
pub fn thread_cpu_seconds() -> Option<f64> {
    let mut time = std::mem::MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: on success clock_gettime has written the whole struct.
    let time = unsafe {
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, time.as_mut_ptr()) != 0 {
            return None;
        }
        time.assume_init()
    };
    Some(time.tv_sec as f64 + time.tv_nsec as f64 / 1e9)
}

/// Starts logging to stderr in the chosen format. `RUST_LOG` overrides
/// `level`.
pub fn init_logging(format: crate::cli::LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        crate::cli::LogFormat::Text => builder.try_init(),
        crate::cli::LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let h = Histogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for v in [0, 3, 3, 7, 40] {
            h.record(v);
        }
        h.record(10_000_000);
        assert_eq!(h.quantile_bound(0.5), Some(5));
        assert_eq!(h.quantile_bound(1.0), Some(u64::MAX));
        let (cumulative, sum) = h.snapshot();
        assert_eq!(*cumulative.last().unwrap(), 6);
        assert_eq!(sum, 10_000_053);
    }

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
    fn metrics_are_described_once_and_counters_end_in_total() {
        let described: std::collections::BTreeSet<&str> =
            DESCRIPTIONS.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(described.len(), DESCRIPTIONS.len());
        for (name, kind, help) in DESCRIPTIONS {
            assert!(help.ends_with('.'), "{name}");
            assert_eq!(name.ends_with("_total"), kind == Kind::Counter, "{name}");
        }
    }

    #[test]
    fn cpu_time_is_known_and_grows() {
        let (process, thread) = (process_cpu_seconds(), thread_cpu_seconds());
        let spin = (0..std::hint::black_box(2_000_000u64))
            .fold(0u64, |a, i| a.wrapping_mul(31).wrapping_add(i));
        std::hint::black_box(spin);
        assert!(process_cpu_seconds().unwrap() >= process.unwrap());
        assert!(thread_cpu_seconds().unwrap() > thread.unwrap());
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
