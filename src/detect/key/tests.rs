//! Key checks: every verdict for every arrival order of its records, under
//! three watermark schedules, plus the bookkeeping (due times, history,
//! limits, redeliveries) and the glob helpers.

use std::sync::Arc;

use super::*;
use crate::hash;
use crate::mapping::TableRules;
use crate::time::END_OF_TIME;

const KEY: &str = "user:1";
const TABLE: &str = "public.users";
const DEADLINE: i64 = 30_000;
const SKEW: i64 = 100;
const LATE_WINDOW: i64 = 3_600_000;
const T0: Millis = 1_700_000_000_000;

const RULES: KeyRules = KeyRules {
    skew_ms: SKEW,
    late_window_ms: LATE_WINDOW,
    max_changes: 64,
    history_ms: 0,
};

const TABLE_RULES: TableRules = TableRules {
    deadline_ms: DEADLINE,
    contiguous: false,
    row_version: true,
};

// ---------------------------------------------------------------------------
// Builders

fn key() -> Arc<str> {
    Arc::from(KEY)
}

fn prov(topic: &str, partition: i32, offset: i64) -> Provenance {
    Provenance {
        topic: crate::model::Name::new(topic),
        partition,
        offset,
        from_file: false,
    }
}

/// A change of row `{"id":pk}` cached under [`KEY`]. The row hash depends on
/// the row and version only, so building the same change twice gives a
/// redelivery (the same id).
fn change_of(pk: u64, op: Op, version: Option<u64>, ts: Millis, offset: i64) -> Change {
    let table = Name::new(TABLE);
    let pk_text = format!("{{\"id\":{pk}}}");
    let entity = hash::entity(&table, &pk_text);
    let version = version.map(Version::scalar);
    let row_hash = pk * 1_000_003 + version.map_or(0, |v| v.major);
    Change {
        id: hash::change(entity, op, version, ts, row_hash),
        entity,
        table,
        pk: SmolStr::new(pk_text),
        op,
        version,
        commit_ts_ms: ts,
        tx_id: None,
        tx_order: None,
        row_hash,
        keys: [key().as_ref().into()].into_iter().collect(),
        rules: TABLE_RULES,
        provenance: prov("cdc.public.users", 0, offset),
    }
}

fn change(op: Op, version: Option<u64>, ts: Millis, offset: i64) -> Change {
    change_of(1, op, version, ts, offset)
}

fn inv(ts: Millis, version: Option<u64>, offset: i64) -> Invalidation {
    Invalidation {
        ts,
        version,
        service: Some(Name::new("users-api")),
        evidence: prov("cache-events", 1, offset),
    }
}

fn fill(ts: Millis, version: Option<u64>, offset: i64) -> Fill {
    Fill {
        id: hash::fill(KEY, ts, version, Some("users-web")),
        ts,
        version,
        service: Some(Name::new("users-web")),
        evidence: prov("cache-events", 2, offset),
        reported: None,
    }
}

// ---------------------------------------------------------------------------
// Expected verdicts, written from DESIGN.md sections 4 and 7

fn missing(c: &Change) -> Violation {
    Violation {
        id: hash::event_id("missing_invalidation", Some(KEY), c.id),
        kind: ViolationKind::MissingInvalidation,
        key: Some(key()),
        table: Name::new(TABLE),
        pk: c.pk.clone(),
        op: Some(c.op),
        version: c.version,
        latest_version: None,
        expected_version: None,
        change_ts_ms: Some(c.commit_ts_ms),
        cache_ts_ms: None,
        deadline_ms: Some(DEADLINE),
        lag_ms: None,
        source_service: None,
        transaction_id: None,
        transaction: None,
        evidence: vec![c.provenance.clone()],
        time_ms: c.commit_ts_ms + DEADLINE,
    }
}

fn late(c: &Change, i: &Invalidation) -> Violation {
    Violation {
        id: hash::event_id("late_invalidation", Some(KEY), c.id),
        kind: ViolationKind::LateInvalidation,
        key: Some(key()),
        table: Name::new(TABLE),
        pk: c.pk.clone(),
        op: Some(c.op),
        version: c.version,
        latest_version: None,
        expected_version: None,
        change_ts_ms: Some(c.commit_ts_ms),
        cache_ts_ms: Some(i.ts),
        deadline_ms: Some(DEADLINE),
        lag_ms: Some(i.ts - c.commit_ts_ms),
        source_service: i.service.clone(),
        transaction_id: None,
        transaction: None,
        evidence: vec![c.provenance.clone(), i.evidence.clone()],
        time_ms: i.ts,
    }
}

fn fill_violation(kind: ViolationKind, f: &Fill, latest: &Change) -> Violation {
    Violation {
        id: hash::event_id(kind.as_str(), Some(KEY), f.id),
        kind,
        key: Some(key()),
        table: Name::new(TABLE),
        pk: latest.pk.clone(),
        op: Some(latest.op),
        version: f.version.map(Version::scalar),
        latest_version: latest.version,
        expected_version: None,
        change_ts_ms: Some(latest.commit_ts_ms),
        cache_ts_ms: Some(f.ts),
        deadline_ms: None,
        lag_ms: None,
        source_service: f.service.clone(),
        transaction_id: None,
        transaction: None,
        evidence: vec![f.evidence.clone(), latest.provenance.clone()],
        time_ms: f.ts,
    }
}

fn stale_fill(f: &Fill, latest: &Change) -> Violation {
    fill_violation(ViolationKind::StaleFill, f, latest)
}

fn fill_after_delete(f: &Fill, delete: &Change) -> Violation {
    fill_violation(ViolationKind::FillAfterDelete, f, delete)
}

// ---------------------------------------------------------------------------
// Driver

/// One input record of the key.
#[derive(Debug, Clone)]
enum Rec {
    Change(Change),
    /// An invalidation of the key itself (retained for later changes).
    Inv(Invalidation),
    /// A glob invalidation matching the key: offered to the changes present,
    /// then passed as `wildcards` to later changes (as the pipeline does).
    Glob(Invalidation),
    Fill(Fill),
}

impl Rec {
    fn ts(&self) -> Millis {
        match self {
            Rec::Change(c) => c.commit_ts_ms,
            Rec::Inv(i) | Rec::Glob(i) => i.ts,
            Rec::Fill(f) => f.ts,
        }
    }

    fn label(&self) -> String {
        let kind = match self {
            Rec::Change(c) => format!("change {}", c.op.code()),
            Rec::Inv(_) => "inv".to_string(),
            Rec::Glob(_) => "glob".to_string(),
            Rec::Fill(_) => "fill".to_string(),
        };
        format!("{kind}@T0{:+}", self.ts() - T0)
    }
}

/// When the watermark moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    /// Only at the end of input, to the end of time (file mode).
    AtEnd,
    /// After every record, to just below the earliest record still to come
    /// (the furthest it may go without making a later record late); `advance`
    /// is called every time.
    Eager,
    /// The same watermark, but `advance` is called only when the key's next
    /// due time is reached (as the pipeline's timers do).
    Timers,
}

