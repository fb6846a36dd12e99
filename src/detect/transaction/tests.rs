//! Transaction checks: verdicts must not depend on how BEGIN, the changes
//! and END interleave, nor on redeliveries or the partitions they come
//! from; each scenario is run in every arrival order.

use smol_str::SmolStr;

use super::*;

const T0: Millis = 1_700_000_000_000;
const TX: &str = "571:53195832";
const ORDERS: &str = "public.orders";
const LINES: &str = "public.order_lines";

const RULES: TxRules = TxRules {
    timeout_ms: 60_000,
    max_open: 1_000,
};

fn at(topic: &str, partition: i32, offset: i64) -> Provenance {
    Provenance {
        topic: crate::model::Name::new(topic),
        partition,
        offset,
        from_file: false,
    }
}

/// A change of transaction [`TX`], owning what [`TxChange`] borrows.
#[derive(Debug, Clone)]
struct Change {
    table: Name,
    order: u64,
    ts: Millis,
    evidence: Provenance,
}

impl Change {
    fn part(&self) -> TxChange<'_> {
        TxChange {
            table: &self.table,
            order: self.order,
            ts: self.ts,
            evidence: &self.evidence,
        }
    }
}

/// One input record of a transaction.
#[derive(Debug, Clone)]
enum Rec {
    Change(Change),
    Boundary(TxBoundary),
}

fn change(table: &str, order: u64, partition: i32) -> Rec {
    Rec::Change(Change {
        table: Name::new(table),
        order,
        ts: T0,
        evidence: at(&format!("cdc.{table}"), partition, 10 + order as i64),
    })
}

fn begin() -> Rec {
    Rec::Boundary(TxBoundary {
        tx: TxId::from(TX),
        ts: T0,
        mark: TxMark::Begin,
        evidence: at("cdc.transaction", 0, 1),
    })
}

fn end(event_count: u64, tables: &[(&str, u64)], all_mapped: bool) -> Rec {
    Rec::Boundary(TxBoundary {
        tx: TxId::from(TX),
        ts: T0 + 5,
        mark: TxMark::End(EndCounts {
            event_count: Some(event_count),
            tables: tables.iter().map(|(t, n)| (Name::new(t), *n)).collect(),
            all_mapped,
            rows_numbered: false,
        }),
        evidence: at("cdc.transaction", 0, 2),
    })
}

/// A Maxwell row of `table`: `xoffset` on every row but the last, which
/// carries `commit` instead (as Maxwell writes them), at `offset` of the
/// one `maxwell` topic's `partition`.
fn row(table: &str, xoffset: Option<u64>, commit: bool, partition: i32, offset: i64) -> Rec {
    Rec::Boundary(TxBoundary {
        tx: TxId::from(TX),
        // Maxwell's `ts` is in seconds: the rows share it.
        ts: T0,
        mark: TxMark::Row {
            table: Name::new(table),
            xoffset,
            commit,
        },
        evidence: at("maxwell", partition, offset),
    })
}

/// Feeds the records at a watermark before them all, then ends the input.
fn run(records: &[Rec]) -> TxDecisions {
    let mut d = TxDetector::default();
    let mut out = TxDecisions::default();
    for r in records {
        match r {
            Rec::Change(c) => d.on_change(&TxId::from(TX), c.part(), T0 - 1_000, &RULES, &mut out),
            Rec::Boundary(b) => d.on_boundary(b, T0 - 1_000, &RULES, &mut out),
        }
        d.advance(T0 - 1_000, &RULES, &mut out);
    }
    assert!(out.violations.is_empty(), "nothing is decided early");
    d.advance(Millis::MAX, &RULES, &mut out);
    assert_eq!(d.open(), 0);
    out
}

