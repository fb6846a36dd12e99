//! The named events of telemetry, and every metric they feed. A place that
//! counts something emits an [`Event`] (`stats.emit(DeadLettered(reason))`);
//! the event adds to the run's counts in [`Stats`] and writes its log line,
//! if it has one. The summary of `vigil check` and the Prometheus exporter
//! read the same counts. [`METRICS`] lists every metric with its HELP text
//! and the events that feed it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::registry::{MAX_UNMAPPED_NAMES, Stage, StateSize, Stats, TableTally, op_index};
use super::{bump, lock};
use crate::dead_letter::Reason;
use crate::detect::incident;
use crate::detect::storm::{Phase, ScopeType};
use crate::events::ViolationKind;
use crate::formats::Skip;
use crate::model::{Name, Op};

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
    pub const LATE_TX_VERDICTS: &str = "vigil_late_transaction_verdicts_total";
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
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric: its name, kind and HELP text.
pub(super) struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Every metric vigil exports, each under a comment naming the events that
/// feed it.
pub(super) const METRICS: [Metric; 30] = [
    // Fed by RecordsRead.
    Metric {
        name: names::RECORDS_CONSUMED,
        kind: Kind::Counter,
        help: "Records read from each input topic.",
    },
    // Fed by ChangeDecoded.
    Metric {
        name: names::CHANGES,
        kind: Kind::Counter,
        help: "Database changes decoded, by operation (c, u, d, r).",
    },
    // Fed by InvalidationDecoded, FillDecoded.
    Metric {
        name: names::CACHE_EVENTS,
        kind: Kind::Counter,
        help: "Cache events decoded, by action (invalidate, fill).",
    },
    // Fed by DuplicateChange.
    Metric {
        name: names::DUPLICATES,
        kind: Kind::Counter,
        help: "Changes delivered again with the same version and row (counted, never violations).",
    },
    // Fed by RecordSkipped.
    Metric {
        name: names::SKIPPED,
        kind: Kind::Counter,
        help: "Records recognised and skipped (tombstones, heartbeats, transaction metadata), by kind.",
    },
    // Fed by UnmappedChange.
    Metric {
        name: names::UNMAPPED,
        kind: Kind::Counter,
        help: "Changes of tables that no [[tables]] entry maps to cache keys.",
    },
    // Fed by DeadLettered.
    Metric {
        name: names::DEAD_LETTERS,
        kind: Kind::Counter,
        help: "Records sent to the dead-letter queue, by reason.",
    },
    // Fed by ViolationReported.
    Metric {
        name: names::VIOLATIONS,
        kind: Kind::Counter,
        help: "Consistency violations reported, by kind.",
    },
    // Fed by LateRecords.
    Metric {
        name: names::LATE_RECORDS,
        kind: Kind::Counter,
        help: "Records that arrived behind the watermark.",
    },
    // Fed by LateTransactionVerdicts.
    Metric {
        name: names::LATE_TX_VERDICTS,
        kind: Kind::Counter,
        help: "Key-check verdicts and changes that reached a transaction's summary after it was final (messages between stages, not input records).",
    },
    // Fed by RegistryUnavailable and OutputSchemaUnregistered.
    Metric {
        name: names::REGISTRY_WAITS,
        kind: Kind::Counter,
        help: "Times a record or an output event waited for an unreachable schema registry.",
    },
    // Fed by CheckpointCommitted.
    Metric {
        name: names::CHECKPOINTS,
        kind: Kind::Counter,
        help: "Checkpoints committed (state and input offsets in one write).",
    },
    // Fed by InvalidatedInTime.
    Metric {
        name: names::INVALIDATION_LAG,
        kind: Kind::Histogram,
        help: "Time from a change's commit to the first invalidation covering it.",
    },
    // Fed by BatchProcessed.
    Metric {
        name: names::BATCH_SECONDS,
        kind: Kind::Histogram,
        help: "Time a worker took over one batch.",
    },
    // Fed by TablesDecided.
    Metric {
        name: names::DECIDED,
        kind: Kind::Counter,
        help: "Changes whose invalidation deadline the watermark has passed, per table.",
    },
    // Fed by TablesDecided.
    Metric {
        name: names::IN_TIME,
        kind: Kind::Counter,
        help: "Of the decided changes, those invalidated within the deadline, per table.",
    },
    // Fed by WatermarkAdvanced.
    Metric {
        name: names::WATERMARK,
        kind: Kind::Gauge,
        help: "The event-time watermark, as a Unix time.",
    },
    // Fed by WatermarkAdvanced.
    Metric {
        name: names::WATERMARK_DELAY,
        kind: Kind::Gauge,
        help: "How far the watermark is behind the wall clock.",
    },
    // Fed by StateMeasured.
    Metric {
        name: names::STATE_SIZE,
        kind: Kind::Gauge,
        help: "Cache keys and entities held in memory, by kind.",
    },
    // Fed by StateMeasured.
    Metric {
        name: names::STATE_MEMORY,
        kind: Kind::Gauge,
        help: "Approximate bytes of the cache keys and entities held in memory, and of their timers and index of open keys.",
    },
    // Fed by StateEvicted.
    Metric {
        name: names::STATE_EVICTIONS,
        kind: Kind::Counter,
        help: "Cache keys and entities that left memory to stay within state.cache_size (the store keeps them).",
    },
    // Fed by TransactionsTracked.
    Metric {
        name: names::TRANSACTIONS_DROPPED,
        kind: Kind::Counter,
        help: "Open transactions dropped undecided to stay within detect.max_open_transactions.",
    },
    // Fed by TransactionsTracked.
    Metric {
        name: names::OPEN_TRANSACTIONS,
        kind: Kind::Gauge,
        help: "Transactions whose verdict is pending (detect.transactions).",
    },
    // Fed by ProducerQueueMeasured.
    Metric {
        name: names::PRODUCER_QUEUE,
        kind: Kind::Gauge,
        help: "Output records waiting in the Kafka producer.",
    },
    // Fed by PartitionsMeasured.
    Metric {
        name: names::CONSUMER_LAG,
        kind: Kind::Gauge,
        help: "Records between the consumer's position and the end of each assigned input partition.",
    },
    // Fed by StormsMeasured.
    Metric {
        name: names::INVALIDATION_RATE,
        kind: Kind::Gauge,
        help: "Invalidations in the last second judged of the busiest scope, by scope type.",
    },
    // Fed by StormsMeasured.
    Metric {
        name: names::ACTIVE_STORMS,
        kind: Kind::Gauge,
        help: "Invalidation storms in progress, by scope type.",
    },
    // Fed by IncidentsOpen, TablesDecided.
    Metric {
        name: names::OPEN_INCIDENTS,
        kind: Kind::Gauge,
        help: "Consistency incidents open, by table (1 while the table has one, 0 otherwise).",
    },
    // Fed by StormReported.
    Metric {
        name: names::STORMS_STARTED,
        kind: Kind::Counter,
        help: "Invalidation storms started, by scope type.",
    },
    // Set by the exporter itself.
    Metric {
        name: names::BUILD_INFO,
        kind: Kind::Gauge,
        help: "Always 1; the version of vigil in its label.",
    },
];