const SCHEDULES: [Schedule; 3] = [Schedule::AtEnd, Schedule::Eager, Schedule::Timers];

/// What the key decided over a whole run.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    /// Sorted by time, kind and id (the order within one `advance` is not
    /// part of the contract).
    violations: Vec<Violation>,
    in_time: Vec<(Name, i64)>,
    expired: u64,
    evicted: u64,
}

fn run_with(records: &[Rec], schedule: Schedule, rules: &KeyRules) -> (Outcome, KeyState) {
    run_from(KeyState::default(), records, schedule, rules)
}

/// Runs `records` on a key that already holds `state`.
fn run_from(
    mut state: KeyState,
    records: &[Rec],
    schedule: Schedule,
    rules: &KeyRules,
) -> (Outcome, KeyState) {
    let key = key();
    let mut globs: Vec<Invalidation> = Vec::new();
    let mut decisions = Decisions::default();
    let mut last_wm = Millis::MIN;
    let advance = |state: &mut KeyState, wm: Millis, decisions: &mut Decisions| {
        let next = state.advance(&key, wm, rules, decisions);
        assert!(
            next.is_none_or(|n| n > wm),
            "advance({wm}) returned due {next:?}"
        );
        assert_eq!(
            next,
            state.next_due(rules),
            "advance's due and next_due agree"
        );
    };
    for (i, rec) in records.iter().enumerate() {
        match rec {
            Rec::Change(c) => {
                state.on_change(c, globs.iter(), rules);
            }
            Rec::Inv(inv) => state.on_invalidation(inv, true, rules),
            Rec::Glob(inv) => {
                state.on_invalidation(inv, false, rules);
                globs.push(inv.clone());
            }
            Rec::Fill(f) => {
                state.on_fill(f.clone());
            }
        }
        if schedule == Schedule::AtEnd {
            continue;
        }
        let wm = records[i + 1..]
            .iter()
            .map(Rec::ts)
            .min()
            .map_or(END_OF_TIME, |t| t - 1);
        assert!(wm >= last_wm, "the schedule's watermark never goes back");
        last_wm = wm;
        let due = state.next_due(rules);
        if schedule == Schedule::Eager || due.is_some_and(|d| d <= wm) {
            advance(&mut state, wm, &mut decisions);
        }
    }
    if schedule == Schedule::AtEnd {
        advance(&mut state, END_OF_TIME, &mut decisions);
    }
    let mut violations = decisions.violations;
    violations.sort_by(|a, b| (a.time_ms, a.kind, &a.id).cmp(&(b.time_ms, b.kind, &b.id)));
    let mut in_time = decisions.in_time;
    in_time.sort();
    let outcome = Outcome {
        violations,
        in_time,
        expired: decisions.expired,
        evicted: decisions.evicted,
    };
    (outcome, state)
}

fn run(records: &[Rec], schedule: Schedule) -> Outcome {
    run_with(records, schedule, &RULES).0
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}

/// Runs every arrival order of `records` under every schedule, checks that
/// all give the same outcome, and returns it.
fn same_in_every_order(records: &[Rec]) -> Outcome {
    let reference = run(records, Schedule::AtEnd);
    for order in permutations(records) {
        for schedule in SCHEDULES {
            let outcome = run(&order, schedule);
            let labels: Vec<String> = order.iter().map(Rec::label).collect();
            assert_eq!(
                outcome, reference,
                "order {labels:?}, schedule {schedule:?}"
            );
        }
    }
    let mut ids: Vec<&str> = reference.violations.iter().map(|v| v.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        reference.violations.len(),
        "violation ids are distinct"
    );
    reference
}

fn in_time(lag: i64) -> Vec<(Name, i64)> {
    vec![(Name::new(TABLE), lag)]
}

// ---------------------------------------------------------------------------
// Driver self-checks

#[test]
fn permutations_lists_every_order_once() {
    let mut all = permutations(&[1, 2, 3, 4]);
    assert_eq!(all.len(), 24);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 24);
    assert_eq!(permutations::<u8>(&[]), vec![Vec::<u8>::new()]);
}

// ---------------------------------------------------------------------------
// Missing and late invalidations

#[test]
fn change_invalidated_within_deadline_is_recorded_in_time() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + 5_000, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![]);
    assert_eq!(outcome.in_time, in_time(5_000));
    assert_eq!(outcome.expired, 0);
}

#[test]
fn invalidation_at_exactly_the_deadline_is_in_time() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![]);
    assert_eq!(outcome.in_time, in_time(DEADLINE));
}

#[test]
fn invalidation_one_ms_after_the_deadline_gives_missing_then_late() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE + 1, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Inv(i.clone())]);
    assert_eq!(outcome.violations, vec![missing(&c), late(&c, &i)]);
    assert_eq!(outcome.violations[0].time_ms, T0 + DEADLINE);
    assert_eq!(outcome.violations[1].lag_ms, Some(DEADLINE + 1));
    assert_eq!(outcome.violations[1].time_ms, T0 + DEADLINE + 1);
    assert_eq!(outcome.in_time, vec![]);
    assert_eq!(outcome.expired, 0);
}

#[test]
fn missing_and_late_ids_differ_and_name_the_change() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE + 1, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Inv(i)]);
    let [m, l] = &outcome.violations[..] else {
        panic!("two verdicts expected: {:?}", outcome.violations)
    };
    assert_ne!(m.id, l.id);
    assert_eq!(m.id.len(), 32);
    let other = change(Op::Update, Some(3), T0, 11);
    assert_ne!(m.id, missing(&other).id, "the id depends on the change");
}

#[test]
fn change_without_any_invalidation_is_missing_then_expires() {
    let c = change(Op::Create, Some(1), T0, 10);
    let outcome = same_in_every_order(&[Rec::Change(c.clone())]);
    assert_eq!(outcome.violations, vec![missing(&c)]);
    assert_eq!(outcome.expired, 1);
}

#[test]
fn invalidation_stamped_skew_before_the_change_covers_it() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 - SKEW, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![]);
    assert_eq!(
        outcome.in_time,
        in_time(0),
        "a cover before the change has lag 0"
    );
}

#[test]
fn invalidation_stamped_more_than_skew_before_the_change_does_not_cover_it() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 - SKEW - 1, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![missing(&c)]);
    assert_eq!(outcome.in_time, vec![]);
    assert_eq!(outcome.expired, 1);
}

#[test]
fn invalidation_of_an_older_version_does_not_cover_a_newer_change() {
    let c = change(Op::Update, Some(5), T0, 10);
    let i = inv(T0 + 10, Some(4), 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![missing(&c)]);
    assert_eq!(outcome.expired, 1);
}

#[test]
fn invalidation_of_the_same_or_a_newer_version_covers_the_change() {
    for v in [5, 6] {
        let c = change(Op::Update, Some(5), T0, 10);
        let i = inv(T0 + 10, Some(v), 20);
        let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(i)]);
        assert_eq!(outcome.violations, vec![], "invalidation version {v}");
        assert_eq!(outcome.in_time, in_time(10));
    }
}

