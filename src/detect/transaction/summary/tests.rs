//! Summaries by transaction: the same summary, at the same time, whatever
//! the order in which the router's changes and two workers' verdicts
//! arrive.

use std::sync::Arc;

use super::*;

const T0: Millis = 1_700_000_000_000;
const DEADLINE: i64 = 5_000;
const TX: &str = "571:53195832";
const ORDERS: &str = "public.orders";
const LINES: &str = "public.order_lines";

const RULES: SummaryRules = SummaryRules {
    late_window_ms: 30_000,
    max_open: 1_000,
};

fn at(offset: i64) -> Provenance {
    Provenance {
        topic: crate::model::Name::new("db.public"),
        partition: 0,
        offset,
        from_file: false,
    }
}

/// A key check's verdict on a change of `TX` committed at `ts`.
fn verdict(kind: ViolationKind, table: &str, ts: Millis, offset: i64) -> Violation {
    Violation {
        change_ts_ms: Some(ts),
        deadline_ms: Some(DEADLINE),
        transaction_id: Some(SmolStr::new(TX)),
        evidence: vec![at(offset)],
        ..Violation::new(
            kind,
            Some(Arc::from("k")),
            offset as u64,
            Name::new(table),
            SmolStr::new("{}"),
            ts + DEADLINE,
        )
    }
}

/// One message to the summaries.
#[derive(Debug, Clone)]
enum Msg {
    Change {
        table: &'static str,
        ts: Millis,
    },
    Verdicts {
        worker: usize,
        sums: Vec<(TxId, TxSum)>,
        until: Millis,
    },
}

fn tallies(f: impl FnOnce(&mut TxTallies)) -> Vec<(TxId, TxSum)> {
    let mut t = TxTallies::default();
    f(&mut t);
    t.take()
}

fn run(msgs: &[Msg]) -> SummaryDecisions {
    let mut s = TxSummaries::new(2, [], &RULES);
    let mut out = SummaryDecisions::default();
    for m in msgs {
        match m {
            Msg::Change { table, ts } => s.on_change(
                &SmolStr::new(TX),
                &Name::new(table),
                ts + DEADLINE,
                &RULES,
                &mut out,
            ),
            Msg::Verdicts {
                worker,
                sums,
                until,
            } => s.on_verdicts(*worker, sums.clone(), *until, &RULES, &mut out),
        }
    }
    out
}

/// Every order of `msgs` that keeps each worker's own messages in order
/// (a worker's `until` only grows) and has the router's change before a
/// verdict that decides past its late window (else it is a late record).
fn orders(msgs: &[Msg]) -> Vec<Vec<Msg>> {
    fn before(a: &Msg, b: &Msg) -> bool {
        match (a, b) {
            (Msg::Verdicts { worker: x, .. }, Msg::Verdicts { worker: y, .. }) => x == y,
            (Msg::Change { ts, .. }, Msg::Verdicts { until, .. }) => {
                ts + DEADLINE + RULES.late_window_ms <= *until
            }
            _ => false,
        }
    }
    fn go(rest: &[Msg], acc: &mut Vec<Msg>, used: &mut Vec<bool>, out: &mut Vec<Vec<Msg>>) {
        if acc.len() == rest.len() {
            out.push(acc.clone());
            return;
        }
        for i in 0..rest.len() {
            if used[i]
                || (0..rest.len())
                    .any(|j| j != i && !used[j] && j < i && before(&rest[j], &rest[i]))
                || (0..rest.len()).any(|j| {
                    !used[j] && matches!(rest[j], Msg::Change { .. }) && before(&rest[j], &rest[i])
                })
            {
                continue;
            }
            used[i] = true;
            acc.push(rest[i].clone());
            go(rest, acc, used, out);
            acc.pop();
            used[i] = false;
        }
    }
    let mut out = Vec::new();
    go(
        msgs,
        &mut Vec::new(),
        &mut vec![false; msgs.len()],
        &mut out,
    );
    out
}

/// Three changes of a transaction over two workers: one in time, one
/// missed then late, one missed.
fn scenario() -> Vec<Msg> {
    let t1 = T0 + 10;
    vec![
        Msg::Change {
            table: ORDERS,
            ts: T0,
        },
        Msg::Change {
            table: LINES,
            ts: T0,
        },
        Msg::Change {
            table: LINES,
            ts: t1,
        },
        Msg::Verdicts {
            worker: 0,
            sums: tallies(|t| t.in_time(&SmolStr::new(TX), &Name::new(ORDERS), T0 + DEADLINE)),
            until: T0 + DEADLINE,
        },
        Msg::Verdicts {
            worker: 1,
            sums: tallies(|t| {
                t.violation(&verdict(ViolationKind::MissingInvalidation, LINES, t1, 7));
                t.violation(&verdict(ViolationKind::MissingInvalidation, LINES, T0, 9));
            }),
            until: t1 + DEADLINE,
        },
        Msg::Verdicts {
            worker: 1,
            sums: tallies(|t| t.violation(&verdict(ViolationKind::LateInvalidation, LINES, T0, 9))),
            until: t1 + DEADLINE + RULES.late_window_ms,
        },
        Msg::Verdicts {
            worker: 0,
            sums: Vec::new(),
            until: Millis::MAX,
        },
    ]
}

