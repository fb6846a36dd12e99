//! Entity checks: the verdict on each change of a sequence. The change
//! stream of one row is ordered (one Kafka partition per primary key), so
//! these checks are order-dependent by nature: each test is a sequence.

use smol_str::SmolStr;

use super::*;
use crate::hash;
use crate::mapping::TableRules;
use crate::model::{Name, Provenance};

const TABLE: &str = "public.users";
const PK: &str = "{\"id\":1}";
const T0: i64 = 1_700_000_000_000;

/// A version column, versions stepping by one.
const CONTIGUOUS: TableRules = TableRules {
    deadline_ms: 30_000,
    contiguous: true,
    row_version: true,
};

/// A version column, versions only increasing.
const INCREASING: TableRules = TableRules {
    contiguous: false,
    ..CONTIGUOUS
};

/// Positions in the log (`lsn`, `binlog`, `ts_ms`): deletes get their own.
const POSITIONS: TableRules = TableRules {
    deadline_ms: 30_000,
    contiguous: false,
    row_version: false,
};

/// A change of row [`PK`]. `row` stands for the row image (its hash); `ts`
/// and `offset` are derived from `seq` so that every call with a distinct
/// `seq` is a distinct record, and the same arguments give a redelivery.
fn change(rules: TableRules, op: Op, version: Option<Version>, row: u64, seq: i64) -> Change {
    let entity = hash::entity(TABLE, PK);
    let ts = T0 + seq * 1_000;
    Change {
        id: hash::change(entity, op, version, ts, row),
        entity,
        table: Name::new(TABLE),
        pk: SmolStr::new(PK),
        op,
        version,
        commit_ts_ms: ts,
        tx_id: None,
        tx_order: None,
        row_hash: row,
        keys: ["user:1".into()].into_iter().collect(),
        rules,
        provenance: Provenance {
            topic: crate::model::Name::new("cdc.public.users"),
            partition: 3,
            offset: 100 + seq,
            from_file: false,
        },
    }
}

fn v(n: u64) -> Option<Version> {
    Some(Version::scalar(n))
}

/// Feeds changes in order and returns every verdict.
fn verdicts(changes: &[Change]) -> Vec<EntityVerdict> {
    let mut state = EntityState::default();
    changes.iter().map(|c| check(&mut state, c)).collect()
}

/// The verdict on the last change of a sequence, asserting that every
/// change before it was accepted.
fn last_verdict(changes: &[Change]) -> EntityVerdict {
    let mut all = verdicts(changes);
    let last = all.pop().expect("at least one change");
    assert!(all.iter().all(|v| *v == EntityVerdict::Accepted), "{all:?}");
    last
}

/// The kind of a verdict (`None` for Accepted / Duplicate).
fn kind(verdict: &EntityVerdict) -> Option<ViolationKind> {
    match verdict {
        EntityVerdict::Violation(v) => Some(v.kind),
        _ => None,
    }
}

fn expected(
    c: &Change,
    kind: ViolationKind,
    latest: Option<Version>,
    expected: Option<Version>,
) -> EntityVerdict {
    EntityVerdict::Violation(Box::new(Violation {
        id: hash::event_id(kind.as_str(), None, c.id),
        kind,
        key: None,
        table: Name::new(TABLE),
        pk: SmolStr::new(PK),
        op: Some(c.op),
        version: c.version,
        latest_version: latest,
        expected_version: expected,
        change_ts_ms: Some(c.commit_ts_ms),
        cache_ts_ms: None,
        deadline_ms: None,
        lag_ms: None,
        source_service: None,
        transaction_id: None,
        transaction: None,
        evidence: vec![c.provenance.clone()],
        time_ms: c.commit_ts_ms,
    }))
}

// ---------------------------------------------------------------------------
// The three kinds

#[test]
fn first_change_is_accepted_and_becomes_the_highest() {
    let c = change(CONTIGUOUS, Op::Create, v(1), 1, 0);
    let mut state = EntityState::default();
    assert_eq!(check(&mut state, &c), EntityVerdict::Accepted);
    assert_eq!(state.highest, v(1));
    assert!(!state.deleted);
    assert_eq!(state.recent.as_slice(), [c.id]);
}

