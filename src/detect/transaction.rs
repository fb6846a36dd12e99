//! Transaction checks: lost change events and transactions that never end,
//! from Debezium's transaction metadata (`provide.transaction.metadata`)
//! or from the `xid`, `xoffset` and `commit` of Maxwell's rows. Pure: a
//! transaction's BEGIN, END and changes (or rows) and the watermark in,
//! verdicts out.
//!
//! Each open transaction keeps a small tally: when it was first seen, its
//! END once it comes (the events it announced per mapped table), and per
//! mapped table the `total_order` numbers of the changes seen, so that a
//! redelivery counts once. The records may arrive in any order, across any
//! topics and partitions; the verdict waits for the watermark:
//! - once the watermark reaches the END's time, each mapped table of which
//!   the END announced more events than were seen is an
//!   `incomplete_transaction` (tables that `[[tables]]` does not map are not
//!   counted: their changes are not vigil's to see);
//! - for Maxwell, the row carrying `commit` is the END, and the rows before
//!   it number themselves from 0 (`xoffset`, which the last row does not
//!   carry): once the watermark reaches the commit row's time, a number
//!   below the highest seen that no row carried is a lost row, reported as
//!   one `incomplete_transaction` (its table unknown, so `(unknown)`).
//!   Rows lost after the highest number seen cannot be told from a shorter
//!   transaction and are not reported;
//! - a transaction whose END has not come when the watermark reaches its
//!   earliest record's time plus `timeout_ms` is an
//!   `unterminated_transaction`.
//!
//! A decided transaction is remembered, without its tally, for `timeout_ms`
//! more, so that its records arriving after the verdict are not taken for a
//! new transaction; a record that would open a transaction already due is
//! late, and counted only. At most `max_open` transactions are open (and as
//! many remembered): beyond it the one due first is dropped undecided and
//! counted.

use smol_str::SmolStr;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::events::{TxDetail, Violation, ViolationKind};
use crate::model::{Millis, Name, Provenance};

use due::DueQueue;
pub use tracked::{IdMap, Tracked, Writes};

/// A transaction id, and the number the checks know it by: a 64-bit hash
/// of the id (XXH3), computed once where its record is read or routed, so
/// that their maps and ordered sets key by a number and keep the text only
/// for the verdicts and the store. Two ids of the same number would be
/// taken for one transaction: about one chance in 2^64 for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxId {
    pub key: u64,
    pub id: SmolStr,
}

impl TxId {
    pub fn new(id: SmolStr) -> Self {
        TxId {
            key: TxId::key_of(&id),
            id,
        }
    }

    /// The number a transaction id is keyed by.
    pub fn key_of(id: &str) -> u64 {
        xxh3_64(id.as_bytes())
    }
}

impl From<&str> for TxId {
    fn from(id: &str) -> Self {
        TxId::new(SmolStr::new(id))
    }
}

/// `total_order` numbers listed at most in an `incomplete_transaction`.
pub const MAX_LISTED_ORDERS: usize = 1000;

/// The knobs of the transaction checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxRules {
    /// How long (event time) after its earliest record a transaction's END
    /// may come.
    pub timeout_ms: i64,
    /// Open transactions kept at most.
    pub max_open: usize,
}

/// A change's part in its transaction (a change of a mapped table whose
/// record carries the transaction block), borrowed from the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxChange<'a> {
    pub table: &'a Name,
    /// The change's `total_order` in the transaction (from 1).
    pub order: u64,
    pub ts: Millis,
    pub evidence: &'a Provenance,
}

/// A transaction's BEGIN or END record, or a Maxwell row (which marks its
/// place in the transaction whether its table is mapped or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxBoundary {
    pub tx: TxId,
    pub ts: Millis,
    pub mark: TxMark,
    pub evidence: Provenance,
}

/// What a [`TxBoundary`] marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxMark {
    Begin,
    End(EndCounts),
    /// A Maxwell row of `table` (its `[[tables]]` name, else the
    /// database's): its `xoffset` when Maxwell writes them (every row but
    /// the last), and whether it is the last (`commit`).
    Row {
        table: Name,
        xoffset: Option<u64>,
        commit: bool,
    },
}