#[test]
fn one_summary_in_every_arrival_order() {
    let msgs = scenario();
    let all = orders(&msgs);
    assert!(all.len() > 100, "{} orders", all.len());
    let first = run(&all[0]);
    assert_eq!(first.violations.len(), 1);
    let v = &first.violations[0];
    assert_eq!(v.kind, ViolationKind::TransactionNotInvalidated);
    assert_eq!(
        v.id,
        Violation::new(
            v.kind,
            None,
            crate::hash::transaction_summary(TX),
            v.table.clone(),
            v.pk.clone(),
            0
        )
        .id
    );
    assert_eq!(v.transaction_id.as_deref(), Some(TX));
    assert_eq!(&*v.table, LINES, "the first of its tables by name");
    assert_eq!(v.time_ms, T0 + 10 + DEADLINE + RULES.late_window_ms);
    assert_eq!(v.change_ts_ms, Some(T0), "the earliest missed change");
    assert_eq!(v.evidence, vec![at(9)]);
    let detail = v.transaction.as_deref().expect("detail");
    assert_eq!(
        detail.keys,
        Some(KeyCounts {
            in_time: 1,
            missing: 2,
            late: 1
        })
    );
    assert_eq!(detail.seen_events, 3);
    let tables: Vec<&str> = detail.tables.iter().map(|t| &**t).collect();
    assert_eq!(tables, [LINES, ORDERS]);
    for order in &all[1..] {
        assert_eq!(run(order), first, "{order:?}");
    }
}

#[test]
fn not_final_until_every_worker_has_decided_past_the_late_window() {
    let msgs = scenario();
    // Without worker 0's last word, nothing is final.
    let out = run(&msgs[..msgs.len() - 1]);
    assert!(out.violations.is_empty());
}

#[test]
fn a_transaction_invalidated_in_time_is_not_summarised() {
    let msgs = vec![
        Msg::Change {
            table: ORDERS,
            ts: T0,
        },
        Msg::Verdicts {
            worker: 0,
            sums: tallies(|t| t.in_time(&SmolStr::new(TX), &Name::new(ORDERS), T0 + DEADLINE)),
            until: Millis::MAX,
        },
        Msg::Verdicts {
            worker: 1,
            sums: Vec::new(),
            until: Millis::MAX,
        },
    ];
    for order in orders(&msgs) {
        assert_eq!(run(&order), SummaryDecisions::default());
    }
}

#[test]
fn verdicts_of_a_final_transaction_are_late() {
    let mut s = TxSummaries::new(1, [], &RULES);
    let mut out = SummaryDecisions::default();
    let miss =
        tallies(|t| t.violation(&verdict(ViolationKind::MissingInvalidation, ORDERS, T0, 1)));
    s.on_verdicts(0, miss.clone(), Millis::MAX, &RULES, &mut out);
    assert_eq!(out.violations.len(), 1);
    s.on_verdicts(0, miss, Millis::MAX, &RULES, &mut out);
    assert_eq!(out.violations.len(), 1, "summarised once");
    assert_eq!(out.late, 1);
    assert_eq!(s.open(), 0);
}

#[test]
fn transactions_over_the_maximum_are_dropped_first_final_first() {
    let rules = SummaryRules {
        max_open: 2,
        ..RULES
    };
    let mut s = TxSummaries::new(1, [], &rules);
    let mut out = SummaryDecisions::default();
    for (i, tx) in ["a", "b", "c"].into_iter().enumerate() {
        s.on_change(
            &SmolStr::new(tx),
            &Name::new(ORDERS),
            T0 + i as i64,
            &rules,
            &mut out,
        );
    }
    assert_eq!(out.dropped, 1);
    assert_eq!(s.open(), 2);
    // "a" was dropped: never written, so nothing to delete either.
    let writes = s.take_changed();
    let put: Vec<String> = writes.put.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(put, ["b", "c"]);
    assert!(writes.delete.is_empty());
}

#[test]
fn a_checkpoint_restores_the_sums() {
    let mut s = TxSummaries::new(1, [], &RULES);
    let mut out = SummaryDecisions::default();
    let miss =
        tallies(|t| t.violation(&verdict(ViolationKind::MissingInvalidation, ORDERS, T0, 1)));
    s.on_verdicts(0, miss, T0, &RULES, &mut out);
    let saved: Vec<(SmolStr, TxSum)> = s
        .take_changed()
        .put
        .into_iter()
        .map(|(id, sum)| (id, sum.clone()))
        .collect();
    let mut restored = TxSummaries::new(1, saved, &RULES);
    restored.on_verdicts(0, Vec::new(), Millis::MAX, &RULES, &mut out);
    assert_eq!(out.violations.len(), 1);
}