#[test]
fn second_version_verdicts_in_a_contiguous_table() {
    // (second version, expected kind) after version 5.
    let cases = [
        (6, None),
        (7, Some(ViolationKind::VersionGap)),
        (50, Some(ViolationKind::VersionGap)),
        (5, Some(ViolationKind::ConflictingVersion)),
        (4, Some(ViolationKind::VersionRegression)),
        (0, Some(ViolationKind::VersionRegression)),
    ];
    for (second, want) in cases {
        let first = change(CONTIGUOUS, Op::Update, v(5), 1, 0);
        let next = change(CONTIGUOUS, Op::Update, v(second), 2, 1);
        assert_eq!(kind(&last_verdict(&[first, next])), want, "5 then {second}");
    }
}

#[test]
fn second_version_verdicts_in_a_non_contiguous_table() {
    let cases = [
        (6, None),
        (7, None),
        (50, None),
        (5, Some(ViolationKind::ConflictingVersion)),
        (4, Some(ViolationKind::VersionRegression)),
    ];
    for (second, want) in cases {
        let first = change(INCREASING, Op::Update, v(5), 1, 0);
        let next = change(INCREASING, Op::Update, v(second), 2, 1);
        assert_eq!(kind(&last_verdict(&[first, next])), want, "5 then {second}");
    }
}

#[test]
fn regression_names_the_highest_version() {
    let changes = [
        change(CONTIGUOUS, Op::Create, v(4), 1, 0),
        change(CONTIGUOUS, Op::Update, v(5), 2, 1),
        change(CONTIGUOUS, Op::Update, v(3), 3, 2),
    ];
    let verdict = last_verdict(&changes);
    assert_eq!(
        verdict,
        expected(&changes[2], ViolationKind::VersionRegression, v(5), None)
    );
}

#[test]
fn regression_below_an_older_version_still_names_the_highest() {
    let changes = [
        change(INCREASING, Op::Update, v(5), 1, 0),
        change(INCREASING, Op::Update, v(9), 2, 1),
        change(INCREASING, Op::Update, v(7), 3, 2),
    ];
    assert_eq!(
        last_verdict(&changes),
        expected(&changes[2], ViolationKind::VersionRegression, v(9), None)
    );
}

#[test]
fn gap_names_the_expected_version() {
    let changes = [
        change(CONTIGUOUS, Op::Update, v(5), 1, 0),
        change(CONTIGUOUS, Op::Update, v(8), 2, 1),
    ];
    assert_eq!(
        last_verdict(&changes),
        expected(&changes[1], ViolationKind::VersionGap, v(5), v(6))
    );
}

#[test]
fn conflict_names_the_version_both_rows_claim() {
    let changes = [
        change(CONTIGUOUS, Op::Update, v(5), 1, 0),
        change(CONTIGUOUS, Op::Update, v(5), 2, 1),
    ];
    assert_eq!(
        last_verdict(&changes),
        expected(&changes[1], ViolationKind::ConflictingVersion, v(5), None)
    );
}

#[test]
fn regression_does_not_lower_the_highest_version() {
    let got = verdicts(&[
        change(CONTIGUOUS, Op::Update, v(5), 1, 0),
        change(CONTIGUOUS, Op::Update, v(3), 2, 1),
        change(CONTIGUOUS, Op::Update, v(6), 3, 2),
    ]);
    assert_eq!(kind(&got[1]), Some(ViolationKind::VersionRegression));
    assert_eq!(got[2], EntityVerdict::Accepted, "6 follows the highest, 5");
}

#[test]
fn gap_moves_the_highest_version_on() {
    let mut state = EntityState::default();
    check(&mut state, &change(CONTIGUOUS, Op::Update, v(5), 1, 0));
    let gap = check(&mut state, &change(CONTIGUOUS, Op::Update, v(7), 2, 1));
    assert_eq!(kind(&gap), Some(ViolationKind::VersionGap));
    assert_eq!(state.highest, v(7));
    let next = check(&mut state, &change(CONTIGUOUS, Op::Update, v(8), 3, 2));
    assert_eq!(next, EntityVerdict::Accepted);
}