/// Every order of `records` (Heap's algorithm).
fn permutations(records: &[Rec]) -> Vec<Vec<Rec>> {
    fn heap(k: usize, items: &mut Vec<Rec>, out: &mut Vec<Vec<Rec>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, items, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(records.len(), &mut records.to_vec(), &mut out);
    out
}

/// The violations of every order of `records`, which must all agree.
fn in_every_order(records: &[Rec]) -> Vec<Violation> {
    let orders = permutations(records);
    let first = run(&orders[0]).violations;
    for order in &orders[1..] {
        assert_eq!(run(order).violations, first, "order {order:?}");
    }
    first
}

#[test]
fn a_complete_transaction_is_no_violation_in_any_order() {
    let records = [
        begin(),
        change(ORDERS, 1, 0),
        change(LINES, 2, 1),
        change(LINES, 3, 1),
        end(3, &[(ORDERS, 1), (LINES, 2)], true),
    ];
    assert_eq!(permutations(&records).len(), 120);
    assert_eq!(in_every_order(&records), []);
}

#[test]
fn a_lost_event_is_an_incomplete_transaction_in_any_order() {
    let records = [
        begin(),
        change(ORDERS, 1, 0),
        change(LINES, 3, 1),
        end(3, &[(ORDERS, 1), (LINES, 2)], true),
    ];
    let violations = in_every_order(&records);
    assert_eq!(violations.len(), 1, "{violations:?}");
    let v = &violations[0];
    assert_eq!(v.kind, ViolationKind::IncompleteTransaction);
    assert_eq!(&*v.table, LINES);
    assert_eq!(v.transaction_id.as_deref(), Some(TX));
    assert_eq!(v.subject(), format!("transaction/{TX}"));
    let detail = v.transaction.as_deref().unwrap();
    assert_eq!(detail.expected_events, Some(2));
    assert_eq!(detail.seen_events, 1);
    assert_eq!(detail.missing_total_orders, Some(vec![2]));
    assert_eq!(detail.tables, [Name::new(LINES), Name::new(ORDERS)]);
    assert_eq!(v.evidence, [at("cdc.transaction", 0, 2)], "the END");
    assert_eq!(v.time_ms, T0 + 5);
}

#[test]
fn redeliveries_count_once() {
    let records = [
        change(ORDERS, 1, 0),
        change(ORDERS, 1, 0),
        change(ORDERS, 1, 2),
        end(2, &[(ORDERS, 2)], true),
        end(2, &[(ORDERS, 2)], true),
    ];
    let violations = in_every_order(&records);
    assert_eq!(violations.len(), 1, "{violations:?}");
    let detail = violations[0].transaction.as_deref().unwrap();
    assert_eq!((detail.expected_events, detail.seen_events), (Some(2), 1));
    assert_eq!(detail.missing_total_orders, Some(vec![2]));
}

#[test]
fn a_transaction_split_across_partitions_is_counted_whole() {
    let records = [
        change(ORDERS, 1, 0),
        change(ORDERS, 2, 1),
        change(ORDERS, 3, 2),
        begin(),
        end(3, &[(ORDERS, 3)], true),
    ];
    assert_eq!(in_every_order(&records), []);
}

#[test]
fn unmapped_tables_are_not_counted() {
    // The END names a table vigil does not map: ingest leaves it out of
    // `tables`, and its changes never reach the detector.
    let records = [begin(), change(ORDERS, 1, 0), end(3, &[(ORDERS, 1)], false)];
    assert_eq!(in_every_order(&records), []);
    let lost = [change(ORDERS, 2, 0), end(3, &[(ORDERS, 2)], false)];
    let violations = in_every_order(&lost);
    assert_eq!(violations.len(), 1);
    let detail = violations[0].transaction.as_deref().unwrap();
    assert_eq!(
        detail.missing_total_orders, None,
        "the missing orders cannot be told from the unmapped table's"
    );
}

#[test]
fn a_transaction_without_end_is_unterminated_in_any_order() {
    let records = [begin(), change(ORDERS, 1, 0), change(LINES, 2, 1)];
    let violations = in_every_order(&records);
    assert_eq!(violations.len(), 1, "{violations:?}");
    let v = &violations[0];
    assert_eq!(v.kind, ViolationKind::UnterminatedTransaction);
    assert_eq!(v.transaction_id.as_deref(), Some(TX));
    assert_eq!(v.evidence, [at("cdc.transaction", 0, 1)], "the BEGIN");
    assert_eq!(v.time_ms, T0 + RULES.timeout_ms);
    assert_eq!(v.transaction.as_deref().unwrap().seen_events, 2);
}

#[test]
fn without_begin_the_earliest_change_is_the_evidence() {
    let early = Rec::Change(Change {
        ts: T0 - 10,
        ..match change(ORDERS, 1, 3) {
            Rec::Change(c) => c,
            Rec::Boundary(_) => unreachable!(),
        }
    });
    let violations = in_every_order(&[change(LINES, 2, 1), early]);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].evidence, [at("cdc.public.orders", 3, 11)]);
    assert_eq!(violations[0].time_ms, T0 - 10 + RULES.timeout_ms);
}

