//! What vigil counts. [`Stats`] is the one place where every counted event is
//! counted: stages add to it per batch, `vigil check` prints it as its
//! summary, and the metrics exporter publishes it. No counter is labelled by
//! a cache key or any other unbounded value (tables are bounded by the
//! configuration, unmapped table names by [`MAX_UNMAPPED_NAMES`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::dead_letter::Reason;
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

/// Every counter of a run.
#[derive(Debug, Default)]
pub struct Stats {
    records_by_input: Mutex<BTreeMap<String, u64>>,
    changes: [AtomicU64; 5],
    truncates: AtomicU64,
    invalidations: AtomicU64,
    fills: AtomicU64,
    duplicates: AtomicU64,
    cache_redeliveries: AtomicU64,
    skipped: [AtomicU64; Skip::ALL.len()],
    unmapped: Mutex<BTreeMap<String, u64>>,
    dead_letters: [AtomicU64; Reason::ALL.len()],
    violations: [AtomicU64; ViolationKind::ALL.len()],
    late_records: AtomicU64,
    expired_missed: AtomicU64,
    key_history_evictions: AtomicU64,
    tables: Mutex<BTreeMap<String, TableTally>>,
    pub invalidation_lag_ms: Histogram,
}

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

    pub fn add_truncate(&self) {
        bump(&self.truncates, 1);
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

    pub fn add_late_records(&self, n: u64) {
        bump(&self.late_records, n);
    }

    pub fn add_expired_missed(&self, n: u64) {
        bump(&self.expired_missed, n);
    }

    pub fn add_key_history_evictions(&self, n: u64) {
        bump(&self.key_history_evictions, n);
    }

    /// Adds per-table outcomes decided by a worker.
    pub fn add_table_tallies(&self, tallies: &BTreeMap<String, TableTally>) {
        if tallies.is_empty() {
            return;
        }
        let mut m = lock(&self.tables);
        for (table, t) in tallies {
            let e = m.entry(table.clone()).or_default();
            e.decided += t.decided;
            e.in_time += t.in_time;
        }
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

    /// A point-in-time copy of every counter, for summaries.
    pub fn snapshot(&self) -> StatsSnapshot {
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
            truncates: read(&self.truncates),
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
            tables: lock(&self.tables).clone(),
            invalidation_lag_ms: LagSummary {
                p50: self.invalidation_lag_ms.quantile_bound(0.5),
                p99: self.invalidation_lag_ms.quantile_bound(0.99),
            },
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
    pub tables: BTreeMap<String, TableTally>,
    pub invalidation_lag_ms: LagSummary,
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