/// Something vigil counts, as a value: the place where it happens says
/// `stats.emit(ChangeDecoded(op))`, and the event adds to its counts and
/// writes its log line, if it has one. The summary of `vigil check` and the
/// exporter both read those counts ([`METRICS`] lists what feeds each
/// metric). An event of the per-record path is an inlined atomic add: no
/// allocation, no lock, no formatting.
pub trait Event {
    fn emit(self, stats: &Stats);
}

impl Stats {
    /// Counts (and logs) one event.
    #[inline]
    pub fn emit(&self, event: impl Event) {
        event.emit(self);
    }
}

/// Records read from one input (a file or a topic), per batch (the
/// input's name is copied only the first time).
pub struct RecordsRead<'a> {
    pub input: &'a str,
    pub count: u64,
}

impl Event for RecordsRead<'_> {
    fn emit(self, stats: &Stats) {
        let mut by_input = lock(&stats.records_by_input);
        match by_input.get_mut(self.input) {
            Some(n) => *n += self.count,
            None => {
                by_input.insert(self.input.to_string(), self.count);
            }
        }
    }
}

/// A database change decoded and mapped (a truncate too).
pub struct ChangeDecoded(pub Op);

impl Event for ChangeDecoded {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.changes[op_index(self.0)], 1);
    }
}