#[test]
fn verdicts_wait_for_the_watermark() {
    let mut d = TxDetector::default();
    let mut out = TxDecisions::default();
    for r in [change(ORDERS, 1, 0), end(2, &[(ORDERS, 2)], true)] {
        match r {
            Rec::Change(c) => d.on_change(&TxId::from(TX), c.part(), T0 - 1, &RULES, &mut out),
            Rec::Boundary(b) => d.on_boundary(&b, T0 - 1, &RULES, &mut out),
        }
    }
    d.advance(T0 + 4, &RULES, &mut out);
    assert!(out.violations.is_empty(), "the END's time is not reached");
    let Rec::Change(late) = change(ORDERS, 2, 0) else {
        unreachable!()
    };
    d.on_change(&TxId::from(TX), late.part(), T0 + 4, &RULES, &mut out);
    d.advance(T0 + 5, &RULES, &mut out);
    assert!(out.violations.is_empty(), "the late change came in time");
    assert_eq!(d.open(), 0);
}

#[test]
fn records_after_the_verdict_do_not_open_the_transaction_again() {
    let mut d = TxDetector::default();
    let mut out = TxDecisions::default();
    let Rec::Change(c) = change(ORDERS, 1, 0) else {
        unreachable!()
    };
    d.on_change(&TxId::from(TX), c.part(), T0 - 1, &RULES, &mut out);
    d.advance(T0 + RULES.timeout_ms, &RULES, &mut out);
    assert_eq!(out.violations.len(), 1, "unterminated");
    // Its END, late: the transaction is decided.
    let Rec::Boundary(b) = end(1, &[(ORDERS, 1)], true) else {
        unreachable!()
    };
    d.on_boundary(&b, T0 + RULES.timeout_ms, &RULES, &mut out);
    assert_eq!((d.open(), out.late), (0, 1));
    // Once forgotten, a record that old is late by its own time.
    d.advance(T0 + 2 * RULES.timeout_ms, &RULES, &mut out);
    d.on_change(
        &TxId::from(TX),
        c.part(),
        T0 + 2 * RULES.timeout_ms,
        &RULES,
        &mut out,
    );
    assert_eq!((d.open(), out.late), (0, 2));
    d.advance(Millis::MAX, &RULES, &mut out);
    assert_eq!(out.violations.len(), 1);
    assert_eq!(d.take_changed().writes.put.len(), 0);
}

#[test]
fn open_transactions_are_bounded() {
    let rules = TxRules {
        timeout_ms: 60_000,
        max_open: 100,
    };
    let mut d = TxDetector::default();
    let mut out = TxDecisions::default();
    for i in 0..10_000u64 {
        let tx = TxId::new(SmolStr::new(format!("tx-{i}")));
        let c = Change {
            table: Name::new(ORDERS),
            order: 1,
            ts: T0 + i as Millis,
            evidence: at("cdc", 0, i as i64),
        };
        d.on_change(&tx, c.part(), T0 - 1, &rules, &mut out);
        assert!(d.open() <= rules.max_open);
        assert!(d.txs.len() <= 2 * rules.max_open);
    }
    assert_eq!(out.dropped, 10_000 - 100);
    d.advance(Millis::MAX, &rules, &mut out);
    assert_eq!(out.violations.len(), 100, "the last 100 are decided");
    assert!(d.txs.is_empty());
}

