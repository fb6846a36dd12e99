//! The summary of a run: a copy of the counts, as `vigil check` prints it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::registry::{Stage, Stats, TableTally, op_index};
use super::{lock, read};
use crate::dead_letter::Reason;
use crate::detect::incident;
use crate::detect::storm::{Phase, ScopeType};
use crate::events::ViolationKind;
use crate::formats::Skip;
use crate::model::Op;

impl Stats {
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