/// A cache invalidation decoded.
pub struct InvalidationDecoded;

impl Event for InvalidationDecoded {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.invalidations, 1);
    }
}

/// A cache fill decoded.
pub struct FillDecoded;

impl Event for FillDecoded {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.fills, 1);
    }
}

/// A change delivered again with the same version and row.
pub struct DuplicateChange;

impl Event for DuplicateChange {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.duplicates, 1);
    }
}

/// A cache event delivered again (summary only).
pub struct CacheRedelivered;

impl Event for CacheRedelivered {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.cache_redeliveries, 1);
    }
}

/// A record recognised and skipped.
pub struct RecordSkipped(pub Skip);

impl Event for RecordSkipped {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.skipped[self.0 as usize], 1);
    }
}

/// A change of a table that no `[[tables]]` entry maps. The summary names
/// the first [`MAX_UNMAPPED_NAMES`] tables and counts the others under
/// `"(other)"`.
pub struct UnmappedChange<'a>(pub &'a str);

impl Event for UnmappedChange<'_> {
    fn emit(self, stats: &Stats) {
        let mut m = lock(&stats.unmapped);
        let name = if m.contains_key(self.0) || m.len() < MAX_UNMAPPED_NAMES {
            self.0
        } else {
            "(other)"
        };
        *m.entry(name.to_string()).or_default() += 1;
    }
}

/// A record written to the dead-letter queue.
pub struct DeadLettered(pub Reason);

impl Event for DeadLettered {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.dead_letters[self.0 as usize], 1);
    }
}

/// A violation written out.
pub struct ViolationReported(pub ViolationKind);

impl Event for ViolationReported {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.violations[self.0 as usize], 1);
    }
}

/// Records that arrived behind the watermark.
pub struct LateRecords(pub u64);

impl Event for LateRecords {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.late_records, self.0);
    }
}

/// Key-check verdicts and changes that reached a transaction's summary
/// once it was final: messages between stages, not input records.
pub struct LateTransactionVerdicts(pub u64);

impl Event for LateTransactionVerdicts {
    fn emit(self, stats: &Stats) {
        bump(&stats.late_tx_verdicts, self.0);
    }
}

/// A record waits for a schema registry that cannot be reached (logged as
/// a warning, each wait).
pub struct RegistryUnavailable<'a> {
    pub schema_id: u32,
    pub error: &'a dyn std::fmt::Display,
    pub wait: Duration,
}

impl Event for RegistryUnavailable<'_> {
    fn emit(self, stats: &Stats) {
        bump(&stats.registry_waits, 1);
        tracing::warn!(
            schema_id = self.schema_id,
            error = %self.error,
            "schema registry unavailable; the record waits {:?} and asks again",
            self.wait
        );
    }
}

/// Output events wait for a schema registry that cannot be reached to
/// register their schema (`outputs.format = "avro"`; logged as a warning,
/// each wait).
pub struct OutputSchemaUnregistered<'a> {
    pub topic: &'a str,
    pub error: &'a dyn std::fmt::Display,
    pub wait: Duration,
}

impl Event for OutputSchemaUnregistered<'_> {
    fn emit(self, stats: &Stats) {
        bump(&stats.registry_waits, 1);
        tracing::warn!(
            topic = self.topic,
            error = %self.error,
            "schema registry unavailable; the events of the topic wait {:?} to register their schema",
            self.wait
        );
    }
}

/// Missed changes whose late window ended without an invalidation
/// (summary only).
pub struct MissedExpired(pub u64);