#[test]
fn a_long_contiguous_history_is_accepted() {
    let changes: Vec<Change> = (1..=40u64)
        .map(|n| {
            let op = if n == 1 { Op::Create } else { Op::Update };
            change(CONTIGUOUS, op, v(n), n, n as i64)
        })
        .collect();
    assert!(
        verdicts(&changes)
            .iter()
            .all(|v| *v == EntityVerdict::Accepted)
    );
}

#[test]
fn violation_ids_are_deterministic_and_distinct_per_change() {
    let seq = |second: u64| {
        [
            change(CONTIGUOUS, Op::Update, v(5), 1, 0),
            change(CONTIGUOUS, Op::Update, v(second), 2, 1),
        ]
    };
    let id = |verdict: EntityVerdict| match verdict {
        EntityVerdict::Violation(v) => v.id,
        other => panic!("expected a violation, got {other:?}"),
    };
    let a = id(last_verdict(&seq(3)));
    assert_eq!(a, id(last_verdict(&seq(3))), "a replay gives the same id");
    assert_ne!(a, id(last_verdict(&seq(4))));
    assert_eq!(a.len(), 32);
}

// ---------------------------------------------------------------------------
// Duplicates

#[test]
fn redelivery_is_a_duplicate_and_changes_nothing() {
    let first = change(CONTIGUOUS, Op::Update, v(5), 1, 0);
    let mut state = EntityState::default();
    assert_eq!(check(&mut state, &first), EntityVerdict::Accepted);
    let before = state.clone();
    assert_eq!(check(&mut state, &first), EntityVerdict::Duplicate);
    assert_eq!(state, before);
}

#[test]
fn late_redelivery_within_recent_changes_is_a_duplicate_not_a_regression() {
    let mut changes: Vec<Change> = (1..=RECENT_CHANGES as u64)
        .map(|n| change(CONTIGUOUS, Op::Update, v(n), n, n as i64))
        .collect();
    // RECENT_CHANGES - 1 changes later, the first one again.
    changes.push(changes[0].clone());
    let got = verdicts(&changes);
    assert!(
        got[..RECENT_CHANGES]
            .iter()
            .all(|v| *v == EntityVerdict::Accepted)
    );
    assert_eq!(got[RECENT_CHANGES], EntityVerdict::Duplicate);
}

#[test]
fn redelivered_violation_is_not_reported_twice() {
    let bad = change(CONTIGUOUS, Op::Update, v(3), 2, 1);
    let got = verdicts(&[change(CONTIGUOUS, Op::Update, v(5), 1, 0), bad.clone(), bad]);
    assert_eq!(kind(&got[1]), Some(ViolationKind::VersionRegression));
    assert_eq!(got[2], EntityVerdict::Duplicate);
}

#[test]
fn same_version_and_same_row_in_another_record_is_a_duplicate() {
    // DESIGN.md section 4: V == last with the same row is a duplicate
    // delivery (here re-emitted with another commit time, so another id).
    let first = change(CONTIGUOUS, Op::Update, v(5), 7, 0);
    let again = change(CONTIGUOUS, Op::Update, v(5), 7, 1);
    assert_ne!(first.id, again.id);
    assert_eq!(
        verdicts(&[first, again]),
        vec![EntityVerdict::Accepted, EntityVerdict::Duplicate]
    );
}

#[test]
fn same_row_of_an_older_version_is_a_regression() {
    let got = verdicts(&[
        change(INCREASING, Op::Update, v(4), 7, 0),
        change(INCREASING, Op::Update, v(5), 8, 1),
        change(INCREASING, Op::Update, v(4), 7, 2),
    ]);
    assert_eq!(kind(&got[2]), Some(ViolationKind::VersionRegression));
}

// ---------------------------------------------------------------------------
// Snapshot reads

#[test]
fn snapshot_reads_are_never_violations() {
    for read in [3, 5, 9] {
        for rules in [CONTIGUOUS, INCREASING, POSITIONS] {
            let got = verdicts(&[
                change(rules, Op::Update, v(5), 1, 0),
                change(rules, Op::Read, v(read), 2, 1),
            ]);
            assert_eq!(
                got[1],
                EntityVerdict::Accepted,
                "read of {read} after 5, {rules:?}"
            );
        }
    }
}