/// A record of a transaction, as [`TxDetector::on_records`] takes it.
#[derive(Debug, Clone, Copy)]
pub enum TxRecord<'a> {
    Change(TxChange<'a>),
    Boundary(&'a TxBoundary),
}

impl TxRecord<'_> {
    fn ts(&self) -> Millis {
        match self {
            TxRecord::Change(c) => c.ts,
            TxRecord::Boundary(b) => b.ts,
        }
    }

    fn evidence(&self) -> &Provenance {
        match self {
            TxRecord::Change(c) => c.evidence,
            TxRecord::Boundary(b) => &b.evidence,
        }
    }
}

/// What an END announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndCounts {
    /// Events over every table, mapped or not.
    pub event_count: Option<u64>,
    /// Events per mapped table, by its `[[tables]]` name.
    pub tables: Vec<(Name, u64)>,
    /// Whether every table the END names is mapped.
    pub all_mapped: bool,
    /// The END is a Maxwell commit row: the rows before it are numbered
    /// from 0, so every number up to the highest seen must have been seen.
    pub rows_numbered: bool,
}

impl EndCounts {
    /// What a Maxwell commit row says: nothing of the counts.
    fn maxwell_commit() -> Self {
        EndCounts {
            event_count: None,
            tables: Vec::new(),
            all_mapped: false,
            rows_numbered: true,
        }
    }
}

/// The changes of one mapped table seen in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableTally {
    pub table: Name,
    /// `total_order` numbers seen, sorted, each once.
    pub orders: Vec<u64>,
}

/// An END as the tally keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSeen {
    pub ts: Millis,
    pub counts: EndCounts,
    pub evidence: Provenance,
}

/// What an open transaction keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The earliest event time of its records.
    pub first_ts: Millis,
    /// Its BEGIN once seen, else its earliest record.
    pub first_evidence: Provenance,
    pub begin_seen: bool,
    pub end: Option<EndSeen>,
    /// By table name.
    pub tables: Vec<TableTally>,
}

impl Tally {
    fn due(&self, rules: &TxRules) -> Millis {
        match &self.end {
            Some(end) => end.ts,
            None => self.first_ts.saturating_add(rules.timeout_ms),
        }
    }

    /// Records an event time, and the evidence if it is the earliest.
    fn saw(&mut self, ts: Millis, evidence: &Provenance, begin: bool) {
        if begin && !self.begin_seen {
            self.begin_seen = true;
            self.first_evidence = evidence.clone();
        } else if !self.begin_seen
            && (ts, key(evidence)) < (self.first_ts, key(&self.first_evidence))
        {
            // The earliest, and of records as early the first in the
            // input, whichever arrived first.
            self.first_evidence = evidence.clone();
        }
        self.first_ts = self.first_ts.min(ts);
    }

    /// Tallies a record of the transaction.
    fn add(&mut self, record: TxRecord<'_>) {
        let b = match record {
            TxRecord::Change(c) => {
                self.saw(c.ts, c.evidence, false);
                self.count(c.table, Some(c.order));
                return;
            }
            TxRecord::Boundary(b) => b,
        };
        let end = match &b.mark {
            TxMark::Begin => {
                self.saw(b.ts, &b.evidence, true);
                None
            }
            TxMark::End(counts) => {
                self.saw(b.ts, &b.evidence, false);
                Some(counts.clone())
            }
            TxMark::Row {
                table,
                xoffset,
                commit,
            } => {
                self.saw(b.ts, &b.evidence, false);
                self.count(table, *xoffset);
                commit.then(EndCounts::maxwell_commit)
            }
        };
        if let Some(counts) = end
            && self.end.is_none()
        {
            self.end = Some(EndSeen {
                ts: b.ts,
                counts,
                evidence: b.evidence.clone(),
            });
        }
    }