#[test]
fn older_version_invalidation_in_time_then_right_version_late_gives_missing_and_late() {
    let c = change(Op::Update, Some(5), T0, 10);
    let old = inv(T0 + 10, Some(4), 20);
    let right = inv(T0 + DEADLINE + 10, Some(5), 21);
    let outcome = same_in_every_order(&[
        Rec::Change(c.clone()),
        Rec::Inv(old),
        Rec::Inv(right.clone()),
    ]);
    assert_eq!(outcome.violations, vec![missing(&c), late(&c, &right)]);
}

#[test]
fn versionless_delete_is_covered_by_timestamp_alone() {
    for v in [None, Some(0), Some(9)] {
        let c = change(Op::Delete, None, T0, 10);
        let i = inv(T0 + 10, v, 20);
        let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(i)]);
        assert_eq!(outcome.violations, vec![], "invalidation version {v:?}");
        assert_eq!(outcome.in_time, in_time(10));
    }
}

#[test]
fn versionless_invalidation_covers_a_versioned_change() {
    let c = change(Op::Update, Some(42), T0, 10);
    let i = inv(T0 + 10, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn earliest_covering_invalidation_decides_even_when_it_arrives_last() {
    let c = change(Op::Update, Some(2), T0, 10);
    let late_one = inv(T0 + DEADLINE + 500, None, 20);
    let early = inv(T0 + 700, None, 21);
    let outcome = same_in_every_order(&[Rec::Change(c), Rec::Inv(late_one), Rec::Inv(early)]);
    assert_eq!(outcome.violations, vec![]);
    assert_eq!(outcome.in_time, in_time(700));
}

#[test]
fn two_late_invalidations_give_one_late_verdict_for_the_first() {
    let c = change(Op::Update, Some(2), T0, 10);
    let first = inv(T0 + DEADLINE + 10, None, 20);
    let second = inv(T0 + DEADLINE + 20, None, 21);
    let outcome = same_in_every_order(&[
        Rec::Change(c.clone()),
        Rec::Inv(second),
        Rec::Inv(first.clone()),
    ]);
    assert_eq!(outcome.violations, vec![missing(&c), late(&c, &first)]);
    assert_eq!(outcome.violations[1].lag_ms, Some(DEADLINE + 10));
}

#[test]
fn one_invalidation_covers_every_change_of_the_key_it_follows() {
    let a = change(Op::Create, Some(1), T0, 10);
    let b = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(a), Rec::Change(b), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![]);
    let mut expected = vec![(Name::new(TABLE), 10), (Name::new(TABLE), 1_010)];
    expected.sort();
    assert_eq!(outcome.in_time, expected);
}

#[test]
fn invalidation_between_two_changes_covers_only_the_first() {
    let a = change(Op::Create, Some(1), T0, 10);
    let b = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 500, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(a), Rec::Change(b.clone()), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![missing(&b)]);
    assert_eq!(outcome.in_time, in_time(500));
    assert_eq!(outcome.expired, 1);
}

// ---------------------------------------------------------------------------
// Wildcards

#[test]
fn retained_globs_count_their_text_as_they_come_and_go() {
    let glob = |pattern: &str, at: Millis| RetainedGlob {
        pattern: pattern.into(),
        inv: inv(at, None, 20),
        scope: 0,
    };
    let mut globs = Wildcards::default();
    globs.insert(glob("t1:42:*", T0));
    globs.insert(glob("t1:42:*:page", T0 + 10));
    globs.insert(glob("t2:*", T0 + 20));
    assert_eq!((globs.len(), globs.prefixes()), (3, 2));
    // The patterns, and the prefixes `t1:42:` and `t2:` once each.
    assert_eq!(globs.text_bytes(), 7 + 12 + 4 + 6 + 3);
    assert_eq!(globs.prune(T0 + 15, 0).len(), 2);
    assert_eq!(
        (globs.len(), globs.prefixes(), globs.text_bytes()),
        (1, 1, 4 + 3)
    );
    globs.remove(|_| true);
    assert!(globs.is_empty());
    assert_eq!((globs.len(), globs.text_bytes()), (0, 0));
}

#[test]
fn wildcard_invalidation_covers_in_every_order() {
    let c = change(Op::Update, Some(2), T0, 10);
    let g = inv(T0 + 20, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c), Rec::Glob(g)]);
    assert_eq!(outcome.violations, vec![]);
    assert_eq!(outcome.in_time, in_time(20));
}

#[test]
fn late_wildcard_invalidation_gives_missing_then_late() {
    let c = change(Op::Update, Some(2), T0, 10);
    let g = inv(T0 + DEADLINE + 30, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Glob(g.clone())]);
    assert_eq!(outcome.violations, vec![missing(&c), late(&c, &g)]);
}

#[test]
fn wildcard_passed_to_on_change_covers_a_change_that_arrives_after_it() {
    let c = change(Op::Update, Some(2), T0, 10);
    let g = inv(T0 - 50, None, 20);
    let mut state = KeyState::default();
    assert!(state.on_change(&c, [&g].into_iter(), &RULES));
    let mut d = Decisions::default();
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert_eq!(d.violations, vec![]);
    assert_eq!(d.in_time, in_time(0));
}

#[test]
fn unretained_invalidation_does_not_cover_a_later_change_by_itself() {
    // Glob invalidations are retained by the caller: the key must not keep
    // them, or they would be counted twice and outlive the caller's index.
    let c = change(Op::Update, Some(2), T0, 10);
    let g = inv(T0 - 50, None, 20);
    let mut state = KeyState::default();
    state.on_invalidation(&g, false, &RULES);
    assert!(state.invalidations.is_empty());
    state.on_change(&c, std::iter::empty(), &RULES);
    let mut d = Decisions::default();
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert_eq!(d.violations, vec![missing(&c)]);
}

#[test]
fn wildcard_after_the_change_covers_it_through_on_invalidation() {
    let c = change(Op::Update, Some(2), T0, 10);
    let g = inv(T0 + 40, None, 20);
    let mut state = KeyState::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    state.on_invalidation(&g, false, &RULES);
    let mut d = Decisions::default();
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert_eq!(d.violations, vec![]);
    assert_eq!(d.in_time, in_time(40));
}

#[test]
fn a_glob_before_or_after_the_change_leaves_the_same_state() {
    // The key's latest event time drives retention: a glob invalidation
    // stamped after the change touches the key whichever arrives first.
    let c = change(Op::Update, Some(2), T0, 10);
    let g = inv(T0 + 40, None, 20);
    let mut before = KeyState::default();
    before.on_change(&c, [&g].into_iter(), &RULES);
    let mut after = KeyState::default();
    after.on_change(&c, std::iter::empty(), &RULES);
    after.on_invalidation(&g, false, &RULES);
    assert_eq!(before.touched, T0 + 40);
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
}

// ---------------------------------------------------------------------------
// Late window

#[test]
fn late_invalidation_at_the_end_of_the_late_window_is_still_reported() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE + LATE_WINDOW, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Inv(i.clone())]);
    assert_eq!(outcome.violations, vec![missing(&c), late(&c, &i)]);
    assert_eq!(outcome.expired, 0);
}