impl Event for MissedExpired {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.expired_missed, self.0);
    }
}

/// Undecided changes forgotten because their key exceeded its history
/// limit (summary only).
pub struct KeyHistoryEvicted(pub u64);

impl Event for KeyHistoryEvicted {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.key_history_evictions, self.0);
    }
}

/// Keys and entities that left memory (the store keeps them).
pub struct StateEvicted(pub u64);

impl Event for StateEvicted {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.state_evictions, self.0);
    }
}

/// A round of the transaction stage: transactions (or summaries) dropped
/// undecided over `max`, logged as a warning saying `what` when any were,
/// and the transactions open now.
pub struct TransactionsTracked {
    pub dropped: u64,
    pub open: usize,
    pub max: usize,
    pub what: &'static str,
}

impl Event for TransactionsTracked {
    fn emit(self, stats: &Stats) {
        bump(&stats.transactions_dropped, self.dropped);
        stats
            .open_transactions
            .store(self.open as u64, Ordering::Relaxed);
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                max = self.max,
                "{}: over detect.max_open_transactions",
                self.what
            );
        }
    }
}

/// A storm event written out.
pub struct StormReported(pub ScopeType, pub Phase);

impl Event for StormReported {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.storm_events[self.0 as usize][self.1 as usize], 1);
    }
}

/// Per scope type (in the order of [`ScopeType::ALL`]): the invalidations
/// of its busiest scope in the last second judged, and its storms in
/// progress.
pub struct StormsMeasured {
    pub rates: [u64; ScopeType::ALL.len()],
    pub active: [usize; ScopeType::ALL.len()],
}

impl Event for StormsMeasured {
    fn emit(self, stats: &Stats) {
        for t in ScopeType::ALL {
            let i = t as usize;
            stats.storm_rates[i].store(self.rates[i], Ordering::Relaxed);
            stats.active_storms[i].store(self.active[i] as u64, Ordering::Relaxed);
        }
    }
}

/// An incident event written out.
pub struct IncidentReported(pub incident::Phase);

impl Event for IncidentReported {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.incident_events[self.0 as usize], 1);
    }
}

/// The tables with an incident open now.
pub struct IncidentsOpen<I>(pub I);

impl<'a, I: Iterator<Item = &'a str>> Event for IncidentsOpen<I> {
    fn emit(self, stats: &Stats) {
        *lock(&stats.open_incidents) = self.0.map(str::to_string).collect();
    }
}

/// Per-table outcomes decided by a worker.
pub struct TablesDecided<'a>(pub &'a BTreeMap<Name, TableTally>);

impl Event for TablesDecided<'_> {
    fn emit(self, stats: &Stats) {
        if self.0.is_empty() {
            return;
        }
        let mut m = lock(&stats.tables);
        for (table, t) in self.0 {
            let e = m.entry(table.to_string()).or_default();
            e.decided += t.decided;
            e.in_time += t.in_time;
        }
    }
}

/// A change invalidated in time, this many milliseconds after its commit.
pub struct InvalidatedInTime(pub u64);

impl Event for InvalidatedInTime {
    #[inline]
    fn emit(self, stats: &Stats) {
        stats.invalidation_lag_ms.record(self.0);
        stats.lag_seconds.record(self.0 as f64 / 1000.0);
    }
}

/// A worker's batch, and how long it took (also the detect stage's time).
pub struct BatchProcessed(pub Duration);

impl Event for BatchProcessed {
    #[inline]
    fn emit(self, stats: &Stats) {
        stats.batch_seconds.record(self.0.as_secs_f64());
        stats.emit(StageTimed(Stage::Detect, self.0));
    }
}

/// Time spent in a stage (summary only, per record).
pub struct StageTimed(pub Stage, pub Duration);

impl Event for StageTimed {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.stage_ns[self.0 as usize], self.1.as_nanos() as u64);
    }
}

/// A checkpoint committed.
pub struct CheckpointCommitted;

impl Event for CheckpointCommitted {
    #[inline]
    fn emit(self, stats: &Stats) {
        bump(&stats.checkpoints, 1);
    }
}

