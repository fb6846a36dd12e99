//! Every metric vigil exports: its name and its HELP text.

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
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its kind and its HELP text.
pub(super) const DESCRIPTIONS: [(&str, Kind, &str); 29] = [
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