    /// Notes a change or row of `table`, and its number in the transaction
    /// if it has one (a redelivery counts once).
    fn count(&mut self, table: &Name, order: Option<u64>) {
        let i = match self.tables.binary_search_by(|t| t.table.cmp(table)) {
            Ok(i) => i,
            Err(i) => {
                self.tables.insert(
                    i,
                    TableTally {
                        table: table.clone(),
                        orders: Vec::new(),
                    },
                );
                i
            }
        };
        let orders = &mut self.tables[i].orders;
        if let Some(order) = order
            && let Err(at) = orders.binary_search(&order)
        {
            orders.insert(at, order);
        }
    }

    /// The numbers seen on no row below the highest seen (Maxwell's
    /// `xoffset`, from 0), at most [`MAX_LISTED_ORDERS`], and how many there
    /// are.
    fn unnumbered_rows(&self) -> (Vec<u64>, u64) {
        let mut seen: Vec<u64> = self
            .tables
            .iter()
            .flat_map(|t| t.orders.iter().copied())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        let Some(&highest) = seen.last() else {
            return (Vec::new(), 0);
        };
        let missing = highest + 1 - seen.len() as u64;
        let listed = (0..highest)
            .filter(|o| seen.binary_search(o).is_err())
            .take(MAX_LISTED_ORDERS)
            .collect();
        (listed, missing)
    }

    fn seen_events(&self) -> u64 {
        self.tables.iter().map(|t| t.orders.len() as u64).sum()
    }

    fn table_names(&self) -> Vec<Name> {
        self.tables.iter().map(|t| t.table.clone()).collect()
    }
}

/// Where a record is in the input, to order records of the same time.
fn key(p: &Provenance) -> (&str, i32, i64) {
    (&p.topic, p.partition, p.offset)
}

/// A transaction the detector knows of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxState {
    Open(Tally),
    /// Decided (or dropped); its records are ignored until it is forgotten.
    Closed,
}

/// A transaction and when it is next looked at: its verdict (open), or
/// when it is forgotten (closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxEntry {
    pub due: Millis,
    pub state: TxState,
}

/// What the detector decided since asked last.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxDecisions {
    pub violations: Vec<Violation>,
    /// Open transactions dropped undecided over `max_open`.
    pub dropped: u64,
    /// Records of a decided transaction, or that would open one already due.
    pub late: u64,
}

/// What a checkpoint writes of the transactions: the open ones changed
/// since the last checkpoint by id (and deletes of those held by id that
/// are closed or gone), and the ones closed since, with when each is
/// forgotten (written together, not by id).
#[derive(Debug)]
pub struct TxCheckpoint<'a> {
    pub writes: Writes<'a, TxEntry>,
    pub closed: Vec<(SmolStr, Millis)>,
}

/// The open and recently decided transactions.
#[derive(Debug, Default)]
pub struct TxDetector {
    txs: Tracked<TxEntry>,
    /// Open transactions by when they are due, and closed ones by when
    /// they are forgotten (an entry is current while `txs` holds the
    /// transaction in that state at that time).
    open_due: DueQueue,
    closed_due: DueQueue,
    /// How many transactions are open, and how many closed.
    open: usize,
    closed_held: usize,
    /// Transactions closed since the last checkpoint, and when each is
    /// forgotten.
    closed: Vec<(SmolStr, Millis)>,
}