/// The watermark moved to `ms`.
pub struct WatermarkAdvanced(pub i64);

impl Event for WatermarkAdvanced {
    #[inline]
    fn emit(self, stats: &Stats) {
        stats.watermark_ms.store(self.0, Ordering::Relaxed);
    }
}

/// Output records waiting in the Kafka producer.
pub struct ProducerQueueMeasured(pub i64);

impl Event for ProducerQueueMeasured {
    #[inline]
    fn emit(self, stats: &Stats) {
        stats.producer_queue.store(self.0, Ordering::Relaxed);
    }
}

/// The input partitions assigned (and their state restored), and the lag
/// of those whose end is known; partitions left out (released ones) lose
/// their series.
pub struct PartitionsMeasured {
    pub assigned: usize,
    pub lags: BTreeMap<(String, i32), i64>,
}

impl Event for PartitionsMeasured {
    fn emit(self, stats: &Stats) {
        let mut consumer_lag = lock(&stats.consumer_lag);
        stats
            .assigned_partitions
            .store(self.assigned as u64, Ordering::Relaxed);
        *consumer_lag = self.lags;
    }
}

/// Keys and entities a worker holds in memory.
pub struct StateMeasured {
    pub worker: usize,
    pub size: StateSize,
}

impl Event for StateMeasured {
    fn emit(self, stats: &Stats) {
        lock(&stats.state_size).insert(self.worker, self.size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_described_once_and_counters_end_in_total() {
        let described: std::collections::BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(described.len(), METRICS.len());
        for m in METRICS {
            assert!(m.help.ends_with('.'), "{}", m.name);
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == Kind::Counter,
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn events_count_and_the_summary_reads_them() {
        let s = Stats::default();
        s.emit(ChangeDecoded(Op::Update));
        s.emit(ChangeDecoded(Op::Update));
        s.emit(ChangeDecoded(Op::Truncate));
        s.emit(InvalidationDecoded);
        s.emit(DeadLettered(Reason::ALL[0]));
        s.emit(ViolationReported(ViolationKind::MissingInvalidation));
        s.emit(RecordsRead {
            input: "cdc",
            count: 5,
        });
        s.emit(InvalidatedInTime(7));
        s.emit(TransactionsTracked {
            dropped: 2,
            open: 1,
            max: 1,
            what: "open transactions dropped undecided",
        });
        let summary = s.snapshot();
        assert_eq!(summary.changes, 2);
        assert_eq!(summary.changes_by_op, BTreeMap::from([("u", 2)]));
        assert_eq!(summary.truncates, 1);
        assert_eq!((summary.invalidations, summary.fills), (1, 0));
        assert_eq!(
            summary.dead_letters,
            BTreeMap::from([(Reason::ALL[0].as_str(), 1)])
        );
        assert_eq!(summary.violations["missing_invalidation"], 1);
        assert_eq!(
            summary.records_read,
            BTreeMap::from([("cdc".to_string(), 5)])
        );
        assert_eq!(summary.invalidation_lag_ms.p50, Some(10));
        assert_eq!(summary.transactions_dropped, 2);
        assert_eq!(s.violations_total(), 1);
        assert_eq!(s.records_total(), 5);
    }

    #[test]
    fn table_tallies_add_up() {
        let s = Stats::default();
        let mut tallies = BTreeMap::new();
        tallies.insert(
            Name::new("t"),
            TableTally {
                decided: 4,
                in_time: 3,
            },
        );
        s.emit(TablesDecided(&tallies));
        s.emit(TablesDecided(&tallies));
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
            s.emit(UnmappedChange(&format!("db.t{i}")));
        }
        s.emit(UnmappedChange("db.t0"));
        let snap = s.snapshot();
        assert_eq!(snap.unmapped.len(), MAX_UNMAPPED_NAMES + 1);
        assert_eq!(snap.unmapped["(other)"], 10);
        assert_eq!(snap.unmapped["db.t0"], 2);
    }
}
