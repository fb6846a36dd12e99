//! Summaries by transaction: a transaction whose changes missed their
//! invalidations is reported once, as `transaction_not_invalidated`, with
//! how many of its changes (one per change and key) were invalidated in
//! time, how many were not, and of those how many late. Pure: the key
//! checks' verdicts of every worker, the due times of the changes and the
//! time up to which each worker has decided everything in, summaries out.
//!
//! A transaction's summary is final once every worker has decided
//! everything due up to the latest due time of its changes plus the late
//! window: then each of its changes is decided, late ones included. So the
//! summary depends neither on the number of workers nor on the order their
//! verdicts arrive in. Verdicts or changes of a transaction already final
//! are late, and counted only; at most `max_open` transactions are summed
//! at a time, beyond it the one final first is dropped and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{IdMap, IdSet};
use crate::events::{KeyCounts, TxDetail, Violation, ViolationKind};
use crate::model::{Millis, Provenance};

/// The knobs of the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryRules {
    /// How long after its deadline a missed change may still be invalidated
    /// (late).
    pub late_window_ms: i64,
    /// Transactions summed at most at a time.
    pub max_open: usize,
}

/// What is known of a transaction's changes: by a worker, or by all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxSum {
    /// The latest due time (commit time plus deadline) of its changes.
    pub due: Millis,
    /// The tables of its changes, sorted, each once.
    pub tables: Vec<Arc<str>>,
    pub keys: KeyCounts,
    /// The earliest missed change's commit time and record (of changes as
    /// early, the first in the input).
    pub missed: Option<(Millis, Provenance)>,
}

impl TxSum {
    fn table(&mut self, table: &Arc<str>) {
        if let Err(at) = self.tables.binary_search(table) {
            self.tables.insert(at, Arc::clone(table));
        }
    }

    fn missed(&mut self, ts: Millis, evidence: &Provenance) {
        let earlier = self
            .missed
            .as_ref()
            .is_none_or(|(t, e)| (ts, place(evidence)) < (*t, place(e)));
        if earlier {
            self.missed = Some((ts, evidence.clone()));
        }
    }

    fn merge(&mut self, other: TxSum) {
        self.due = self.due.max(other.due);
        for table in &other.tables {
            self.table(table);
        }
        self.keys.add(other.keys);
        if let Some((ts, evidence)) = &other.missed {
            self.missed(*ts, evidence);
        }
    }
}

/// Where a record is in the input, to order records of the same time.
fn place(p: &Provenance) -> (&str, i32, i64) {
    (&p.topic, p.partition, p.offset)
}

/// A worker's key verdicts by transaction, since they were last sent.
#[derive(Debug, Default)]
pub struct TxTallies(BTreeMap<Arc<str>, TxSum>);

impl TxTallies {
    fn of(&mut self, tx: &Arc<str>) -> &mut TxSum {
        self.0.entry(Arc::clone(tx)).or_insert_with(|| TxSum {
            due: Millis::MIN,
            ..TxSum::default()
        })
    }

    /// A change of transaction `tx` invalidated in time.
    pub fn in_time(&mut self, tx: &Arc<str>, table: &Arc<str>, due: Millis) {
        let sum = self.of(tx);
        sum.due = sum.due.max(due);
        sum.table(table);
        sum.keys.in_time += 1;
    }

    /// A key check's violation: counted when it is a missing or late
    /// invalidation of a change in a transaction.
    pub fn violation(&mut self, v: &Violation) {
        let (Some(tx), Some(ts), Some(deadline)) =
            (&v.transaction_id, v.change_ts_ms, v.deadline_ms)
        else {
            return;
        };
        let late = match v.kind {
            ViolationKind::MissingInvalidation => false,
            ViolationKind::LateInvalidation => true,
            _ => return,
        };
        let sum = self.of(tx);
        sum.due = sum.due.max(ts.saturating_add(deadline));
        sum.table(&v.table);
        if late {
            sum.keys.late += 1;
        } else {
            sum.keys.missing += 1;
            if let Some(evidence) = v.evidence.first() {
                sum.missed(ts, evidence);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self) -> Vec<(Arc<str>, TxSum)> {
        std::mem::take(&mut self.0).into_iter().collect()
    }
}

/// What the summaries decided since asked last.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SummaryDecisions {
    pub violations: Vec<Violation>,
    /// Transactions dropped unsummarised over `max_open`.
    pub dropped: u64,
    /// Verdicts or changes of a transaction already final.
    pub late: u64,
}

/// The transactions being summed.
#[derive(Debug)]
pub struct TxSummaries {
    txs: IdMap<TxSum>,
    /// (final time, id) of every transaction summed.
    by_final: BTreeSet<(Millis, Arc<str>)>,
    /// Per worker, the time up to which it has decided everything due.
    decided: Vec<Millis>,
    /// Ids whose sum changed (or went) since [`TxSummaries::take_changed`].
    changed: IdSet,
}

impl TxSummaries {
    /// The summaries of `workers` workers, over the sums of a checkpoint.
    pub fn new(
        workers: usize,
        sums: impl IntoIterator<Item = (Arc<str>, TxSum)>,
        rules: &SummaryRules,
    ) -> Self {
        let mut s = TxSummaries {
            txs: IdMap::default(),
            by_final: BTreeSet::new(),
            decided: vec![Millis::MIN; workers],
            changed: IdSet::default(),
        };
        for (id, sum) in sums {
            s.by_final.insert((final_at(&sum, rules), Arc::clone(&id)));
            s.txs.insert(id, sum);
        }
        s
    }