#[test]
fn snapshot_read_of_the_highest_version_with_another_row_is_not_a_conflict() {
    let got = verdicts(&[
        change(CONTIGUOUS, Op::Update, v(5), 1, 0),
        change(CONTIGUOUS, Op::Read, v(5), 2, 1),
        change(CONTIGUOUS, Op::Read, v(5), 3, 2),
    ]);
    assert_eq!(got, vec![EntityVerdict::Accepted; 3]);
}

#[test]
fn streaming_resumes_after_a_snapshot_read() {
    let got = verdicts(&[
        change(CONTIGUOUS, Op::Read, v(5), 1, 0),
        change(CONTIGUOUS, Op::Update, v(6), 2, 1),
        change(CONTIGUOUS, Op::Update, v(7), 3, 2),
    ]);
    assert_eq!(got, vec![EntityVerdict::Accepted; 3]);
}

// ---------------------------------------------------------------------------
// Deletes and new lives

#[test]
fn create_after_delete_starts_a_new_life() {
    let mut changes = vec![change(CONTIGUOUS, Op::Create, v(1), 1, 0)];
    for n in 2..=7 {
        changes.push(change(CONTIGUOUS, Op::Update, v(n), n, n as i64));
    }
    changes.push(change(CONTIGUOUS, Op::Delete, v(7), 7, 8));
    changes.push(change(CONTIGUOUS, Op::Create, v(1), 1, 9));
    changes.push(change(CONTIGUOUS, Op::Update, v(2), 2, 10));
    let got = verdicts(&changes);
    assert!(got.iter().all(|v| *v == EntityVerdict::Accepted), "{got:?}");
}

#[test]
fn new_life_is_checked_from_its_own_versions() {
    let mut state = EntityState::default();
    for c in [
        change(CONTIGUOUS, Op::Create, v(7), 1, 0),
        change(CONTIGUOUS, Op::Delete, v(7), 1, 1),
        change(CONTIGUOUS, Op::Create, v(1), 2, 2),
    ] {
        assert_eq!(check(&mut state, &c), EntityVerdict::Accepted);
    }
    assert_eq!(state.highest, v(1));
    assert!(!state.deleted);
    let gap = change(CONTIGUOUS, Op::Update, v(3), 3, 3);
    assert_eq!(
        check(&mut state, &gap),
        expected(&gap, ViolationKind::VersionGap, v(1), v(2))
    );
}

#[test]
fn create_after_a_versionless_delete_starts_a_new_life() {
    let got = verdicts(&[
        change(CONTIGUOUS, Op::Update, v(7), 1, 0),
        change(CONTIGUOUS, Op::Delete, None, 0, 1),
        change(CONTIGUOUS, Op::Create, v(1), 2, 2),
    ]);
    assert_eq!(got, vec![EntityVerdict::Accepted; 3]);
}

#[test]
fn create_without_a_delete_before_it_is_checked() {
    let got = verdicts(&[
        change(CONTIGUOUS, Op::Update, v(7), 1, 0),
        change(CONTIGUOUS, Op::Create, v(1), 2, 1),
    ]);
    assert_eq!(kind(&got[1]), Some(ViolationKind::VersionRegression));
}

#[test]
fn update_after_a_delete_is_checked_against_the_old_life() {
    let got = verdicts(&[
        change(CONTIGUOUS, Op::Update, v(7), 1, 0),
        change(CONTIGUOUS, Op::Delete, v(7), 1, 1),
        change(CONTIGUOUS, Op::Update, v(2), 2, 2),
    ]);
    assert_eq!(kind(&got[2]), Some(ViolationKind::VersionRegression));
}

#[test]
fn row_version_delete_carries_the_highest_version() {
    for rules in [CONTIGUOUS, INCREASING] {
        let got = verdicts(&[
            change(rules, Op::Update, v(5), 1, 0),
            change(rules, Op::Delete, v(5), 1, 1),
        ]);
        assert_eq!(got[1], EntityVerdict::Accepted, "{rules:?}");
    }
}