impl TxDetector {
    /// A detector over what a checkpoint wrote: the entries held by id
    /// (open ones), and the closed ones with when each is forgotten. Of
    /// the closed, those forgotten by `watermark` are left out, and of the
    /// rest at most `max_open`, the last forgotten (as the detector keeps
    /// them); an id both open and closed is open (it was closed, forgotten
    /// and opened again).
    pub fn new(
        entries: impl IntoIterator<Item = (SmolStr, TxEntry)>,
        closed: impl IntoIterator<Item = (SmolStr, Millis)>,
        watermark: Millis,
        rules: &TxRules,
    ) -> Self {
        let entries: Vec<(TxId, TxEntry)> = entries
            .into_iter()
            .map(|(id, entry)| (TxId::new(id), entry))
            .collect();
        let held: IdMap<()> = entries.iter().map(|(tx, _)| (tx.key, ())).collect();
        let mut last: IdMap<(SmolStr, Millis)> = IdMap::default();
        for (id, forget) in closed {
            let tx = TxId::new(id);
            if forget > watermark && !held.contains_key(&tx.key) {
                let (_, f) = last.entry(tx.key).or_insert((tx.id, forget));
                *f = (*f).max(forget);
            }
        }
        let mut closed: Vec<(Millis, SmolStr)> = last
            .into_values()
            .map(|(id, forget)| (forget, id))
            .collect();
        closed.sort_unstable();
        let keep = closed.len().saturating_sub(rules.max_open);
        let closed = closed.into_iter().skip(keep).map(|(forget, id)| {
            let entry = TxEntry {
                due: forget,
                state: TxState::Closed,
            };
            (TxId::new(id), entry, false)
        });
        let all: Vec<(TxId, TxEntry, bool)> = entries
            .into_iter()
            .map(|(tx, entry)| (tx, entry, true))
            .chain(closed)
            .collect();
        let mut d = TxDetector::default();
        for (tx, entry, _) in &all {
            d.index(tx.key, entry);
        }
        d.txs = Tracked::restored(all);
        d
    }

    /// The same detector, writing nothing at checkpoints (its state is
    /// thrown away at the end).
    pub fn untracked(mut self) -> Self {
        self.txs = self.txs.untracked();
        self.closed = Vec::new();
        self
    }

    /// Open transactions.
    pub fn open(&self) -> usize {
        self.open
    }