#[test]
fn a_checkpoint_restores_the_same_verdicts() {
    let mut d = TxDetector::default();
    let mut out = TxDecisions::default();
    for r in [begin(), change(ORDERS, 1, 0)] {
        match r {
            Rec::Change(c) => d.on_change(&TxId::from(TX), c.part(), T0 - 1, &RULES, &mut out),
            Rec::Boundary(b) => d.on_boundary(&b, T0 - 1, &RULES, &mut out),
        }
    }
    let saved: Vec<(SmolStr, TxEntry)> = d
        .take_changed()
        .writes
        .put
        .into_iter()
        .map(|(id, e)| (id, e.clone()))
        .collect();
    let mut restored = TxDetector::new(saved, [], Millis::MIN, &RULES);
    let Rec::Boundary(b) = end(2, &[(ORDERS, 2)], true) else {
        unreachable!()
    };
    for det in [&mut d, &mut restored] {
        det.on_boundary(&b, T0 - 1, &RULES, &mut out);
        det.advance(Millis::MAX, &RULES, &mut out);
    }
    assert_eq!(out.violations.len(), 2);
    assert_eq!(out.violations[0], out.violations[1]);
}

#[test]
fn maxwell_rows_all_seen_are_no_violation_in_any_order() {
    // Flink's fixture: xid 7125, rows with xoffset 0.. and the last with
    // commit and no xoffset; a row of a table vigil does not map counts.
    let records = [
        row(ORDERS, Some(0), false, 0, 1),
        row("shop.audit", Some(1), false, 1, 2),
        row(LINES, Some(2), false, 0, 3),
        row(LINES, None, true, 2, 4),
    ];
    assert_eq!(in_every_order(&records), []);
    // Redelivered, and one transaction of a single row.
    let again = [
        records[0].clone(),
        records[3].clone(),
        records[0].clone(),
        records[1].clone(),
        records[2].clone(),
    ];
    assert_eq!(in_every_order(&again), []);
    assert_eq!(in_every_order(&[row(ORDERS, None, true, 0, 9)]), []);
}

#[test]
fn a_maxwell_row_lost_before_the_highest_xoffset_is_an_incomplete_transaction() {
    let records = [
        row(ORDERS, Some(0), false, 0, 1),
        row(LINES, Some(3), false, 1, 4),
        row(LINES, Some(3), false, 1, 4),
        row(ORDERS, None, true, 0, 5),
    ];
    let violations = in_every_order(&records);
    assert_eq!(violations.len(), 1, "{violations:?}");
    let v = &violations[0];
    assert_eq!(v.kind, ViolationKind::IncompleteTransaction);
    assert_eq!(&*v.table, UNKNOWN_TABLE);
    assert_eq!(v.transaction_id.as_deref(), Some(TX));
    assert_eq!(v.evidence, [at("maxwell", 0, 5)], "the commit row");
    assert_eq!(v.time_ms, T0);
    let detail = v.transaction.as_deref().unwrap();
    assert_eq!(detail.missing_xoffsets, Some(vec![1, 2]));
    assert_eq!((detail.expected_events, detail.seen_events), (None, 3));
    assert_eq!(detail.missing_total_orders, None);
    assert_eq!(detail.tables, [Name::new(LINES), Name::new(ORDERS)]);
}

#[test]
fn maxwell_rows_lost_after_the_highest_xoffset_cannot_be_told() {
    // Rows 1 and 2 lost before the commit row, or a transaction of two
    // rows: the data cannot say, so nothing is reported.
    let records = [
        row(ORDERS, Some(0), false, 0, 1),
        row(ORDERS, None, true, 0, 4),
    ];
    assert_eq!(in_every_order(&records), []);
    // Without xoffsets (`output_xoffset` off) only the commit row counts.
    let records = [row(ORDERS, None, false, 0, 1), row(LINES, None, true, 0, 2)];
    assert_eq!(in_every_order(&records), []);
}

#[test]
fn maxwell_rows_without_their_commit_row_are_unterminated() {
    for records in [
        vec![
            row(ORDERS, Some(0), false, 0, 1),
            row(LINES, Some(1), false, 1, 2),
        ],
        vec![
            row(ORDERS, None, false, 0, 1),
            row(ORDERS, None, false, 0, 1),
        ],
    ] {
        let violations = in_every_order(&records);
        assert_eq!(violations.len(), 1, "{violations:?}");
        let v = &violations[0];
        assert_eq!(v.kind, ViolationKind::UnterminatedTransaction);
        assert_eq!(v.time_ms, T0 + RULES.timeout_ms);
        assert_eq!(v.evidence, [at("maxwell", 0, 1)], "the earliest row");
    }
}
