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

use smol_str::SmolStr;

use serde::{Deserialize, Serialize};

use super::due::DueQueue;
use super::{IdMap, Tracked, TxId, Writes};
use crate::events::{KeyCounts, TxDetail, Violation, ViolationKind};
use crate::model::{Millis, Name, Provenance};

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
    pub tables: Vec<Name>,
    pub keys: KeyCounts,
    /// The earliest missed change's commit time and record (of changes as
    /// early, the first in the input).
    pub missed: Option<(Millis, Provenance)>,
}

impl TxSum {
    /// Nothing known yet.
    fn none() -> Self {
        TxSum {
            due: Millis::MIN,
            ..TxSum::default()
        }
    }

    fn table(&mut self, table: &Name) {
        if let Err(at) = self.tables.binary_search(table) {
            self.tables.insert(at, table.clone());
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
pub struct TxTallies(IdMap<(SmolStr, TxSum)>);

impl TxTallies {
    fn of(&mut self, tx: &SmolStr) -> &mut TxSum {
        let key = TxId::key_of(tx);
        let (_, sum) = self
            .0
            .entry(key)
            .or_insert_with(|| (tx.clone(), TxSum::none()));
        sum
    }

    /// A change of transaction `tx` invalidated in time.
    pub fn in_time(&mut self, tx: &SmolStr, table: &Name, due: Millis) {
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

    /// The sums since last taken (the map keeps its room).
    pub fn take(&mut self) -> Vec<(TxId, TxSum)> {
        self.0
            .drain()
            .map(|(key, (id, sum))| (TxId { key, id }, sum))
            .collect()
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
    txs: Tracked<TxSum>,
    /// Every transaction summed, by its final time (an entry is current
    /// while its sum is final at that time).
    by_final: DueQueue,
    /// Per worker, the time up to which it has decided everything due.
    decided: Vec<Millis>,
}

impl TxSummaries {
    /// The summaries of `workers` workers, over the sums of a checkpoint.
    pub fn new(
        workers: usize,
        sums: impl IntoIterator<Item = (SmolStr, TxSum)>,
        rules: &SummaryRules,
    ) -> Self {
        let sums: Vec<(TxId, TxSum, bool)> = sums
            .into_iter()
            .map(|(id, sum)| (TxId::new(id), sum, true))
            .collect();
        let mut by_final = DueQueue::default();
        for (tx, sum, _) in &sums {
            by_final.push(final_at(sum, rules), tx.key);
        }
        TxSummaries {
            txs: Tracked::restored(sums),
            by_final,
            decided: vec![Millis::MIN; workers],
        }
    }

    /// The same summaries, writing nothing at checkpoints (their state is
    /// thrown away at the end).
    pub fn untracked(mut self) -> Self {
        self.txs = self.txs.untracked();
        self
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
        tx: &SmolStr,
        table: &Name,
        due: Millis,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
    ) {
        self.on_changes(&TxId::new(tx.clone()), [(table, due)], rules, out);
    }

    /// Changes of `tx`, each of a table and due at a time, in their order:
    /// each added as [`TxSummaries::on_change`] would, the transaction
    /// looked up once.
    pub fn on_changes<'a>(
        &mut self,
        tx: &TxId,
        changes: impl IntoIterator<Item = (&'a Name, Millis)>,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
    ) {
        let add = |sum: &mut TxSum, (table, due): (&Name, Millis)| {
            sum.due = sum.due.max(due);
            sum.table(table);
        };
        let mut changes = changes.into_iter().peekable();
        if changes.peek().is_none() {
            return;
        }
        if !self.txs.contains(tx.key) {
            // A change too late to open it is late; the first that is not
            // opens it.
            loop {
                let Some(change) = changes.next() else {
                    return;
                };
                let mut sum = TxSum::none();
                add(&mut sum, change);
                if self.start(tx, sum, rules, out) {
                    break;
                }
            }
        }
        self.merge(tx.key, rules, |known| changes.for_each(|c| add(known, c)));
    }

    /// A worker's verdicts, and the time up to which it has now decided
    /// everything due; then decides the summaries that became final.
    pub fn on_verdicts(
        &mut self,
        worker: usize,
        sums: Vec<(TxId, TxSum)>,
        decided_until: Millis,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
    ) {
        for (tx, sum) in sums {
            self.add(&tx, rules, out, |known| known.merge(sum));
        }
        if let Some(d) = self.decided.get_mut(worker) {
            *d = (*d).max(decided_until);
        }
        self.advance(rules, out);
    }

    /// Adds to the sum of `tx` what `merge` adds, opening it if need be.
    fn add(
        &mut self,
        tx: &TxId,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
        merge: impl FnOnce(&mut TxSum),
    ) {
        if self.txs.contains(tx.key) {
            self.merge(tx.key, rules, merge);
        } else {
            let mut sum = TxSum::none();
            merge(&mut sum);
            self.start(tx, sum, rules, out);
        }
    }

    /// Adds to the known sum of transaction `key` what `merge` adds.
    fn merge(&mut self, key: u64, rules: &SummaryRules, merge: impl FnOnce(&mut TxSum)) {
        let Some(known) = self.txs.touch(key) else {
            return;
        };
        let before = final_at(known, rules);
        merge(known);
        let after = final_at(known, rules);
        if before != after {
            self.by_final.push(after, key);
        }
    }

    /// Opens the sum of `tx` (which has none) with `sum`, dropping the one
    /// final first when `max_open` are summed; unless it is final already
    /// (late, and `false`).
    fn start(
        &mut self,
        tx: &TxId,
        sum: TxSum,
        rules: &SummaryRules,
        out: &mut SummaryDecisions,
    ) -> bool {
        if final_at(&sum, rules) <= self.until() {
            out.late += 1;
            return false;
        }
        if self.txs.len() >= rules.max_open
            && let Some((_, first)) = self
                .by_final
                .pop_first(|at, key| is_final_at(&self.txs, rules, at, key))
        {
            self.txs.remove(first);
            out.dropped += 1;
        }
        self.by_final.push(final_at(&sum, rules), tx.key);
        self.txs.insert(tx, sum);
        true
    }

    /// Decides the summaries final by the time every worker has decided.
    fn advance(&mut self, rules: &SummaryRules, out: &mut SummaryDecisions) {
        let until = self.until();
        while let Some((at, key)) = self
            .by_final
            .pop_due(until, |at, key| is_final_at(&self.txs, rules, at, key))
        {
            if let Some((id, sum)) = self.txs.remove(key) {
                judge(&id, &sum, at, out);
            }
        }
        self.by_final.compact(self.txs.len(), |at, key| {
            is_final_at(&self.txs, rules, at, key)
        });
    }

    /// What the checkpoint writes: the sums changed since the last, and
    /// deletes of those written before and gone since.
    pub fn take_changed(&mut self) -> Writes<'_, TxSum> {
        self.txs.take_writes(|_| true)
    }
}

/// Whether the sum of transaction `key` is final at `at` (its entry in
/// [`TxSummaries::by_final`] is current).
fn is_final_at(txs: &Tracked<TxSum>, rules: &SummaryRules, at: Millis, key: u64) -> bool {
    txs.get(key)
        .is_some_and(|(_, sum)| final_at(sum, rules) == at)
}

/// When a transaction's summary is final: its latest due plus the late
/// window.
pub fn final_at(sum: &TxSum, rules: &SummaryRules) -> Millis {
    sum.due.saturating_add(rules.late_window_ms)
}

/// The summary of a transaction final at `at`, if any of its changes
/// missed its deadline.
fn judge(id: &SmolStr, sum: &TxSum, at: Millis, out: &mut SummaryDecisions) {
    let Some((ts, evidence)) = sum.missed.as_ref().filter(|_| sum.keys.missing > 0) else {
        return;
    };
    let table = sum
        .tables
        .first()
        .map_or_else(|| Name::new("(none)"), Name::clone);
    out.violations.push(Violation {
        change_ts_ms: Some(*ts),
        transaction_id: Some(id.clone()),
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
            SmolStr::new_static("{}"),
            at,
        )
    });
}

#[cfg(test)]
mod tests;