#[test]
fn late_invalidation_after_the_late_window_is_never_reported_whatever_the_order() {
    // Whether the invalidation is read before or after the watermark passes
    // the end of the window, and in file mode, only the missing verdict.
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE + LATE_WINDOW + 1, None, 20);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Inv(i)]);
    assert_eq!(outcome.violations, vec![missing(&c)]);
    assert_eq!(outcome.expired, 1);
}

#[test]
fn missed_change_whose_only_cover_is_beyond_the_window_is_due_at_the_window_end() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE + LATE_WINDOW + 1, None, 20);
    let mut state = KeyState::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    state.on_invalidation(&i, false, &RULES);
    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + DEADLINE, &RULES, &mut d);
    assert_eq!(due, Some(T0 + DEADLINE + LATE_WINDOW));
    let due = state.advance(&key(), T0 + DEADLINE + LATE_WINDOW, &RULES, &mut d);
    assert_eq!(due, None);
    assert_eq!(d.violations, vec![missing(&c)]);
    assert_eq!(d.expired, 1);
}

// ---------------------------------------------------------------------------
// Fills

#[test]
fn fill_of_an_older_version_than_the_latest_update_is_stale() {
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_000 + SKEW + 1, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(update.clone()),
        Rec::Inv(i),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(outcome.violations, vec![stale_fill(&f, &update)]);
    let v = &outcome.violations[0];
    assert_eq!(
        (v.version, v.latest_version),
        (Some(Version::scalar(1)), Some(Version::scalar(2)))
    );
}