    /// What the checkpoint writes (see [`TxCheckpoint`]).
    pub fn take_changed(&mut self) -> TxCheckpoint<'_> {
        let closed = std::mem::take(&mut self.closed);
        TxCheckpoint {
            writes: self
                .txs
                .take_writes(|e| matches!(e.state, TxState::Open(_))),
            closed,
        }
    }

    fn index(&mut self, key: u64, entry: &TxEntry) {
        match entry.state {
            TxState::Open(_) => {
                self.open += 1;
                self.open_due.push(entry.due, key);
            }
            TxState::Closed => {
                self.closed_held += 1;
                self.closed_due.push(entry.due, key);
            }
        }
    }

    /// Whether `(due, key)` is the entry of an open transaction as it is
    /// now, or of a closed one.
    fn is_open_at(txs: &Tracked<TxEntry>, due: Millis, key: u64) -> bool {
        txs.get(key)
            .is_some_and(|(_, e)| e.due == due && matches!(e.state, TxState::Open(_)))
    }

    fn is_closed_at(txs: &Tracked<TxEntry>, due: Millis, key: u64) -> bool {
        txs.get(key)
            .is_some_and(|(_, e)| e.due == due && e.state == TxState::Closed)
    }

    /// A change of a mapped table, in its transaction `tx`.
    pub fn on_change(
        &mut self,
        tx: &TxId,
        c: TxChange<'_>,
        wm: Millis,
        rules: &TxRules,
        out: &mut TxDecisions,
    ) {
        self.on_records(tx, [TxRecord::Change(c)], wm, rules, out);
    }

    /// A transaction's BEGIN or END.
    pub fn on_boundary(
        &mut self,
        b: &TxBoundary,
        wm: Millis,
        rules: &TxRules,
        out: &mut TxDecisions,
    ) {
        self.on_records(&b.tx, [TxRecord::Boundary(b)], wm, rules, out);
    }

    /// Records of transaction `tx`, in their order: each tallied as
    /// [`TxDetector::on_change`] or [`TxDetector::on_boundary`] would, the
    /// transaction looked up once. A record opens the transaction if need
    /// be, unless it is late: its transaction decided, or due already.
    pub fn on_records<'a>(
        &mut self,
        tx: &TxId,
        records: impl IntoIterator<Item = TxRecord<'a>>,
        wm: Millis,
        rules: &TxRules,
        out: &mut TxDecisions,
    ) {
        let mut records = records.into_iter().peekable();
        if records.peek().is_none() {
            return;
        }
        let opened = !self.txs.contains(tx.key);
        if opened {
            // Late records cannot open it: the first that is not does.
            let late = |r: &TxRecord<'_>| r.ts().saturating_add(rules.timeout_ms) <= wm;
            while records.next_if(late).is_some() {
                out.late += 1;
            }
            let Some(first) = records.peek() else {
                return;
            };
            self.open_for(tx, first.ts(), first.evidence(), rules, out);
        }
        let Some(entry) = self.txs.touch(tx.key) else {
            return;
        };
        let TxState::Open(tally) = &mut entry.state else {
            out.late += records.count() as u64;
            return;
        };
        for r in records {
            tally.add(r);
        }
        let (old, due) = (entry.due, tally.due(rules));
        if old != due || opened {
            entry.due = due;
            self.open_due.push(due, tx.key);
        }
    }

    /// Opens transaction `tx` for a record at `ts`, dropping the one due
    /// first when `max_open` are open.
    fn open_for(
        &mut self,
        tx: &TxId,
        ts: Millis,
        evidence: &Provenance,
        rules: &TxRules,
        out: &mut TxDecisions,
    ) {
        if self.open >= rules.max_open {
            self.drop_first(rules);
            out.dropped += 1;
        }
        self.txs.insert(
            tx,
            TxEntry {
                due: Millis::MAX,
                state: TxState::Open(Tally {
                    first_ts: ts,
                    first_evidence: evidence.clone(),
                    begin_seen: false,
                    end: None,
                    tables: Vec::new(),
                }),
            },
        );
        self.open += 1;
    }

    /// Drops the open transaction due first, undecided, and forgets the
    /// closed one to be forgotten first when as many are remembered.
    fn drop_first(&mut self, rules: &TxRules) {
        if let Some((due, key)) = self
            .open_due
            .pop_first(|due, key| Self::is_open_at(&self.txs, due, key))
        {
            self.close(key, due, rules);
        }
    }

    /// Closes an open transaction (its entry in the open index taken
    /// already): remembered until `due + timeout`.
    fn close(&mut self, key: u64, due: Millis, rules: &TxRules) {
        let forget = due.saturating_add(rules.timeout_ms);
        if let Some(entry) = self.txs.touch(key) {
            entry.state = TxState::Closed;
            entry.due = forget;
        }
        self.open -= 1;
        self.closed_held += 1;
        self.closed_due.push(forget, key);
        if self.txs.tracking()
            && let Some(id) = self.txs.id(key)
        {
            self.closed.push((id.clone(), forget));
        }
        while self.closed_held > rules.max_open
            && let Some((_, old)) = self
                .closed_due
                .pop_first(|due, key| Self::is_closed_at(&self.txs, due, key))
        {
            self.txs.remove(old);
            self.closed_held -= 1;
        }
    }

    /// Decides the transactions due by watermark `wm`, and forgets the
    /// decided ones remembered long enough.
    pub fn advance(&mut self, wm: Millis, rules: &TxRules, out: &mut TxDecisions) {
        while let Some((due, key)) = self
            .open_due
            .pop_due(wm, |due, key| Self::is_open_at(&self.txs, due, key))
        {
            if let Some((
                id,
                TxEntry {
                    state: TxState::Open(tally),
                    ..
                },
            )) = self.txs.get(key)
            {
                judge(id, tally, due, out);
            }
            self.close(key, due, rules);
        }
        while let Some((_, key)) = self
            .closed_due
            .pop_due(wm, |due, key| Self::is_closed_at(&self.txs, due, key))
        {
            self.txs.remove(key);
            self.closed_held -= 1;
        }
        self.open_due
            .compact(self.open, |due, key| Self::is_open_at(&self.txs, due, key));
    }
}