#[test]
fn row_version_delete_of_an_older_version_is_a_regression() {
    for rules in [CONTIGUOUS, INCREASING] {
        let changes = [
            change(rules, Op::Update, v(5), 1, 0),
            change(rules, Op::Delete, v(4), 1, 1),
        ];
        assert_eq!(
            last_verdict(&changes),
            expected(&changes[1], ViolationKind::VersionRegression, v(5), None),
            "{rules:?}"
        );
    }
}

#[test]
fn row_version_delete_of_a_newer_version_is_a_gap_when_contiguous() {
    // The delete removes version 6, which was never seen: the update to 6 is
    // missing. `expected` is highest + 1, as for any gap.
    let changes = [
        change(CONTIGUOUS, Op::Update, v(5), 1, 0),
        change(CONTIGUOUS, Op::Delete, v(6), 1, 1),
    ];
    assert_eq!(
        last_verdict(&changes),
        expected(&changes[1], ViolationKind::VersionGap, v(5), v(6))
    );
}

#[test]
fn row_version_delete_of_a_newer_version_is_fine_when_not_contiguous() {
    let got = verdicts(&[
        change(INCREASING, Op::Update, v(5), 1, 0),
        change(INCREASING, Op::Delete, v(9), 1, 1),
    ]);
    assert_eq!(got[1], EntityVerdict::Accepted);
}

#[test]
fn position_versioned_delete_is_judged_like_any_change() {
    let lsn = |n: u64| Some(Version::new(n, n + 8));
    let update = change(POSITIONS, Op::Update, lsn(100), 1, 0);
    // A later position: fine.
    let got = verdicts(&[
        update.clone(),
        change(POSITIONS, Op::Delete, lsn(200), 1, 1),
    ]);
    assert_eq!(got[1], EntityVerdict::Accepted);
    // An earlier position: a regression.
    let got = verdicts(&[update.clone(), change(POSITIONS, Op::Delete, lsn(50), 1, 1)]);
    assert_eq!(kind(&got[1]), Some(ViolationKind::VersionRegression));
    // The same position with another row: a conflict (a delete is not
    // expected to repeat the version here).
    let got = verdicts(&[update, change(POSITIONS, Op::Delete, lsn(100), 2, 1)]);
    assert_eq!(kind(&got[1]), Some(ViolationKind::ConflictingVersion));
}

#[test]
fn composite_versions_compare_by_major_then_minor() {
    let got = verdicts(&[
        change(POSITIONS, Op::Update, Some(Version::new(100, 5)), 1, 0),
        change(POSITIONS, Op::Update, Some(Version::new(100, 6)), 2, 1),
        change(POSITIONS, Op::Update, Some(Version::new(100, 4)), 3, 2),
    ]);
    assert_eq!(got[1], EntityVerdict::Accepted);
    assert_eq!(kind(&got[2]), Some(ViolationKind::VersionRegression));
}

// ---------------------------------------------------------------------------
// Versionless changes

#[test]
fn versionless_changes_are_not_checked_and_keep_the_highest() {
    let mut state = EntityState::default();
    check(&mut state, &change(CONTIGUOUS, Op::Update, v(5), 1, 0));
    let got = check(&mut state, &change(CONTIGUOUS, Op::Update, None, 2, 1));
    assert_eq!(got, EntityVerdict::Accepted);
    assert_eq!(state.highest, v(5));
    let got = check(&mut state, &change(CONTIGUOUS, Op::Delete, None, 0, 2));
    assert_eq!(got, EntityVerdict::Accepted);
    assert_eq!(state.highest, v(5));
    assert!(state.deleted);
}

#[test]
fn versionless_first_change_leaves_no_highest() {
    let mut state = EntityState::default();
    assert_eq!(
        check(&mut state, &change(CONTIGUOUS, Op::Delete, None, 0, 0)),
        EntityVerdict::Accepted
    );
    assert_eq!(state.highest, None);
    assert_eq!(
        check(&mut state, &change(CONTIGUOUS, Op::Update, v(3), 1, 1)),
        EntityVerdict::Accepted
    );
}