#[test]
fn fill_within_skew_of_the_latest_update_is_checked_against_the_change_before() {
    // F.ts - skew == t(update): the update is not "before F.ts - skew", so L
    // is the create, whose version the fill carries.
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_000 + SKEW, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(update),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_of_the_current_version_is_not_stale() {
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 5_000, Some(2), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(update),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_of_a_newer_version_than_known_is_not_stale() {
    let create = change(Op::Create, Some(1), T0, 10);
    let i = inv(T0 + 10, None, 20);
    let f = fill(T0 + 5_000, Some(3), 30);
    let outcome = same_in_every_order(&[Rec::Change(create), Rec::Inv(i), Rec::Fill(f)]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_without_version_is_never_stale() {
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 5_000, None, 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(update),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_of_a_key_without_known_changes_is_not_judged() {
    let f = fill(T0, Some(1), 30);
    let outcome = same_in_every_order(&[Rec::Fill(f)]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_after_a_delete_is_reported() {
    let create = change(Op::Create, Some(1), T0, 10);
    let delete = change(Op::Delete, Some(1), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_000 + SKEW + 1, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(delete.clone()),
        Rec::Inv(i),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(outcome.violations, vec![fill_after_delete(&f, &delete)]);
    assert_eq!(outcome.violations[0].op, Some(Op::Delete));
}

#[test]
fn fill_after_a_versionless_delete_is_reported() {
    let create = change(Op::Create, Some(1), T0, 10);
    let delete = change(Op::Delete, None, T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 2_000, None, 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(delete.clone()),
        Rec::Inv(i),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(outcome.violations, vec![fill_after_delete(&f, &delete)]);
    assert_eq!(outcome.violations[0].latest_version, None);
}

#[test]
fn fill_within_skew_of_a_delete_is_checked_against_the_change_before() {
    let create = change(Op::Create, Some(1), T0, 10);
    let delete = change(Op::Delete, Some(1), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_000 + SKEW, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(delete),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_after_a_re_create_is_not_reported() {
    let delete = change(Op::Delete, Some(7), T0, 10);
    let create = change(Op::Create, Some(1), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_000 + SKEW + 1, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(delete),
        Rec::Change(create),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn fill_within_skew_after_a_re_create_is_not_reported() {
    // L is the delete (the create is within skew of the fill), but the entity
    // was created again in (t(L), F.ts].
    let delete = change(Op::Delete, Some(7), T0, 10);
    let create = change(Op::Create, Some(1), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    for at in [T0 + 1_000, T0 + 1_000 + SKEW] {
        let f = fill(at, Some(1), 30);
        let outcome = same_in_every_order(&[
            Rec::Change(delete.clone()),
            Rec::Change(create.clone()),
            Rec::Inv(i.clone()),
            Rec::Fill(f),
        ]);
        assert_eq!(outcome.violations, vec![], "fill at T0{:+}", at - T0);
    }
}

#[test]
fn fill_between_a_delete_and_the_re_create_is_reported() {
    let delete = change(Op::Delete, Some(7), T0, 10);
    let create = change(Op::Create, Some(1), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 999, Some(7), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(delete.clone()),
        Rec::Change(create),
        Rec::Inv(i),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(outcome.violations, vec![fill_after_delete(&f, &delete)]);
}

#[test]
fn re_create_of_another_row_does_not_excuse_a_fill_after_delete() {
    // Two rows cached under one key: row 2's create lies within skew of the
    // fill, so L is still row 1's delete, and row 1 was never re-created.
    let delete = change_of(1, Op::Delete, Some(3), T0, 10);
    let other = change_of(2, Op::Create, Some(1), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_050, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(delete.clone()),
        Rec::Change(other),
        Rec::Inv(i.clone()),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(outcome.violations, vec![fill_after_delete(&f, &delete)]);

    let same_row = change_of(1, Op::Create, Some(1), T0 + 1_000, 11);
    let outcome = same_in_every_order(&[
        Rec::Change(delete),
        Rec::Change(same_row),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn update_after_a_delete_also_excuses_a_fill() {
    let delete = change(Op::Delete, Some(7), T0, 10);
    let update = change(Op::Update, Some(8), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 1_050, Some(8), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(delete),
        Rec::Change(update),
        Rec::Inv(i),
        Rec::Fill(f),
    ]);
    assert_eq!(outcome.violations, vec![]);
}

#[test]
fn stale_fill_and_missing_invalidation_are_reported_together() {
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 10, None, 20);
    let f = fill(T0 + 2_000, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(update.clone()),
        Rec::Inv(i),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(
        outcome.violations,
        vec![stale_fill(&f, &update), missing(&update)]
    );
    assert_eq!(outcome.in_time, in_time(10));
    assert_eq!(outcome.expired, 1);
}

// ---------------------------------------------------------------------------
// Redeliveries

#[test]
fn redelivered_change_is_ignored() {
    let c = change(Op::Update, Some(2), T0, 10);
    let mut again = c.clone();
    again.provenance = prov("cdc.public.users", 0, 99);
    let mut state = KeyState::default();
    assert!(state.on_change(&c, std::iter::empty(), &RULES));
    assert!(!state.on_change(&again, std::iter::empty(), &RULES));
    assert_eq!(state.changes.len(), 1);
    assert_eq!(state.changes[0].evidence.offset, 10);
}

#[test]
fn redelivered_change_gives_one_verdict_in_every_order() {
    let c = change(Op::Update, Some(2), T0, 10);
    let outcome = same_in_every_order(&[Rec::Change(c.clone()), Rec::Change(c.clone())]);
    assert_eq!(outcome.violations, vec![missing(&c)]);
    assert_eq!(outcome.expired, 1);

    let i = inv(T0 + DEADLINE + 5, None, 20);
    let outcome = same_in_every_order(&[
        Rec::Change(c.clone()),
        Rec::Change(c.clone()),
        Rec::Inv(i.clone()),
    ]);
    assert_eq!(outcome.violations, vec![missing(&c), late(&c, &i)]);
}

#[test]
fn redelivered_change_after_its_verdict_gives_no_new_verdict() {
    let c = change(Op::Update, Some(2), T0, 10);
    let mut state = KeyState::default();
    let mut d = Decisions::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    state.advance(&key(), T0 + DEADLINE, &RULES, &mut d);
    assert_eq!(d.violations, vec![missing(&c)]);
    assert!(!state.on_change(&c, std::iter::empty(), &RULES));
    let mut d = Decisions::default();
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert_eq!(d.violations, vec![]);
    assert_eq!(d.expired, 1);
}

#[test]
fn redelivered_fill_gives_one_verdict_in_every_order() {
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + 1_010, None, 20);
    let f = fill(T0 + 2_000, Some(1), 30);
    let outcome = same_in_every_order(&[
        Rec::Change(create),
        Rec::Change(update.clone()),
        Rec::Inv(i),
        Rec::Fill(f.clone()),
        Rec::Fill(f.clone()),
    ]);
    assert_eq!(outcome.violations, vec![stale_fill(&f, &update)]);
}

#[test]
fn redelivered_fill_after_its_verdict_gives_no_new_verdict() {
    let update = change(Op::Update, Some(2), T0, 10);
    let f = fill(T0 + 2_000, Some(1), 30);
    let mut state = KeyState::default();
    state.on_change(&update, std::iter::empty(), &RULES);
    state.on_invalidation(&inv(T0 + 5, None, 20), true, &RULES);
    assert!(state.on_fill(f.clone()));
    let mut d = Decisions::default();
    state.advance(&key(), T0 + 2_000, &RULES, &mut d);
    assert_eq!(d.violations, vec![stale_fill(&f, &update)]);
    assert!(!state.on_fill(f), "the fill id is still remembered");
    assert!(state.fills.waiting().is_empty());
    let mut d = Decisions::default();
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert_eq!(d.violations, vec![]);
}

#[test]
fn distinct_fills_with_the_same_version_are_judged_separately() {
    let update = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + 5, None, 20);
    let a = fill(T0 + 2_000, Some(1), 30);
    let b = fill(T0 + 3_000, Some(1), 31);
    let outcome = same_in_every_order(&[
        Rec::Change(update.clone()),
        Rec::Inv(i),
        Rec::Fill(a.clone()),
        Rec::Fill(b.clone()),
    ]);
    assert_eq!(
        outcome.violations,
        vec![stale_fill(&a, &update), stale_fill(&b, &update)]
    );
}

#[test]
fn redelivery_is_recognised_among_the_last_seen_ids() {
    // SEEN_IDS - 1 other fills later, the change is still recognised.
    let c = change(Op::Update, Some(2), T0, 10);
    let mut state = KeyState::default();
    assert!(state.on_change(&c, std::iter::empty(), &RULES));
    for n in 0..(SEEN_IDS as i64 - 1) {
        assert!(state.on_fill(fill(T0 + 1 + n, Some(2), 100 + n)));
    }
    assert!(!state.on_change(&c, std::iter::empty(), &RULES));
    assert_eq!(state.changes.len(), 1);
    assert_eq!(state.seen.len(), SEEN_IDS);
}

// ---------------------------------------------------------------------------
// Due times

#[test]
fn empty_key_has_nothing_due() {
    let state = KeyState::default();
    assert!(state.is_empty());
    assert_eq!(state.next_due(&RULES), None);
}

#[test]
fn pending_change_is_due_at_its_deadline() {
    let c = change(Op::Update, Some(2), T0, 10);
    let mut state = KeyState::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    assert_eq!(state.next_due(&RULES), Some(T0 + DEADLINE));

    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + DEADLINE - 1, &RULES, &mut d);
    assert_eq!(due, Some(T0 + DEADLINE));
    assert_eq!(d.violations, vec![], "not final before the deadline");
    assert_eq!(state.changes[0].status, Status::Pending);
}

#[test]
fn uses_the_deadline_of_the_change_s_table() {
    let mut c = change(Op::Update, Some(2), T0, 10);
    c.rules.deadline_ms = 1_234;
    let mut state = KeyState::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    assert_eq!(state.next_due(&RULES), Some(T0 + 1_234));
    let mut d = Decisions::default();
    state.advance(&key(), T0 + 1_234, &RULES, &mut d);
    assert_eq!(d.violations.len(), 1);
    assert_eq!(d.violations[0].deadline_ms, Some(1_234));
    assert_eq!(d.violations[0].time_ms, T0 + 1_234);
}

#[test]
fn missed_change_is_due_at_the_end_of_its_late_window() {
    let c = change(Op::Update, Some(2), T0, 10);
    let mut state = KeyState::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + DEADLINE, &RULES, &mut d);
    assert_eq!(d.violations, vec![missing(&c)]);
    assert_eq!(state.changes[0].status, Status::Missed);
    assert_eq!(due, Some(T0 + DEADLINE + LATE_WINDOW));

    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + DEADLINE + LATE_WINDOW - 1, &RULES, &mut d);
    assert_eq!((d.expired, due), (0, Some(T0 + DEADLINE + LATE_WINDOW)));
    let due = state.advance(&key(), T0 + DEADLINE + LATE_WINDOW, &RULES, &mut d);
    assert_eq!(d.expired, 1);
    assert_eq!(d.violations, vec![]);
    assert_eq!(due, None);
    assert_eq!(state.changes[0].status, Status::Decided);
    assert!(
        !state.is_empty(),
        "the decided change stays as history for fills"
    );
}

#[test]
fn missed_change_with_a_late_cover_is_due_at_the_cover() {
    let c = change(Op::Update, Some(2), T0, 10);
    let i = inv(T0 + DEADLINE + 700, None, 20);
    let mut state = KeyState::default();
    state.on_change(&c, std::iter::empty(), &RULES);
    state.on_invalidation(&i, true, &RULES);
    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + DEADLINE, &RULES, &mut d);
    assert_eq!(d.violations, vec![missing(&c)]);
    assert_eq!(due, Some(T0 + DEADLINE + 700));

    let mut d = Decisions::default();
    state.advance(&key(), T0 + DEADLINE + 699, &RULES, &mut d);
    assert_eq!(
        d.violations,
        vec![],
        "the late verdict waits for the watermark"
    );
    state.advance(&key(), T0 + DEADLINE + 700, &RULES, &mut d);
    assert_eq!(d.violations, vec![late(&c, &i)]);
}

#[test]
fn fill_is_due_at_its_time() {
    let update = change(Op::Update, Some(2), T0, 10);
    let f = fill(T0 + 500, Some(1), 30);
    let mut state = KeyState::default();
    state.on_change(&update, std::iter::empty(), &RULES);
    state.on_fill(f.clone());
    assert_eq!(
        state.next_due(&RULES),
        Some(T0 + 500),
        "the earliest due wins"
    );

    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + 499, &RULES, &mut d);
    assert_eq!(due, Some(T0 + 500));
    assert_eq!(d.violations, vec![]);
    let due = state.advance(&key(), T0 + 500, &RULES, &mut d);
    assert_eq!(d.violations, vec![stale_fill(&f, &update)]);
    assert_eq!(due, Some(T0 + DEADLINE));
}

#[test]
fn retained_invalidation_expires_after_skew_and_the_key_empties() {
    let i = inv(T0, None, 20);
    let mut state = KeyState::default();
    state.on_invalidation(&i, true, &RULES);
    assert!(!state.is_empty());
    assert_eq!(state.next_due(&RULES), Some(T0 + SKEW + 1));

    let mut d = Decisions::default();
    let due = state.advance(&key(), T0 + SKEW, &RULES, &mut d);
    assert_eq!(due, Some(T0 + SKEW + 1));
    assert_eq!(
        state.invalidations.len(),
        1,
        "a change at T0 + skew could still use it"
    );
    let due = state.advance(&key(), T0 + SKEW + 1, &RULES, &mut d);
    assert_eq!(due, None);
    assert!(state.is_empty());
    assert_eq!(d.violations, vec![]);
}

#[test]
fn advancing_to_each_returned_due_in_turn_decides_everything_once() {
    let a = change(Op::Create, Some(1), T0, 10);
    let b = change(Op::Update, Some(2), T0 + 1_000, 11);
    let i = inv(T0 + DEADLINE + 2_000, None, 20);
    let f = fill(T0 + 1_500, Some(1), 30);
    let mut state = KeyState::default();
    state.on_change(&a, std::iter::empty(), &RULES);
    state.on_change(&b, std::iter::empty(), &RULES);
    state.on_invalidation(&i, true, &RULES);
    state.on_fill(f.clone());
    let mut d = Decisions::default();
    let mut dues = Vec::new();
    let mut wm = T0 - 1;
    while let Some(due) = state.advance(&key(), wm, &RULES, &mut d) {
        assert!(due > wm, "due {due} after advance({wm})");
        dues.push(due - T0);
        wm = due;
    }
    assert_eq!(
        dues,
        vec![
            1_500,
            DEADLINE,
            DEADLINE + 1_000,
            DEADLINE + 2_000,
            DEADLINE + 2_000 + SKEW + 1
        ]
    );
    let mut got = d.violations;
    got.sort_by_key(|v| v.time_ms);
    assert_eq!(
        got,
        vec![
            stale_fill(&f, &b),
            missing(&a),
            missing(&b),
            late(&a, &i),
            late(&b, &i)
        ]
    );
}

// ---------------------------------------------------------------------------
// History and limits

#[test]
fn history_pruning_keeps_the_latest_change_for_much_later_fills() {
    let mut state = KeyState::default();
    let mut d = Decisions::default();
    let mut last = None;
    for v in 1..=50u64 {
        let ts = T0 + v as i64 * 1_000;
        let c = change(Op::Update, Some(v), ts, v as i64);
        state.on_change(&c, std::iter::empty(), &RULES);
        state.on_invalidation(&inv(ts + 10, None, 100 + v as i64), true, &RULES);
        state.advance(&key(), ts + 500, &RULES, &mut d);
        last = Some(c);
    }
    let last = last.unwrap();
    state.advance(&key(), T0 + 1_000_000, &RULES, &mut d);
    assert_eq!(d.violations, vec![]);
    assert_eq!(d.in_time.len(), 50);
    assert_eq!(state.changes.len(), 1, "only L is kept");
    assert_eq!(state.changes[0].version, Some(Version::scalar(50)));
    assert!(state.invalidations.is_empty());

    let stale = fill(T0 + 10_000_000, Some(49), 200);
    let current = fill(T0 + 10_000_001, Some(50), 201);
    state.on_fill(stale.clone());
    state.on_fill(current);
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert_eq!(d.violations, vec![stale_fill(&stale, &last)]);
}

#[test]
fn history_pruning_keeps_changes_that_later_fills_may_need() {
    // With the watermark at wm, a fill at wm looks back from wm - skew: every
    // change at or after that horizon and the last one before it (decided or
    // not) stay; older decided changes go.
    let mut state = KeyState::default();
    let mut d = Decisions::default();
    for (n, ts) in [T0, T0 + 1_000, T0 + 2_000, T0 + 32_100]
        .into_iter()
        .enumerate()
    {
        let c = change(Op::Update, Some(n as u64 + 1), ts, n as i64);
        state.on_change(&c, [&inv(ts + 1, None, 0)].into_iter(), &RULES);
    }
    state.advance(&key(), T0 + 32_100 + SKEW, &RULES, &mut d);
    let kept: Vec<(Millis, Status)> = state
        .changes
        .iter()
        .map(|c| (c.ts - T0, c.status))
        .collect();
    assert_eq!(
        kept,
        vec![(2_000, Status::Decided), (32_100, Status::Pending)]
    );
    assert_eq!(d.evicted, 0);
}

#[test]
fn history_pruning_keeps_undecided_changes() {
    let mut state = KeyState::default();
    let mut d = Decisions::default();
    let mut old = change(Op::Update, Some(1), T0, 1);
    old.rules.deadline_ms = 1_000_000;
    state.on_change(&old, std::iter::empty(), &RULES);
    for v in 2..=4u64 {
        let ts = T0 + v as i64 * 1_000;
        state.on_change(
            &change(Op::Update, Some(v), ts, v as i64),
            [&inv(ts, None, 0)].into_iter(),
            &RULES,
        );
    }
    state.advance(&key(), T0 + 100_000, &RULES, &mut d);
    let kept: Vec<(Option<Version>, Status)> = state
        .changes
        .iter()
        .map(|c| (c.version, c.status))
        .collect();
    assert_eq!(
        kept,
        vec![
            (Some(Version::scalar(1)), Status::Pending),
            (Some(Version::scalar(4)), Status::Decided)
        ]
    );
}

#[test]
fn change_limit_evicts_the_oldest_undecided_change_and_counts_it() {
    let rules = KeyRules {
        max_changes: 2,
        ..RULES
    };
    let mut state = KeyState::default();
    for v in 1..=3u64 {
        state.on_change(
            &change(Op::Update, Some(v), T0 + v as i64, v as i64),
            std::iter::empty(),
            &rules,
        );
    }
    let mut d = Decisions::default();
    state.advance(&key(), T0 + 10, &rules, &mut d);
    assert_eq!(d.evicted, 1);
    let kept: Vec<Option<Version>> = state.changes.iter().map(|c| c.version).collect();
    assert_eq!(
        kept,
        vec![Some(Version::scalar(2)), Some(Version::scalar(3))]
    );
}

#[test]
fn change_limit_evicts_decided_changes_before_undecided_ones() {
    // A long-deadline change (pending) committed before a short-deadline one
    // (decided, kept as the latest change before the horizon), then a new
    // change after the horizon: over the limit, the decided one goes first,
    // and nothing is counted.
    let rules = KeyRules {
        max_changes: 2,
        ..RULES
    };
    let mut pending = change(Op::Update, Some(1), T0, 1);
    pending.rules.deadline_ms = 10_000;
    let mut decided = change_of(2, Op::Update, Some(1), T0 + 100, 2);
    decided.rules.deadline_ms = 1_000;
    let newest = change(Op::Update, Some(2), T0 + 4_950, 3);
    let mut state = KeyState::default();
    let mut d = Decisions::default();
    state.on_change(&pending, std::iter::empty(), &rules);
    state.on_change(&decided, [&inv(T0 + 150, None, 0)].into_iter(), &rules);
    state.on_change(&newest, std::iter::empty(), &rules);
    state.advance(&key(), T0 + 5_000, &rules, &mut d);
    assert_eq!(d.in_time, in_time(50));
    assert_eq!(d.evicted, 0);
    let kept: Vec<u64> = state.changes.iter().map(|c| c.id).collect();
    assert_eq!(kept, vec![pending.id, newest.id]);
    assert_eq!(d.violations, vec![]);
}

#[test]
fn retained_invalidations_are_bounded_by_the_change_limit() {
    let rules = KeyRules {
        max_changes: 3,
        ..RULES
    };
    let mut state = KeyState::default();
    for n in 0..5 {
        state.on_invalidation(&inv(T0 + n, None, n), true, &rules);
    }
    let offsets: Vec<i64> = state
        .invalidations
        .iter()
        .map(|i| i.evidence.offset)
        .collect();
    assert_eq!(offsets, vec![2, 3, 4], "the oldest are dropped");
}

#[test]
fn touched_follows_the_latest_event_time() {
    let mut state = KeyState::default();
    state.on_change(
        &change(Op::Update, Some(2), T0 + 50, 1),
        std::iter::empty(),
        &RULES,
    );
    state.on_invalidation(&inv(T0 + 10, None, 2), true, &RULES);
    assert_eq!(state.touched, T0 + 50);
    state.on_fill(fill(T0 + 70, Some(2), 3));
    assert_eq!(state.touched, T0 + 70);
}

// ---------------------------------------------------------------------------
// Globs

#[test]
fn glob_matches_table() {
    let cases: &[(&str, &str, bool)] = &[
        // No star: exact match only.
        ("user:1", "user:1", true),
        ("user:1", "user:12", false),
        ("user:12", "user:1", false),
        ("", "", true),
        ("", "a", false),
        ("a", "", false),
        // Star alone.
        ("*", "", true),
        ("*", "anything:at:all", true),
        ("**", "", true),
        // Suffix star (prefix pattern).
        ("user:*", "user:1", true),
        ("user:*", "user:", true),
        ("user:*", "user", false),
        ("user:*", "users:1", false),
        // Leading star (suffix pattern).
        ("*:profile", "user:1:profile", true),
        ("*:profile", ":profile", true),
        ("*:profile", "user:1:profiles", false),
        // Star in the middle.
        ("user:*:profile", "user:1:profile", true),
        ("user:*:profile", "user::profile", true),
        ("user:*:profile", "user:1:2:profile", true),
        ("user:*:profile", "user:1:avatar", false),
        ("user:*:profile", "user:profile", false),
        // Several stars, needing backtracking.
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "abcbc", true),
        ("a*b*c", "acb", false),
        ("*a*", "banana", true),
        ("*x*", "banana", false),
        ("*ana", "banana", true),
        ("*:*:*", "a:b:c", true),
        ("*:*:*", "a:b", false),
        ("a**b", "ab", true),
        ("a**b", "a-b", true),
        // A truncate's key is its template's glob: a glob covers it when the
        // glob's text matches the pattern's (a star in it taken literally).
        ("user:*", "user:*:profile", true),
        ("*", "user:*:profile", true),
        ("user:*:profile", "user:*:profile", true),
        ("user:1*", "user:*:profile", false),
        ("user:*:avatar", "user:*:profile", false),
    ];
    for &(pattern, key, expected) in cases {
        assert_eq!(
            glob_matches(pattern, key),
            expected,
            "{pattern:?} vs {key:?}"
        );
    }
}

#[test]
fn glob_prefix_table() {
    let cases: &[(&str, &str)] = &[
        ("user:*", "user:"),
        ("user:*:profile", "user:"),
        ("*:profile", ""),
        ("*", ""),
        ("", ""),
        ("user:1", "user:1"),
        ("a*b*c", "a"),
    ];
    for &(pattern, prefix) in cases {
        assert_eq!(glob_prefix(pattern), prefix, "{pattern:?}");
    }
}

#[test]
fn every_key_a_glob_matches_starts_with_its_prefix() {
    let patterns = ["user:*", "user:*:profile", "*:profile", "a*b*c", "user:1"];
    let keys = [
        "user:1",
        "user:1:profile",
        "x:profile",
        "abc",
        "axbxc",
        "user:",
        "zzz",
    ];
    for pattern in patterns {
        for k in keys {
            if glob_matches(pattern, k) {
                assert!(
                    k.starts_with(glob_prefix(pattern)),
                    "{pattern:?} matched {k:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// History: changes that arrive after the key's other records were judged

const WITH_HISTORY: KeyRules = KeyRules {
    history_ms: 3_600_000,
    ..RULES
};

/// Runs `live` with the watermark following it to the end of time, then the
/// `replayed` changes with a watermark of their own (as `vigil replay --to
/// pipeline` feeds dead-lettered changes to a new engine on the state a live
/// run left), and returns what both decided together.
fn live_then_replayed(live: &[Rec], replayed: &[Rec], rules: &KeyRules) -> Outcome {
    let (first, state) = run_from(KeyState::default(), live, Schedule::Eager, rules);
    let (second, _) = run_from(state, replayed, Schedule::Eager, rules);
    let mut violations = [first.violations, second.violations].concat();
    violations.sort_by(|a, b| (a.time_ms, a.kind, &a.id).cmp(&(b.time_ms, b.kind, &b.id)));
    let mut in_time = [first.in_time, second.in_time].concat();
    in_time.sort();
    Outcome {
        violations,
        in_time,
        expired: first.expired + second.expired,
        evicted: first.evicted + second.evicted,
    }
}

/// What the key decides with every record in order from the start.
fn in_order(records: &[Rec], rules: &KeyRules) -> Outcome {
    let mut records = records.to_vec();
    records.sort_by_key(Rec::ts);
    run_with(&records, Schedule::Eager, rules).0
}

#[test]
fn replayed_changes_are_covered_by_the_invalidations_seen_before_them() {
    let covered = change(Op::Update, Some(1), T0, 10);
    let missed = change(Op::Update, Some(2), T0 + 60_000, 11);
    let i1 = inv(T0 + 200, Some(1), 20);
    let i2 = inv(T0 + 60_000 + DEADLINE + 5_000, Some(2), 21);
    let live = [Rec::Inv(i1), Rec::Inv(i2.clone())];
    let replayed = [Rec::Change(covered.clone()), Rec::Change(missed.clone())];
    let outcome = live_then_replayed(&live, &replayed, &WITH_HISTORY);
    assert_eq!(
        outcome,
        in_order(&[&live[..], &replayed[..]].concat(), &WITH_HISTORY)
    );
    assert_eq!(outcome.in_time, in_time(200));
    assert_eq!(
        outcome.violations,
        vec![missing(&missed), late(&missed, &i2)]
    );

    let forgetful = live_then_replayed(&live, &replayed, &RULES);
    assert_eq!(
        forgetful.violations,
        vec![missing(&covered), missing(&missed)],
        "without history both replayed changes are missing"
    );
}

#[test]
fn fills_are_judged_again_when_a_change_before_them_is_replayed() {
    // Live: fills of a key whose changes all went to the dead-letter queue.
    // Replayed: an update the first fill is stale against, and a delete
    // then a re-creation around the second and third fills.
    let create = change(Op::Create, Some(1), T0, 10);
    let update = change(Op::Update, Some(2), T0 + 1_000, 11);
    let delete = change(Op::Delete, Some(2), T0 + 3_000, 12);
    let recreate = change(Op::Create, Some(3), T0 + 5_000, 13);
    let stale = fill(T0 + 2_000, Some(1), 30);
    let after_delete = fill(T0 + 4_000, Some(2), 31);
    let after_recreate = fill(T0 + 6_000, Some(3), 32);
    let live = [
        Rec::Fill(stale.clone()),
        Rec::Fill(after_delete.clone()),
        Rec::Fill(after_recreate),
    ];
    let replayed = [create, update.clone(), delete.clone(), recreate].map(Rec::Change);
    let outcome = live_then_replayed(&live, &replayed, &WITH_HISTORY);
    assert_eq!(
        outcome,
        in_order(&[&live[..], &replayed[..]].concat(), &WITH_HISTORY)
    );
    let fills: Vec<&Violation> = outcome
        .violations
        .iter()
        .filter(|v| v.cache_ts_ms.is_some())
        .collect();
    assert_eq!(
        fills,
        vec![
            &stale_fill(&stale, &update),
            &fill_after_delete(&after_delete, &delete)
        ]
    );
}

#[test]
fn a_fill_judged_again_reports_only_a_verdict_it_had_not_reported() {
    let create = change(Op::Create, Some(1), T0, 10);
    let newest = change(Op::Update, Some(3), T0 + 1_000, 11);
    let f = fill(T0 + 2_000, Some(1), 30);
    let live = [
        Rec::Change(create),
        Rec::Change(newest.clone()),
        Rec::Fill(f.clone()),
    ];
    let replayed = [Rec::Change(change(Op::Update, Some(2), T0 + 500, 12))];
    let outcome = live_then_replayed(&live, &replayed, &WITH_HISTORY);
    let stale: Vec<_> = outcome
        .violations
        .iter()
        .filter(|v| v.kind == ViolationKind::StaleFill)
        .collect();
    assert_eq!(stale, vec![&stale_fill(&f, &newest)]);
}

#[test]
fn history_keeps_what_the_last_hour_of_the_key_saw_and_no_more() {
    let mut state = KeyState::default();
    let old = inv(T0, None, 1);
    let recent = inv(T0 + 3_600_000, None, 2);
    let newest = inv(T0 + 3_600_001, None, 3);
    let mut d = Decisions::default();
    for i in [&old, &recent, &newest] {
        state.on_invalidation(i, true, &WITH_HISTORY);
        state.on_fill(fill(i.ts, None, i.evidence.offset));
    }
    assert_eq!(
        state.advance(&key(), END_OF_TIME, &WITH_HISTORY, &mut d),
        None
    );
    let kept: Vec<Millis> = state.invalidations.iter().map(|i| i.ts).collect();
    assert_eq!(kept, vec![recent.ts, newest.ts]);
    let judged: Vec<Millis> = state.fills.judged().iter().map(|f| f.ts).collect();
    assert_eq!(judged, vec![recent.ts, newest.ts]);

    let mut state = KeyState::default();
    state.on_invalidation(&newest, true, &RULES);
    state.on_fill(fill(newest.ts, None, 3));
    state.advance(&key(), END_OF_TIME, &RULES, &mut d);
    assert!(
        state.is_empty(),
        "without history nothing is kept: {state:?}"
    );
}

#[test]
fn a_change_awaits_its_cover_until_an_invalidation_covers_it_or_its_deadline_passes() {
    let mut state = KeyState::default();
    let c = change(Op::Update, Some(2), T0, 1);
    assert!(state.on_change(&c, std::iter::empty(), &RULES));
    assert!(state.awaits_cover(), "a change within its deadline");
    state.on_invalidation(&inv(T0 + 5, Some(1), 2), true, &RULES);
    assert!(state.awaits_cover(), "an older version does not cover it");
    state.on_invalidation(&inv(T0 + 10, Some(2), 3), true, &RULES);
    assert!(!state.awaits_cover(), "covered");

    let mut state = KeyState::default();
    assert!(state.on_change(&c, std::iter::empty(), &RULES));
    state.advance(&key(), T0 + DEADLINE, &RULES, &mut Decisions::default());
    assert!(
        !state.awaits_cover(),
        "missed: only a late invalidation can come, which may never"
    );
    assert!(state.has_undecided());
}

/// A key's fills share one allocation in memory but are stored as the two
/// lists they were stored as before: state written earlier reads the same.
#[test]
fn fills_are_stored_as_their_two_lists() {
    use crate::state::{Cf, codec};
    let (judged, waiting) = (fill(T0, Some(1), 1), fill(T0 + 5_000, Some(2), 2));
    let mut state = KeyState::default();
    assert!(state.on_fill(judged.clone()));
    state.advance(&key(), T0, &WITH_HISTORY, &mut Decisions::default());
    assert!(state.on_fill(waiting.clone()));
    assert_eq!(state.fills.waiting(), std::slice::from_ref(&waiting));
    assert_eq!(state.fills.judged(), std::slice::from_ref(&judged));

    let as_before: (Fills, Fills) = (
        Fills::from_vec(vec![waiting]),
        Fills::from_vec(vec![judged]),
    );
    let stored = codec::encode(T0, &state.fills);
    assert_eq!(stored, codec::encode(T0, &as_before));
    let (_, read): (Millis, KeyFills) = codec::decode(Cf::Keys, &stored).unwrap();
    assert_eq!(read, state.fills);

    let none = codec::encode(T0, &KeyFills::default());
    assert_eq!(none, codec::encode(T0, &(Fills::new(), Fills::new())));
    let (_, read): (Millis, KeyFills) = codec::decode(Cf::Keys, &none).unwrap();
    assert!(read.is_empty() && read.lists().is_none());
}