    /// Transactions being summed.
    pub fn open(&self) -> usize {
        self.txs.len()
    }

    /// The time up to which every worker has decided everything due.
    fn until(&self) -> Millis {
        self.decided.iter().copied().min().unwrap_or(Millis::MIN)
    }

    /// A change of `tx` of `table`, due at `due`, as the router saw it.
    pub fn on_change(
        &mut self,
        tx: &Arc<str>,
        table: &Arc<str>,
        due: Millis,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
    ) {
        let mut sum = TxSum {
            due,
            ..TxSum::default()
        };
        sum.table(table);
        self.add(tx, sum, rules, out);
    }

    /// A worker's verdicts, and the time up to which it has now decided
    /// everything due; then decides the summaries that became final.
    pub fn on_verdicts(
        &mut self,
        worker: usize,
        sums: Vec<(Arc<str>, TxSum)>,
        decided_until: Millis,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
    ) {
        for (tx, sum) in sums {
            self.add(&tx, sum, rules, out);
        }
        if let Some(d) = self.decided.get_mut(worker) {
            *d = (*d).max(decided_until);
        }
        self.advance(out);
    }

    fn add(&mut self, tx: &Arc<str>, sum: TxSum, rules: &SummaryRules, out: &mut SummaryDecisions) {
        let Some(known) = self.txs.get_mut(tx) else {
            if final_at(&sum, rules) <= self.until() {
                out.late += 1;
                return;
            }
            if self.txs.len() >= rules.max_open
                && let Some((_, first)) = self.by_final.pop_first()
            {
                self.txs.remove(&first);
                self.changed.insert(first);
                out.dropped += 1;
            }
            self.by_final
                .insert((final_at(&sum, rules), Arc::clone(tx)));
            self.txs.insert(Arc::clone(tx), sum);
            self.changed.insert(Arc::clone(tx));
            return;
        };
        let before = final_at(known, rules);
        known.merge(sum);
        let after = final_at(known, rules);
        if before != after {
            self.by_final.remove(&(before, Arc::clone(tx)));
            self.by_final.insert((after, Arc::clone(tx)));
        }
        self.changed.insert(Arc::clone(tx));
    }

    /// Decides the summaries final by the time every worker has decided.
    fn advance(&mut self, out: &mut SummaryDecisions) {
        let until = self.until();
        while let Some((at, id)) = self.by_final.first().cloned() {
            if at > until {
                break;
            }
            self.by_final.pop_first();
            if let Some(sum) = self.txs.remove(&id) {
                judge(&id, &sum, at, out);
            }
            self.changed.insert(id);
        }
    }

    /// The sums changed since last asked, `None` for those gone.
    pub fn take_changed(&mut self) -> Vec<(Arc<str>, Option<&TxSum>)> {
        super::take_changed(&mut self.changed, &self.txs)
    }
}

/// When a transaction's summary is final: its latest due plus the late
/// window.
pub fn final_at(sum: &TxSum, rules: &SummaryRules) -> Millis {
    sum.due.saturating_add(rules.late_window_ms)
}

/// The summary of a transaction final at `at`, if any of its changes
/// missed its deadline.
fn judge(id: &Arc<str>, sum: &TxSum, at: Millis, out: &mut SummaryDecisions) {
    let Some((ts, evidence)) = sum.missed.as_ref().filter(|_| sum.keys.missing > 0) else {
        return;
    };
    let table = sum
        .tables
        .first()
        .map_or_else(|| Arc::from("(none)"), Arc::clone);
    out.violations.push(Violation {
        change_ts_ms: Some(*ts),
        transaction_id: Some(Arc::clone(id)),
        transaction: Some(Box::new(TxDetail {
            expected_events: None,
            seen_events: sum.keys.in_time + sum.keys.missing,
            missing_total_orders: None,
            missing_xoffsets: None,
            tables: sum.tables.clone(),
            keys: Some(sum.keys),
        })),
        evidence: vec![evidence.clone()],
        ..Violation::new(
            ViolationKind::TransactionNotInvalidated,
            None,
            crate::hash::transaction_summary(id),
            table,
            Arc::from("{}"),
            at,
        )
    });
}

#[cfg(test)]
mod tests;