/// The verdict on a transaction due at `due`.
fn judge(id: &SmolStr, tally: &Tally, due: Millis, out: &mut TxDecisions) {
    let Some(end) = &tally.end else {
        let table = tally
            .tables
            .first()
            .map_or_else(|| Name::new("(none)"), |t| t.table.clone());
        out.violations.push(Violation {
            change_ts_ms: Some(tally.first_ts),
            transaction_id: Some(id.clone()),
            transaction: Some(Box::new(TxDetail {
                expected_events: None,
                seen_events: tally.seen_events(),
                missing_total_orders: None,
                missing_xoffsets: None,
                tables: tally.table_names(),
                keys: None,
            })),
            evidence: vec![tally.first_evidence.clone()],
            ..Violation::new(
                ViolationKind::UnterminatedTransaction,
                None,
                crate::hash::transaction(id, ""),
                table,
                SmolStr::new_static("{}"),
                due,
            )
        });
        return;
    };
    if end.counts.rows_numbered {
        judge_rows(id, tally, end, due, out);
        return;
    }
    let missing = missing_orders(tally, &end.counts);
    for (table, expected) in &end.counts.tables {
        let seen = tally
            .tables
            .iter()
            .find(|t| t.table == *table)
            .map_or(0, |t| t.orders.len() as u64);
        if seen >= *expected {
            continue;
        }
        let detail = TxDetail {
            expected_events: Some(*expected),
            seen_events: seen,
            missing_total_orders: missing.clone(),
            missing_xoffsets: None,
            tables: tally.table_names(),
            keys: None,
        };
        let violation = incomplete(id, (table.clone(), table), detail, end, due);
        out.violations.push(violation);
    }
}

/// An `incomplete_transaction` of transaction `id`, its END as evidence:
/// `table` as reported, and as its id names it (one violation per table;
/// Maxwell's lost rows are of no known table).
fn incomplete(
    id: &SmolStr,
    (table, id_table): (Name, &str),
    detail: TxDetail,
    end: &EndSeen,
    due: Millis,
) -> Violation {
    Violation {
        change_ts_ms: Some(end.ts),
        transaction_id: Some(id.clone()),
        transaction: Some(Box::new(detail)),
        evidence: vec![end.evidence.clone()],
        ..Violation::new(
            ViolationKind::IncompleteTransaction,
            None,
            crate::hash::transaction(id, id_table),
            table,
            SmolStr::new_static("{}"),
            due,
        )
    }
}

/// The verdict on a Maxwell transaction whose commit row came: rows lost
/// below the highest `xoffset` seen.
fn judge_rows(id: &SmolStr, tally: &Tally, end: &EndSeen, due: Millis, out: &mut TxDecisions) {
    let (listed, missing) = tally.unnumbered_rows();
    if missing == 0 {
        return;
    }
    // The numbered rows seen, and the commit row.
    let seen = tally.seen_events() + 1;
    let detail = TxDetail {
        expected_events: None,
        seen_events: seen,
        missing_total_orders: None,
        missing_xoffsets: Some(listed),
        tables: tally.table_names(),
        keys: None,
    };
    let violation = incomplete(id, (Name::new(UNKNOWN_TABLE), ""), detail, end, due);
    out.violations.push(violation);
}

/// The `table` of a Maxwell `incomplete_transaction`: a lost row's table is
/// not known.
pub const UNKNOWN_TABLE: &str = "(unknown)";

/// The `total_order` numbers of the transaction that no change carried,
/// when every table it wrote is mapped and the END gives the total (at most
/// [`MAX_LISTED_ORDERS`]).
fn missing_orders(tally: &Tally, counts: &EndCounts) -> Option<Vec<u64>> {
    let total = counts.event_count.filter(|_| counts.all_mapped)?;
    let mut seen: Vec<u64> = tally
        .tables
        .iter()
        .flat_map(|t| t.orders.iter().copied())
        .collect();
    seen.sort_unstable();
    Some(
        (1..=total)
            .filter(|o| seen.binary_search(o).is_err())
            .take(MAX_LISTED_ORDERS)
            .collect(),
    )
}

mod due;
pub mod summary;
mod tracked;

#[cfg(test)]
mod tests;
